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

import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketRequest, serve_websocket
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request

from ..servers import serve_http


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


@pytest.fixture
async def http_base(nursery: trio.Nursery) -> str:
    """Base URL (``http://127.0.0.1:<port>``) of a Hypercorn server running
    ``tests.servers.http_app``."""
    return await serve_http(nursery)
