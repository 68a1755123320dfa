"""Healthy modules beside a hostile one, and a monitor that proves they stay healthy.

``healthy_modules`` installs two well-behaved testkit modules (``healthy-a``,
``healthy-b``). ``watch_healthy`` runs, for as long as its block lasts, one task per
healthy module that calls it in a loop (an ``emit`` command: each answered call must
also deliver exactly one event) and one bus subscriber counting their events. On exit it
waits (bounded) for the last events and writes answered / failed / lost into the row.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from vessel._bus import Subscription
from vessel._daemon import Daemon
from vessel._errors import CallError

from ._figures import Row

HEALTHY = ("healthy-a", "healthy-b")
#: Pause between two calls of one healthy module (about 50 calls/s each: well under
#: the default max_event_rate of 200/s, so every answered call must deliver its event).
PACE = 0.02
#: Seconds any one healthy call may take before it counts as failed.
CALL_TIMEOUT = 5.0


def healthy_modules(make_module_dir: Any, data_dir: Path) -> None:
    for module_id in HEALTHY:
        make_module_dir(data_dir, "testkit", module_id=module_id, permissions={"storage": True})


@dataclass
class Health:
    answered: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    sent: dict[str, set[int]] = field(default_factory=dict)
    seen: dict[str, set[int]] = field(default_factory=dict)

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
        await trio.sleep(PACE)


@asynccontextmanager
async def watch_healthy(daemon: Daemon, row: Row) -> AsyncIterator[Health]:
    """Keep the healthy modules busy during the block; assert nothing was failed or lost."""
    health = Health()
    sub = daemon.bus.subscribe(*(f"{m}.tick" for m in HEALTHY), name="adversarial-monitor")

    async def count_events() -> None:
        async for event in sub:
            health.seen.setdefault(event.module, set()).add(json.loads(event.data)["n"])

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(count_events)
            callers = trio.CancelScope()

            async def callers_task() -> None:
                with callers:
                    async with trio.open_nursery() as inner:
                        for module_id in HEALTHY:
                            inner.start_soon(_caller, daemon, module_id, health)

            nursery.start_soon(callers_task)
            yield health
            callers.cancel()
            # Every answered emit was published before its answer: give delivery a moment.
            with trio.move_on_after(5):
                while health.lost:
                    await trio.sleep(0.02)
            nursery.cancel_scope.cancel()
    finally:
        sub.close()
    row.answered += health.answered
    row.failed += health.failed
    row.events_lost += health.lost
    assert health.failed == 0, health.errors[:5]
    assert health.lost == 0, _where_lost(daemon, health, sub)
    assert health.answered > 0


def _where_lost(daemon: Daemon, health: Health, sub: Subscription) -> dict[str, Any]:
    """Which events were lost, and what the daemon counted, to tell where: never
    published (emitted < answered), published and dropped from the monitor's full
    queue, or published and not delivered."""
    found: dict[str, Any] = {"monitor queue dropped": sub.dropped, "bus": daemon.bus.statistics()}
    for m in health.sent:
        module = daemon.manager.get(m)
        found[m] = {
            "lost": sorted(health.sent[m] - health.seen.get(m, set()))[:5],
            "answered": len(health.sent[m]),
            "published": module.events_emitted,
            "dropped by the daemon": module.events_refused,
            "log": [line.message for line in module.logs][-5:],
        }
    return found
