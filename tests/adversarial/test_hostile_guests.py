"""Hostile guests (the testkit, driven by commands) beside two healthy modules.

Every test runs a real daemon with ``healthy-a`` and ``healthy-b`` next to the hostile
module; ``watch_healthy`` calls the healthy ones in a loop and counts their events while
the hostile one misbehaves, and fails the test if one call failed or one event was lost.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import signal
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import WebSocketConnection

from actors import ProcessActor
from tests.fixture_types import MakeModuleDir
from tests.gateway.harness import Gateway, running_gateway
from tests.gateway.ws_client import call as ws_call
from tests.gateway.ws_client import is_response, ready, receive_until, send, ws_client
from tests.runtime.harness import call, call_error, next_event, running_daemon
from vessel._daemon import Daemon
from vessel._errors import CallError
from vessel._events import Event
from vessel._manager import ModuleState, SupervisionPolicy
from vessel._manifest import Limits
from vessel._paths import database_path
from vessel._storage import Storage
from vessel._wasm_module import LogLine
from vessel.host._guest_thread import MAX_REPLACEMENTS

from ._figures import Figures, Row
from ._healthy import HEALTHY, Health, healthy_modules, watch_healthy
from ._resources import memory_limited

HOSTILE = "hostile"
#: Restart fast; more than four restarts and the module is failed. The period is longer
#: than any test may run (the watchdog stops one after 120 s), so every restart of a test
#: counts, however slowly a busy machine lets it go.
POLICY = SupervisionPolicy(max_restarts=4, period=600.0, backoff_initial=0.05, backoff_max=0.4)


def _install(
    tmp_path: Path,
    make_module_dir: MakeModuleDir,
    *,
    permissions: dict[str, Any] | None = None,
    limits: dict[str, Any] | None = None,
    storage: dict[str, str] | None = None,
    extra: tuple[str, ...] = (),
) -> None:
    """The healthy pair and the hostile testkit(s) in ``tmp_path``, before the daemon."""
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


@asynccontextmanager
async def scenario(
    tmp_path: Path,
    make_module_dir: MakeModuleDir,
    figures: Figures,
    name: str,
    *,
    permissions: dict[str, Any] | None = None,
    limits: dict[str, Any] | None = None,
    storage: dict[str, str] | None = None,
    extra: tuple[str, ...] = (),
) -> AsyncIterator[tuple[Daemon, Row]]:
    """A daemon with the healthy pair and a hostile testkit, watched for the block, with
    its memory limited (``_resources.memory_limited``)."""
    _install(tmp_path, make_module_dir, permissions=permissions, limits=limits,
             storage=storage, extra=extra)  # fmt: skip
    row = figures.row(name)
    async with running_daemon(tmp_path, policy=POLICY) as daemon:
        with memory_limited(row, daemon):
            async with watch_healthy(daemon, row):
                yield daemon, row
                # Keep the healthy pair under watch a moment after the attack, too.
                await trio.sleep(0.1)


@asynccontextmanager
async def gateway_scenario(
    tmp_path: Path,
    make_module_dir: MakeModuleDir,
    figures: Figures,
    name: str,
    *,
    limits: dict[str, Any] | None = None,
) -> AsyncIterator[tuple[Gateway, Row, Health]]:
    """``scenario`` with the real gateway on 127.0.0.1 in front of the daemon, for live
    /ws clients beside the hostile module; also yields the healthy monitor's tally."""
    _install(tmp_path, make_module_dir, limits=limits)
    row = figures.row(name)
    async with running_gateway(tmp_path, policy=POLICY) as gw:
        with memory_limited(row, gw.daemon):
            async with watch_healthy(gw.daemon, row) as health:
                yield gw, row, health
                await trio.sleep(0.1)


async def test_trap_in_on_command(
    tmp_path: Path, make_module_dir: MakeModuleDir, figures: Figures
) -> None:
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
    tmp_path: Path, make_module_dir: MakeModuleDir, figures: Figures
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


async def test_trap_in_on_event(
    tmp_path: Path, make_module_dir: MakeModuleDir, figures: Figures
) -> None:
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


async def test_trap_in_on_timer(
    tmp_path: Path, make_module_dir: MakeModuleDir, figures: Figures
) -> None:
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


