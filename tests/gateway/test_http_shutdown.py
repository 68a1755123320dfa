"""Stopping the gateway with an idle keep-alive HTTP connection open.

Browsers and HTTP clients keep connections open between requests. Such a connection
must not hold the daemon's stop for Hypercorn's whole graceful timeout (3 s, which the
connection's own idle timer was meant to cut short and did not, after a first request).
"""

from __future__ import annotations

from pathlib import Path

import trio

from vessel._daemon import DaemonConfig, open_daemon
from vessel.gateway import GatewayConfig, serve_gateway

#: Well under the graceful timeout (3 s): the idle connection must not wait for it.
PROMPT = 2.0


async def _response(stream: trio.SocketStream) -> bytes:
    """One complete response with a Content-Length body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(65536)
        assert chunk, f"closed mid-response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += await stream.receive_some(65536)
    return head


async def test_an_idle_keep_alive_connection_is_closed_at_shutdown(tmp_path: Path) -> None:
    config = DaemonConfig(data_dir=tmp_path, install_bundled=False)
    async with open_daemon(config) as daemon, trio.open_nursery() as nursery:
        shutdown = trio.Event()
        gateway = GatewayConfig(host="127.0.0.1", port=0)
        _state, binds = await nursery.start(
            lambda task_status: serve_gateway(
                daemon, gateway, shutdown=shutdown, task_status=task_status
            )
        )
        port = int(binds[0].rsplit(":", 1)[1])
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        request = (
            f"GET /api/modules HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {daemon.token}\r\n\r\n"
        ).encode()
        with trio.fail_after(10):
            # Two requests: the second one comes after the connection was recycled,
            # the state that used to hold the stop.
            for _ in range(2):
                await stream.send_all(request)
                assert (await _response(stream)).startswith(b"HTTP/1.1 200")
        shutdown.set()
        with trio.fail_after(PROMPT):
            assert await stream.receive_some(65536) == b""  # the server closed it
        await stream.aclose()
