"""The event bus: glob routing, bounded queues, retained state and replay."""

from __future__ import annotations

import fnmatch
import logging

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from vessel._bus import EventBus, RetainedLimit, RetainedUsage, Subscription
from vessel._errors import InvalidEvent
from vessel._events import Event


def ev(key: str, data: str = "null", ts: int = 1) -> Event:
    module, _, name = key.partition(".")
    return Event(module=module, name=name, data=data, timestamp=ts)


def drain(sub: Subscription) -> list[str]:
    """Every queued event as 'key=data'."""
    out: list[str] = []
    while True:
        try:
            e = sub.receive_nowait()
        except trio.WouldBlock:
            return out
        out.append(f"{e.key}={e.data}")


async def test_publish_reaches_matching_subscriptions_only() -> None:
    """Each event goes to the subscriptions whose glob matches `module.name`, once each,
    and publish reports how many it was queued to."""
    bus = EventBus()
    windows = bus.subscribe("system.window.*", name="windows")
    everything = bus.subscribe("*", name="all")
    both = bus.subscribe("system.*", "*.focus", name="both")
    assert bus.publish(ev("system.window.focus", "1")) == 3
    assert bus.publish(ev("ha.state", "2")) == 1
    assert drain(windows) == ["system.window.focus=1"]
    assert drain(everything) == ["system.window.focus=1", "ha.state=2"]
    assert drain(both) == ["system.window.focus=1"]


async def test_receive_waits_for_the_next_event() -> None:
    """A subscriber blocked in receive() wakes when a matching event is published."""
    bus = EventBus()
    sub = bus.subscribe("a.*", name="s")
    got: list[Event] = []

    async def consumer() -> None:
        got.append(await sub.receive())

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(consumer)
            await trio.testing.wait_all_tasks_blocked()
            bus.publish(ev("b.x"))
            bus.publish(ev("a.x", "7"))
    assert [e.data for e in got] == ["7"]


async def test_slow_subscriber_drops_its_own_events_only() -> None:
    """A full queue drops for that subscriber alone: publish never blocks, the others
    get everything, the drops are counted and on_overflow fires once."""
    bus = EventBus()
    overflowed: list[Subscription] = []
    slow = bus.subscribe("*", name="slow", queue_size=2, on_overflow=overflowed.append)
    fast = bus.subscribe("*", name="fast")
    for i in range(5):
        bus.publish(ev("a.x", str(i)))
    assert drain(fast) == [f"a.x={i}" for i in range(5)]
    assert drain(slow) == ["a.x=0", "a.x=1"]
    assert slow.dropped == 3
    assert overflowed == [slow]
    stats = bus.statistics()
    assert (stats.published, stats.delivered, stats.dropped) == (5, 7, 3)
    bus.publish(ev("a.x", "5"))
    assert drain(slow) == ["a.x=5"]


