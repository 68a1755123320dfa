"""The module process: a trio loop for I/O and one worker thread for the guest.

Work for the guest (commands from the daemon, bus events, timer fires, WebSocket frames)
enters one bounded mailbox and is handed to the guest one item at a time on a worker
thread, so the trio loop keeps answering heartbeats and reading sockets while the guest
computes. A trap replaces the instance (host resources of the old one are released and
``on-load`` runs again); too many traps in a row end the process, and the daemon's
supervisor takes over with backoff.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import trio
from wasmtime import component as wc

from actors import Channel, ParentLink, open_parent_channel

from .. import _ipc
from .._capabilities import Capabilities
from .._events import Event
from ._hostfuncs import HostFunctions
from ._http import HttpService
from ._runtime import GuestRuntime, GuestTrap, Limits
from ._timers import TimerService
from ._websockets import WebSocketService

log = logging.getLogger("vessel.host")

#: Events, timer fires and socket frames waiting for the guest; beyond this they are
#: dropped and counted (commands are never dropped: they wait, and have their own timeout).
MAILBOX_SIZE = 1024
#: More instance replacements than this within REPLACEMENT_PERIOD end the process.
MAX_REPLACEMENTS = 3
REPLACEMENT_PERIOD = 60.0
#: Guest output: longer lines are cut; more lines per second than this are dropped.
MAX_LINE = 8192
MAX_LINES_PER_SECOND = 200
UNLOAD_GRACE = 1.0


class GuestLoadError(Exception):
    """``on-load`` returned an error or trapped: the module cannot start."""


@dataclass
class _Command:
    request: _ipc.CommandRequest
    done: trio.Event = field(default_factory=trio.Event)
    result: _ipc.CommandResult | None = None
    #: Set by defer-reply: the answer comes later through complete-reply.
    token: int | None = None
    #: The caller gave up before the guest got to it: skip it.
    abandoned: bool = False


@dataclass
class _Delivery:
    export: str
    args: tuple[Any, ...]
    timer: int | None = None


class _OutputLines:
    """Splits a guest's stdout/stderr writes into bounded lines."""

    def __init__(self) -> None:
        self._partial: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}

    def feed(self, stream: str, data: bytes) -> list[str]:
        buf = self._partial[stream]
        buf += data
        lines: list[str] = []
        while (nl := buf.find(b"\n")) >= 0:
            lines.append(_cut(bytes(buf[:nl])))
            del buf[: nl + 1]
        if len(buf) > MAX_LINE:
            lines.append(_cut(bytes(buf)))
            buf.clear()
        return lines


def _cut(line: bytes) -> str:
    if len(line) <= MAX_LINE:
        return line.decode("utf-8", "replace")
    extra = len(line) - MAX_LINE
    return line[:MAX_LINE].decode("utf-8", "replace") + f"... ({extra} more bytes cut)"


