"""The child's side of a process actor: connect to the parent, die with it."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import NoReturn

import msgspec
import trio

from ._channel import Channel, NotifyHandler, RequestHandler
from ._errors import ActorError, ProtocolError
from ._lane import BlockingChannel
from ._process import CHANNEL_FDS_ENV, LANE_FDS_ENV, STOP_METHOD
from ._util import collapse_single_exception

__all__ = ["PARENT_LOST_EXIT_CODE", "ParentLink", "open_parent_channel"]

logger = logging.getLogger("actors")

PARENT_LOST_EXIT_CODE = 70
"""Exit status of a child that lost its parent (``EX_SOFTWARE``)."""

# getppid() polling backs up the end-of-stream signal, which a leaked copy of the
# parent's write end (an fd inherited by mistake) would otherwise hide forever.
_PPID_CHECK_INTERVAL = 1.0


@dataclass(frozen=True, eq=False)
class ParentLink:
    """The child's connection to its parent.

    ``stop_requested`` is set when the parent asks the child to stop (and when the
    parent is lost, if ``on_parent_lost`` returned instead of exiting): finish the work
    in hand, then leave the ``open_parent_channel`` block and exit.

    ``lanes`` are the extra channels the parent asked for (``ProcessSpec.lanes``), each
    for one thread of ours to serve with blocking calls. They stay open until the
    process exits: a thread may still be using one when the block is left.
    """

    channel: Channel
    stop_requested: trio.Event
    lanes: tuple[BlockingChannel, ...] = ()


def _exit_now() -> NoReturn:
    # os._exit, not sys.exit: a guest may be stuck in a worker thread, and neither
    # exceptions nor atexit handlers can get it out. Nobody is left to read output.
    os._exit(PARENT_LOST_EXIT_CODE)


def _fd_pair(variable: str, value: str) -> tuple[int, int]:
    try:
        read_fd, write_fd = (int(part) for part in value.split(","))
    except ValueError:
        raise ActorError(f"{variable}={value!r} is not '<read_fd>,<write_fd>'") from None
    for fd in (read_fd, write_fd):
        # Our own children must not hold the parent's pipe, or they would keep it
        # alive after we die and the parent would never see end-of-stream.
        os.set_inheritable(fd, False)
    return read_fd, write_fd


def _channel_fds() -> tuple[int, int]:
    value = os.environ.pop(CHANNEL_FDS_ENV, None)
    if value is None:
        raise ActorError(
            f"{CHANNEL_FDS_ENV} is not set: this process was not started by "
            "actors.open_process_actor"
        )
    return _fd_pair(CHANNEL_FDS_ENV, value)


def _lane_fds() -> list[tuple[int, int]]:
    value = os.environ.pop(LANE_FDS_ENV, "")
    return [_fd_pair(LANE_FDS_ENV, pair) for pair in value.split(";") if pair]


@asynccontextmanager
async def open_parent_channel(
    *,
    name: str,
    on_request: RequestHandler,
    on_notify: NotifyHandler | None = None,
    on_parent_lost: Callable[[], None] | None = None,
) -> AsyncIterator[ParentLink]:
    """Connect to the parent that started us with :func:`open_process_actor`.

    Reads ``ACTORS_CHANNEL_FDS`` and ``ACTORS_LANE_FDS`` (and removes them from the
    environment), serves a :class:`Channel` over the first pipes, opens a
    :class:`BlockingChannel` for each lane and yields a :class:`ParentLink`. The stop
    notification sets ``link.stop_requested``; other notifications go to ``on_notify``.

    The channel runs before the block's body does: a request may reach ``on_request``
    before the body has stored the link anywhere.

    When the parent's end reaches end-of-stream or breaks (the parent died, even by
    SIGKILL) or our parent pid changes, ``on_parent_lost`` is called once — by default
    ``os._exit(70)`` at once, because the process must never outlive its parent.
    """
    read_fd, write_fd = _channel_fds()
    lanes = tuple(
        BlockingChannel(lane_read, lane_write, name=f"{name}/lane{index}")
        for index, (lane_read, lane_write) in enumerate(_lane_fds(), start=1)
    )
    stop_requested = trio.Event()
    original_ppid = os.getppid()
    leaving = False

    async def route_notification(method: str, body: msgspec.Raw) -> None:
        if method == STOP_METHOD:
            stop_requested.set()
        elif on_notify is not None:
            await on_notify(method, body)

    channel = Channel(
        trio.lowlevel.FdStream(write_fd),
        trio.lowlevel.FdStream(read_fd),
        name=name,
        on_request=on_request,
        on_notify=route_notification,
    )
    link = ParentLink(channel, stop_requested, lanes)

    def parent_lost(why: str) -> None:
        nonlocal leaving
        if leaving:
            return
        leaving = True
        if on_parent_lost is None:
            # Not even a log line first: stderr may block or fail with the parent gone.
            _exit_now()
        logger.warning("%s: parent lost (%s)", name, why)
        stop_requested.set()
        on_parent_lost()

    async def serve_channel(*, task_status: trio.TaskStatus[None]) -> None:
        try:
            await channel.run(task_status=task_status)
        except ProtocolError as exc:
            parent_lost(f"protocol error: {exc}")
            return
        if channel.broken:
            parent_lost("end of stream on the parent channel")

    async def watch_parent_pid() -> None:
        while True:
            await trio.sleep(_PPID_CHECK_INTERVAL)
            if os.getppid() != original_ppid:
                parent_lost(f"parent pid changed from {original_ppid} to {os.getppid()}")
                return

    with collapse_single_exception():
        async with trio.open_nursery() as nursery:
            try:
                await nursery.start(serve_channel)
                nursery.start_soon(watch_parent_pid)
                yield link
            finally:
                # Leaving on purpose: the channel ending now is not the parent's death.
                leaving = True
                # No await here: a Cancelled raised in this finally would replace the
                # caller's exception. run() closes the channel as it unwinds.
                nursery.cancel_scope.cancel()
