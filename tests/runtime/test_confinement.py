"""A guest invocation that runs long is confined to one CPU while it runs, and gets its
CPUs back when it ends (vessel/host/_confine.py); it yields the CPU at every slice's end
meanwhile (vessel/host/_slicing.py). Seen from outside, the way an operator
would: the kernel's per-thread affinity of the module process, and the module's stats.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import trio
import wasmtime

from tests.fixture_types import MakeModuleDir
from vessel._wasm_module import WasmModule
from vessel.host._confine import CONFINE_AFTER, Confinement, box_cpu, runaway_cpu
from vessel.host._engine import make_engine
from vessel.host._runtime import Watchdog
from vessel.host._slicing import SLICE, EpochCallback

from .harness import call, call_error, running_daemon

MODULE = "testkit"
#: Long enough to look at the spinning guest several times, short enough for the suite.
DEADLINE_MS = 1500
#: The daemon's quarantine of a module caught running long, short for the tests.
QUARANTINE = 0.2


def _affinities(pid: int) -> dict[int, set[int]]:
    """Every thread of ``pid`` and the CPUs it may run on."""
    found: dict[int, set[int]] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        # (A thread may end between the listing and the look.)
        with contextlib.suppress(ProcessLookupError):
            found[int(tid)] = os.sched_getaffinity(int(tid))
    return found


async def test_a_long_invocation_is_confined_while_it_runs(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    make_module_dir(tmp_path, MODULE, limits={"invocation_timeout_ms": DEADLINE_MS})
    everything = os.sched_getaffinity(0)
    box = box_cpu()
    async with running_daemon(tmp_path, quarantine=QUARANTINE) as daemon:
        module = daemon.manager.get(MODULE)
        pid = module.pid
        assert pid is not None
        # (Whether a fast call is confined is the watchdog's to say, deterministically:
        # test_the_watchdog_confines_and_reports_only_by_cpu_time. Here: what a spin does.)
        before = await _confined(module)

        async with trio.open_nursery() as nursery:
            failure: list[str] = []

            async def spin() -> None:
                failure.append((await call_error(daemon, MODULE, "loop")).message)

            nursery.start_soon(spin)
            if box is None:  # one usable CPU: nothing to confine to
                await trio.sleep(CONFINE_AFTER * 10)
                assert all(cpus == everything for cpus in _affinities(pid).values())
            else:
                # The guest thread is narrowed soon after CONFINE_AFTER; no event tells
                # when, so look every few milliseconds, bounded well inside the deadline.
                with trio.fail_after(DEADLINE_MS / 1000 / 2):
                    while not any(cpus == {box} for cpus in _affinities(pid).values()):
                        await trio.sleep(0.005)
                # (The daemon then quarantines the module and moves its other threads
                # into the box too: tests/runtime/test_cpu_box.py.)
        assert "deadline exceeded" in failure[0]

        # Over (and the trapped instance replaced, which the next answer waits for), and
        # the quarantine that followed too: every thread has all its CPUs again, and the
        # stats count the confinement.
        assert await call(daemon, MODULE, "echo", {"ok": 2}) == {"ok": 2}
        with trio.fail_after(5):
            while not all(cpus == everything for cpus in _affinities(pid).values()):
                await trio.sleep(0.01)
        if box is None:
            assert await _confined(module) == 0
        else:
            assert await _confined(module) > before


async def _stat(module: WasmModule, name: str) -> int:
    """One counter of the module process's ``guest.stats``."""
    stats = await module.stats()
    assert stats is not None
    return int(getattr(stats, name))


async def _confined(module: WasmModule) -> int:
    return await _stat(module, "confined_invocations")


