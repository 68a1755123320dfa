"""The event bus: glob subscriptions, retained state, bounded per-subscriber queues.

``publish`` is synchronous and never blocks: each subscription has its own bounded queue,
and an event that does not fit is dropped for that subscriber alone (and counted), so a
slow dashboard client or a busy module cannot stall the emitter or anyone else.

Retained events are the last value of each ``module.name`` key: a subscriber that arrives
late is sent the current state first, then live events, in order. Retained state is held
in memory for as long as the daemon runs, so it is bounded per module (``RetainedLimit``,
from the manifest's ``max_retained`` and ``retained_kb``) and in total: a module that
needs room makes it from its own least recently updated keys, never from another
module's (docs/architecture.md, "Event bus").

Everything here runs on the daemon's trio thread; nothing is thread-safe.
"""

from __future__ import annotations

import fnmatch
import itertools
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from types import TracebackType

import msgspec
import trio

from ._errors import InvalidEvent
from ._events import Event, now_ms, utf8_size
from ._json_check import json_problem
from ._manifest import Limits

_log = logging.getLogger("vessel.bus")

_Matcher = Callable[[str], object]

#: Routing-cache entries kept before it is cleared (bounds memory against a module that
#: emits endlessly many distinct names).
_MAX_ROUTES = 4096


@lru_cache(maxsize=4096)
def _matcher(pattern: str) -> _Matcher:
    """Compile a glob once: publish runs every subscription's patterns against each key."""
    return re.compile(fnmatch.translate(pattern)).match


@dataclass(frozen=True)
class RetainedLimit:
    """How much retained state one module may hold: ``keys``, and ``bytes``, the UTF-8
    size of each kept event's name and data."""

    keys: int
    bytes: int

    @classmethod
    def of(cls, limits: Limits) -> RetainedLimit:
        """A manifest's ``limits.max_retained`` and ``limits.retained_kb``."""
        return cls(keys=limits.max_retained, bytes=limits.retained_kb * 1024)


#: The bounds of a module not given its own (``EventBus.limit_retained``): the manifest's
#: defaults.
DEFAULT_RETAINED_LIMIT = RetainedLimit.of(Limits())
#: Every module's retained state together. A manifest may ask for at most half of each
#: (``Limits``): however modules declare theirs, the daemon's memory for retained state
#: stays bounded (~64 MiB of data and ~10 MiB of bookkeeping), and no one module fills it.
MAX_RETAINED_KEYS = 20_000
MAX_RETAINED_BYTES = 64 * 1024 * 1024
#: A module's retained state trimmed for one reason (its key limit, its byte limit, the
#: total, an event not retained) is reported at once, then at most once per this many
#: seconds: a module churning keys past its limit does so at its event rate, and one line
#: says as much as two hundred a second would.
TRIM_REPORT_EVERY = 60.0


@dataclass(frozen=True)
class RetainedUsage:
    """One module's retained state: what it holds, its bounds, and how often they bit."""

    keys: int
    bytes: int
    limit: RetainedLimit
    #: Keys forgotten to make room for newer ones.
    forgotten: int
    #: Events delivered but not retained: bigger than the whole limit, or no room left in
    #: the daemon's total that the module could make from its own keys.
    not_retained: int


@dataclass(frozen=True)
class BusStatistics:
    """A snapshot of the bus's counters."""

    subscriptions: int
    published: int
    delivered: int
    dropped: int
    retained: int
    retained_bytes: int = 0


class _Kept:
    """A retained event, its size, and its version (``seq``, new at every update), so a
    subscription remembers what it was sent without holding on to the event."""

    __slots__ = ("event", "seq", "size")

    def __init__(self, event: Event, seq: int, size: int) -> None:
        self.event = event
        self.seq = seq
        self.size = size


class _Holder:
    """One module's retained state, least recently updated key first, and its bounds."""

    __slots__ = (
        "bytes",
        "forgotten",
        "kept",
        "limit",
        "module",
        "not_retained",
        "report",
        "reported_at",
        "unreported",
    )

    def __init__(
        self, module: str, limit: RetainedLimit, report: Callable[[str], object] | None
    ) -> None:
        self.module = module
        self.limit = limit
        self.report = report
        self.kept: dict[str, _Kept] = {}
        self.bytes = 0
        self.forgotten = 0
        self.not_retained = 0
        # By reason: when it was last reported, and how often since.
        self.reported_at: dict[str, float] = {}
        self.unreported: dict[str, int] = {}


