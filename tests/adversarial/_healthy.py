"""Healthy modules beside a hostile one, and a monitor that proves they stay healthy.

``healthy_modules`` installs two well-behaved testkit modules (``healthy-a``,
``healthy-b``). ``watch_healthy`` runs, for as long as its block lasts, one task per
healthy module that calls it in a loop (an ``emit`` command: each answered call must
also deliver exactly one event) and one bus subscriber counting their events. On exit it
waits (bounded) for the last events and writes answered / failed / lost into the row. It
also watches the daemon (this process) for the block: its memory and open files go into
the row too (``_resources.watch_daemon``).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from tests.fixture_types import MakeModuleDir
from vessel._bus import Subscription
from vessel._daemon import Daemon
from vessel._errors import CallError

from ._figures import Row
from ._resources import watch_daemon

HEALTHY = ("healthy-a", "healthy-b")
#: Pause between two calls of one healthy module (about 50 calls/s each: well under
#: the default max_event_rate of 200/s, so every answered call must deliver its event).
PACE = 0.02
#: Seconds any one healthy call may take before it counts as failed.
CALL_TIMEOUT = 5.0


def healthy_modules(make_module_dir: MakeModuleDir, data_dir: Path) -> None:
    for module_id in HEALTHY:
        make_module_dir(data_dir, "testkit", module_id=module_id, permissions={"storage": True})


@dataclass
class Health:
    answered: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    sent: dict[str, set[int]] = field(default_factory=dict)
    seen: dict[str, set[int]] = field(default_factory=dict)
    #: When (trio clock) each answer and each event came, by module and number: a lost
    #: event's report says how long after its answer the wait ended.
    answered_at: dict[tuple[str, int], float] = field(default_factory=dict)
    seen_at: dict[tuple[str, int], float] = field(default_factory=dict)
    #: The longest a 20 ms sleep of the final wait took (the daemon's loop was blocked).
    worst_sleep: float = 0.0

    @property
    def lost(self) -> int:
        return sum(len(self.sent[m] - self.seen.get(m, set())) for m in self.sent)


async def _caller(daemon: Daemon, module_id: str, health: Health) -> None:
    sent = health.sent.setdefault(module_id, set())
    n = 0
    while True:
        n += 1
        params = json.dumps({"name": "tick", "data": {"n": n}})
        try:
            with trio.fail_after(CALL_TIMEOUT):
                await daemon.manager.call(module_id, "emit", 1, params)
        except (CallError, trio.TooSlowError) as exc:
            health.failed += 1
            health.errors.append(f"{module_id}#{n}: {exc!r}")
        else:
            health.answered += 1
            sent.add(n)
            health.answered_at[module_id, n] = trio.current_time()
        await trio.sleep(PACE)


@asynccontextmanager
async def watch_healthy(daemon: Daemon, row: Row) -> AsyncIterator[Health]:
    """Keep the healthy modules busy during the block; assert nothing was failed or lost.
    The daemon runs in this process: what it holds is watched for the same block (a
    failed or lost call is the failure to report first, and skips those figures)."""
    async with watch_daemon(row), _watch_healthy(daemon, row) as health:
        yield health


@asynccontextmanager
async def _watch_healthy(daemon: Daemon, row: Row) -> AsyncIterator[Health]:
    health = Health()
    late: list[tuple[str, int]] = []
    waited_until = 0.0
    sub = daemon.bus.subscribe(*(f"{m}.tick" for m in HEALTHY), name="adversarial-monitor")

    async def count_events() -> None:
        async for event in sub:
            n = json.loads(event.data)["n"]
            health.seen.setdefault(event.module, set()).add(n)
            health.seen_at[event.module, n] = trio.current_time()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(count_events)
            callers = trio.CancelScope()
            callers_done = trio.Event()

            async def callers_task() -> None:
                try:
                    with callers:
                        async with trio.open_nursery() as inner:
                            for module_id in HEALTHY:
                                inner.start_soon(_caller, daemon, module_id, health)
                finally:
                    callers_done.set()

            nursery.start_soon(callers_task)
            yield health
            callers.cancel()
            # Until they have stopped, not only been told to: a call answered just before
            # the cancel still resumes with its answer and counts it as sent. Checking
            # for lost events before that saw none, ended the wait at once, and reported
            # that call's event (on its way, a moment behind the answer) as lost.
            with trio.fail_after(CALL_TIMEOUT):
                await callers_done.wait()
            # Every answered emit was sent before its answer, but is published by the
            # channel's notification task, after the answer resolved the call: give
            # delivery a moment.
            waited_until = trio.current_time() + 5
            with trio.move_on_at(waited_until):
                while health.lost:
                    before = trio.current_time()
                    await trio.sleep(0.02)
                    health.worst_sleep = max(health.worst_sleep, trio.current_time() - before)
            nursery.cancel_scope.cancel()
        late = _late_events(sub)
    finally:
        sub.close()
    row.answered += health.answered
    row.failed += health.failed
    row.events_lost += health.lost
    assert health.failed == 0, health.errors[:5]
    assert health.lost == 0, _where_lost(daemon, health, sub, late, waited_until)
    assert health.answered > 0


def _late_events(sub: Subscription) -> list[tuple[str, int]]:
    """The events queued for the monitor after its wait ended (not counted as seen)."""
    late: list[tuple[str, int]] = []
    while True:
        try:
            event = sub.receive_nowait()
        except (trio.WouldBlock, trio.ClosedResourceError):
            return late
        late.append((event.module, json.loads(event.data)["n"]))


def _where_lost(
    daemon: Daemon, health: Health, sub: Subscription, late: list[tuple[str, int]], until: float
) -> dict[str, Any]:
    """Which events were lost, and what the daemon counted, to tell where: never
    published (emitted < answered), published and dropped from the monitor's full
    queue, published after the wait (late), or published and not delivered."""
    now = trio.current_time()
    found: dict[str, Any] = {
        "monitor queue dropped": sub.dropped,
        "bus": daemon.bus.statistics(),
        "queued for the monitor after its wait": late[:10],
        "the wait's longest 20 ms sleep (s)": round(health.worst_sleep, 3),
        "wait ended, s ago": round(now - until, 3),
    }
    for m in health.sent:
        module = daemon.manager.get(m)
        lost = sorted(health.sent[m] - health.seen.get(m, set()))
        last_seen = max(health.seen.get(m, {0}))
        found[m] = {
            "lost": lost[:5],
            "answered, s before the wait ended": [
                round(until - health.answered_at[m, n], 3) for n in lost[:5]
            ],
            "last seen": last_seen,
            "last seen, s before the wait ended": round(
                until - health.seen_at.get((m, last_seen), until), 3
            ),
            "answered": len(health.sent[m]),
            "published": module.events_emitted,
            "dropped by the daemon": module.events_refused,
            "log": [line.message for line in module.logs][-5:],
        }
    return found
