"""Several WebSocket frames to one client in one socket write.

A burst of events reaches each subscribed client as many small frames. Written one at a
time, every frame costs its own ``send()`` system call, and the client's wake-up and
``recv()`` to match: in the fan-out benchmark (bench/, 10 clients) that was the largest
single part of the daemon's CPU per delivered event. So the gateway's writer hands all
that has queued up for a client to the connection as one batch: Hypercorn still frames
each message (and wsproto checks each), but the connection holds the bytes and writes
them with one ``send()`` when the batch ends.

The connection is Hypercorn's, so the gateway cannot name it: the server
(``_serve._TCPServer``) sets :data:`current_connection` in its own task, and trio copies
a task's context into the tasks it starts, among them the WebSocket handler.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager, nullcontext
from contextvars import ContextVar
from typing import Protocol


class BatchingConnection(Protocol):
    def batched(self) -> AbstractAsyncContextManager[None]:
        """Hold this task's writes until the block ends, then write them at once."""
        ...

    def limit_messages(self, size: int | None) -> None:
        """The largest WebSocket message taken from now on (None: the server's limit)."""
        ...


#: The connection the current task serves, if its server can batch writes.
current_connection: ContextVar[BatchingConnection | None] = ContextVar(
    "vessel_gateway_connection", default=None
)


def limit_messages(size: int | None) -> None:
    """The largest WebSocket message the current connection takes from now on (None:
    the server's limit again), where the server can tell: a client that has not logged
    in is held to a small one (_ws.py)."""
    connection = current_connection.get()
    if connection is not None:
        connection.limit_messages(size)


def batched_writes() -> AbstractAsyncContextManager[None]:
    """Write the frames sent in this block with one system call (where the server can)."""
    connection = current_connection.get()
    return nullcontext() if connection is None else connection.batched()