async def test_time_waiting_in_a_host_call_is_not_the_callers(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """A guest waiting 600 ms for another module's answer is not charged for it: with a
    200 ms deadline of its own, its call still succeeds (host calls do not count, for its
    deadline as for running long); the other module, busy computing those 600 ms, is
    confined while it does."""
    make_module_dir(
        tmp_path,
        "testkit",
        module_id="alpha",
        permissions={"call": ["beta.spin@1"]},
        limits={"invocation_timeout_ms": 200},
    )
    make_module_dir(tmp_path, "testkit", module_id="beta")
    # Looked at first: the daemon runs in this process, and a quarantine narrows it.
    box = box_cpu()
    async with running_daemon(tmp_path) as daemon:
        beta = daemon.manager.get("beta")
        before = await _confined(beta)
        params = {"module": "beta", "name": "spin", "params": {"ms": 600}}
        with trio.fail_after(10):
            assert await call(daemon, "alpha", "call", params) == {}
        if box is not None:
            assert await _confined(beta) > before


def test_a_host_call_spinning_on_the_cpu_is_not_the_guests_time() -> None:
    """The same as above, seen at the watchdog alone and deterministic whatever the
    machine's load: a guest whose one host call keeps its thread busy for 50 ms (the
    host's work, not the guest's) is neither confined nor made to yield; its guest time
    is the few microseconds around the call."""
    confinement = Confinement(box_cpu())
    engine = make_engine()
    watchdog = Watchdog(engine, confinement)
    callback = EpochCallback(lambda: watchdog.fired)
    store = wasmtime.Store(engine)
    callback.install(store)

    def host_call() -> int:
        watchdog.pause()
        try:
            end = time.monotonic() + 0.05
            while time.monotonic() < end:  # CPU time, all of it the host's
                pass
            return 0  # ``busy`` stops after one call
        finally:
            watchdog.resume()

    busy = _host_busy_guest(engine, store, host_call)
    try:
        with ThreadPoolExecutor(1) as pool:
            for _ in range(3):
                pool.submit(_armed, watchdog, store, busy).result(timeout=10)
    finally:
        watchdog.close()
    assert (confinement.count, callback.yields) == (0, 0)


def test_waiting_for_a_cpu_is_not_long_work() -> None:
    """The watchdog confines an invocation 2 ms in only if it has used 1 ms of CPU
    meanwhile: one that was descheduled (here: sleeping, which uses none) on a busy
    machine is not a runaway, and must not get its module quarantined. One that spins
    is confined."""
    box = box_cpu()
    confinement = Confinement(box)
    watchdog = Watchdog(make_engine(), confinement)
    try:

        def invocation(busy: bool) -> frozenset[int]:
            """Armed for 50 ms of wall time, busy or idle; the CPUs it had at the end."""
            watchdog.arm(5.0)
            try:
                if busy:
                    end = time.monotonic() + 0.05
                    while time.monotonic() < end:
                        pass
                else:
                    threading.Event().wait(0.05)  # off the CPU, as a descheduled thread
                return frozenset(os.sched_getaffinity(0))
            finally:
                watchdog.disarm()

        with ThreadPoolExecutor(1) as pool:
            assert pool.submit(invocation, False).result(timeout=10) != {box}
            assert confinement.count == 0
            busy = pool.submit(invocation, True).result(timeout=10)
            if box is None:  # one usable CPU: nothing to confine to, ever
                assert confinement.count == 0
            else:
                assert busy == {box}
                assert confinement.count == 1
    finally:
        watchdog.close()


async def _yields(module: WasmModule) -> int:
    return await _stat(module, "guest_yields")


async def test_long_work_gives_way_every_slice_and_still_meets_its_deadline(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """A guest spinning towards its deadline yields the CPU at every slice's end
    (vessel/host/_slicing.py): on one CPU as on many, since a yield is what keeps a woken
    task from waiting a scheduler tick behind it. It still traps at its deadline, with
    the usual reason; fast calls never yield."""
    deadline_ms = 300
    make_module_dir(tmp_path, MODULE, limits={"invocation_timeout_ms": deadline_ms})
    async with running_daemon(tmp_path, quarantine=QUARANTINE) as daemon:
        module = daemon.manager.get(MODULE)
        # (That fast calls never yield is the watchdog's to say, deterministically:
        # test_the_watchdog_makes_only_long_work_yield.)
        before = await _yields(module)
        with trio.fail_after(10):
            failure = await call_error(daemon, MODULE, "loop")
        assert "deadline exceeded" in failure.message
        # It gave way, again and again (how often depends on when the machine lets the
        # watchdog run: the bare-engine test below counts them).
        assert await _yields(module) - before >= 2
        # The trapped instance was replaced and answers again.
        assert await call(daemon, MODULE, "echo", {"ok": 2}) == {"ok": 2}


def test_the_watchdog_makes_only_long_work_yield() -> None:
    """Seen at the watchdog and the store's epoch callback together, on a bare engine:
    quick invocations never yield; one spinning in wasm yields every slice until its
    deadline, and then traps."""
    engine = make_engine()
    watchdog = Watchdog(engine, Confinement(None))
    callback = EpochCallback(lambda: watchdog.fired)
    store = wasmtime.Store(engine)
    callback.install(store)
    exports = wasmtime.Instance(store, wasmtime.Module(engine, _WAT), []).exports(store)
    try:

        def invocation(export: str, seconds: float) -> str:
            func = exports[export]
            assert isinstance(func, wasmtime.Func)
            store.set_epoch_deadline(1)
            watchdog.arm(seconds)
            try:
                func(store)
            except wasmtime.WasmtimeError as exc:
                return str(exc)
            finally:
                watchdog.disarm()
            return "returned"

        with ThreadPoolExecutor(1) as pool:
            for _ in range(200):
                assert pool.submit(invocation, "nop", 0.2).result(timeout=10) == "returned"
            assert callback.yields == 0
            trap = pool.submit(invocation, "spin", 0.2).result(timeout=10)
            assert "deadline exceeded" in trap
            assert watchdog.fired
            # Again and again (one a slice of its 200 ms when the watchdog is woken on
            # time; how often a busy machine wakes it is not this test's to say).
            assert callback.yields >= 2
            # The next invocation starts afresh: no stale epoch makes it trap.
            assert pool.submit(invocation, "nop", 0.2).result(timeout=10) == "returned"
    finally:
        watchdog.close()


def test_guest_work_yields_from_its_first_slice_of_cpu() -> None:
    """A guest gives way from the moment it has used a slice of CPU, long before it
    counts as long work (``CONFINE_CPU`` of CPU, ``CONFINE_AFTER`` in) and is confined:
    the first milliseconds of a runaway are when the healthy modules beside it, not yet
    moved off its CPU, wait behind it (docs/performance.md, Isolation).

    Seen from the guest's thread: how much CPU it had used at its first yield. Never less
    than a slice: the watchdog waits for that much, so a guest that was only waiting for
    a CPU has nothing to give up. (How much more it used before the first yield depends
    on when the machine wakes the watchdog; not asserted.)"""
    engine = make_engine()
    watchdog = Watchdog(engine, Confinement(box_cpu()))
    #: The spin under way, and the guest thread's CPU time when it began.
    current = {"spin": 0, "cpu": 0.0}
    #: Per spin: the CPU it had used at its first yield.
    first_yield: dict[int, float] = {}

    def expired() -> bool:  # on the guest's thread, at every tick of the watchdog
        first_yield.setdefault(int(current["spin"]), time.thread_time() - current["cpu"])
        return watchdog.fired

    callback = EpochCallback(expired)
    store = wasmtime.Store(engine)
    callback.install(store)
    spin = wasmtime.Instance(store, wasmtime.Module(engine, _WAT), []).exports(store)["spin"]
    assert isinstance(spin, wasmtime.Func)
    try:

        def invocation(n: int) -> None:
            store.set_epoch_deadline(1)
            current["spin"], current["cpu"] = n, time.thread_time()
            watchdog.arm(0.02)
            try:
                with contextlib.suppress(wasmtime.WasmtimeError):  # its deadline
                    spin(store)
            finally:
                watchdog.disarm()

        with ThreadPoolExecutor(1) as pool:
            for n in range(5):
                pool.submit(invocation, n).result(timeout=10)
    finally:
        watchdog.close()
    cpu = sorted(first_yield.values())
    assert len(cpu) == 5, first_yield
    assert cpu[0] >= SLICE, cpu


#: A core module: one export that returns at once, one that loops forever (long work
#: with no host calls).
_WAT = """(module
  (func (export "nop"))
  (func (export "spin") (loop $l (br $l))))"""


def test_long_work_busy_with_the_host_is_reported_only_once_the_host_refuses_it() -> None:
    """Long work that keeps calling the host (a burst of emits) is the daemon's work: it
    is confined, but never reported (its module quarantined), however long it runs. Once
    the host refuses its calls for a rate limit it is a flood that gives the daemon
    nothing to do: from then on it is reported and yields like any other runaway."""
    box = box_cpu()
    changes: list[tuple[bool, str]] = []
    engine = make_engine()
    watchdog = Watchdog(engine, Confinement(box, lambda held, why: changes.append((held, why))))
    callback = EpochCallback(lambda: watchdog.fired)
    store = wasmtime.Store(engine)
    callback.install(store)
    #: Wall time of the invocation's start, and when the host starts refusing (None: never).
    plan: dict[str, float | None] = {"start": 0.0, "refuse_after": None}

    def host_call() -> int:
        watchdog.pause()
        try:
            elapsed = time.monotonic() - (plan["start"] or 0.0)
            refuse_after = plan["refuse_after"]
            if refuse_after is not None and elapsed >= refuse_after:
                watchdog.refused()
            return 1 if elapsed < 0.2 else 0  # 200 ms of work, then it returns
        finally:
            watchdog.resume()

    busy = _host_busy_guest(engine, store, host_call)
    try:

        def invocation(refuse_after: float | None) -> int:
            """Yields during one invocation of ``busy``."""
            plan["start"], plan["refuse_after"] = time.monotonic(), refuse_after
            before = callback.yields
            _armed(watchdog, store, busy)
            return callback.yields - before

        with ThreadPoolExecutor(1) as pool:
            pool.submit(invocation, None).result(timeout=10)
            assert changes == []
            # Refused from 20 ms in: well after the watchdog found it busy with the host.
            assert pool.submit(invocation, 0.02).result(timeout=10) > 0
            # Reported while it flooded, and no longer once it ended (where there is a
            # box to report: with one CPU nothing is confined).
            assert changes == ([(True, "flood"), (False, "flood")] if box is not None else [])
            # Refused from the start: never counted as busy with the host at all.
            assert pool.submit(invocation, 0.0).result(timeout=10) > 0
    finally:
        watchdog.close()


def test_the_watchdog_confines_and_reports_only_by_cpu_time() -> None:
    """Seen at the watchdog on a bare engine, deterministic whatever the machine does
    (every threshold is the guest's own CPU time): quick invocations are never confined;
    a spin is confined once it has used ``CONFINE_CPU``, quietly; only one that has used
    ``runaway_cpu`` of its deadline is reported as a runaway (its module quarantined),
    and it is no longer once it ended; a suspect's long work is reported once it is
    confined."""
    box = box_cpu()
    changes: list[tuple[bool, str]] = []
    engine = make_engine()
    confinement = Confinement(box, lambda held, why: changes.append((held, why)))
    # A runaway after 20 ms of CPU whatever the deadline, so that a spin can be given a
    # deadline no busy machine reaches first (the real threshold: the test below).
    watchdog = Watchdog(engine, confinement, runaway=lambda limit: 0.04 if limit < 1 else 0.02)
    #: A spin under a long deadline ends (traps) once it has been reported: how long
    #: that takes in wall time is the machine's business, the CPU it takes is not.
    until_reported = {"on": False}
    callback = EpochCallback(lambda: watchdog.fired or (until_reported["on"] and bool(changes)))
    store = wasmtime.Store(engine)
    callback.install(store)
    exports = wasmtime.Instance(store, wasmtime.Module(engine, _WAT), []).exports(store)
    nop, spin = exports["nop"], exports["spin"]
    assert isinstance(nop, wasmtime.Func)
    assert isinstance(spin, wasmtime.Func)

    def invocation(func: wasmtime.Func, seconds: float) -> None:
        store.set_epoch_deadline(1)
        watchdog.arm(seconds)
        try:
            with contextlib.suppress(wasmtime.WasmtimeError):  # a spin's deadline
                func(store)
        finally:
            watchdog.disarm()

    try:
        with ThreadPoolExecutor(1) as pool:
            for _ in range(200):
                pool.submit(invocation, nop, 5.0).result(timeout=10)
            assert (confinement.count, changes) == (0, [])
            # Long work, below a runaway's CPU time: it traps at its deadline first.
            pool.submit(invocation, spin, 0.03).result(timeout=10)
            assert watchdog.fired
            assert confinement.count == (1 if box is not None else 0)
            assert changes == []
            runaway = [(True, "runaway"), (False, "runaway")]
            if box is not None:
                # A runaway: reported once it has used 20 ms of CPU, long before its
                # deadline (it is ended then), and no longer once it ended.
                until_reported["on"] = True
                pool.submit(invocation, spin, 60.0).result(timeout=600)
                assert changes == runaway
                assert not watchdog.fired
                # A suspect (it trapped before): its long work is a runaway once confined.
                changes.clear()
                watchdog.suspect = True
                pool.submit(invocation, spin, 60.0).result(timeout=600)
                assert changes == runaway
                until_reported["on"] = False
            changes.clear()
            watchdog.suspect = True
            for _ in range(200):  # a suspect's quick invocations are still nothing at all
                pool.submit(invocation, nop, 5.0).result(timeout=10)
            assert changes == []
    finally:
        watchdog.close()


def test_a_runaway_is_a_quarter_of_its_deadline_and_never_less_than_50_ms() -> None:
    """The threshold itself: a quarter of the deadline's CPU time (5 s: 1.25 s, room for
    a big parse), at least 50 ms (a cold first command takes 2-3 ms here)."""
    assert runaway_cpu(5.0) == 1.25
    assert runaway_cpu(0.4) == 0.1
    assert runaway_cpu(0.1) == runaway_cpu(0.01) == 0.05


#: A core module whose ``busy`` export calls the host until the host returns 0.
_HOST_BUSY_WAT = """(module
  (import "host" "call" (func $call (result i32)))
  (func (export "busy") (loop $l (br_if $l (call $call)))))"""


def _host_busy_guest(
    engine: wasmtime.Engine, store: wasmtime.Store, host_call: Callable[[], int]
) -> wasmtime.Func:
    """``_HOST_BUSY_WAT``'s ``busy``, calling ``host_call`` (which pauses the watchdog
    as the real host functions do)."""
    host = wasmtime.Func(store, wasmtime.FuncType([], [wasmtime.ValType.i32()]), host_call)
    module = wasmtime.Module(engine, _HOST_BUSY_WAT)
    busy = wasmtime.Instance(store, module, [host]).exports(store)["busy"]
    assert isinstance(busy, wasmtime.Func)
    return busy


def _armed(watchdog: Watchdog, store: wasmtime.Store, func: wasmtime.Func) -> None:
    """One invocation of ``func`` under ``watchdog``, as GuestRuntime makes one."""
    store.set_epoch_deadline(1)
    watchdog.arm(5.0)
    try:
        func(store)
    finally:
        watchdog.disarm()
