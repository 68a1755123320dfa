"""Guest timers (``set-timeout``, ``set-interval``, ``clear-timer``) on the module's trio loop.

One scheduler task (``TimerService.run``) serves every timer of the module. A module has
at most ``max_timers`` of them (64 by default), so the scheduler scans a dict for the next
deadline instead of keeping a heap: no stale heap entries to sweep after ``clear``, and
timers due at the same instant fire in a fixed order (deadline, then handle).

Delivery contract with the guest's mailbox
------------------------------------------

``fire(handle)`` is called on the trio thread when a timer is due; the caller enqueues an
``on-timer(handle)`` for the guest. Right before invoking the guest, the dispatcher calls
``claim(handle)``:

* ``claim`` returns False when the guest cleared the timer after it fired: drop the
  delivery. This is how "a cleared timer never fires again" holds even for a fire that
  was already waiting in the mailbox (JavaScript's ``clearTimeout`` gives the same promise).
* An interval is not fired again until its previous fire is claimed. While the guest is
  behind, the ticks it missed are skipped rather than queued, so a slow guest never
  receives a burst of stale ``on-timer`` calls. Ticks stay on the original grid
  (``start + n * period``), so intervals do not drift either.
* A timeout stays live (and counts towards ``max_timers``) until its fire is claimed.

Every ``fire`` must be matched by one ``claim``, or by ``clear``/``clear_all`` (for example
when the instance is replaced and its mailbox dropped).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import trio

from ._hosterrors import HostCallError

__all__ = ["MIN_INTERVAL_MS", "TimerService"]

#: Shortest interval period. A guest asking for ``set-interval(0)`` would otherwise keep
#: the host loop busy firing into its mailbox; 10 ms is below anything an integration
#: needs and cheap for the host. Timeouts are not clamped: ``set-timeout(0)`` means "as
#: soon as possible" and each one costs the guest a call to ask again.
MIN_INTERVAL_MS = 10

#: Handles are WIT ``u32`` and 0 means "refused", so they run from 1 to 2**32 - 1.
_MAX_HANDLE = 2**32 - 1


@dataclass(slots=True)
class _Timer:
    origin: float
    """trio time at which the timer was set; ticks are counted from here."""
    period_ms: int | None
    """Interval period, or None for a timeout."""
    ticks: int
    """Index of the next tick (timeouts: 1 until fired)."""
    deadline: float
    """trio time of the next tick; ``inf`` once a timeout has fired."""
    in_flight: bool = False
    """Fired and not yet claimed by the dispatcher."""


class TimerService:
    """Timeouts and intervals for one module, firing into a sync callback.

    Every method is sync and must be called on the trio thread (from the guest's worker
    thread: ``trio.from_thread.run_sync``). ``fire`` must not raise: an exception from it
    is a host bug and ends ``run``.
    """

    def __init__(self, fire: Callable[[int], None], *, max_timers: int = 64) -> None:
        self._fire = fire
        self._max_timers = max_timers
        self._timers: dict[int, _Timer] = {}
        self._last_handle = 0
        self._changed = trio.Event()
        self._stopped = False

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else "running"
        return f"<TimerService live={self.live}/{self._max_timers} {state}>"

    @property
    def live(self) -> int:
        """Timers that count towards ``max_timers``: pending, or fired and not yet claimed."""
        return len(self._timers)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Fire due timers until cancelled. Timers set before ``run`` starts are kept.

        A single task is all the scheduling needs, so unlike the other services this one
        owns no nursery. Once ``run`` returns, setting a timer raises ``HostCallError``.
        """
        task_status.started()
        try:
            while True:
                self._fire_due(trio.current_time())
                # Reset before computing the next deadline: a timer set from here on
                # (even synchronously inside ``fire``) wakes the wait below.
                self._changed = trio.Event()
                with trio.move_on_at(self._next_deadline()):
                    await self._changed.wait()
        finally:
            self._stopped = True
            self._timers.clear()

    def set_timeout(self, ms: int) -> int:
        """A timer that fires once, ``ms`` milliseconds from now (0: as soon as possible)."""
        return self._add("set-timeout", ms, repeat=False)

    def set_interval(self, ms: int) -> int:
        """A timer that fires every ``ms`` milliseconds (at least ``MIN_INTERVAL_MS``)."""
        return self._add("set-interval", ms, repeat=True)

    def clear(self, handle: int) -> None:
        """Forget ``handle``: it never fires again and an unclaimed fire of it is dropped.

        Unknown handles (never set, already fired and claimed, cleared) are ignored, as
        ``clearTimeout`` does: the guest cannot always know whether a timeout has fired.
        """
        self._timers.pop(handle, None)

    def clear_all(self) -> None:
        """Forget every timer (the instance is being replaced or unloaded)."""
        self._timers.clear()

    def claim(self, handle: int) -> bool:
        """Take a fire of ``handle`` for delivery to the guest; False means drop it.

        Called by the dispatcher just before ``on-timer(handle)``. A timeout is forgotten
        here; an interval becomes eligible to fire again at its next tick.
        """
        timer = self._timers.get(handle)
        if timer is None or not timer.in_flight:
            return False
        if timer.period_ms is None:
            del self._timers[handle]
        else:
            timer.in_flight = False
        return True

    # -- internals -----------------------------------------------------------------------

    def _add(self, function: str, ms: int, *, repeat: bool) -> int:
        if self._stopped:
            raise HostCallError(f"{function}: timers are stopped (the module is shutting down)")
        if ms < 0:
            raise HostCallError(f"{function}: ms must be >= 0, got {ms}")
        if len(self._timers) >= self._max_timers:
            raise HostCallError(f"too many timers: limit is {self._max_timers} (limits.max_timers)")
        if self._last_handle >= _MAX_HANDLE:
            # Handles are never reused, so a service that has handed out every u32 is
            # done; the host replaces the instance and its services to recover.
            raise HostCallError(f"{function}: timer handles exhausted")
        self._last_handle += 1
        handle = self._last_handle
        now = trio.current_time()
        if repeat:
            period = max(ms, MIN_INTERVAL_MS)
            self._timers[handle] = _Timer(now, period, 1, now + period / 1000)
        else:
            self._timers[handle] = _Timer(now, None, 1, now + ms / 1000)
        self._changed.set()
        return handle

    def _fire_due(self, now: float) -> None:
        due = sorted((t.deadline, h) for h, t in self._timers.items() if t.deadline <= now)
        for _, handle in due:
            # Looked up again: a ``fire`` earlier in this batch may have cleared it.
            timer = self._timers.get(handle)
            if timer is None:
                continue
            if not timer.in_flight:
                timer.in_flight = True
                self._fire(handle)
            # A tick that finds the previous fire unclaimed is skipped (see module doc).
            if timer.period_ms is None:
                timer.deadline = math.inf
            else:
                self._advance(timer, now)

    @staticmethod
    def _advance(timer: _Timer, now: float) -> None:
        """Move an interval to its first tick after ``now``, on the original grid."""
        assert timer.period_ms is not None
        period = timer.period_ms
        # Jump straight over a long stall, then settle float rounding with the loop.
        elapsed_ms = (now - timer.origin) * 1000
        timer.ticks = max(timer.ticks + 1, math.floor(elapsed_ms / period))
        timer.deadline = timer.origin + timer.ticks * period / 1000
        while timer.deadline <= now:
            timer.ticks += 1
            timer.deadline = timer.origin + timer.ticks * period / 1000

    def _next_deadline(self) -> float:
        return min((t.deadline for t in self._timers.values()), default=math.inf)
