"""Long guest work shares one CPU: a runaway guest cannot take the cores the daemon and
the healthy modules need.

Two thresholds, for two different things:

* **Long work is confined, quietly.** A guest command normally takes well under a
  millisecond. Guest work still running ``CONFINE_AFTER`` seconds in, having used
  ``CONFINE_CPU`` of CPU time meanwhile (a cold first command, a garbage collection, a
  big parse; a spin; not a command that merely waited for a CPU on a busy machine), has
  its thread's CPU affinity narrowed to a single CPU, the same one in every module
  process (the highest this process may use), until the work ends. So all the
  long-running guests of a machine together hold at most one core, however many there
  are; on a single usable core nothing is done. This touches this one thread of this
  one process, costs two system calls, and is logged at DEBUG only: it is no verdict.
* **A runaway is reported.** Only work a healthy module does not do is reported to the
  daemon, which quarantines the module (``vessel._cpu_box``): guest work that has used
  ``runaway_cpu`` of its deadline's CPU time (a quarter of it, at least
  ``RUNAWAY_MIN_CPU``: 50 ms) without returning, and long work that floods beyond the module's
  rate limit (the host refused its emits or lines). A start-up's work is never reported
  (``_box_report``). The thresholds count the guest's own CPU time, so a busy machine, a
  host call's wait, or a stream of short calls never add up to a runaway. (Until session
  12, long work itself was reported, 2 ms in: ten healthy modules under four clients'
  calls were quarantined ~4 times a second; docs/performance.md, Isolation.)

Why affinity and not priority: measured on 2 cores (bench/, a healthy module's p99 call
latency while a neighbour spins for 100 ms; 4 alternating A/B pairs), confinement
brought the noisy p99 from 2.4-4.6 ms to 1.9-2.8 ms (2.7-4.5x the quiet p99 to
1.7-2.9x). Lowering the spinner's priority did nothing (nice 19) or made it worse
(SCHED_IDLE): the kernel kept waking the healthy chain's tasks onto the spinner's CPU,
where they waited for the next tick. An unprivileged thread may narrow and widen an
affinity within what its process is allowed, so nothing here needs privileges.

The price: the watchdog thread that enforces deadlines now also looks 2 ms into every
invocation, so a module process that is busy with calls wakes it up to 500 times a
second (measured: ~20 µs more module CPU per call, 183-193 against 164-170 µs, with no
change in the call round trip). Since it also looks 0.5 ms in, to make guest work yield
(``_slicing``), it wakes up to once per call (~10 µs more: about 210 against 195 µs per
call, with no change in the round trip either). An idle module process stays idle.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Literal

log = logging.getLogger("vessel.host")

#: Guest work running longer than this (host calls not counted) is confined. Even the
#: first milliseconds of a spinner cost the healthy modules their p99, and confining a
#: healthy command that runs this long costs nobody else anything.
CONFINE_AFTER = 0.002
#: ... and only once it has used this much CPU time of its own (host calls not counted,
#: as for its time): a guest that was waiting for a CPU on a busy machine is not running
#: long, and neither is one whose host call kept its thread busy.
CONFINE_CPU = 0.001
#: Guest work that has made this many host calls by the time it is confined is busy with
#: the host (a burst of emits, say: measured, 4 to 6 calls in its first 2 ms of guest
#: time, against none for a computation): it is the daemon's own work, which the daemon
#: must not keep off a CPU for, so it is never reported as a runaway. Calls the host
#: refused for a rate limit do not count: a flood gives the daemon no work, and is
#: reported from its first refused call.
HOST_BUSY_CALLS = 2
#: Guest work is a runaway once it has used this share of its deadline's CPU time ...
RUNAWAY_SHARE = 0.25
#: ... and at least this much (seconds): more than a cold first command or a garbage
#: collection takes, even on a small machine (a componentize-py guest's first command
#: takes 2-3 ms of CPU here, a Raspberry Pi is several times slower). With the default
#: deadline (5 s) the quarter counts: 1.25 s, room for parsing a big state dump.
RUNAWAY_MIN_CPU = 0.05

#: Why a module process has work on the box: guest work that runs away or floods, or a
#: start-up after a crash (``boxed``).
BoxReason = Literal["runaway", "flood", "restart"]
#: Told ``(True, why)`` when a process first has reported work on the box, ``(False,
#: why)`` when it has none left.
BoxChange = Callable[[bool, BoxReason], None]


def runaway_cpu(limit: float) -> float:
    """The guest CPU time after which an invocation with a ``limit`` deadline runs away."""
    return max(RUNAWAY_MIN_CPU, limit * RUNAWAY_SHARE)


def box_cpu(allowed: Iterable[int] | None = None) -> int | None:
    """The CPU long guest work is confined to (of ``allowed``, by default the CPUs this
    thread may use); None when there is only one to use."""
    cpus = set(os.sched_getaffinity(0) if allowed is None else allowed)
    return max(cpus) if len(cpus) > 1 else None


class Confinement:
    """Narrows one thread to the box CPU, and gives it its own CPUs back afterwards."""

    def __init__(self, box: int | None, on_change: BoxChange | None = None) -> None:
        self._box = box
        #: Told when this process first has reported work on the box, and when it has
        #: none left (the daemon quarantines the module meanwhile: ``vessel._cpu_box``).
        #: From the thread that reports or releases: must not block.
        self._on_change = on_change
        #: Per confined thread: its CPUs before, and the threads there were then.
        self._restore: dict[int, tuple[set[int], set[int]]] = {}
        #: The confined threads whose work was reported through ``on_change``, and why.
        self._reported: dict[int, BoxReason] = {}
        #: How many pieces of guest work have been confined so far.
        self.count = 0

    @property
    def enabled(self) -> bool:
        return self._box is not None

    def confine(self, tid: int) -> None:
        """Confine thread ``tid`` (from any thread of this process)."""
        if self._box is None or tid in self._restore:
            return
        try:
            before = os.sched_getaffinity(tid)
            threads = _threads()
            os.sched_setaffinity(tid, {self._box})
        except OSError as exc:  # the thread ended meanwhile, or a seccomp filter
            log.debug("cannot confine thread %d: %s", tid, exc)
            return
        self._restore[tid] = (before, threads)
        self.count += 1

    def report(self, tid: int, why: BoxReason) -> None:
        """Report the work of confined thread ``tid`` to ``on_change`` (once)."""
        if tid not in self._restore or tid in self._reported:
            return
        self._reported[tid] = why
        if len(self._reported) == 1 and self._on_change is not None:
            self._on_change(True, why)

    def release(self, tid: int) -> None:
        """Undo :meth:`confine` for ``tid``, if it was confined, and for the threads it
        started meanwhile (they inherited the box: wasmtime starts its worker threads
        when it first needs them, during an instantiation, say)."""
        restore = self._restore.pop(tid, None)
        if restore is None:
            return
        before, threads = restore
        for thread in [tid, *(_threads() - threads)]:
            self._give_back(thread, before)
        why = self._reported.pop(tid, None)
        if why is not None and not self._reported and self._on_change is not None:
            self._on_change(False, why)

    def _give_back(self, tid: int, cpus: set[int]) -> None:
        try:
            if os.sched_getaffinity(tid) != {self._box}:
                return  # a thread that has CPUs of its own already
            os.sched_setaffinity(tid, cpus)
        except ProcessLookupError:
            return  # it ended
        except OSError:
            # The CPUs allowed changed meanwhile (a cpuset): take what the process's main
            # thread may use now (it is confined only during a boxed start), rather than
            # stay on the box.
            try:
                os.sched_setaffinity(tid, os.sched_getaffinity(os.getpid()))
            except OSError as exc:
                log.warning("thread %d stays confined to CPU %s: %s", tid, self._box, exc)


@contextmanager
def boxed(box: int | None, on_change: BoxChange | None = None) -> Iterator[None]:
    """Run the block with every thread of this process confined to the box, and give
    each its CPUs back afterwards (threads started meanwhile too).

    A module process restarting after a crash starts up in the box: its start-up (the
    artifact's load, instantiation, on-load) is tens of milliseconds of CPU that the
    modules still serving should not have to wait behind.
    """
    confinement = Confinement(box, on_change)
    tids = _threads()
    for tid in tids:
        confinement.confine(tid)
        confinement.report(tid, "restart")
    try:
        yield
    finally:
        for tid in tids:
            confinement.release(tid)


def _threads() -> set[int]:
    return {int(tid) for tid in os.listdir("/proc/self/task")}
