"""The event bus: glob subscriptions, retained state, bounded per-subscriber queues.

``publish`` is synchronous and never blocks: each subscription has its own bounded queue,
and an event that does not fit is dropped for that subscriber alone (and counted), so a
slow dashboard client or a busy module cannot stall the emitter or anyone else.

Retained events are the last value of each ``module.name`` key: a subscriber that arrives
late is sent the current state first, then live events, in order.

Everything here runs on the daemon's trio thread; nothing is thread-safe.
"""

from __future__ import annotations

import fnmatch
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from types import TracebackType

import msgspec
import trio

from ._errors import InvalidEvent
from ._events import Event, now_ms

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
class BusStatistics:
    """A snapshot of the bus's counters."""

    subscriptions: int
    published: int
    delivered: int
    dropped: int
    retained: int


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
        # The retained event last queued here per key, so a replay never repeats it.
        self._sent_retained: dict[str, Event] = {}
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

    def _offer(self, event: Event, *, retained: bool) -> bool:
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
        if retained:
            self._sent_retained[event.key] = event
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
    """Routes events from publishers to subscriptions by glob on ``module.name``."""

    def __init__(self, *, default_queue_size: int = 1024, max_retained: int = 10_000) -> None:
        self.default_queue_size = default_queue_size
        self.max_retained = max_retained
        # A dict, not a set: routing follows subscription order, deterministically.
        self._subs: dict[Subscription, None] = {}
        # Insertion order is update order: the oldest state is replayed (and evicted) first.
        self._retained: dict[str, Event] = {}
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
        becomes the retained state of its key. Returns how many subscriptions it was
        queued to (drops excluded). Raises InvalidEvent if ``data`` is not JSON text.
        """
        if not event.name:
            raise InvalidEvent(f"event from module {event.module!r} has an empty name")
        try:
            # Decoding to Raw checks the syntax without building Python objects.
            msgspec.json.decode(event.data, type=msgspec.Raw)
        except msgspec.DecodeError as exc:
            raise InvalidEvent(f"event {event.key!r}: data is not valid JSON: {exc}") from None
        if event.timestamp == 0:
            event = msgspec.structs.replace(event, timestamp=now_ms())
        self._published += 1
        key = event.key
        if retain:
            self._retain(key, event)
        routes = self._routes.get(key)
        if routes is None:
            routes = tuple(s for s in self._subs if s.matches(key))
            if len(self._routes) >= _MAX_ROUTES:
                self._routes.clear()
            self._routes[key] = routes
        queued = 0
        for sub in routes:
            queued += sub._offer(event, retained=retain)
        self._delivered += queued
        return queued

    def _retain(self, key: str, event: Event) -> None:
        self._retained.pop(key, None)
        self._retained[key] = event
        if len(self._retained) > self.max_retained:
            oldest = next(iter(self._retained))
            _log.warning("retained state over %d keys: forgetting %r", self.max_retained, oldest)
            self._forget_keys([oldest])

    def retained(self, pattern: str = "*") -> list[Event]:
        """Retained events whose key matches ``pattern``, oldest update first."""
        match = _matcher(pattern)
        return [e for k, e in self._retained.items() if match(k) is not None]

    def forget_retained(self, module_id: str) -> int:
        """Drop every retained event of ``module_id`` (it was removed or reset); returns
        how many."""
        keys = [k for k, e in self._retained.items() if e.module == module_id]
        self._forget_keys(keys)
        return len(keys)

    def _forget_keys(self, keys: list[str]) -> None:
        for key in keys:
            del self._retained[key]
            for sub in self._subs:
                sub._sent_retained.pop(key, None)

    def statistics(self) -> BusStatistics:
        return BusStatistics(
            subscriptions=len(self._subs),
            published=self._published,
            delivered=self._delivered,
            dropped=self._dropped,
            retained=len(self._retained),
        )

    # ── called by Subscription ─────────────────────────────────────────────
    def _routes_changed(self) -> None:
        self._routes.clear()

    def _detach(self, sub: Subscription) -> None:
        self._subs.pop(sub, None)
        self._routes.clear()

    def _replay(self, sub: Subscription, match: _Matcher) -> None:
        for key, event in list(self._retained.items()):
            if match(key) is not None and sub._sent_retained.get(key) is not event:
                self._delivered += sub._offer(event, retained=True)
