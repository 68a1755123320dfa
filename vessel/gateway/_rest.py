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
import trio
from quart import Blueprint, Response, current_app, jsonify, request

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
from .._installs import KEEP_ENDED, InstallInProgress, TooManyInstalls
from .._json_check import json_problem
from .._manager import ModuleManager
from .._manifest import HOST_API_VERSION, parse_manifest
from .._paths import modules_dir
from ._app import MAX_UPLOAD_BYTES, gateway_state
from ._rest_hooks import install_hooks
from ._rest_logs import log_query, log_response
from ._rest_support import (
    ApiError,
    call_params,
    decode_config_value,
    health_counts,
    install_info,
    memory_of,
    module_detail,
    module_info,
    module_info_live,
    modules_not_ok,
    query_bool,
    query_version,
)
from ._upload import UPLOAD_HELD, drain, receive_upload

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
    # 200 whenever the daemon answers: a module's trouble is detail, not the daemon's.
    manager = _manager()
    return _json(
        {"status": "ok", "modules": health_counts(manager), "not_ok": modules_not_ok(manager)}
    )


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
    installing = [install_info(manager, record) for record in manager.installs.all()]
    return _json({"modules": modules, "refused": refused, "installing": installing})


@rest.get("/api/modules/version")
async def api_version() -> Response:
    return _json({"host_api_version": HOST_API_VERSION})


@rest.get("/api/modules/<module_id>")
async def module(module_id: str) -> Response:
    manager = _manager()
    manager.state(module_id)
    memory = await memory_of(manager, [module_id])
    return _json(module_detail(manager, module_id, memory.get(module_id)))


@rest.post("/api/modules")
async def install() -> Response:
    replace = query_bool(request.args, "replace")
    wait = query_bool(request.args, "wait", default=True)
    manager = _manager()

    def check_manifest(manifest: bytes) -> None:
        # As soon as the manifest part is in: a bad one (limits above the daemon's
        # ceilings included), or an id that is installed or being installed, is answered
        # before the component is stored.
        try:
            module_id = manager.parse_manifest(manifest).id
        except ManifestError as exc:
            raise ApiError("invalid_module", str(exc)) from None
        if not replace and manager.is_installed(module_id):
            raise _already_installed(module_id)
        current = manager.installs.get(module_id)
        if current is not None and current.under_way:
            raise _in_progress(module_id)

    uploads = gateway_state().uploads
    try:
        uploads.acquire_nowait()
    except trio.WouldBlock:
        await drain(request.body, MAX_UPLOAD_BYTES, _body_timeout())  # a clean answer
        raise ApiError(
            "too_many_requests",
            f"{uploads.total_tokens:.0f} uploads are being received already; retry when one "
            "is done",
        ) from None
    body = request.body
    if hasattr(body, "held_at_most"):  # read as a stream: hold at most this much unread
        body.held_at_most = UPLOAD_HELD
    try:
        upload = await receive_upload(
            body,
            request.headers.get("content-type", ""),
            modules_dir=modules_dir(manager.data_dir),
            max_bytes=MAX_UPLOAD_BYTES,
            idle_timeout=_body_timeout(),
            check_manifest=check_manifest,
        )
    finally:
        uploads.release()
        if hasattr(body, "release"):
            body.release()
    try:
        record = await manager.begin_install(upload.manifest, upload.wasm, replace=replace)
    except AlreadyInstalled:  # lost a race with another install of the same id
        raise _already_installed(_id_of(upload.manifest)) from None
    except InstallInProgress:
        raise _in_progress(_id_of(upload.manifest)) from None
    except TooManyInstalls as exc:
        raise ApiError("too_many_requests", str(exc)) from None
    except (ManifestError, ComponentError) as exc:
        raise ApiError("invalid_module", str(exc)) from None
    finally:
        with trio.CancelScope(shield=True):  # also when the client went away meanwhile
            await trio.to_thread.run_sync(upload.discard)
    module_id = record.module_id
    if not wait:
        response = _json(install_info(manager, record), 202)
        response.headers["Location"] = f"/api/modules/{module_id}/install"
        return response
    await record.ended.wait()  # the daemon's: it goes on if this client goes away
    if isinstance(record.error, ComponentError):
        raise ApiError("invalid_module", str(record.error))
    if isinstance(record.error, DiskWriteError):
        raise record.error
    if record.error is not None:  # the machine, not the module: a compile process killed
        raise ApiError("internal_error", str(record.error))
    return _json(await module_info_live(manager, module_id), 201)


