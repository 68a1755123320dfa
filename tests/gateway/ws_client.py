"""Client helpers shared by the /ws tests (this module holds no tests).

``ws_client`` opens a real trio-websocket client on a TCP stream the helper owns, so the
socket is closed even when the server ends the connection first (trio-websocket's own
``open_websocket_url`` leaves that socket to the garbage collector, which the suite's
``filterwarnings = error`` turns into a failure).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_client_stream

from .harness import Gateway

#: Seconds any single wait for the server may take.
WAIT = 10.0

Message = dict[str, Any]


@asynccontextmanager
async def ws_client(
    gw: Gateway,
    *,
    token: str | None = "",
    origin: str | None = None,
    queue_size: int = 1,
    max_message_size: int = 2 * 1024 * 1024,
) -> AsyncIterator[WebSocketConnection]:
    """A connection to ``gw``'s /ws. ``token=""`` sends the admin token in the
    Authorization header, ``None`` sends no header (browser style), any other value is
    sent as given."""
    url = urlsplit(gw.ws_url)
    assert url.hostname is not None
    assert url.port is not None
    headers: list[tuple[bytes, bytes]] = []
    if token is not None:
        headers.append((b"Authorization", f"Bearer {token or gw.token}".encode()))
    if origin is not None:
        headers.append((b"Origin", origin.encode()))
    with trio.fail_after(WAIT):
        stream = await trio.open_tcp_stream(url.hostname, url.port)
    async with stream, trio.open_nursery() as nursery:
        with trio.fail_after(WAIT):
            conn = await wrap_client_stream(
                nursery,
                stream,
                url.netloc,
                "/ws",
                extra_headers=headers,
                message_queue_size=queue_size,
                max_message_size=max_message_size,
            )
        try:
            yield conn
        finally:
            with trio.move_on_after(2):
                await conn.aclose()
            nursery.cancel_scope.cancel()


async def receive(conn: WebSocketConnection, *, timeout: float = WAIT) -> Message:
    """The next message, decoded."""
    with trio.fail_after(timeout):
        raw = await conn.get_message()
    message: Message = json.loads(raw)
    return message


async def receive_until(
    conn: WebSocketConnection, match: Callable[[Message], bool], *, timeout: float = WAIT
) -> tuple[Message, list[Message]]:
    """The first message that ``match``es, and every message received before it."""
    before: list[Message] = []
    with trio.fail_after(timeout):
        while not match(message := await receive(conn, timeout=timeout)):
            before.append(message)
    return message, before


async def ready(conn: WebSocketConnection) -> None:
    assert await receive(conn) == {"type": "ready", "protocol": 1, "host_api_version": 1}


async def send(conn: WebSocketConnection, message: Message) -> None:
    await conn.send_message(json.dumps(message))


async def call(
    conn: WebSocketConnection, module: str, name: str, params: Any = None, *, rid: str = "c"
) -> Message:
    """Send one call and return its response (other messages before it are skipped)."""
    message: Message = {"type": "call", "request_id": rid, "module": module, "name": name}
    if params is not None:
        message["params"] = params
    await send(conn, message)
    response, _ = await receive_until(conn, lambda m: is_response(m, rid))
    return response


def is_response(message: Message, rid: str) -> bool:
    return message.get("type") == "response" and message.get("request_id") == rid


def is_event(message: Message, module: str, name: str) -> bool:
    return message.get("type") == "event" and (message["module"], message["name"]) == (
        module,
        name,
    )


async def closed_with(conn: WebSocketConnection, *, timeout: float = WAIT) -> tuple[int, str]:
    """Read until the server closes the connection: its close (code, reason)."""
    with trio.fail_after(timeout):
        try:
            while True:
                await conn.get_message()
        except ConnectionClosed as exc:
            close = exc.reason
            assert close is not None
            return close.code, close.reason or ""
