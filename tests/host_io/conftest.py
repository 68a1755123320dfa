"""Real peers for the host I/O services, all on 127.0.0.1 with a port chosen by the OS.

* ``WsPeer``: a trio-websocket server whose behaviour depends on the request path, and
  which records what it receives and how each connection was closed.
* ``serve_raw_ws``: a bare TCP server that speaks just enough wsproto to accept a
  handshake, for misbehaving peers that a well-behaved library cannot play (dropping TCP
  without a close frame, never reading).
* ``serve_http``: Hypercorn serving a small raw ASGI app (echo, status, big, redirect).
* ``refused_port``: a port nobody listens on.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pytest
import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from trio_websocket import ConnectionClosed, WebSocketRequest, serve_websocket
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request


@dataclass
class WsPeer:
    """A WebSocket server. Paths: ``/echo`` (echoes ``echo:`` messages, records all),
    ``/close`` (says "bye soon" then closes with 1000 "bye"), ``/reject`` (HTTP 403),
    ``/binary`` (sends binary frames, then "after"), ``/big`` (sends 200 characters)."""

    port: int = 0
    received: list[str] = field(default_factory=list)
    #: Close code the server saw for each ended connection, in order.
    close_codes: list[int | None] = field(default_factory=list)
    _changed: trio.Event = field(default_factory=trio.Event)

    def url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    async def wait_for(self, condition: Callable[[], bool]) -> None:
        """Wait until ``condition()`` holds (the caller bounds the wait)."""
        while not condition():
            await self._changed.wait()

    def _note(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def handler(self, request: WebSocketRequest) -> None:
        if request.path == "/reject":
            await request.reject(403)
            return
        ws = await request.accept()
        try:
            if request.path == "/close":
                await ws.send_message("bye soon")
                await ws.aclose(1000, "bye")
            elif request.path == "/binary":
                await ws.send_message(json.dumps({"a": 1}).encode())
                await ws.send_message(b"\xff\xfe not utf-8")
                await ws.send_message("after")
            elif request.path == "/big":
                await ws.send_message("x" * 200)
            while True:
                message = await ws.get_message()
                assert isinstance(message, str)
                self.received.append(message)
                self._note()
                if message.startswith("echo:"):
                    await ws.send_message(message)
        except ConnectionClosed as exc:
            self.close_codes.append(exc.reason.code if exc.reason else None)
            self._note()


@pytest.fixture
async def ws_peer(nursery: trio.Nursery) -> WsPeer:
    peer = WsPeer()
    server = await nursery.start(serve_websocket, peer.handler, "127.0.0.1", 0, None)
    peer.port = server.port
    return peer


async def serve_raw_ws(
    nursery: trio.Nursery,
    after_accept: Callable[[trio.SocketStream, WSConnection], Awaitable[None]],
) -> int:
    """Accept one websocket handshake per connection with bare wsproto, then hand the
    TCP stream to ``after_accept``. Returns the port."""

    async def handler(stream: trio.SocketStream) -> None:
        conn = WSConnection(ConnectionType.SERVER)
        async with stream:
            while data := await stream.receive_some():
                conn.receive_data(data)
                for event in conn.events():
                    if isinstance(event, Request):
                        await stream.send_all(conn.send(AcceptConnection()))
                        await after_accept(stream, conn)
                        return

    listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    port: int = listeners[0].socket.getsockname()[1]
    return port


@pytest.fixture
def refused_port() -> int:
    """A port that was just free: connecting to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- HTTP ----------------------------------------------------------------------------------

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def http_app(scope: Scope, receive: Receive, send: Send) -> None:
    """``/echo`` answers JSON with the request's method, headers and body;
    ``/status/<n>`` answers status n; ``/big/<n>`` answers n bytes (with or without a
    content-length: ``?chunked``); ``/latin1`` answers ISO-8859-1 text; ``/redirect/<n>``
    redirects n times before landing on ``/echo``."""
    if scope["type"] == "lifespan":
        while (message := await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    path: str = scope["path"]
    status = 200
    headers: list[tuple[bytes, bytes]] = [(b"content-type", b"application/json")]
    if path == "/echo":
        payload = json.dumps(
            {
                "method": scope["method"],
                "headers": [[k.decode(), v.decode()] for k, v in scope["headers"]],
                "body": body.decode(),
            }
        ).encode()
        headers.append((b"x-reply", b"yes"))
    elif path.startswith("/status/"):
        status = int(path.rsplit("/", 1)[1])
        payload = b'{"error": "not here"}'
    elif path.startswith("/big/"):
        payload = b"y" * int(path.rsplit("/", 1)[1])
        if scope["query_string"] == b"chunked":
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            for start in range(0, len(payload), 1000):
                chunk = payload[start : start + 1000]
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return
    elif path == "/latin1":
        headers = [(b"content-type", b"text/plain; charset=iso-8859-1")]
        payload = "café".encode("latin-1")
    elif path.startswith("/redirect/"):
        left = int(path.rsplit("/", 1)[1])
        status = 302
        target = f"/redirect/{left - 1}" if left > 1 else "/echo"
        headers = [(b"location", target.encode())]
        payload = b""
    else:
        status, payload = 404, b""
    headers.append((b"content-length", str(len(payload)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


@pytest.fixture
async def http_base(nursery: trio.Nursery) -> str:
    """Base URL (``http://127.0.0.1:<port>``) of a Hypercorn server running ``http_app``."""
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 0.1
    binds: list[str] = await nursery.start(serve, http_app, config)
    return binds[0]
