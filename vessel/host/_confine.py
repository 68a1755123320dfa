"""Long guest work shares one CPU: a runaway guest cannot take the cores the daemon and
the healthy modules need.

A guest command normally takes well under a millisecond. Guest work still running
``CONFINE_AFTER`` seconds in, having used ``CONFINE_CPU`` of CPU time meanwhile (a spin
towards its deadline, a flood, instantiating a component at start or after a trap; not
a command that merely waited for a CPU on a busy machine), has its thread's CPU affinity
narrowed to a single CPU, the same one in every module process (the highest this
process may use), until the work ends. So all the long-running guests of a machine
together hold at most one core, however many there are; on a single usable core
nothing is done.

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

log = logging.getLogger("vessel.host")

#: Guest work running longer than this (host calls not counted) is confined. Even the
#: first milliseconds of a spinner cost the healthy modules their p99, and a normal
#: command is done long before.
CONFINE_AFTER = 0.002
#: ... and only once it has used this much CPU time of its own (host calls not counted,
#: as for its time): a guest that was waiting for a CPU on a busy machine is not running
#: long, and neither is one whose host call kept its thread busy.
CONFINE_CPU = 0.001
#: Guest work that has made this many host calls by the time it is confined is busy with
#: the host (a burst of emits, say: measured, 4 to 6 calls in its first 2 ms of guest
#: time, against none for a computation): it is confined all the same, but not reported
#: to the daemon, which must not keep off a CPU while it handles that very work. Calls
#: the host refused for a rate limit do not count: a flood gives the daemon no work, and
#: work that was busy with the host is reported from its first refused call.
HOST_BUSY_CALLS = 2


def box_cpu(allowed: Iterable[int] | None = None) -> int | None:
    """The CPU long guest work is confined to (of ``allowed``, by default the CPUs this
    thread may use); None when there is only one to use."""
    cpus = set(os.sched_getaffinity(0) if allowed is None else allowed)
    return max(cpus) if len(cpus) > 1 else None


class Confinement:
    """Narrows one thread to the box CPU, and gives it its own CPUs back afterwards."""

    def __init__(self, box: int | None, on_change: Callable[[bool], None] | None = None) -> None:
        self._box = box
        #: Called with True when this process first has work on the box, False when it
        #: has none left (the daemon keeps its other threads off the box meanwhile:
        #: ``vessel._cpu_box``). From the thread that confines or releases: must not block.
        self._on_change = on_change
        #: Per confined thread: its CPUs before, and the threads there were then.
        self._restore: dict[int, tuple[set[int], set[int]]] = {}
        #: The confined threads whose work was reported through ``on_change``.
        self._reported: set[int] = set()
        #: How many pieces of guest work have been confined so far.
        self.count = 0

    @property
    def enabled(self) -> bool:
        return self._box is not None

    def confine(self, tid: int, *, report: bool = True) -> None:
        """Confine thread ``tid`` (from any thread of this process); ``report``: count
        it for ``on_change``."""
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
        if report:
            self.report(tid)

    def report(self, tid: int) -> None:
        """Count confined thread ``tid`` for ``on_change`` (if it was confined without)."""
        if tid not in self._restore or tid in self._reported:
            return
        self._reported.add(tid)
        if len(self._reported) == 1 and self._on_change is not None:
            self._on_change(True)

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
        if tid in self._reported:
            self._reported.discard(tid)
            if not self._reported and self._on_change is not None:
                self._on_change(False)

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
def boxed(box: int | None, on_change: Callable[[bool], None] | None = None) -> Iterator[None]:
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
    try:
        yield
    finally:
        for tid in tids:
            confinement.release(tid)


def _threads() -> set[int]:
    return {int(tid) for tid in os.listdir("/proc/self/task")}
