"""Hostile guests (the testkit, driven by commands) beside two healthy modules.

Every test runs a real daemon with ``healthy-a`` and ``healthy-b`` next to the hostile
module; ``watch_healthy`` calls the healthy ones in a loop and counts their events while
the hostile one misbehaves, and fails the test if one call failed or one event was lost.
"""

from __future__ import annotations

import json
import os
import random
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from tests.runtime.harness import call, call_error, next_event, running_daemon
from vessel._daemon import Daemon
from vessel._errors import CallError
from vessel._manager import ModuleState, SupervisionPolicy
from vessel._paths import database_path
from vessel._storage import Storage

from ._figures import Figures, Row
from ._healthy import healthy_modules, watch_healthy

HOSTILE = "hostile"
#: Restart fast; four restarts within a minute and the module is failed.
POLICY = SupervisionPolicy(max_restarts=4, period=60.0, backoff_initial=0.05, backoff_max=0.4)


@asynccontextmanager
async def scenario(
    tmp_path: Path,
    make_module_dir: Any,
    figures: Figures,
    name: str,
    *,
    permissions: dict[str, Any] | None = None,
    limits: dict[str, Any] | None = None,
    storage: dict[str, str] | None = None,
    extra: tuple[str, ...] = (),
) -> AsyncIterator[tuple[Daemon, Row]]:
    """A daemon with the healthy pair and a hostile testkit, watched for the block."""
    healthy_modules(make_module_dir, tmp_path)
    for module_id in (HOSTILE, *extra):
        make_module_dir(
            tmp_path,
            "testkit",
            module_id=module_id,
            permissions=permissions if permissions is not None else {"storage": True},
            limits=limits,
        )
    if storage:
        # Seed the hostile module's storage before it starts (its on-load reads it).
        with Storage.open(database_path(tmp_path)) as store:
            for key, value in storage.items():
                store.set(HOSTILE, key, value, quota_bytes=1 << 20)
    row = figures.row(name)
    async with running_daemon(tmp_path, policy=POLICY) as daemon, watch_healthy(daemon, row):
        yield daemon, row
        # Keep the healthy pair under watch a moment after the attack, too.
        await trio.sleep(0.1)


async def test_trap_in_on_command(tmp_path: Path, make_module_dir: Any, figures: Figures) -> None:
    """A command that traps fails that call only; the instance is replaced and answers."""
    async with scenario(tmp_path, make_module_dir, figures, "trap in on-command") as (d, row):
        for _ in range(3):
            err = await call_error(d, HOSTILE, "trap")
            assert err.code == "module_error", err
            row.bad_inputs += 1
            row.crashes_survived += 1
        assert await call(d, HOSTILE, "echo", {"x": 1}) == {"x": 1}


def _sub(d: Daemon, *patterns: str) -> Any:
    return d.bus.subscribe(*patterns, name="adversarial-test")


async def test_trap_in_on_load_ends_failed(
    tmp_path: Path, make_module_dir: Any, figures: Figures
) -> None:
    """A module whose on-load always traps is restarted with backoff, then marked failed;
    its neighbours never notice."""
    async with scenario(
        tmp_path, make_module_dir, figures, "trap in on-load", storage={"on_load": "trap"}
    ) as (d, row):
        with _sub(d, "vessel.module.*") as sub:
            while d.manager.state(HOSTILE) is not ModuleState.FAILED:
                await next_event(sub, lambda e: e.name in ("module.crashed", "module.failed"))
                row.crashes_survived += 1
        err = await call_error(d, HOSTILE, "echo")
        assert err.code == "module_unavailable"


async def test_trap_in_on_event(tmp_path: Path, make_module_dir: Any, figures: Figures) -> None:
    """A module trapping on every event it receives: each trap replaces its instance, and
    too many replacements end its process; the supervisor restarts it."""
    perms = {"storage": True, "subscribe": ["healthy-a.*"]}
    async with scenario(
        tmp_path, make_module_dir, figures, "trap in on-event", permissions=perms
    ) as (d, row):
        with _sub(d, "vessel.module.*") as sub:
            for _ in range(5):
                with trio.fail_after(15):
                    while True:  # the process may be between restarts
                        try:
                            await call(d, HOSTILE, "subscribe", {"pattern": "healthy-a.tick"})
                            await call(d, HOSTILE, "trap_in", {"export": "on_event"})
                            break
                        except Exception:
                            await trio.sleep(0.05)
                row.bad_inputs += 1
                await next_event(
                    sub,
                    lambda e: (
                        json.loads(e.data).get("module") == HOSTILE
                        and e.name in ("module.instance_replaced", "module.crashed")
                    ),
                )
                row.crashes_survived += 1
        with trio.fail_after(15):
            while d.manager.state(HOSTILE) is not ModuleState.RUNNING:
                await trio.sleep(0.05)
        await call(d, HOSTILE, "trap_in", {"export": None})
        assert await call(d, HOSTILE, "echo", {"ok": 1}) == {"ok": 1}


