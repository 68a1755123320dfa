"""A bounded mailbox whose messages are handled one at a time, in order."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import trio

from ._errors import MailboxClosed, MailboxFull

__all__ = ["Mailbox", "MailboxStatistics"]

T = TypeVar("T")


@dataclass(frozen=True)
class MailboxStatistics:
    """A snapshot of a mailbox (see :meth:`Mailbox.statistics`)."""

    queued: int
    capacity: int
    handled: int


class Mailbox(Generic[T]):
    """Actor-style message queue: many senders, one :meth:`serve` loop.

    Handling one message at a time is the point: the handler owns its state without
    locks, and messages from one sender are handled in the order they were sent.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError("capacity must be >= 0")
        self._capacity = capacity
        self._send_channel, self._receive_channel = trio.open_memory_channel[T](capacity)
        self._handled = 0
        self._serving = False

    def __repr__(self) -> str:
        stats = self.statistics()
        return f"<Mailbox {stats.queued}/{stats.capacity} queued, {stats.handled} handled>"

    async def send(self, message: T) -> None:
        """Queue ``message``, waiting while the mailbox is full (backpressure).

        Raises :class:`MailboxClosed` after :meth:`close`.
        """
        try:
            await self._send_channel.send(message)
        except trio.ClosedResourceError:
            raise MailboxClosed("the mailbox is closed") from None

    def send_nowait(self, message: T) -> None:
        """Queue ``message`` or raise :class:`MailboxFull` (or :class:`MailboxClosed`)."""
        try:
            self._send_channel.send_nowait(message)
        except trio.WouldBlock:
            raise MailboxFull(f"the mailbox is full ({self._capacity} messages)") from None
        except trio.ClosedResourceError:
            raise MailboxClosed("the mailbox is closed") from None

    def close(self) -> None:
        """Refuse new messages; :meth:`serve` handles those already queued, then returns."""
        self._send_channel.close()

    async def serve(
        self,
        handler: Callable[[T], Awaitable[None]],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Hand each message to ``handler``, one at a time, until closed and drained.

        An exception from ``handler`` propagates and ends serving: the actor crashed,
        which is its supervisor's business. Only one ``serve`` may run at a time.
        """
        if self._serving:
            raise RuntimeError("Mailbox.serve() is already running")
        self._serving = True
        try:
            task_status.started()
            async for message in self._receive_channel:
                await handler(message)
                self._handled += 1
        finally:
            self._serving = False

    def statistics(self) -> MailboxStatistics:
        """Return an immutable snapshot: messages queued, capacity, messages handled."""
        return MailboxStatistics(
            queued=self._send_channel.statistics().current_buffer_used,
            capacity=self._capacity,
            handled=self._handled,
        )
