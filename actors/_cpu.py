"""Whether the machine has a core to spare, for the active wait of ``PendingRequest``.

Waiting actively keeps one core busy. That is only free when some core would otherwise
idle: on a machine whose other processes already keep the remaining cores busy, it takes
CPU from them — among them, quite likely, the very process whose answer is awaited (with
a module spinning beside it, a healthy module's p99 call latency went from 1.7x to 2.8x
of its quiet figure in bench/). So the active wait asks this first.

"Other processes" is the busy time of the CPUs this process may use (their lines of
``/proc/stat``) minus this process's own (``time.process_time``), averaged since the last
look, which is taken at most every ``interval`` seconds so that asking costs nothing on a
hot path. Only those CPUs: in a container given two cores of a busy eight-core host, what
runs on the other six takes nothing from the waiting task.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


def _busy_and_total(stat: Path, cpus: frozenset[int]) -> tuple[int, int] | None:
    """Jiffies CPUs ``cpus`` spent busy, and in all, since boot (None: unreadable, or a
    CPU's line is missing)."""
    try:
        with open(stat, "rb") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    busy = total = seen = 0
    # Only the per-CPU lines are split: the others (interrupt counts) can be long.
    for fields in (line.split() for line in lines if line.startswith(b"cpu")):
        try:
            if fields[0] == b"cpu" or int(fields[0][3:]) not in cpus:
                continue
            # user nice system idle iowait irq softirq steal ...; guest time is already
            # in user. Waiting for I/O is idle here; stolen time (a VM's host ran
            # something else) is not: the core was not ours to use.
            values = [int(v) for v in fields[1:9]]
        except ValueError:
            return None
        if len(values) < 4:
            return None
        idle = values[3] + (values[4] if len(values) > 4 else 0)
        busy += sum(values) - idle
        total += sum(values)
        seen += 1
    return (busy, total) if seen == len(cpus) else None


class SpareCore:
    """``spare_core()``: True when other processes have left at least one core idle."""

    def __init__(
        self,
        *,
        cpus: Iterable[int] | None = None,
        interval: float = 0.1,
        stat: Path = Path("/proc/stat"),
        own_cpu: Callable[[], float] = time.process_time,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cpus = frozenset(os.sched_getaffinity(0) if cpus is None else cpus)
        self.interval = interval
        self._stat = stat
        self._own_cpu = own_cpu
        self._clock = clock
        self._at: float | None = None
        self._busy = 0
        self._own = 0.0
        self._spare = False
        #: Cores' worth of CPU the machine's other processes used in the last window.
        self.others: float | None = None

    @property
    def cores(self) -> int:
        return len(self.cpus)

    def use(self, cpus: Iterable[int]) -> None:
        """This process may now run on ``cpus`` only (``sched_setaffinity``): look at
        those from the next look on, afresh."""
        self.cpus = frozenset(cpus)
        self._at, self._spare, self.others = None, False, None

    def __call__(self) -> bool:
        now = self._clock()
        if self._at is not None and now - self._at < self.interval:
            return self._spare
        sample = _busy_and_total(self._stat, self.cpus)
        own = self._own_cpu()
        if sample is None:
            self._at, self._spare, self.others = now, False, None
            return False
        busy, _total = sample
        if self._at is not None and now > self._at:
            wall = now - self._at
            machine = (busy - self._busy) / _TICKS_PER_SECOND / wall
            self.others = max(0.0, machine - (own - self._own) / wall)
            # One core for the waiting task, the rest for everybody else.
            self._spare = self.others <= self.cores - 1
        self._at, self._busy, self._own = now, busy, own
        return self._spare