@rest.get("/api/modules/<module_id>/install")
async def install_status(module_id: str) -> Response:
    manager = _manager()
    record = manager.installs.get(module_id)
    if record is None:
        raise ApiError(
            "unknown_module",
            f"no install of {module_id!r} is under way or ended in the last "
            f"{KEEP_ENDED / 60:.0f} minutes",
        )
    return _json(install_info(manager, record))


def _id_of(manifest: bytes) -> str:
    return parse_manifest(manifest, source="the uploaded manifest").id


def _body_timeout() -> float:
    timeout = current_app.config.get("BODY_TIMEOUT")
    return float(timeout) if timeout else 60.0


def _in_progress(module_id: str) -> ApiError:
    return ApiError(
        "install_in_progress",
        f"module {module_id!r} is being installed already; wait for that install to end "
        f"(GET /api/modules/{module_id}/install)",
    )


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
    query = log_query(request.args)
    return log_response(_manager().log_book(module_id), query)  # UnknownModule -> 404


@rest.get("/api/daemon/logs")
async def daemon_logs() -> Response:
    """The daemon's own log (its records, not the modules' lines: those are theirs).

    Not ``/api/logs``: a client normalises ``/api/modules/../logs`` (a module id ``..``)
    to that, and an id must never lead to another endpoint."""
    return log_response(_manager().logbook.daemon, log_query(request.args))


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
    manager = _manager()
    value = manager.config_get(module_id, key)
    if value is None:
        setting = manager.get(module_id).manifest.settings.get(key)
        if setting is not None:  # declared: say so, rather than "no such key"
            need = "required" if setting.required else "optional"
            raise ApiError(
                "not_found",
                f"module {module_id!r} declares the setting {key!r} ({need}), and it is not set",
            )
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


# -- storage and history ---------------------------------------------------------------


@rest.get("/api/modules/<module_id>/storage")
async def storage_keys(module_id: str) -> Response:
    # The module's own keys, apart from its declared settings (its configuration): read
    # only here, since what they mean is the module's business.
    return _json(_manager().storage_listing(module_id))


@rest.get("/api/modules/<module_id>/storage/<path:key>")
async def storage_get(module_id: str, key: str) -> Response:
    manager = _manager()
    value = manager.config_get(module_id, key)
    if key in manager.get(module_id).manifest.settings:  # configuration, not storage
        raise ApiError(
            "not_found",
            f"{key!r} is a setting of module {module_id!r}, not storage: read it at "
            f"/api/modules/{module_id}/config/{key}",
        )
    if value is None:
        raise ApiError("not_found", f"module {module_id!r} has no storage key {key!r}")
    return _json({"key": key, "value": value})


@rest.get("/api/modules/<module_id>/egress")
async def egress(module_id: str) -> Response:
    # Where the module's http-fetch and websockets went since its process started
    # (vessel.host._egress): asked of the process, which is where the traffic is.
    entries = await _manager().get(module_id).egress()
    return _json({"running": entries is not None, "destinations": entries or []})


@rest.get("/api/modules/<module_id>/history")
async def history(module_id: str) -> Response:
    manager = _manager()
    manager.state(module_id)  # 404 for an id that is not installed
    return _json({"history": manager.history.entries(module_id)})


# -- calls -----------------------------------------------------------------------------


@rest.post("/api/modules/<module_id>/call/<name>")
async def call(module_id: str, name: str) -> Response:
    version = query_version(request.args)
    params = call_params(await _body())
    answer = (await _manager().call(module_id, name, version, params)).encode()
    if json_problem(answer) is not None:
        raise ApiError(
            "module_error", f"module {module_id!r} answered {name!r} with text that is not JSON"
        ) from None
    # The module's JSON goes out byte for byte, not decoded and re-encoded.
    body = msgspec.json.encode({"data": msgspec.Raw(answer)})
    return Response(body, mimetype="application/json")