async def test_trap_in_on_unload(
    tmp_path: Path, make_module_dir: MakeModuleDir, figures: Figures
) -> None:
    """A trap in on-unload does not keep a restart from completing; the trap reaches the
    module's log and the old process exits cleanly (regression: it could abort at exit
    with a Rust panic in a wasmtime thread, and lose that log line)."""
    async with scenario(tmp_path, make_module_dir, figures, "trap in on-unload") as (d, row):
        for _ in range(2):
            old = d.manager.get(HOSTILE)
            proc = old.proc
            assert proc is not None
            await call(d, HOSTILE, "trap_in", {"export": "on_unload"})
            row.bad_inputs += 1
            with trio.fail_after(15):
                await d.manager.restart(HOSTILE)
            row.crashes_survived += 1
            _assert_clean_unload(proc, old.logs)
            assert await call(d, HOSTILE, "echo", {"ok": 1}) == {"ok": 1}


def _assert_clean_unload(proc: ProcessActor, logs: Iterable[LogLine]) -> None:
    """The process that trapped in on-unload exited by itself (code 0), reported the trap,
    and did not abort on its way out."""
    messages = [line.message for line in logs]
    assert proc.exit_info is not None
    assert proc.exit_info.returncode == 0, (proc.exit_info, messages)
    assert len([m for m in messages if m.startswith("on-unload trapped: ")]) == 1, messages
    # (The module process's own stderr, not the guest's, whose trap prints a panic.)
    assert not [m for m in messages if m.startswith("process: ") and "panic" in m], messages


async def test_infinite_loop_in_on_command(
    tmp_path: Path, make_module_dir: MakeModuleDir, figures: Figures
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
    tmp_path: Path, make_module_dir: MakeModuleDir, figures: Figures
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


#: A short invocation deadline, so the loop scenarios spend little time spinning.
DEADLINE = {"invocation_timeout_ms": 200}


def _replaced_or_crashed(module_id: str) -> Callable[[Event], bool]:
    """The lifecycle event that ends one trap of ``module_id``: its instance was replaced,
    or (past the replacement limit) its process ended."""
    return lambda e: (
        e.name in ("module.instance_replaced", "module.crashed")
        and json.loads(e.data).get("module") == module_id
    )


def _by_deadline(event: Event) -> bool:
    return "deadline exceeded" in json.loads(event.data)["reason"]


async def _until_answered(d: Daemon, module_id: str, *commands: tuple[str, Any]) -> None:
    """Send ``commands`` in order, again from the first while the module is between
    restarts (bounded)."""
    with trio.fail_after(15):
        while True:
            try:
                for name, params in commands:
                    await call(d, module_id, name, params)
                return
            except CallError as exc:
                if exc.code != "module_unavailable":
                    raise
                await trio.sleep(0.05)


async def _echo_until(d: Daemon, module_id: str, done: trio.Event) -> int:
    """Call ``echo`` in a loop until ``done``: every call must be answered, whatever the
    module's other exports are doing (commands wait in its mailbox, never dropped)."""
    answered = 0
    while not done.is_set():
        with trio.fail_after(10):
            assert await call(d, module_id, "echo", {"n": answered}) == {"n": answered}
        answered += 1
        await trio.sleep(0.01)
    return answered


async def test_infinite_loop_in_on_event(
    tmp_path: Path, make_module_dir: MakeModuleDir, figures: Figures
) -> None:
    """A module spinning in on-event: each event it takes runs into the invocation
    deadline, which traps it and replaces its instance (dropping its subscriptions); past
    the replacement limit its process ends and the supervisor restarts it. Then it
    answers again."""
    perms = {"storage": True, "subscribe": ["healthy-a.*"]}
    async with scenario(
        tmp_path, make_module_dir, figures, "loop in on-event", permissions=perms,
        limits=DEADLINE,
    ) as (d, row):  # fmt: skip
        with _sub(d, "vessel.module.*") as sub:
            kinds = []
            for _ in range(MAX_REPLACEMENTS + 2):
                await _until_answered(
                    d, HOSTILE, ("subscribe", {"pattern": "healthy-a.tick"}),
                    ("loop_in", {"export": "on_event"}),
                )  # fmt: skip
                row.bad_inputs += 1
                event = await next_event(sub, _replaced_or_crashed(HOSTILE))
                assert _by_deadline(event), event
                kinds.append(event.name)
                row.crashes_survived += 1
        # Replaced up to the limit; one more trap within the period ends the process; the
        # restarted one starts counting afresh. (The period, REPLACEMENT_PERIOD, is 60 s:
        # each trap here takes its 200 ms deadline, twice that at most for waiting.)
        assert kinds == ["module.instance_replaced"] * MAX_REPLACEMENTS + [
            "module.crashed", "module.instance_replaced"
        ], kinds  # fmt: skip
        with trio.fail_after(15):
            while d.manager.state(HOSTILE) is not ModuleState.RUNNING:
                await trio.sleep(0.05)
        assert await call(d, HOSTILE, "echo", {"ok": 1}) == {"ok": 1}


async def test_infinite_loop_in_on_timer(
    tmp_path: Path, make_module_dir: MakeModuleDir, figures: Figures
) -> None:
    """A module spinning in on-timer is trapped by its deadline; the instance is replaced
    and its timers released; commands sent meanwhile are all answered."""
    perms = {"storage": True, "timers": True}
    async with scenario(
        tmp_path, make_module_dir, figures, "loop in on-timer", permissions=perms,
        limits=DEADLINE,
    ) as (d, row):  # fmt: skip
        with _sub(d, "vessel.module.instance_replaced") as sub:
            await call(d, HOSTILE, "loop_in", {"export": "on_timer"})
            await call(d, HOSTILE, "set_interval", {"ms": 5})
            row.bad_inputs += 1
            replaced = trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_echo_until, d, HOSTILE, replaced)
                event = await next_event(sub, lambda e: json.loads(e.data)["module"] == HOSTILE)
                replaced.set()
            assert _by_deadline(event), event
            row.crashes_survived += 1
        stats = await d.manager.get(HOSTILE).stats()
        assert stats is not None
        assert (stats.traps, stats.instance_replacements, stats.timers) == (1, 1, 0), stats
        assert await call(d, HOSTILE, "echo", {"ok": 1}) == {"ok": 1}


