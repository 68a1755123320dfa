"""Supervisor: restart policies, backoff, intensity, stop/restart, ordered shutdown.

Time-based behaviour runs on ``MockClock(autojump_threshold=0)`` (the ``autojump_clock``
fixture), so delays are asserted at exact virtual times. The last test supervises a real
process actor on the real clock.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import pytest
import trio
import trio.testing

from actors import (
    ChildSpec,
    ChildState,
    ProcessSpec,
    Restart,
    Supervisor,
    SupervisorEvent,
    UnknownChild,
    open_process_actor,
)

from ._support import child_argv, child_env

Run = Callable[..., Awaitable[None]]


class Recorder:
    """Collects supervisor events with the (virtual) time they happened at."""

    def __init__(self) -> None:
        self.events: list[tuple[float, SupervisorEvent]] = []
        self._changed = trio.Event()

    def __call__(self, event: SupervisorEvent) -> None:
        self.events.append((trio.current_time(), event))
        self._changed.set()
        self._changed = trio.Event()

    def kinds(self, child_id: str | None = None) -> list[str]:
        return [e.kind for _, e in self.events if child_id in (None, e.child_id)]

    def times(self, kind: str) -> list[float]:
        return [t for t, e in self.events if e.kind == kind]

    async def wait_for(self, kind: str, count: int = 1) -> None:
        while self.kinds().count(kind) < count:
            await self._changed.wait()


@asynccontextmanager
async def running_supervisor(recorder: Recorder) -> AsyncIterator[Supervisor]:
    supervisor = Supervisor("test", on_event=recorder)
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        yield supervisor
        nursery.cancel_scope.cancel()


def crashing_after(seconds: float, message: str = "boom") -> Run:
    async def run(*, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        await trio.sleep(seconds)
        raise RuntimeError(message)

    return run


def returning_after(seconds: float) -> Run:
    async def run(*, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        await trio.sleep(seconds)

    return run


async def forever(*, task_status: trio.TaskStatus[None]) -> None:
    task_status.started()
    await trio.sleep_forever()


async def test_backoff_delays_are_exact(autojump_clock: trio.testing.MockClock) -> None:
    """Quick crashes are restarted after initial * 2**k seconds, capped at backoff_max."""
    recorder = Recorder()
    child = ChildSpec(
        "c",
        crashing_after(0),
        max_restarts=10,
        period=1000,
        backoff_initial=1,
        backoff_max=8,
    )
    with trio.fail_after(1000):
        async with running_supervisor(recorder) as supervisor:
            t0 = trio.current_time()
            await supervisor.start_child(child)
            await recorder.wait_for("restarting", 6)
            await recorder.wait_for("started", 7)
    delays = [e.delay for _, e in recorder.events if e.kind == "restarting"]
    assert delays[:6] == [1, 2, 4, 8, 8, 8]
    assert [t - t0 for t in recorder.times("started")][:7] == [0, 1, 3, 7, 15, 23, 31]
    assert [e.restarts for _, e in recorder.events if e.kind == "restarting"][:3] == [1, 2, 3]
    assert recorder.kinds()[:4] == ["started", "crashed", "restarting", "started"]


async def test_intensity_exceeded_marks_the_child_failed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """More than max_restarts restarts within period: FAILED, a 'failed' event carrying
    the last crash reason, and no further attempts."""
    recorder = Recorder()
    child = ChildSpec("c", crashing_after(1, "kaput"), max_restarts=3, period=60, backoff_initial=1)
    with trio.fail_after(1000):
        async with running_supervisor(recorder) as supervisor:
            await supervisor.start_child(child)
            await recorder.wait_for("failed")
            await trio.sleep(500)
            info = supervisor.child_info("c")
    assert recorder.kinds().count("started") == 4
    assert recorder.kinds()[-2:] == ["crashed", "failed"]
    assert recorder.events[-1][1].reason == "kaput"
    assert info.state is ChildState.FAILED
    assert info.restarts == 3
    assert info.last_reason == "kaput"
    assert info.started_at is None


async def test_crashes_spread_beyond_period_never_fail(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Intensity is a sliding window, and a run that stayed up for period resets the
    backoff: a child crashing every 100 s with period 60 restarts forever after 1 s."""
    recorder = Recorder()
    child = ChildSpec("c", crashing_after(100), max_restarts=1, period=60, backoff_initial=1)
    with trio.fail_after(10_000):
        async with running_supervisor(recorder) as supervisor:
            await supervisor.start_child(child)
            await recorder.wait_for("restarting", 5)
    assert "failed" not in recorder.kinds()
    assert {e.delay for _, e in recorder.events if e.kind == "restarting"} == {1}