async def test_trap_in_on_timer(tmp_path: Path, make_module_dir: Any, figures: Figures) -> None:
    """A trap in on-timer replaces the instance and releases its timers."""
    perms = {"storage": True, "timers": True}
    async with scenario(
        tmp_path, make_module_dir, figures, "trap in on-timer", permissions=perms
    ) as (d, row):
        with _sub(d, "vessel.module.instance_replaced") as sub:
            await call(d, HOSTILE, "trap_in", {"export": "on_timer"})
            await call(d, HOSTILE, "set_interval", {"ms": 5})
            row.bad_inputs += 1
            await next_event(sub, lambda e: json.loads(e.data)["module"] == HOSTILE)
            row.crashes_survived += 1
        assert await call(d, HOSTILE, "echo", {"ok": 1}) == {"ok": 1}


async def test_trap_in_on_unload(tmp_path: Path, make_module_dir: Any, figures: Figures) -> None:
    """A trap in on-unload does not keep a restart from completing."""
    async with scenario(tmp_path, make_module_dir, figures, "trap in on-unload") as (d, row):
        for _ in range(2):
            await call(d, HOSTILE, "trap_in", {"export": "on_unload"})
            row.bad_inputs += 1
            with trio.fail_after(15):
                await d.manager.restart(HOSTILE)
            row.crashes_survived += 1
            assert await call(d, HOSTILE, "echo", {"ok": 1}) == {"ok": 1}


async def test_infinite_loop_in_on_command(
    tmp_path: Path, make_module_dir: Any, figures: Figures
) -> None:
    """An endless loop hits invocation_timeout_ms: that call fails with timeout, the
    instance is replaced, the next call is answered."""
    async with scenario(
        tmp_path, make_module_dir, figures, "loop in on-command",
        limits={"invocation_timeout_ms": 200},
    ) as (d, row):  # fmt: skip
        for _ in range(3):
            with trio.fail_after(10):
                err = await call_error(d, HOSTILE, "loop")
            assert "deadline exceeded" in err.message, err
            row.bad_inputs += 1
            row.crashes_survived += 1
        assert await call(d, HOSTILE, "echo", {"ok": 1}) == {"ok": 1}


async def test_infinite_loop_in_on_load(
    tmp_path: Path, make_module_dir: Any, figures: Figures
) -> None:
    """An on-load that never returns fails each start by its deadline; the module ends
    failed after the restart intensity."""
    async with scenario(
        tmp_path, make_module_dir, figures, "loop in on-load",
        limits={"invocation_timeout_ms": 200}, storage={"on_load": "loop"},
    ) as (d, row):  # fmt: skip
        with _sub(d, "vessel.module.*") as sub:
            while d.manager.state(HOSTILE) is not ModuleState.FAILED:
                await next_event(sub, lambda e: e.name in ("module.crashed", "module.failed"))
                row.crashes_survived += 1


async def test_unbounded_allocation(tmp_path: Path, make_module_dir: Any, figures: Figures) -> None:
    """Allocating without end stops at memory_mb: the call fails, the instance is
    replaced, the daemon's and the neighbours' memory is untouched."""
    async with scenario(
        tmp_path, make_module_dir, figures, "unbounded allocation", limits={"memory_mb": 32}
    ) as (d, row):
        for _ in range(2):
            with trio.fail_after(30):
                err = await call_error(d, HOSTILE, "alloc")
            assert err.code in ("module_error", "timeout"), err
            row.bad_inputs += 1
            row.crashes_survived += 1
        assert await call(d, HOSTILE, "echo", {"ok": 1}) == {"ok": 1}


