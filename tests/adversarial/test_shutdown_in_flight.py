"""``vessel serve`` stopped (SIGTERM) while a WebSocket client has calls in flight to a
module whose command never returns. Before the shutdown path answered them
(vessel/gateway/_ws.py), the client was closed 1001 with its calls unanswered: a
dashboard or script waiting on them could not tell "no answer yet" from "never".
"""

from __future__ import annotations

import json
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_client_stream

from tests.cli._support import STOP_TIMEOUT, Daemon, start_daemon, stop_daemon
from tests.fixture_types import MakeModuleDir

from ._figures import Figures

LOOPER = "looper"
HEALTHY = "healthy"
#: Long enough that the looping calls are still running when the daemon is stopped,
#: however slowly a busy machine gets there (the ceiling is 60 s).
LOOP_DEADLINE_MS = 50_000
#: Every wait for the daemon; the calls' deadline is far beyond it.
WAIT = 30.0


@asynccontextmanager
async def connected(daemon: Daemon) -> AsyncIterator[WebSocketConnection]:
    """An authenticated /ws connection to ``daemon`` (header login) past its ``ready``."""
    port = int(daemon.url.rsplit(":", 1)[1])
    token = (daemon.data_dir / "token").read_text().strip()
    with trio.fail_after(WAIT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream, trio.open_nursery() as nursery:
        with trio.fail_after(WAIT):
            conn = await wrap_client_stream(
                nursery,
                stream,
                f"127.0.0.1:{port}",
                "/ws",
                extra_headers=[(b"Authorization", f"Bearer {token}".encode())],
            )
            assert json.loads(await conn.get_message())["type"] == "ready"
        yield conn
        nursery.cancel_scope.cancel()


async def send_call(conn: WebSocketConnection, rid: str, module: str, name: str) -> None:
    frame = {"type": "call", "request_id": rid, "module": module, "name": name, "params": {}}
    await conn.send_message(json.dumps(frame))


async def test_sigterm_answers_every_call_in_flight_before_the_close(
    tmp_path: Path, make_module_dir: MakeModuleDir, figures: Figures
) -> None:
    """Two calls to a command that loops (the second queued behind the first in the
    module) are in flight when ``vessel serve`` gets SIGTERM: the client receives a failed
    ``response`` for each, code ``module_unavailable`` saying the daemon is shutting down,
    and only then the close 1001 "server shutting down"; the daemon exits cleanly."""
    row = figures.row("SIGTERM with calls in flight")
    data = tmp_path / "data"
    make_module_dir(
        data, "testkit", module_id=LOOPER, limits={"invocation_timeout_ms": LOOP_DEADLINE_MS}
    )
    make_module_dir(data, "testkit", module_id=HEALTHY)
    async with trio.open_nursery() as nursery:
        daemon = await start_daemon(nursery, data)
        try:
            received: list[dict[str, Any]] = []
            async with connected(daemon) as conn:
                looping = ["loop-1", "loop-2"]
                for rid in looping:
                    await send_call(conn, rid, LOOPER, "loop")
                # Frames are read in order: once this is answered, both loops are in
                # flight in the gateway (and neither can have been answered: they loop).
                await send_call(conn, "sync", HEALTHY, "echo")
                with trio.fail_after(WAIT):
                    while not received or received[-1].get("request_id") != "sync":
                        received.append(json.loads(await conn.get_message()))
                assert received[-1]["success"], received

                daemon.process.send_signal(signal.SIGTERM)
                with trio.fail_after(WAIT):
                    try:
                        while True:
                            received.append(json.loads(await conn.get_message()))
                    except ConnectionClosed as exc:
                        close = exc.reason
            assert close is not None
            assert (close.code, close.reason) == (1001, "server shutting down"), close
            answers = {m["request_id"]: m for m in received if m.get("type") == "response"}
            assert set(answers) == {*looping, "sync"}, received
            for rid in looping:
                answer = answers[rid]
                assert not answer["success"], answer
                assert answer["data"]["code"] == "module_unavailable", answer
                assert "shutting down" in answer["data"]["message"], answer
                row.bad_inputs += 1
                row.answered += 1
            row.answered += 1  # the healthy echo
        finally:
            with trio.fail_after(STOP_TIMEOUT + 5):
                await stop_daemon(daemon)
