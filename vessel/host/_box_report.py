"""What a module process tells the daemon about its work on the box CPU: the daemon
quarantines the module there while it has some (``vessel._cpu_box``).

Two kinds of work hold the box: guest work confined for running long
(``vessel.host._confine``), and a start-up after a crash. Guest work confined while the
module starts normally (instantiating the component, on-load) is not reported: a
start-up is not misbehaviour.

The latest state is sent, changes in between are folded, and none is dropped: a lost "no
longer" would keep the module quarantined for nothing. The threads that confine or
release only hand the change to the trio loop, so they never block.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import trio

from actors import ActorError, Channel

from .. import _ipc


class BoxReport:
    """Counts what holds the box in this process and tells the daemon (``run``)."""

    def __init__(self, token: trio.lowlevel.TrioToken) -> None:
        self._token = token
        self._starting = True
        self._holders = 0
        self._unreported = 0
        self._sent = False
        self._wake = trio.Event()

    # -- from any thread -------------------------------------------------------------

    def guest(self, occupied: bool) -> None:
        """Guest work entered (True) or left (False) the box."""
        self._post(self._guest, occupied)

    def restart(self, occupied: bool) -> None:
        """A start-up after a crash entered or left the box."""
        self._post(self._count, 1 if occupied else -1)

    def started(self) -> None:
        """The start-up is over: confined guest work counts from now on. (Posted too, so
        that it comes after what the start-up's threads posted before.)"""
        self._post(self._started)

    def _post(self, fn: Callable[..., None], *args: Any) -> None:
        with contextlib.suppress(trio.RunFinishedError):  # the process is ending
            self._token.run_sync_soon(fn, *args)

    # -- on the trio loop --------------------------------------------------------------

    def _started(self) -> None:
        self._starting = False

    def _guest(self, occupied: bool) -> None:
        if occupied and self._starting:
            self._unreported += 1
        elif not occupied and self._unreported:
            self._unreported -= 1
        else:
            self._count(1 if occupied else -1)

    def _count(self, delta: int) -> None:
        self._holders += delta
        self._wake.set()

    async def run(
        self, channel: Channel, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        with contextlib.suppress(ActorError):  # the daemon is gone: nobody to tell
            while True:
                await self._wake.wait()
                self._wake = trio.Event()
                while self._sent != (self._holders > 0):
                    state = self._holders > 0
                    await channel.notify(_ipc.GUEST_BOX, _ipc.Boxed(occupied=state))
                    self._sent = state
