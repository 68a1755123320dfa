"""Lanes: extra channels served in the child by one thread with blocking calls.

The first tests put a trio :class:`Channel` and a :class:`BlockingChannel` on the two
ends of real pipes in this process (the blocking end on a worker thread, as in a child);
the rest start real children, spawned and forked, whose lanes are served by the actors
test app (``_child_app.serve_lane``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import pytest
import trio
import trio.testing

from actors import (
    BlockingChannel,
    Channel,
    ChannelBroken,
    ChannelClosed,
    ForkServer,
    LaneTimeout,
    NotifyHandler,
    ProcessSpec,
    ProtocolError,
    RemoteError,
    Request,
    RequestHandler,
    open_forkserver,
    open_process_actor,
)

from ._support import (
    child_argv,
    child_env,
    decode,
    kid_spec,
    lane_pipes,
    parent_channel,
    parent_handler,
)

PRELOAD = ("tests.actors._preloaded",)


async def run_in_thread(fn: Callable[[], Any]) -> Any:
    """The blocking end's work, on a worker thread (it blocks in system calls)."""
    return await trio.to_thread.run_sync(fn)


@asynccontextmanager
async def lane_pair(
    on_request: RequestHandler = parent_handler, on_notify: NotifyHandler | None = None
) -> AsyncIterator[tuple[Channel, BlockingChannel]]:
    """A parent's Channel and a child's BlockingChannel over two real pipes."""
    lane, read_fd, write_fd = lane_pipes("kid/lane1")
    channel = parent_channel(read_fd, write_fd, on_request=on_request, on_notify=on_notify)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(channel.run)
            yield channel, lane
            await channel.aclose()
    finally:
        lane.close()


def received_request(lane: BlockingChannel) -> Request:
    message = lane.receive(timeout=5)
    assert isinstance(message, Request), message
    return message


async def test_requests_from_the_parent_are_answered_in_one_batch() -> None:
    """Replies wait in a batch until the lane would block (or flush()), then go out in
    one write; each reaches the request it answers."""
    async with lane_pair() as (channel, lane):
        results: dict[int, Any] = {}

        async def ask(n: int) -> None:
            results[n] = decode(await channel.request("echo", {"n": n}, timeout=5))

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                for n in range(3):
                    nursery.start_soon(ask, n)
                # All three are in the pipe: the lane never has to wait (and flush) for one.
                await trio.testing.wait_all_tasks_blocked()

                def answer_three() -> None:
                    for _ in range(3):
                        request = received_request(lane)
                        lane.reply(request.id, msgspec.msgpack.decode(request.body))

                await run_in_thread(answer_three)
                # Nothing is written yet: the three replies are still in the batch.
                assert channel.statistics().frames_received == 0
                await run_in_thread(lane.flush)
        assert results == {0: {"n": 0}, 1: {"n": 1}, 2: {"n": 2}}
        assert channel.statistics().frames_received == 3


async def test_receive_flushes_before_it_waits_and_times_out_with_none() -> None:
    notes: list[Any] = []
    got_note = trio.Event()

    async def on_notify(method: str, body: msgspec.Raw) -> None:
        notes.append((method, decode(body)))
        got_note.set()

    async with lane_pair(on_notify=on_notify) as (_channel, lane):
        with trio.fail_after(10):

            def notify_then_wait() -> Any:
                lane.notify("note", 1)
                return lane.receive(timeout=0.05)

            assert await run_in_thread(notify_then_wait) is None
            await got_note.wait()
        assert notes == [("note", 1)]
        assert lane.receive(timeout=0) is None


async def test_a_request_from_the_child_keeps_what_arrives_meanwhile_in_order() -> None:
    """While the child waits for its answer, the parent's request and notification that
    were already in the pipe arrive first; they are kept, and received afterwards in the
    order they were sent."""
    async with lane_pair() as (channel, lane):
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                replies: list[Any] = []

                async def ask() -> None:
                    replies.append(decode(await channel.request("first", None, timeout=5)))

                nursery.start_soon(ask)
                await trio.testing.wait_all_tasks_blocked()  # "first" is written
                await channel.notify("second", None)

                def child_side() -> tuple[Any, list[str]]:
                    answer = decode(lane.request("hello", "hi", timeout=5))
                    seen = []
                    for _ in range(2):
                        message = lane.receive(timeout=5)
                        assert message is not None
                        seen.append(message.method)
                        if isinstance(message, Request):
                            lane.reply(message.id, "ok")
                    lane.flush()
                    return answer, seen

                answer, seen = await run_in_thread(child_side)
        assert answer == {"method": "hello", "body": "hi"}
        assert seen == ["first", "second"]
        assert replies == ["ok"]


