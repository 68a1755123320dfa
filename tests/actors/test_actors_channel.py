"""Channel: request/reply, notifications, errors, timeouts, pings, closing, coalescing."""

from __future__ import annotations

import fcntl
import os
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import pytest
import trio
import trio.testing

from actors import (
    Channel,
    ChannelBroken,
    ChannelClosed,
    FrameTooLarge,
    ProtocolError,
    RemoteError,
    Reply,
    wait_heartbeat_lost,
)
from actors._channel import _READ_SIZE, _READS_BEFORE_YIELD, NOTIFY_BATCH, NOTIFY_DRAIN_TIMEOUT
from actors._wire import encode_message


class Point(msgspec.Struct):
    x: int
    y: int


def decode(raw: msgspec.Raw) -> Any:
    return msgspec.msgpack.decode(raw)


async def no_requests(method: str, body: msgspec.Raw) -> None:
    raise AssertionError(f"unexpected request {method}")


@asynccontextmanager
async def channel_pair(
    on_request: Any = no_requests,
    on_notify: Any = None,
    **kwargs: Any,
) -> AsyncIterator[tuple[Channel, Channel]]:
    """A client channel and a server channel (running ``on_request``) over memory streams."""
    left, right = trio.testing.memory_stream_pair()
    client = Channel(left.send_stream, left.receive_stream, name="client", on_request=no_requests)
    server = Channel(
        right.send_stream,
        right.receive_stream,
        name="server",
        on_request=on_request,
        on_notify=on_notify,
        **kwargs,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        await nursery.start(server.run)
        yield client, server
        nursery.cancel_scope.cancel()


async def test_request_reply_with_typed_bodies() -> None:
    """A request body arrives as Raw the handler decodes into its own type; the return
    value comes back as Raw the caller decodes into its own type."""

    async def on_request(method: str, body: msgspec.Raw) -> Point:
        point = msgspec.msgpack.decode(body, type=Point)
        return Point(point.y, point.x)

    with trio.fail_after(5):
        async with channel_pair(on_request) as (client, _):
            raw = await client.request("swap", Point(1, 2))
            assert msgspec.msgpack.decode(raw, type=Point) == Point(2, 1)
            assert client.statistics().pending_requests == 0


async def test_both_ends_can_call_each_other() -> None:
    """The channel is symmetric: the side that serves requests can also make them."""
    left, right = trio.testing.memory_stream_pair()

    async def answer(method: str, body: msgspec.Raw) -> str:
        return f"{method} from {decode(body)}"

    a = Channel(left.send_stream, left.receive_stream, name="a", on_request=answer)
    b = Channel(right.send_stream, right.receive_stream, name="b", on_request=answer)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(a.run)
            await nursery.start(b.run)
            assert decode(await a.request("hi", "a")) == "hi from a"
            assert decode(await b.request("hi", "b")) == "hi from b"
            nursery.cancel_scope.cancel()


async def test_notifications_are_handled_in_order() -> None:
    """Notifications reach on_notify one at a time, in the order they were sent."""
    seen: list[int] = []
    all_seen = trio.Event()

    async def on_notify(method: str, body: msgspec.Raw) -> None:
        await trio.lowlevel.checkpoint()  # Give a later notification a chance to overtake.
        seen.append(decode(body))
        if len(seen) == 50:
            all_seen.set()

    with trio.fail_after(5):
        async with channel_pair(on_notify=on_notify) as (client, _):
            for i in range(25):
                await client.notify("n", i)
            for i in range(25, 50):
                client.notify_nowait("n", i)
            await all_seen.wait()
    assert seen == list(range(50))


@asynccontextmanager
async def _notes_before_reply(
    gate: trio.Event, handled: list[int]
) -> AsyncIterator[tuple[Channel, list[Any], trio.Event]]:
    """A client whose notification handler waits at ``gate`` before the first one, and
    a server that answers ``work`` after notifying 0, 1, 2. Yields the client, the
    replies it has seen (with what was handled when it saw each) and an event set on
    the first reply, once the reply has arrived and waits."""
    left, right = trio.testing.memory_stream_pair()

    async def on_notify(method: str, body: msgspec.Raw) -> None:
        await gate.wait()
        handled.append(decode(body))

    async def answer(method: str, body: msgspec.Raw) -> str:
        for i in range(3):
            await server.notify("log", i)
        return "done"

    client = Channel(
        left.send_stream, left.receive_stream, name="client",
        on_request=no_requests, on_notify=on_notify,
    )  # fmt: skip
    server = Channel(right.send_stream, right.receive_stream, name="server", on_request=answer)
    seen: list[Any] = []
    replied = trio.Event()

    async def call() -> None:
        value = decode(await client.request("work", None))
        seen.append((value, list(handled)))
        replied.set()

    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        await nursery.start(server.run)
        nursery.start_soon(call)
        # Everything idle: the reply has come in, and the handler waits at the gate.
        await trio.testing.wait_all_tasks_blocked()
        yield client, seen, replied
        nursery.cancel_scope.cancel()


async def test_a_reply_waits_for_the_notifications_sent_before_it() -> None:
    """What a peer says, it says in order: a caller sees its reply only once every
    notification the peer sent before it has been handled (a module's log lines and
    events of a call before the call's answer). Pings are not held behind them."""
    gate = trio.Event()
    handled: list[int] = []
    with trio.fail_after(5):
        async with _notes_before_reply(gate, handled) as (client, seen, replied):
            assert client.statistics().frames_received >= 4  # 3 notifications, the reply
            assert seen == []
            await client.ping(timeout=2)
            gate.set()
            await replied.wait()
    assert seen == [("done", [0, 1, 2])]


async def test_a_held_reply_is_still_answered_when_the_channel_ends() -> None:
    """A reply held behind notifications that will never be handled now (the channel
    is going away) is given to its caller, not failed: it did come."""
    handled: list[int] = []
    with trio.fail_after(5):
        async with _notes_before_reply(trio.Event(), handled) as (client, seen, replied):
            assert seen == []
            client.abort("the peer is gone")
            await replied.wait()
    assert seen == [("done", [])]


class _HandledPerStep(trio.abc.Instrument):
    """How many notifications each task step handled (steps that handled any)."""

    def __init__(self) -> None:
        self.handled = 0
        self.per_step: list[int] = []

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if self.handled:
            self.per_step.append(self.handled)
            self.handled = 0


async def test_a_burst_of_notifications_is_handled_a_few_per_step(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Notifications that arrive together are handled several in one scheduler step (a
    step saved per message), never more than NOTIFY_BATCH before other tasks get a turn,
    in order, and a handler that raises for one of them does not stop the rest."""
    seen: list[int] = []
    steps = _HandledPerStep()
    all_seen = trio.Event()

    async def on_notify(method: str, body: msgspec.Raw) -> None:
        n = decode(body)
        seen.append(n)
        steps.handled += 1
        if len(seen) == 200:
            all_seen.set()
        if n == 5:
            raise ValueError("bad notification 5")

    with trio.fail_after(5):
        async with channel_pair(on_notify=on_notify) as (client, _):
            trio.lowlevel.add_instrument(steps)
            try:
                for i in range(200):
                    client.notify_nowait("n", i)
                await all_seen.wait()
            finally:
                trio.lowlevel.remove_instrument(steps)
    assert seen == list(range(200))
    assert max(steps.per_step) <= NOTIFY_BATCH, steps.per_step
    assert max(steps.per_step) > 1, steps.per_step
    assert "bad notification 5" in caplog.text


async def test_handler_error_becomes_remote_error() -> None:
    """An exception in the peer's handler is raised by request() as RemoteError carrying
    the type name, the message and the peer's name; the channel stays usable."""

    async def on_request(method: str, body: msgspec.Raw) -> str:
        if method == "fail":
            raise ValueError("bad input")
        return "fine"

    with trio.fail_after(5):
        async with channel_pair(on_request) as (client, _):
            with pytest.raises(RemoteError) as info:
                await client.request("fail", None)
            assert (info.value.type_name, info.value.message, info.value.actor) == (
                "ValueError",
                "bad input",
                "server",
            )
            assert str(info.value) == "ValueError in server: bad input"
            assert decode(await client.request("ok", None)) == "fine"


async def test_unencodable_result_is_reported_not_fatal() -> None:
    """A handler returning something msgpack cannot encode fails that call only."""

    async def on_request(method: str, body: msgspec.Raw) -> object:
        return object()

    with trio.fail_after(5):
        async with channel_pair(on_request) as (client, _):
            with pytest.raises(RemoteError) as info:
                await client.request("x", None)
            assert info.value.type_name == "TypeError"


async def test_timeout_then_late_reply_is_dropped(autojump_clock: trio.testing.MockClock) -> None:
    """request(timeout=) raises TooSlowError at the deadline; the reply that arrives later
    is dropped silently and the next request gets its own reply."""
    release = trio.Event()
    replied = trio.Event()

    async def on_request(method: str, body: msgspec.Raw) -> str:
        if method == "slow":
            await release.wait()
            replied.set()
        return method

    with trio.fail_after(60):
        async with channel_pair(on_request) as (client, _):
            start = trio.current_time()
            with pytest.raises(trio.TooSlowError):
                await client.request("slow", None, timeout=2.5)
            assert trio.current_time() - start == 2.5
            assert client.statistics().pending_requests == 0
            release.set()
            await replied.wait()
            assert decode(await client.request("fast", None)) == "fast"


async def test_slow_handler_does_not_block_others() -> None:
    """Each request runs in its own task: a fast request is answered while a slow one is
    still being handled, and the slow one still gets its own answer."""
    fast_done = trio.Event()

    async def on_request(method: str, body: msgspec.Raw) -> str:
        if method == "slow":
            await fast_done.wait()
        return method

    results: dict[str, str] = {}

    async def call(client: Channel, method: str) -> None:
        results[method] = decode(await client.request(method, None))
        if method == "fast":
            fast_done.set()

    with trio.fail_after(5):
        async with channel_pair(on_request) as (client, _), trio.open_nursery() as nursery:
            nursery.start_soon(call, client, "slow")
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(call, client, "fast")
    assert results == {"slow": "slow", "fast": "fast"}


async def test_ping_answered_while_handler_busy() -> None:
    """Pings are answered by the reader, so a handler that never returns cannot delay
    the heartbeat."""
    stuck = trio.Event()

    async def on_request(method: str, body: msgspec.Raw) -> None:
        stuck.set()
        await trio.sleep_forever()

    with trio.fail_after(5):
        async with channel_pair(on_request) as (client, _), trio.open_nursery() as nursery:
            nursery.start_soon(client.request, "hang", None)
            await stuck.wait()
            assert await client.ping(timeout=1) >= 0
            nursery.cancel_scope.cancel()


async def test_peer_eof_fails_pending_with_channel_broken() -> None:
    """When the peer closes its end, run() returns and in-flight requests fail with
    ChannelBroken instead of hanging; later calls fail the same way."""
    left, right = trio.testing.memory_stream_pair()
    client = Channel(left.send_stream, left.receive_stream, name="client", on_request=no_requests)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(client.run)

            async def close_peer_once_request_arrives() -> None:
                await right.receive_some()
                await right.aclose()

            nursery.start_soon(close_peer_once_request_arrives)
            with pytest.raises(ChannelBroken):
                await client.request("x", None)
        with pytest.raises(ChannelBroken):
            await client.notify("y", None)
    assert client.closed
    assert client.broken


async def test_aclose_fails_pending_with_channel_closed() -> None:
    """aclose() fails in-flight requests with ChannelClosed ("you closed it"); the peer
    sees end-of-stream and cancels the handler still running for them."""
    handler_cancelled = trio.Event()
    handler_started = trio.Event()

    async def on_request(method: str, body: msgspec.Raw) -> None:
        handler_started.set()
        try:
            await trio.sleep_forever()
        finally:
            handler_cancelled.set()

    async def request_expecting_closed(client: Channel) -> None:
        with pytest.raises(ChannelClosed):
            await client.request("hang", None)

    with trio.fail_after(5):
        async with channel_pair(on_request) as (client, server), trio.open_nursery() as nursery:
            nursery.start_soon(request_expecting_closed, client)
            await handler_started.wait()
            await client.aclose()
            await handler_cancelled.wait()
            assert server.broken
        assert client.closed
        assert not client.broken
        with pytest.raises(ChannelClosed):
            await client.request("again", None)


async def test_run_after_abort_returns_at_once() -> None:
    """A channel aborted before run() (its peer died first) still runs cleanly: run()
    reports started, returns, and later calls fail with ChannelBroken."""
    left, _ = trio.testing.memory_stream_pair()
    channel = Channel(left.send_stream, left.receive_stream, name="c", on_request=no_requests)
    channel.abort("peer died")
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(channel.run)
        with pytest.raises(ChannelBroken, match="peer died"):
            await channel.request("x", None)


async def test_close_right_after_queueing_a_frame() -> None:
    """Closing while the writer holds a freshly queued frame ends run() cleanly (the
    writer must treat the closed queue as the end, not crash)."""
    left, _ = trio.testing.memory_stream_pair()
    channel = Channel(left.send_stream, left.receive_stream, name="c", on_request=no_requests)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(channel.run)
            await trio.testing.wait_all_tasks_blocked()
            channel.notify_nowait("last words", None)
            await channel.aclose()


async def test_abort_while_reader_waits_on_a_slow_notification_handler() -> None:
    """With the notification queue full the reader waits (backpressure); failing the
    channel then still ends run() cleanly."""
    handler_stuck = trio.Event()

    async def on_notify(method: str, body: msgspec.Raw) -> None:
        handler_stuck.set()
        await trio.sleep_forever()

    with trio.fail_after(5):
        async with channel_pair(on_notify=on_notify, send_queue_size=1) as (client, server):
            for i in range(5):
                await client.notify("n", i)
            await handler_stuck.wait()
            await trio.testing.wait_all_tasks_blocked()
            server.abort("test")
            await trio.testing.wait_all_tasks_blocked()
            assert server.broken


async def test_undecodable_frame_raises_protocol_error() -> None:
    """A peer that sends garbage is broken: pending requests fail with ChannelBroken and
    run() raises ProtocolError."""
    left, right = trio.testing.memory_stream_pair()
    client = Channel(left.send_stream, left.receive_stream, name="client", on_request=no_requests)

    async def send_garbage_once_request_arrives() -> None:
        await right.receive_some()
        await right.send_all(struct.pack(">I", 1) + b"\xc1")

    async def pending_request() -> None:
        with pytest.raises(ChannelBroken):
            await client.request("x", None)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_garbage_once_request_arrives)
            nursery.start_soon(pending_request)
            with pytest.raises(ProtocolError):
                await client.run()


async def test_oversized_frame_from_peer_is_a_protocol_error() -> None:
    """A peer announcing a frame over max_frame_size is cut off before we buffer it."""
    left, right = trio.testing.memory_stream_pair()
    client = Channel(
        left.send_stream,
        left.receive_stream,
        name="client",
        on_request=no_requests,
        max_frame_size=100,
    )
    with trio.fail_after(5):
        await right.send_all(struct.pack(">I", 101))
        with pytest.raises(ProtocolError, match="101"):
            await client.run()


async def test_oversized_body_fails_early_and_channel_survives() -> None:
    """A body too big for one frame raises FrameTooLarge before anything is sent."""

    async def on_request(method: str, body: msgspec.Raw) -> str:
        return "ok"

    left, right = trio.testing.memory_stream_pair()
    client = Channel(
        left.send_stream,
        left.receive_stream,
        name="client",
        on_request=no_requests,
        max_frame_size=1000,
    )
    server = Channel(right.send_stream, right.receive_stream, name="server", on_request=on_request)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(client.run)
            await nursery.start(server.run)
            with pytest.raises(FrameTooLarge):
                await client.request("big", b"x" * 2000)
            assert decode(await client.request("small", b"x")) == "ok"
            nursery.cancel_scope.cancel()


async def test_notify_nowait_raises_would_block_when_queue_full() -> None:
    """notify_nowait never blocks: with the send queue full it raises trio.WouldBlock."""
    left, _ = trio.testing.memory_stream_pair()
    channel = Channel(
        left.send_stream,
        left.receive_stream,
        name="c",
        on_request=no_requests,
        send_queue_size=2,
    )
    channel.notify_nowait("a", 1)
    channel.notify_nowait("b", 2)
    with pytest.raises(trio.WouldBlock):
        channel.notify_nowait("c", 3)
    await channel.aclose()


class RecordingSendStream(trio.abc.SendStream):
    """A send stream that records each send_all call (a fake transport, not our code)."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()
        self.writes.append(bytes(data))

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


async def test_writer_coalesces_queued_frames_into_one_write() -> None:
    """Every frame waiting in the queue goes out in a single write (the throughput win),
    and statistics count frames and bytes."""
    sink = RecordingSendStream()
    _, right = trio.testing.memory_stream_pair()
    channel = Channel(sink, right.receive_stream, name="c", on_request=no_requests)
    for i in range(100):
        channel.notify_nowait("n", i)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(channel.run)
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    assert len(sink.writes) == 1
    stats = channel.statistics()
    assert stats.frames_sent == 100
    assert stats.bytes_sent == len(sink.writes[0])


async def test_channel_over_a_real_socketpair() -> None:
    """The channel works over real kernel sockets, with many calls in flight at once."""
    a, b = trio.socket.socketpair()

    async def on_request(method: str, body: msgspec.Raw) -> Any:
        return decode(body)

    client = Channel(trio.SocketStream(a), trio.SocketStream(a), name="c", on_request=no_requests)
    server = Channel(trio.SocketStream(b), trio.SocketStream(b), name="s", on_request=on_request)
    results: list[int] = []

    async def call(i: int) -> None:
        results.append(decode(await client.request("echo", i)))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(client.run)
            await nursery.start(server.run)
            async with trio.open_nursery() as calls:
                for i in range(500):
                    calls.start_soon(call, i)
            nursery.cancel_scope.cancel()
    assert sorted(results) == list(range(500))
    assert server.statistics().frames_received == 500


async def test_heartbeat_lost_exactly_after_interval_plus_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A peer that stops reading is declared lost when a ping has gone unanswered for the
    timeout: at interval + timeout on the clock, not earlier."""
    left, _silent_peer = trio.testing.memory_stream_pair()
    channel = Channel(left.send_stream, left.receive_stream, name="c", on_request=no_requests)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(channel.run)
            start = trio.current_time()
            await wait_heartbeat_lost(channel, interval=1.0, ping_timeout=5.0)
            assert trio.current_time() - start == 6.0
            nursery.cancel_scope.cancel()


async def test_heartbeat_holds_while_peer_answers(autojump_clock: trio.testing.MockClock) -> None:
    """A responsive peer is never declared lost."""
    with trio.fail_after(1000):
        async with channel_pair() as (client, _):
            with trio.move_on_after(100) as scope:
                await wait_heartbeat_lost(client, interval=1.0, ping_timeout=0.5)
            assert scope.cancelled_caught


async def test_heartbeat_holds_while_a_flooding_peer_keeps_sending(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A peer that floods notifications faster than we consume them answers our pings,
    but its Pongs wait behind the flood: a ping times out, yet the peer is not declared
    lost, because its frames keep arriving (backpressure is not a hang)."""
    consumed = 0

    async def slow_consumer(method: str, body: msgspec.Raw) -> None:
        nonlocal consumed
        await trio.sleep(0.01)  # 100 per second; the peer sends 1000
        consumed += 1

    sent = 0
    with trio.fail_after(1000):
        async with channel_pair(on_notify=slow_consumer) as (peer, us):

            async def flood() -> None:
                nonlocal sent
                while True:
                    await peer.notify("flood", None)
                    sent += 1
                    await trio.sleep(0.001)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(flood)
                await trio.sleep(2)
                with pytest.raises(trio.TooSlowError):
                    await us.ping(timeout=0.5)
                with trio.move_on_after(20) as scope:
                    await wait_heartbeat_lost(us, interval=1.0, ping_timeout=0.5)
                assert scope.cancelled_caught
                nursery.cancel_scope.cancel()
    assert sent > 5 * consumed > 0


async def test_request_flood_beyond_the_cap_is_refused_at_once() -> None:
    """A peer flooding requests gets at most ``max_concurrent_requests`` handler tasks;
    the rest are answered at once with a TooManyRequests error instead of spawning, and
    the channel keeps serving once the handlers finish."""
    release = trio.Event()
    running = 0
    peak = 0

    async def slow(method: str, body: msgspec.Raw) -> str:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        try:
            await release.wait()
        finally:
            running -= 1
        return "done"

    outcomes: list[str] = []
    refusals: list[RemoteError] = []
    async with channel_pair(slow, max_concurrent_requests=8) as (client, server):

        async def one() -> None:
            try:
                outcomes.append(decode(await client.request("work", None, timeout=10)))
            except RemoteError as exc:
                refusals.append(exc)
                outcomes.append("refused")

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                for _ in range(200):
                    nursery.start_soon(one)
                while outcomes.count("refused") < 192:
                    await trio.sleep(0.01)
                assert running == 8
                release.set()
        assert peak == 8
        assert outcomes.count("done") == 8
        assert server.requests_refused == 192
        assert {e.type_name for e in refusals} == {"TooManyRequests"}
        assert all("too many concurrent requests" in e.message for e in refusals)
        with trio.fail_after(5):
            assert decode(await client.request("work", None)) == "done"


def test_max_concurrent_requests_must_be_positive() -> None:
    """A cap below one would refuse everything: it is a configuration error."""
    left, right = trio.testing.memory_stream_pair()
    with pytest.raises(ValueError, match="max_concurrent_requests"):
        Channel(left.send_stream, right.receive_stream, name="x", on_request=no_requests,
                max_concurrent_requests=0)  # fmt: skip


async def test_a_pipe_kept_full_by_the_peer_does_not_starve_other_tasks() -> None:
    """The reader reads a pipe without yielding while data is there (one task switch
    less per message), but not for ever: with more waiting than it reads in a row, it
    lets other tasks run before it has read it all. (Replies nobody waits for need no
    other task, so without that yield nothing else would run until the pipe ran dry.)"""
    reads = 2 * _READS_BEFORE_YIELD
    parent_read, peer_write = os.pipe()
    peer_read, parent_write = os.pipe()
    fcntl.fcntl(peer_write, fcntl.F_SETPIPE_SZ, reads * _READ_SIZE)
    frame = bytes(encode_message(Reply(999, msgspec.Raw(b"\xc0"))))
    total = reads * _READ_SIZE // len(frame)
    os.write(peer_write, frame * total)
    channel = Channel(
        trio.lowlevel.FdStream(parent_write),
        trio.lowlevel.FdStream(parent_read),
        name="flooded",
        on_request=no_requests,
    )
    # Frames read by the end of each step of the channel's task: where it yielded.
    steps: list[int] = []

    class WatchReader(trio.abc.Instrument):
        def after_task_step(self, task: trio.lowlevel.Task) -> None:
            if task.name.endswith("Channel.run"):
                steps.append(channel.statistics().frames_received)

    trio.lowlevel.add_instrument(WatchReader())
    try:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                await nursery.start(channel.run)
                while channel.statistics().frames_received < total:
                    await trio.lowlevel.checkpoint()
                await channel.aclose()
    finally:
        os.close(peer_write)
        os.close(peer_read)
    assert any(0 < count < total for count in steps), steps


async def test_send_request_sends_at_once_and_result_waits_for_the_reply() -> None:
    """send_request has the frame on its way before it returns (the peer's handler runs
    while the caller has not awaited anything); result() gives the reply, and its
    timeout counts from the send."""
    handled: list[Any] = []

    async def handler(method: str, body: msgspec.Raw) -> Any:
        handled.append(decode(body))
        if method == "slow":
            await trio.sleep_forever()
        return decode(body) * 2

    async with channel_pair(on_request=handler) as (client, _server):
        with trio.fail_after(5):
            pending = client.send_request("double", 21)
            await trio.testing.wait_all_tasks_blocked()
            assert handled == [21]
            assert decode(await pending.result()) == 42
            slow = client.send_request("slow", 1, timeout=0.2)
            await trio.sleep(0.2)  # all of its timeout, spent before result() is awaited
            with pytest.raises(trio.TooSlowError):
                await slow.result()
            assert client.statistics().pending_requests == 0
            await client.aclose()
            with pytest.raises(ChannelClosed):
                client.send_request("after", None)


async def test_notifications_received_before_the_peer_went_away_are_still_handled() -> None:
    """A peer that notifies and then closes (a module that emits and crashes): every
    notification already queued is handled, in order, though the channel has ended.
    (An owner that learns of the peer's end first: see test_what_a_child_wrote_before_
    it_exited_is_still_handled, tests/actors/test_actors_process.py.)"""
    handled: list[int] = []

    async def on_notify(method: str, body: msgspec.Raw) -> None:
        await trio.sleep(0.005)  # a handler slower than the peer
        handled.append(decode(body))

    with trio.fail_after(5):
        async with channel_pair(on_notify=on_notify, send_queue_size=64) as (client, server):
            for i in range(50):
                await client.notify("n", i)
            # aclose drops what the client has not written yet: let it write all first.
            while client.statistics().frames_sent < 50:
                await trio.sleep(0.001)
            await client.aclose()
            while not server.broken:
                await trio.sleep(0.001)
            await server._run_finished.wait()
    assert handled == list(range(50))


async def test_a_hanging_notification_handler_does_not_keep_an_ended_channel_running(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def on_notify(method: str, body: msgspec.Raw) -> None:
        await trio.sleep_forever()

    async with channel_pair(on_notify=on_notify) as (client, server):
        await client.notify("n", 1)
        await trio.testing.wait_all_tasks_blocked()
        await client.aclose()
        begun = trio.current_time()
        await server._run_finished.wait()
        assert trio.current_time() - begun == pytest.approx(NOTIFY_DRAIN_TIMEOUT, abs=0.1)