async def test_per_child_intensity_spares_healthy_siblings(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """One crash-looping child reaching FAILED leaves its siblings and the supervisor
    running (intensity is counted per child, not per supervisor)."""
    recorder = Recorder()
    with trio.fail_after(1000):
        async with running_supervisor(recorder) as supervisor:
            await supervisor.start_child(ChildSpec("healthy", forever))
            await supervisor.start_child(
                ChildSpec("looping", crashing_after(0), max_restarts=2, backoff_initial=0.1)
            )
            await recorder.wait_for("failed")
            states = {info.id: info.state for info in supervisor.which_children()}
    assert states == {"healthy": ChildState.RUNNING, "looping": ChildState.FAILED}


@pytest.mark.parametrize(
    ("restart", "crash", "restarted", "final_state"),
    [
        (Restart.PERMANENT, False, True, None),
        (Restart.PERMANENT, True, True, None),
        (Restart.TRANSIENT, False, False, ChildState.EXITED),
        (Restart.TRANSIENT, True, True, None),
        (Restart.TEMPORARY, False, False, ChildState.EXITED),
        (Restart.TEMPORARY, True, False, ChildState.EXITED),
    ],
)
async def test_restart_policies(
    autojump_clock: trio.testing.MockClock,
    restart: Restart,
    crash: bool,
    restarted: bool,
    final_state: ChildState | None,
) -> None:
    """PERMANENT always restarts, TRANSIENT only after a crash, TEMPORARY never; the
    'crashed'/'exited' event comes first either way."""
    recorder = Recorder()
    run = crashing_after(5) if crash else returning_after(5)
    with trio.fail_after(1000):
        async with running_supervisor(recorder) as supervisor:
            await supervisor.start_child(ChildSpec("c", run, restart=restart, backoff_initial=1))
            await recorder.wait_for("crashed" if crash else "exited")
            await trio.sleep(100)
            info = supervisor.child_info("c")
    kinds = recorder.kinds()
    assert kinds[1] == ("crashed" if crash else "exited")
    assert ("restarting" in kinds) is restarted
    if final_state is not None:
        assert info.state is final_state
        assert kinds == ["started", kinds[1]]
    if not crash:
        assert recorder.events[1][1].reason == "normal"


async def test_start_failure_is_handled_like_a_crash(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A run that raises before started(): start_child still returns, the failure is a
    crash with its reason, and the next attempt (after backoff) succeeds."""
    recorder = Recorder()
    attempts = 0

    async def flaky(*, task_status: trio.TaskStatus[None]) -> None:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise OSError("port in use")
        task_status.started()
        await trio.sleep_forever()

    with trio.fail_after(1000):
        async with running_supervisor(recorder) as supervisor:
            await supervisor.start_child(ChildSpec("c", flaky, backoff_initial=2))
            assert supervisor.child_info("c").state is ChildState.RESTARTING
            await recorder.wait_for("started")
            assert supervisor.child_info("c").state is ChildState.RUNNING
    assert recorder.kinds()[:3] == ["crashed", "restarting", "started"]
    assert recorder.events[0][1].reason == "port in use"
    assert recorder.times("started")[0] - recorder.times("crashed")[0] == 2


async def test_start_timeout_is_a_crash(autojump_clock: trio.testing.MockClock) -> None:
    """A run that never calls started() within start_timeout is cancelled and counted as
    a crash."""

    async def never_ready(*, task_status: trio.TaskStatus[None]) -> None:
        await trio.sleep_forever()

    recorder = Recorder()
    with trio.fail_after(1000):
        async with running_supervisor(recorder) as supervisor:
            start = trio.current_time()
            await supervisor.start_child(
                ChildSpec("c", never_ready, start_timeout=7, restart=Restart.TEMPORARY)
            )
            assert trio.current_time() - start == 7
    assert recorder.kinds() == ["crashed"]
    assert recorder.events[0][1].reason == "did not start within 7s"


async def test_stop_child_is_final(autojump_clock: trio.testing.MockClock) -> None:
    """stop_child cancels the child, waits for its cleanup, leaves it STOPPED and never
    restarts it, even with a PERMANENT policy."""
    recorder = Recorder()
    cleaned_up = False

    async def run(*, task_status: trio.TaskStatus[None]) -> None:
        nonlocal cleaned_up
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await trio.sleep(3)
            cleaned_up = True

    with trio.fail_after(1000):
        async with running_supervisor(recorder) as supervisor:
            await supervisor.start_child(ChildSpec("c", run))
            await supervisor.stop_child("c")
            assert cleaned_up
            await trio.sleep(100)
            assert supervisor.child_info("c").state is ChildState.STOPPED
    assert recorder.kinds() == ["started", "stopped"]


async def test_stop_child_during_backoff(autojump_clock: trio.testing.MockClock) -> None:
    """A child waiting out its backoff delay can be stopped: it is never started again."""
    recorder = Recorder()
    with trio.fail_after(1000):
        async with running_supervisor(recorder) as supervisor:
            await supervisor.start_child(ChildSpec("c", crashing_after(0), backoff_initial=10))
            await recorder.wait_for("restarting")
            assert supervisor.child_info("c").state is ChildState.RESTARTING
            await supervisor.stop_child("c")
            await trio.sleep(100)
            assert supervisor.child_info("c").state is ChildState.STOPPED
            assert recorder.kinds() == ["started", "crashed", "restarting", "stopped"]


async def test_restart_child_revives_a_failed_child_with_a_fresh_count(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """restart_child brings a FAILED child back with its restart count reset; on a
    running child it stops it first."""
    recorder = Recorder()
    crash = True

    async def run(*, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        if crash:
            raise RuntimeError("bad config")
        await trio.sleep_forever()

    with trio.fail_after(1000):
        async with running_supervisor(recorder) as supervisor:
            await supervisor.start_child(ChildSpec("c", run, max_restarts=1, backoff_initial=1))
            await recorder.wait_for("failed")
            assert supervisor.child_info("c").restarts == 1
            crash = False
            await supervisor.restart_child("c")
            info = supervisor.child_info("c")
            assert (info.state, info.restarts) == (ChildState.RUNNING, 0)
            assert info.started_at == trio.current_time()
            await supervisor.restart_child("c")
            assert supervisor.child_info("c").state is ChildState.RUNNING
            assert recorder.kinds()[-3:] == ["started", "stopped", "started"]


async def test_shutdown_stops_children_in_reverse_start_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Cancelling the supervisor stops children last-started-first, one at a time: each
    finishes its cleanup before the one started before it is cancelled."""
    stopped: list[tuple[str, float]] = []

    def child(name: str) -> ChildSpec:
        async def run(*, task_status: trio.TaskStatus[None]) -> None:
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                with trio.CancelScope(shield=True):
                    await trio.sleep(1)
                stopped.append((name, trio.current_time()))

        return ChildSpec(name, run)

    recorder = Recorder()
    supervisor = Supervisor("test", on_event=recorder)
    with trio.fail_after(1000):
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.run)
            for name in "abc":
                await supervisor.start_child(child(name))
            t0 = trio.current_time()
            nursery.cancel_scope.cancel()
    assert [(name, t - t0) for name, t in stopped] == [("c", 1), ("b", 2), ("a", 3)]
    assert recorder.kinds()[-3:] == ["stopped"] * 3
    with pytest.raises(RuntimeError):
        await supervisor.start_child(child("d"))


async def test_bookkeeping_errors(autojump_clock: trio.testing.MockClock) -> None:
    """Duplicate ids raise ValueError; unknown ids raise UnknownChild (a KeyError);
    remove_child frees the id; which_children keeps start order."""
    recorder = Recorder()
    with trio.fail_after(1000):
        async with running_supervisor(recorder) as supervisor:
            await supervisor.start_child(ChildSpec("a", forever))
            await supervisor.start_child(ChildSpec("b", forever))
            with pytest.raises(ValueError, match="already has a child 'a'"):
                await supervisor.start_child(ChildSpec("a", forever))
            with pytest.raises(UnknownChild):
                supervisor.child_info("zzz")
            with pytest.raises(KeyError):
                await supervisor.stop_child("zzz")
            assert [info.id for info in supervisor.which_children()] == ["a", "b"]
            await supervisor.remove_child("a")
            assert [info.id for info in supervisor.which_children()] == ["b"]
            await supervisor.start_child(ChildSpec("a", forever))
            assert [info.id for info in supervisor.which_children()] == ["b", "a"]


async def test_a_broken_event_listener_does_not_stop_supervision(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An on_event callback that raises is logged; restarts carry on."""

    def listener(event: SupervisorEvent) -> None:
        raise RuntimeError("listener bug")

    supervisor = Supervisor("test", on_event=listener)
    with trio.fail_after(1000):
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.run)
            await supervisor.start_child(ChildSpec("c", crashing_after(1), backoff_initial=1))
            await trio.sleep(10)
            assert supervisor.child_info("c").restarts >= 3
            nursery.cancel_scope.cancel()


async def test_supervised_process_is_restarted_after_it_is_killed() -> None:
    """End to end on the real clock: a PERMANENT child whose process is SIGKILLed is
    restarted as a new process; supervisor shutdown stops the process and reaps it."""
    recorder = Recorder()
    actors: list[Any] = []

    async def on_request(method: str, body: msgspec.Raw) -> None:
        return None

    async def run(*, task_status: trio.TaskStatus[None]) -> None:
        spec = ProcessSpec(name="kid", argv=child_argv(), env=child_env(), stop_timeout=2)
        async with open_process_actor(spec, on_request=on_request) as actor:
            actors.append(actor)
            await actor.request("echo", None)
            task_status.started()
            info = await actor.wait()
            raise RuntimeError(info.reason)

    with trio.fail_after(10):
        async with running_supervisor(recorder) as supervisor:
            await supervisor.start_child(ChildSpec("kid", run, backoff_initial=0.05))
            actors[0].kill("test kill")
            await recorder.wait_for("started", 2)
            assert actors[1].pid != actors[0].pid
            assert actors[1].exit_info is None
    crash = next(e for _, e in recorder.events if e.kind == "crashed")
    assert crash.reason == "test kill"
    assert actors[1].exit_info is not None
    assert actors[1].exit_info.reason == "stopped"
