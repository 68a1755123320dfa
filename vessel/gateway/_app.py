"""The Quart-Trio application and the state its handlers share."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING

import trio
from quart import current_app
from quart_trio import QuartTrio
from quart_trio.asgi import TrioASGIHTTPConnection
from quart_trio.formparser import TrioFormDataParser
from quart_trio.wrappers.request import TrioBody, TrioRequest
from werkzeug.datastructures import MultiDict, iter_multi_items
from werkzeug.exceptions import HTTPException
from werkzeug.formparser import default_stream_factory

from ._auth import own_host_names
from ._errors import error_response

if TYPE_CHECKING:
    from hypercorn.typing import ASGIReceiveCallable
    from quart import Request, Response
    from quart.wrappers.request import Body

    from .._daemon import Daemon

#: Largest request body (module uploads: an ~18 MB component plus its manifest).
MAX_UPLOAD_BYTES = 64 * 1024 * 1024
#: Uploads received at once; more are refused ``too_many_requests``. Each is written to
#: disk as it arrives (so this bounds the data dir's spool, not memory), and installs are
#: one at a time in practice: four leaves room for a retry beside a stuck one.
MAX_UPLOADS = 4


@dataclass
class GatewayState:
    """What every handler needs: the daemon, the auth settings, and a shutdown signal."""

    daemon: Daemon
    #: Browser origins (scheme://host[:port]) allowed on /ws besides the gateway's own.
    allowed_origins: frozenset[str] = frozenset()
    #: Host names answered besides IP literals and localhost (``_auth.host_allowed``):
    #: the machine's own names and ``--allowed-host``.
    allowed_hosts: frozenset[str] = field(default_factory=lambda: own_host_names())
    #: Set when the daemon is shutting down: WebSocket clients are told and closed.
    shutting_down: trio.Event = field(default_factory=trio.Event)
    #: WebSocket connections waiting for their ``auth`` message (``_ws.py``).
    unauthenticated: int = 0
    #: WebSocket clients connected with the token (``_ws.py``; shown by ``/metrics``).
    websocket_clients: int = 0
    #: ``GET /metrics`` answers without the token (``vessel serve --metrics-open``).
    metrics_open: bool = False
    #: Module uploads being received now (``POST /api/modules``).
    uploads: trio.CapacityLimiter = field(default_factory=lambda: trio.CapacityLimiter(MAX_UPLOADS))

    @property
    def token(self) -> str:
        return self.daemon.token


class _FormDataParser(TrioFormDataParser):
    """Quart's form parser, minus a file it can leave open.

    Quart creates the container of a multipart file part when the part's headers arrive,
    and hands it to the request (which closes it at the end) only once the part is
    complete. When the body ends inside a part or is malformed (an upload cut short, junk
    sent as multipart), the container is dropped unclosed: a ResourceWarning when it is
    collected and, for a part over 500 KiB, a temporary file held until then. Found by
    tests/adversarial (upload fuzz). Every container the request did not receive is
    closed here.
    """

    async def parse(
        self,
        body: Body,
        mimetype: str,
        content_length: int | None,
        options: dict[str, str] | None = None,
    ) -> tuple[MultiDict, MultiDict]:  # type: ignore[type-arg]
        opened: list[IO[bytes]] = []

        def stream_factory(
            total_length: int | None,
            content_type: str | None,
            filename: str | None,
            length: int | None = None,
        ) -> IO[bytes]:
            stream = default_stream_factory(total_length, content_type, filename, length)
            opened.append(stream)
            return stream

        self.stream_factory = stream_factory
        received: set[int] = set()
        try:
            form, files = await super().parse(body, mimetype, content_length, options)
            received = {id(upload.stream) for _, upload in iter_multi_items(files)}
            return form, files
        finally:
            for stream in opened:
                if id(stream) not in received:
                    stream.close()


class _Body(TrioBody):
    """Quart's request body, which a streaming reader can hold to a bound.

    Quart appends what Hypercorn receives to the body as fast as it arrives, whoever
    reads it: an upload written to a busy disk piled up here (four parallel uploads took
    the daemon up ~100 MiB while another process wrote to the disk). A handler that reads
    the body as a stream sets :attr:`held_at_most`; the connection then stops taking
    Hypercorn's messages while that much is unread, so Hypercorn stops reading the socket
    and the client waits. (Off by default: a handler that awaits the whole body must get
    all of it.)
    """

    def __init__(self, expected_content_length: int | None, max_content_length: int | None) -> None:
        super().__init__(expected_content_length, max_content_length)
        self.held_at_most: int | None = None
        self._taken = trio.Event()

    async def __anext__(self) -> bytes:
        data = await super().__anext__()
        self._taken.set()
        return data

    def release(self) -> None:
        """The stream reading is over (read, or refused): take what comes again, so the
        connection can read on to its end (a refused body is dropped, then the socket
        closed: _serve.py) instead of waiting for a reader that is gone."""
        self.held_at_most = None
        self._taken.set()

    async def room(self) -> None:
        """Return once the body holds less than :attr:`held_at_most` unread."""
        while self.held_at_most is not None and len(self._data) >= self.held_at_most:
            self._taken = trio.Event()
            await self._taken.wait()


class _HTTPConnection(TrioASGIHTTPConnection):
    async def handle_messages(  # type: ignore[override]
        self, nursery: trio.Nursery, request: Request, receive: ASGIReceiveCallable
    ) -> None:
        # Quart's loop, with a wait for room in a body read as a stream (_Body).
        body = request.body
        while True:
            if isinstance(body, _Body):
                await body.room()
            message = await receive()
            if message["type"] == "http.request":
                body.append(message.get("body", b""))
                if not message.get("more_body", False):
                    body.set_complete()
            elif message["type"] == "http.disconnect":
                break
        nursery.cancel_scope.cancel()


class _Request(TrioRequest):
    form_data_parser_class = _FormDataParser
    body_class = _Body


def gateway_state() -> GatewayState:
    """The state of the app serving the current request or WebSocket."""
    state: GatewayState = current_app.extensions["vessel"]
    return state


def create_app(state: GatewayState) -> QuartTrio:
    app = QuartTrio("vessel", static_folder=None)
    app.request_class = _Request
    app.asgi_http_class = _HTTPConnection
    app.config["MAX_CONTENT_LENGTH"] = MAX_UPLOAD_BYTES
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = True
    app.extensions["vessel"] = state

    from ._metrics import metrics
    from ._rest import rest
    from ._static import static
    from ._ws import ws

    app.register_blueprint(rest)
    app.register_blueprint(metrics)
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
