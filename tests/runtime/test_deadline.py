"""An invocation's deadline (``limits.invocation_timeout_ms``) is the guest's own CPU
time: time it waited for a CPU on a busy machine is given back, up to as much again as
the limit (vessel/host/_runtime.py, ``Watchdog``). Seen at the watchdog alone."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import wasmtime

from vessel.host._confine import Confinement
from vessel.host._engine import make_engine
from vessel.host._runtime import DEADLINE_WAIT_FACTOR, Watchdog
from vessel.host._slicing import EpochCallback

_SPIN_WAT = """(module (func (export "spin") (loop $l (br $l))))"""

_HOG = "import sys\nsys.stdout.write('ready\\n')\nsys.stdout.flush()\nwhile True:\n    pass\n"


@contextlib.contextmanager
def _hog_on(cpu: int) -> Iterator[None]:
    """A process that keeps ``cpu`` busy for as long as the block runs (ended by PID)."""
    with subprocess.Popen([sys.executable, "-c", _HOG], stdout=subprocess.PIPE) as hog:
        try:
            os.sched_setaffinity(hog.pid, {cpu})
            assert hog.stdout is not None
            assert hog.stdout.readline() == b"ready\n"
            yield
        finally:
            hog.kill()


class _RecordingEngine(wasmtime.Engine):
    """An engine that notes when its watchdog's deadline advanced its epoch (the
    watchdog sets ``fired`` just before), in monotonic time."""

    def __init__(self) -> None:
        super().__init__()
        self.watchdog: Watchdog | None = None
        self.fired_at: float | None = None

    def increment_epoch(self) -> None:
        if self.fired_at is None and self.watchdog is not None and self.watchdog.fired:
            self.fired_at = time.monotonic()
        super().increment_epoch()


def test_time_spent_off_the_cpu_is_not_charged() -> None:
    """An invocation armed for 50 ms whose thread then stays off the CPU (as a
    descheduled thread is) has used none of its time when 50 ms have passed: its
    deadline comes only once twice the limit has passed (the cap on what waiting is
    given back), and then it does come, though the guest never ran."""
    limit = 0.05
    engine = _RecordingEngine()
    watchdog = engine.watchdog = Watchdog(engine, Confinement(None))
    try:

        def invocation() -> tuple[float, float]:
            """Armed, then off the CPU until the watchdog fires (bounded): when it was
            armed, and the CPU time its thread used meanwhile."""
            cpu = time.thread_time()
            armed = time.monotonic()
            watchdog.arm(limit)
            try:
                while not watchdog.fired and time.monotonic() < armed + 10:
                    threading.Event().wait(0.01)
            finally:
                watchdog.disarm()
            return armed, time.thread_time() - cpu

        with ThreadPoolExecutor(1) as pool:
            armed, used = pool.submit(invocation).result(timeout=30)
    finally:
        watchdog.close()
    assert watchdog.fired
    assert engine.fired_at is not None
    # Not before the cap, however late the watchdog's thread got to look.
    assert engine.fired_at - armed >= limit * DEADLINE_WAIT_FACTOR, engine.fired_at - armed
    assert used < limit, used  # (a few looks at `fired`, far from the limit)


def test_a_guest_sharing_its_cpu_gets_the_time_it_waited_within_the_cap() -> None:
    """A guest that spins on a CPU another process keeps busy is trapped by its deadline
    (at a 100 ms limit) once it has used 100 ms of CPU time of its own, or once twice the
    limit has passed, whichever comes first: never for the time it spent waiting for
    the CPU within the cap. (How the CPU was shared is the scheduler's business: the
    guest yields to the hog every slice, and the machine may be busier still.)"""
    limit = 0.1
    engine = make_engine()
    watchdog = Watchdog(engine, Confinement(None))
    callback = EpochCallback(lambda: watchdog.fired)
    store = wasmtime.Store(engine)
    callback.install(store)
    spin = wasmtime.Instance(store, wasmtime.Module(engine, _SPIN_WAT), []).exports(store)["spin"]
    assert isinstance(spin, wasmtime.Func)
    cpu = min(os.sched_getaffinity(0))

    def invocation() -> tuple[float, float, str]:
        """Pinned beside the hog: the wall-clock and CPU time to the trap, and why."""
        os.sched_setaffinity(0, {cpu})  # this thread only
        store.set_epoch_deadline(1)
        started, cpu_at_start = time.monotonic(), time.thread_time()
        watchdog.arm(limit)
        try:
            spin(store)
        except wasmtime.WasmtimeError as exc:
            return time.monotonic() - started, time.thread_time() - cpu_at_start, str(exc)
        finally:
            watchdog.disarm()
        raise AssertionError("the spin returned")

    try:
        with _hog_on(cpu), ThreadPoolExecutor(1) as pool:
            wall, used, why = pool.submit(invocation).result(timeout=30)
    finally:
        watchdog.close()
    assert watchdog.fired, why
    assert "deadline exceeded" in why, why
    # Measured around the watchdog's own arm and trap, so each figure is at least what
    # the watchdog saw: either the guest had used its CPU time, or the cap had passed.
    # (No upper bound on the wall time: the watchdog may look late on a busy machine.)
    assert used >= limit or wall >= limit * DEADLINE_WAIT_FACTOR, (wall, used)