async def test_failing_overflow_callback_does_not_break_publish(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A subscriber's broken callback is logged; other subscribers still get the event."""

    def boom(sub: Subscription) -> None:
        raise RuntimeError("boom")

    bus = EventBus()
    bus.subscribe("*", name="bad", queue_size=1, on_overflow=boom)
    other = bus.subscribe("*", name="other")
    with caplog.at_level(logging.ERROR, logger="vessel.bus"):
        bus.publish(ev("a.x", "1"))
        bus.publish(ev("a.x", "2"))
    assert drain(other) == ["a.x=1", "a.x=2"]
    assert "on_overflow callback" in caplog.text


async def test_late_subscriber_gets_retained_state_first() -> None:
    """Retained events are the last value per key: a new subscriber is sent the current
    value of each matching key, then live events, in order."""
    bus = EventBus()
    bus.publish(ev("ha.light", "1"), retain=True)
    bus.publish(ev("ha.light", "2"), retain=True)
    bus.publish(ev("ha.door", '"open"'), retain=True)
    bus.publish(ev("ha.noise", "0"))
    bus.publish(ev("other.k", "9"), retain=True)
    sub = bus.subscribe("ha.*", name="late")
    bus.publish(ev("ha.light", "3"))
    assert drain(sub) == ["ha.light=2", 'ha.door="open"', "ha.light=3"]
    assert [e.data for e in bus.retained()] == ["2", '"open"', "9"]
    assert [e.key for e in bus.retained("ha.*")] == ["ha.light", "ha.door"]


async def test_retained_order_follows_last_update() -> None:
    """Replay sends the oldest state first, so updating a key moves it to the end."""
    bus = EventBus()
    bus.publish(ev("a.x", "1"), retain=True)
    bus.publish(ev("a.y", "1"), retain=True)
    bus.publish(ev("a.x", "2"), retain=True)
    assert drain(bus.subscribe("a.*", name="s")) == ["a.y=1", "a.x=2"]


async def test_adding_a_pattern_replays_only_what_was_not_sent() -> None:
    """A retained event already queued to a subscription is not queued again when it
    adds an overlapping pattern; one it has not seen is."""
    bus = EventBus()
    sub = bus.subscribe("a.x", name="s")
    bus.publish(ev("a.x", "1"), retain=True)
    bus.publish(ev("a.y", "1"), retain=True)
    assert drain(sub) == ["a.x=1"]
    sub.add("a.*")
    assert drain(sub) == ["a.y=1"]
    sub.add("*")
    assert drain(sub) == []
    bus.publish(ev("a.x", "2"), retain=True)
    sub.add("a.?")
    assert drain(sub) == ["a.x=2"]


async def test_replay_false_sends_only_live_events() -> None:
    """replay=False skips the retained state."""
    bus = EventBus()
    bus.publish(ev("a.x", "1"), retain=True)
    sub = bus.subscribe("a.*", name="s", replay=False)
    assert drain(sub) == []
    sub.add("*", replay=False)
    assert drain(sub) == []
    bus.publish(ev("a.x", "2"))
    assert drain(sub) == ["a.x=2"]


async def test_retained_event_dropped_on_overflow_is_replayed_later() -> None:
    """A retained event a subscriber missed (queue full) counts as not sent."""
    bus = EventBus()
    sub = bus.subscribe("*", name="s", queue_size=1)
    bus.publish(ev("a.fill", "0"))
    bus.publish(ev("a.x", "1"), retain=True)
    assert sub.dropped == 1
    assert drain(sub) == ["a.fill=0"]
    sub.add("a.x")
    assert drain(sub) == ["a.x=1"]


async def test_forget_retained_drops_one_modules_state() -> None:
    """When a module is removed its retained state is not replayed any more."""
    bus = EventBus()
    bus.publish(ev("a.x", "1"), retain=True)
    bus.publish(ev("b.x", "1"), retain=True)
    assert bus.forget_retained("a") == 1
    assert [e.key for e in bus.retained()] == ["b.x"]
    assert drain(bus.subscribe("*", name="s")) == ["b.x=1"]


async def test_retained_state_is_bounded() -> None:
    """Past max_retained keys the least recently updated one is forgotten."""
    bus = EventBus(max_retained=2)
    for key in ["a.1", "a.2", "a.1", "a.3"]:
        bus.publish(ev(key), retain=True)
    assert [e.key for e in bus.retained()] == ["a.1", "a.3"]


async def test_remove_and_add_patterns_change_routing() -> None:
    """Routing follows pattern changes immediately (the routing cache is invalidated)."""
    bus = EventBus()
    sub = bus.subscribe("a.*", name="s")
    bus.publish(ev("a.x", "1"))
    bus.publish(ev("b.x", "1"))
    assert sub.remove("a.*") is True
    assert sub.remove("a.*") is False
    bus.publish(ev("a.x", "2"))
    sub.add("b.*")
    bus.publish(ev("b.x", "2"))
    assert drain(sub) == ["a.x=1", "b.x=2"]
    assert sub.patterns == frozenset({"b.*"})
    assert sub.matches("b.y")
    assert not sub.matches("a.y")


async def test_close_ends_iteration_and_stops_delivery() -> None:
    """close() wakes a consumer iterating the subscription (its loop ends) and the bus
    stops routing to it; closing twice is harmless."""
    bus = EventBus()
    sub = bus.subscribe("*", name="s")
    seen: list[str] = []

    async def consumer() -> None:
        async for e in sub:
            seen.append(e.data)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(consumer)
            bus.publish(ev("a.x", "1"))
            await trio.testing.wait_all_tasks_blocked()
            sub.close()
    assert seen == ["1"]
    sub.close()
    assert sub.closed
    assert bus.publish(ev("a.x", "2")) == 0
    assert bus.statistics().subscriptions == 0
    with pytest.raises(trio.ClosedResourceError):
        await sub.receive()
    with pytest.raises(trio.ClosedResourceError):
        sub.add("b.*")


async def test_subscription_is_a_context_manager() -> None:
    """Leaving the `with` block unsubscribes."""
    bus = EventBus()
    with bus.subscribe("*", name="s") as sub:
        assert bus.statistics().subscriptions == 1
    assert sub.closed
    assert bus.statistics().subscriptions == 0


async def test_invalid_event_data_is_refused() -> None:
    """Event data must be JSON text: it is spliced unchanged into client messages."""
    bus = EventBus()
    sub = bus.subscribe("*", name="s")
    with pytest.raises(InvalidEvent, match=r"event 'a\.x': data is not valid JSON"):
        bus.publish(ev("a.x", "{not json"))
    with pytest.raises(InvalidEvent, match="empty name"):
        bus.publish(Event(module="a", name=""))
    assert drain(sub) == []
    assert bus.statistics().published == 0


async def test_unstamped_events_get_a_timestamp() -> None:
    """An event published with timestamp 0 is stamped with the current time."""
    bus = EventBus()
    sub = bus.subscribe("*", name="s")
    bus.publish(ev("a.x", ts=0))
    bus.publish(ev("a.y", ts=42))
    first, second = sub.receive_nowait(), sub.receive_nowait()
    assert first.timestamp > 1_600_000_000_000
    assert second.timestamp == 42


def test_bad_arguments_are_refused() -> None:
    """An empty pattern or a zero-size queue is a programming error, named."""
    bus = EventBus()
    with pytest.raises(ValueError, match="must not be empty"):
        bus.subscribe("", name="s")
    with pytest.raises(ValueError, match="queue_size must be at least 1"):
        bus.subscribe("*", name="s", queue_size=0)


def test_repr_shows_state() -> None:
    """Logs show a subscription's name, patterns, queue and drops."""
    bus = EventBus()
    sub = bus.subscribe("a.*", name="client 1", queue_size=1)
    bus.publish(ev("a.x"))
    bus.publish(ev("a.y"))
    assert repr(sub) == "<Subscription 'client 1' patterns=['a.*'] queued=1 dropped=1>"
    assert repr(bus) == "<EventBus subscriptions=1 retained=0 published=2>"


_keys = st.builds(
    "{}.{}".format,
    st.text(alphabet="ab", min_size=1, max_size=2),
    st.text(alphabet="ab.", min_size=1, max_size=3),
)
_globs = st.text(alphabet="ab.*?[]!", min_size=1, max_size=5)


@settings(deadline=None)
@given(patterns=st.lists(_globs, min_size=1, max_size=3), keys=st.lists(_keys, max_size=6))
def test_routing_agrees_with_fnmatchcase(patterns: list[str], keys: list[str]) -> None:
    """Whatever the globs, an event is delivered exactly when fnmatchcase says a pattern
    matches its key (the compiled-pattern and routing caches change nothing)."""
    bus = EventBus()
    sub = bus.subscribe(*patterns, name="s")
    for key in keys:
        expected = any(fnmatch.fnmatchcase(key, p) for p in patterns)
        assert sub.matches(key) is expected
        assert bus.publish(ev(key)) == int(expected)


async def test_resubscribing_replays_current_state_again() -> None:
    """Removing a pattern and adding it again replays the retained state it covers:
    a client that leaves a view and comes back sees the current state, not nothing."""
    bus = EventBus()
    bus.publish(Event(module="m", name="state.a", data="1"), retain=True)
    with bus.subscribe("m.*", name="dash") as sub:
        assert sub.receive_nowait().data == "1"
        sub.remove("m.*")
        sub.add("m.*")
        assert sub.receive_nowait().data == "1"


# -- retained state: bounded per module and in total ------------------------------------


def keys_of(bus: EventBus, pattern: str = "*") -> list[str]:
    return [e.key for e in bus.retained(pattern)]


async def test_a_module_past_its_key_limit_forgets_its_own_oldest_key() -> None:
    """Past its max_retained keys, a module's least recently updated key is forgotten,
    never another module's; the module is told why, naming the manifest limit."""
    bus = EventBus()
    told: list[str] = []
    bus.limit_retained("a", RetainedLimit(keys=2, bytes=1 << 20), report=told.append)
    bus.publish(ev("b.status", '"connected"'), retain=True)
    for key in ["a.1", "a.2", "a.1", "a.3"]:
        bus.publish(ev(key), retain=True)
    assert keys_of(bus) == ["b.status", "a.1", "a.3"]
    usage = bus.retained_usage("a")
    assert (usage.keys, usage.forgotten, usage.not_retained) == (2, 1, 0)
    assert told == [
        "module 'a' holds its limit of 2 retained keys (limits.max_retained): forgot its "
        "least recently updated key, 'a.2', to keep 'a.3'"
    ]
    # A forgotten key that comes back is news again to a subscriber that had it.
    sub = bus.subscribe("a.*", name="s")
    assert drain(sub) == ["a.1=null", "a.3=null"]
    bus.publish(ev("a.2", "2"), retain=True)
    sub.add("a.2")
    assert drain(sub) == ["a.2=2"]


async def test_a_module_past_its_byte_limit_forgets_as_many_of_its_own_as_needed() -> None:
    """Sizes are the UTF-8 bytes of name and data; a big update pushes out as many of the
    module's oldest keys as it needs, and the bus's byte count follows."""
    bus = EventBus()
    told: list[str] = []
    bus.limit_retained("a", RetainedLimit(keys=100, bytes=40), report=told.append)
    bus.publish(ev("b.x", '"kept"'), retain=True)
    for name in ["k1", "k2", "k3"]:
        bus.publish(ev(f"a.{name}", '"12345678"'), retain=True)  # 2 + 10 bytes each
    assert bus.retained_usage("a").bytes == 36
    bus.publish(ev("a.big", '"' + "é" * 10 + '"'), retain=True)  # 3 + 22 bytes
    assert keys_of(bus) == ["b.x", "a.k3", "a.big"]
    assert bus.retained_usage("a").bytes == 12 + 25
    assert bus.statistics().retained_bytes == 12 + 25 + len("x") + len('"kept"')
    assert "limits.retained_kb" in told[0], told
    assert "'a.k1', 'a.k2'" in told[0], told


async def test_the_daemon_total_is_shared_without_evicting_another_module() -> None:
    """At the bus's total, a module makes room from its own oldest keys only: one that
    holds none gets its events delivered but not retained, and the other's state stays."""
    bus = EventBus(max_retained=3, max_retained_bytes=1 << 20)
    told: list[str] = []
    bus.limit_retained("b", RetainedLimit(keys=10, bytes=1 << 20), report=told.append)
    for key in ["a.1", "a.2", "a.3"]:
        bus.publish(ev(key), retain=True)
    sub = bus.subscribe("b.*", name="live")
    assert bus.publish(ev("b.1", "1"), retain=True) == 1  # delivered all the same
    assert drain(sub) == ["b.1=1"]
    assert keys_of(bus) == ["a.1", "a.2", "a.3"]
    assert bus.retained_usage("b").not_retained == 1
    assert "was delivered but not retained" in told[0], told
    assert "daemon's limit of 3 keys" in told[0], told
    # Once "a" holds less, "b" keeps its state, and at the total again it pushes out its
    # own oldest, not a's.
    bus.forget_retained("a")
    for key in ["a.1", "b.1", "b.2", "b.3"]:
        bus.publish(ev(key), retain=True)
    assert keys_of(bus) == ["a.1", "b.2", "b.3"]


async def test_the_daemon_byte_total_is_shared_the_same_way() -> None:
    """The byte total as the key total: room is made from the emitter's own keys only."""
    bus = EventBus(max_retained=100, max_retained_bytes=30)
    bus.publish(ev("a.x", '"' + "1" * 20 + '"'), retain=True)  # 1 + 22 bytes
    bus.publish(ev("b.y", '"12"'), retain=True)  # 1 + 4: fits
    bus.publish(ev("b.z", '"12"'), retain=True)  # b makes room from its own
    assert keys_of(bus) == ["a.x", "b.z"]
    bus.publish(ev("b.w", '"' + "1" * 20 + '"'), retain=True)  # cannot fit beside a.x
    assert keys_of(bus) == ["a.x", "b.z"]
    assert bus.retained_usage("b").not_retained == 1


async def test_an_event_bigger_than_the_whole_limit_is_not_retained_nor_its_old_state() -> None:
    """An update too big to keep is delivered, and the key's earlier state is forgotten
    too (replaying it would replay what is no longer true); nothing else is evicted."""
    bus = EventBus()
    bus.limit_retained("a", RetainedLimit(keys=10, bytes=20))
    bus.publish(ev("a.other", "1"), retain=True)
    bus.publish(ev("a.k", "1"), retain=True)
    bus.publish(ev("a.k", '"' + "x" * 30 + '"'), retain=True)
    assert keys_of(bus) == ["a.other"]
    assert bus.retained_usage("a").not_retained == 1
    assert drain(bus.subscribe("a.*", name="late")) == ["a.other=1"]


async def test_lowering_a_limit_trims_at_once_and_reports_are_throttled() -> None:
    """A module given lower limits (a new version of it) is trimmed now; a burst of
    trims for one reason is one report, not one per event."""
    bus = EventBus()
    told: list[str] = []
    for i in range(5):
        bus.publish(ev(f"a.{i}"), retain=True)
    bus.limit_retained("a", RetainedLimit(keys=2, bytes=1 << 20), report=told.append)
    assert keys_of(bus) == ["a.3", "a.4"]
    assert len(told) == 1, told
    assert "held more retained state than its limits" in told[0], told
    assert "forgot its 3 least recently updated keys" in told[0], told
    for i in range(5, 10):
        bus.publish(ev(f"a.{i}"), retain=True)
    assert keys_of(bus) == ["a.8", "a.9"]
    assert bus.retained_usage("a").forgotten == 8
    assert len(told) == 2, told
    assert "(limits.max_retained): forgot its least recently updated key, 'a.3'," in told[1]


async def test_retained_keys_and_event_give_the_state_of_now() -> None:
    """What a paced replay looks up: the keys in update order, each key's current event,
    None once it is forgotten."""
    bus = EventBus()
    bus.publish(ev("a.x", "1"), retain=True)
    bus.publish(ev("a.y", "1"), retain=True)
    keys = bus.retained_keys("a.*")
    assert keys == ["a.x", "a.y"]
    bus.publish(ev("a.x", "2"), retain=True)
    bus.forget_retained("a")
    assert bus.retained_event("a.y") is None
    bus.publish(ev("a.y", "3"), retain=True)
    event = bus.retained_event("a.y")
    assert event is not None
    assert event.data == "3"
    assert bus.retained_usage("a").keys == 1
    assert bus.retained_usage("nobody") == RetainedUsage(0, 0, bus.default_limit, 0, 0)
