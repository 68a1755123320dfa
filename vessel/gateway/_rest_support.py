"""What the REST handlers share: the API's own error, input checks, and module views."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import msgspec
import trio

from .._ceilings import raised_limits
from .._errors import UnknownModule
from .._installs import Install
from .._json_check import json_problem
from .._manager import ModuleManager, ModuleState
from ._errors import STATUS

log = logging.getLogger("vessel.gateway.rest")

#: How long listing waits for live figures (memory) from all running modules together: a
#: stuck module shows ``memory: null`` instead of slowing the list down.
STATS_TIMEOUT = 1.0
#: Config keys: the storage's own limit; control characters are refused (they could forge
#: log lines and are never meaningful in a key).
MAX_KEY_LENGTH = 256
#: ``?lines=`` of the logs endpoint.
DEFAULT_LOG_LINES = 100
MAX_LOG_LINES = 1000
_U32_MAX = 2**32 - 1

#: ``request.args`` (a werkzeug MultiDict): its ``get`` gives the first value.
Args = Mapping[str, str]


class ApiError(Exception):
    """Ends a request with ``{"code", "message"}``; the status comes from ``STATUS``
    unless given. Raised by handlers and checks; the blueprint turns it into the response.
    """

    def __init__(self, code: str, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status if status is not None else STATUS.get(code, 500)


# -- input checks ----------------------------------------------------------------------


def has_control_character(text: str) -> bool:
    return any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in text)


def check_command_name(name: str) -> None:
    """A command name from the path: 1..256 characters, no control characters."""
    if not 1 <= len(name) <= MAX_KEY_LENGTH or has_control_character(name):
        raise ApiError(
            "invalid_request",
            f"command name must be 1 to {MAX_KEY_LENGTH} characters without control characters",
        )


def check_config_key(key: str) -> None:
    """A config key that the REST API accepts, else ApiError(invalid_request).

    Keys are opaque SQLite text (never a file name), so ``/`` is fine; but a ``.`` or
    ``..`` segment is refused: clients and proxies normalise such paths, so the key that
    arrives could differ from the one typed.
    """
    if not 1 <= len(key) <= MAX_KEY_LENGTH:
        raise ApiError(
            "invalid_request",
            f"config key must be 1 to {MAX_KEY_LENGTH} characters, got {len(key)}",
        )
    if has_control_character(key):
        raise ApiError("invalid_request", "config key must not contain control characters")
    if any(segment in (".", "..") for segment in key.split("/")):
        raise ApiError("invalid_request", "config key must not contain '.' or '..' path segments")


def query_bool(args: Args, name: str, *, default: bool = False) -> bool:
    """``?name=true|false`` (also 1/0, yes/no; a bare ``?name`` is true)."""
    raw = args.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in ("", "1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ApiError("invalid_request", f"query parameter {name!r} must be true or false")


def query_int(args: Args, name: str, *, default: int, low: int, high: int) -> int:
    """``?name=N``, an integer in [low, high]."""
    raw = args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw, 10)
    except ValueError:
        raise ApiError("invalid_request", f"query parameter {name!r} must be an integer") from None
    if not low <= value <= high:
        raise ApiError(
            "invalid_request", f"query parameter {name!r} must be between {low} and {high}"
        )
    return value


def query_version(args: Args) -> int:
    return query_int(args, "version", default=1, low=0, high=_U32_MAX)


def query_lines(args: Args) -> int:
    """``?lines=N``: how many recent log lines; values above the maximum are capped."""
    lines = query_int(args, "lines", default=DEFAULT_LOG_LINES, low=0, high=_U32_MAX)
    return min(lines, MAX_LOG_LINES)


class ConfigValue(msgspec.Struct, forbid_unknown_fields=True):
    """The body of ``PUT /api/modules/<id>/config/<key>``."""

    value: str


_config_value = msgspec.json.Decoder(ConfigValue)


def decode_config_value(body: bytes) -> str:
    try:
        return _config_value.decode(body).value
    except msgspec.ValidationError as exc:
        raise ApiError("invalid_request", f'body must be {{"value": "<string>"}}: {exc}') from None
    except msgspec.DecodeError:
        raise ApiError(
            "invalid_request", 'body is not JSON: expected {"value": "<string>"}'
        ) from None


def call_params(body: bytes) -> str:
    """The params of a call: the request body when it is JSON, ``{}`` when it is empty."""
    if not body.strip():
        return "{}"
    if problem := json_problem(body):
        raise ApiError("invalid_request", f"call params (the body): {problem}")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:  # pragma: no cover - msgspec accepted it, so it is utf-8
        raise ApiError("invalid_request", "call params (the body) are not utf-8") from None


# -- module views ----------------------------------------------------------------------


async def memory_of(manager: ModuleManager, module_ids: list[str]) -> dict[str, int]:
    """Private memory (USS) in bytes of the running modules among ``module_ids``, asked
    concurrently and bounded by ``STATS_TIMEOUT`` overall; a module that did not answer
    in time is absent."""
    found: dict[str, int] = {}

    async def one(module_id: str) -> None:
        try:
            stats = await manager.stats(module_id)
        except UnknownModule:  # removed meanwhile
            return
        if stats is not None:
            found[module_id] = stats.memory_private

    running = [m for m in module_ids if _state(manager, m) is ModuleState.RUNNING]
    with trio.move_on_after(STATS_TIMEOUT):
        async with trio.open_nursery() as nursery:
            for module_id in running:
                nursery.start_soon(one, module_id)
    return found


def _state(manager: ModuleManager, module_id: str) -> ModuleState | None:
    try:
        return manager.state(module_id)
    except UnknownModule:
        return None


def module_info(manager: ModuleManager, module_id: str, memory: int | None) -> dict[str, Any]:
    """The ModuleInfo object of the API (raises UnknownModule)."""
    info = manager.describe(module_id)
    info["enabled"] = manager.enabled(module_id)
    info["memory"] = memory
    return info


async def module_info_live(manager: ModuleManager, module_id: str) -> dict[str, Any]:
    """ModuleInfo with its live memory figure (bounded like the list)."""
    manager.state(module_id)  # UnknownModule before asking anything
    memory = await memory_of(manager, [module_id])
    return module_info(manager, module_id, memory.get(module_id))


def install_info(manager: ModuleManager, record: Install) -> dict[str, Any]:
    """The Install object of the API (docs/api.md): an install under way or recently ended."""
    compiling = record.state == "compiling"
    return record.describe(manager.compiling_for(record.module_id) if compiling else None)


def module_detail(manager: ModuleManager, module_id: str, memory: int | None) -> dict[str, Any]:
    """ModuleInfo plus what the manifest grants, its limits (and which it raised above
    their defaults: what an admin should know it gave itself) and the tamper hash."""
    info = module_info(manager, module_id, memory)
    source = manager.get(module_id).source
    info["permissions"] = msgspec.to_builtins(source.manifest.permissions)
    info["limits"] = msgspec.to_builtins(source.manifest.limits)
    info["raised_limits"] = raised_limits(source.manifest.limits)
    info["hash"] = source.hash
    return info


#: States of an enabled module that is down when it should run.
_DOWN = (ModuleState.FAILED, ModuleState.CRASHED, ModuleState.RESTARTING)


def modules_not_ok(manager: ModuleManager) -> list[dict[str, Any]]:
    """``/healthz``'s detail: each module that is not doing its job, and why in its own
    words: down (failed, crashed, restarting), running with a health report that is not
    ``ok`` (``vessel._health``), or running without its required settings."""
    problems: list[dict[str, Any]] = []
    for module_id in manager.ids():
        try:
            info = manager.describe(module_id)
        except UnknownModule:
            continue
        state, health = info["state"], info["health"]
        entry: dict[str, Any] = {"id": module_id, "state": state, "health": None}
        if state in {s.value for s in _DOWN}:
            entry["message"] = info["last_reason"] or state
        elif health is not None and health["status"] != "ok":
            entry.update(health=health["status"], message=health["message"])
        elif state == ModuleState.RUNNING.value and info["missing_settings"]:
            entry["message"] = "needs configuration: " + ", ".join(info["missing_settings"])
        else:
            continue
        problems.append(entry)
    return problems


def health_counts(manager: ModuleManager) -> dict[str, int]:
    states = [_state(manager, m) for m in manager.ids()]
    return {
        "total": len(states),
        "running": sum(s is ModuleState.RUNNING for s in states),
        "failed": sum(s is ModuleState.FAILED for s in states),
    }
