"""The request/answer commands of ``vessel-ctl``: each takes the settings and the parsed
arguments, prints its result and returns the exit status (failures raise CtlError).
``config`` lives in ``_ctl_config``, ``install`` in ``_ctl_install``, ``events`` in
``_ctl_events``."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Iterator
from typing import Any

from ._ctl_client import ApiError, Client, CtlError, Settings, module_path
from ._ctl_format import (
    format_module_info,
    format_module_list,
    format_not_ok,
    pretty_json,
)

#: Module states that are on their way to ``running``: commands that start a module wait
#: them out, so the state they print is where the module settled.
TRANSIENT_STATES = frozenset({"compiling", "starting"})

#: How often a waiting command asks for the module's state.
POLL_INTERVAL = 0.1


class UsageError(Exception):
    """The arguments are well-formed for argparse but do not make sense together."""


def out(text: str) -> None:
    print(text, flush=True)


def note(text: str) -> None:
    """A line for the person, not the pipeline: goes to stderr."""
    print(text, file=sys.stderr, flush=True)


@contextlib.contextmanager
def about_module(module_id: str) -> Iterator[None]:
    """An ``unknown_module`` answer becomes ``unknown module 'x'``."""
    try:
        yield
    except ApiError as exc:
        if exc.code == "unknown_module":
            raise CtlError(f"unknown module {module_id!r}") from None
        raise


def module_info(client: Client, module_id: str) -> dict[str, Any]:
    with about_module(module_id):
        info: dict[str, Any] = client.json("GET", module_path(module_id))
    return info


def wait_settled(client: Client, info: dict[str, Any]) -> dict[str, Any]:
    """Poll a module that is still starting until it is not (bounded by --timeout)."""
    deadline = time.monotonic() + client.timeout
    while info.get("state") in TRANSIENT_STATES and time.monotonic() < deadline:
        time.sleep(POLL_INTERVAL)
        info = module_info(client, str(info["id"]))
    return info


def describe_state(info: dict[str, Any]) -> str:
    """``running, pid 4242`` / ``crashed: <reason>`` / ``disabled``."""
    state = str(info.get("state"))
    if info.get("pid") is not None:
        return f"{state}, pid {info['pid']}"
    if info.get("compiling_for") is not None:
        return f"{state}, {info['compiling_for']:.0f} s so far"
    if state in ("crashed", "failed", "restarting") and info.get("last_reason"):
        return f"{state}: {info['last_reason']}"
    return state


# -- daemon ---------------------------------------------------------------------------


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    with Client(settings) as client:
        health = client.json("GET", "/healthz", auth=False)
        problem: CtlError | None = None
        api_version: object = None
        try:
            api_version = client.json("GET", "/api/modules/version").get("host_api_version")
        except CtlError as exc:
            problem = exc
    if not isinstance(health, dict):
        health = {"status": health}
    healthy = health.get("status") == "ok"
    counts = health.get("modules") or {}
    if settings.json:
        out(pretty_json({"url": settings.url, **health, "host_api_version": api_version}))
    else:
        out(f"vessel is {'running' if healthy else 'unhealthy'} at {settings.url}")
        out(f"host API version: {api_version if api_version is not None else 'unknown'}")
        out(
            f"modules: {counts.get('total', '?')} installed, {counts.get('running', '?')} "
            f"running, {counts.get('failed', '?')} failed"
        )
        not_ok = health.get("not_ok") or []
        if not_ok:
            out(f"modules not ok ({len(not_ok)}):")
            for entry in not_ok:
                out(f"  {format_not_ok(entry)}")
    if problem is not None:
        raise problem
    if not healthy:
        raise CtlError(f"the daemon at {settings.url} reports status {health.get('status')!r}")
    return 0


# -- modules --------------------------------------------------------------------------


def cmd_list(settings: Settings, args: argparse.Namespace) -> int:
    with Client(settings) as client:
        doc = client.json("GET", "/api/modules")
    out(pretty_json(doc) if settings.json else format_module_list(doc))
    return 0


def cmd_info(settings: Settings, args: argparse.Namespace) -> int:
    with Client(settings) as client:
        info = module_info(client, args.id)
        try:
            egress = client.json("GET", module_path(args.id, "egress"))
        except ApiError as exc:
            if exc.status != 404:  # 404: a daemon older than the egress audit
                raise
        else:
            if egress.get("running"):
                info["egress"] = egress.get("destinations", [])
    out(pretty_json(info) if settings.json else format_module_info(info))
    return 0


def cmd_remove(settings: Settings, args: argparse.Namespace) -> int:
    params = {"keep_storage": "true"} if args.keep_storage else {}
    with Client(settings) as client, about_module(args.id):
        client.request("DELETE", module_path(args.id), params=params)
    if not settings.json:
        out(f"removed {args.id}" + (" (storage kept)" if args.keep_storage else ""))
    return 0


def _post_and_settle(client: Client, module_id: str, action: str) -> dict[str, Any]:
    with about_module(module_id):
        info: dict[str, Any] = client.json("POST", module_path(module_id, action))
    return wait_settled(client, info)


def cmd_enable(settings: Settings, args: argparse.Namespace) -> int:
    with Client(settings) as client:
        info = _post_and_settle(client, args.id, "enable")
    out(pretty_json(info) if settings.json else f"enabled {args.id}: {describe_state(info)}")
    return 0


def cmd_disable(settings: Settings, args: argparse.Namespace) -> int:
    with Client(settings) as client:
        info = _post_and_settle(client, args.id, "disable")
    out(pretty_json(info) if settings.json else f"disabled {args.id}: {describe_state(info)}")
    return 0


def cmd_restart(settings: Settings, args: argparse.Namespace) -> int:
    with Client(settings) as client:
        old = module_info(client, args.id)
        try:
            new = _post_and_settle(client, args.id, "restart")
        except ApiError as exc:
            if exc.code == "module_unavailable" and old.get("enabled") is False:
                hint = f"enable it with `vessel-ctl enable {args.id}`"
                raise CtlError(f"{exc.message}; {hint}") from None
            raise
    if settings.json:
        out(pretty_json(new))
    elif new.get("pid") is None:
        raise CtlError(f"{args.id} did not come back: {describe_state(new)}")
    else:
        before = f"pid {old['pid']}" if old.get("pid") is not None else str(old.get("state"))
        out(f"restarted {args.id}: {before} → pid {new['pid']}")
    return 0


# -- calls ----------------------------------------------------------------


def read_params(text: str) -> str:
    """The call's params as JSON text, checked here so a typo never reaches the module."""
    if text == "-":
        text = sys.stdin.read()
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise CtlError(f"invalid JSON for params: {exc}") from None
    if not isinstance(value, dict):
        # The protocol carries any JSON value, but a module's commands (the SDK's, the
        # bundled ones) take an object: say so here rather than in the module's error.
        kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
        raise CtlError(
            "params must be a JSON object, like '{\"n\": 1}' (got "
            f"{kind.get(type(value), 'a number')})"
        )
    return text


def cmd_call(settings: Settings, args: argparse.Namespace) -> int:
    params = read_params(args.params)
    what = f"{args.module}.{args.name}@{args.version}"
    with Client(settings) as client:
        try:
            answer = client.json(
                "POST",
                module_path(args.module, "call", args.name),
                params={"version": str(args.version)},
                content=params.encode(),
                headers={"Content-Type": "application/json"},
            )
        except ApiError as exc:
            if exc.code == "unknown_module":
                raise CtlError(f"unknown module {args.module!r}") from None
            if exc.status == 401:
                raise
            raise CtlError(f"{what} failed ({exc.code}): {exc.message}") from None
    if settings.json:
        out(json.dumps(answer, ensure_ascii=False))
    else:
        out(pretty_json(answer.get("data") if isinstance(answer, dict) else answer))
    return 0
