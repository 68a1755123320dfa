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


def test_time_spent_off_the_cpu_is_not_charged() -> None:
    """Armed for 50 ms and then off the CPU for 80 (as a descheduled thread is), an
    invocation has not run out its time: it has used almost none of it."""
    watchdog = Watchdog(make_engine(), Confinement(None))
    try:

        def invocation() -> bool:
            watchdog.arm(0.05)
            try:
                threading.Event().wait(0.08)
                return watchdog.fired
            finally:
                watchdog.disarm()

        with ThreadPoolExecutor(1) as pool:
            assert pool.submit(invocation).result(timeout=10) is False
    finally:
        watchdog.close()


def test_a_guest_sharing_its_cpu_gets_the_time_it_waited_within_the_cap() -> None:
    """A guest that spins on a CPU another process keeps busy gets well under half of
    that CPU: at a 100 ms limit it is not trapped when 100 ms have passed, but once it
    has used 100 ms of CPU or at the latest after twice the limit, by its deadline."""
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
    assert wall >= limit * 1.3, (wall, used)
    # The cap: it was trapped without having had its 100 ms of CPU (it yields to the
    # hog every slice, so it gets a quarter of the CPU or so), once twice the limit had
    # passed. (No upper bound on the wall time: the watchdog may look late on a busy
    # machine.)
    assert wall >= limit * DEADLINE_WAIT_FACTOR, (wall, used)
    assert used < limit, (wall, used)
