"""The Quart-Trio application and the state its handlers share."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio
from quart import current_app
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from ._errors import error_response

if TYPE_CHECKING:
    from quart import Response

    from .._daemon import Daemon

#: Largest request body (module uploads: an ~18 MB component plus its manifest).
MAX_UPLOAD_BYTES = 64 * 1024 * 1024


@dataclass
class GatewayState:
    """What every handler needs: the daemon, the auth settings, and a shutdown signal."""

    daemon: Daemon
    #: Browser origins (scheme://host[:port]) allowed on /ws besides the gateway's own.
    allowed_origins: frozenset[str] = frozenset()
    #: Set when the daemon is shutting down: WebSocket clients are told and closed.
    shutting_down: trio.Event = field(default_factory=trio.Event)

    @property
    def token(self) -> str:
        return self.daemon.token


def gateway_state() -> GatewayState:
    """The state of the app serving the current request or WebSocket."""
    state: GatewayState = current_app.extensions["vessel"]
    return state


def create_app(state: GatewayState) -> QuartTrio:
    app = QuartTrio("vessel", static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = MAX_UPLOAD_BYTES
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = True
    app.extensions["vessel"] = state

    from ._rest import rest
    from ._static import static
    from ._ws import ws

    app.register_blueprint(rest)
    app.register_blueprint(ws)
    app.register_blueprint(static)

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        # Quart's HTML error pages become the API's JSON errors.
        code = {
            404: "not_found",
            405: "method_not_allowed",
            413: "too_large",
            500: "internal_error",
        }.get(exc.code or 500, "invalid_request")
        return error_response(exc.code or 500, code, exc.description or exc.name)

    return app
