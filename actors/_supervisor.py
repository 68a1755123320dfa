"""OTP-style supervision: child specs, restart policies, restart intensity, backoff.

The strategy is ``one_for_one``: a child that ends is restarted on its own, its siblings
are untouched. Unlike OTP, restart intensity is counted *per child* and exhausting it
marks only that child ``FAILED`` instead of taking the supervisor down. In OTP the
supervisor dies so that its own supervisor can restart the whole subtree; here the
children are independent integrations, and one crash-looping module must not stop the
event bus, the gateway or its healthy siblings. Exponential backoff between restarts keeps
a crash loop from burning CPU while it lasts.

Children start in the order they were added and stop in reverse order.
"""

from __future__ import annotations

import enum
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio

from ._errors import UnknownChild

__all__ = [
    "ChildInfo",
    "ChildSpec",
    "ChildState",
    "Restart",
    "Supervisor",
    "SupervisorEvent",
]

logger = logging.getLogger("actors")


class Restart(enum.Enum):
    """When a child that ended is started again (OTP's ``restart`` key)."""

    PERMANENT = "permanent"
    """Always: it is meant to run for as long as the supervisor does."""
    TRANSIENT = "transient"
    """Only if it crashed (raised); a normal return is final."""
    TEMPORARY = "temporary"
    """Never."""


class ChildState(enum.Enum):
    STARTING = "starting"
    """Its ``run`` was called and has not signalled ``started`` yet."""
    RUNNING = "running"
    RESTARTING = "restarting"
    """It ended and is waiting out its backoff delay before the next start."""
    STOPPED = "stopped"
    """Stopped on request (:meth:`Supervisor.stop_child` or supervisor shutdown)."""
    EXITED = "exited"
    """It ended and its restart policy says not to restart it."""
    FAILED = "failed"
    """It exceeded its restart intensity; no more restarts until ``restart_child``."""


@dataclass(frozen=True)
class ChildSpec:
    """What to supervise and how.

    ``run`` is called as ``await run(task_status=...)``: it calls
    ``task_status.started()`` once the child is up, then runs until the child ends.
    Returning is a normal exit; raising is a crash whose ``str`` is the reason; not
    calling ``started`` within ``start_timeout`` seconds is a crash too. Cancellation means
    "stop": ``run`` must clean up (a process actor's context does) and return promptly.

    More than ``max_restarts`` restarts within ``period`` seconds marks the child FAILED.
    The delay before restart ``k`` in a row of quick failures is
    ``min(backoff_initial * 2**k, backoff_max)``; a run that stayed up for ``period``
    seconds resets ``k``.
    """

    id: str
    run: Callable[..., Awaitable[None]]
    restart: Restart = Restart.PERMANENT
    max_restarts: int = 5
    period: float = 60.0
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    start_timeout: float = 30.0

    def __post_init__(self) -> None:
        if self.max_restarts < 0:
            raise ValueError(f"child {self.id!r}: max_restarts must be >= 0")
        if not self.period > 0 or not self.start_timeout > 0:
            raise ValueError(f"child {self.id!r}: period and start_timeout must be > 0")
        if not 0 <= self.backoff_initial <= self.backoff_max:
            raise ValueError(f"child {self.id!r}: need 0 <= backoff_initial <= backoff_max")


@dataclass(frozen=True)
class SupervisorEvent:
    """Something happened to a child.

    ``kind`` is one of ``"started"``, ``"exited"`` (normal return, reason ``"normal"``),
    ``"crashed"`` (with the reason), ``"restarting"`` (with the backoff ``delay``),
    ``"failed"`` (restart intensity exceeded; reason of the last crash) and
    ``"stopped"``. ``restarts`` is the child's restart count so far.
    """

    child_id: str
    kind: str
    reason: str | None = None
    restarts: int = 0
    delay: float | None = None


@dataclass(frozen=True)
class ChildInfo:
    """A snapshot of one child (see :meth:`Supervisor.child_info`).

    ``started_at`` is the ``trio.current_time()`` of the start of the current run, or
    None when it is not running; ``restarts`` counts restarts since the child was added
    or last restarted by hand.
    """

    id: str
    state: ChildState
    restarts: int
    started_at: float | None
    last_reason: str | None


