"""The REST API: ``/healthz`` and everything under ``/api`` (reference: docs/api.md).

Every ``/api`` request needs ``Authorization: Bearer <token>``; the check runs for every
path under ``/api``, routed or not, so an unknown path or method tells a caller without
the token nothing. Module ids and config keys in paths are checked before a handler
runs: an id that is not well-formed is ``404 unknown_module`` without touching anything.
Handlers signal errors by raising (``ApiError``, the manager's exceptions); the error
handlers turn each into ``{"code", "message"}`` with its status. Those checks and error
handlers live in ``_rest_hooks``; shared checks and module views in ``_rest_support``;
logs and the follow stream in ``_rest_logs``.
"""

from __future__ import annotations

from typing import Any

import msgspec
from quart import Blueprint, Response, jsonify, request

from .._errors import (
    AlreadyInstalled,
    CallError,
    ComponentError,
    DiskWriteError,
    ManifestError,
    QuotaExceeded,
    StorageError,
    TamperError,
    UnknownModule,
    UnknownSetting,
)
from .._manager import ModuleManager
from .._manifest import HOST_API_VERSION, parse_manifest
from ._app import gateway_state
from ._rest_hooks import install_hooks
from ._rest_logs import NDJSON, follow_stream, recent_lines
from ._rest_support import (
    ApiError,
    call_params,
    decode_config_value,
    health_counts,
    memory_of,
    module_detail,
    module_info,
    module_info_live,
    query_bool,
    query_lines,
    query_version,
)

rest = Blueprint("rest", __name__)
install_hooks(rest)


def _manager() -> ModuleManager:
    return gateway_state().daemon.manager


def _json(body: Any, status: int = 200) -> Response:
    response = jsonify(body)
    response.status_code = status
    return response


def _no_content() -> Response:
    return Response("", status=204)


async def _body() -> bytes:
    data = await request.get_data()
    return data if isinstance(data, bytes) else data.encode()


# -- health and modules ----------------------------------------------------------------


@rest.get("/healthz")
async def healthz() -> Response:
    return _json({"status": "ok", "modules": health_counts(_manager())})


@rest.get("/api/modules")
async def list_modules() -> Response:
    manager = _manager()
    ids = manager.ids()
    memory = await memory_of(manager, ids)
    modules = []
    for module_id in ids:
        try:
            modules.append(module_info(manager, module_id, memory.get(module_id)))
        except UnknownModule:  # removed while we gathered
            continue
    refused = [{"id": r.module_id, "reason": r.reason, "dir": str(r.dir)} for r in manager.refused]
    return _json({"modules": modules, "refused": refused})


@rest.get("/api/modules/version")
async def api_version() -> Response:
    return _json({"host_api_version": HOST_API_VERSION})


@rest.get("/api/modules/<module_id>")
async def module(module_id: str) -> Response:
    manager = _manager()
    manager.state(module_id)
    memory = await memory_of(manager, [module_id])
    return _json(module_detail(manager, module_id, memory.get(module_id)))


async def _upload(name: str) -> bytes | None:
    """A multipart field as bytes: a file part (``-F name=@file``) or a plain field."""
    files = await request.files
    upload = files.get(name)
    if upload is not None:
        data: bytes = upload.read()
        return data
    form = await request.form
    value = form.get(name)
    return None if value is None else str(value).encode()


@rest.post("/api/modules")
async def install() -> Response:
    replace = query_bool(request.args, "replace")
    manifest_bytes = await _upload("manifest")
    wasm_bytes = await _upload("wasm")
    missing = [n for n, v in (("manifest", manifest_bytes), ("wasm", wasm_bytes)) if v is None]
    if manifest_bytes is None or wasm_bytes is None:
        raise ApiError(
            "invalid_request",
            f"missing multipart field {' and '.join(repr(n) for n in missing)} (send "
            "manifest.json as 'manifest' and module.wasm as 'wasm')",
        )
    manager = _manager()
    try:
        module_id = parse_manifest(manifest_bytes, source="the uploaded manifest").id
    except ManifestError as exc:
        raise ApiError("invalid_module", str(exc)) from None
    if not replace and _installed(manager, module_id):
        raise _already_installed(module_id)
    try:
        await manager.install(manifest_bytes, wasm_bytes, replace=replace)
    except AlreadyInstalled:  # lost a race with another install of the same id
        raise _already_installed(module_id) from None
    except ManifestError as exc:
        raise ApiError("invalid_module", str(exc)) from None
    except ComponentError as exc:
        raise ApiError("invalid_module", str(exc)) from None
    return _json(await module_info_live(manager, module_id), 201)


