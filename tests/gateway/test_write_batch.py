"""Batched writes on a gateway connection (vessel/gateway/_write_batch.py), over a real
socket pair: what a batch sends is held until the batch ends, then written; a write from
another task never overtakes it."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

import trio
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.config import Config
from hypercorn.events import RawData
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, Scope

from vessel.gateway._serve import _TCPServer
from vessel.gateway._write_batch import batched_writes, current_connection


async def _no_app(scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
    raise AssertionError("only the connection's sending is used here")


@contextmanager
def _connection() -> Iterator[tuple[_TCPServer, socket.socket]]:
    """The gateway's Hypercorn connection on one end of a socket pair, and the other end
    (non-blocking: a read shows what has been written so far)."""
    ours, peer = socket.socketpair()
    peer.setblocking(False)
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
    connection = _TCPServer(ASGIWrapper(_no_app), Config(), WorkerContext(None), {}, stream)
    with ours, peer:
        yield connection, peer


def _written(peer: socket.socket) -> bytes:
    try:
        return peer.recv(1 << 16)
    except BlockingIOError:
        return b""


async def test_a_batch_is_held_until_it_ends_then_written_in_order() -> None:
    with _connection() as (connection, peer):
        async with connection.batched():
            for part in (b"one ", b"two ", b"three"):
                await connection.protocol_send(RawData(part))
            assert _written(peer) == b""
        assert _written(peer) == b"one two three"
        # Outside a batch, a write goes out at once.
        await connection.protocol_send(RawData(b"!"))
        assert _written(peer) == b"!"


async def test_another_tasks_write_goes_after_what_is_held() -> None:
    """Hypercorn answers a ping from the connection's reader task while the gateway's
    writer is in a batch: the held frames leave first, then the pong, then the rest.
    A second batch opened meanwhile writes straight through (one batch at a time)."""
    with _connection() as (connection, peer):

        async def other_task(done: trio.Event) -> None:
            async with connection.batched():
                await connection.protocol_send(RawData(b"PONG"))
            done.set()

        async with connection.batched():
            await connection.protocol_send(RawData(b"a"))
            await connection.protocol_send(RawData(b"b"))
            done = trio.Event()
            with trio.fail_after(5):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(other_task, done)
                    await done.wait()
            assert _written(peer) == b"abPONG"
            await connection.protocol_send(RawData(b"c"))
            assert _written(peer) == b""
        assert _written(peer) == b"c"


async def test_batched_writes_outside_a_gateway_connection_write_through() -> None:
    """Where no connection is known (a task not started by the gateway's server),
    batched_writes() is no batch at all."""
    assert current_connection.get() is None
    with _connection() as (connection, peer):
        async with batched_writes():
            await connection.protocol_send(RawData(b"x"))
            assert _written(peer) == b"x"
