"""TimerService on a virtual clock: exact fire times, clearing, limits, slow guests.

Every test runs under pytest-trio's ``autojump_clock`` (``MockClock(autojump_threshold=0)``),
so times are virtual and exact; ``at`` only absorbs float rounding of the clock's jumps.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from vessel.host._hosterrors import HostCallError
from vessel.host._timers import MIN_INTERVAL_MS, TimerService


def at(t0: float, ms: int) -> object:
    """Compares equal to the virtual time ``ms`` milliseconds after ``t0``."""
    return pytest.approx(t0 + ms / 1000, abs=1e-9)


class Guest:
    """Stands in for the module process's dispatcher and guest.

    ``fire`` enqueues like the real mailbox does; a dispatcher task claims each fire and
    "runs" on-timer for ``work`` seconds, one at a time, recording what it saw.
    """

    def __init__(self, work: float = 0.0) -> None:
        self.work = work
        self.fired: list[tuple[int, float]] = []
        self.delivered: list[tuple[int, float]] = []
        self.dropped: list[int] = []
        self.max_queued = 0
        self._send, self._receive = trio.open_memory_channel[int](1000)
        self.timers: TimerService | None = None

    def fire(self, handle: int) -> None:
        self.fired.append((handle, trio.current_time()))
        self._send.send_nowait(handle)
        self.max_queued = max(self.max_queued, self._send.statistics().current_buffer_used)

    async def dispatch(self) -> None:
        assert self.timers is not None
        async for handle in self._receive:
            if not self.timers.claim(handle):
                self.dropped.append(handle)
                continue
            self.delivered.append((handle, trio.current_time()))
            await trio.sleep(self.work)


@asynccontextmanager
async def running(guest: Guest, *, max_timers: int = 64) -> AsyncIterator[TimerService]:
    timers = TimerService(guest.fire, max_timers=max_timers)
    guest.timers = timers
    with trio.fail_after(3600):  # virtual seconds: only a hang can reach it
        async with trio.open_nursery() as nursery:
            await nursery.start(timers.run)
            nursery.start_soon(guest.dispatch)
            yield timers
            nursery.cancel_scope.cancel()


async def test_timeout_fires_once_at_its_deadline(autojump_clock: trio.testing.MockClock) -> None:
    """A timeout fires exactly once, ms after it was set, then is forgotten."""
    guest = Guest()
    async with running(guest) as timers:
        t0 = trio.current_time()
        handle = timers.set_timeout(250)
        assert handle > 0
        assert timers.live == 1
        await trio.sleep(10)
    assert guest.fired == [(handle, at(t0, 250))]
    assert guest.delivered == [(handle, at(t0, 250))]
    assert timers.live == 0


async def test_timeout_zero_fires_as_soon_as_possible(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """set-timeout(0) fires without any virtual time passing."""
    guest = Guest()
    async with running(guest) as timers:
        t0 = trio.current_time()
        handle = timers.set_timeout(0)
        await trio.sleep(1)
    assert guest.fired == [(handle, at(t0, 0))]


async def test_interval_fires_on_a_drift_free_grid(autojump_clock: trio.testing.MockClock) -> None:
    """An interval fires at t0 + n * period, however long each on-timer takes (below a
    period): the next tick is scheduled from the previous deadline, not from the fire."""
    guest = Guest(work=0.03)
    async with running(guest) as timers:
        t0 = trio.current_time()
        handle = timers.set_interval(100)
        await trio.sleep(0.55)
    assert guest.fired == [(handle, at(t0, ms)) for ms in (100, 200, 300, 400, 500)]


async def test_slow_guest_gets_no_burst(autojump_clock: trio.testing.MockClock) -> None:
    """While the guest is busy, at most one fire per interval waits in its mailbox: ticks
    that find the previous fire unclaimed are skipped, and later ticks stay on the grid."""
    guest = Guest(work=0.23)
    async with running(guest) as timers:
        t0 = trio.current_time()
        handle = timers.set_interval(100)
        await trio.sleep(1.05)
    # Tick 300 finds the 200 fire still queued (the guest is busy until 330): skipped;
    # so are 500, 700 and 900 for the same reason.
    assert guest.fired == [(handle, at(t0, ms)) for ms in (100, 200, 400, 600, 800)]
    assert guest.delivered == [(handle, at(t0, ms)) for ms in (100, 330, 560, 790, 1020)]
    assert guest.max_queued == 1


async def test_interval_is_clamped_to_the_minimum(autojump_clock: trio.testing.MockClock) -> None:
    """set-interval(0) cannot spin the host: it fires every MIN_INTERVAL_MS."""
    guest = Guest()
    async with running(guest) as timers:
        t0 = trio.current_time()
        handle = timers.set_interval(0)
        await trio.sleep(0.035)
    assert MIN_INTERVAL_MS == 10
    assert guest.fired == [(handle, at(t0, ms)) for ms in (10, 20, 30)]


async def test_cleared_interval_never_fires_again(autojump_clock: trio.testing.MockClock) -> None:
    """After clear, an interval fires no more and no longer counts as live."""
    guest = Guest()
    async with running(guest) as timers:
        t0 = trio.current_time()
        handle = timers.set_interval(100)
        await trio.sleep(0.25)
        timers.clear(handle)
        assert timers.live == 0
        await trio.sleep(1)
    assert guest.fired == [(handle, at(t0, 100)), (handle, at(t0, 200))]


async def test_timer_cleared_in_the_same_tick_does_not_fire(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Two timers due at the same instant fire in handle order, and one cleared by the
    fire of the other in that very tick does not fire."""
    fired: list[int] = []
    timers: TimerService

    def fire(handle: int) -> None:
        fired.append(handle)
        timers.clear(second)
        timers.clear(third)

    timers = TimerService(fire)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(timers.run)
            first = timers.set_timeout(100)
            second = timers.set_timeout(100)
            third = timers.set_interval(100)
            await trio.sleep(1)
            nursery.cancel_scope.cancel()
    assert fired == [first]


