"""The ``/ws`` endpoint: protocol v1 over one WebSocket per client.

Per connection, in one nursery (so a disconnect cancels and cleans up all of it):

* the **reader** (the handler's own task) decodes each frame and dispatches it without
  waiting: a call starts its own task, a (un)subscribe is handed to the pump;
* one task per **call**, so a slow module never holds up another call's response;
* the **pump**, the only consumer of the client's bus subscription: it applies
  (un)subscribes, so it alone knows the order of events and acks (a subscribe's response
  comes after the retained state it replayed), and moves events to the outbox;
* the **writer**, which drains the outbox, the connection's one bounded send queue:
  what has queued up leaves in one socket write (see _write_batch.py).

A client that stops reading fills its outbox (or its bus subscription overflows) and is
closed with 4408; every other client has its own queue and never waits for it.

When the daemon stops, a logged-in client's calls still in flight are answered
``module_unavailable``, and what is queued is sent (for at most ``SHUTDOWN_FLUSH``
seconds), before the close 1001: a client is never left waiting for an answer that will
not come.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Final

import trio
from quart import Blueprint, websocket

from .._errors import CallError
from . import _protocol as proto
from ._app import GatewayState, gateway_state
from ._auth import bearer_token, host_allowed, origin_allowed, token_matches
from ._write_batch import batched_writes, limit_messages

if TYPE_CHECKING:
    from quart.wrappers import Websocket

    from .._bus import Subscription

log = logging.getLogger("vessel.gateway.ws")

ws = Blueprint("ws", __name__)

#: A browser must send its ``auth`` message within this many seconds of connecting.
AUTH_TIMEOUT: Final = 10.0
#: Connections waiting for their ``auth`` message at once (no token yet: anyone can
#: open one); more are closed 1013 "try again later". With the transport's frame limit
#: this bounds what clients without the token hold: 16 x 4 MiB.
MAX_UNAUTHENTICATED: Final = 16
#: The largest ``auth`` message taken (a token is 43 characters).
MAX_AUTH_MESSAGE: Final = 4096
CLOSE_TRY_AGAIN_LATER: Final = 1013
#: Frames a client may have waiting to be sent before it is closed as too slow.
MAX_QUEUED: Final = 1024
#: ...and their total size (characters): a few huge events must not pin the memory.
MAX_QUEUED_CHARS: Final = 16 * 1024 * 1024
#: Live events the bus may hold for a client while its pump is busy (sending a replay at
#: the client's pace); an overflow closes the client as too slow.
SUBSCRIPTION_QUEUE: Final = 4096
#: Calls a client may have running at once; more are answered ``too_many_requests``.
MAX_IN_FLIGHT: Final = 256
#: Subscription patterns one client may hold (each is matched against every event key).
MAX_PATTERNS: Final = 256
#: At most this many queued frames, and characters, leave in one write: what a burst
#: saves in system calls levels off well before, and the first frame waits for the rest.
WRITE_BATCH: Final = 32
WRITE_BATCH_CHARS: Final = 64 * 1024
#: Seconds allowed for sending a close frame.
CLOSE_TIMEOUT: Final = 5.0
#: Seconds a stopping daemon gives a client to receive its queued frames and the answers
#: to its calls in flight before the close frame: well inside Hypercorn's graceful
#: timeout (3 s), after which the connection is cut, close frame or not.
SHUTDOWN_FLUSH: Final = 1.0
#: The answer to a call still in flight when the daemon stops.
SHUTTING_DOWN: Final = (
    "the daemon is shutting down: the call was abandoned before its answer came, so it may "
    "or may not have taken effect"
)

CLOSE_GOING_AWAY: Final = 1001
CLOSE_UNAUTHORIZED: Final = 4401
CLOSE_ORIGIN: Final = 4403
CLOSE_TOO_SLOW: Final = 4408


@ws.websocket("/ws")
async def serve_ws() -> None:
    await _Client(websocket, gateway_state()).serve()


class _Outbox:
    """The one send queue of a client, bounded in frames and in characters.

    ``put_nowait`` refuses (returns False) when full: the client is too slow.
    ``put_when_room`` waits until the queue is at most half full, so a burst the client
    asked for (the retained state a subscribe replays) flows at the client's pace while
    leaving headroom for responses and live events.
    """

    def __init__(self, max_frames: int, max_chars: int) -> None:
        self.max_frames = max_frames
        self.max_chars = max_chars
        self.closed = False
        #: No frame will be added: ``get_batch`` returns [] once the queue is empty.
        self.finished = False
        self._frames: deque[str] = deque()
        self._chars = 0
        self._readable = trio.lowlevel.ParkingLot()
        self._room = trio.lowlevel.ParkingLot()

    def __len__(self) -> int:
        return len(self._frames)

    def _half_full(self) -> bool:
        return len(self._frames) >= self.max_frames // 2 or self._chars >= self.max_chars // 2

    def put_nowait(self, frame: str) -> bool:
        if self.closed:
            return True  # the connection is closing: nothing more is sent
        full = len(self._frames) >= self.max_frames or self._chars + len(frame) > self.max_chars
        if full and self._frames:  # an empty queue takes any one frame, however big
            return False
        self._frames.append(frame)
        self._chars += len(frame)
        self._readable.unpark_all()
        return True

    async def put_when_room(self, frame: str) -> bool:
        while self._half_full() and not self.closed:
            await self._room.park()
        return self.put_nowait(frame)

    async def get_batch(self, max_frames: int, max_chars: int) -> list[str]:
        """The oldest frames, in order: at least one (however big), then as many more
        as fit in ``max_frames`` and ``max_chars``; [] once the queue is empty and
        :meth:`finish` was called."""
        while not self._frames:
            if self.finished:
                return []
            await self._readable.park()
        batch = [self._frames.popleft()]
        size = len(batch[0])
        while self._frames and len(batch) < max_frames and size + len(self._frames[0]) <= max_chars:
            batch.append(self._frames.popleft())
            size += len(batch[-1])
        self._chars -= size
        if not self._half_full():
            self._room.unpark_all()
        return batch

    def finish(self) -> None:
        """What is queued is all there will be: the writer sends it, then stops."""
        self.finished = True
        self._readable.unpark_all()

    def close(self) -> None:
        """Drop what is queued; a waiting writer keeps waiting until it is cancelled."""
        self.closed = True
        self._frames.clear()
        self._chars = 0
        self._room.unpark_all()


async def _raise(exc: Exception) -> str:
    """An answer that is this error (a call refused before it was sent)."""
    raise exc


def _peer(conn: Websocket) -> str:
    client = conn.scope.get("client")
    if not client:
        return "?"
    host, port = client[0], client[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _close_reason(text: str) -> str:
    """A close frame's reason is at most 123 UTF-8 bytes."""
    return text.encode()[:123].decode(errors="ignore")