async def test_event_flood_is_rate_limited(
    tmp_path: Path, make_module_dir: Any, figures: Figures
) -> None:
    """Emitting as fast as the module can: at most max_event_rate events/s reach the bus,
    the rest are refused and counted; the bus keeps serving the healthy modules."""
    rate = 50
    async with scenario(
        tmp_path, make_module_dir, figures, "event flood", limits={"max_event_rate": rate}
    ) as (d, row):
        with _sub(d, f"{HOSTILE}.flood") as sub:
            ok = refused = 0
            started = trio.current_time()

            async def flood() -> None:
                nonlocal ok, refused
                for _ in range(100):
                    try:
                        await call(d, HOSTILE, "emit", {"name": "flood", "data": 1})
                        ok += 1
                    except Exception:
                        refused += 1

            async with trio.open_nursery() as nursery:
                for _ in range(8):
                    nursery.start_soon(flood)
            elapsed = trio.current_time() - started
            row.bad_inputs += ok + refused
            assert refused > 0
            assert ok <= rate + rate * elapsed + 5, (ok, elapsed)
            module = d.manager.get(HOSTILE)
            assert module.events_refused == refused
            assert module.events_emitted == ok
            got = 0
            with trio.move_on_after(1):
                while got < ok:
                    await sub.receive()
                    got += 1
            assert got == ok


async def test_thousands_of_timers(tmp_path: Path, make_module_dir: Any, figures: Figures) -> None:
    """Asking for a thousand timers: only max_timers are granted (handle 0 after); then
    max_timers intervals of 1 ms firing flat out do not starve the module's commands."""
    async with scenario(
        tmp_path, make_module_dir, figures, "thousands of timers",
        permissions={"timers": True}, limits={"max_timers": 16},
    ) as (d, row):  # fmt: skip
        # Long timers first, so asking a thousand times is quick...
        handles = [
            (await call(d, HOSTILE, "set_timeout", {"ms": 600_000}))["handle"] for _ in range(1000)
        ]
        row.bad_inputs += len(handles)
        granted = [h for h in handles if h]
        assert len(granted) == 16
        assert handles[16:] == [0] * (1000 - 16)
        # ...then the live ones traded for 1 ms intervals firing flat out.
        for handle in granted:
            await call(d, HOSTILE, "clear_timer", {"handle": handle})
        intervals = [
            (await call(d, HOSTILE, "set_interval", {"ms": 1}))["handle"] for _ in range(20)
        ]
        row.bad_inputs += len(intervals)
        assert len([h for h in intervals if h]) == 16
        with trio.fail_after(5):
            assert await call(d, HOSTILE, "echo", {"ok": 1}) == {"ok": 1}
        stats = await d.manager.get(HOSTILE).stats()
        assert stats is not None


async def test_storage_until_quota(tmp_path: Path, make_module_dir: Any, figures: Figures) -> None:
    """Writing until the quota: writes past it fail with the quota message and store
    nothing; every acknowledged write is on disk; the neighbours' storage is untouched."""
    async with scenario(
        tmp_path, make_module_dir, figures, "storage until quota",
        limits={"storage_quota_kb": 8},
    ) as (d, row):  # fmt: skip
        await call(d, "healthy-a", "storage_set", {"key": "mine", "value": "a" * 100})
        acked: list[str] = []
        refusals: list[str] = []
        refused = 0
        for i in range(40):
            try:
                await call(d, HOSTILE, "storage_set", {"key": f"k{i}", "value": "x" * 500})
                acked.append(f"k{i}")
            except CallError as exc:
                refusals.append(str(exc))
                refused += 1
        row.bad_inputs += 40
        assert refused > 0
        assert all("storage quota" in r for r in refusals), refusals
        assert acked
        assert d.storage.usage(HOSTILE) <= 8 * 1024
        on_disk = set(d.storage.keys(HOSTILE))
        row.data_lost += len(set(acked) - on_disk)
        assert on_disk == set(acked)
        assert d.storage.get("healthy-a", "mine") == "a" * 100