async def test_infinite_loop_in_on_unload(
    tmp_path: Path, make_module_dir: MakeModuleDir, figures: Figures
) -> None:
    """An on-unload that never returns cannot hold up a stop: with a short deadline the
    epoch interruption traps it and the process exits by itself; with a deadline longer
    than the stop grace the process is killed (SIGTERM, then SIGKILL) when the grace runs
    out. Either way the restart completes and the new process answers."""
    # A second hostile module whose deadline (60 s) outlasts the stop grace (3 s).
    make_module_dir(tmp_path, "testkit", module_id="hostile-slow",
                    permissions={"storage": True},
                    limits={"invocation_timeout_ms": 60_000})  # fmt: skip
    async with scenario(
        tmp_path, make_module_dir, figures, "loop in on-unload", limits=DEADLINE
    ) as (d, row):
        for module_id, by_deadline in ((HOSTILE, True), (HOSTILE, True), ("hostile-slow", False)):
            old = d.manager.get(module_id)
            proc = old.proc
            assert proc is not None
            await call(d, module_id, "loop_in", {"export": "on_unload"})
            row.bad_inputs += 1
            started = trio.current_time()
            with trio.fail_after(15):
                await d.manager.restart(module_id)
            elapsed = trio.current_time() - started
            row.crashes_survived += 1
            ended = proc.exit_info
            assert ended is not None
            if by_deadline:
                # The deadline ended on-unload; the process then exited on its own.
                _assert_clean_unload(proc, old.logs)
                assert any(
                    x.message == "on-unload trapped: deadline exceeded "
                    "(limits.invocation_timeout_ms)"
                    for x in old.logs
                )
            else:
                assert ended.signal in (signal.SIGTERM, signal.SIGKILL), ended
                assert not [x for x in old.logs if "on-unload trapped" in x.message]
                assert elapsed >= proc.spec.stop_timeout, elapsed
            with pytest.raises(ProcessLookupError):
                os.kill(proc.pid, 0)  # gone, and reaped
            assert await call(d, module_id, "echo", {"ok": 1}) == {"ok": 1}