_Op = proto.Subscribe | proto.Unsubscribe


class _Client:
    """One connected client: auth, then the reader, pump, writer and call tasks."""

    def __init__(self, conn: Websocket, state: GatewayState) -> None:
        self.conn = conn
        self.state = state
        self.peer = _peer(conn)
        self.outbox = _Outbox(MAX_QUEUED, MAX_QUEUED_CHARS)
        self.sub: Subscription | None = None
        #: The request_ids of the calls not answered yet: a call answers only while its
        #: id is here (the daemon's stop answers those left and empties it).
        self.in_flight: set[str] = set()
        #: The daemon is stopping (_answer_and_flush): no frame is read after this.
        self._stopping = False
        #: Calls handing their answer to the outbox or the socket right now (their id has
        #: left in_flight first, so that the client may reuse it at once).
        self._answering = 0
        self._answered = trio.lowlevel.ParkingLot()
        #: Set by the writer when it has sent all of a finished outbox.
        self._flushed = trio.Event()
        # Cancelled when the daemon stops: no frame is read, no event queued after that.
        self._reader_scope = trio.CancelScope()
        self._pump_scope = trio.CancelScope()
        #: (code, reason) of the close frame to send once the tasks have stopped.
        self.closing: tuple[int, str] | None = None
        # Cancelled to end the connection: may happen before it is entered.
        self._scope = trio.CancelScope()
        # (Un)subscribes waiting for the pump, and the scope of its wait for an event,
        # cancelled to wake it for a new one.
        self._ops: deque[_Op] = deque()
        self._pump_idle: trio.CancelScope | None = None
        # One frame is handed to the connection at a time, in queue order (see _send).
        self._sending = False
        self._send_done = trio.lowlevel.ParkingLot()

    def __repr__(self) -> str:
        return (
            f"<ws client {self.peer} queued={len(self.outbox)} in_flight={len(self.in_flight)}"
            f"{f' closing={self.closing}' if self.closing else ''}>"
        )

    # -- lifecycle ---------------------------------------------------------------------

    async def serve(self) -> None:
        headers = self.conn.headers
        origin = headers.get("Origin")
        host = headers.get("Host")
        if not host_allowed(host, self.state.allowed_hosts):
            log.warning("%s: refused: host %r is not served here", self.peer, host)
            self.closing = (
                CLOSE_ORIGIN,
                f"host not allowed: {host} (vessel serve --allowed-host NAME)"[:120],
            )
        elif not origin_allowed(origin, host, self.state.allowed_origins):
            log.warning("%s: refused: origin %s is not allowed", self.peer, origin)
            self.closing = (CLOSE_ORIGIN, f"origin not allowed: {origin}")
        elif self.state.shutting_down.is_set():
            self.closing = (CLOSE_GOING_AWAY, "server shutting down")
        else:
            try:
                with self._scope:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._watch_shutdown)
                        if await self._authenticate():
                            self.state.websocket_clients += 1
                            try:
                                self._start(nursery)
                                with self._reader_scope:
                                    await self._read(nursery)
                            finally:
                                self.state.websocket_clients -= 1
            finally:
                self._release()
        if self.closing is not None:
            # Accepted first even when refusing, so a browser sees the code and reason.
            with trio.move_on_after(CLOSE_TIMEOUT):
                await self.conn.accept()
                await self.conn.close(self.closing[0], _close_reason(self.closing[1]))

    def _close(self, code: int, reason: str) -> None:
        """End the connection with this close frame (the first reason given wins)."""
        if self.closing is None:
            self.closing = (code, reason)
        self._release()
        self._scope.cancel()

    def _release(self) -> None:
        """Unsubscribe and drop queued frames at once, even while a send is stuck."""
        if self.sub is not None:
            self.sub.close()
        self.outbox.close()

    async def _watch_shutdown(self) -> None:
        await self.state.shutting_down.wait()
        if self.sub is not None:  # logged in: its calls are answered before the close
            with trio.move_on_after(SHUTDOWN_FLUSH):
                await self._answer_and_flush()
        self._close(CLOSE_GOING_AWAY, "server shutting down")

    async def _answer_and_flush(self) -> None:
        """Stop reading frames and queueing events, answer every call in flight
        ``module_unavailable`` (their tasks end with the connection, their answers
        unsent), and wait until the writer has sent all that is queued.

        Closing at once instead (as the connection's cancel scope does) dropped every
        call's answer: a client waiting on a call that loops was closed 1001 without
        one, and so was a client whose answer was still queued or in the writer's hand.
        """
        self._stopping = True
        self._reader_scope.cancel()
        self._pump_scope.cancel()
        if self.in_flight:
            log.info(
                "%s: shutting down: %d call(s) in flight answered %s",
                self.peer,
                len(self.in_flight),
                proto.MODULE_UNAVAILABLE,
            )
        for rid in self.in_flight:
            self._put(proto.failure(rid, proto.MODULE_UNAVAILABLE, SHUTTING_DOWN))
        self.in_flight.clear()
        while self._answering:  # answers on their way to the outbox or the socket
            await self._answered.park()
        # Nothing queues a frame from here on (the reader, the pump and the calls are
        # done): the writer sends the rest, then says so.
        self.outbox.finish()
        await self._flushed.wait()

    def _too_slow(self) -> None:
        queued = len(self.outbox) + (self.sub.queued if self.sub is not None else 0)
        log.warning("%s: closed: too slow, %d messages queued", self.peer, queued)
        self._close(CLOSE_TOO_SLOW, f"too slow: {queued} messages queued")

    def _put(self, frame: str) -> None:
        if not self.outbox.put_nowait(frame):
            self._too_slow()

    # -- authentication ----------------------------------------------------------------

    async def _authenticate(self) -> bool:
        header = self.conn.headers.get("Authorization")
        if header is None:  # no token yet: only a small first message is taken
            limit_messages(MAX_AUTH_MESSAGE)
        await self.conn.accept()
        if header is not None:
            if token_matches(self.state.token, bearer_token(header)):
                return True
            return await self._refuse("unauthorized: missing or wrong token")
        # A browser cannot set headers: its first message must be auth.
        if self.state.unauthenticated >= MAX_UNAUTHENTICATED:
            reason = f"try again later: {MAX_UNAUTHENTICATED} connections are waiting to log in"
            log.warning("%s: refused: %s", self.peer, reason)
            self._close(CLOSE_TRY_AGAIN_LATER, reason)
            return False
        self.state.unauthenticated += 1
        try:
            return await self._await_auth_message()
        finally:
            self.state.unauthenticated -= 1

    async def _await_auth_message(self) -> bool:
        with trio.move_on_after(AUTH_TIMEOUT):
            frame = await self.conn.receive()
            if frame is not None and len(frame) > MAX_AUTH_MESSAGE:
                return await self._refuse(
                    f"unauthorized: the first message is over {MAX_AUTH_MESSAGE} bytes; it "
                    "must be a small auth message"
                )
            try:
                message = proto.decode(frame)
            except proto.InvalidMessage as exc:
                return await self._refuse(f"unauthorized: expected an auth message: {exc}")
            if not isinstance(message, proto.Auth):
                return await self._refuse(
                    "unauthorized: send an Authorization header or an auth message first"
                )
            if token_matches(self.state.token, message.token):
                limit_messages(None)
                return True
            return await self._refuse("unauthorized: missing or wrong token")
        return await self._refuse(f"unauthorized: no auth message within {AUTH_TIMEOUT:g} s")

    async def _refuse(self, reason: str) -> bool:
        log.warning("%s: refused: %s", self.peer, reason)
        # The error frame tells clients whose library hides close reasons.
        await self.conn.send(proto.error(proto.UNAUTHORIZED, reason))
        self._close(CLOSE_UNAUTHORIZED, reason)
        return False

    def _start(self, nursery: trio.Nursery) -> None:
        self.sub = self.state.daemon.bus.subscribe(
            name=f"ws:{self.peer}",
            queue_size=SUBSCRIPTION_QUEUE,
            on_overflow=lambda sub: self._too_slow(),
        )
        self._put(proto.READY_FRAME)
        nursery.start_soon(self._write)
        nursery.start_soon(self._pump, self.sub)

    # -- reader ------------------------------------------------------------------------

    async def _read(self, nursery: trio.Nursery) -> None:
        while True:
            frame = await self.conn.receive()
            if self._stopping:
                # This frame came in as the stop began (the reader's cancel reaches it at
                # its next wait only): dropped like any later one, as the protocol says,
                # rather than start a call whose answer could no longer be sent.
                return
            try:
                message = proto.decode(frame)
            except proto.InvalidMessage as exc:
                self._reject(exc.message, exc.request_id)
                continue
            match message:
                case proto.Call():
                    self._start_call(message, nursery)
                case proto.Subscribe() | proto.Unsubscribe():
                    if len(self._ops) >= MAX_QUEUED:
                        self._too_slow()  # the pump is waiting for the client to read
                        continue
                    self._ops.append(message)
                    if self._pump_idle is not None:
                        self._pump_idle.cancel()
                case proto.Auth():
                    self._reject("already authenticated: auth is only valid as the first message")

    def _reject(self, message: str, request_id: str | None = None) -> None:
        log.info("%s: invalid message: %s", self.peer, message)
        if request_id is None:
            self._put(proto.error(proto.INVALID_MESSAGE, message))
        else:
            self._put(proto.failure(request_id, proto.INVALID_MESSAGE, message))

    # -- calls -------------------------------------------------------------------------

    def _start_call(self, call: proto.Call, nursery: trio.Nursery) -> None:
        rid = call.request_id
        if rid in self.in_flight:
            self._reject(f"duplicate request_id {rid!r}: a call with this id is in flight", rid)
        elif len(self.in_flight) >= MAX_IN_FLIGHT:
            log.info("%s: too many requests (%d in flight)", self.peer, MAX_IN_FLIGHT)
            self._put(
                proto.failure(
                    rid,
                    proto.TOO_MANY_REQUESTS,
                    f"{MAX_IN_FLIGHT} calls are already in flight on this connection; "
                    "wait for some responses",
                )
            )
        else:
            self.in_flight.add(rid)
            # Sent from here, not from the call's task: starting a task first would put
            # a trip through the scheduler between the client's frame and the module.
            answer: Coroutine[Any, Any, str]
            try:
                answer = self.state.daemon.manager.begin_call(
                    call.module, call.name, call.version, bytes(call.params).decode()
                )
            except Exception as exc:
                answer = _raise(exc)
            nursery.start_soon(self._call, call, answer)

    async def _call(self, call: proto.Call, answer: Coroutine[Any, Any, str]) -> None:
        rid = call.request_id
        target = f"{call.module}.{call.name}@{call.version}"
        try:
            result = await answer
        except CallError as exc:
            log.info("%s: call %s failed: %s: %s", self.peer, target, exc.code, exc.message)
            frame = proto.failure(rid, exc.code, exc.message)
        except Exception:
            log.exception("%s: call %s failed unexpectedly", self.peer, target)
            frame = proto.failure(
                rid, proto.INTERNAL_ERROR, f"internal error in {target}; see the log"
            )
        else:
            if proto.is_json(result):
                frame = proto.success(rid, result)
            else:
                log.info("%s: call %s: the module answered with invalid JSON", self.peer, target)
                frame = proto.failure(
                    rid, proto.MODULE_ERROR, f"module {call.module!r} answered with invalid JSON"
                )
        finally:
            # Gone from in_flight: the daemon's stop has answered it (_answer_and_flush).
            ours = rid in self.in_flight
            self.in_flight.discard(rid)
        if not ours:
            return
        self._answering += 1
        try:
            await self._respond(frame)
        finally:
            self._answering -= 1
            if self._stopping:
                self._answered.unpark_all()

    # -- pump and writer ---------------------------------------------------------------

    async def _pump(self, sub: Subscription) -> None:
        """Apply (un)subscribes and move events to the outbox, in one order."""
        with self._pump_scope:
            await self._pump_events(sub)

    async def _pump_events(self, sub: Subscription) -> None:
        try:
            while True:
                while self._ops:
                    await self._apply(sub, self._ops.popleft())
                # Woken by an event, or by the reader cancelling this scope for an op:
                # a receive that already has its event returns it despite the cancel.
                event = None
                with trio.CancelScope() as self._pump_idle:
                    event = await sub.receive()
                self._pump_idle = None
                if event is not None:
                    self._put(proto.encode_event(event))
        except trio.ClosedResourceError:
            return  # the subscription was closed: the connection is ending

    async def _apply(self, sub: Subscription, op: _Op) -> None:
        pattern = f"{op.module}.{op.name}"
        bus = self.state.daemon.bus
        data: dict[str, object]
        if isinstance(op, proto.Subscribe):
            if pattern not in sub.patterns and len(sub.patterns) >= MAX_PATTERNS:
                reason = f"a client may hold at most {MAX_PATTERNS} subscription patterns"
                log.info("%s: subscribe %s refused: %s", self.peer, pattern, reason)
                if op.request_id is None:
                    self._put(proto.error(proto.TOO_MANY_SUBSCRIPTIONS, reason))
                else:
                    self._put(proto.failure(op.request_id, proto.TOO_MANY_SUBSCRIPTIONS, reason))
                return
            # The state this pattern adds: the keys of retained events that no pattern
            # held already covers (those the client has, from an earlier replay or live).
            # Taken in the same step as the add, so anything newer arrives live, after it.
            keys = [k for k in bus.retained_keys(pattern) if not sub.matches(k)]
            sub.add(pattern, replay=False)
            data = {"pattern": pattern}
        else:
            keys = []
            data = {"pattern": pattern, "removed": sub.remove(pattern)}
        # Events queued before this op go first (they are older), then the state, then the
        # ack, so the ack means "you have the current state". At the client's pace: a big
        # replay is not slowness.
        for _ in range(sub.queued):
            await self.outbox.put_when_room(proto.encode_event(sub.receive_nowait()))
        replayed = 0
        for key in keys:
            # Each key's state as it is when its turn comes: a replay paced by a slow
            # client holds its outbox and these keys, never events the bus has replaced
            # or forgotten meanwhile (their updates follow, live).
            event = bus.retained_event(key)
            if event is not None:
                await self.outbox.put_when_room(proto.encode_replayed_event(event))
                replayed += 1
        if isinstance(op, proto.Subscribe):
            data["replayed"] = replayed
        if op.request_id is not None:
            self._put(proto.success_value(op.request_id, data))

    async def _write(self) -> None:
        while batch := await self.outbox.get_batch(WRITE_BATCH, WRITE_BATCH_CHARS):
            await self._send(*batch)
        self._flushed.set()  # the outbox was finished, and all of it is sent

    async def _send(self, *frames: str) -> None:
        """Send ``frames``, several in one write (_write_batch.py); one send at a time."""
        while self._sending:
            await self._send_done.park()
        self._sending = True
        try:
            if len(frames) == 1:
                await self.conn.send(frames[0])
            else:
                async with batched_writes():
                    for frame in frames:
                        await self.conn.send(frame)
        finally:
            self._sending = False
            self._send_done.unpark()

    async def _respond(self, frame: str) -> None:
        """A call's answer: sent by the call's own task when nothing is queued or being
        sent, else queued behind what is.

        Handing it to the writer task costs one more trip through the scheduler per
        call (bench/: one of the few steps a call takes that a bare echo does not).
        Frames still leave in order: only an idle connection with an empty queue is
        written to directly, and the writer waits for a direct send to finish.
        """
        if self._sending or len(self.outbox) or self.outbox.closed:
            self._put(frame)
        else:
            await self._send(frame)