async def test_call_cycles_are_refused(
    tmp_path: Path, make_module_dir: Any, figures: Figures
) -> None:
    """A module calling itself, or looping through another module, is refused with a
    cycle error instead of deadlocking both."""
    perms = {"call": [f"{HOSTILE}.call@1", f"{HOSTILE}.echo@1", "hostile-2.call@1"]}
    async with scenario(
        tmp_path, make_module_dir, figures, "call cycles", permissions=perms,
        extra=("hostile-2",),
    ) as (d, row):  # fmt: skip
        err = await call_error(d, HOSTILE, "call", {"module": HOSTILE, "name": "echo"})
        assert "cycle" in err.message, err
        loop = {"module": "hostile-2", "name": "call",
                "params": {"module": HOSTILE, "name": "call",
                           "params": {"module": "hostile-2", "name": "call"}}}  # fmt: skip
        with trio.fail_after(10):
            err = await call_error(d, HOSTILE, "call", loop)
        assert "cycle" in err.message, err
        row.bad_inputs += 2
        assert await call(d, HOSTILE, "echo", {"ok": 1}) == {"ok": 1}
        assert await call(d, "hostile-2", "echo", {"ok": 2}) == {"ok": 2}


async def test_every_undeclared_capability(
    tmp_path: Path, make_module_dir: Any, figures: Figures
) -> None:
    """With no permissions, every capability-checked host function is denied with an
    error (never a crash), and the module keeps answering."""
    denied = {
        "storage_set": {"key": "k", "value": "v"},
        "storage_delete": {"key": "k"},
        "http": {"url": "http://127.0.0.1:1/"},
        "ws_connect": {"url": "ws://127.0.0.1:1/"},
        "subscribe": {"pattern": "healthy-a.*"},
        "call": {"module": "healthy-a", "name": "echo"},
    }
    async with scenario(
        tmp_path, make_module_dir, figures, "undeclared capabilities", permissions={}
    ) as (d, row):
        for name, params in denied.items():
            err = await call_error(d, HOSTILE, name, params)
            assert "capability denied" in err.message, (name, err)
            row.bad_inputs += 1
        assert await call(d, HOSTILE, "storage_get", {"key": "k"}) == {"value": None}
        assert await call(d, HOSTILE, "set_timeout", {"ms": 1}) == {"handle": 0}
        assert await call(d, HOSTILE, "set_interval", {"ms": 1}) == {"handle": 0}
        row.bad_inputs += 3
        denials = [x for x in d.manager.logs(HOSTILE) if "capability denied" in x.message]
        assert len(denials) >= 9
        assert d.manager.state(HOSTILE) is ModuleState.RUNNING


async def test_huge_stdout_lines(tmp_path: Path, make_module_dir: Any, figures: Figures) -> None:
    """Megabyte lines and a flood of lines on stdout are cut and rate-limited; the
    module and the daemon carry on."""
    async with scenario(tmp_path, make_module_dir, figures, "huge stdout lines") as (d, row):
        for _ in range(5):
            await call(d, HOSTILE, "print", {"text": "y" * (1 << 20)})
            row.bad_inputs += 1
        for i in range(400):
            await call(d, HOSTILE, "print", {"text": f"line {i}"})
        row.bad_inputs += 400
        logs = d.manager.logs(HOSTILE)
        # No line longer than the cut (8192 bytes, plus the "... (N more bytes cut)" tail).
        assert max(len(line.message) for line in logs) <= 8192 + 64
        assert await call(d, HOSTILE, "echo", {"ok": 1}) == {"ok": 1}


async def test_sigkill_in_a_row_ends_failed(
    tmp_path: Path, make_module_dir: Any, figures: Figures
) -> None:
    """kill -9 of the module process at random moments, again and again (between calls,
    and in the middle of a call, which then fails at once instead of hanging): restarted
    with backoff each time, then failed after the intensity; neighbours untouched."""
    rng = random.Random()
    async with scenario(tmp_path, make_module_dir, figures, "kill -9 in a row") as (d, row):
        with _sub(d, "vessel.module.*") as sub:
            for i in range(10):
                assert await call(d, HOSTILE, "echo", {"ok": 1}) == {"ok": 1}
                pid = d.manager.get(HOSTILE).pid
                assert pid is not None
                if i % 2:
                    async with trio.open_nursery() as nursery:

                        async def busy() -> None:
                            with trio.fail_after(5):  # the kill ends it, not a timeout
                                err = await call_error(d, HOSTILE, "spin", {"ms": 2000})
                            assert err.code == "module_unavailable", err

                        nursery.start_soon(busy)
                        await trio.sleep(rng.uniform(0.05, 0.3))
                        os.kill(pid, signal.SIGKILL)
                else:
                    await trio.sleep(rng.uniform(0, 0.1))
                    os.kill(pid, signal.SIGKILL)
                row.crashes_survived += 1
                event = await next_event(
                    sub,
                    lambda e: (
                        e.name in ("module.restarted", "module.failed")
                        and json.loads(e.data)["module"] == HOSTILE
                    ),
                )
                if event.name == "module.failed":
                    break
        assert d.manager.state(HOSTILE) is ModuleState.FAILED
        assert row.crashes_survived == POLICY.max_restarts + 1


