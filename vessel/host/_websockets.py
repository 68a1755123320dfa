"""Outbound WebSocket connections of a module (``websocket-connect/send/close``).

Each connection is one task in the service's nursery, so it outlives the host call that
opened it. The task reads frames and hands each text message to ``on_message(handle,
text)``. When the peer closes or the connection fails, ``on_closed(handle, reason)`` is
called exactly once and the handle is forgotten. A close the host asked for (``close`` on
behalf of the guest, ``close_all``, shutdown) is never reported through ``on_closed``:
whoever asked knows.

Never holding the guest
-----------------------

The guest runs one export at a time, and a host function holds it until it returns: a
``connect`` to a server that accepts TCP and never answers held the module for the whole
connect timeout (10 s), and a ``close`` to a frozen peer for the close timeout (5 s), so
its commands (Home Assistant's ``status``) waited that long (issue 24). So the guest has
two calls that never wait on the peer:

* ``connect_nowait`` (``websocket-open``) hands out the handle at once and connects in the
  background; a connection that cannot be opened is reported through ``on_closed`` like
  any other end, and messages sent meanwhile are queued (at most ``max_message_size``
  bytes in all) and sent in order once it is open.
* ``close_nowait`` (``websocket-close``) forgets the handle for the guest at once and lets
  the close handshake (bounded by ``close_timeout``) run in the background. A closing
  connection still counts towards ``max_connections`` until it is gone, so a module that
  opens and closes in a loop cannot pile up sockets.

``connect`` (``websocket-connect``) keeps its contract: it returns once the connection is
open, or fails.

Why not ``open_websocket_url``
------------------------------

trio-websocket 0.12's ``open_websocket_url`` has two flaws a daemon cannot live with: its
``connect_timeout`` never fires against a server that accepts TCP and then stays silent
(the handshake's reader task keeps its nursery open), and when the peer closes first it
never closes the client's TCP stream, leaking one file descriptor per closed socket until
garbage collection. So each connection task opens the TCP (and TLS) stream itself, owns
it with ``async with``, applies its own connect deadline, and uses trio-websocket's
public ``wrap_client_stream`` for the WebSocket protocol.

Frames and sizes
----------------

* The guest API is text only. A binary frame is delivered as text when it is valid
  UTF-8 (some servers send JSON as binary frames) and otherwise dropped with a warning
  in the module's log: there is nothing the guest could do with it.
* ``max_message_size`` bounds both directions. Outgoing messages are measured in UTF-8
  bytes, what goes on the wire; incoming ones are measured by trio-websocket, in
  characters for text and bytes for binary. A peer that sends a bigger message has the
  connection closed with code 1009 and the guest gets ``on_closed``.
* A send that cannot complete within ``send_timeout`` (the peer stopped reading) fails
  and drops the connection, reported through ``on_closed``: the guest is never stuck.

Shutdown
--------

An open connection's task is shielded from cancellation of the service, so cancelling
``run`` closes every socket with a proper close frame (code 1001, "going away") instead
of cutting the TCP stream; each goodbye is bounded by ``close_timeout``, after which the
socket is dropped.
"""

from __future__ import annotations

import logging
import math
import ssl
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field

import trio
from trio_websocket import (
    CloseReason,
    ConnectionClosed,
    ConnectionRejected,
    WebSocketConnection,
    wrap_client_stream,
)

from .._capabilities import Destinations
from .._errors import CapabilityDenied
from .._manifest import origin_of
from .._tls import client_context
from ._egress import EgressLedger, destination
from ._hosterrors import HostCallError, describe_failure

__all__ = ["WebSocketService"]

log = logging.getLogger("vessel.host")

#: Handles are WIT ``u32``; 0 is never handed out.
_MAX_HANDLE = 2**32 - 1

#: Close codes (RFC 6455 section 7.4.1).
_NORMAL_CLOSURE = 1000
_GOING_AWAY = 1001
_ABNORMAL_CLOSURE = 1006
_MESSAGE_TOO_BIG = 1009


@dataclass(frozen=True)
class _Target:
    """Where a ``ws://`` / ``wss://`` URL points."""

    host: str
    port: int
    tls: bool
    resource: str
    host_header: str

    @property
    def destination(self) -> str:
        """The egress audit's name for it (``ws://host:port``)."""
        return destination("wss" if self.tls else "ws", self.host, self.port)


