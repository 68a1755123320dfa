"""Mailbox: bounded, one message at a time, in order, drains on close."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from actors import Mailbox, MailboxClosed, MailboxFull


async def test_messages_are_handled_one_at_a_time_in_order() -> None:
    """serve() never runs two handlers at once and keeps the sending order."""
    mailbox: Mailbox[int] = Mailbox(capacity=10)
    seen: list[int] = []
    active = 0

    async def handler(message: int) -> None:
        nonlocal active
        active += 1
        assert active == 1
        await trio.lowlevel.checkpoint()
        seen.append(message)
        active -= 1

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(mailbox.serve, handler)
            for i in range(30):
                await mailbox.send(i)
            mailbox.close()
    assert seen == list(range(30))
    assert mailbox.statistics().handled == 30


async def test_send_nowait_raises_mailbox_full() -> None:
    """A full mailbox refuses send_nowait with MailboxFull; statistics show the queue."""
    mailbox: Mailbox[str] = Mailbox(capacity=2)
    mailbox.send_nowait("a")
    mailbox.send_nowait("b")
    with pytest.raises(MailboxFull):
        mailbox.send_nowait("c")
    stats = mailbox.statistics()
    assert (stats.queued, stats.capacity, stats.handled) == (2, 2, 0)
    await trio.lowlevel.checkpoint()


async def test_send_waits_for_room(autojump_clock: trio.testing.MockClock) -> None:
    """send() applies backpressure: it blocks while the mailbox is full, then completes."""
    mailbox: Mailbox[int] = Mailbox(capacity=1)
    handled: list[int] = []

    async def slow(message: int) -> None:
        await trio.sleep(10)
        handled.append(message)

    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            mailbox.send_nowait(1)
            start = trio.current_time()
            nursery.start_soon(mailbox.serve, slow)
            await mailbox.send(2)  # 1 is being handled, so the queue has room at once.
            await mailbox.send(3)  # Queue full until 1 is done at t=10.
            assert trio.current_time() - start == 10
            mailbox.close()
    assert handled == [1, 2, 3]


async def test_close_drains_then_refuses() -> None:
    """After close(), queued messages are still handled, new ones raise MailboxClosed."""
    mailbox: Mailbox[int] = Mailbox(capacity=5)
    mailbox.send_nowait(1)
    mailbox.send_nowait(2)
    mailbox.close()
    with pytest.raises(MailboxClosed):
        mailbox.send_nowait(3)
    with pytest.raises(MailboxClosed):
        await mailbox.send(3)
    handled: list[int] = []

    async def handler(message: int) -> None:
        handled.append(message)

    with trio.fail_after(5):
        await mailbox.serve(handler)
    assert handled == [1, 2]


async def test_handler_error_ends_serving() -> None:
    """A handler exception propagates out of serve(): the actor crashed, for its
    supervisor to see."""
    mailbox: Mailbox[int] = Mailbox(capacity=1)
    mailbox.send_nowait(1)

    async def handler(message: int) -> None:
        raise ValueError("bad message")

    with trio.fail_after(5), pytest.raises(ValueError, match="bad message"):
        await mailbox.serve(handler)
