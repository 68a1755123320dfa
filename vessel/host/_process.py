"""The module process: a trio loop for I/O, and the guest on a thread of its own.

The daemon's commands reach the guest over a lane (a second pipe pair) that the guest's
thread reads and answers itself (``_guest_thread``); a second lane carries the module's
work on the box CPU, written by whichever thread changes it (``_box_report``); everything
else is the trio loop's:
the main channel (start, stats, heartbeats, events, log lines), timers, WebSockets and
HTTP. Bus events, timer fires and socket frames are queued for the guest's thread, which
takes them in turn with the commands, one invocation at a time, so the loop keeps
answering heartbeats and reading sockets while the guest computes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import trio
from wasmtime import component as wc

from actors import ActorError, Channel, ParentLink, open_parent_channel

from .. import _ipc
from .._capabilities import Capabilities
from .._events import Event
from .._log_rules import MAX_LINE, MAX_LINES_PER_SECOND, cut_bytes, cut_line
from .._memory import keep_trimmed
from ._box_report import BoxReport
from ._confine import box_cpu, boxed
from ._egress import EgressLedger
from ._guest_thread import Delivery, GuestLoadError, GuestThread
from ._hostfuncs import HostFunctions
from ._http import HttpService
from ._portal import TrioPortal
from ._runtime import GuestRuntime, Limits
from ._timers import TimerService
from ._websockets import WebSocketService

__all__ = ["GuestLoadError", "ModuleProcess", "serve_module_process"]

log = logging.getLogger("vessel.host")

#: Events, timer fires and socket frames waiting for the guest; beyond this they are
#: dropped and counted (commands are never dropped: they wait in the lane, and the daemon
#: bounds how long).
MAILBOX_SIZE = 1024
UNLOAD_GRACE = 1.0


class _OutputLines:
    """Splits a guest's stdout/stderr writes into bounded lines."""

    def __init__(self) -> None:
        self._partial: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}

    def feed(self, stream: str, data: bytes) -> list[str]:
        buf = self._partial[stream]
        buf += data
        lines: list[str] = []
        while (nl := buf.find(b"\n")) >= 0:
            lines.append(cut_bytes(bytes(buf[:nl])))
            del buf[: nl + 1]
        if len(buf) > MAX_LINE:
            lines.append(cut_bytes(bytes(buf)))
            buf.clear()
        return lines


def _memory() -> tuple[int, int]:
    """(RssAnon, USS) of this process in bytes; 0 where /proc cannot tell.

    RssAnon counts the interpreter pages a forked module process still shares with the
    fork server (the same ~20 MB in every module); USS (Private_Clean + Private_Dirty)
    is what this process alone holds, what stopping it would free.
    """
    rss_anon = private = 0
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                rss_anon = int(line.split()[1]) * 1024
        for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                private += int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return rss_anon, private


