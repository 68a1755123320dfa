"""The module process's report of its work on the box CPU (``vessel.host._box_report``),
over a real pipe pair to a real parent :class:`Channel` in this process.

What matters: the report leaves from the thread that confines the work, without waiting
for the process's trio loop (which may be waiting for a CPU meanwhile); it never blocks
that thread, not even when the pipe is full; and the state the daemon ends up with is
the latest one, however many changes were folded while the pipe was full.
"""

from __future__ import annotations

import itertools
import os
import select
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import msgspec
import trio
import trio.testing

from actors._framing import MAX_FRAME_SIZE, FrameDecoder
from actors._wire import Notify, decode_message
from vessel import _ipc
from vessel.host._box_report import BoxReport

from ..actors._support import lane_pipes, parent_channel


def _boxed(data: bytes) -> list[_ipc.Boxed]:
    """The ``guest.box`` reports in raw bytes read from the pipe, as the daemon decodes
    them."""
    reports = []
    for frame in FrameDecoder(MAX_FRAME_SIZE).feed(data):
        message = decode_message(frame)
        assert isinstance(message, Notify), message
        assert message.method == _ipc.GUEST_BOX
        reports.append(_ipc.decode(message.body, _ipc.Boxed))
    return reports


def _boxed_states(data: bytes) -> list[bool]:
    return [report.occupied for report in _boxed(data)]


def _on_thread(fn: Callable[..., object], *args: object) -> None:
    """Run ``fn`` on a thread of its own, as the watchdog does, and wait for it (a
    report that blocked would fail here, not hang)."""
    thread = threading.Thread(target=fn, args=args)
    thread.start()
    thread.join(timeout=5)
    assert not thread.is_alive(), "the report blocked its thread"


async def test_a_report_leaves_from_the_confining_thread_without_the_trio_loop() -> None:
    lane, up_read, down_write = lane_pipes("module/lane2")
    try:
        box = BoxReport(lane, trio.lowlevel.current_trio_token())
        box.started()
        # This test's trio loop does not run between here and the read: nothing is handed
        # to it, the frame is in the pipe when changed() returns.
        _on_thread(box.changed, True, "runaway")
        poller = select.poll()
        poller.register(up_read, select.POLLIN)
        assert poller.poll(0), "the report waited for the trio loop"
        assert _boxed_states(os.read(up_read, 65536)) == [True]
        _on_thread(box.changed, False, "runaway")
        assert _boxed_states(os.read(up_read, 65536)) == [False]
    finally:
        lane.close()
        os.close(up_read)
        os.close(down_write)


async def test_start_up_work_is_not_reported_and_nested_work_is_one_report() -> None:
    lane, up_read, down_write = lane_pipes("module/lane2")
    os.set_blocking(up_read, False)
    try:
        box = BoxReport(lane, trio.lowlevel.current_trio_token())
        box.changed(True, "runaway")  # instantiating the component at start: not misbehaviour
        box.changed(False, "runaway")
        box.started()
        box.changed(True, "restart")  # a start-up after a crash holds the box...
        box.changed(True, "runaway")  # ...and so does a runaway meanwhile: still one report
        box.changed(False, "restart")
        box.changed(False, "runaway")
        reports = _boxed(os.read(up_read, 65536))
        assert [r.occupied for r in reports] == [True, False]
        assert reports[0].why == "restart"  # what the daemon's log line says
    finally:
        lane.close()
        os.close(up_read)
        os.close(down_write)


class _Received:
    """The states a parent channel has received, and a way to wait for one."""

    def __init__(self) -> None:
        self.states: list[bool] = []
        self._changed = trio.Event()

    def add(self, state: bool) -> None:
        self.states.append(state)
        self._changed.set()
        self._changed = trio.Event()

    async def until(self, done: Callable[[list[bool]], bool]) -> None:
        while not done(self.states):
            await self._changed.wait()


@asynccontextmanager
async def _daemon_end(up_read: int, down_write: int) -> AsyncIterator[_Received]:
    """A parent channel reading the pipe, as the daemon does."""
    received = _Received()

    async def on_notify(method: str, body: msgspec.Raw) -> None:
        assert method == _ipc.GUEST_BOX
        received.add(_ipc.decode(body, _ipc.Boxed).occupied)

    async def unexpected(method: str, body: msgspec.Raw) -> None:
        raise AssertionError(f"the report made a request: {method}")

    channel = parent_channel(
        up_read, down_write, on_request=unexpected, on_notify=on_notify, name="daemon"
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(channel.run)
        yield received
        await channel.aclose()


async def test_on_a_full_pipe_changes_are_folded_and_the_latest_goes_out_later() -> None:
    lane, up_read, down_write = lane_pipes("module/lane2")
    box = BoxReport(lane, trio.lowlevel.current_trio_token())
    box.started()
    # A daemon that does not read for a while: flip the state until the pipe is full.
    writable = select.poll()
    writable.register(lane.write_fileno(), select.POLLOUT)
    sent = 0
    while True:
        _on_thread(box.changed, sent % 2 == 0, "runaway")
        sent += 1
        assert sent < 100_000, "the pipe never filled"
        if not writable.poll(0):
            break
    # Full (the last flip may have found it full already). These are folded, and return
    # at once (_on_thread fails on a blocked thread).
    filled = sent
    for _ in range(3):
        _on_thread(box.changed, sent % 2 == 0, "runaway")
        sent += 1
    latest = sent % 2 == 1  # the state after the last flip
    try:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                await nursery.start(box.run)
                async with _daemon_end(up_read, down_write) as received:
                    await received.until(
                        lambda states: len(states) >= filled - 1 and states[-1] == latest
                    )
                    await trio.testing.wait_all_tasks_blocked()
                    states = received.states
                    # Alternating, as sent, with the folded changes sent as one: the latest.
                    assert all(a != b for a, b in itertools.pairwise(states))
                    assert len(states) <= filled + 1
                    # The pipe has room again: the next change goes out at once.
                    _on_thread(box.changed, not latest, "runaway")
                    await received.until(lambda states: states[-1] != latest)
                nursery.cancel_scope.cancel()
    finally:
        lane.close()