def _amount(size: int) -> str:
    """``size`` bytes as a limit is written: ``64 MiB``, ``1024 KiB``, ``100 bytes``."""
    if size and size % (1 << 20) == 0:
        return f"{size >> 20} MiB"
    if size and size % 1024 == 0:
        return f"{size >> 10} KiB"
    return f"{size} bytes"


def _kib(size: int) -> str:
    """A module's byte limit, in the unit of its manifest's ``retained_kb``."""
    return f"{size >> 10} KiB" if size % 1024 == 0 else f"{size} bytes"


def _some(keys: list[str]) -> str:
    """Which keys were forgotten, for a log line: the first few."""
    shown = ", ".join(repr(k) for k in keys[:3])
    more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
    if len(keys) == 1:
        return f"its least recently updated key, {shown},"
    return f"its {len(keys)} least recently updated keys ({shown}{more})"


class Subscription:
    """One subscriber's patterns and its bounded queue. Create with ``EventBus.subscribe``.

    Iterate (``async for event in sub``) or ``await sub.receive()``. ``close()`` ends it:
    an iteration in progress stops, ``receive`` raises ``trio.ClosedResourceError``.
    """

    def __init__(
        self,
        bus: EventBus,
        name: str,
        queue_size: int,
        on_overflow: Callable[[Subscription], object] | None,
    ) -> None:
        if queue_size < 1:
            raise ValueError(f"queue_size must be at least 1, got {queue_size}")
        self.name = name
        self.on_overflow = on_overflow
        self.dropped = 0
        self._bus = bus
        self._send, self._recv = trio.open_memory_channel[Event](queue_size)
        self._patterns: dict[str, _Matcher] = {}
        # The version of the retained event last queued here per key, so a replay never
        # repeats it (the version, not the event: a replaced event is not kept alive).
        self._sent_retained: dict[str, int] = {}
        self._closed = False

    def __repr__(self) -> str:
        return (
            f"<Subscription {self.name!r} patterns={sorted(self._patterns)} "
            f"queued={self.queued} dropped={self.dropped}{' closed' if self._closed else ''}>"
        )

    @property
    def patterns(self) -> frozenset[str]:
        return frozenset(self._patterns)

    @property
    def queued(self) -> int:
        """Events waiting to be received."""
        return self._send.statistics().current_buffer_used if not self._closed else 0

    @property
    def closed(self) -> bool:
        return self._closed

    def matches(self, key: str) -> bool:
        """True when an event with this ``module.name`` key would be queued here."""
        return any(m(key) is not None for m in self._patterns.values())

    def add(self, pattern: str, *, replay: bool = True) -> None:
        """Start receiving events whose key matches the glob ``pattern``.

        With ``replay``, every retained event matching it that was not already queued here
        is queued first, so a late subscriber starts from the current state.
        """
        if self._closed:
            raise trio.ClosedResourceError(f"subscription {self.name!r} is closed")
        if not pattern:
            raise ValueError("a subscription pattern must not be empty")
        if pattern not in self._patterns:
            self._patterns[pattern] = _matcher(pattern)
            self._bus._routes_changed()
        if replay:
            self._bus._replay(self, self._patterns[pattern])

    def remove(self, pattern: str) -> bool:
        """Stop matching ``pattern``; False if it was not subscribed. Events already queued
        stay queued."""
        if self._patterns.pop(pattern, None) is None:
            return False
        # Forget what was replayed for keys no pattern covers any more, so subscribing
        # again replays their current state (a dashboard leaving and coming back to a view).
        for key in [k for k in self._sent_retained if not self.matches(k)]:
            del self._sent_retained[key]
        self._bus._routes_changed()
        return True

    def _offer(self, event: Event, seq: int | None) -> bool:
        """Queue ``event``; ``seq`` is its version when it is retained state."""
        try:
            self._send.send_nowait(event)
        except (trio.WouldBlock, trio.ClosedResourceError):
            if self._closed:
                return False
            self.dropped += 1
            self._bus._dropped += 1
            if self.dropped == 1 and self.on_overflow is not None:
                try:
                    self.on_overflow(self)
                except Exception:
                    # The callback is the subscriber's business; publish must go on.
                    _log.exception("on_overflow callback of %r failed", self)
            return False
        if seq is not None:
            self._sent_retained[event.key] = seq
        return True

    async def receive(self) -> Event:
        """The next event, waiting for one if the queue is empty."""
        return await self._recv.receive()

    def receive_nowait(self) -> Event:
        """The next event; raises ``trio.WouldBlock`` if none is queued."""
        return self._recv.receive_nowait()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        try:
            return await self._recv.receive()
        except trio.ClosedResourceError:
            raise StopAsyncIteration from None

    def close(self) -> None:
        """Unsubscribe and discard queued events. Idempotent."""
        if self._closed:
            return
        self._closed = True
        # Receive side first: a task blocked in receive() wakes with ClosedResourceError
        # (its iteration ends), not EndOfChannel as closing the send side would give.
        self._recv.close()
        self._send.close()
        self._bus._detach(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class EventBus:
    """Routes events from publishers to subscriptions by glob on ``module.name``.

    ``max_retained`` and ``max_retained_bytes`` bound every module's retained state
    together; ``default_limit`` bounds a module's own until ``limit_retained`` sets it.
    """

    def __init__(
        self,
        *,
        default_queue_size: int = 1024,
        max_retained: int = MAX_RETAINED_KEYS,
        max_retained_bytes: int = MAX_RETAINED_BYTES,
        default_limit: RetainedLimit = DEFAULT_RETAINED_LIMIT,
    ) -> None:
        self.default_queue_size = default_queue_size
        self.max_retained = max_retained
        self.max_retained_bytes = max_retained_bytes
        self.default_limit = default_limit
        # A dict, not a set: routing follows subscription order, deterministically.
        self._subs: dict[Subscription, None] = {}
        # Insertion order is update order: the oldest state is replayed first.
        self._retained: dict[str, _Kept] = {}
        self._retained_bytes = 0
        # Each module's share of it, in the same order (its own oldest is evicted first).
        self._holders: dict[str, _Holder] = {}
        self._versions = itertools.count(1)
        self._routes: dict[str, tuple[Subscription, ...]] = {}
        self._published = 0
        self._delivered = 0
        self._dropped = 0

    def __repr__(self) -> str:
        return (
            f"<EventBus subscriptions={len(self._subs)} retained={len(self._retained)} "
            f"published={self._published}>"
        )

    def subscribe(
        self,
        *patterns: str,
        name: str,
        queue_size: int | None = None,
        replay: bool = True,
        on_overflow: Callable[[Subscription], object] | None = None,
    ) -> Subscription:
        """A new subscription to ``patterns`` (more can be added later). ``name`` says whose
        it is in logs; ``on_overflow(sub)`` is called once, at its first dropped event."""
        size = self.default_queue_size if queue_size is None else queue_size
        sub = Subscription(self, name, size, on_overflow)
        self._subs[sub] = None
        for pattern in patterns:
            sub.add(pattern, replay=replay)
        return sub

    def publish(self, event: Event, *, retain: bool = False) -> int:
        """Queue ``event`` to every matching subscription; never blocks.

        A zero timestamp is stamped with the current time. With ``retain`` the event also
        becomes the retained state of its key, within its module's bounds and the total
        (see ``limit_retained``); an event that does not fit is still delivered. Returns
        how many subscriptions it was queued to (drops excluded). Raises InvalidEvent if
        ``data`` is not JSON text.
        """
        if not event.name:
            raise InvalidEvent(f"event from module {event.module!r} has an empty name")
        # Checks the syntax (and the depth) without building Python objects.
        if problem := json_problem(event.data):
            raise InvalidEvent(f"event {event.key!r}: data is {problem}")
        if event.timestamp == 0:
            event = msgspec.structs.replace(event, timestamp=now_ms())
        self._published += 1
        key = event.key
        seq = self._retain(key, event) if retain else None
        routes = self._routes.get(key)
        if routes is None:
            routes = tuple(s for s in self._subs if s.matches(key))
            if len(self._routes) >= _MAX_ROUTES:
                self._routes.clear()
            self._routes[key] = routes
        queued = 0
        for sub in routes:
            queued += sub._offer(event, seq)
        self._delivered += queued
        return queued

    # ── retained state ─────────────────────────────────────────────────────

    def limit_retained(
        self,
        module_id: str,
        limit: RetainedLimit,
        *,
        report: Callable[[str], object] | None = None,
    ) -> None:
        """Bound ``module_id``'s retained state by ``limit`` from now on (state already
        over it is trimmed now). ``report(message)`` is told when its state is trimmed or
        one of its events cannot be retained: at once, then at most once per
        ``TRIM_REPORT_EVERY`` seconds; without it, the bus's own log is."""
        holder = self._holder(module_id)
        holder.limit = limit
        holder.report = report
        forgotten: list[str] = []
        while holder.kept and (len(holder.kept) > limit.keys or holder.bytes > limit.bytes):
            forgotten.append(self._forget_oldest(holder))
        if forgotten:
            holder.forgotten += len(forgotten)
            self._report(
                holder,
                "limits",
                f"module {module_id!r} held more retained state than its limits "
                f"(limits.max_retained {limit.keys} keys, limits.retained_kb "
                f"{_kib(limit.bytes)}): forgot {_some(forgotten)}",
            )

    def _holder(self, module_id: str) -> _Holder:
        holder = self._holders.get(module_id)
        if holder is None:
            holder = self._holders[module_id] = _Holder(module_id, self.default_limit, None)
        return holder

    def _retain(self, key: str, event: Event) -> int | None:
        """Keep ``event`` as the state of ``key``; its version, or None if it did not fit.

        Room is only ever made from the emitting module's own least recently updated keys:
        a module at its own limit, or at the daemon's total, pushes out its own oldest
        state, never another module's.
        """
        holder = self._holder(event.module)
        size = utf8_size(event.name) + utf8_size(event.data)
        earlier = holder.kept.pop(key, None)
        if earlier is not None:
            holder.bytes -= earlier.size
            self._retained_bytes -= earlier.size
            del self._retained[key]
        problem = self._no_room(holder, size)
        if problem is not None:
            holder.not_retained += 1
            if earlier is not None:
                # Replaying the earlier state would be replaying what is no longer true.
                self._unsend(key)
                problem += "; its earlier retained state is forgotten"
            self._report(
                holder, "not retained", f"event {key!r} was delivered but not retained: {problem}"
            )
            return None
        over = self._over(holder, size)
        if over is not None:
            forgotten: list[str] = []
            while self._over(holder, size) is not None:
                forgotten.append(self._forget_oldest(holder))
            holder.forgotten += len(forgotten)
            bound, why = over
            self._report(holder, bound, f"{why}: forgot {_some(forgotten)} to keep {key!r}")
        kept = _Kept(event, next(self._versions), size)
        holder.kept[key] = kept
        holder.bytes += size
        self._retained[key] = kept
        self._retained_bytes += size
        return kept.seq

    def _over(self, holder: _Holder, size: int) -> tuple[str, str] | None:
        """Which bound one more event of ``size`` bytes of ``holder`` would exceed, and
        how to say so."""
        limit, module = holder.limit, holder.module
        if len(holder.kept) >= limit.keys:
            return "max_retained", (
                f"module {module!r} holds its limit of {limit.keys} retained keys "
                "(limits.max_retained)"
            )
        if holder.bytes + size > limit.bytes:
            return "retained_kb", (
                f"module {module!r} holds {holder.bytes} bytes of retained state, its "
                f"limit being {_kib(limit.bytes)} (limits.retained_kb)"
            )
        if len(self._retained) >= self.max_retained:
            return "total", (
                "the retained state of all modules is at the daemon's limit of "
                f"{self.max_retained} keys, so module {module!r} makes room from its own"
            )
        if self._retained_bytes + size > self.max_retained_bytes:
            return "total", (
                "the retained state of all modules is at the daemon's limit of "
                f"{_amount(self.max_retained_bytes)}, so module {module!r} makes room "
                "from its own"
            )
        return None

    def _no_room(self, holder: _Holder, size: int) -> str | None:
        """Why an event of ``size`` bytes of ``holder`` cannot be kept even if every other
        key of its module were forgotten (so none is forgotten for it), or None."""
        limit, module = holder.limit, holder.module
        if limit.keys < 1:
            return f"module {module!r} may hold no retained keys (limits.max_retained)"
        if size > limit.bytes:
            return (
                f"its {size} bytes are more than module {module!r} may keep in all "
                f"({_kib(limit.bytes)}, limits.retained_kb)"
            )
        if len(self._retained) - len(holder.kept) >= self.max_retained:
            return (
                "the retained state of all modules is at the daemon's limit of "
                f"{self.max_retained} keys, none of them module {module!r}'s to forget"
            )
        if self._retained_bytes - holder.bytes + size > self.max_retained_bytes:
            return (
                "the retained state of all modules is at the daemon's limit of "
                f"{_amount(self.max_retained_bytes)}, too little of it module "
                f"{module!r}'s to make room"
            )
        return None

    def _forget_oldest(self, holder: _Holder) -> str:
        key = next(iter(holder.kept))
        kept = holder.kept.pop(key)
        holder.bytes -= kept.size
        self._retained_bytes -= kept.size
        del self._retained[key]
        self._unsend(key)
        return key

    def _unsend(self, key: str) -> None:
        """Forget that ``key`` was sent anywhere: its state is gone, and the subscriptions'
        records of forgotten keys would otherwise grow with every key a module churns."""
        for sub in self._subs:
            sub._sent_retained.pop(key, None)

    def _report(self, holder: _Holder, reason: str, message: str) -> None:
        """Tell ``holder``'s module ``message``, unless it was told of ``reason`` less
        than TRIM_REPORT_EVERY seconds ago (then count it for the next line)."""
        now = time.monotonic()
        last = holder.reported_at.get(reason)
        if last is not None and now - last < TRIM_REPORT_EVERY:
            holder.unreported[reason] = holder.unreported.get(reason, 0) + 1
            return
        if unreported := holder.unreported.pop(reason, 0):
            message += f" ({unreported} more like it since the last such line)"
        holder.reported_at[reason] = now
        if holder.report is None:
            _log.warning("%s", message)
            return
        try:
            holder.report(message)
        except Exception:
            # The callback is the module's business; publish must go on.
            _log.exception("retained-state report of module %r failed", holder.module)

    def retained(self, pattern: str = "*") -> list[Event]:
        """Retained events whose key matches ``pattern``, oldest update first."""
        match = _matcher(pattern)
        return [kept.event for k, kept in self._retained.items() if match(k) is not None]

    def retained_keys(self, pattern: str = "*") -> list[str]:
        """The keys of ``retained(pattern)``, in the same order: a replay sent at a
        client's pace looks each up when its turn comes (``retained_event``), so it holds
        no event the bus has since replaced or forgotten."""
        match = _matcher(pattern)
        return [k for k in self._retained if match(k) is not None]

    def retained_event(self, key: str) -> Event | None:
        """The retained state of ``key`` now, or None."""
        kept = self._retained.get(key)
        return None if kept is None else kept.event

    def retained_usage(self, module_id: str) -> RetainedUsage:
        """What ``module_id`` holds as retained state, and its bounds."""
        holder = self._holders.get(module_id)
        if holder is None:
            return RetainedUsage(0, 0, self.default_limit, 0, 0)
        return RetainedUsage(
            keys=len(holder.kept),
            bytes=holder.bytes,
            limit=holder.limit,
            forgotten=holder.forgotten,
            not_retained=holder.not_retained,
        )

    def forget_retained(self, module_id: str) -> int:
        """Drop every retained event of ``module_id`` and its bounds (it was removed);
        returns how many."""
        holder = self._holders.pop(module_id, None)
        if holder is None:
            return 0
        for key, kept in holder.kept.items():
            self._retained_bytes -= kept.size
            del self._retained[key]
            self._unsend(key)
        return len(holder.kept)

    def statistics(self) -> BusStatistics:
        return BusStatistics(
            subscriptions=len(self._subs),
            published=self._published,
            delivered=self._delivered,
            dropped=self._dropped,
            retained=len(self._retained),
            retained_bytes=self._retained_bytes,
        )

    # ── called by Subscription ─────────────────────────────────────────────
    def _routes_changed(self) -> None:
        self._routes.clear()

    def _detach(self, sub: Subscription) -> None:
        self._subs.pop(sub, None)
        self._routes.clear()

    def _replay(self, sub: Subscription, match: _Matcher) -> None:
        for key, kept in list(self._retained.items()):
            if match(key) is not None and sub._sent_retained.get(key) != kept.seq:
                self._delivered += sub._offer(kept.event, kept.seq)