class _LogLimit:
    """At most MAX_LINES_PER_SECOND log lines a second, whatever their level, counted
    across the threads that log; the lines dropped are counted until reported."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._window_start = 0.0
        self._count = 0
        self._dropped = 0

    def admit(self) -> tuple[bool, int]:
        """(send this line?, lines dropped before this second, to report now)."""
        with self._lock:
            now = time.monotonic()
            report = 0
            if now - self._window_start >= 1.0:
                report, self._dropped = self._dropped, 0
                self._window_start, self._count = now, 0
            if self._count >= MAX_LINES_PER_SECOND:
                self._dropped += 1
                return False, report
            self._count += 1
            return True, report

    def take_dropped(self) -> int:
        """Lines dropped since the last report, to report now."""
        with self._lock:
            count, self._dropped = self._dropped, 0
            return count

    def dropped_elsewhere(self, count: int = 1) -> None:
        with self._lock:
            self._dropped += count


def _log_entry(level: str, message: str, source: str) -> _ipc.Log:
    return _ipc.Log(level=level, message=cut_line(message), source=source)


class ModuleProcess:
    """Serves one module for the daemon until it asks us to stop (or dies)."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self._token = trio.lowlevel.current_trio_token()
        self._portal = TrioPortal(self._token)
        self._link: ParentLink | None = None
        # The channel serves requests as soon as it runs, possibly before attach().
        self._attached = trio.Event()
        self._guest: GuestThread | None = None
        self._module_id = "?"
        self._output = _OutputLines()
        self._loop_thread = threading.current_thread()
        self._log_limit = _LogLimit()
        #: Told when the guest thread's log line is dropped for the rate limit (the guest
        #: runtime's ``refused``: a flood of lines gives the daemon nothing to do).
        self._rate_refused: Callable[[], None] = lambda: None
        self._stopping = False
        self._timers: TimerService | None = None
        self._websockets: WebSocketService | None = None
        #: Where the module's http-fetch and websockets went (GET /api/modules/<id>/egress).
        self._egress = EgressLedger()
        self.dropped_events = 0

    def attach(self, link: ParentLink) -> None:
        if len(link.lanes) != 2:
            raise RuntimeError(f"a module process needs 2 lanes, the daemon gave {len(link.lanes)}")
        self._link = link
        self._attached.set()

    @property
    def channel(self) -> Channel:
        assert self._link is not None
        return self._link.channel

    # -- the daemon's requests ---------------------------------------------------------

    async def on_request(self, method: str, body: msgspec.Raw) -> Any:
        await self._attached.wait()
        if method == _ipc.GUEST_STATS:
            return self._stats()
        if method == _ipc.GUEST_EGRESS:
            return self._egress.entries()
        if method == _ipc.GUEST_START:
            return await self._start(_ipc.decode(body, _ipc.StartParams))
        raise ValueError(f"unknown request {method!r}")

    async def on_notify(self, method: str, body: msgspec.Raw) -> None:
        if method == _ipc.GUEST_EVENT:
            event = _ipc.decode(body, Event)
            self._deliver(Delivery("on-event", (_event_record(event),)))

    async def _start(self, params: _ipc.StartParams) -> _ipc.StartResult:
        if self._guest is not None:
            raise RuntimeError("module already started")
        assert self._link is not None
        manifest = params.manifest
        self._module_id = manifest.id
        limits = manifest.limits
        self._timers = TimerService(self._fire_timer, max_timers=limits.max_timers)
        self._websockets = WebSocketService(
            self._ws_message,
            self._ws_closed,
            max_connections=limits.max_websockets,
            trusted_ca=params.trusted_ca,
            egress=self._egress,
        )
        http = HttpService(trusted_ca=params.trusted_ca, egress=self._egress)
        box = BoxReport(self._link.lanes[1], self._token)
        await self._nursery.start(box.run)
        await self._nursery.start(self._timers.run)
        await self._nursery.start(self._websockets.run)
        await self._nursery.start(http.run)
        lane = self._link.lanes[0]
        guest = GuestThread(
            module_id=manifest.id,
            lane=lane,
            portal=self._portal,
            log=self.log,
            last_word=self.last_word,
            claim_timer=self._timers.claim,
            release_resources=self._release_instance_resources,
            flush_log=self._flush_log,
            mailbox_size=MAILBOX_SIZE,
            reply_timeout=limits.reply_timeout_ms / 1000,
        )
        host = HostFunctions(
            module_id=manifest.id,
            capabilities=Capabilities.from_manifest(manifest),
            lane=lane,
            portal=self._portal,
            timers=self._timers,
            websockets=self._websockets,
            http=http,
            log=self.log,
            current_chain=guest.current_chain,
            defer_reply=guest.defer_reply,
            complete_reply=guest.complete_reply,
            max_event_rate=manifest.limits.max_event_rate,
        )

        def after_invocation() -> None:
            host.report_refused()
            self.report_dropped_lines()

        guest.after_invocation = after_invocation
        # After a crash the start-up runs in the box: the modules still serving go first.
        with boxed(box_cpu() if params.boxed else None, box.changed):
            runtime = GuestRuntime(
                module_id=manifest.id,
                module_dir=Path(params.module_dir),
                source_hash=params.source_hash,
                limits=Limits(
                    memory_bytes=limits.memory_mb << 20,
                    invocation_seconds=limits.invocation_timeout_ms / 1000,
                ),
                imports=host.imports(),
                on_output=self._on_output,
                on_box=box.changed,
                compile_in_process=params.compile_in_process,
            )
            runtime.suspect = params.suspect
            host.on_rate_refused = self._rate_refused = runtime.refused
            started = time.monotonic()
            # Set first: a timer that on-load sets may fire before it returns, and its fire
            # must wait in the mailbox, not be lost.
            self._guest = guest
            await trio.to_thread.run_sync(guest.load, runtime)
            # Before the guest thread takes work: its calls' long work is reported.
            box.started()
            guest.start()
        return _ipc.StartResult(pid=os.getpid(), load_seconds=time.monotonic() - started)

    def _stats(self) -> _ipc.GuestStats:
        guest = self._guest
        rss_anon, private = _memory()
        return _ipc.GuestStats(
            pid=os.getpid(),
            memory_rss_anon=rss_anon,
            invocations=guest.invocations if guest else 0,
            traps=guest.traps if guest else 0,
            instance_replacements=guest.replacements if guest else 0,
            timers=self._timers.live if self._timers else 0,
            websockets=self._websockets.live if self._websockets else 0,
            queued=guest.queued if guest else 0,
            dropped_events=self.dropped_events,
            memory_private=private,
            confined_invocations=guest.confined if guest else 0,
            guest_yields=guest.yields if guest else 0,
        )

    # -- deliveries from the host's own services (trio thread) ---------------------------

    def _deliver(self, item: Delivery) -> None:
        if self._stopping or self._guest is None:
            return
        if not self._guest.deliver(item):
            self.dropped_events += 1
            if item.timer is not None and self._timers is not None:
                self._timers.claim(item.timer)  # a dropped fire must still be claimed

    def _fire_timer(self, handle: int) -> None:
        # TimerService fires an interval again only after this fire is claimed, so a slow
        # guest has at most one fire per timer waiting, never a burst.
        self._deliver(Delivery("on-timer", (handle,), timer=handle))

    def _ws_message(self, handle: int, text: str) -> None:
        self._deliver(Delivery("on-websocket-message", (handle, text)))

    def _ws_closed(self, handle: int, reason: str) -> None:
        self._deliver(Delivery("on-websocket-closed", (handle, reason)))

    async def _release_instance_resources(self, reason: str) -> None:
        # Called by the guest thread after a trap, before the new instance's on-load.
        assert self._timers is not None
        assert self._websockets is not None
        self._timers.clear_all()
        await self._websockets.close_all()
        await self.channel.request(_ipc.BUS_RESET, None, timeout=10)
        await self.channel.notify(_ipc.INSTANCE_REPLACED, _ipc.InstanceReplaced(reason=reason))

    async def _flush_log(self) -> None:
        # A ping is answered only after the daemon has read every frame sent before it,
        # so the log lines queued on the channel have reached it when this returns.
        await self.channel.ping(timeout=2.0)

    # -- logging -----------------------------------------------------------------------

    def log(self, level: str, message: str, source: str = "host") -> None:
        """Send one log line to the daemon, within the rate limit; callable from any
        thread.

        From the thread running the guest the line goes over the lane, in order with
        what the same invocation sends there (its events, its answer): a client that
        got the answer to a command can read the lines it logged. From the trio loop
        (timers, sockets) it goes over the channel, without blocking.
        """
        admitted, dropped = self._log_limit.admit()
        if not admitted and threading.current_thread() is not self._loop_thread:
            self._rate_refused()
        self._send_log(dropped, _log_entry(level, message, source) if admitted else None)

    def last_word(self, reason: str) -> None:
        """Why this process ends, sent whatever the rate limit says: the daemon names it
        as the reason of the crash. Once per process, which exits right after. Source
        "process": the guest's own lines are "host", so its log("fatal", ...) is not
        taken for the reason."""
        self._send_log(0, _log_entry("fatal", reason, "process"))

    def report_dropped_lines(self) -> None:
        """Tell the daemon how many lines were dropped since the last report (the guest
        thread calls this after every invocation): one message for a whole flood."""
        if dropped := self._log_limit.take_dropped():
            self._send_log(dropped, None)

    def _send_log(self, dropped: int, entry: _ipc.Log | None) -> None:
        if threading.current_thread() is self._loop_thread:
            if dropped and not self._notify_log(_ipc.LOG_DROPPED, _ipc.LogDropped(count=dropped)):
                self._log_limit.dropped_elsewhere(dropped)
            if entry is not None and not self._notify_log(_ipc.LOG, entry):
                self._log_limit.dropped_elsewhere()
            return
        lane = self._link.lanes[0] if self._link is not None else None
        if lane is None:
            self._token.run_sync_soon(self._send_log, dropped, entry)
            return
        with contextlib.suppress(ActorError):  # the daemon is gone: nobody to tell
            if dropped:
                lane.notify(_ipc.LOG_DROPPED, _ipc.LogDropped(count=dropped))
            if entry is not None:
                lane.notify(_ipc.LOG, entry)

    def _notify_log(self, method: str, body: _ipc.Log | _ipc.LogDropped) -> bool:
        try:
            self.channel.notify_nowait(method, body)
        except trio.WouldBlock:
            return False
        return True

    def _on_output(self, stream: str, data: bytes) -> None:
        for line in self._output.feed(stream, data):
            self.log("info" if stream == "stdout" else "warning", line, stream)

    # -- stopping ----------------------------------------------------------------------

    async def shutdown(self) -> None:
        """Stop taking work, let the current invocation finish, run on-unload (bounded)."""
        self._stopping = True
        guest = self._guest
        if guest is None:
            return
        guest.stop()
        with trio.move_on_after(2 * UNLOAD_GRACE + 10.0):
            await guest.finished.wait()
        if self._websockets is not None:
            with trio.move_on_after(UNLOAD_GRACE):
                await self._websockets.close_all()
        # Lines logged during the stop (what on-unload printed, or why it trapped) are
        # still queued on the channel, which is closed (dropping unwritten frames) as soon
        # as we return. A ping is answered only after the daemon has read every frame sent
        # before it, so it flushes them. Found by tests/adversarial (loop in on-unload).
        with contextlib.suppress(Exception):
            await self.channel.ping(timeout=UNLOAD_GRACE)


def _event_record(event: Event) -> wc.Record:
    record = wc.Record()
    record.module = event.module  # type: ignore[attr-defined]
    record.name = event.name  # type: ignore[attr-defined]
    record.version = event.version  # type: ignore[attr-defined]
    record.data = event.data  # type: ignore[attr-defined]
    record.timestamp = event.timestamp  # type: ignore[attr-defined]
    return record


async def serve_module_process() -> None:
    """Run one module process until the daemon asks it to stop."""
    async with trio.open_nursery() as nursery:
        # A module runs for months too: what its guest's calls freed goes back, as the
        # daemon's does (vessel/_memory.py).
        nursery.start_soon(keep_trimmed)
        process = ModuleProcess(nursery)
        async with open_parent_channel(
            name="module-process", on_request=process.on_request, on_notify=process.on_notify
        ) as link:
            process.attach(link)
            await link.stop_requested.wait()
            await process.shutdown()
        nursery.cancel_scope.cancel()
