"""WebSocketService against real local servers: messages both ways, every way a socket
ends, limits, and the errors the guest sees."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import pytest
import trio
import trio.testing
from wsproto import WSConnection
from wsproto.events import TextMessage

from vessel.host._hosterrors import HostCallError
from vessel.host._websockets import WebSocketService

from .conftest import WsPeer, serve_raw_ws

#: Bound on every test; the slowest legitimate wait here is a 0.3 s timeout.
DEADLINE = 10


class Guest:
    """Records what the service hands to the guest, in order, and lets tests wait for it."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int, str]] = []
        self._changed = trio.Event()

    def on_message(self, handle: int, text: str) -> None:
        self._record(("message", handle, text))

    def on_closed(self, handle: int, reason: str) -> None:
        self._record(("closed", handle, reason))

    def _record(self, event: tuple[str, int, str]) -> None:
        self.events.append(event)
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, count: int) -> list[tuple[str, int, str]]:
        """Wait until ``count`` events have arrived (the caller bounds the wait)."""
        while len(self.events) < count:
            await self._changed.wait()
        return self.events


@asynccontextmanager
async def running(**limits: Any) -> AsyncIterator[tuple[WebSocketService, Guest]]:
    guest = Guest()
    limits.setdefault("close_timeout", 1.0)
    service = WebSocketService(guest.on_message, guest.on_closed, **limits)
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        yield service, guest
        nursery.cancel_scope.cancel()


async def test_messages_flow_both_ways(ws_peer: WsPeer) -> None:
    """connect returns a handle once the socket is open; sent text reaches the peer and
    the peer's text frames reach on_message with that handle."""
    with trio.fail_after(DEADLINE):
        async with running() as (service, guest):
            handle = await service.connect(ws_peer.url("/echo"))
            assert handle > 0
            assert service.live == 1
            await service.send(handle, "echo: hello")
            await service.send(handle, "no echo")
            assert await guest.wait_for(1) == [("message", handle, "echo: hello")]
            await ws_peer.wait_for(lambda: len(ws_peer.received) == 2)
            assert ws_peer.received == ["echo: hello", "no echo"]


async def test_peer_close_is_reported_once_with_its_reason(ws_peer: WsPeer) -> None:
    """Messages sent before the peer's close frame are delivered first; then on_closed
    carries the peer's code and reason, exactly once, and the handle is forgotten."""
    with trio.fail_after(DEADLINE):
        async with running() as (service, guest):
            handle = await service.connect(ws_peer.url("/close"))
            events = await guest.wait_for(2)
            await trio.sleep(0.05)  # room for a wrong second on_closed to show up
            assert events == [
                ("message", handle, "bye soon"),
                ("closed", handle, "closed by peer: code 1000 (bye)"),
            ]
            assert service.live == 0
            with pytest.raises(HostCallError, match=rf"unknown websocket handle {handle}\b"):
                await service.send(handle, "anyone?")


async def test_dropped_tcp_is_reported_as_connection_lost(nursery: trio.Nursery) -> None:
    """A peer that vanishes without a close frame yields on_closed "connection lost"."""

    async def say_hi_and_drop(stream: trio.SocketStream, conn: WSConnection) -> None:
        await stream.send_all(conn.send(TextMessage(data="hi")))
        await stream.aclose()

    port = await serve_raw_ws(nursery, say_hi_and_drop)
    with trio.fail_after(DEADLINE):
        async with running() as (service, guest):
            handle = await service.connect(f"ws://127.0.0.1:{port}/")
            assert await guest.wait_for(2) == [
                ("message", handle, "hi"),
                ("closed", handle, "connection lost: no close frame from the peer (code 1006)"),
            ]
            assert service.live == 0


async def test_guest_close_is_clean_and_not_reported(ws_peer: WsPeer) -> None:
    """close() sends a normal close frame (1000) and waits for it; on_closed is not
    called, and the handle is unknown afterwards for send and close alike."""
    with trio.fail_after(DEADLINE):
        async with running() as (service, guest):
            handle = await service.connect(ws_peer.url("/echo"))
            await service.close(handle)
            assert service.live == 0
            await ws_peer.wait_for(lambda: bool(ws_peer.close_codes))
            assert ws_peer.close_codes == [1000]
            with pytest.raises(HostCallError) as excinfo:
                await service.send(handle, "late")
            assert str(excinfo.value) == (
                f"websocket-send: unknown websocket handle {handle} (never opened, or closed)"
            )
            with pytest.raises(HostCallError, match="websocket-close: unknown websocket handle"):
                await service.close(handle)
            await trio.sleep(0.05)
            assert guest.events == []


async def test_connect_refused(refused_port: int) -> None:
    """A refused TCP connection is a HostCallError naming the URL and the OS's reason."""
    url = f"ws://127.0.0.1:{refused_port}/x"
    with trio.fail_after(DEADLINE):
        async with running() as (service, _):
            with pytest.raises(HostCallError) as excinfo:
                await service.connect(url)
            assert str(excinfo.value) == f"websocket-connect {url} failed: connection refused"
            assert service.live == 0