async def test_unbounded_allocation(
    tmp_path: Path, make_module_dir: MakeModuleDir, figures: Figures
) -> None:
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
    tmp_path: Path, make_module_dir: MakeModuleDir, figures: Figures
) -> None:
    """Emitting as fast as the module can: at most max_event_rate events/s reach the bus,
    the rest are refused and counted. Live /ws clients on the real gateway stay served
    throughout: one subscribed to the healthy modules' events receives every one emitted
    during the flood, in order; one subscribed to the flood receives exactly the events
    let through; one calling a healthy module has every call answered. (The flood lasts
    until each of those has had its turn during it, however the machine shares its
    CPUs.)"""
    rate = 50
    async with gateway_scenario(
        tmp_path, make_module_dir, figures, "event flood", limits={"max_event_rate": rate}
    ) as (gw, row, health):
        d = gw.daemon
        ticks: dict[str, list[int]] = {m: [] for m in HEALTHY}
        flood_seen = 0
        acked: set[str] = set()

        async def read_ticks(conn: WebSocketConnection) -> None:
            while True:
                message = json.loads(await conn.get_message())
                if message["type"] == "event":
                    assert message["name"] == "tick", message
                    ticks[message["module"]].append(message["data"]["n"])
                elif message["type"] == "response":
                    assert message["success"], message
                    acked.add(message["request_id"])

        async def read_flood(conn: WebSocketConnection) -> None:
            nonlocal flood_seen
            while True:
                message = json.loads(await conn.get_message())
                assert (message["type"], message.get("module")) in (
                    ("event", HOSTILE), ("response", None)
                ), message  # fmt: skip
                if message["type"] == "event":
                    flood_seen += 1
                else:
                    acked.add(message["request_id"])

        ws_answered = 0

        async def ws_calls(conn: WebSocketConnection, done: trio.Event) -> None:
            nonlocal ws_answered
            while not done.is_set():
                n = ws_answered
                response = await ws_call(conn, "healthy-b", "echo", {"n": n}, rid=f"c{n}")
                assert (response["success"], response["data"]) == (True, {"n": n}), response
                ws_answered += 1

        with trio.fail_after(60):
            async with (
                ws_client(gw) as watcher,
                ws_client(gw) as flood_watcher,
                ws_client(gw) as caller,
                trio.open_nursery() as readers,
            ):
                for conn in (watcher, flood_watcher, caller):
                    await ready(conn)
                readers.start_soon(read_ticks, watcher)
                readers.start_soon(read_flood, flood_watcher)
                await send(watcher, {"type": "subscribe", "module": "healthy-?", "name": "tick",
                                     "request_id": "ticks"})  # fmt: skip
                await send(flood_watcher, {"type": "subscribe", "module": HOSTILE,
                                           "name": "flood", "request_id": "flood"})  # fmt: skip
                while acked != {"ticks", "flood"}:
                    await trio.sleep(0.01)
                # Healthy calls answered so far. Call n+1 may still be in flight (published
                # before `watcher` subscribed, answered after this), but call n+2 starts
                # after that answer: it and every later event must reach `watcher`.
                before = {m: max(health.sent.get(m) or {0}) for m in HEALTHY}

                with _sub(d, f"{HOSTILE}.flood") as sub:
                    ok = refused = 0
                    started = trio.current_time()

                    def had_their_turn() -> bool:
                        """Some of the flood was refused, the /ws caller had three
                        answers, and each healthy module answered three calls, all
                        during the flood."""
                        return (
                            refused > 0
                            and ws_answered >= 3
                            and all(
                                max(health.sent.get(m) or {0}) >= before[m] + 3 for m in HEALTHY
                            )
                        )

                    async def flood() -> None:
                        nonlocal ok, refused
                        emits = 0
                        while emits < 100 or not had_their_turn():
                            emits += 1
                            try:
                                await call(d, HOSTILE, "emit", {"name": "flood", "data": 1})
                                ok += 1
                            except CallError:
                                refused += 1

                    flooded = trio.Event()
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(ws_calls, caller, flooded)
                        async with trio.open_nursery() as flooders:
                            for _ in range(8):
                                flooders.start_soon(flood)
                        flooded.set()
                    elapsed = trio.current_time() - started
                    after = {m: max(health.sent[m]) for m in HEALTHY}
                    row.bad_inputs += ok + refused
                    # A full bucket to start with, refilled at the rate while it lasted.
                    assert ok <= rate + rate * elapsed + 5, (ok, elapsed)
                    module = d.manager.get(HOSTILE)
                    # Emits are one-way: the counts land with the daemon's notification
                    # queue, which may trail the answers of the calls that emitted.
                    with trio.move_on_after(5):
                        while (module.events_refused, module.events_emitted) != (refused, ok):
                            await trio.sleep(0.01)
                    assert module.events_refused == refused
                    assert module.events_emitted == ok
                    got = 0
                    with trio.move_on_after(1):
                        while got < ok:
                            await sub.receive()
                            got += 1
                    assert got == ok

                # The /ws clients: every event of the flood window (bounded wait).
                with trio.move_on_after(15):
                    while flood_seen < ok or any(
                        max(ticks[m], default=0) < after[m] for m in HEALTHY
                    ):
                        await trio.sleep(0.01)
                readers.cancel_scope.cancel()
        assert flood_seen == ok, (flood_seen, ok)
        for m in HEALTHY:
            got_n = ticks[m]
            # In order, no gap, no duplicate, covering the whole flood window.
            assert got_n == list(range(got_n[0], got_n[-1] + 1)), (m, got_n)
            assert got_n[0] <= before[m] + 2, (m, got_n[0], before)
            assert got_n[-1] >= after[m], (m, got_n[-1], after)


