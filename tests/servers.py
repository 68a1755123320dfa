"""Small real servers that tests point module processes at (127.0.0.1 only)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio
import trio_websocket
from hypercorn.config import Config
from hypercorn.trio import serve

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


async def serve_http(nursery: trio.Nursery, *, tls_pem: Path | None = None) -> str:
    """Serve ``http_app`` on 127.0.0.1 (a free port) in ``nursery``; its base URL.

    ``tls_pem``: a file with the server's key and certificate chain: https://."""
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 0.1
    if tls_pem is not None:
        config.certfile = config.keyfile = str(tls_pem)
    binds: list[str] = await nursery.start(serve, http_app, config)
    return binds[0]


async def serve_ws_echo(nursery: trio.Nursery) -> int:
    """A WebSocket server on 127.0.0.1 (a free port) in ``nursery`` that answers each
    message ``m`` with ``echo:m``; its port."""

    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        try:
            while True:
                await ws.send_message(f"echo:{await ws.get_message()!s}")
        except trio_websocket.ConnectionClosed:
            pass

    server = await nursery.start(trio_websocket.serve_websocket, handler, "127.0.0.1", 0, None)
    port: int = server.port
    return port