async def test_handshake_rejected(ws_peer: WsPeer) -> None:
    """A server that answers the upgrade with an HTTP error: the status is in the error."""
    url = ws_peer.url("/reject")
    with trio.fail_after(DEADLINE):
        async with running() as (service, _):
            with pytest.raises(HostCallError) as excinfo:
                await service.connect(url)
    assert str(excinfo.value) == (
        f"websocket-connect {url} failed: the server refused the websocket handshake with HTTP 403"
    )


async def test_connect_timeout(nursery: trio.Nursery) -> None:
    """A server that accepts TCP but never answers the handshake: connect gives up after
    connect_timeout with an error that says so."""

    async def mute(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    listeners = await nursery.start(partial(trio.serve_tcp, mute, 0, host="127.0.0.1"))
    url = f"ws://127.0.0.1:{listeners[0].socket.getsockname()[1]}/"
    with trio.fail_after(DEADLINE):
        async with running(connect_timeout=0.3) as (service, _):
            with pytest.raises(HostCallError) as excinfo:
                await service.connect(url)
            assert str(excinfo.value) == f"websocket-connect {url} failed: timed out after 0.3 s"
            assert service.live == 0


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://127.0.0.1/x", "url scheme 'http' is not allowed (ws or wss only)"),
        ("file:///etc/passwd", "url scheme 'file' is not allowed (ws or wss only)"),
        ("ws:///nohost", "invalid url 'ws:///nohost': no host"),
        ("ws://127.0.0.1:99999/", "invalid url 'ws://127.0.0.1:99999/'"),
    ],
)
async def test_bad_urls_are_refused(url: str, message: str) -> None:
    """Only ws:// and wss:// URLs with a host are dialled; the error says what is wrong."""
    with trio.fail_after(DEADLINE):
        async with running() as (service, _):
            with pytest.raises(HostCallError) as excinfo:
                await service.connect(url)
    assert str(excinfo.value).startswith(f"websocket-connect: {message}")


async def test_connection_limit(ws_peer: WsPeer) -> None:
    """No more than max_connections sockets at once; closing one frees its slot."""
    with trio.fail_after(DEADLINE):
        async with running(max_connections=2) as (service, _):
            first = await service.connect(ws_peer.url("/echo"))
            await service.connect(ws_peer.url("/echo"))
            url = ws_peer.url("/echo")
            with pytest.raises(HostCallError) as excinfo:
                await service.connect(url)
            assert str(excinfo.value) == (
                f"websocket-connect {url} failed: too many websocket connections: "
                "limit is 2 (limits.max_websockets)"
            )
            await service.close(first)
            third = await service.connect(url)
            assert third > first
            assert service.live == 2


async def test_binary_frames(ws_peer: WsPeer, caplog: pytest.LogCaptureFixture) -> None:
    """A binary frame holding UTF-8 reaches the guest as text; one that is not UTF-8 is
    dropped with a warning, and the connection keeps working."""
    with trio.fail_after(DEADLINE):
        async with running() as (service, guest):
            with caplog.at_level(logging.WARNING, logger="vessel.host"):
                handle = await service.connect(ws_peer.url("/binary"))
                events = await guest.wait_for(2)
    assert events == [("message", handle, '{"a": 1}'), ("message", handle, "after")]
    assert "dropped a 12-byte binary message that is not UTF-8" in caplog.text


async def test_oversized_messages(ws_peer: WsPeer) -> None:
    """Too big to send: an error, and the socket stays usable. Too big received: the
    socket is closed with 1009 and on_closed names the limit."""
    with trio.fail_after(DEADLINE):
        async with running(max_message_size=100) as (service, guest):
            echo = await service.connect(ws_peer.url("/echo"))
            with pytest.raises(HostCallError) as excinfo:
                await service.send(echo, "é" * 60)  # 60 characters, 120 bytes
            assert str(excinfo.value) == (
                f"websocket-send {echo}: message is 120 bytes, the limit is 100 bytes"
            )
            await service.send(echo, "echo: still fine")
            assert await guest.wait_for(1) == [("message", echo, "echo: still fine")]

            big = await service.connect(ws_peer.url("/big"))
            events = await guest.wait_for(2)
            assert events[1] == (
                "closed",
                big,
                "message too big: the peer sent a message over the limit of 100; "
                "closed with code 1009",
            )
            await ws_peer.wait_for(lambda: bool(ws_peer.close_codes))
            assert ws_peer.close_codes == [1009]


async def test_send_to_a_peer_that_never_reads(nursery: trio.Nursery) -> None:
    """A send that cannot complete within send_timeout fails, and the connection is
    dropped and reported, so the guest is never stuck behind a dead peer."""

    async def never_read(stream: trio.SocketStream, conn: WSConnection) -> None:
        await trio.sleep_forever()

    port = await serve_raw_ws(nursery, never_read)
    with trio.fail_after(DEADLINE):
        async with running(send_timeout=0.2) as (service, guest):
            handle = await service.connect(f"ws://127.0.0.1:{port}/")
            reason = (
                "connection lost: a send did not complete within 0.2 s (the peer is not reading)"
            )
            with pytest.raises(HostCallError) as excinfo:  # noqa: PT012
                for _ in range(1000):  # until the socket buffers are full
                    await service.send(handle, "z" * (1 << 20))
            assert str(excinfo.value) == f"websocket-send {handle}: {reason}"
            assert await guest.wait_for(1) == [("closed", handle, reason)]
            assert service.live == 0


