"""The guest's own thread in a module process: every guest invocation runs here.

It takes work from two places, one item at a time, alternating when both have some:

* the daemon's commands, read straight from the *lane* (a pipe pair of its own, see
  ``actors._lane``) with blocking system calls, and answered the same way: a command
  goes pipe → this thread → guest → pipe with no event loop and no thread hop in between
  (that path was most of a call's cost when commands went through trio's tasks and a
  worker thread, see docs/performance.md);
* deliveries the trio loop queues for it: bus events, timer fires, WebSocket frames.

The host functions the guest calls run here too: the daemon's RPCs (storage, calls,
subscriptions) and emitted events go over the lane; timers, sockets and HTTP are trio's,
reached through a :class:`TrioPortal`. A trap replaces the instance; too many traps in a
row end the process (the daemon's supervisor restarts it with backoff).
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import msgspec
import trio

from actors import BlockingChannel, ChannelBroken, Notify, Request

from .. import _ipc
from ._portal import TrioPortal
from ._runtime import GuestRuntime, GuestTrap

#: More instance replacements than this within REPLACEMENT_PERIOD end the process.
MAX_REPLACEMENTS = 3
REPLACEMENT_PERIOD = 60.0
#: Exit status of a module process that gave up (too many traps, a failed reload).
FATAL_EXIT_CODE = 3


class GuestLoadError(Exception):
    """``on-load`` returned an error or trapped: the module cannot start."""


@dataclass
class Delivery:
    """Something for the guest that is not a command: the export and its arguments."""

    export: str
    args: tuple[Any, ...]
    #: The timer whose fire this is; it must be claimed before the guest sees it.
    timer: int | None = None


@dataclass
class _Command:
    request_id: int
    action: str
    #: When the daemon stops waiting (its monotonic clock: same host, same clock).
    deadline: float
    #: Set by defer-reply: the answer comes later, through complete-reply.
    token: int | None = None


class GuestThread:
    """Owns the guest instance and runs every invocation of it, on one thread."""

    def __init__(
        self,
        *,
        module_id: str,
        lane: BlockingChannel,
        portal: TrioPortal,
        log: Callable[[str, str], None],
        last_word: Callable[[str], None],
        claim_timer: Callable[[int], bool],
        release_resources: Callable[[str], Awaitable[None]],
        flush_log: Callable[[], Awaitable[None]],
        mailbox_size: int,
        reply_timeout: float,
    ) -> None:
        self._id = module_id
        self._lane = lane
        self._portal = portal
        self._log = log
        self._last_word = last_word
        self._claim_timer = claim_timer
        self._release_resources = release_resources
        self._flush_log = flush_log
        self._mailbox_size = mailbox_size
        self._reply_timeout = reply_timeout
        self._runtime: GuestRuntime | None = None
        self._mailbox: deque[Delivery] = deque()
        # The trio loop wakes this thread through an eventfd when it queues a delivery;
        # one poll() waits for that and for the lane at once.
        self._wakeup = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._poller = select.poll()
        self._poller.register(lane.fileno(), select.POLLIN)
        self._poller.register(self._wakeup, select.POLLIN)
        self._lane_turn = True
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.finished = trio.Event()
        self._current: _Command | None = None
        self._chain: list[str] = []
        self._deferred: dict[int, _Command] = {}
        self._last_token = 0
        self._replacements: deque[float] = deque()
        self.invocations = 0
        self.traps = 0
        #: Called on the guest thread after every invocation (the host functions report
        #: what they collected during it).
        self.after_invocation: Callable[[], None] = lambda: None

    # -- the trio loop's side ------------------------------------------------------------

    @property
    def queued(self) -> int:
        """Work waiting for the guest: deliveries, and commands already read."""
        return len(self._mailbox) + self._lane.backlog

    @property
    def confined(self) -> int:
        """Invocations that ran long and were confined to one CPU."""
        return self._runtime.confined if self._runtime is not None else 0

    @property
    def yields(self) -> int:
        """Times long guest work gave way to other tasks (``_slicing``)."""
        return self._runtime.yields if self._runtime is not None else 0

    @property
    def replacements(self) -> int:
        return len(self._replacements)

    def load(self, runtime: GuestRuntime) -> None:
        """Load the component, instantiate it and run ``on-load`` (on any one thread,
        before :meth:`start`); raises :class:`GuestLoadError` if the guest fails."""
        try:
            runtime.load()
            self._runtime = runtime
            self._load_instance()
        except BaseException:
            # What on-load logged is on the lane, and the daemon ends the process on
            # this error: make sure it has read the lines first (tests/sdk: a guest's
            # traceback from on_load was lost).
            self._sync()
            raise
        self._lane.flush()

    def start(self) -> None:
        """Start serving commands and deliveries on the guest's thread."""
        self._thread = threading.Thread(target=self._main, name=f"guest:{self._id}", daemon=True)
        self._thread.start()

    def deliver(self, item: Delivery) -> bool:
        """Queue a delivery (trio loop); False when the mailbox is full (dropped)."""
        if self._stopping:
            return True  # nothing more reaches the guest once it is stopping
        if len(self._mailbox) >= self._mailbox_size:
            return False
        self._mailbox.append(item)
        os.eventfd_write(self._wakeup, 1)
        return True

    def stop(self) -> None:
        """Ask the thread to finish the invocation in hand, run ``on-unload`` and end;
        :attr:`finished` is set when it has."""
        self._stopping = True
        if self._thread is None:
            self.finished.set()
            return
        os.eventfd_write(self._wakeup, 1)

    # -- host functions (the guest thread, inside an invocation) -------------------------

    def current_chain(self) -> list[str]:
        return list(self._chain)

    def defer_reply(self) -> int | str:
        command = self._current
        if command is None:
            return "defer-reply: only possible while handling on-command"
        if command.token is None:
            self._expire_deferred()
            self._last_token += 1
            command.token = self._last_token
            self._deferred[command.token] = command
        return command.token

    def complete_reply(self, token: int, ok: bool, value: str) -> str | None:
        self._expire_deferred()
        command = self._deferred.pop(token, None)
        if command is None:
            return f"complete-reply: unknown or expired reply token {token}"
        self._lane.reply(command.request_id, _ipc.CommandResult(ok=ok, value=value))
        return None

    def _expire_deferred(self) -> None:
        # The daemon answered "timeout" at the deadline already; a late completion has
        # nobody to go to, and the token must not be kept forever.
        if self._deferred:
            now = time.monotonic()
            for token in [t for t, c in self._deferred.items() if c.deadline < now]:
                del self._deferred[token]

    def _fail_deferred(self, reason: str) -> None:
        deferred, self._deferred = self._deferred, {}
        for command in deferred.values():
            result = _ipc.CommandResult(ok=False, value=f"module {self._id!r}: {reason}")
            self._lane.reply(command.request_id, result)

    # -- the guest thread ----------------------------------------------------------------

    def _main(self) -> None:
        try:
            while not self._stopping:
                item = self._next()
                if isinstance(item, Request):
                    self._command(item)
                elif isinstance(item, Delivery):
                    self._deliver(item)
            self._wind_down()
        except ChannelBroken:
            pass  # the daemon is gone; the main channel ends the process
        except BaseException as exc:
            self._fatal(f"the guest thread failed: {exc!r}")
        finally:
            self._portal.run_sync_soon(self.finished.set)

    def _next(self) -> Request | Notify | Delivery | None:
        """The next piece of work, taking turns between the lane and the mailbox; waits
        (None after a wake-up) when there is none."""
        lane = self._lane
        if not lane.backlog:
            # No command known to be waiting: what the last invocation wrote (its answer,
            # its events) goes out before anything else is looked at. While commands
            # are queued, answers are written in batches instead.
            lane.flush()
        for from_lane in (self._lane_turn, not self._lane_turn):
            if from_lane:
                message = lane.receive(timeout=0)
                if message is not None:
                    self._lane_turn = False
                    return message
            elif self._mailbox:
                self._lane_turn = True
                return self._mailbox.popleft()
        ready = self._poller.poll()
        if any(fd == self._wakeup for fd, _events in ready):
            # Reset before looking again: a delivery queued after this sets it anew.
            with contextlib.suppress(BlockingIOError):
                os.eventfd_read(self._wakeup)
        return None

    def _command(self, request: Request) -> None:
        if request.method != _ipc.GUEST_COMMAND:
            self._lane.reply_error(request.id, ValueError(f"unknown request {request.method!r}"))
            return
        try:
            params = _ipc.decode(request.body, _ipc.CommandRequest)
        except msgspec.ValidationError as exc:
            self._lane.reply_error(request.id, exc)
            return
        now = time.monotonic()
        deadline = params.deadline if params.deadline is not None else now + self._reply_timeout
        if now > deadline:
            # The daemon has stopped waiting for it (the guest was busy): don't run it.
            result = _ipc.CommandResult(
                ok=False, value=f"module {self._id!r} was too busy to start it", timed_out=True
            )
            self._lane.reply(request.id, result)
            return
        runtime = self._runtime
        assert runtime is not None
        command = _Command(request.id, params.action, deadline)
        self.invocations += 1
        self._current = command
        self._chain = params.chain
        try:
            answer = runtime.call("on-command", params.action, params.params)
            if command.token is None:
                result = _ipc.CommandResult(ok=answer.tag == "ok", value=answer.payload)
                self._lane.reply(request.id, result)
        except GuestTrap as trap:
            self.traps += 1
            # A trapped command is answered now, deferred or not, once the instance is
            # replaced (so the next call finds a working one).
            if command.token is not None:
                self._deferred.pop(command.token, None)
            self._current = None
            self._replace_instance(str(trap))
            result = _ipc.CommandResult(
                ok=False, value=f"module {self._id!r}: {trap}", trapped=True
            )
            self._lane.reply(request.id, result)
        finally:
            self._current = None
            self._chain = []
            self.after_invocation()

    def _deliver(self, item: Delivery) -> None:
        # False: the guest cleared the timer after it fired; it must not see the fire.
        if item.timer is not None and not self._portal.run_sync(self._claim_timer, item.timer):
            return
        runtime = self._runtime
        assert runtime is not None
        self.invocations += 1
        if not runtime.has_export(item.export):
            return
        try:
            error = runtime.call(item.export, *item.args)
        except GuestTrap as trap:
            self.traps += 1
            self._replace_instance(str(trap))
            return
        finally:
            self.after_invocation()
        if error is not None:
            self._log("warning", f"{item.export} returned an error: {error}")

    def _load_instance(self) -> None:
        runtime = self._runtime
        assert runtime is not None
        try:
            runtime.instantiate()
            error = runtime.call("on-load")
        except GuestTrap as trap:
            raise GuestLoadError(str(trap)) from None
        finally:
            self.after_invocation()
        if error is not None:
            raise GuestLoadError(f"on-load returned an error: {error}")

    def _replace_instance(self, reason: str) -> None:
        """Release the dead instance's resources and start a fresh one (and report its
        long work at once from then on: a module that trapped is a suspect)."""
        now = time.monotonic()
        self._replacements.append(now)
        while self._replacements and now - self._replacements[0] > REPLACEMENT_PERIOD:
            self._replacements.popleft()
        self._log("error", f"{reason}; replacing the instance")
        if len(self._replacements) > MAX_REPLACEMENTS:
            self._fatal(
                f"{len(self._replacements)} traps within {REPLACEMENT_PERIOD:.0f} s "
                f"(last: {reason})"
            )
        self._fail_deferred("the instance was replaced before it completed the reply")
        # Timers, sockets and subscriptions belong to the instance that made them; the
        # new instance's on-load sets up its own.
        self._portal.run(self._release_resources, reason)
        try:
            self._load_instance()
        except GuestLoadError as exc:
            self._fatal(f"could not replace the instance after a trap: {exc}")
        # Only now: the new instance's start is a start (never reported), and the
        # daemon's quarantine line must name the trap, not that start.
        assert self._runtime is not None
        self._runtime.suspect = True

    def _wind_down(self) -> None:
        """Stopping: answer what is waiting, then let the guest say goodbye (bounded by
        its invocation deadline)."""
        self._fail_deferred("the module stopped before it completed the reply")
        while (message := self._lane.receive(timeout=0)) is not None:
            if isinstance(message, Request):
                self._lane.reply_error(message.id, RuntimeError(f"module {self._id!r} is stopping"))
        self._lane.flush()
        runtime = self._runtime
        if runtime is not None:
            try:
                error = runtime.call("on-unload")
            except GuestTrap as trap:
                self._log("error", str(trap))
            else:
                if error is not None:
                    self._log("warning", f"on-unload returned an error: {error}")
            self.after_invocation()
        # What on-unload logged is on the lane; the process exits soon after this, and
        # the daemon stops reading the lane once it has.
        self._sync()

    def _sync(self) -> None:
        """Return once the daemon has read everything sent on the lane so far."""
        with contextlib.suppress(Exception):
            self._lane.request(_ipc.LANE_SYNC, None, timeout=2.0)

    def _fatal(self, reason: str) -> NoReturn:
        """Report why (over the log's rate limit: a flood of lines just before must not
        hide it), make sure the daemon has it, and end the process."""
        self._last_word(reason)
        # The line is on the lane (this is the guest's thread), lines from the trio loop
        # on the channel: make sure the daemon has read both. If it is gone already we
        # exit all the same.
        self._sync()
        with contextlib.suppress(Exception):
            self._portal.run(self._flush_log)
        os._exit(FATAL_EXIT_CODE)