async def _ws_server(nursery: trio.Nursery, chatty: bool) -> int:
    """A local WebSocket peer: with ``chatty`` it sends a message every 10 ms forever."""
    import trio_websocket

    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        try:
            while chatty:
                await ws.send_message("ping")
                await trio.sleep(0.01)
            await ws.get_message()
        except trio_websocket.ConnectionClosed:
            pass

    server = await nursery.start(trio_websocket.serve_websocket, handler, "127.0.0.1", 0, None)
    return int(server.port)


async def test_trap_in_on_websocket_message(
    tmp_path: Path, make_module_dir: Any, figures: Figures
) -> None:
    """A trap in on-websocket-message replaces the instance, which closes its sockets."""
    perms = {"network": {"websocket": True}}
    async with trio.open_nursery() as nursery:
        port = await _ws_server(nursery, chatty=True)
        async with scenario(
            tmp_path, make_module_dir, figures, "trap in on-websocket-message", permissions=perms
        ) as (d, row):
            with _sub(d, "vessel.module.instance_replaced") as sub:
                await call(d, HOSTILE, "trap_in", {"export": "on_websocket_message"})
                await call(d, HOSTILE, "ws_connect", {"url": f"ws://127.0.0.1:{port}/"})
                row.bad_inputs += 1
                await next_event(sub, lambda e: json.loads(e.data)["module"] == HOSTILE)
                row.crashes_survived += 1
            assert await call(d, HOSTILE, "echo", {"ok": 1}) == {"ok": 1}
            stats = await d.manager.get(HOSTILE).stats()
            assert stats is not None
        nursery.cancel_scope.cancel()


async def test_sockets_in_a_loop(tmp_path: Path, make_module_dir: Any, figures: Figures) -> None:
    """Opening sockets in a loop: past max_websockets every connect is refused with an
    error; closing one makes room again."""
    perms = {"network": {"websocket": True}}
    async with trio.open_nursery() as nursery:
        port = await _ws_server(nursery, chatty=False)
        url = f"ws://127.0.0.1:{port}/"
        async with scenario(
            tmp_path, make_module_dir, figures, "sockets in a loop", permissions=perms,
            limits={"max_websockets": 4},
        ) as (d, row):  # fmt: skip
            handles: list[int] = []
            refusals: list[str] = []
            refused = 0
            for _ in range(40):
                try:
                    handles.append((await call(d, HOSTILE, "ws_connect", {"url": url}))["handle"])
                except CallError as exc:
                    refusals.append(str(exc))
                    refused += 1
            row.bad_inputs += 40
            assert len(handles) == 4
            assert refused == 36
            assert all("websocket" in r.lower() for r in refusals), refusals
            await call(d, HOSTILE, "ws_close", {"handle": handles[0]})
            with trio.fail_after(10):
                while True:  # the close completes asynchronously
                    try:
                        await call(d, HOSTILE, "ws_connect", {"url": url})
                        break
                    except Exception:
                        await trio.sleep(0.05)
        nursery.cancel_scope.cancel()


async def test_manifest_changed_after_install_is_refused(
    tmp_path: Path, make_module_dir: Any, figures: Figures
) -> None:
    """A manifest edited on disk after install (permissions widened) no longer matches
    manifest.hash: the module is refused at start, the others run."""
    module_dir = make_module_dir(tmp_path, "testkit", module_id="tampered",
                                 permissions={"storage": True})  # fmt: skip
    manifest = module_dir / "manifest.json"
    doc = json.loads(manifest.read_bytes())
    doc["permissions"]["network"] = {"http": True, "websocket": True}
    manifest.write_text(json.dumps(doc, indent=2) + "\n")
    async with scenario(tmp_path, make_module_dir, figures, "tampered manifest") as (d, row):
        row.bad_inputs += 1
        refused = {r.module_id: r.reason for r in d.manager.refused}
        assert "tampered" in refused, refused
        assert "hash" in refused["tampered"].lower(), refused
        err = await call_error(d, "tampered", "echo")
        assert err.code == "unknown_module", err