@dataclass(eq=False)
class _Connection:
    handle: int
    url: str
    target: _Target
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    ws: WebSocketConnection | None = None
    """Set once the opening handshake has completed."""
    finished: trio.Event = field(default_factory=trio.Event)
    """Set when the connection's task has ended and its socket is closed."""
    closed_by_host: bool = False
    """The guest or the host closed it: ``on_closed`` must not be called."""
    reported: bool = False
    """``on_closed`` has been called."""
    failure: str | None = None
    """Why the host dropped the connection on its own (a send timed out)."""
    background: bool = False
    """Opened by ``connect_nowait``: the guest holds its handle during the handshake, and
    a failure to open is reported through ``on_closed``."""
    queued: list[str] | None = None
    """Messages sent before the connection was open (``connect_nowait``), to send once it
    is; None once they are sent (then ``send`` writes directly)."""
    queued_bytes: int = 0

    @property
    def function(self) -> str:
        """The host function that opened it, for error messages."""
        return "websocket-open" if self.background else "websocket-connect"


class WebSocketService:
    """The WebSocket client connections of one module.

    All methods run on the trio thread (the guest's host functions reach them with
    ``trio.from_thread.run``). The callbacks are called on the trio thread too and must
    not raise: an exception from one is a host bug and ends ``run``.
    """

    def __init__(
        self,
        on_message: Callable[[int, str], None],
        on_closed: Callable[[int, str], None],
        *,
        max_connections: int = 8,
        max_message_size: int = 1 << 20,
        connect_timeout: float = 10.0,
        send_timeout: float = 10.0,
        close_timeout: float = 5.0,
        trusted_ca: str = "",
        egress: EgressLedger | None = None,
    ) -> None:
        self._trusted_ca = trusted_ca
        self._egress = egress or EgressLedger()
        self._on_message = on_message
        self._on_closed = on_closed
        self._max_connections = max_connections
        self._max_message_size = max_message_size
        self._connect_timeout = connect_timeout
        self._send_timeout = send_timeout
        self._close_timeout = close_timeout
        self._connections: dict[int, _Connection] = {}
        self._last_handle = 0
        self._nursery: trio.Nursery | None = None
        self._ssl_context: ssl.SSLContext | None = None

    def __repr__(self) -> str:
        state = "running" if self._nursery is not None else "stopped"
        return f"<WebSocketService live={self.live}/{self._max_connections} {state}>"

    @property
    def live(self) -> int:
        """Connections that count towards ``max_connections``: open, still connecting, or
        still closing (``close_nowait``)."""
        return len(self._connections)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the connections' tasks until cancelled, then close every connection."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                # Also reached when a connection task crashed: its siblings are shielded
                # and would otherwise keep the nursery open forever.
                self._nursery = None
                with trio.CancelScope(shield=True):
                    await self._close_connections(list(self._connections.values()), _GOING_AWAY)

    async def connect(self, url: str, allow: Destinations | None = None) -> int:
        """Open a connection to ``url`` (``ws://`` or ``wss://``); its handle once open.
        ``allow`` (None: any host) must cover it, else CapabilityDenied."""
        nursery, conn = self._register("websocket-connect", url, allow)
        await nursery.start(self._serve_connection, conn)
        return conn.handle

    def connect_nowait(self, url: str, allow: Destinations | None = None) -> int:
        """Start opening a connection to ``url`` and return its handle at once. Raises
        HostCallError only for what is known at once (a bad url, the limit, shutdown);
        a connection that cannot be opened is reported through ``on_closed``."""
        nursery, conn = self._register("websocket-open", url, allow)
        conn.background = True
        conn.queued = []
        nursery.start_soon(self._serve_in_background, conn)
        return conn.handle

    def _register(
        self, function: str, url: str, allow: Destinations | None
    ) -> tuple[trio.Nursery, _Connection]:
        target = _parse_url(url)
        if allow is not None:
            scheme = "wss" if target.tls else "ws"
            try:
                allow.check(f"{function} to", *origin_of(scheme, target.host, target.port))
            except CapabilityDenied:
                self._egress.denied(target.destination)
                raise
        nursery = self._nursery
        if nursery is None:
            raise HostCallError(
                f"{function} {url} failed: websockets are stopped (the module is shutting down)"
            )
        if len(self._connections) >= self._max_connections:
            closing = sum(c.closed_by_host for c in self._connections.values())
            still = f", {closing} of them still closing" if closing else ""
            raise HostCallError(
                f"{function} {url} failed: too many websocket connections{still}: "
                f"limit is {self._max_connections} (limits.max_websockets)"
            )
        if self._last_handle >= _MAX_HANDLE:
            raise HostCallError(f"{function} {url} failed: handles exhausted")
        self._last_handle += 1
        conn = _Connection(self._last_handle, url, target)
        # Registered before the handshake so that parallel connects respect the limit.
        self._connections[conn.handle] = conn
        return nursery, conn

    async def _serve_in_background(self, conn: _Connection) -> None:
        try:
            await self._serve_connection(conn)
        except HostCallError as exc:
            self._report_closed(conn, str(exc))
        except Exception as exc:
            # Whatever the handshake raised (trio-websocket wraps some failures in an
            # ExceptionGroup): the guest is told, and this module's other sockets go on.
            log.debug("websocket %d (%s): connect failed", conn.handle, conn.url, exc_info=True)
            self._report_closed(conn, f"{conn.function} {conn.url} failed: {describe_failure(exc)}")

    async def send(self, handle: int, message: str) -> None:
        """Send one text message; returns once it is handed to the OS (or queued, on a
        connection from ``connect_nowait`` that is not open yet)."""
        conn = self._open_connection("websocket-send", handle)
        size = len(message.encode("utf-8"))
        if size > self._max_message_size:
            raise HostCallError(
                f"websocket-send {handle}: message is {size} bytes, "
                f"the limit is {self._max_message_size} bytes"
            )
        if conn.queued is not None:
            if conn.queued_bytes + size > self._max_message_size:
                raise HostCallError(
                    f"websocket-send {handle}: the connection is still opening and "
                    f"{conn.queued_bytes} bytes wait to be sent; at most "
                    f"{self._max_message_size} may wait: send the rest once the server answers"
                )
            conn.queued.append(message)
            conn.queued_bytes += size
            return
        assert conn.ws is not None
        await self._send_frame(conn, message)

    async def _send_frame(self, conn: _Connection, message: str) -> None:
        handle = conn.handle
        assert conn.ws is not None
        with trio.move_on_after(self._send_timeout) as scope:
            try:
                await conn.ws.send_message(message)
                self._egress.used(conn.target.destination, sent=len(message.encode("utf-8")))
            except ConnectionClosed as exc:
                reason = conn.failure or _describe_close(exc.reason, self._max_message_size)
                raise HostCallError(
                    f"websocket-send {handle}: the connection is closed ({reason})"
                ) from None
        if scope.cancelled_caught:
            # A frame may be half written: the stream is unusable, so drop the
            # connection and let on_closed tell the guest, as for any failure.
            conn.failure = (
                f"connection lost: a send did not complete within {self._send_timeout:g} s "
                "(the peer is not reading)"
            )
            conn.scope.cancel()
            raise HostCallError(f"websocket-send {handle}: {conn.failure}")

    async def close(self, handle: int) -> None:
        """Close the connection cleanly (code 1000) and wait for it (bounded by
        ``close_timeout``). ``on_closed`` is not called for it."""
        conn = self._open_connection("websocket-close", handle)
        await self._close_connections([conn], _NORMAL_CLOSURE)

    def close_nowait(self, handle: int) -> None:
        """``close`` without waiting: the handle is unknown from now on, and the close
        handshake (or the connect, if it is still opening) ends in the background within
        ``close_timeout``; the connection counts towards the limit until it has."""
        conn = self._open_connection("websocket-close", handle)
        conn.closed_by_host = True
        conn.queued = None
        if conn.ws is None:
            conn.scope.cancel()  # still opening: nothing to say goodbye to
            return
        assert self._nursery is not None  # the connection's task runs in it
        self._nursery.start_soon(self._close_in_background, conn)

    async def _close_in_background(self, conn: _Connection) -> None:
        try:
            with trio.move_on_after(self._close_timeout):
                await self._goodbye(conn, _NORMAL_CLOSURE)
        finally:
            conn.scope.cancel()

    async def close_all(self) -> None:
        """Close every connection (code 1001), e.g. when the instance is replaced."""
        await self._close_connections(list(self._connections.values()), _GOING_AWAY)

    # -- internals -----------------------------------------------------------------------

    def _open_connection(self, function: str, handle: int) -> _Connection:
        conn = self._connections.get(handle)
        # A connection still in its handshake has a handle the guest has not seen yet,
        # unless it came from connect_nowait; a closing one, a handle it gave up.
        if conn is None or conn.closed_by_host or (conn.ws is None and not conn.background):
            raise HostCallError(
                f"{function}: unknown websocket handle {handle} (never opened, or closed)"
            )
        return conn

    def _forget(self, conn: _Connection) -> None:
        if self._connections.get(conn.handle) is conn:
            del self._connections[conn.handle]

    async def _close_connections(self, conns: list[_Connection], code: int) -> None:
        for conn in conns:
            conn.closed_by_host = True
            self._forget(conn)
        try:
            with trio.move_on_after(self._close_timeout):
                async with trio.open_nursery() as nursery:
                    for conn in conns:
                        nursery.start_soon(self._goodbye, conn, code)
        finally:
            # Past the bound (or cancelled): drop whatever has not closed yet.
            for conn in conns:
                conn.scope.cancel()

    @staticmethod
    async def _goodbye(conn: _Connection, code: int) -> None:
        if conn.ws is None:
            # Still in its handshake: nobody holds its handle yet, so just stop it.
            conn.scope.cancel()
        else:
            # Returns once the peer has answered the close frame (or at once if the
            # socket is already closed); the connection task then winds down.
            await conn.ws.aclose(code)
        await conn.finished.wait()

    async def _serve_connection(
        self, conn: _Connection, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        try:
            with conn.scope:
                conn.scope.deadline = trio.current_time() + self._connect_timeout
                await self._connect_and_read(conn, task_status)
            if conn.ws is None:
                # conn.scope stopped the handshake: its deadline, or close_all.
                why = (
                    "cancelled (the module's websockets were closed)"
                    if conn.closed_by_host
                    else f"timed out after {self._connect_timeout:g} s"
                )
                raise HostCallError(f"{conn.function} {conn.url} failed: {why}")
            if conn.scope.cancelled_caught:
                self._report_closed(conn, conn.failure or "connection lost: dropped by the host")
        finally:
            self._forget(conn)
            conn.finished.set()

    async def _connect_and_read(
        self, conn: _Connection, task_status: trio.TaskStatus[None]
    ) -> None:
        target = conn.target
        stream: trio.SocketStream | trio.SSLStream[trio.SocketStream]
        try:
            if target.tls:
                stream = await trio.open_ssl_over_tcp_stream(
                    target.host, target.port, ssl_context=self._tls(), https_compatible=True
                )
            else:
                stream = await trio.open_tcp_stream(target.host, target.port)
        except OSError as exc:
            raise HostCallError(
                f"{conn.function} {conn.url} failed: {describe_failure(exc)}"
            ) from None
        async with stream:
            if isinstance(stream, trio.SSLStream):
                # Done here, not lazily on the first write, so that a certificate problem
                # is reported as such rather than as a handshake timeout.
                try:
                    await stream.do_handshake()
                except trio.BrokenResourceError as exc:
                    raise HostCallError(
                        f"{conn.function} {conn.url} failed: {describe_failure(exc)}"
                    ) from None
            try:
                # The nursery holds trio-websocket's reader task for this connection.
                async with trio.open_nursery() as library:
                    ws = await wrap_client_stream(
                        library,
                        stream,
                        target.host_header,
                        target.resource,
                        max_message_size=self._max_message_size,
                    )
                    if conn.closed_by_host:
                        # close_all ran while the handshake was completing.
                        library.cancel_scope.cancel()
                        return
                    conn.ws = ws
                    self._egress.used(target.destination, connections=1)
                    # From here the task belongs to the service nursery, and only the
                    # service's own bounded close may end it (see module doc).
                    conn.scope.deadline = math.inf
                    conn.scope.shield = True
                    task_status.started()
                    await self._send_queued(conn)
                    await self._read(conn, ws)
                    # The reader task still has work after get_message reports the close:
                    # completing a close handshake we started, then waiting for the peer
                    # to drop TCP. Let it, but not forever: a peer may never drop it.
                    library.cancel_scope.deadline = trio.current_time() + self._close_timeout
            except* ConnectionRejected as group:
                rejected = next(e for e in group.exceptions if isinstance(e, ConnectionRejected))
                status = rejected.status_code
                raise HostCallError(
                    f"{conn.function} {conn.url} failed: the server refused the "
                    f"websocket handshake with HTTP {status}"
                ) from None

    async def _send_queued(self, conn: _Connection) -> None:
        """Send, in order, what the guest sent while the connection was opening. Until
        the queue is empty, ``send`` keeps queueing, so nothing overtakes it."""
        while conn.queued:
            message = conn.queued.pop(0)
            conn.queued_bytes -= len(message.encode("utf-8"))
            try:
                await self._send_frame(conn, message)
            except HostCallError:
                break  # the connection is closed or dropped: _read or the scope reports it
        conn.queued = None

    async def _read(self, conn: _Connection, ws: WebSocketConnection) -> None:
        while True:
            try:
                message = await ws.get_message()
            except ConnectionClosed as exc:
                self._report_closed(
                    conn, conn.failure or _describe_close(exc.reason, self._max_message_size)
                )
                return
            if isinstance(message, bytes):
                try:
                    message = message.decode("utf-8")
                except UnicodeDecodeError:
                    log.warning(
                        "websocket %d (%s): dropped a %d-byte binary message that is not "
                        "UTF-8 text (modules receive text only)",
                        conn.handle,
                        conn.url,
                        len(message),
                    )
                    continue
            if conn.closed_by_host:
                return
            self._egress.used(conn.target.destination, received=len(message.encode("utf-8")))
            self._on_message(conn.handle, message)

    def _report_closed(self, conn: _Connection, reason: str) -> None:
        if conn.closed_by_host or conn.reported:
            return
        conn.reported = True
        # Forgotten first: from on_closed on, the handle is unknown to every method.
        self._forget(conn)
        self._on_closed(conn.handle, reason)

    def _tls(self) -> ssl.SSLContext:
        # One context for the module: loading the CA store costs milliseconds each time.
        if self._ssl_context is None:
            self._ssl_context = client_context(self._trusted_ca)
        return self._ssl_context


def _parse_url(url: str) -> _Target:
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise HostCallError(f"websocket-connect: invalid url {url!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("ws", "wss"):
        raise HostCallError(
            f"websocket-connect: url scheme {parts.scheme!r} is not allowed (ws or wss only)"
        )
    host = parts.hostname
    if not host:
        raise HostCallError(f"websocket-connect: invalid url {url!r}: no host")
    tls = scheme == "wss"
    default_port = 443 if tls else 80
    port = port if port is not None else default_port
    bracketed = f"[{host}]" if ":" in host else host  # an IPv6 literal
    host_header = bracketed if port == default_port else f"{bracketed}:{port}"
    resource = parts.path or "/"
    if parts.query:
        resource += "?" + parts.query
    return _Target(host, port, tls, resource, host_header)


def _describe_close(reason: CloseReason | None, max_message_size: int) -> str:
    """The ``on_closed`` reason for a socket that closed without the host asking."""
    if reason is None or reason.code == _ABNORMAL_CLOSURE:
        return f"connection lost: no close frame from the peer (code {_ABNORMAL_CLOSURE})"
    text = reason.reason or ""
    # trio-websocket closes with 1009 and this text when the *peer* sent too much.
    if reason.code == _MESSAGE_TOO_BIG and text.startswith("Exceeded maximum message size"):
        return (
            f"message too big: the peer sent a message over the limit of {max_message_size}; "
            f"closed with code {_MESSAGE_TOO_BIG}"
        )
    detail = f" ({text})" if text else ""
    return f"closed by peer: code {reason.code}{detail}"
