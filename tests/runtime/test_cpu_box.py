"""A module caught doing long work, or restarting after a crash, is quarantined to the
box CPU, and the rest of Vessel keeps off that CPU meanwhile (vessel/_cpu_box.py).

With a single usable CPU there is no box: the same tests then check that nothing is
confined, quarantined or moved, and that the modules serve all the same (run them under
``taskset -c 0`` to see that side).

Seen from outside, as an operator would: the kernel's per-thread affinity of the daemon
and of the module processes. There is no event for "narrowed", so the tests look every
few milliseconds, each wait bounded.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from tests.fixture_types import MakeModuleDir
from vessel._ceilings import Ceilings
from vessel._cpu_box import CLAIM_WINDOW, LINGER, CpuBox
from vessel._cpu_box import QUARANTINE as DEFAULT_QUARANTINE
from vessel._daemon import Daemon
from vessel._wasm_module import WasmModule
from vessel.cli.serve import build_parser
from vessel.host._confine import box_cpu

from .harness import call, call_error, data, lifecycle, next_event, running_daemon

EVERYTHING = frozenset(os.sched_getaffinity(0))
BOX = box_cpu()
CLEAR = EVERYTHING - {BOX} if BOX is not None else EVERYTHING
BOXED = frozenset({BOX}) if BOX is not None else EVERYTHING


def _quarantine(*module_ids: str) -> frozenset[str]:
    """The modules expected in quarantine: none where there is no box."""
    return frozenset(module_ids) if BOX is not None else frozenset()


#: How many confinements a piece of long work adds: none where there is no box.
CONFINES = 1 if BOX is not None else 0
#: Spins of 30 ms (wall) tried until one has been long work (1 ms of CPU) on a busy machine.
SPINS = 20


def _affinities(pid: int) -> dict[int, frozenset[int]]:
    found: dict[int, frozenset[int]] = {}
    with contextlib.suppress(FileNotFoundError):  # the process ended
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(ProcessLookupError):  # the thread ended
                found[int(tid)] = frozenset(os.sched_getaffinity(int(tid)))
    return found


async def _until(what: str, check: Callable[[], bool], timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        while not check():
            await trio.sleep(0.005)
    assert check(), what


def _all(pid: int, cpus: frozenset[int]) -> bool:
    found = _affinities(pid)
    return bool(found) and all(c == cpus for c in found.values())


#: Short, so the tests see quarantines end.
QUARANTINE = 0.3


def _settled(box: CpuBox, *pids: int) -> bool:
    """No quarantine, and every thread of these processes (and ours) on every CPU."""
    return not box.narrowed and all(_all(pid, EVERYTHING) for pid in (os.getpid(), *pids))


async def test_a_spinning_module_is_quarantined_and_the_others_keep_off_its_cpu(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    limits = {"invocation_timeout_ms": 1500}
    make_module_dir(tmp_path, "testkit", module_id="spinner", limits=limits)
    make_module_dir(tmp_path, "testkit", module_id="healthy")
    async with running_daemon(tmp_path, quarantine=60) as daemon:
        replaced = daemon.bus.subscribe("vessel.module.instance_replaced", name="test")
        box = daemon.cpu_box
        assert box is not None
        assert box.enabled == (BOX is not None)
        healthy = daemon.manager.get("healthy").pid
        spinner = daemon.manager.get("spinner").pid
        assert healthy is not None
        assert spinner is not None
        # Starting up (a long instantiation, confined) is not misbehaviour, and neither
        # are fast calls, a cold first one included.
        assert _settled(box, healthy, spinner)
        for _ in range(5):
            await call(daemon, "spinner", "echo", {"fast": 1})
        assert _settled(box, healthy, spinner)

        async with trio.open_nursery() as nursery:
            failure: list[str] = []

            async def spin() -> None:
                failure.append((await call_error(daemon, "spinner", "loop")).message)

            nursery.start_soon(spin)
            pid = spinner
            # A runaway once it has used a quarter of its deadline's CPU (or, on a busy
            # machine, at its trap): either way quarantined, with the quarantine after.
            await _until(
                "the spinner in the box, the daemon and the healthy module off it",
                lambda: _all(pid, BOXED) and _all(os.getpid(), CLEAR) and _all(healthy, CLEAR),
            )
            assert box.quarantined == _quarantine("spinner")
            # The healthy module serves meanwhile.
            assert await call(daemon, "healthy", "echo", {"ok": 1}) == {"ok": 1}
        assert "deadline exceeded" in failure[0]
        # Its deadline trapped it: quarantined for the quarantine after, not just LINGER
        # (its replacement instance's start, confined and given back by its own process,
        # is put back in the box by the daemon after it).
        await next_event(replaced, lambda e: data(e)["module"] == "spinner")
        await trio.sleep(LINGER * 1.5)
        assert box.quarantined == _quarantine("spinner")
        await _until(
            "every thread of the spinner in the box, the healthy module off it",
            lambda: _all(pid, BOXED) and _all(healthy, CLEAR),
        )
        # An admin restart lets it out at once (a quarantine's end by itself:
        # test_only_threads_placed_by_the_box_are_moved).
        await daemon.manager.restart("spinner")
        spinner = daemon.manager.get("spinner").pid
        assert spinner is not None
        await _until("the quarantine lifted", lambda: _settled(box, healthy, spinner))


async def test_a_module_restarting_after_a_crash_starts_up_in_quarantine(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """Its start-up (load, instantiation, on-load) is on the box and quarantines it; an
    admin restart is a start like any other, and lifts a quarantine."""
    make_module_dir(tmp_path, "testkit", module_id="crasher")
    make_module_dir(tmp_path, "testkit", module_id="healthy")
    async with running_daemon(tmp_path, quarantine=60) as daemon:
        box = daemon.cpu_box
        assert box is not None
        healthy = daemon.manager.get("healthy").pid
        assert healthy is not None
        sub = daemon.bus.subscribe("vessel.module.*", name="test", replay=False)

        await daemon.manager.restart("crasher")
        module = daemon.manager.get("crasher")
        assert "in the box" not in _starts(module)[-1]
        assert module.pid is not None
        assert _settled(box, healthy, module.pid)

        os.kill(module.pid, signal.SIGKILL)
        restarted = await next_event(sub, lifecycle("restarted", "crasher"))
        new = data(restarted)["pid"]
        started = _starts(daemon.manager.get("crasher"))
        # (With one usable CPU there is no box, and the log does not claim one.)
        assert ("in the box, after a crash" in started[-1]) == (BOX is not None), started[-3:]
        await _until(
            "the restarted module quarantined, the others off its CPU",
            lambda: (
                box.quarantined == _quarantine("crasher")
                and _all(new, BOXED)
                and _all(healthy, CLEAR)
                and _all(os.getpid(), CLEAR)
            ),
        )
        # The fork server goes into the box with it: its restarts fork there.
        assert daemon.forkserver is not None
        forkserver = daemon.forkserver.pid
        assert forkserver is not None
        assert _all(forkserver, BOXED)
        assert await call(daemon, "crasher", "echo", {"back": 1}) == {"back": 1}

        # An admin restart lifts it at once (the quarantine here would last a minute).
        await daemon.manager.restart("crasher")
        again = daemon.manager.get("crasher").pid
        assert again is not None
        await _until("the quarantine lifted", lambda: _settled(box, healthy, again))
        assert _all(forkserver, EVERYTHING)


async def test_long_work_of_a_healthy_module_is_not_quarantined_a_trap_is(
    tmp_path: Path, make_module_dir: MakeModuleDir, caplog: pytest.LogCaptureFixture
) -> None:
    """Tens of milliseconds of computation now and then (parsing a big state dump, say)
    is confined in its own process and gives its CPU away, but it is no runaway: the
    others keep their CPUs and the operator reads nothing. A module that traps is
    quarantined for the whole quarantine, and the operator reads one line saying why."""
    make_module_dir(tmp_path, "testkit", module_id="worker")
    make_module_dir(tmp_path, "testkit", module_id="healthy")
    caplog.set_level(logging.INFO, logger="vessel.cpu")
    async with running_daemon(tmp_path, quarantine=60) as daemon:
        replaced = daemon.bus.subscribe("vessel.module.instance_replaced", name="test")
        box = daemon.cpu_box
        assert box is not None
        worker = daemon.manager.get("worker")
        healthy = daemon.manager.get("healthy").pid
        assert worker.pid is not None
        assert healthy is not None
        stats = await worker.stats()
        assert stats is not None
        confined, yields = stats.confined_invocations, stats.guest_yields
        # A 30 ms spin is 30 ms of wall time: on a busy machine one may get less than the
        # 1 ms of CPU that makes work long. So spin until one has been long (bounded).
        for _ in range(SPINS):
            assert await call(daemon, "worker", "spin", {"ms": 30}) == {}
            stats = await worker.stats()
            assert stats is not None
            if stats.confined_invocations >= confined + CONFINES and stats.guest_yields > yields:
                break
        else:
            raise AssertionError(f"{SPINS} spins of 30 ms, none confined and yielding: {stats}")
        assert box.narrowings == 0
        assert _settled(box, healthy, worker.pid)
        assert _operator_lines(caplog) == []

        error = await call_error(daemon, "worker", "trap")
        assert "trapped" in error.message
        await next_event(replaced, lambda e: data(e)["module"] == "worker")
        # Its replacement instance's start is long work of its own, confined and given
        # back by its process; the daemon puts that thread back in the box after it.
        pid = worker.pid
        await _until(
            "quarantined, every thread in the box, the healthy module off it",
            lambda: (
                box.placed == _quarantine("worker") and _all(pid, BOXED) and _all(healthy, CLEAR)
            ),
        )
        lines = _operator_lines(caplog)
        if BOX is None:
            assert lines == []
        else:
            assert len(lines) == 1, lines
            assert lines[0].startswith(f"module worker is quarantined to CPU {BOX}"), lines
            assert "on-command trapped" in lines[0], lines


def _operator_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What the box logged at INFO and above: what an operator reads."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "vessel.cpu" and r.levelno >= logging.INFO
    ]


async def _warm_emitter(daemon: Daemon, module_id: str) -> None:
    """Warm up the guest's emit command: its first run takes about 2 ms of CPU of its
    own before it emits at all, which counts as long work not busy with the host."""
    await call(daemon, module_id, "emit", {"name": "warm", "data": {"n": 0}, "count": 3})


async def test_long_work_busy_with_the_host_is_confined_but_not_quarantined(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """A burst of emits is long work, but the daemon's own: it must not keep off a CPU
    while it handles it (the fan-out figure lost ~10 points when it did). (That it does
    not yield every slice either is the watchdog's to show: test_confinement.py.)"""
    limits = {"max_event_rate": 100_000}
    make_module_dir(tmp_path, "testkit", module_id="emitter", limits=limits)
    # A rate far above what a home server lets a module ask by default (vessel/_ceilings.py).
    ceilings = Ceilings(limits)
    async with running_daemon(tmp_path, quarantine=60, limit_ceilings=ceilings) as daemon:
        box = daemon.cpu_box
        assert box is not None
        emitter = daemon.manager.get("emitter")
        await _warm_emitter(daemon, "emitter")
        stats = await emitter.stats()
        assert stats is not None
        confined, narrowings = stats.confined_invocations, box.narrowings
        burst = {"name": "burst", "data": {"n": 1}, "count": 5_000}
        assert await call(daemon, "emitter", "emit", burst) == {"refused": 0}
        stats = await emitter.stats()
        assert stats is not None
        assert stats.confined_invocations >= confined + CONFINES
        assert box.narrowings == narrowings
        assert box.quarantined == frozenset()


#: A flood from one command, far beyond the default rate limits (200 events and 200 log
#: lines a second): what the command is asked, and what its answer says was refused.
FLOODS = {
    "emit": ({"name": "flood", "data": {"n": 1}, "count": 20_000}, "refused"),
    "log": ({"message": "flood", "count": 20_000}, None),
}


@pytest.mark.parametrize("command", sorted(FLOODS))
async def test_a_flood_the_rate_limit_refuses_is_quarantined_and_yields(
    tmp_path: Path, make_module_dir: MakeModuleDir, command: str
) -> None:
    """A burst of emits (or log lines) beyond the module's rate limit is a flood, not
    work for the daemon: what it sends is refused in the module process and never
    reaches the daemon. So from its first refusal it is treated as any other runaway:
    its module is quarantined (the bench's hostile neighbour floods) and it yields every
    slice."""
    make_module_dir(tmp_path, "testkit", module_id="flooder")
    make_module_dir(tmp_path, "testkit", module_id="healthy")
    async with running_daemon(tmp_path, quarantine=60) as daemon:
        box = daemon.cpu_box
        assert box is not None
        flooder = daemon.manager.get("flooder")
        healthy = daemon.manager.get("healthy").pid
        assert healthy is not None
        await _warm_emitter(daemon, "flooder")
        stats = await flooder.stats()
        assert stats is not None
        narrowings, yields = box.narrowings, stats.guest_yields
        params, refused = FLOODS[command]
        async with trio.open_nursery() as nursery:
            result: list[Any] = []

            async def flood() -> None:
                result.append(await call(daemon, "flooder", command, params))

            nursery.start_soon(flood)
            if BOX is not None:
                await _until(
                    "the flooder quarantined, the healthy module off its CPU",
                    lambda: box.quarantined == {"flooder"} and _all(healthy, CLEAR),
                )
            # The healthy module serves meanwhile.
            assert await call(daemon, "healthy", "echo", {"ok": 1}) == {"ok": 1}
        if refused is not None:
            assert result[0][refused] > 0
        stats = await flooder.stats()
        assert stats is not None
        assert stats.guest_yields > yields
        assert box.narrowings == narrowings + CONFINES
        # It ended well: let out after LINGER, not kept for the quarantine after a trap.
        await _until("let out", lambda: _settled(box, healthy), timeout=LINGER * 20)


def _starts(module: WasmModule) -> list[str]:
    return [line.message for line in module.logs if line.message.startswith("loaded in")]


# -- CpuBox alone, on a real child process -----------------------------------------------


async def test_only_threads_placed_by_the_box_are_moved() -> None:
    """A quarantined module's process goes into the box and another's keeps off it; a
    thread somebody pinned on purpose is left as it is, both ways; when the box stops,
    everything is given back. With one usable CPU the box does nothing at all."""
    argv = [sys.executable, "-c", "import sys; sys.stdin.read()"]
    quarantined = await trio.lowlevel.open_process(argv, stdin=subprocess.PIPE)
    other = await trio.lowlevel.open_process(argv, stdin=subprocess.PIPE)
    pinned_ready, stop = threading.Event(), threading.Event()
    pinned_tid: list[int] = []

    def pinned() -> None:
        pinned_tid.append(threading.get_native_id())
        os.sched_setaffinity(0, BOXED)
        pinned_ready.set()
        stop.wait(30)

    thread = threading.Thread(target=pinned, daemon=True)
    thread.start()
    try:
        assert pinned_ready.wait(5)
        box = CpuBox(lambda: {"q": quarantined.pid, "o": other.pid}, quarantine=QUARANTINE)
        async with _running(box, quarantined.pid, other.pid) as enabled:
            if not enabled:
                return
            box.occupied("q", True)
            # Placed, not only being placed: that goes one process at a time.
            await _until("quarantined", lambda: box.placed == {"q"})
            assert box.narrowed
            assert _all(quarantined.pid, BOXED)
            assert _all(other.pid, CLEAR)
            mine = _affinities(os.getpid())
            assert mine.pop(pinned_tid[0]) == BOXED
            assert all(c == CLEAR for c in mine.values()), mine

            box.occupied("q", False)
            assert box.quarantined == {"q"}  # for LINGER yet
            await _until("released", lambda: not box.narrowed)
            assert _all(quarantined.pid, EVERYTHING)
            assert _all(other.pid, EVERYTHING)
            mine = _affinities(os.getpid())
            assert mine.pop(pinned_tid[0]) == BOXED
            assert all(c == EVERYTHING for c in mine.values()), mine

            # Stopping while a module is quarantined leaves nothing narrowed or boxed. (The
            # other one: "q" idles, and its claims would soon count as unbacked.)
            box.occupied("o", True)
            await _until("quarantined again", lambda: box.narrowed)
        assert not box.narrowed
        assert _all(quarantined.pid, EVERYTHING)
        assert _all(other.pid, EVERYTHING)
    finally:
        stop.set()
        thread.join(5)
        os.sched_setaffinity(0, EVERYTHING)
        for child in (quarantined, other):
            assert child.stdin is not None
            await child.stdin.aclose()
            with trio.fail_after(10):
                await child.wait()


async def test_the_box_places_one_process_at_a_time() -> None:
    """Moving every module process's threads holds the daemon's loop for as long as it
    takes (milliseconds with tens of modules); the box lets the daemon's other tasks run
    between two processes, so a call or an event waits for one process's placement at
    most, not for all of them. The quarantined module goes first."""
    argv = [sys.executable, "-c", "import sys; sys.stdin.read()"]
    children = [await trio.lowlevel.open_process(argv, stdin=subprocess.PIPE) for _ in range(4)]
    first, others = children[0], children[1:]
    try:
        box = CpuBox(lambda: {f"m{i}": c.pid for i, c in enumerate(children)}, quarantine=60)
        #: How many of the others were off the box, at each look between two steps.
        seen: set[int] = set()
        async with _running(box, *(c.pid for c in children)) as enabled:
            if not enabled:
                return
            box.occupied("m0", True)
            with trio.fail_after(5):
                while True:
                    placed = sum(_all(c.pid, CLEAR) for c in others)
                    seen.add(placed)
                    if placed == len(others):
                        break
                    if placed:
                        assert _all(first.pid, BOXED)  # the quarantined module first
                    await trio.lowlevel.checkpoint()
        # This task ran between the placements: it saw some of the others placed, not all.
        assert seen & set(range(1, len(others))), seen
        assert all(_all(c.pid, EVERYTHING) for c in children)  # given back on stopping
    finally:
        for child in children:
            assert child.stdin is not None
            await child.stdin.aclose()
            with trio.fail_after(10):
                await child.wait()


async def test_a_claim_the_process_does_not_use_the_cpu_for_is_ignored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A module process is not trusted: one that says it has work in the box but uses
    no CPU (a compromised process keeping Vessel off a CPU) is quarantined for its first
    window only; after that its claims are ignored, claiming again included, and logged
    once. A process that does spin in the box keeps its quarantine past the window."""
    idle_argv = [sys.executable, "-c", "import sys; sys.stdin.read()"]
    spin_argv = [sys.executable, "-c", "while True: pass"]
    liar = await trio.lowlevel.open_process(idle_argv, stdin=subprocess.PIPE)
    spinner = await trio.lowlevel.open_process(spin_argv)
    try:
        box = CpuBox(lambda: {"liar": liar.pid, "spinner": spinner.pid}, quarantine=60)
        async with _running(box, liar.pid, spinner.pid) as enabled:
            if not enabled:
                return
            box.occupied("liar", True)
            await _until("quarantined on its word", lambda: box.placed == {"liar"})
            await _until("the claim found unbacked", lambda: not box.narrowed,
                         timeout=CLAIM_WINDOW + 5)  # fmt: skip
            assert box.unbacked == {"liar"}
            assert _all(liar.pid, EVERYTHING)
            box.occupied("liar", False)  # no LINGER for it either
            box.occupied("liar", True)
            await trio.testing.wait_all_tasks_blocked()
            assert not box.narrowed

            box.occupied("spinner", True)
            await _until("the spinner quarantined", lambda: box.placed == {"spinner"})
            await trio.sleep(CLAIM_WINDOW * 1.5)  # a window has closed: it stays
            assert box.placed == {"spinner"}
            assert box.unbacked == {"liar"}
        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1, warnings
        assert warnings[0].startswith(f"module liar says it is busy on CPU {BOX}"), warnings
    finally:
        spinner.kill()
        assert liar.stdin is not None
        await liar.stdin.aclose()
        with trio.fail_after(10):
            await liar.wait()
            await spinner.wait()


@asynccontextmanager
async def _running(box: CpuBox, *pids: int) -> AsyncIterator[bool]:
    """``box`` running for the block, stopped at its end. Yields whether it has a CPU to
    quarantine to: on a machine with one usable CPU it yields False, once it has checked
    that the box does nothing at all there."""
    async with trio.open_nursery() as nursery:
        await nursery.start(box.run)
        if BOX is None:
            await _one_cpu_does_nothing(box, *pids)
        yield BOX is not None
        nursery.cancel_scope.cancel()


async def _one_cpu_does_nothing(box: CpuBox, *pids: int) -> None:
    assert not box.enabled
    box.occupied("q", True)
    box.misbehaved("q", "it trapped")
    # No event says "nothing happened": give the box's task time to act, if it would.
    await trio.sleep(0.05)
    assert not box.narrowed
    assert box.quarantined == frozenset()
    assert all(_all(pid, EVERYTHING) for pid in (os.getpid(), *pids))


async def test_with_one_cpu_nothing_is_quarantined() -> None:
    """The one-CPU case on any machine: a box told it has one CPU to use."""
    box = CpuBox(lambda: {}, allowed={0})
    async with trio.open_nursery() as nursery:
        await nursery.start(box.run)
        await _one_cpu_does_nothing(box)
        nursery.cancel_scope.cancel()


def test_serve_takes_the_quarantine_from_its_flag_or_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert build_parser().parse_args(["serve"]).quarantine_seconds == DEFAULT_QUARANTINE
    parse = build_parser().parse_args
    assert parse(["serve", "--quarantine-seconds", "0"]).quarantine_seconds == 0.0
    assert parse(["serve", "--quarantine-seconds", "2.5"]).quarantine_seconds == 2.5
    monkeypatch.setenv("VESSEL_QUARANTINE_SECONDS", "30")
    assert build_parser().parse_args(["serve"]).quarantine_seconds == 30.0
    for bad in ("soon", "-1", "nan", "inf"):
        monkeypatch.setenv("VESSEL_QUARANTINE_SECONDS", bad)
        with pytest.raises(SystemExit):
            build_parser().parse_args(["serve"])
        assert "--quarantine-seconds" in capsys.readouterr().err
