"""JSON errors for the REST API: ``{"code": ..., "message": ...}`` with the right status."""

from __future__ import annotations

from quart import Response, jsonify

#: Stable error codes (shared with the WebSocket protocol) and their HTTP status.
STATUS: dict[str, int] = {
    "invalid_request": 400,
    "invalid_message": 400,
    "invalid_module": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "unknown_module": 404,
    "unknown_command": 404,
    "method_not_allowed": 405,
    "already_installed": 409,
    "install_in_progress": 409,
    "host_not_allowed": 421,
    "request_timeout": 408,
    "too_large": 413,
    "too_many_requests": 429,
    "too_many_subscriptions": 429,
    "module_error": 502,
    "module_unavailable": 503,
    "timeout": 504,
    "internal_error": 500,
    "insufficient_storage": 507,
}


def error_response(status: int, code: str, message: str) -> Response:
    response = jsonify({"code": code, "message": message})
    response.status_code = status
    return response


def error_for(code: str, message: str) -> Response:
    return error_response(STATUS.get(code, 500), code, message)