class _StartSignal:
    """The ``task_status`` handed to a child's ``run`` (the TaskStatus protocol)."""

    def __init__(self, progress: trio.Event) -> None:
        self.called = False
        self._progress = progress

    def started(self, value: Any = None) -> None:
        if self.called:
            raise RuntimeError("task_status.started() called twice")
        self.called = True
        self._progress.set()


class _Child:
    def __init__(self, spec: ChildSpec) -> None:
        self.spec = spec
        self.state = ChildState.STARTING
        self.restarts = 0
        self.started_at: float | None = None
        self.last_reason: str | None = None
        # Shielded so that cancelling the supervisor does not cancel every child at once:
        # shutdown cancels these one by one, in reverse start order.
        self.scope = trio.CancelScope(shield=True)
        self.first_attempt_done = trio.Event()
        self.done = trio.Event()
        self.recent_restarts: deque[float] = deque()
        self.quick_failures = 0

    def info(self) -> ChildInfo:
        return ChildInfo(self.spec.id, self.state, self.restarts, self.started_at, self.last_reason)


def _reason_of(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return str(exc) or type(exc).__name__


class Supervisor:
    """Run children, restart them by their policy, stop them in reverse order."""

    def __init__(
        self,
        name: str,
        *,
        on_event: Callable[[SupervisorEvent], None] | None = None,
    ) -> None:
        self.name = name
        self._on_event = on_event
        self._children: dict[str, _Child] = {}
        self._nursery: trio.Nursery | None = None
        self._shutting_down = False

    def __repr__(self) -> str:
        states = ", ".join(f"{c.spec.id}: {c.state.value}" for c in self._children.values())
        return f"<Supervisor {self.name!r} [{states}]>"

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Supervise until cancelled; then stop every child in reverse start order.

        Children can be added once ``task_status.started()`` has been called. Shutdown
        waits for each child's ``run`` to finish its own cleanup before cancelling the
        previous one.
        """
        if self._nursery is not None or self._shutting_down:
            raise RuntimeError(f"supervisor {self.name!r}: run() can only be called once")
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                try:
                    await trio.sleep_forever()
                finally:
                    self._shutting_down = True
                    with trio.CancelScope(shield=True):
                        for child in reversed(list(self._children.values())):
                            child.scope.cancel()
                            await child.done.wait()
        finally:
            self._nursery = None

    async def start_child(self, spec: ChildSpec) -> None:
        """Add a child and start it; return once its first start succeeded or failed.

        A failed first start is handled like a crash (events, backoff, retry), not
        raised. Raises ValueError if a child with this id exists.
        """
        nursery = self._running_nursery()
        if spec.id in self._children:
            raise ValueError(f"supervisor {self.name!r} already has a child {spec.id!r}")
        child = _Child(spec)
        self._children[spec.id] = child
        nursery.start_soon(self._supervise, child)
        await child.first_attempt_done.wait()

    async def stop_child(self, child_id: str) -> None:
        """Stop a child and keep it STOPPED (never restarted); wait until it is down."""
        child = self._get(child_id)
        child.scope.cancel()
        await child.done.wait()
        child.state = ChildState.STOPPED
        child.started_at = None

    async def restart_child(self, child_id: str) -> None:
        """Stop the child if it runs, then start it afresh with a zeroed restart count.

        Also the way to bring back a FAILED, EXITED or STOPPED child.
        """
        nursery = self._running_nursery()
        old = self._get(child_id)
        await self.stop_child(child_id)
        if self._children.get(child_id) is not old:
            raise UnknownChild(child_id)  # Removed (or replaced) while it was stopping.
        child = _Child(old.spec)
        child.last_reason = old.last_reason
        self._children[child_id] = child  # Same key: keeps its place in start order.
        nursery.start_soon(self._supervise, child)
        await child.first_attempt_done.wait()

    async def remove_child(self, child_id: str) -> None:
        """Stop the child and forget it; its id can then be used again."""
        child = self._get(child_id)
        await self.stop_child(child_id)
        if self._children.get(child_id) is child:
            del self._children[child_id]

    def which_children(self) -> list[ChildInfo]:
        """Snapshots of every child, in start order."""
        return [child.info() for child in self._children.values()]

    def child_info(self, child_id: str) -> ChildInfo:
        """A snapshot of one child; raises :class:`UnknownChild` for an unknown id."""
        return self._get(child_id).info()

    # ------------------------------------------------------------------ internals

    def _get(self, child_id: str) -> _Child:
        try:
            return self._children[child_id]
        except KeyError:
            raise UnknownChild(child_id) from None

    def _running_nursery(self) -> trio.Nursery:
        if self._nursery is None or self._shutting_down:
            raise RuntimeError(f"supervisor {self.name!r} is not running")
        return self._nursery

    def _emit(
        self,
        child: _Child,
        kind: str,
        reason: str | None = None,
        delay: float | None = None,
    ) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(SupervisorEvent(child.spec.id, kind, reason, child.restarts, delay))
        except Exception:
            # Supervision must go on even if whoever listens is broken.
            logger.exception("supervisor %r: on_event callback raised", self.name)

    async def _supervise(self, child: _Child) -> None:
        try:
            with child.scope:
                await self._restart_loop(child)
            if child.scope.cancelled_caught:
                child.state = ChildState.STOPPED
                child.started_at = None
                logger.info("supervisor %r: stopped %r", self.name, child.spec.id)
                self._emit(child, "stopped")
        finally:
            child.first_attempt_done.set()
            child.done.set()

    async def _restart_loop(self, child: _Child) -> None:
        spec = child.spec
        while True:
            crashed, reason, uptime = await self._attempt(child)
            now = trio.current_time()
            child.started_at = None
            child.last_reason = reason
            if crashed:
                logger.warning("supervisor %r: %r crashed: %s", self.name, spec.id, reason)
                self._emit(child, "crashed", reason)
            else:
                self._emit(child, "exited", reason)
            if spec.restart is Restart.TEMPORARY or (
                spec.restart is Restart.TRANSIENT and not crashed
            ):
                child.state = ChildState.EXITED
                return
            while child.recent_restarts and now - child.recent_restarts[0] >= spec.period:
                child.recent_restarts.popleft()
            if len(child.recent_restarts) >= spec.max_restarts:
                child.state = ChildState.FAILED
                logger.error(
                    "supervisor %r: %r restarted %d times within %gs; giving up: %s",
                    self.name,
                    spec.id,
                    len(child.recent_restarts),
                    spec.period,
                    reason,
                )
                self._emit(child, "failed", reason)
                return
            child.recent_restarts.append(now)
            if uptime >= spec.period:
                child.quick_failures = 0
            delay = min(spec.backoff_initial * 2**child.quick_failures, spec.backoff_max)
            child.quick_failures += 1
            child.restarts += 1
            child.state = ChildState.RESTARTING
            self._emit(child, "restarting", reason, delay)
            child.first_attempt_done.set()
            await trio.sleep(delay)

    async def _attempt(self, child: _Child) -> tuple[bool, str, float]:
        """Run the child once; return (crashed, reason, seconds it was up)."""
        spec = child.spec
        child.state = ChildState.STARTING
        progress = trio.Event()
        status = _StartSignal(progress)
        error: list[BaseException] = []

        async def run_once() -> None:
            try:
                await spec.run(task_status=status)
            except Exception as exc:  # Cancelled is not an Exception: stop still works.
                error.append(exc)
            progress.set()

        started_at: float | None = None
        timed_out = False
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_once)
            with trio.move_on_after(spec.start_timeout):
                await progress.wait()
            if not progress.is_set():
                timed_out = True
                nursery.cancel_scope.cancel()
            elif status.called:
                # Even if run() already ended (started, then raised at once): it did
                # start, and the crash that follows is reported after this.
                started_at = child.started_at = trio.current_time()
                child.state = ChildState.RUNNING
                logger.info("supervisor %r: started %r", self.name, spec.id)
                self._emit(child, "started")
                child.first_attempt_done.set()
        uptime = 0.0 if started_at is None else trio.current_time() - started_at
        if timed_out:
            return True, f"did not start within {spec.start_timeout:g}s", uptime
        if error:
            return True, _reason_of(error[0]), uptime
        if not status.called:
            return True, "returned before calling task_status.started()", uptime
        return False, "normal", uptime
