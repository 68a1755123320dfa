"""WebSocketService's calls that never wait on the peer (``websocket-open``, and
``websocket-close`` as the guest uses it), against real local servers: the guest's
module must go on serving while a server is silent or frozen (issue 24)."""

from __future__ import annotations

from functools import partial

import pytest
import trio
import trio.testing
from wsproto import WSConnection

from vessel.host._hosterrors import HostCallError

from .conftest import WsPeer, serve_raw_ws
from .test_websocket_service import DEADLINE, running


class Mute:
    """A TCP server that accepts and then says nothing, like a frozen Home Assistant
    whose kernel still completes connections; records when each client goes away."""

    def __init__(self) -> None:
        self.accepted = 0
        self.ended = 0
        self.changed = trio.Event()
        self.port = 0

    async def handler(self, stream: trio.SocketStream) -> None:
        self._note(accepted=1)
        try:
            while await stream.receive_some():
                pass  # read and ignore (the handshake request): never answer
        except trio.BrokenResourceError:
            pass
        self._note(ended=1)

    def _note(self, accepted: int = 0, ended: int = 0) -> None:
        self.accepted += accepted
        self.ended += ended
        self.changed.set()
        self.changed = trio.Event()

    async def wait_for(self, *, accepted: int = 0, ended: int = 0) -> None:
        while self.accepted < accepted or self.ended < ended:
            await self.changed.wait()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/api/websocket"


@pytest.fixture
async def mute(nursery: trio.Nursery) -> Mute:
    server = Mute()
    listeners = await nursery.start(partial(trio.serve_tcp, server.handler, 0, host="127.0.0.1"))
    server.port = listeners[0].socket.getsockname()[1]
    return server


async def test_open_hands_out_the_handle_at_once_and_sends_what_waited_in_order(
    ws_peer: WsPeer,
) -> None:
    """connect_nowait returns a handle before the handshake (no checkpoint in between);
    text sent meanwhile is queued and reaches the peer first, in order, then later sends
    go straight out, and the peer's frames reach on_message with that handle."""
    with trio.fail_after(DEADLINE):
        async with running() as (service, guest):
            handle = service.connect_nowait(ws_peer.url("/echo"))
            assert handle > 0
            assert service.live == 1
            await service.send(handle, "echo: one")
            await service.send(handle, "two")
            await service.send(handle, "echo: three")
            assert ws_peer.received == []  # nothing could have been sent yet
            assert await guest.wait_for(2) == [
                ("message", handle, "echo: one"),
                ("message", handle, "echo: three"),
            ]
            await service.send(handle, "echo: four")
            assert (await guest.wait_for(3))[2] == ("message", handle, "echo: four")
            assert ws_peer.received == ["echo: one", "two", "echo: three", "echo: four"]


async def test_a_connection_that_cannot_open_is_reported_through_on_closed(
    refused_port: int,
) -> None:
    """A refused connection is not an error of the call (it has returned): on_closed
    says why, with the url, and the handle is unknown afterwards."""
    url = f"ws://127.0.0.1:{refused_port}/x"
    with trio.fail_after(DEADLINE):
        async with running() as (service, guest):
            handle = service.connect_nowait(url)
            assert await guest.wait_for(1) == [
                ("closed", handle, f"websocket-open {url} failed: connection refused")
            ]
            assert service.live == 0
            with pytest.raises(HostCallError, match="unknown websocket handle"):
                await service.send(handle, "late")


async def test_a_silent_server_times_out_through_on_closed_and_the_queue_is_bounded(
    mute: Mute,
) -> None:
    """Against a server that never answers the handshake, sends wait in a queue of at most
    max_message_size bytes (the next is refused, saying why), and the connect timeout is
    reported through on_closed."""
    with trio.fail_after(DEADLINE):
        async with running(connect_timeout=0.5, max_message_size=100) as (service, guest):
            handle = service.connect_nowait(mute.url)
            await service.send(handle, "x" * 60)
            with pytest.raises(HostCallError) as excinfo:
                await service.send(handle, "y" * 60)
            assert str(excinfo.value) == (
                f"websocket-send {handle}: the connection is still opening and 60 bytes "
                "wait to be sent; at most 100 may wait: send the rest once the server answers"
            )
            assert await guest.wait_for(1) == [
                ("closed", handle, f"websocket-open {mute.url} failed: timed out after 0.5 s")
            ]
            await mute.wait_for(accepted=1, ended=1)


async def test_closing_while_it_opens_is_quiet_and_drops_the_connection(mute: Mute) -> None:
    """close_nowait on a connection still in its handshake ends it (the server sees the
    TCP connection go) without an on_closed: the guest asked."""
    with trio.fail_after(DEADLINE):
        async with running() as (service, guest):
            handle = service.connect_nowait(mute.url)
            await mute.wait_for(accepted=1)
            service.close_nowait(handle)
            with pytest.raises(HostCallError, match="unknown websocket handle"):
                await service.send(handle, "late")
            await mute.wait_for(ended=1)
            await trio.testing.wait_all_tasks_blocked()
            assert service.live == 0
            assert guest.events == []


async def test_close_nowait_returns_before_a_frozen_peer_answers_and_keeps_its_slot(
    nursery: trio.Nursery,
) -> None:
    """A peer that stops reading after the handshake (frozen): close_nowait returns at
    once (it is not async: it cannot wait), the handle is unknown from then on, and the
    closing connection holds its slot under max_connections until close_timeout ends it;
    then the slot is free again."""

    async def frozen(stream: trio.SocketStream, conn: WSConnection) -> None:
        await trio.sleep_forever()  # reads nothing: the close frame is never answered

    port = await serve_raw_ws(nursery, frozen)
    url = f"ws://127.0.0.1:{port}/"
    with trio.fail_after(DEADLINE):
        async with running(max_connections=1, close_timeout=0.5) as (service, guest):
            handle = await service.connect(url)
            service.close_nowait(handle)
            with pytest.raises(HostCallError, match="unknown websocket handle"):
                await service.send(handle, "late")
            with pytest.raises(HostCallError) as excinfo:
                service.connect_nowait(url)
            assert str(excinfo.value) == (
                f"websocket-open {url} failed: too many websocket connections, 1 of them "
                "still closing: limit is 1 (limits.max_websockets)"
            )
            while service.live:
                await trio.sleep(0.05)  # close_timeout ends it; nothing to await on
            assert service.connect_nowait(url) > handle
            assert guest.events == []