async def test_fire_waiting_in_the_mailbox_is_dropped_after_clear(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A fire already queued for the guest is not delivered if the guest clears the timer
    before the dispatcher reaches it: claim() says drop it."""
    guest = Guest(work=0.5)
    async with running(guest) as timers:
        busy = timers.set_timeout(0)  # keeps the dispatcher busy until t0 + 500
        t0 = trio.current_time()
        late = timers.set_timeout(100)
        await trio.sleep(0.2)
        assert guest.fired == [(busy, at(t0, 0)), (late, at(t0, 100))]
        timers.clear(late)
        await trio.sleep(1)
    assert guest.delivered == [(busy, at(t0, 0))]
    assert guest.dropped == [late]
    assert timers.live == 0


async def test_limit_counts_live_timers(autojump_clock: trio.testing.MockClock) -> None:
    """Beyond max_timers live timers, setting one fails with a message naming the limit;
    a fired but undelivered timeout still counts, and clearing frees a slot."""
    guest = Guest(work=10)
    async with running(guest, max_timers=3) as timers:
        timers.set_timeout(0)  # delivered; its on-timer keeps the guest busy
        await trio.sleep(0.001)
        assert timers.live == 0
        fired_not_claimed = timers.set_timeout(0)
        interval = timers.set_interval(1000)
        timers.set_timeout(5000)
        await trio.sleep(0.001)
        assert [h for h, _ in guest.fired][-1] == fired_not_claimed
        assert timers.live == 3
        with pytest.raises(HostCallError) as excinfo:
            timers.set_interval(100)
        assert str(excinfo.value) == "too many timers: limit is 3 (limits.max_timers)"
        timers.clear(interval)
        assert timers.set_timeout(100) > 0


async def test_clear_all_forgets_everything(autojump_clock: trio.testing.MockClock) -> None:
    """clear_all stops every timer; handles handed out later are new numbers."""
    guest = Guest()
    async with running(guest) as timers:
        handles = [timers.set_timeout(100), timers.set_interval(50), timers.set_timeout(0)]
        timers.clear_all()
        assert timers.live == 0
        await trio.sleep(1)
        assert guest.fired == []
        later = timers.set_timeout(10)
        assert later > max(handles)
        await trio.sleep(1)
    assert [h for h, _ in guest.fired] == [later]


async def test_handles_are_never_reused(autojump_clock: trio.testing.MockClock) -> None:
    """Handles are positive and strictly increasing, even after timers end or are cleared,
    so a stale handle in the guest can never clear somebody else's timer."""
    guest = Guest()
    async with running(guest) as timers:
        seen = []
        for _ in range(5):
            handle = timers.set_timeout(0)
            seen.append(handle)
            await trio.sleep(0.01)
            timers.clear(handle)
    assert seen == sorted(set(seen))
    assert seen[0] > 0


async def test_bad_requests_and_stopped_service(autojump_clock: trio.testing.MockClock) -> None:
    """A negative delay is refused, an unknown handle is ignored by clear, and once the
    service has stopped no timer can be set (rather than one that would never fire)."""
    guest = Guest()
    async with running(guest) as timers:
        with pytest.raises(HostCallError, match=r"set-timeout: ms must be >= 0, got -1"):
            timers.set_timeout(-1)
        timers.clear(12345)
        assert timers.claim(12345) is False
    with pytest.raises(HostCallError, match=r"set-interval: timers are stopped"):
        timers.set_interval(100)


async def test_usable_from_the_guest_thread() -> None:
    """Host functions run on the guest's worker thread and reach the service with
    trio.from_thread.run_sync; the timer then fires on the trio loop as usual (real clock:
    a mock clock would jump while the worker thread runs)."""
    guest = Guest()
    async with running(guest) as timers:

        def guest_code() -> int:
            return trio.from_thread.run_sync(timers.set_timeout, 10)

        handle = await trio.to_thread.run_sync(guest_code)
        with trio.fail_after(5):
            while not guest.delivered:
                await trio.sleep(0.005)
    assert [h for h, _ in guest.delivered] == [handle]
