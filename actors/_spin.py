"""Waiting actively for a reply: the mechanism behind ``PendingRequest.result(spin=)``.

A task that spins keeps yielding to the scheduler instead of letting the event loop
sleep in the kernel, so a reply is seen at the next turn of the loop rather than after
the process has been woken (see docs/performance.md). It costs a core while it lasts,
so it happens only where that core is free (``actors._cpu``) and by one task at a time.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import trio

from ._cpu import SpareCore

# The task currently waiting actively (PendingRequest.result's spin), if any: a second
# one would only take turns with the first on the same core.
_spinner: trio.lowlevel.RunVar[trio.lowlevel.Task | None] = trio.lowlevel.RunVar(
    "actors_spinner", default=None
)
_spare_core = SpareCore()


def affinity_changed() -> None:
    """Call after this process's CPUs changed (``sched_setaffinity``): spinning on a
    single usable core takes the CPU from the very process that is to answer."""
    _spare_core.use(os.sched_getaffinity(0))


@dataclass
class SpinStatistics:
    """What became of the active waits asked for in this process (tests, benchmarks)."""

    #: Waits that spun.
    spun: int = 0
    #: Not spun: another task was spinning.
    taken: int = 0
    #: Not spun: the machine had no core to spare (or only one usable core).
    no_spare_core: int = 0


spin_statistics = SpinStatistics()


async def spin_until(done: trio.Event, seconds: float) -> None:
    """Yield to the scheduler until ``done`` is set or ``seconds`` have passed (real
    time: a test's mock clock does not advance while tasks are runnable)."""
    if _spinner.get() is not None:
        spin_statistics.taken += 1
        return
    if _spare_core.cores < 2 or not _spare_core():
        spin_statistics.no_spare_core += 1
        return
    spin_statistics.spun += 1
    _spinner.set(trio.lowlevel.current_task())
    try:
        end = time.perf_counter() + seconds
        while not done.is_set() and time.perf_counter() < end:
            await trio.lowlevel.checkpoint()
    finally:
        _spinner.set(None)