async def test_errors_cross_the_lane_both_ways() -> None:
    async def refuse(method: str, body: msgspec.Raw) -> Any:
        raise PermissionError(f"{method} is not allowed")

    async with lane_pair(on_request=refuse) as (channel, lane):
        with trio.fail_after(10):
            with pytest.raises(RemoteError) as parent_side:
                await run_in_thread(lambda: lane.request("storage.get", None, timeout=5))
            assert parent_side.value.type_name == "PermissionError"
            assert parent_side.value.message == "storage.get is not allowed"

            async with trio.open_nursery() as nursery:

                async def ask() -> None:
                    with pytest.raises(RemoteError) as child_side:
                        await channel.request("anything", None, timeout=5)
                    assert child_side.value.type_name == "LookupError"
                    assert child_side.value.actor == "kid/lane1"

                nursery.start_soon(ask)

                def refuse_one() -> None:
                    request = received_request(lane)
                    lane.reply_error(request.id, LookupError("no such thing"))
                    lane.flush()

                await run_in_thread(refuse_one)


async def test_a_request_times_out_and_its_late_answer_is_dropped() -> None:
    release = trio.Event()

    async def parent(method: str, body: msgspec.Raw) -> Any:
        if method == "slow":
            await release.wait()
            return "late"
        return "quick"

    async with lane_pair(on_request=parent) as (_channel, lane):
        with trio.fail_after(10):
            with pytest.raises(LaneTimeout, match=r"no answer to 'slow' within 0\.1 s"):
                await run_in_thread(lambda: lane.request("slow", None, timeout=0.1))
            release.set()
            # The late "late" arrives first and is dropped; the next answer is its own.
            assert decode(await run_in_thread(lambda: lane.request("q", None, timeout=5))) == (
                "quick"
            )


async def test_try_notify_never_blocks_and_what_it_sent_arrives_in_order() -> None:
    """On a pipe the parent does not read, try_notify fills it and then says False at
    once instead of blocking; once the parent reads, the lane is writable again and
    everything sent arrives, in order (the refused ones are not sent at all)."""
    lane, read_fd, write_fd = lane_pipes("kid/lane2")
    # Bigger than what a pipe writes whole (PIPE_BUF): never tried, even on an empty pipe.
    assert not lane.try_notify("big", "y" * 5000)
    filler = "x" * 1000
    sent = 0
    # On this thread, with nobody reading: a blocking write would hang the test.
    while lane.try_notify("fill", [sent, filler]):
        sent += 1
        assert sent < 10_000, "try_notify never found the pipe full"
    assert sent > 10  # a pipe holds 64 KiB by default: dozens of these
    assert not lane.try_notify("fill", [sent, filler])
    notes: list[Any] = []
    got_last = trio.Event()

    async def on_notify(method: str, body: msgspec.Raw) -> None:
        notes.append((method, decode(body)))
        if method == "last":
            got_last.set()

    channel = parent_channel(read_fd, write_fd, on_notify=on_notify)
    try:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                await nursery.start(channel.run)
                await trio.lowlevel.wait_writable(lane.write_fileno())
                assert lane.try_notify("last", sent)
                await got_last.wait()
                await channel.aclose()
    finally:
        lane.close()
    assert notes == [*(("fill", [n, filler]) for n in range(sent)), ("last", sent)]


async def test_the_parent_can_ping_a_lane_while_its_thread_waits() -> None:
    async with lane_pair() as (channel, lane):
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run_in_thread, lambda: lane.receive(timeout=2))
                assert await channel.ping(timeout=5) >= 0
                await channel.notify("done", None)


async def test_the_parent_closing_the_lane_is_channel_broken_for_good() -> None:
    async with lane_pair() as (channel, lane):
        with trio.fail_after(10):
            await channel.aclose()
            with pytest.raises(ChannelBroken, match="parent closed the lane"):
                await run_in_thread(lambda: lane.receive(timeout=5))
            with pytest.raises(ChannelBroken):
                lane.notify("after", None)
    # Closed afterwards (by lane_pair): the first cause is the one reported.
    with pytest.raises(ChannelBroken):
        lane.receive(timeout=0)