def _rss_anon() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class ModuleProcess:
    """Serves one module for the daemon until it asks us to stop (or dies)."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self._token = trio.lowlevel.current_trio_token()
        self._link: ParentLink | None = None
        self._runtime: GuestRuntime | None = None
        self._module_id = "?"
        self._send, self._receive = trio.open_memory_channel[_Command | _Delivery](MAILBOX_SIZE)
        self._guest_lock = trio.CapacityLimiter(1)
        self._chain: list[str] = []
        self._current: _Command | None = None
        self._deferred: dict[int, _Command] = {}
        self._last_token = 0
        self._reply_timeout = 30.0
        self._replacements: deque[float] = deque()
        self._output = _OutputLines()
        self._log_window = (0.0, 0)
        self._stopping = False
        self._timers: TimerService | None = None
        self._websockets: WebSocketService | None = None
        self.invocations = 0
        self.traps = 0
        self.dropped_events = 0
        self.dropped_log_lines = 0

    def attach(self, link: ParentLink) -> None:
        self._link = link

    @property
    def channel(self) -> Channel:
        assert self._link is not None
        return self._link.channel

    # -- the daemon's requests ---------------------------------------------------------

    async def on_request(self, method: str, body: msgspec.Raw) -> Any:
        if method == _ipc.GUEST_COMMAND:
            return await self._command(_ipc.decode(body, _ipc.CommandRequest))
        if method == _ipc.GUEST_STATS:
            return self._stats()
        if method == _ipc.GUEST_START:
            return await self._start(_ipc.decode(body, _ipc.StartParams))
        raise ValueError(f"unknown request {method!r}")

    async def on_notify(self, method: str, body: msgspec.Raw) -> None:
        if method == _ipc.GUEST_EVENT:
            event = _ipc.decode(body, Event)
            self._deliver(_Delivery("on-event", (_event_record(event),)))

    async def _start(self, params: _ipc.StartParams) -> _ipc.StartResult:
        if self._runtime is not None:
            raise RuntimeError("module already started")
        manifest = params.manifest
        self._module_id = manifest.id
        limits = manifest.limits
        self._reply_timeout = limits.reply_timeout_ms / 1000
        self._timers = TimerService(self._fire_timer, max_timers=limits.max_timers)
        self._websockets = WebSocketService(
            self._ws_message, self._ws_closed, max_connections=limits.max_websockets
        )
        http = HttpService()
        await self._nursery.start(self._timers.run)
        await self._nursery.start(self._websockets.run)
        await self._nursery.start(http.run)
        host = HostFunctions(
            module_id=manifest.id,
            capabilities=Capabilities.from_manifest(manifest),
            channel=self.channel,
            timers=self._timers,
            websockets=self._websockets,
            http=http,
            log=self.log,
            current_chain=lambda: list(self._chain),
            defer_reply=self.defer_reply,
            complete_reply=self.complete_reply,
            max_event_rate=manifest.limits.max_event_rate,
        )
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
        )
        started = time.monotonic()
        await trio.to_thread.run_sync(runtime.load, limiter=self._guest_lock)
        self._runtime = runtime
        await trio.to_thread.run_sync(self._load_instance, limiter=self._guest_lock)
        self._nursery.start_soon(self._serve_mailbox)
        return _ipc.StartResult(
            pid=os.getpid(), load_seconds=time.monotonic() - started, compiled=runtime.compiled
        )

    async def _command(self, request: _ipc.CommandRequest) -> _ipc.CommandResult:
        if self._runtime is None or self._stopping:
            raise RuntimeError(f"module {self._module_id!r} is not serving commands")
        job = _Command(request)
        with trio.move_on_after(self._reply_timeout):
            await self._send.send(job)
            await job.done.wait()
        if job.result is None:
            job.abandoned = True
            if job.token is not None:
                self._deferred.pop(job.token, None)
            return _ipc.CommandResult(
                ok=False,
                value=f"module {self._module_id!r} did not answer {request.action!r} within "
                f"{self._reply_timeout:g} s (limits.reply_timeout_ms)",
                timed_out=True,
            )
        return job.result

    def _stats(self) -> _ipc.GuestStats:
        return _ipc.GuestStats(
            pid=os.getpid(),
            memory_rss_anon=_rss_anon(),
            invocations=self.invocations,
            traps=self.traps,
            instance_replacements=len(self._replacements),
            timers=self._timers.live if self._timers else 0,
            websockets=self._websockets.live if self._websockets else 0,
            queued=self._send.statistics().current_buffer_used,
            dropped_events=self.dropped_events,
        )

    # -- deliveries from the host's own services (trio thread) ---------------------------

    def _deliver(self, item: _Delivery) -> None:
        if self._stopping:
            return
        try:
            self._send.send_nowait(item)
        except trio.WouldBlock:
            self.dropped_events += 1
            if item.timer is not None and self._timers is not None:
                self._timers.claim(item.timer)  # a dropped fire must still be claimed

    def _fire_timer(self, handle: int) -> None:
        # TimerService fires an interval again only after this fire is claimed, so a slow
        # guest has at most one fire per timer waiting, never a burst.
        self._deliver(_Delivery("on-timer", (handle,), timer=handle))

    def _ws_message(self, handle: int, text: str) -> None:
        self._deliver(_Delivery("on-websocket-message", (handle, text)))

    def _ws_closed(self, handle: int, reason: str) -> None:
        self._deliver(_Delivery("on-websocket-closed", (handle, reason)))

    # -- the guest's mailbox -----------------------------------------------------------

    async def _serve_mailbox(self) -> None:
        async for item in self._receive:
            if item_timer := isinstance(item, _Delivery) and item.timer:
                # False: the guest cleared it after it fired; it must not see it.
                assert self._timers is not None
                if not self._timers.claim(item_timer):
                    continue
            if isinstance(item, _Command) and item.abandoned:
                continue
            try:
                await trio.to_thread.run_sync(self._run, item, limiter=self._guest_lock)
            finally:
                if isinstance(item, _Command) and item.token is None:
                    item.done.set()

    def _run(self, item: _Command | _Delivery) -> None:
        """Worker thread: one guest invocation."""
        runtime = self._runtime
        assert runtime is not None
        self.invocations += 1
        try:
            if isinstance(item, _Command):
                self._chain = item.request.chain
                self._current = item
                result = runtime.call("on-command", item.request.action, item.request.params)
                if item.token is None:
                    item.result = _ipc.CommandResult(ok=result.tag == "ok", value=result.payload)
            elif runtime.has_export(item.export):
                error = runtime.call(item.export, *item.args)
                if error is not None:
                    self.log("warning", f"{item.export} returned an error: {error}")
        except GuestTrap as trap:
            self.traps += 1
            if isinstance(item, _Command):
                # A trapped command is answered now, deferred or not.
                if item.token is not None:
                    trio.from_thread.run_sync(self._deferred.pop, item.token, None)
                item.token = None
                item.result = _ipc.CommandResult(
                    ok=False, value=f"module {self._module_id!r}: {trap}", trapped=True
                )
            self._replace_instance(str(trap))
        finally:
            self._chain = []
            self._current = None

    def _load_instance(self) -> None:
        """Worker thread: instantiate and run on-load; GuestLoadError if it fails."""
        runtime = self._runtime
        assert runtime is not None
        try:
            runtime.instantiate()
            error = runtime.call("on-load")
        except GuestTrap as trap:
            raise GuestLoadError(str(trap)) from None
        if error is not None:
            raise GuestLoadError(f"on-load returned an error: {error}")

    def _replace_instance(self, reason: str) -> None:
        """Worker thread: release the dead instance's resources and start a fresh one."""
        now = time.monotonic()
        self._replacements.append(now)
        while self._replacements and now - self._replacements[0] > REPLACEMENT_PERIOD:
            self._replacements.popleft()
        self.log("error", f"{reason}; replacing the instance")
        if len(self._replacements) > MAX_REPLACEMENTS:
            self._fatal(
                f"{len(self._replacements)} traps within {REPLACEMENT_PERIOD:.0f} s "
                f"(last: {reason})"
            )
        trio.from_thread.run(self._release_instance_resources, reason)
        try:
            self._load_instance()
        except GuestLoadError as exc:
            self._fatal(f"could not replace the instance after a trap: {exc}")

    async def _release_instance_resources(self, reason: str) -> None:
        # Timers, sockets and subscriptions belong to the instance that made them; the
        # new instance's on-load sets up its own.
        assert self._timers is not None
        assert self._websockets is not None
        self._fail_deferred("the instance was replaced before it completed the reply")
        self._timers.clear_all()
        await self._websockets.close_all()
        await self.channel.request(_ipc.BUS_RESET, None, timeout=10)
        await self.channel.notify(_ipc.INSTANCE_REPLACED, _ipc.InstanceReplaced(reason=reason))

    def _fatal(self, reason: str) -> None:
        """Worker thread: report why, make sure the daemon has it, and end the process."""
        self.log("fatal", reason)
        # The ping returns after the daemon has read the log line above (frames are
        # ordered); if the daemon is gone already we exit all the same.
        with contextlib.suppress(Exception):
            trio.from_thread.run(lambda: self.channel.ping(timeout=2.0))
        os._exit(3)

    # -- deferred replies (the defer-reply / complete-reply extension) --------------------

    def defer_reply(self) -> int | str:
        """Worker thread, inside on-command: answer this command later."""
        command = self._current
        if command is None:
            return "defer-reply: only possible while handling on-command"
        if command.token is None:
            self._last_token += 1
            command.token = self._last_token
            trio.from_thread.run_sync(self._deferred.__setitem__, command.token, command)
        return command.token

    def complete_reply(self, token: int, ok: bool, value: str) -> str | None:
        """Worker thread: the answer to a deferred command."""
        return trio.from_thread.run_sync(self._complete, token, ok, value)

    def _complete(self, token: int, ok: bool, value: str) -> str | None:
        command = self._deferred.pop(token, None)
        if command is None:
            return f"complete-reply: unknown or expired reply token {token}"
        command.result = _ipc.CommandResult(ok=ok, value=value)
        command.done.set()
        return None

    def _fail_deferred(self, reason: str) -> None:
        deferred, self._deferred = self._deferred, {}
        for command in deferred.values():
            command.result = _ipc.CommandResult(
                ok=False, value=f"module {self._module_id!r}: {reason}"
            )
            command.done.set()

    # -- logging -----------------------------------------------------------------------

    def log(self, level: str, message: str, source: str = "host") -> None:
        """Send one log line to the daemon; callable from any thread, never blocks."""
        self._token.run_sync_soon(self._send_log, level, message, source)

    def _send_log(self, level: str, message: str, source: str) -> None:
        now = time.monotonic()
        start, count = self._log_window
        if now - start >= 1.0:
            if self.dropped_log_lines:
                dropped, self.dropped_log_lines = self.dropped_log_lines, 0
                self._notify_log("warning", f"{dropped} log lines dropped (rate limit)", "host")
            start, count = now, 0
        if count >= MAX_LINES_PER_SECOND and level != "fatal":
            self.dropped_log_lines += 1
            self._log_window = (start, count)
            return
        self._log_window = (start, count + 1)
        self._notify_log(level, message[: MAX_LINE * 2], source)

    def _notify_log(self, level: str, message: str, source: str) -> None:
        try:
            self.channel.notify_nowait(
                _ipc.LOG, _ipc.Log(level=level, message=message, source=source)
            )
        except trio.WouldBlock:
            self.dropped_log_lines += 1

    def _on_output(self, stream: str, data: bytes) -> None:
        for line in self._output.feed(stream, data):
            self.log("info" if stream == "stdout" else "warning", line, stream)

    # -- stopping ----------------------------------------------------------------------

    async def shutdown(self) -> None:
        """Stop taking work, let the current invocation finish, run on-unload (bounded)."""
        self._stopping = True
        self._fail_deferred("the module stopped before it completed the reply")
        runtime = self._runtime
        if runtime is None:
            return
        timeout = 2 * UNLOAD_GRACE + 10.0
        with trio.move_on_after(timeout):
            await trio.to_thread.run_sync(self._unload, limiter=self._guest_lock)
        if self._websockets is not None:
            with trio.move_on_after(UNLOAD_GRACE):
                await self._websockets.close_all()
        # Lines logged during the stop (what on-unload printed, or why it trapped) are
        # still queued on the channel, which is closed (dropping unwritten frames) as soon
        # as we return. A ping is answered only after the daemon has read every frame sent
        # before it, so it flushes them. Found by tests/adversarial (loop in on-unload).
        with contextlib.suppress(Exception):
            await self.channel.ping(timeout=UNLOAD_GRACE)

    def _unload(self) -> None:
        runtime = self._runtime
        assert runtime is not None
        try:
            error = runtime.call("on-unload")
        except GuestTrap as trap:
            self.log("error", str(trap))
            return
        if error is not None:
            self.log("warning", f"on-unload returned an error: {error}")


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
        process = ModuleProcess(nursery)
        async with open_parent_channel(
            name="module-process", on_request=process.on_request, on_notify=process.on_notify
        ) as link:
            process.attach(link)
            await link.stop_requested.wait()
            await process.shutdown()
        nursery.cancel_scope.cancel()
