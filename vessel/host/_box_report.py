"""What a module process tells the daemon about its work on the box CPU: the daemon
quarantines the module there while it has some (``vessel._cpu_box``).

Two kinds of work hold the box: guest work that runs away or floods
(``vessel.host._confine``), and a start-up after a crash. Guest work during a normal
start (instantiating the component, on-load) is not reported: a start-up is not
misbehaviour. Each claim says why, for the daemon's log.

The report goes out from the thread that confines or releases, over a lane of its own,
at once: every millisecond between a runaway's confinement and the daemon's quarantine
is a millisecond in which the healthy modules share their CPUs with it. Handing the
report to this process's trio loop instead cost 0.5-2.5 ms on a busy machine, the loop
waiting for a CPU to send it (bench/, ``python -m bench.timeline``).

Those threads must never block (the watchdog enforces every deadline), so a report that
finds the lane's pipe full is left to the trio loop, which sends it once there is room.
The latest state is sent, changes in between are folded, and none is dropped: a lost
"no longer" would keep the module quarantined for nothing.
"""

from __future__ import annotations

import contextlib
import threading

import trio

from actors import BlockingChannel, ChannelBroken, ChannelClosed

from .. import _ipc
from ._confine import BoxReason


class BoxReport:
    """Counts what holds the box in this process and tells the daemon over ``lane``
    (which nothing else writes to). ``run`` sends what could not be sent at once."""

    def __init__(self, lane: BlockingChannel, token: trio.lowlevel.TrioToken) -> None:
        self._lane = lane
        self._token = token
        # Taken by the watchdog thread (inside its own lock), the guest thread and the
        # trio loop; held for a state change and at most one small non-blocking write.
        self._lock = threading.Lock()
        self._starting = True
        self._holders = 0
        self._unreported = 0
        self._sent = False
        #: Why the latest holder took the box (what the daemon is told with the claim).
        self._why: BoxReason = "runaway"
        self._backlogged = False
        self._wake = trio.Event()

    # -- from any thread -------------------------------------------------------------

    def changed(self, occupied: bool, why: BoxReason) -> None:
        """Work entered (True) or left (False) the box, for ``why`` (a ``BoxChange``)."""
        with self._lock:
            if why != "restart" and occupied and self._starting:
                self._unreported += 1
            elif why != "restart" and not occupied and self._unreported:
                self._unreported -= 1
            else:
                self._holders += 1 if occupied else -1
                if occupied:
                    self._why = why
            self._send()

    def started(self) -> None:
        """The start-up is over: confined guest work counts from now on."""
        with self._lock:
            self._starting = False

    def _send(self) -> None:
        """Send the state if it changed (with the lock held); if the pipe is full, leave
        it to ``run``."""
        state = self._holders > 0
        if state == self._sent or self._backlogged:
            return  # a backlogged report is sent with the state of when it goes out
        try:
            sent = self._lane.try_notify(_ipc.GUEST_BOX, _ipc.Boxed(occupied=state, why=self._why))
        except (ChannelBroken, ChannelClosed):
            return  # the daemon is gone, or this process is ending: nobody to tell
        if sent:
            self._sent = state
            return
        self._backlogged = True
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(self._wake_up)

    # -- on the trio loop --------------------------------------------------------------

    def _wake_up(self) -> None:
        self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            while not self._lane.closed:
                # The write end is shared with nobody but this report, and the lane is
                # closed only as the process ends: waiting on it here is safe.
                await trio.lowlevel.wait_writable(self._lane.write_fileno())
                with self._lock:
                    self._backlogged = False
                    self._send()
                    if not self._backlogged:
                        break