def test_a_lane_closed_by_its_thread_says_so() -> None:
    up_read, up_write = os.pipe()
    down_read, down_write = os.pipe()
    lane = BlockingChannel(down_read, up_write, name="kid/lane1")
    lane.close()
    lane.close()
    with pytest.raises(ChannelClosed, match="'kid/lane1' was closed"):
        lane.request("anything", None, timeout=1)
    for fd in (up_read, down_write):
        os.close(fd)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"\x00\x00\x00\x01\xc1", "undecodable frame"),
        (b"\xff\xff\xff\xff", "over the limit"),
    ],
)
def test_garbage_from_the_parent_is_a_protocol_error(data: bytes, problem: str) -> None:
    up_read, up_write = os.pipe()
    down_read, down_write = os.pipe()
    lane = BlockingChannel(down_read, up_write, name="kid/lane1")
    try:
        os.write(down_write, data)
        with pytest.raises(ProtocolError, match=problem):
            lane.receive(timeout=5)
        assert lane.closed
    finally:
        lane.close()
        for fd in (up_read, down_write):
            os.close(fd)


def test_too_many_lanes_are_refused() -> None:
    with pytest.raises(ValueError, match=r"lanes must be 0\.\.4"):
        ProcessSpec(name="kid", argv=["true"], lanes=5)


# -- real children ------------------------------------------------------------------


async def check_lanes(spec: ProcessSpec, forkserver: ForkServer | None = None) -> None:
    """Two lanes and the main channel of one child, each independent of the others."""
    notes: list[tuple[str, Any]] = []
    two_notes = trio.Event()

    async def on_notify(method: str, body: msgspec.Raw) -> None:
        notes.append((method, decode(body)))
        if len(notes) == 2:
            two_notes.set()

    with trio.fail_after(20):
        async with open_process_actor(
            spec, on_request=parent_handler, on_notify=on_notify, forkserver=forkserver
        ) as actor:
            assert actor.forked == (forkserver is not None)
            first, second = actor.lanes
            assert decode(await first.request("whoami", None)) == ["kid/lane1", "kid/lane1"]
            assert decode(await second.request("whoami", None)) == ["kid/lane2", "kid/lane2"]
            assert decode(await actor.request("echo", "main")) == "main"
            assert decode(await second.request("call_parent", [1, 2])) == {
                "method": "hello",
                "body": [1, 2],
            }
            assert decode(await first.request("notify_parent", ["a", "b"])) == 2
            await two_notes.wait()
            assert notes == [("note", "a"), ("note", "b")]
            # A request the lane's thread holds does not hold up the other lane.
            async with trio.open_nursery() as nursery:
                held: list[Any] = []

                async def hold() -> None:
                    held.append(decode(await first.request("hold", None)))

                nursery.start_soon(hold)
                assert decode(await second.request("echo", "other lane")) == "other lane"
                assert held == []
                assert decode(await first.request("echo", "release")) == "release"
            assert held == ["released"]
            with pytest.raises(RemoteError, match="boom"):
                await first.request("raise", "boom")
            actor.kill("test kill")
            with pytest.raises(ChannelBroken):
                await first.request("echo", "after the kill")


async def test_a_spawned_child_serves_its_lanes() -> None:
    await check_lanes(kid_spec(child_argv("--name", "kid"), lanes=2))


async def test_a_forked_child_serves_its_lanes() -> None:
    async with open_forkserver(PRELOAD, name="lane-zygote", env=child_env()) as server:
        with trio.fail_after(30):
            assert await server.wait_ready()
        argv = [sys.executable, "-m", "tests.actors._child_app", "--name", "kid"]
        await check_lanes(kid_spec(argv, lanes=2), server)
        assert server.spawned == 1


async def test_a_child_without_lanes_has_none() -> None:
    with trio.fail_after(10):
        async with open_process_actor(
            kid_spec(child_argv("--name", "kid")), on_request=parent_handler
        ) as actor:
            assert actor.lanes == ()
            got = decode(await actor.request("introspect", None))
            assert "ACTORS_LANE_FDS" not in got["env"]
            assert got["fds"].count("pipe") == 2  # the main channel only


async def test_a_lane_notification_is_answered_on_the_lane() -> None:
    heard = trio.Event()
    said: list[Any] = []

    async def on_notify(method: str, body: msgspec.Raw) -> None:
        said.append((method, decode(body)))
        heard.set()

    with trio.fail_after(10):
        async with open_process_actor(
            kid_spec(child_argv("--name", "kid"), lanes=1),
            on_request=parent_handler,
            on_notify=on_notify,
        ) as actor:
            await actor.lanes[0].notify("say", {"x": 1})
            await heard.wait()
    assert said == [("heard", {"x": 1})]
