"""The worst hostile modules against a real ``vessel serve`` whose memory is limited.

The daemon starts as a service does: its fork server first, then the modules, forked by
it. Then its RLIMIT_DATA is lowered to the private writable memory it holds plus
``MEMORY_ROOM`` (``prlimit --pid``, _resources.limit_memory); the processes it already
runs, the fork server and so every module process, keep their own limits. A hostile
module then allocates without end, floods retained state (and a dashboard subscribes to
everything, to be replayed it), floods events, floods its log at every level, its
process's stderr as a subverted process would, and prints megabyte lines, while the
healthy pair is called and its events watched over the gateway. A module that could
make the daemon take ``MEMORY_ROOM`` more would make one of its allocations fail: the
daemon would die, as the OOM killer would end it on a machine with that much to spare,
or log a MemoryError. Neither happens: it answers ``/healthz`` throughout, loses no
healthy call or event, and keeps its limit to the end.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import WebSocketConnection, wrap_client_stream

from tests.cli._support import Daemon, start_daemon, stop_daemon_process
from tests.fixture_types import MakeModuleDir
from vessel._manifest import Limits

from ._figures import Figures, Row
from ._healthy import CALL_TIMEOUT, HEALTHY, PACE, healthy_modules
from ._resources import MEMORY_ROOM, MiB, data_limit, limit_memory, module_limits, watch_daemon

HOSTILE = "hostile"
#: Each step's bound: generous for a machine whose every CPU is busy.
STEP = 60.0
#: What the daemon must never say: an allocation refused (its limit reached).
OUT_OF_MEMORY = ("MemoryError", "Cannot allocate memory", "can't start new thread")


@asynccontextmanager
async def ws(daemon: Daemon, token: str) -> AsyncIterator[WebSocketConnection]:
    """An authenticated /ws connection to ``daemon``, past its ``ready``."""
    port = int(daemon.url.rsplit(":", 1)[1])
    with trio.fail_after(STEP):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream, trio.open_nursery() as nursery:
        with trio.fail_after(STEP):
            conn = await wrap_client_stream(
                nursery, stream, f"127.0.0.1:{port}", "/ws",
                extra_headers=[(b"Authorization", f"Bearer {token}".encode())],
                max_message_size=1 << 24,
            )  # fmt: skip
            assert json.loads(await conn.get_message())["type"] == "ready"
        yield conn
        with trio.move_on_after(2):
            await conn.aclose()
        nursery.cancel_scope.cancel()


@dataclass
class Served:
    """What the healthy pair and ``/healthz`` got while the hostile module ran."""

    answered: int = 0
    errors: list[str] = field(default_factory=list)
    sent: set[tuple[str, int]] = field(default_factory=set)
    seen: set[tuple[str, int]] = field(default_factory=set)

    @property
    def lost(self) -> set[tuple[str, int]]:
        return self.sent - self.seen


async def serve_healthy(c: httpx.AsyncClient, served: Served) -> None:
    """``/healthz`` and an ``emit`` of each healthy module, in a loop (_healthy's pace):
    every one must be answered, and every emit's event reach the /ws watcher."""
    n = 0
    while True:
        n += 1
        for path, body in [("/healthz", None)] + [
            (f"/api/modules/{m}/call/emit", {"name": "tick", "data": {"n": n}}) for m in HEALTHY
        ]:
            try:
                with trio.fail_after(CALL_TIMEOUT):
                    r = await (c.get(path) if body is None else c.post(path, json=body))
            except (trio.TooSlowError, httpx.TransportError) as exc:
                served.errors.append(f"{path}: {exc!r}")
                continue
            if r.status_code != 200:
                served.errors.append(f"{path}: {r.status_code} {r.text[:200]}")
                continue
            served.answered += 1
            if body is not None:
                served.sent.add((path.split("/")[3], n))
        await trio.sleep(PACE)


async def watch_ticks(
    conn: WebSocketConnection, served: Served, *, task_status: trio.TaskStatus[None]
) -> None:
    """Every healthy event, from its subscription's acknowledgement on."""
    subscribe = {"type": "subscribe", "request_id": "t", "module": "healthy-?", "name": "tick"}
    await conn.send_message(json.dumps(subscribe))
    with trio.fail_after(STEP):
        assert json.loads(await conn.get_message())["success"]
    task_status.started()
    while True:
        message = json.loads(await conn.get_message())
        if message["type"] == "event":
            served.seen.add((message["module"], message["data"]["n"]))


async def hostile_call(c: httpx.AsyncClient, name: str, params: Any, row: Row) -> httpx.Response:
    """One command of the hostile module, counted as a bad input."""
    with trio.fail_after(STEP):
        r = await c.post(f"/api/modules/{HOSTILE}/call/{name}", json=params)
    row.bad_inputs += 1
    return r


async def allocate(c: httpx.AsyncClient, row: Row) -> None:
    """Allocate without end, twice: each stops at the module's memory_mb, in its own
    process (the call fails, the instance is replaced)."""
    for _ in range(2):
        r = await hostile_call(c, "alloc", {}, row)
        assert r.status_code in (502, 504), r.text
        assert r.json()["code"] in ("module_error", "timeout"), r.text
        row.crashes_survived += 1


async def flood_retained(c: httpx.AsyncClient, daemon: Daemon, token: str, row: Row) -> None:
    """Over 10,000 small retained keys, then 12 MB of 60 kB ones; then a dashboard
    subscribes to everything and is replayed what the daemon kept."""
    own = Limits()  # the hostile module's retained limits are the defaults
    accepted = 0
    for burst in range(6):
        small = {"name": f"k{burst}", "count": 2000, "distinct": True, "numbered": True,
                 "retained": True}  # fmt: skip
        accepted += await _emitted(c, small, row)
    # Past the module's own limit: the daemon had to forget keys.
    assert accepted > own.max_retained, accepted
    accepted = 0
    for burst in range(4):
        big = {"name": f"big{burst}", "count": 50, "distinct": True, "numbered": True,
               "pad": 60_000, "retained": True}  # fmt: skip
        accepted += await _emitted(c, big, row)
    assert accepted * 60_000 > own.retained_kb * 1024, accepted
    async with ws(daemon, token) as dashboard:
        subscribe = {"type": "subscribe", "request_id": "all", "module": "*", "name": "*"}
        await dashboard.send_message(json.dumps(subscribe))
        with trio.fail_after(STEP):
            while (message := json.loads(await dashboard.get_message()))["type"] != "response":
                assert message["type"] == "event", message
        assert message["success"], message
    row.answered += 1


async def _emitted(c: httpx.AsyncClient, burst: dict[str, Any], row: Row) -> int:
    """Emit a burst from the hostile module: how many of its events got through."""
    r = await hostile_call(c, "emit", burst, row)
    assert r.status_code == 200, r.text
    return int(burst["count"]) - int(r.json()["data"]["refused"])


async def flood_events(c: httpx.AsyncClient, row: Row) -> None:
    """Events as fast as the module can emit them (most refused by its rate)."""
    for _ in range(4):
        flood = {"name": "flood", "count": 5000}
        assert (await hostile_call(c, "emit", flood, row)).status_code == 200


async def flood_log(c: httpx.AsyncClient, row: Row) -> None:
    """The guest's log at every level, megabyte lines, megabyte prints; then its
    process's stderr, written as fast as the pipe takes it, as a subverted process would."""
    for level in ("fatal", "FATAL", "emergency", "x" * 1000):
        r = await hostile_call(c, "log", {"level": level, "message": "flood", "count": 5000}, row)
        assert r.status_code == 200, r.text
    r = await hostile_call(c, "log", {"level": "fatal", "message": "z" * MiB, "count": 5}, row)
    assert r.status_code == 200, r.text
    for _ in range(5):
        assert (await hostile_call(c, "print", {"text": "y" * MiB}, row)).status_code == 200
    pid = (await c.get(f"/api/modules/{HOSTILE}")).json()["pid"]
    data = "".join(f"subverted {n}\n" for n in range(20_000)).encode() + b"w" * (4 * MiB)
    with trio.fail_after(STEP):
        await trio.to_thread.run_sync(_write, f"/proc/{pid}/fd/2", data, abandon_on_cancel=True)
    row.bad_inputs += 1


def _write(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


@pytest.mark.watchdog(300)
async def test_hostile_modules_cannot_take_the_daemons_memory(
    tmp_path: Path, make_module_dir: MakeModuleDir, figures: Figures
) -> None:
    """The daemon limited to MEMORY_ROOM more private writable memory than it holds once
    started; the worst hostile modules (module docstring) beside the healthy pair: it is
    never out of memory, never killed, answers every healthy call and /healthz, delivers
    every healthy event, and only it is limited, never a module process."""
    row = figures.row("memory-limited vessel serve")
    data = tmp_path / "data"
    healthy_modules(make_module_dir, data)
    # A high event rate: most of each burst of the retained flood gets through.
    make_module_dir(data, "testkit", module_id=HOSTILE, limits={"max_event_rate": 5000})
    async with trio.open_nursery() as nursery:
        daemon = await start_daemon(nursery, data)
        token = (data / "token").read_text().strip()
        headers = {"Authorization": f"Bearer {token}"}
        try:
            room = MEMORY_ROOM
            before, _ = limit_memory(daemon.pid, room)
            limit = data_limit(daemon.pid)
            row.mem_limit = room // MiB
            served = Served()
            async with httpx.AsyncClient(base_url=daemon.url, headers=headers, timeout=STEP) as c:
                # Only the daemon: its fork server and the module processes it forked
                # keep the limits they had.
                pids = {m["id"]: m["pid"] for m in (await c.get("/api/modules")).json()["modules"]}
                assert set(pids) == {*HEALTHY, HOSTILE}, pids
                forkserver = int(Path(f"/proc/{pids[HOSTILE]}/stat").read_text().split()[3])
                pids["fork server"] = forkserver
                assert module_limits(pids) == dict.fromkeys(pids, before)

                async with (
                    watch_daemon(row, daemon.pid),
                    # (Opened under the watch, closed before its end: the daemon's files
                    # for them are given back.)
                    httpx.AsyncClient(
                        base_url=daemon.url, headers=headers, timeout=STEP
                    ) as monitor,
                    ws(daemon, token) as watcher,
                    trio.open_nursery() as beside,
                ):
                    await beside.start(watch_ticks, watcher, served)
                    callers = trio.CancelScope()
                    callers_done = trio.Event()

                    async def callers_task() -> None:
                        with callers:
                            await serve_healthy(monitor, served)
                        callers_done.set()

                    beside.start_soon(callers_task)
                    await allocate(c, row)
                    await flood_retained(c, daemon, token, row)
                    await flood_events(c, row)
                    await flood_log(c, row)
                    # Stopped, not only told to (an answer just in counts as sent), then
                    # the last events, on their way.
                    callers.cancel()
                    with trio.fail_after(CALL_TIMEOUT):
                        await callers_done.wait()
                    with trio.move_on_after(5):
                        while served.lost:
                            await trio.sleep(0.02)
                    beside.cancel_scope.cancel()
                row.answered += served.answered
                row.failed += len(served.errors)
                row.events_lost += len(served.lost)
                assert served.errors == [], served.errors[:5]
                assert served.lost == set(), sorted(served.lost)[:5]
                assert served.answered > 0

                assert daemon.process.returncode is None
                assert (await c.get("/healthz")).status_code == 200
                r = await c.post(f"/api/modules/{HOSTILE}/call/echo", json={"ok": 1})
                assert r.json() == {"data": {"ok": 1}}, r.text
                assert data_limit(daemon.pid) == limit
                pids = {m["id"]: m["pid"] for m in (await c.get("/api/modules")).json()["modules"]}
                assert module_limits(pids) == dict.fromkeys(pids, before)
        finally:
            # (Not stop_daemon, which finds a traceback in the log: the guest's, below.)
            await stop_daemon_process(daemon.process)
    # Nothing in the daemon's own lines: a module's lines are its guest's text, and the
    # guest that allocates without end logs its own MemoryError and traceback.
    said = [
        line for line in daemon.stderr.lines
        if any(s in line for s in (*OUT_OF_MEMORY, "Traceback")) and "vessel.module." not in line
    ]  # fmt: skip
    assert said == [], said[:5]