def _retained_bytes(events: list[Event]) -> int:
    """What retained events hold: their names and data (all ASCII here)."""
    return sum(len(e.name) + len(e.data) for e in events)


async def _emit_until(d: Daemon, params: dict[str, Any], accepted: int) -> list[str]:
    """Emit bursts of ``params`` from the hostile module until ``accepted`` events were
    let through its rate limit; the keys of those that reached the bus, in order."""
    keys: list[str] = []
    with (
        d.bus.subscribe(f"{HOSTILE}.*", name="emitted", queue_size=1 << 16, replay=False) as sub,
        trio.fail_after(60),
    ):
        for burst in range(1000):
            # A fresh name per burst: every accepted event is a key of its own.
            await call(d, HOSTILE, "emit", {**params, "name": f"{params['name']}{burst}"})
            while True:  # published before the command's answer
                try:
                    keys.append(sub.receive_nowait().key)
                except trio.WouldBlock:
                    break
            if len(keys) >= accepted:
                return keys
    raise AssertionError(f"only {len(keys)} of {accepted} events got through")


async def test_retained_state_flood_is_bounded_per_module(
    tmp_path: Path, make_module_dir: MakeModuleDir, figures: Figures
) -> None:
    """A module flooding retained state (emitting needs no permission) holds at most its
    own limits of it, limits.max_retained keys and limits.retained_kb bytes, its oldest
    keys forgotten first: another module's retained state survives, what the daemon
    holds stays bounded, and the module's log names each limit. An event over 64 KiB is
    refused to its emitter, naming the limit, and reaches no one. A dashboard subscribing
    to `*.*` afterwards is replayed no more than those bounds, the other module's state
    included."""
    async with gateway_scenario(
        tmp_path, make_module_dir, figures, "retained state flood",
        limits={"max_event_rate": 5000},
    ) as (gw, row, _):  # fmt: skip
        d = gw.daemon
        own = Limits()  # the hostile module's retained limits are the defaults
        status = {"name": "status", "data": {"state": "connected"}, "retained": True}
        await call(d, "healthy-a", "emit", status)

        # Many small keys: more than the 10,000 that every module once shared.
        burst = {"name": "k", "count": 2000, "distinct": True, "numbered": True, "retained": True}
        emitted = await _emit_until(d, burst, 10_500)
        row.bad_inputs += len(emitted)
        kept = [e.key for e in d.bus.retained(f"{HOSTILE}.*")]
        assert kept == emitted[-own.max_retained :]
        assert [e.data for e in d.bus.retained("healthy-a.status")] == ['{"state": "connected"}']

        # Fewer, bigger ones: 12 MB, each event within the 64 KiB an event may carry.
        big = {"name": "big", "count": 50, "distinct": True, "numbered": True, "pad": 60_000,
               "retained": True}  # fmt: skip
        emitted = await _emit_until(d, big, 200)
        row.bad_inputs += len(emitted)
        held = d.bus.retained(f"{HOSTILE}.*")
        assert _retained_bytes(held) <= own.retained_kb * 1024
        # The newest are kept, as many as fit (60 kB each: 17 of them).
        assert len(held) >= own.retained_kb * 1024 // 61_000
        assert [e.key for e in held] == emitted[-len(held) :]
        assert [e.data for e in d.bus.retained("healthy-a.status")] == ['{"state": "connected"}']
        # Everything the daemon holds as retained state: the hostile module's share and
        # the healthy one's few bytes.
        assert _retained_bytes(d.bus.retained()) <= own.retained_kb * 1024 + 1000

        logs = [line.message for line in d.manager.logs(HOSTILE)]
        for limit in ("limits.max_retained", "limits.retained_kb"):
            assert [m for m in logs if limit in m and "forgot its" in m], (limit, logs[-5:])

        # An event over 64 KiB: the emitter is told, nobody receives it.
        with d.bus.subscribe(f"{HOSTILE}.*", name="live", replay=False) as sub:
            huge = {"name": "huge", "pad": 100_000, "retained": True}
            err = await call_error(d, HOSTILE, "emit", huge)
            row.bad_inputs += 1
            assert err.message == (
                "event 'huge' is too big: its data is 100002 bytes, and an event may carry "
                "at most 65536 (64 KiB); event dropped"
            )
            # (An accepted event would be on the bus before the command's answer.)
            with pytest.raises(trio.WouldBlock):
                sub.receive_nowait()
        assert d.bus.retained(f"{HOSTILE}.huge") == []

        # A dashboard's home view subscribes to everything: its replay is the bounded
        # state, the healthy module's included, then the acknowledgement.
        async with ws_client(gw) as dashboard:
            await ready(dashboard)
            await send(dashboard, {"type": "subscribe", "module": "*", "name": "*",
                                   "request_id": "home"})  # fmt: skip
            ack, replay = await receive_until(dashboard, lambda m: is_response(m, "home"))
        assert ack["data"] == {"pattern": "*.*", "replayed": len(replay)}
        assert {(m["type"], m["replayed"]) for m in replay} == {("event", True)}
        keys = [f"{m['module']}.{m['name']}" for m in replay]
        assert keys == [e.key for e in d.bus.retained()]
        assert "healthy-a.status" in keys
        assert sum(len(json.dumps(m["data"])) for m in replay) <= own.retained_kb * 1024 + 1000


