"""Clients without the token sending big first messages, against a real ``vessel serve``
whose peak memory (VmHWM) is read from /proc. Before the pre-login bounds (_ws.py:
MAX_UNAUTHENTICATED, MAX_AUTH_MESSAGE), 100 such clients each sending a 4 MiB ``auth``
frame took the daemon from 115 to 730 MiB."""

from __future__ import annotations

import json
from pathlib import Path

import trio
from trio_websocket import (
    ConnectionClosed,
    HandshakeError,
    open_websocket_url,
    wrap_client_stream,
)

from tests.adversarial.test_hostile_uploads import MiB, peak_memory
from tests.cli._support import start_daemon, stop_daemon
from vessel.gateway._ws import MAX_UNAUTHENTICATED

from ._figures import Figures
from ._resources import watch_daemon

CLIENTS = 100
#: What 100 clients may add to the daemon's peak memory: generous, and far below what one
#: 4 MiB frame per client held (as text: ~16 MiB each). ~65 MiB were seen: what 100
#: clients have in flight on the sockets while the server reads and drops it.
PEAK_GROWTH_BOUND = 128 * MiB


async def test_clients_without_the_token_hold_little_memory(
    tmp_path: Path, figures: Figures
) -> None:
    """100 clients connect without a token at once and each sends a 4 MiB first message:
    at most MAX_UNAUTHENTICATED wait to log in at a time (the others are closed 1013),
    none gets its big message taken (closed 1009 or 4401), the daemon's peak memory
    grows by less than PEAK_GROWTH_BOUND, and a browser-style login works afterwards."""
    row = figures.row("pre-login memory")
    async with trio.open_nursery() as nursery:
        daemon = await start_daemon(nursery, tmp_path / "data")
        ws_url = daemon.url.replace("http://", "ws://") + "/ws"
        token = (daemon.data_dir / "token").read_text().strip()
        closes: list[int] = []
        try:
            async with watch_daemon(row, daemon.pid):
                before = peak_memory(daemon.pid)
                big = '{"type": "auth", "token": "' + "x" * (4 * MiB) + '"}'

                port = int(daemon.url.rsplit(":", 1)[1])

                async def hostile() -> None:
                    try:
                        stream = await trio.open_tcp_stream("127.0.0.1", port)
                    except OSError:
                        closes.append(-1)
                        return
                    async with stream, trio.open_nursery() as inner:
                        try:
                            conn = await wrap_client_stream(
                                inner, stream, f"127.0.0.1:{port}", "/ws", max_message_size=1 << 20
                            )
                            await conn.send_message(big)
                            while True:
                                await conn.get_message()
                        except ConnectionClosed as exc:
                            closes.append(exc.reason.code if exc.reason else 0)
                        except (HandshakeError, trio.BrokenResourceError, OSError):
                            closes.append(-1)  # refused or reset before or while it sent
                        inner.cancel_scope.cancel()

                with trio.fail_after(120):
                    async with trio.open_nursery() as clients:
                        for _ in range(CLIENTS):
                            clients.start_soon(hostile)
                assert len(closes) == CLIENTS
                assert set(closes) <= {1009, 1013, 4401, -1}, sorted(set(closes))
                row.bad_inputs += CLIENTS
                row.answered += sum(1 for c in closes if c > 0)
                growth = peak_memory(daemon.pid) - before
                assert growth < PEAK_GROWTH_BOUND, f"peak grew {growth / MiB:.0f} MiB"

                # A browser (no header: an auth message) still logs in.
                with trio.fail_after(30):
                    async with open_websocket_url(ws_url) as conn:
                        await conn.send_message(json.dumps({"type": "auth", "token": token}))
                        ready = json.loads(await conn.get_message())
                assert ready["type"] == "ready", ready
                row.answered += 1
                assert MAX_UNAUTHENTICATED < CLIENTS
        finally:
            await stop_daemon(daemon)
