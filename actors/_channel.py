"""Request/reply, notifications and heartbeats over a pair of trio byte streams.

A :class:`Channel` is symmetric: both ends can send requests and both answer them. Inside
:meth:`Channel.run` three kinds of task cooperate:

* the *reader* decodes frames and dispatches them; it answers Pings itself, so a busy
  handler never delays a heartbeat, and it completes the caller's pending request on a
  Reply, once every notification the peer sent before that Reply has been handled (so a
  caller that gets its answer also sees what the peer said on the way: a module's log
  lines and events of the call it answers);
* the *writer* owns the send stream and coalesces every queued frame into one write;
* one task per incoming Request (a slow handler never blocks the others), at most
  ``max_concurrent_requests`` at once: past that a request is refused at once with an
  ErrorReply (``TooManyRequests``) instead of spawning, so a peer flooding requests cannot
  grow our task count and memory without bound; and one task for notifications (so they
  are handled in the order they were sent).
"""

from __future__ import annotations

import contextlib
import enum
import errno
import itertools
import logging
import math
import os
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import trio

from ._errors import (
    ActorError,
    ChannelBroken,
    ChannelClosed,
    FrameTooLarge,
    ProtocolError,
    RemoteError,
)
from ._framing import MAX_FRAME_SIZE, FrameDecoder
from ._spin import spin_until
from ._wire import (
    ErrorReply,
    Message,
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

__all__ = ["Channel", "ChannelStatistics", "NotifyHandler", "PendingRequest", "RequestHandler"]

logger = logging.getLogger("actors")

RequestHandler = Callable[[str, msgspec.Raw], Awaitable[Any]]
NotifyHandler = Callable[[str, msgspec.Raw], Awaitable[None]]

# Pipes hold 64 KiB by default; reading more per call buys nothing.
_READ_SIZE = 65536
# Reads in a row that found data without waiting before the reader lets other tasks run.
_READS_BEFORE_YIELD = 8
# Coalescing pays off for many small frames; past this size a write is already efficient
# and a bigger batch would only delay the first frame in it.
_MAX_BATCH_BYTES = 256 * 1024
# Queued notifications handled in one step of the notification task before it lets
# other tasks run.
NOTIFY_BATCH = 16
#: Requests from the peer handled at once by default; more are refused, not queued.
MAX_CONCURRENT_REQUESTS = 1024
#: Seconds a channel that has ended still gives its handler to the notifications it
#: received before (see run()).
NOTIFY_DRAIN_TIMEOUT = 2.0


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    CLOSED = "closed"
    BROKEN = "broken"


@dataclass(frozen=True)
class ChannelStatistics:
    """A snapshot of a channel's counters (see :meth:`Channel.statistics`)."""

    pending_requests: int
    frames_sent: int
    frames_received: int
    bytes_sent: int
    bytes_received: int


class _Call:
    """One outstanding request or ping, completed by the reader or by a channel failure."""

    __slots__ = ("done", "error", "value")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.value: msgspec.Raw | None = None
        self.error: ActorError | None = None

    def finish(self, value: msgspec.Raw | None = None, error: ActorError | None = None) -> None:
        if not self.done.is_set():
            self.value = value
            self.error = error
            self.done.set()


@dataclass(slots=True)
class _HeldReply:
    """A reply that arrived behind notifications not handled yet (see ``_finish``)."""

    after: int  # the notifications that must be handled first (a count since run)
    call: _Call
    value: msgspec.Raw | None
    error: ActorError | None


class PendingRequest:
    """A request sent by :meth:`Channel.send_request`; await :meth:`result` once."""

    __slots__ = ("_call", "_channel", "_deadline", "_id", "_unsent")

    def __init__(
        self,
        channel: Channel,
        request_id: int,
        call: _Call,
        unsent: bytearray | None,
        deadline: float,
    ) -> None:
        self._channel = channel
        self._id = request_id
        self._call = call
        self._unsent = unsent
        self._deadline = deadline

    async def result(self, *, spin: float = 0.0) -> msgspec.Raw:
        """The reply's raw body; raises what :meth:`Channel.request` raises.

        ``spin`` (seconds): wait actively for that long before sleeping. The task keeps
        yielding to every other task, so nothing is blocked, but the event loop never
        goes to sleep in the kernel while it does: a reply that comes within ``spin`` is
        seen at the next turn of the loop instead of after a wake-up of this process
        (tens of microseconds on a VM, see docs/performance.md). It costs a core for up
        to ``spin``; only one task of a run spins at a time, and never when the
        machine's other processes leave no core idle (``actors._spin``) or there is only
        one usable core: there it would only delay the peer it waits for.
        """
        call = self._call
        try:
            with trio.fail_at(self._deadline):
                if self._unsent is not None:
                    frame, self._unsent = self._unsent, None
                    await self._channel._enqueue(frame)
                if spin > 0 and not call.done.is_set():
                    await spin_until(call.done, spin)
                await call.done.wait()
        finally:
            self._channel._pending.pop(self._id, None)
        if call.error is not None:
            raise call.error
        assert call.value is not None
        return call.value


class Channel:
    """A bidirectional request/reply + notification channel over two trio streams.

    The channel owns both streams: they are closed when :meth:`run` ends or on
    :meth:`aclose`. ``on_notify`` must not wait for a reply on this same channel: a
    reply is held until the notifications before it have been handled.
    """

    def __init__(
        self,
        send_stream: trio.abc.SendStream,
        receive_stream: trio.abc.ReceiveStream,
        *,
        name: str,
        on_request: RequestHandler,
        on_notify: NotifyHandler | None = None,
        max_frame_size: int = MAX_FRAME_SIZE,
        send_queue_size: int = 1024,
        max_concurrent_requests: int = MAX_CONCURRENT_REQUESTS,
    ) -> None:
        if max_concurrent_requests < 1:
            raise ValueError(
                f"max_concurrent_requests must be at least 1, got {max_concurrent_requests}"
            )
        self.name = name
        self._max_concurrent_requests = max_concurrent_requests
        self._active_requests = 0
        self.requests_refused = 0
        self._send_stream = send_stream
        #: The pipe's file descriptor, for writes that skip the writer task (None for
        #: other streams, which always go through it).
        self._fd = send_stream.fileno() if isinstance(send_stream, trio.lowlevel.FdStream) else None
        self._receive_stream = receive_stream
        #: The pipe to read straight from (None for other streams): see _receive.
        self._read_fd = (
            receive_stream.fileno() if isinstance(receive_stream, trio.lowlevel.FdStream) else None
        )
        self._reads_in_a_row = 0
        self._on_request = on_request
        self._on_notify = on_notify
        self._max_frame_size = max_frame_size
        self._outbox_send, self._outbox_receive = trio.open_memory_channel[bytes | bytearray](
            send_queue_size
        )
        self._notify_send, self._notify_receive = trio.open_memory_channel[Notify](send_queue_size)
        self._state = _State.NEW
        self._failure: tuple[type[ActorError], str] | None = None
        self._run_called = False
        self._protocol_error: ProtocolError | None = None
        self._run_scope: trio.CancelScope | None = None
        self._run_finished = trio.Event()
        # The reader's state lives here, not in its frame: after an abort with a drain
        # (see abort()), reading goes on where the cancelled reader stopped.
        self._decoder = FrameDecoder(max_frame_size)
        self._undispatched: deque[bytes] = deque()
        self._drain_until: float | None = None
        self._request_ids = itertools.count(1)
        self._ping_seqs = itertools.count(1)
        self._pending: dict[int, _Call] = {}
        self._pings: dict[int, _Call] = {}
        #: Notifications queued for the handler so far, and handled so far: a Reply that
        #: arrives while the two differ waits in _held for the ones before it.
        self._notes_queued = 0
        self._notes_handled = 0
        self._held: deque[_HeldReply] = deque()
        self._frames_sent = 0
        self._frames_received = 0
        self._bytes_sent = 0
        self._bytes_received = 0
        #: ``trio.current_time()`` when we last took a frame from the peer (None: never).
        self.last_received_at: float | None = None

    def __repr__(self) -> str:
        return (
            f"<Channel {self.name!r} {self._state.value}, pending={len(self._pending)}, "
            f"sent={self._frames_sent}, received={self._frames_received}>"
        )

    # ------------------------------------------------------------------ public API

    @property
    def closed(self) -> bool:
        """True once the channel was closed by us or broken by the peer."""
        return self._failure is not None

    @property
    def broken(self) -> bool:
        """True if the channel ended because of the peer (or :meth:`abort`), not us."""
        return self._state is _State.BROKEN

    @property
    def protocol_error(self) -> ProtocolError | None:
        """What the peer sent that broke the protocol, once :meth:`run` hit it."""
        return self._protocol_error

    def statistics(self) -> ChannelStatistics:
        """Return an immutable snapshot of the channel's counters."""
        return ChannelStatistics(
            pending_requests=len(self._pending),
            frames_sent=self._frames_sent,
            frames_received=self._frames_received,
            bytes_sent=self._bytes_sent,
            bytes_received=self._bytes_received,
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the channel until the peer closes it or :meth:`aclose` is called.

        Calls ``task_status.started()`` once frames can flow. Returns normally on end of
        stream, on a broken stream and after :meth:`aclose`; raises :class:`ProtocolError`
        if the peer sent something undecodable. Either way every pending request has
        failed (:class:`ChannelBroken` or :class:`ChannelClosed`) and both streams are
        closed when it returns. Can be called once.
        """
        if self._run_called:
            raise RuntimeError(f"{self!r}: run() can only be called once")
        self._run_called = True
        protocol_error: ProtocolError | None = None
        try:
            if self._failure is None:
                self._state = _State.RUNNING
                async with trio.open_nursery() as outer:
                    drained = trio.Event()
                    outer.start_soon(self._notification_loop, drained)
                    async with trio.open_nursery() as nursery:
                        self._run_scope = nursery.cancel_scope
                        nursery.start_soon(self._writer)
                        task_status.started()
                        try:
                            await self._reader(nursery)
                        except ProtocolError as exc:
                            protocol_error = self._protocol_error = exc
                            self._fail(ChannelBroken, f"channel {self.name!r}: {exc}")
                        nursery.cancel_scope.cancel()
                    if self._drain_until is not None:
                        with trio.move_on_at(self._drain_until):
                            await self._drain()
                    self._notify_send.close()
                    # The peer is gone or the channel was closed, but what it sent
                    # before still counts (a module's last events and log lines, sent
                    # just before it crashed): handle the notifications already
                    # queued, bounded, since a handler may hang. (After an abort with a
                    # drain, _drain has first read the rest of what the peer wrote.)
                    with trio.move_on_after(NOTIFY_DRAIN_TIMEOUT):
                        await drained.wait()
                    outer.cancel_scope.cancel()
            else:
                # Closed or aborted before it ran (a child that died at once): there is
                # nothing to serve, but the caller still gets its started() and cleanup.
                task_status.started()
        finally:
            # Reached on cancellation from outside too: nobody will ever answer now.
            self._fail(ChannelClosed, f"channel {self.name!r} was closed")
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(self._send_stream)
                await trio.aclose_forcefully(self._receive_stream)
            self._run_finished.set()
        if protocol_error is not None:
            raise protocol_error

    async def request(
        self,
        method: str,
        body: Any,
        *,
        timeout: float | None = None,
    ) -> msgspec.Raw:
        """Call ``method`` on the peer and return the raw msgpack reply body.

        Raises :class:`RemoteError` if the peer's handler raised, :class:`ChannelBroken`
        if the peer goes away first, :class:`ChannelClosed` after :meth:`aclose`,
        :class:`FrameTooLarge` if ``body`` does not fit in one frame, and
        :class:`trio.TooSlowError` after ``timeout`` seconds (a reply arriving later is
        dropped). Waiting in a full send queue counts against ``timeout``.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        return await self.send_request(method, body, timeout=timeout).result()

    def send_request(
        self, method: str, body: Any, *, timeout: float | None = None
    ) -> PendingRequest:
        """Send a request now, without waiting, and return its :class:`PendingRequest`.

        :meth:`request` in two halves, for a caller that has more to do before it waits
        (or that would otherwise start a task only to send): the frame is written, or
        queued, before this returns. The reply must then be awaited with
        :meth:`PendingRequest.result`, exactly once; ``timeout`` counts from now. Raises
        what :meth:`request` raises before it would wait.
        """
        self._raise_if_closed()
        request_id = next(self._request_ids)
        frame = encode_message(Request(request_id, method, encode_body(body)), self._max_frame_size)
        call = _Call()
        self._pending[request_id] = call
        deadline = math.inf if timeout is None else trio.current_time() + timeout
        unsent: bytearray | None = None
        if not self._write_now(frame):
            try:
                self._outbox_send.send_nowait(frame)
            except trio.WouldBlock:
                unsent = frame  # result() waits for room in the queue
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                del self._pending[request_id]
                self._raise_if_closed()
                raise
        return PendingRequest(self, request_id, call, unsent, deadline)

    async def notify(self, method: str, body: Any) -> None:
        """Send a one-way message, waiting for room in the send queue if it is full."""
        self._raise_if_closed()
        await self._enqueue(self._notify_frame(method, body))

    def notify_nowait(self, method: str, body: Any) -> None:
        """Send a one-way message without blocking, for synchronous callbacks.

        Raises :class:`trio.WouldBlock` when the send queue is full.
        """
        self._raise_if_closed()
        frame = self._notify_frame(method, body)
        if self._write_now(frame):
            return
        try:
            self._outbox_send.send_nowait(frame)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            self._raise_if_closed()
            raise

    async def ping(self, *, timeout: float) -> float:
        """Return the round-trip time in seconds of a Ping answered by the peer's reader.

        Raises :class:`trio.TooSlowError` if no Pong arrives within ``timeout``.
        """
        self._raise_if_closed()
        seq = next(self._ping_seqs)
        call = _Call()
        self._pings[seq] = call
        started = trio.current_time()
        try:
            with trio.fail_after(timeout):
                await self._enqueue(encode_message(Ping(seq)))
                await call.done.wait()
        finally:
            del self._pings[seq]
        if call.error is not None:
            raise call.error
        return trio.current_time() - started

    def abort(self, reason: str, *, drain: float = 0.0) -> None:
        """Declare the peer gone: fail pending calls with :class:`ChannelBroken` now.

        For owners that learn about the peer's death from elsewhere (a child process was
        reaped) before the stream reports it. :meth:`run` returns promptly afterwards,
        or, with ``drain`` (seconds), once it has read what the peer wrote before it
        went (to end of stream, for at most ``drain`` seconds: a grandchild may hold the
        pipe open) and handled the notifications in it — a module's last events must
        not be lost because its exit was noticed first. Requests and replies in that
        rest are dropped: nobody can answer them or waits for them any more.
        """
        if drain > 0 and self._failure is None and self._run_scope is not None:
            self._drain_until = trio.current_time() + drain
        self._fail(ChannelBroken, reason)

    async def finished(self) -> None:
        """Wait until :meth:`run` has returned (at once if it never ran)."""
        if self._run_called:
            await self._run_finished.wait()

    async def aclose(self) -> None:
        """Close the channel from this side; pending calls fail with :class:`ChannelClosed`.

        Queued frames that were not written yet are dropped. When it returns, both
        streams are closed. Idempotent.
        """
        was_running = self._run_scope is not None
        self._fail(ChannelClosed, f"channel {self.name!r} was closed")
        if was_running:
            # Called from a handler inside run(), this wait is cancelled with the handler,
            # which is what closing the channel from within should do.
            await self._run_finished.wait()
        else:
            await trio.aclose_forcefully(self._send_stream)
            await trio.aclose_forcefully(self._receive_stream)

    # ------------------------------------------------------------------ internals

    def _notify_frame(self, method: str, body: Any) -> bytearray:
        return encode_message(Notify(method, encode_body(body)), self._max_frame_size)

    def _raise_if_closed(self) -> None:
        if self._failure is not None:
            error_type, message = self._failure
            raise error_type(message)

    def _write_now(self, frame: bytes | bytearray) -> bool:
        """Write ``frame`` straight to the pipe when nothing is queued and the writer task
        is idle; False when it must go through the queue instead.

        Waking the writer task costs a trip through trio's scheduler per frame, several
        times the write itself (bench/: a request/reply round trip between two processes
        spent most of its time there). Only when the writer is parked on an empty queue
        is the order of frames certain, and a full pipe (EAGAIN) or an error leaves the
        frame to the writer, which waits for room or fails the channel.
        """
        if self._fd is None or self._state is not _State.RUNNING:
            return False
        stats = self._outbox_send.statistics()
        # The writer must be parked in receive() with nothing handed to it: a frame given
        # to a waiting receiver never shows in the buffer.
        if stats.current_buffer_used or stats.tasks_waiting_receive != 1:
            return False
        try:
            written = os.write(self._fd, frame)
        except OSError:  # BlockingIOError (pipe full) included
            return False
        if written < len(frame):
            # The queue is empty and the writer parked: the rest is the next thing written.
            self._outbox_send.send_nowait(bytes(frame[written:]))
        else:
            self._frames_sent += 1
            self._bytes_sent += written
        return True

    async def _enqueue(self, frame: bytes | bytearray) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._write_now(frame):
            return
        try:
            await self._outbox_send.send(frame)
        except trio.ClosedResourceError:
            # _fail() closed the queue under us; report why, not the queue detail.
            self._raise_if_closed()
            raise

    def _fail(self, error_type: type[ActorError], message: str) -> None:
        """Enter the terminal state; the first cause wins, later ones are ignored."""
        if self._failure is not None:
            return
        self._failure = (error_type, message)
        self._state = _State.CLOSED if error_type is ChannelClosed else _State.BROKEN
        # A reply that came is an answer, even if the notifications before it will never
        # be handled now (the handler may be the reason the channel is going away).
        while self._held:
            reply = self._held.popleft()
            reply.call.finish(reply.value, reply.error)
        for call in (*self._pending.values(), *self._pings.values()):
            call.finish(error=error_type(message))
        self._outbox_send.close()
        if self._drain_until is None:
            self._notify_send.close()
        if self._run_scope is not None:
            self._run_scope.cancel()

    async def _receive(self) -> bytes | bytearray:
        """The next bytes from the peer, like ``receive_some``, with fewer task switches.

        ``FdStream.receive_some`` yields to the scheduler before every read, even when
        the data is already there: one more trip through the run loop per message
        (bench/: a call round trip took ~8 of them in the daemon). Reading the pipe
        first and waiting only when it is empty leaves one; to stay fair to other tasks
        when the peer keeps the pipe full, it still yields after a run of reads that
        never had to wait.
        """
        fd = self._read_fd
        if fd is None:
            return await self._receive_stream.receive_some(_READ_SIZE)
        if self._reads_in_a_row >= _READS_BEFORE_YIELD:
            self._reads_in_a_row = 0
            await trio.lowlevel.checkpoint()
        while True:
            try:
                data = os.read(fd, _READ_SIZE)
            except BlockingIOError:
                self._reads_in_a_row = 0
                await trio.lowlevel.wait_readable(fd)
                continue
            except OSError as exc:
                if exc.errno == errno.EBADF:
                    raise trio.ClosedResourceError("the pipe was already closed") from None
                raise trio.BrokenResourceError(f"reading the pipe failed: {exc!r}") from exc
            self._reads_in_a_row += 1
            return data

    async def _reader(self, nursery: trio.Nursery) -> None:
        while True:
            try:
                data = await self._receive()
            except trio.ClosedResourceError:
                return
            except (trio.BrokenResourceError, OSError) as exc:
                self._fail(ChannelBroken, f"channel {self.name!r}: receive failed: {exc!r}")
                return
            if not data:
                self._fail(ChannelBroken, f"channel {self.name!r}: the peer closed the channel")
                return
            self._take(data)
            while self._undispatched:
                # Per frame, not per read: one read can hold hundreds of frames that take
                # seconds to consume when we are the slow side.
                self.last_received_at = trio.current_time()
                await self._dispatch(decode_message(self._undispatched[0]), nursery)
                # Taken off only once dispatched: a cancelled dispatch left it for _drain.
                self._undispatched.popleft()

    def _take(self, data: bytes | bytearray) -> None:
        self._bytes_received += len(data)
        try:
            frames = self._decoder.feed(data)
        except FrameTooLarge as exc:
            raise ProtocolError(str(exc)) from exc
        self._frames_received += len(frames)
        self._undispatched.extend(frames)

    async def _drain(self) -> None:
        """After an abort with a drain: hand on the notifications the peer sent before it
        went, up to end of stream (the caller bounds the time)."""
        while True:
            while self._undispatched:
                try:
                    message = decode_message(self._undispatched.popleft())
                except ProtocolError:
                    return
                if isinstance(message, Notify):
                    await self._notify_send.send(message)
                    self._notes_queued += 1
            try:
                data = await self._receive()
            except (trio.ClosedResourceError, trio.BrokenResourceError, OSError):
                return
            if not data:
                return
            try:
                self._take(data)
            except ProtocolError:
                return

    async def _dispatch(self, message: Message, nursery: trio.Nursery) -> None:
        match message:
            case Request(id=request_id, method=method):
                if self._active_requests >= self._max_concurrent_requests:
                    # Refuse at once, from the reader: answering is cheap and bounded (it
                    # waits for room in the send queue, which pushes back on the peer).
                    self.requests_refused += 1
                    reply = ErrorReply(
                        request_id,
                        "TooManyRequests",
                        f"too many concurrent requests ({self._max_concurrent_requests} "
                        f"already in progress); {method!r} refused",
                        self.name,
                    )
                    await self._send_internal(encode_message(reply, self._max_frame_size))
                    return
                self._active_requests += 1
                nursery.start_soon(self._handle_request, message)
            case Reply(id=request_id, body=body):
                # A reply whose caller already gave up (timeout) finds no entry: dropped.
                if (call := self._pending.get(request_id)) is not None:
                    self._finish(call, body, None)
            case ErrorReply(id=request_id, type=type_name, message=text, actor=actor):
                if (call := self._pending.get(request_id)) is not None:
                    self._finish(call, None, RemoteError(type_name, text, actor))
            case Notify():
                # Bounded: a flood of notifications pushes back on the peer instead of
                # growing memory. The handler task drains this queue in order. If the
                # channel fails meanwhile the queue is closed: drop the message.
                with contextlib.suppress(trio.ClosedResourceError):
                    try:
                        # No step through the scheduler while there is room: the reader
                        # yields when the pipe is empty anyway (_receive).
                        self._notify_send.send_nowait(message)
                    except trio.WouldBlock:
                        await self._notify_send.send(message)
                    self._notes_queued += 1
            case Ping(seq=seq):
                await self._send_internal(encode_message(Pong(seq)))
            case Pong(seq=seq):
                if (call := self._pings.get(seq)) is not None:
                    call.finish()

    async def _handle_request(self, request: Request) -> None:
        try:
            try:
                result = await self._on_request(request.method, request.body)
                frame = encode_message(Reply(request.id, encode_body(result)), self._max_frame_size)
            except Exception as exc:  # Cancelled is a BaseException: never caught here.
                logger.debug("%s: handler for %r raised", self.name, request.method, exc_info=True)
                frame = encode_error(request.id, exc, self.name, self._max_frame_size)
            await self._send_internal(frame)
        finally:
            self._active_requests -= 1

    async def _send_internal(self, frame: bytes | bytearray) -> None:
        """Queue a frame the channel produces itself (a Pong, a Reply)."""
        if self._write_now(frame):
            return
        # If the channel already failed, the peer is gone and so is the need to answer.
        with contextlib.suppress(trio.ClosedResourceError):
            await self._outbox_send.send(frame)

    async def _notification_loop(self, drained: trio.Event) -> None:
        """Handle notifications in order until the channel ends and the queue is empty."""
        async for message in self._notify_receive:
            await self._handle_notification(message)
            # A burst (a module emitting) arrives many frames per read: handle what else
            # is queued in this same step, a step through the scheduler saved per
            # message, but only a few, so other tasks keep their turn.
            for _ in range(NOTIFY_BATCH - 1):
                try:
                    message = self._notify_receive.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                await self._handle_notification(message)
        drained.set()

    async def _handle_notification(self, message: Notify) -> None:
        try:
            if self._on_notify is not None:
                await self._on_notify(message.method, message.body)
        except Exception:
            # A notification has nobody to report to; one bad message must not stop
            # the ones behind it.
            logger.exception("%s: notification handler for %r raised", self.name, message.method)
        finally:
            self._notes_handled += 1
            held = self._held
            while held and held[0].after <= self._notes_handled:
                reply = held.popleft()
                reply.call.finish(reply.value, reply.error)

    def _finish(self, call: _Call, value: msgspec.Raw | None, error: ActorError | None) -> None:
        """Complete a call with its reply, or hold the reply until the notifications the
        peer sent before it have been handled: what a peer says, it says in order.

        So the notification handler must not wait for a reply on this same channel (it
        would wait for itself); a ping is never held.
        """
        if self._notes_handled == self._notes_queued:
            call.finish(value, error)
        else:
            self._held.append(_HeldReply(self._notes_queued, call, value, error))

    async def _writer(self) -> None:
        outbox = self._outbox_receive
        while True:
            try:
                frame = await outbox.receive()
            except trio.EndOfChannel:
                return  # _fail() closed the queue: the channel is done.
            batch = [frame]
            size = len(frame)
            while size < _MAX_BATCH_BYTES:
                try:
                    frame = outbox.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                batch.append(frame)
                size += len(frame)
            data = batch[0] if len(batch) == 1 else b"".join(batch)
            try:
                await self._send_stream.send_all(data)
            except trio.ClosedResourceError:
                return
            except (trio.BrokenResourceError, OSError) as exc:
                self._fail(ChannelBroken, f"channel {self.name!r}: send failed: {exc!r}")
                return
            self._frames_sent += len(batch)
            self._bytes_sent += size
