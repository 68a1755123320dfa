"""Serving the gateway with Hypercorn's trio worker, as one task of the daemon."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from math import inf
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.events import Closed, Event, RawData, Updated
from hypercorn.trio import run as _hypercorn_run
from hypercorn.trio import serve
from hypercorn.trio.tcp_server import MAX_RECV, TCPServer

from .._daemon import Daemon
from ._admission import KEEP_ALIVE_TIMEOUT, Admission, refusal_response
from ._app import GatewayState, create_app
from ._auth import own_host_names
from ._write_batch import current_connection

log = logging.getLogger("vessel.gateway")

#: Frames above this are refused by Hypercorn itself (the connection closes with 1009);
#: the protocol's own, smaller limit answers with an error and keeps the connection.
TRANSPORT_MAX_MESSAGE = 4 * 1024 * 1024
#: After a response that ends its connection (``Connection: close``, or a request body
#: not read to its end: a 401 or 413 before the body), what the client still sends is
#: read and dropped for at most this long and this much, then the socket is closed. Not
#: at once: closing a socket with unread data sends a reset, which can destroy the
#: response before the client has read it; the client has it, and our EOF, long before
#: either bound.
LINGER_SECONDS = 2.0
LINGER_BYTES = 1024 * 1024
#: What sending EOF may raise, ignored as Hypercorn does: the client is gone, another
#: task is writing (bug 1 of docs/security.md), a TLS stream (it has no EOF of its own).
_EOF_ERRORS = (
    trio.BrokenResourceError,
    trio.BusyResourceError,
    trio.ClosedResourceError,
    AttributeError,
)


class _TCPServer(TCPServer):
    """Hypercorn's trio connection, with two fixes and batched writes.

    * One way less for a client to stop the whole server. Hypercorn 0.18 sends EOF on
      close (``_close``) without its send lock; when the client hangs up while a
      response is being written (a POST announcing a huge body, then a close), the
      concurrent ``send_all`` raises ``trio.BusyResourceError``, which nothing catches:
      it escapes the connection's task group and ends ``serve`` for every client. Found
      by tests/adversarial (connection churn). A send that lost that race is a send to a
      connection being closed, so treat it as the closed connection it is.
    * An idle keep-alive connection is closed at shutdown. Hypercorn's own idle timer,
      which should do that, is not running again after the connection's first request,
      so one idle HTTP client held every ``systemctl stop`` for the whole graceful
      timeout (3 s). Idle means: no request in progress (Hypercorn's ``Updated``
      events); a WebSocket never is, the gateway closes those itself.
    * An idle keep-alive connection is closed after ``KEEP_ALIVE_TIMEOUT``. Hypercorn's
      own timer for that is cancelled as soon as it is started again after a request
      (its task starts inside the request's teardown), so idle connections stayed open
      for good: ~1,000 of them exhausted the open-file limit (issue 23).
    * A remote address over its share of connections, or any remote connection over the
      total, is answered ``503`` at once and closed (``_admission.py``); loopback never.
    * A connection Hypercorn ends after a response is closed. Hypercorn closes it from
      the task that sent the response, which quart-trio cancels as soon as the response
      is out: the close stopped at its first checkpoint, before the socket was closed.
      So a response with ``Connection: close`` left the connection open, and a 401 or
      413 answered while the body was arriving left Hypercorn reading whatever the
      client went on sending, without end (issue 23). Here the client gets EOF right
      after the response; what it still sends is dropped, within ``LINGER_SECONDS`` and
      ``LINGER_BYTES``, then the socket is closed. Every other close is shielded too.
    * A task may batch its writes (``batched``; see _write_batch.py): what it sends in
      the block is held and written with one system call when the block ends. A write
      from any other task first sends what is held, so bytes leave in the order they
      were sent.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._idle = True
        self._became_idle = trio.Event()
        self._batching: trio.lowlevel.Task | None = None
        self._held: list[bytes] = []
        self._nursery: trio.Nursery | None = None
        self._idle_timer: trio.CancelScope | None = None
        #: The connection is ending (EOF sent): what arrives is dropped, not parsed.
        self._lingering = False

    @asynccontextmanager
    async def batched(self) -> AsyncIterator[None]:
        if self._batching is not None:  # one batch at a time; the others write through
            yield
            return
        self._batching = trio.lowlevel.current_task()
        try:
            yield
        finally:
            self._batching = None
            await self._send_held()

    def limit_messages(self, size: int | None) -> None:
        # Hypercorn buffers a whole WebSocket message, up to the server's limit, before
        # the app sees any of it; its WSStream's buffer has its own copy of that limit.
        stream = getattr(getattr(self.protocol, "protocol", None), "stream", None)
        buffer = getattr(stream, "buffer", None)
        if buffer is not None and hasattr(buffer, "max_length"):
            buffer.max_length = size if size is not None else TRANSPORT_MAX_MESSAGE

    async def _send_held(self) -> None:
        if self._held:
            data = b"".join(self._held)
            self._held.clear()
            await self._send(RawData(data))

    async def run(self) -> None:
        # Hypercorn looks this class up for every server in the process: one that is not
        # the gateway's (a test's web server) has no admission of ours.
        admission: Admission = getattr(self.config, "vessel_admission", None) or Admission(
            per_peer=1 << 30, total=1 << 30
        )
        try:
            peer = str(self.stream.socket.getpeername()[0])
        except (OSError, AttributeError, IndexError):
            peer = ""
        if (why := admission.admit(peer)) is not None:
            with trio.move_on_after(KEEP_ALIVE_TIMEOUT), suppress(trio.BrokenResourceError):
                await self.stream.send_all(refusal_response(why))
            await self.stream.aclose()
            return
        try:
            # Seen by the tasks Hypercorn starts for this connection (the app's handler).
            current_connection.set(self)
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._close_idle_at_shutdown)
                self._start_idle_timer()  # no first request yet
                await super().run()
                nursery.cancel_scope.cancel()
        finally:
            admission.release(peer)

    def _start_idle_timer(self) -> None:
        self._stop_idle_timer()
        if self._nursery is not None:
            self._idle_timer = trio.CancelScope()
            self._nursery.start_soon(self._close_when_idle, self._idle_timer)

    def _stop_idle_timer(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    async def _read_data(self) -> None:
        # Hypercorn's loop, but once the connection is ending what arrives is counted and
        # dropped here: fed to the protocol, a body after a 401 or 413 was parsed for as
        # long as the client sent it.
        dropped = 0
        while True:
            try:
                with trio.fail_after(self.config.read_timeout or inf):
                    data = await self.stream.receive_some(MAX_RECV)
            except (trio.ClosedResourceError, trio.BrokenResourceError, trio.TooSlowError):
                break
            if self._lingering:
                dropped += len(data)
                if not data or dropped > LINGER_BYTES:
                    break
                continue
            await self.protocol.handle(RawData(bytes(data)))
            if data == b"":
                break
        await self.protocol.handle(Closed())

    async def _end_after_response(self) -> None:
        """EOF to the client now, in a shield (see the class's docstring); the reader
        drops what still arrives, and the socket is closed after ``LINGER_SECONDS`` if
        the client has not closed it first (``run`` closes it once the reader ends)."""
        if self._lingering:
            return
        with trio.CancelScope(shield=True), suppress(*_EOF_ERRORS):
            await self.stream.send_eof()
        self._lingering = True
        self._stop_idle_timer()
        if self._nursery is not None:
            self._nursery.start_soon(self._close_after_linger)

    async def _close_after_linger(self) -> None:
        await trio.sleep(LINGER_SECONDS)
        # Wakes the reader, which ends the connection.
        await self.stream.aclose()

    async def _close(self) -> None:
        # Hypercorn's own close, the connection's last step, shielded: in a task being
        # cancelled (the gateway stopping) it stopped at its first checkpoint and left
        # the socket to the garbage collector.
        with trio.CancelScope(shield=True):
            await super()._close()

    async def _close_when_idle(self, timer: trio.CancelScope) -> None:
        with timer:
            await trio.sleep(KEEP_ALIVE_TIMEOUT)
            # Wakes the connection's reader, which ends the connection as if the client
            # had closed it.
            await self.stream.aclose()

    async def _close_idle_at_shutdown(self) -> None:
        await self.context.terminated.wait()
        while not self._idle:
            await self._became_idle.wait()
        # Wakes the connection's reader, which then ends the connection as if the client
        # had closed it.
        await self.stream.aclose()

    async def protocol_send(self, event: Event) -> None:
        if isinstance(event, RawData) and self._batching is trio.lowlevel.current_task():
            self._held.append(event.data)
            return
        await self._send_held()
        if isinstance(event, Closed):
            # Hypercorn would close the socket here, and be cancelled doing it.
            await self._end_after_response()
            await self.protocol.handle(Closed())
            return
        if isinstance(event, Updated):
            self._idle = event.idle
            if event.idle:
                self._became_idle.set()
                self._became_idle = trio.Event()
                self._start_idle_timer()
            else:
                self._stop_idle_timer()
        await self._send(event)

    async def _send(self, event: Event) -> None:
        try:
            await super().protocol_send(event)
        except trio.BusyResourceError:
            await self.protocol.handle(Closed())


# serve() looks the class up in hypercorn.trio.run for every accepted connection.
_hypercorn_run.TCPServer = _TCPServer  # type: ignore[attr-defined]


@dataclass(frozen=True)
class GatewayConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    allowed_origins: frozenset[str] = frozenset()
    #: Host names served besides IP literals, localhost and the machine's own name.
    allowed_hosts: frozenset[str] = frozenset()
    #: ``GET /metrics`` without the token (``vessel serve --metrics-open``).
    metrics_open: bool = False


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def serve_gateway(
    daemon: Daemon,
    config: GatewayConfig,
    *,
    shutdown: trio.Event,
    task_status: trio.TaskStatus[tuple[GatewayState, list[str]]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until ``shutdown`` is set; ``task_status.started((state, bound_urls))``.

    On shutdown WebSocket clients are told (close 1001) before Hypercorn stops.
    """
    state = GatewayState(
        daemon=daemon,
        allowed_origins=config.allowed_origins,
        allowed_hosts=own_host_names() | {h.lower() for h in config.allowed_hosts},
        metrics_open=config.metrics_open,
    )
    app = create_app(state)
    hyper = Config()
    hyper.bind = [f"{config.host}:{config.port}"]
    hyper.websocket_max_message_size = TRANSPORT_MAX_MESSAGE
    hyper.graceful_timeout = 3.0
    hyper.accesslog = None
    hyper.errorlog = logging.getLogger("vessel.gateway.hypercorn")
    hyper.include_server_header = False
    hyper.keep_alive_timeout = KEEP_ALIVE_TIMEOUT
    # Read by every connection (_TCPServer.run): one count per gateway.
    hyper.vessel_admission = Admission()  # type: ignore[attr-defined]
    if not is_loopback(config.host):
        log.warning(
            "listening on %s: reachable from the network; anyone there with the token "
            "can administer this daemon",
            config.host,
        )

    async def trigger() -> None:
        await shutdown.wait()
        state.shutting_down.set()

    async def run(task_status: trio.TaskStatus[list[str]]) -> None:
        await serve(app, hyper, shutdown_trigger=trigger, task_status=task_status)

    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(run)
        log.info("gateway listening on %s", ", ".join(binds))
        task_status.started((state, binds))
