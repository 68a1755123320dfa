"""What runs around every REST handler: the token check, path checks, error translation.

``install_hooks(blueprint)`` registers them on the ``rest`` blueprint.
"""

from __future__ import annotations

from quart import Blueprint, Response, request
from werkzeug.exceptions import HTTPException, NotFound

from .._errors import CallError, DiskWriteError, StorageError, UnknownModule
from .._manifest import is_valid_module_id
from ._app import gateway_state
from ._auth import bearer_token, host_allowed, token_matches
from ._errors import STATUS, error_for, error_response
from ._rest_support import ApiError, check_command_name, check_config_key, log

MODULES_PREFIX = "/api/modules/"

#: The error code of an HTTP error Quart raises itself (413 from the body limit, 500 for
#: an unexpected exception): the first code of ``STATUS`` with that status.
_CODE_OF_STATUS: dict[int, str] = {}
for _code, _status in STATUS.items():
    _CODE_OF_STATUS.setdefault(_status, _code)


def _unknown_module(module_id: str) -> Response:
    return error_for("unknown_module", f"no module {module_id!r} is installed")


async def _check_host() -> Response | None:
    """Every HTTP request, first: a ``Host`` the gateway does not serve (DNS rebinding)
    is refused before anything else is looked at (_auth.host_allowed)."""
    host = request.headers.get("Host")
    if host_allowed(host, gateway_state().allowed_hosts):
        return None
    log.warning("refused a request for host %r (vessel serve --allowed-host NAME)", host)
    return error_response(
        421,
        "host_not_allowed",
        f"this gateway does not serve the host {host!r}; if that name is this machine, "
        "start vessel serve with --allowed-host NAME",
    )


async def _authenticate() -> Response | None:
    """Runs for every HTTP request of the app, routed or not; acts on ``/api`` only, so
    an unknown path or a wrong method tells a caller without the token nothing."""
    path = request.path
    if path != "/api" and not path.startswith("/api/"):
        return None
    presented = bearer_token(request.headers.get("Authorization"))
    if not token_matches(gateway_state().token, presented):
        response = error_response(401, "unauthorized", "missing or wrong bearer token")
        response.headers["WWW-Authenticate"] = "Bearer"
        return response
    if isinstance(request.routing_exception, NotFound) and path.startswith(MODULES_PREFIX):
        # "/api/modules/..%2Fx" arrives decoded as "/api/modules/../x": no route matches,
        # and what is wrong is the id.
        segment = path[len(MODULES_PREFIX) :].split("/", 1)[0]
        if segment and not is_valid_module_id(segment):
            return _unknown_module(segment)
    return None


async def _check_path_values() -> Response | None:
    """Ids and keys taken from the path are checked before any handler sees them."""
    args = request.view_args or {}
    module_id = args.get("module_id")
    if module_id is not None and not is_valid_module_id(module_id):
        return _unknown_module(module_id)
    key = args.get("key")
    if key is not None:
        check_config_key(key)
    name = args.get("name")
    if name is not None:
        check_command_name(name)
    return None


async def _api_error(exc: ApiError) -> Response:
    return error_response(exc.status, exc.code, exc.message)


async def _unknown(exc: UnknownModule) -> Response:
    return error_for("unknown_module", str(exc))


async def _call_error(exc: CallError) -> Response:
    return error_for(exc.code, exc.message)


async def _storage_error(exc: StorageError) -> Response:
    log.error("storage error in %s %s: %s", request.method, request.path, exc)
    return error_for("internal_error", str(exc))


async def _disk_write_error(exc: DiskWriteError) -> Response:
    # Not our bug and not the client's: the data dir's file system refused the write.
    log.error("cannot write the data dir in %s %s: %s", request.method, request.path, exc)
    return error_for("insufficient_storage", str(exc))


async def _http_error(exc: HTTPException) -> Response:
    status = exc.code or 500
    code = _CODE_OF_STATUS.get(status, "internal_error" if status >= 500 else "invalid_request")
    response = error_response(status, code, exc.description or exc.name)
    if status == 413:
        # The rest of the body was never read: the connection cannot carry another
        # request, so tell the client not to reuse it.
        response.headers["Connection"] = "close"
    return response


def install_hooks(blueprint: Blueprint) -> None:
    blueprint.before_app_request(_check_host)
    blueprint.before_app_request(_authenticate)
    blueprint.before_request(_check_path_values)
    blueprint.register_error_handler(ApiError, _api_error)
    blueprint.register_error_handler(UnknownModule, _unknown)
    blueprint.register_error_handler(CallError, _call_error)
    blueprint.register_error_handler(DiskWriteError, _disk_write_error)
    blueprint.register_error_handler(StorageError, _storage_error)
    # Quart's own errors in our handlers (body too large, an unexpected exception, which
    # Quart logs) as JSON with a code, like every other error of the API.
    blueprint.register_error_handler(HTTPException, _http_error)