async def test_thousands_of_timers(
    tmp_path: Path, make_module_dir: MakeModuleDir, figures: Figures
) -> None:
    """Asking for a thousand timers: only max_timers are granted (handle 0 after); then
    max_timers intervals of 1 ms firing flat out do not starve the module's commands: a
    command still gets its answer, not a `timeout` after limits.reply_timeout_ms."""
    async with scenario(
        tmp_path, make_module_dir, figures, "thousands of timers",
        permissions={"timers": True}, limits={"max_timers": 16, "reply_timeout_ms": 10_000},
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
        assert await call(d, HOSTILE, "echo", {"ok": 1}) == {"ok": 1}
        stats = await d.manager.get(HOSTILE).stats()
        assert stats is not None


async def test_storage_until_quota(
    tmp_path: Path, make_module_dir: MakeModuleDir, figures: Figures
) -> None:
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
    tmp_path: Path, make_module_dir: MakeModuleDir, figures: Figures
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
    tmp_path: Path, make_module_dir: MakeModuleDir, figures: Figures
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


async def test_huge_stdout_lines(
    tmp_path: Path, make_module_dir: MakeModuleDir, figures: Figures
) -> None:
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


#: What one module can put in the daemon's log, whatever it does, its process subverted
#: included (docs/operations.md, "Reading logs"): lines a second (twice the 200 its
#: process lets through, for lines that arrive bunched up) after a first burst of as many,
#: plus one line a second saying how many were dropped; each line at most 8 KiB and the
#: note saying how much was cut.
LOG_LINES_PER_SECOND = 400
LOG_LINE_BYTES = 8192 + 64
DROPPED = re.compile(r"(\d+) log lines? dropped \(over 200 a second\)")


class _LogTally(logging.Handler):
    """Every record of one module's logger in the daemon's log, as the daemon writes it."""

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._logger = logger
        self._lot = trio.lowlevel.ParkingLot()

    def emit(self, record: logging.LogRecord) -> None:
        # Called by the daemon's trio tasks (the module's log is written on its loop).
        self.records.append(record)
        self._lot.unpark_all()

    def __enter__(self) -> _LogTally:
        self._level = self._logger.level
        self._logger.setLevel(logging.DEBUG)  # every line, not only what the root shows
        self._logger.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self._logger.removeHandler(self)
        self._logger.setLevel(self._level)

    def messages(self, since: int = 0) -> list[str]:
        return [r.getMessage() for r in self.records[since:]]

    def dropped(self, since: int = 0) -> int:
        """The lines the daemon's reports since record ``since`` say were dropped."""
        return sum(int(m[1]) for x in self.messages(since) if (m := DROPPED.fullmatch(x)))

    async def until(self, check: Callable[[], bool], timeout: float = 30.0) -> None:
        """Wait (bounded) for the record that makes ``check()`` true."""
        with trio.fail_after(timeout):
            while not check():
                await self._lot.park()


def _within_bound(tally: _LogTally, since: int, seconds: float) -> None:
    """The records since ``since``, written within ``seconds``, keep to the bound."""
    count = len(tally.records) - since
    bound = LOG_LINES_PER_SECOND * (1 + seconds) + (seconds + 1)
    assert count <= bound, f"{count} lines in {seconds:.1f} s, more than {bound:.0f}"
    for message in tally.messages(since):
        assert "\n" not in message, message[:200]
        assert len(message.encode()) <= LOG_LINE_BYTES, message[:200]


async def test_log_flood_at_every_level(
    tmp_path: Path, make_module_dir: MakeModuleDir, figures: Figures
) -> None:
    """A module logging as fast as it can, at level "fatal", at levels Vessel does not
    know and in megabyte lines; then its process, as if subverted, writing to its own
    stderr as fast as it can. What reaches the daemon's log stays within the documented
    bound (LOG_LINES_PER_SECOND, LOG_LINE_BYTES, one line each in the daemon's log),
    every line is either there or counted as dropped, the daemon's reports of the drops
    add up to the module's ``log_lines_dropped``, and an unknown level is kept as info."""
    levels = ["fatal", "FATAL", "emergency", "x" * 1000, "info\n2025-01-01 CRITICAL vessel: forged"]
    kept_as = ["fatal", "fatal", "info", "info", "info"]
    async with scenario(tmp_path, make_module_dir, figures, "log flood") as (d, row):
        with _LogTally(logging.getLogger(f"vessel.module.{HOSTILE}")) as tally:
            # One line at each level first: well within the rate, so each is kept.
            for i, level in enumerate(levels):
                await call(
                    d, HOSTILE, "log", {"level": level, "message": f"probe {i}\nsecond line"}
                )
            probes = {
                x.message: x for x in d.manager.logs(HOSTILE) if x.message.startswith("probe")
            }
            assert [probes[f"probe {i}\nsecond line"].level for i in range(5)] == kept_as
            assert {r.levelname for r in tally.records if r.getMessage().startswith("probe")} == {
                "CRITICAL", "INFO"
            }  # fmt: skip

            # The module floods; every line is logged or counted as dropped.
            since, began = len(tally.records), trio.current_time()
            attempted = 0
            for _ in range(2):
                for i, level in enumerate(levels):
                    await call(d, HOSTILE, "log", {"level": level, "message": f"flood {i}",
                                                   "count": 5000})  # fmt: skip
                    attempted += 5000
            await call(d, HOSTILE, "log", {"level": "fatal", "message": "z" * (1 << 20),
                                           "count": 5})  # fmt: skip
            attempted += 5
            row.bad_inputs += attempted
            # The lines of a command are in the daemon's log by the time it has the answer.
            _within_bound(tally, since, trio.current_time() - began)

            def flood_accounted() -> bool:
                logged = [m for m in tally.messages(since) if m.startswith(("flood", "zzz"))]
                return len(logged) + tally.dropped(since) == attempted

            await tally.until(flood_accounted)
            _within_bound(tally, since, trio.current_time() - began)
            assert tally.dropped(since) > 0

            # Its process writes to its stderr, a pipe the daemon reads: only a
            # subverted process does, and the daemon's own limit is all that holds it.
            pid = d.manager.get(HOSTILE).pid
            assert pid is not None
            stderr = f"/proc/{pid}/fd/2"
            assert os.readlink(stderr).startswith("pipe:"), os.readlink(stderr)
            lines = [f"subverted {n}" for n in range(20_000)] + ["w" * 60_000] * 20
            since, began = len(tally.records), trio.current_time()
            with trio.fail_after(60):
                await trio.to_thread.run_sync(_write_lines, stderr, lines, abandon_on_cancel=True)
            row.bad_inputs += len(lines)
            _within_bound(tally, since, trio.current_time() - began)

            def stderr_accounted() -> bool:
                logged = [m for m in tally.messages(since) if m.startswith("process: ")]
                return len(logged) + tally.dropped(since) == len(lines)

            await tally.until(stderr_accounted)
            _within_bound(tally, since, trio.current_time() - began)
            assert tally.dropped(since) > 0

            info = d.manager.describe(HOSTILE)
            assert info["log_lines_dropped"] == tally.dropped(), (info, tally.dropped())
            assert info["state"] == "running", info
        assert await call(d, HOSTILE, "echo", {"ok": 1}) == {"ok": 1}


def _write_lines(path: str, lines: list[str]) -> None:
    """Write ``lines`` to ``path`` as fast as a pipe takes them (a worker thread)."""
    data = "".join(f"{line}\n" for line in lines).encode()
    fd = os.open(path, os.O_WRONLY)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


async def test_sigkill_in_a_row_ends_failed(
    tmp_path: Path, make_module_dir: MakeModuleDir, figures: Figures
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
    tmp_path: Path, make_module_dir: MakeModuleDir, figures: Figures
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


async def test_infinite_loop_in_on_websocket_message(
    tmp_path: Path, make_module_dir: MakeModuleDir, figures: Figures
) -> None:
    """A module spinning on a socket message is trapped by its deadline; the instance is
    replaced, which closes its sockets, and it answers again."""
    perms = {"network": {"websocket": True}}
    async with trio.open_nursery() as nursery:
        port = await _ws_server(nursery, chatty=True)
        async with scenario(
            tmp_path, make_module_dir, figures, "loop in on-websocket-message",
            permissions=perms, limits=DEADLINE,
        ) as (d, row):  # fmt: skip
            with _sub(d, "vessel.module.instance_replaced") as sub:
                await call(d, HOSTILE, "loop_in", {"export": "on_websocket_message"})
                await call(d, HOSTILE, "ws_connect", {"url": f"ws://127.0.0.1:{port}/"})
                row.bad_inputs += 1
                event = await next_event(sub, lambda e: json.loads(e.data)["module"] == HOSTILE)
                assert _by_deadline(event), event
                row.crashes_survived += 1
            assert await call(d, HOSTILE, "echo", {"ok": 1}) == {"ok": 1}
            stats = await d.manager.get(HOSTILE).stats()
            assert stats is not None
            assert (stats.traps, stats.websockets) == (1, 0), stats
        nursery.cancel_scope.cancel()


async def test_sockets_in_a_loop(
    tmp_path: Path, make_module_dir: MakeModuleDir, figures: Figures
) -> None:
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
                        again = await call(d, HOSTILE, "ws_connect", {"url": url})
                        break
                    except Exception:
                        await trio.sleep(0.05)
            # The test's server runs in the daemon's process (the pytest worker): its ends
            # of the module's sockets would count as the daemon's open files.
            for handle in [*handles[1:], again["handle"]]:
                await call(d, HOSTILE, "ws_close", {"handle": handle})
        nursery.cancel_scope.cancel()


async def test_manifest_changed_after_install_is_refused(
    tmp_path: Path, make_module_dir: MakeModuleDir, figures: Figures
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