def _installed(manager: ModuleManager, module_id: str) -> bool:
    refused = any(r.module_id == module_id for r in manager.refused)
    return refused or module_id in manager.ids()


def _already_installed(module_id: str) -> ApiError:
    return ApiError(
        "already_installed",
        f"module {module_id!r} is already installed; install with ?replace=true to replace "
        "it, or remove it first",
    )


@rest.delete("/api/modules/<module_id>")
async def remove(module_id: str) -> Response:
    keep = query_bool(request.args, "keep_storage")
    await _manager().remove(module_id, keep_storage=keep)
    return _no_content()


@rest.post("/api/modules/<module_id>/enable")
async def enable(module_id: str) -> Response:
    await _manager().enable(module_id)
    return _json(await module_info_live(_manager(), module_id))


@rest.post("/api/modules/<module_id>/disable")
async def disable(module_id: str) -> Response:
    await _manager().disable(module_id)
    return _json(await module_info_live(_manager(), module_id))


@rest.post("/api/modules/<module_id>/restart")
async def restart(module_id: str) -> Response:
    try:
        await _manager().restart(module_id)
    except CallError as exc:  # disabled: a conflict with the module's state
        raise ApiError(exc.code, exc.message, status=409) from None
    except (ManifestError, TamperError) as exc:  # its folder no longer loads; nothing changed
        raise ApiError("invalid_module", str(exc)) from None
    return _json(await module_info_live(_manager(), module_id))


# -- logs ------------------------------------------------------------------------------


@rest.get("/api/modules/<module_id>/logs")
async def logs(module_id: str) -> Response:
    count = query_lines(request.args)
    follow = query_bool(request.args, "follow")
    manager = _manager()
    lines = recent_lines(manager, module_id, count)  # UnknownModule -> 404
    if not follow:
        return _json({"lines": lines})
    stream = follow_stream(manager, module_id, count, gateway_state().shutting_down)
    response = Response(stream, mimetype=NDJSON)
    response.timeout = None  # a follow lasts as long as the client wants it
    response.headers["Cache-Control"] = "no-store"
    return response


# -- config ----------------------------------------------------------------------------


@rest.get("/api/modules/<module_id>/config")
async def config_keys(module_id: str) -> Response:
    # Keys only: values hold secrets (tokens) and are read one at a time, on purpose.
    manager = _manager()
    return _json(
        {"keys": manager.config_keys(module_id), "settings": manager.config_settings(module_id)}
    )


@rest.get("/api/modules/<module_id>/config/<path:key>")
async def config_get(module_id: str, key: str) -> Response:
    value = _manager().config_get(module_id, key)
    if value is None:
        raise ApiError("not_found", f"module {module_id!r} has no config key {key!r}")
    return _json({"key": key, "value": value})


@rest.put("/api/modules/<module_id>/config/<path:key>")
async def config_set(module_id: str, key: str) -> Response:
    manager = _manager()
    manager.state(module_id)  # 404 before reading the body
    value = decode_config_value(await _body())
    try:
        manager.config_set(module_id, key, value)
    except UnknownSetting as exc:
        raise ApiError("invalid_request", str(exc)) from None
    except QuotaExceeded as exc:
        raise ApiError("too_large", str(exc)) from None
    except DiskWriteError:
        raise  # 507 insufficient_storage, by the hook
    except StorageError as exc:
        raise ApiError("invalid_request", str(exc)) from None
    return _no_content()


@rest.delete("/api/modules/<module_id>/config/<path:key>")
async def config_delete(module_id: str, key: str) -> Response:
    if not _manager().config_delete(module_id, key):
        raise ApiError("not_found", f"module {module_id!r} has no config key {key!r}")
    return _no_content()


# -- calls -----------------------------------------------------------------------------


@rest.post("/api/modules/<module_id>/call/<name>")
async def call(module_id: str, name: str) -> Response:
    version = query_version(request.args)
    params = call_params(await _body())
    answer = (await _manager().call(module_id, name, version, params)).encode()
    try:
        msgspec.json.decode(answer)
    except msgspec.DecodeError:
        raise ApiError(
            "module_error", f"module {module_id!r} answered {name!r} with text that is not JSON"
        ) from None
    # The module's JSON goes out byte for byte, not decoded and re-encoded.
    body = msgspec.json.encode({"data": msgspec.Raw(answer)})
    return Response(body, mimetype="application/json")
