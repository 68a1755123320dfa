"""The child's synchronous end of a lane: one thread, blocking calls, no event loop.

A *lane* is an extra channel between a process actor and its child (``ProcessSpec.lanes``).
The parent serves it like any :class:`~actors.Channel`; the child serves it from one
dedicated thread with :class:`BlockingChannel`, which reads a request, lets the thread
handle it and writes the reply with plain system calls. That is the whole point: on the
main channel a request goes reader task → handler task → (worker thread and back) →
writer, and each of those hand-offs costs a trip through the scheduler, several times
the pipe round trip itself. A lane has none of them, so it suits work that a single
thread does one piece at a time anyway (in Vessel: the guest's commands and the host
calls it makes while handling them).

The wire format is the channel's (``_wire``), so the parent cannot tell the difference.
A lane carries no heartbeats of its own: the main channel's tell whether the child lives.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import select
import time
from collections import deque
from typing import Any

import msgspec

from ._errors import ChannelBroken, ChannelClosed, FrameTooLarge, ProtocolError, RemoteError
from ._framing import MAX_FRAME_SIZE, FrameDecoder
from ._wire import (
    ErrorReply,
    Notify,
    Ping,
    Pong,
    Reply,
    Request,
    decode_message,
    encode_body,
    encode_error,
    encode_message,
)

__all__ = ["BlockingChannel", "LaneTimeout"]

_READ_SIZE = 65536
# Frames queued by reply()/notify() are written together (one system call, and one
# wake-up of the parent's reader) once this many are waiting, or at flush().
_BATCH_FRAMES = 32
_BATCH_BYTES = 64 * 1024

Incoming = Request | Notify


class LaneTimeout(ChannelBroken):
    """:meth:`BlockingChannel.request` got no answer in time.

    A :class:`ChannelBroken` because nothing after it can be trusted to be in step: the
    late answer is dropped when it arrives, but the caller gave up on the peer.
    """


class BlockingChannel:
    """A lane's end for one thread: receive requests, reply, notify, make requests.

    Not thread-safe, by design: exactly one thread uses it. Frames written by
    :meth:`reply` and :meth:`notify` may wait in a small batch until :meth:`flush`,
    which :meth:`receive` and :meth:`request` call before they block — so nothing sits
    unwritten while this thread waits, and a burst of answers costs one write.
    """

    def __init__(
        self,
        read_fd: int,
        write_fd: int,
        *,
        name: str,
        max_frame_size: int = MAX_FRAME_SIZE,
    ) -> None:
        self.name = name
        self._read_fd = read_fd
        self._write_fd = write_fd
        # Reads never block (the poll below waits, with a timeout); writes do, which is
        # the back-pressure: a parent that cannot keep up slows this thread down.
        os.set_blocking(read_fd, False)
        os.set_blocking(write_fd, True)
        self._poller = select.poll()
        self._poller.register(read_fd, select.POLLIN)
        self._writable = select.poll()
        self._writable.register(write_fd, select.POLLOUT)
        self._max_frame_size = max_frame_size
        self._decoder = FrameDecoder(max_frame_size)
        self._inbox: deque[Incoming] = deque()
        self._answers: dict[int, Reply | ErrorReply] = {}
        self._waiting: set[int] = set()
        self._ids = itertools.count(1)
        self._out: list[bytes | bytearray] = []
        self._out_bytes = 0
        self._failure: ChannelBroken | ChannelClosed | None = None

    def __repr__(self) -> str:
        state = "open" if self._failure is None else "closed"
        return f"<BlockingChannel {self.name!r} {state}, inbox={len(self._inbox)}>"

    # ------------------------------------------------------------------ public API

    def fileno(self) -> int:
        """The read end, for a ``poll`` that waits on this lane and something else."""
        return self._read_fd

    @property
    def closed(self) -> bool:
        return self._failure is not None

    @property
    def backlog(self) -> int:
        """Requests and notifications read from the pipe and not taken yet."""
        return len(self._inbox)

    def receive(self, timeout: float | None = None) -> Incoming | None:
        """The next request or notification from the parent, in order.

        Waits up to ``timeout`` seconds (None: as long as it takes; 0: not at all) and
        returns None if nothing came. Raises :class:`ChannelBroken` when the parent is
        gone and :class:`ProtocolError` when it sent something undecodable.
        """
        self._raise_if_closed()
        if not self._inbox:
            self._fill(0)
        if not self._inbox and timeout != 0:
            self.flush()
            deadline = None if timeout is None else time.monotonic() + timeout
            while not self._inbox:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                self._fill(remaining)
        return self._inbox.popleft() if self._inbox else None

    def reply(self, request_id: int, body: Any) -> None:
        """Answer request ``request_id``; ``body`` is encoded like a channel reply's."""
        try:
            frame = encode_message(Reply(request_id, encode_body(body)), self._max_frame_size)
        except FrameTooLarge as exc:
            frame = encode_error(request_id, exc, self.name, self._max_frame_size)
        self._queue(frame)

    def reply_error(self, request_id: int, exc: BaseException) -> None:
        """Answer request ``request_id`` with an error: a :class:`RemoteError` over there."""
        self._queue(encode_error(request_id, exc, self.name, self._max_frame_size))

    def notify(self, method: str, body: Any) -> None:
        """Send a one-way message. Raises :class:`FrameTooLarge` if it cannot fit."""
        self._queue(encode_message(Notify(method, encode_body(body)), self._max_frame_size))

    def try_notify(self, method: str, body: Any) -> bool:
        """Send a one-way message now if the pipe has room for it, without blocking;
        False (nothing sent) if it has none, or if the message and what :meth:`notify`
        queued before it (written first) are more than a pipe writes whole (PIPE_BUF).

        For a thread that must never wait for the parent (a watchdog, say): it may try
        again once the pipe is writable (``trio.lowlevel.wait_writable(lane.write_fileno())``).
        """
        self._raise_if_closed()
        frame = encode_message(Notify(method, encode_body(body)), self._max_frame_size)
        size = self._out_bytes + len(frame)
        # A pipe is writable while it has a free page, and a write of at most PIPE_BUF
        # bytes is all-or-nothing: with room for it, the write below cannot block.
        if size > select.PIPE_BUF or not self._writable.poll(0):
            return False
        self._out.append(frame)
        self._out_bytes = size
        self.flush()
        return True

    def write_fileno(self) -> int:
        """The write end, to wait until it is writable after :meth:`try_notify` failed."""
        return self._write_fd

    def request(self, method: str, body: Any, *, timeout: float) -> msgspec.Raw:
        """Call ``method`` on the parent and block for the raw reply body.

        Requests and notifications that arrive meanwhile are kept for :meth:`receive`,
        in order. Raises :class:`RemoteError` if the parent's handler raised,
        :class:`LaneTimeout` after ``timeout`` seconds, :class:`ChannelBroken` if the
        parent is gone.
        """
        self._raise_if_closed()
        request_id = next(self._ids)
        frame = encode_message(Request(request_id, method, encode_body(body)), self._max_frame_size)
        self._waiting.add(request_id)
        try:
            self._queue(frame)
            self.flush()
            deadline = time.monotonic() + timeout
            while request_id not in self._answers:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise LaneTimeout(
                        f"lane {self.name!r}: no answer to {method!r} within {timeout:g} s"
                    )
                self._fill(remaining)
            answer = self._answers.pop(request_id)
        finally:
            self._waiting.discard(request_id)
        if isinstance(answer, ErrorReply):
            raise RemoteError(answer.type, answer.message, answer.actor)
        return answer.body

    def flush(self) -> None:
        """Write every queued frame now (blocking while the pipe is full)."""
        if not self._out:
            return
        data = self._out[0] if len(self._out) == 1 else b"".join(self._out)
        self._out.clear()
        self._out_bytes = 0
        view = memoryview(data)
        try:
            while view:
                written = os.write(self._write_fd, view)
                view = view[written:]
        except OSError as exc:  # BrokenPipeError: the parent is gone
            raise self._fail(ChannelBroken(f"lane {self.name!r}: write failed: {exc!r}")) from None

    def close(self) -> None:
        """Close both ends; queued frames that were not flushed are dropped. Idempotent."""
        if self._failure is None:
            self._failure = ChannelClosed(f"lane {self.name!r} was closed")
        for fd in (self._read_fd, self._write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._read_fd = self._write_fd = -1

    # ------------------------------------------------------------------ internals

    def _raise_if_closed(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _fail(self, error: ChannelBroken) -> ChannelBroken:
        if self._failure is None:
            self._failure = error
        return error

    def _queue(self, frame: bytes | bytearray) -> None:
        self._raise_if_closed()
        self._out.append(frame)
        self._out_bytes += len(frame)
        if len(self._out) >= _BATCH_FRAMES or self._out_bytes >= _BATCH_BYTES:
            self.flush()

    def _fill(self, timeout: float | None) -> None:
        """Wait up to ``timeout`` (0: not at all) for data, then read and sort it."""
        if timeout != 0:
            ms = -1 if timeout is None else max(1, int(timeout * 1000 + 0.999))
            if not self._poller.poll(ms):
                return
        try:
            data = os.read(self._read_fd, _READ_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            raise self._fail(ChannelBroken(f"lane {self.name!r}: read failed: {exc!r}")) from None
        if not data:
            raise self._fail(ChannelBroken(f"lane {self.name!r}: the parent closed the lane"))
        try:
            frames = self._decoder.feed(data)
        except FrameTooLarge as exc:
            error = ProtocolError(str(exc))
            self._fail(ChannelBroken(f"lane {self.name!r}: {error}"))
            raise error from exc
        for frame in frames:
            try:
                message = decode_message(frame)
            except ProtocolError as exc:
                self._fail(ChannelBroken(f"lane {self.name!r}: {exc}"))
                raise
            match message:
                case Request() | Notify():
                    self._inbox.append(message)
                case Reply(id=request_id) | ErrorReply(id=request_id):
                    # An answer nobody waits for any more (its request timed out): dropped.
                    if request_id in self._waiting:
                        self._answers[request_id] = message
                case Ping(seq=seq):
                    self._queue(encode_message(Pong(seq)))
                    self.flush()
                case Pong():
                    pass
