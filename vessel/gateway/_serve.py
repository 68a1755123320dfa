"""Serving the gateway with Hypercorn's trio worker, as one task of the daemon."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.events import Closed, Event, RawData, Updated
from hypercorn.trio import run as _hypercorn_run
from hypercorn.trio import serve
from hypercorn.trio.tcp_server import TCPServer

from .._daemon import Daemon
from ._app import GatewayState, create_app
from ._write_batch import current_connection

log = logging.getLogger("vessel.gateway")

#: Frames above this are refused by Hypercorn itself (the connection closes with 1009);
#: the protocol's own, smaller limit answers with an error and keeps the connection.
TRANSPORT_MAX_MESSAGE = 4 * 1024 * 1024


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

    async def _send_held(self) -> None:
        if self._held:
            data = b"".join(self._held)
            self._held.clear()
            await self._send(RawData(data))

    async def run(self) -> None:
        # Seen by the tasks Hypercorn starts for this connection (the app's handler).
        current_connection.set(self)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._close_idle_at_shutdown)
            await super().run()
            nursery.cancel_scope.cancel()

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
        if isinstance(event, Updated):
            self._idle = event.idle
            if event.idle:
                self._became_idle.set()
                self._became_idle = trio.Event()
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
    state = GatewayState(daemon=daemon, allowed_origins=config.allowed_origins)
    app = create_app(state)
    hyper = Config()
    hyper.bind = [f"{config.host}:{config.port}"]
    hyper.websocket_max_message_size = TRANSPORT_MAX_MESSAGE
    hyper.graceful_timeout = 3.0
    hyper.accesslog = None
    hyper.errorlog = logging.getLogger("vessel.gateway.hypercorn")
    hyper.include_server_header = False
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