async def test_close_all_and_shutdown_say_going_away(ws_peer: WsPeer) -> None:
    """close_all, and cancelling run, close every socket with 1001 (going away) before
    returning, without on_closed."""
    with trio.fail_after(DEADLINE):
        async with running() as (service, guest):
            await service.connect(ws_peer.url("/echo"))
            await service.connect(ws_peer.url("/echo"))
            await service.close_all()
            assert service.live == 0
            await ws_peer.wait_for(lambda: len(ws_peer.close_codes) == 2)
            await service.connect(ws_peer.url("/echo"))
        # run was cancelled on leaving the block; it closed the third socket first.
        await ws_peer.wait_for(lambda: len(ws_peer.close_codes) == 3)
    assert ws_peer.close_codes == [1001, 1001, 1001]
    assert guest.events == []
    with pytest.raises(HostCallError, match="websockets are stopped"):
        await service.connect(ws_peer.url("/echo"))


async def test_tls_failure_is_reported_as_such(nursery: trio.Nursery) -> None:
    """wss:// to a server that does not speak TLS fails fast with a TLS error, not with a
    handshake timeout."""

    async def plain_http(stream: trio.SocketStream) -> None:
        await stream.send_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
        await stream.aclose()

    listeners = await nursery.start(partial(trio.serve_tcp, plain_http, 0, host="127.0.0.1"))
    url = f"wss://127.0.0.1:{listeners[0].socket.getsockname()[1]}/"
    with trio.fail_after(DEADLINE):
        async with running(connect_timeout=5) as (service, _):
            with pytest.raises(HostCallError) as excinfo:
                await service.connect(url)
    assert str(excinfo.value) == (
        f"websocket-connect {url} failed: tls error: wrong version number"
    )


async def test_close_all_cancels_a_connect_in_progress(nursery: trio.Nursery) -> None:
    """A connect still in its handshake when close_all runs fails with a clear error
    instead of handing out a handle that is already closed."""

    async def mute(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    listeners = await nursery.start(partial(trio.serve_tcp, mute, 0, host="127.0.0.1"))
    url = f"ws://127.0.0.1:{listeners[0].socket.getsockname()[1]}/"
    errors: list[str] = []

    async def connect(service: WebSocketService) -> None:
        with pytest.raises(HostCallError) as excinfo:
            await service.connect(url)
        errors.append(str(excinfo.value))

    with trio.fail_after(DEADLINE):
        async with running() as (service, guest), trio.open_nursery() as guests:
            guests.start_soon(connect, service)
            await trio.testing.wait_all_tasks_blocked()
            assert service.live == 1
            await service.close_all()
    assert errors == [
        f"websocket-connect {url} failed: cancelled (the module's websockets were closed)"
    ]
    assert service.live == 0
    assert guest.events == []


async def test_a_failing_callback_ends_run_without_hanging(ws_peer: WsPeer) -> None:
    """A callback that raises is a host bug: run ends with it (it is not swallowed), and
    the other, shielded, connections are still closed so run cannot hang."""

    def on_message(handle: int, text: str) -> None:
        raise RuntimeError("mailbox bug")

    service = WebSocketService(on_message, lambda handle, reason: None, close_timeout=1.0)
    with (
        trio.fail_after(DEADLINE),
        pytest.RaisesGroup(
            pytest.RaisesExc(RuntimeError, match="mailbox bug"), flatten_subgroups=True
        ),
    ):
        async with trio.open_nursery() as nursery:
            await nursery.start(service.run)
            await service.connect(ws_peer.url("/echo"))
            crasher = await service.connect(ws_peer.url("/echo"))
            await service.send(crasher, "echo: boom")
            await trio.sleep_forever()
    with trio.fail_after(DEADLINE):
        await ws_peer.wait_for(lambda: len(ws_peer.close_codes) == 2)
    # The crashed connection's stream was cut (1006); the other said goodbye (1001).
    assert sorted(code or 0 for code in ws_peer.close_codes) == [1001, 1006]


async def test_usable_from_the_guest_thread(ws_peer: WsPeer) -> None:
    """The guest's worker thread reaches connect and send with trio.from_thread.run, the
    way the host functions do, while messages keep flowing on the trio loop."""
    with trio.fail_after(DEADLINE):
        async with running() as (service, guest):

            def guest_code() -> int:
                handle = trio.from_thread.run(service.connect, ws_peer.url("/echo"))
                trio.from_thread.run(service.send, handle, "echo: from the guest")
                return handle

            handle = await trio.to_thread.run_sync(guest_code)
            assert await guest.wait_for(1) == [("message", handle, "echo: from the guest")]
