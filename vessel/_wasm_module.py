"""The daemon's side of one WASM module: its process, its requests, its log.

``run`` is the supervisor child: it starts ``python -m vessel.host`` (forked from the
daemon's fork server when there is one, see ``HOST_PRELOAD``), asks it to load the
component and run ``on-load``, pumps the module's subscribed events into it, and returns
(raises) when the process ends. The process is not trusted: every subscription, call,
emitted event and storage access it asks for is checked again here against the manifest,
and every event it emits is stamped with its own module id.
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import msgspec
import trio

from actors import (
    ActorError,
    ChannelBroken,
    ForkServer,
    PendingRequest,
    ProcessActor,
    ProcessSpec,
    RemoteError,
    open_process_actor,
)

from . import _ipc
from ._active_wait import DEFAULT_LIMIT, ActiveWait
from ._bus import EventBus, RetainedLimit, Subscription
from ._capabilities import Capabilities
from ._cpu_box import CpuBox
from ._emit_rules import DAEMON_RATE_SLACK, RateLimit, emit_problem, rate_exceeded
from ._errors import CallError, CapabilityDenied
from ._events import Event, now_ms
from ._health import HEALTH_EVENT, Health, parse_health
from ._log_rules import (
    DAEMON_LINE_SLACK,
    LEVELS,
    MAX_LINES_PER_SECOND,
    SOURCES,
    cut_line,
    dropped_note,
    level_of,
    one_line,
)
from ._logbook import LogLine
from ._manifest import ModuleSource
from ._storage import Storage

#: (module, name, version, params, chain) -> JSON result; raises CallError.
Router = Callable[[str, str, int, str, list[str]], Awaitable[str]]

LOG_LINES_KEPT = 1000
#: Seconds between two lines saying how many of a module's log lines were dropped.
DROPPED_LINES_REPORT = 1.0
EVENT_QUEUE = 1024
#: Seconds a module may take to load its compiled code, instantiate it and run on-load
#: (compiling is not starting: ``vessel._compiler`` is done before the process starts).
START_TIMEOUT = 30.0
#: What the fork server imports so that a module process forked from it starts with
#: everything ``python -m vessel.host`` imports already done (trio, msgspec, wasmtime,
#: httpx, trio_websocket and the host code), and what its first HTTP fetch would import
#: (httpcore and its trio backend). Not ``vessel.host.__main__`` itself: runpy runs that
#: fresh. Nothing here may start a thread or create a wasmtime Engine at import.
HOST_PRELOAD = ("vessel.host._process", "argparse", "httpcore", "httpcore._backends.trio")


class ModuleCrashed(Exception):
    """The module process ended without being asked to; the message says why."""


class WasmModule:
    """One installed WASM module, as the daemon sees it."""

    kind = "wasm"

    def __init__(
        self,
        source: ModuleSource,
        *,
        bus: EventBus,
        storage: Storage,
        router: Router,
        on_log: Callable[[str, LogLine], None] | None = None,
        forkserver: ForkServer | None = None,
        active_wait: float = DEFAULT_LIMIT,
        box: CpuBox | None = None,
        trusted_ca: str = "",
        start_timeout: float = START_TIMEOUT,
    ) -> None:
        self.source = source
        self._start_timeout = start_timeout
        self._trusted_ca = trusted_ca
        self._box = box
        self._active_wait = ActiveWait(active_wait)
        self._forkserver = forkserver
        self.id = source.id
        self.manifest = source.manifest
        self._caps = Capabilities.from_manifest(source.manifest)
        self._bus = bus
        self._storage = storage
        self._router = router
        self._on_log = on_log
        self._logger = logging.getLogger(f"vessel.module.{self.id}")
        self._rate = RateLimit(source.manifest.limits.max_event_rate * DAEMON_RATE_SLACK)
        # Every line the module causes in the daemon's log goes through this bucket: the
        # module process limits its lines too, but a subverted one would not.
        self._log_rate = RateLimit(MAX_LINES_PER_SECOND * DAEMON_LINE_SLACK)
        self._subscription: Subscription | None = None
        self._fatal: str | None = None
        self.proc: ProcessActor | None = None
        self.pid: int | None = None
        self.last_start: _ipc.StartResult | None = None
        self.started_at: float | None = None
        #: What the module last said of its health (``vessel._health``), for its current
        #: process only: a new process has said nothing yet.
        self.health: Health | None = None
        #: Seconds from starting the process to on-load done, at the last start.
        self.start_seconds: float | None = None
        self.logs: deque[LogLine] = deque(maxlen=LOG_LINES_KEPT)
        self.events_emitted = 0
        self.events_refused = 0
        self.denials = 0
        #: Log lines dropped over the rate limit, by its process or by the daemon.
        self.log_lines_dropped = 0
        self._drops_unreported = 0
        self._drops_pending = trio.Event()
        #: The last run ended in a crash: the next start-up runs in the box CPU.
        self._crashed = False
        #: Its compiled code could not be stored (a full disk): its process compiles it
        #: in memory at each start (``vessel._compiler``), the one exception.
        self.compile_in_process = False
        # Its retained state is held by the daemon, so the daemon bounds it: the lines
        # saying it was trimmed go to this module's log, where its author looks.
        bus.limit_retained(
            self.id,
            RetainedLimit.of(source.manifest.limits),
            report=lambda message: self._record("warning", message, "daemon"),
        )

    def __repr__(self) -> str:
        return f"<WasmModule {self.id!r} pid={self.pid}>"

    # -- supervisor child ----------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        spec = ProcessSpec(
            name=f"module:{self.id}",
            argv=[sys.executable, "-m", "vessel.host", "--module", self.id],
            # What ps/top show for a forked module process (comm keeps 15 bytes).
            title=f"vessel:{self.id}",
            on_output=self._child_output,
            # The first lane carries commands to the guest's thread and its host calls
            # back; the second, the module's work on the box CPU (``host._box_report``),
            # sent straight from the thread that confines it.
            lanes=2,
        )
        begun = trio.current_time()
        self._fatal = None
        self.health = None
        subscription = self._bus.subscribe(name=f"module:{self.id}", queue_size=EVENT_QUEUE)
        self._subscription = subscription
        try:
            async with open_process_actor(
                spec,
                on_request=self._on_request,
                on_notify=self._on_notify,
                forkserver=self._forkserver,
            ) as proc:
                self.proc = proc
                self.pid = proc.pid
                if self._box is not None:
                    self._box.process_started(self.id, proc.pid)
                params = _ipc.StartParams(
                    module_dir=str(self.source.dir),
                    source_hash=self.source.hash,
                    manifest=self.manifest,
                    # With one usable CPU there is no box to start up in.
                    boxed=self._crashed and self._box is not None and self._box.enabled,
                    suspect=self._box is not None and self._box.suspect(self.id),
                    compile_in_process=self.compile_in_process,
                    trusted_ca=self._trusted_ca,
                )
                try:
                    raw = await proc.request(_ipc.GUEST_START, params, timeout=self._start_timeout)
                except RemoteError as exc:
                    raise ModuleCrashed(f"start failed: {exc.message}") from None
                except trio.TooSlowError:
                    raise ModuleCrashed(
                        self._fatal
                        or f"did not start within {self._start_timeout:g} s (loading its "
                        "code and running its on-load)"
                    ) from None
                except ChannelBroken:
                    ended = await _exit_info(proc)
                    raise ModuleCrashed(self._fatal or f"start failed: {ended}") from None
                self.last_start = _ipc.decode(raw, _ipc.StartResult)
                self.started_at = trio.current_time()
                self.start_seconds = self.started_at - begun
                self._record(
                    "info",
                    f"loaded in {self.last_start.load_seconds * 1000:.0f} ms (precompiled); "
                    f"running {self.start_seconds * 1000:.0f} ms after "
                    + ("forking" if proc.forked else "spawning")
                    + " its process"
                    + (" (started up in the box, after a crash)" if params.boxed else ""),
                    "daemon",
                )
                task_status.started()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump_events, proc, subscription)
                    nursery.start_soon(self._report_dropped_lines)
                    info = await proc.wait()
                    nursery.cancel_scope.cancel()
                raise ModuleCrashed(self._fatal or info.reason)
        except Exception as exc:
            self._crashed = True
            # In its own log, where whoever reads why it restarted looks (source
            # "daemon": no line of the module's can claim it).
            self._record("error", f"its process ended: {_crash_words(exc, self.proc)}", "daemon")
            if self._box is not None:
                self._box.occupied(self.id, False)  # whatever it last said, it is gone
                self._box.misbehaved(self.id, f"its process ended: {exc}")
            raise
        except BaseException:
            self._crashed = False  # cancelled: stopped or restarted on purpose
            if self._box is not None:
                self._box.release(self.id)
            raise
        finally:
            self._report_drops()  # what was dropped before its end or its start
            subscription.close()
            self._subscription = None
            self.proc = None
            self.started_at = None
            self._health_gone()

    async def _pump_events(self, proc: ProcessActor, subscription: Subscription) -> None:
        async for event in subscription:
            try:
                await proc.notify(_ipc.GUEST_EVENT, event)
            except ChannelBroken:
                return

    def _child_output(self, stream: str, line: str) -> None:
        # The module process's own stdout/stderr (not the guest's): Python tracebacks, or
        # anything at all from a subverted process.
        self._module_line("warning" if stream == "stderr" else "info", f"process: {line}", stream)

    # -- calls from the daemon ---------------------------------------------------------

    async def command(
        self, name: str, params: str, chain: list[str], *, timeout: float | None = None
    ) -> str:
        """Call the guest's ``on-command``; waits at most ``limits.reply_timeout_ms`` (or
        ``timeout``, if shorter) for the answer, deferred or not."""
        return await self.begin_command(name, params, chain, timeout=timeout)

    def begin_command(
        self, name: str, params: str, chain: list[str], *, timeout: float | None = None
    ) -> Coroutine[Any, Any, str]:
        """:meth:`command` in two halves: the command is on its way to the module process
        when this returns; the coroutine it returns (await it, always) waits for the
        answer. Raises CallError at once when the module is not running."""
        proc = self.proc
        if proc is None or self.started_at is None:
            raise CallError("module_unavailable", f"module {self.id!r} is not running")
        reply_timeout = self.manifest.limits.reply_timeout_ms / 1000
        limit = reply_timeout if timeout is None else min(timeout, reply_timeout)
        request = _ipc.CommandRequest(
            action=name, params=params, chain=chain, deadline=time.monotonic() + limit
        )
        try:
            pending = proc.lanes[0].send_request(_ipc.GUEST_COMMAND, request, timeout=limit)
        except ActorError:  # the channel is gone: the process is ending
            raise CallError(
                "module_unavailable", f"module {self.id!r} stopped while handling {name!r}"
            ) from None
        which = " (limits.reply_timeout_ms)" if limit == reply_timeout else ""
        return self._command_result(pending, name, f"{limit:g} s{which}")

    async def _command_result(self, pending: PendingRequest, name: str, limit: str) -> str:
        active_wait = self._active_wait
        sent = time.perf_counter()
        try:
            try:
                raw = await pending.result(spin=active_wait.budget())
            finally:
                # Timeouts count too: a module that stops answering fast stops being
                # waited for actively.
                active_wait.record(time.perf_counter() - sent)
        except trio.TooSlowError:
            raise CallError(
                "timeout", f"module {self.id!r} did not answer {name!r} within {limit}"
            ) from None
        except ChannelBroken:
            raise CallError(
                "module_unavailable", f"module {self.id!r} stopped while handling {name!r}"
            ) from None
        except RemoteError as exc:
            raise CallError("module_unavailable", exc.message) from None
        result = _ipc.decode(raw, _ipc.CommandResult)
        if result.ok:
            return result.value
        if result.timed_out:
            raise CallError("timeout", result.value)
        if result.value.startswith("unknown command"):
            raise CallError("unknown_command", f"module {self.id!r}: {result.value}")
        raise CallError("module_error", result.value)

    async def stats(self) -> _ipc.GuestStats | None:
        proc = self.proc
        if proc is None or self.started_at is None:
            return None
        try:
            raw = await proc.request(_ipc.GUEST_STATS, None, timeout=2.0)
        except (ChannelBroken, RemoteError, trio.TooSlowError):
            return None
        return _ipc.decode(raw, _ipc.GuestStats)

    async def egress(self) -> list[dict[str, Any]] | None:
        """The egress audit of the running process (None: not running, or no answer)."""
        proc = self.proc
        if proc is None or self.started_at is None:
            return None
        try:
            raw = await proc.request(_ipc.GUEST_EGRESS, None, timeout=2.0)
        except (ChannelBroken, RemoteError, trio.TooSlowError):
            return None
        return _ipc.decode(raw, list[dict[str, Any]])

    # -- requests from the module process ----------------------------------------------

    async def _on_request(self, method: str, body: msgspec.Raw) -> Any:
        try:
            return await self._dispatch(method, body)
        except CapabilityDenied as exc:
            self.denials += 1
            self._module_line("warning", str(exc), "daemon")
            raise

    async def _dispatch(self, method: str, body: msgspec.Raw) -> Any:
        if method == _ipc.MODULE_CALL:
            call = _ipc.decode(body, _ipc.Call)
            self._caps.check_call(call.module, call.name, call.version)
            chain = [*call.chain, self.id]
            return await self._router(call.module, call.name, call.version, call.params, chain)
        if method == _ipc.STORAGE_GET:
            self._caps.check_storage()
            key = _ipc.decode(body, _ipc.StorageKey).key
            value = self._storage.get(self.id, key)
            if value is None and (setting := self.manifest.settings.get(key)) is not None:
                return setting.default  # a setting the admin has not set reads as its default
            return value
        if method == _ipc.SETTING_GET:
            # For the host's own destination check, not the guest: only a setting that a
            # hosts entry names, read even without the storage capability.
            key = _ipc.decode(body, _ipc.StorageKey).key
            if key not in self._caps.host_settings:
                raise CapabilityDenied(
                    f"capability denied: setting {key!r} is not named in "
                    f"permissions.network.hosts of module {self.id!r}"
                )
            value = self._storage.get(self.id, key)
            return self.manifest.settings[key].default if value is None else value
        if method == _ipc.STORAGE_SET:
            self._caps.check_storage()
            item = _ipc.decode(body, _ipc.StorageSet)
            quota = self.manifest.limits.storage_quota_kb * 1024
            self._storage.set(self.id, item.key, item.value, quota_bytes=quota)
            return None
        if method == _ipc.STORAGE_DELETE:
            self._caps.check_storage()
            self._storage.delete(self.id, _ipc.decode(body, _ipc.StorageKey).key)
            return None
        if method == _ipc.BUS_SUBSCRIBE:
            pattern = _ipc.decode(body, _ipc.Subscribe).pattern
            self._caps.check_subscribe(pattern)
            if self._subscription is not None:
                self._subscription.add(pattern)
            return None
        if method == _ipc.LANE_SYNC:
            return None
        if method == _ipc.BUS_RESET:
            if self._subscription is not None:
                for pattern in list(self._subscription.patterns):
                    self._subscription.remove(pattern)
            return None
        raise ValueError(f"unknown request {method!r}")

    def _emit(self, emit: _ipc.Emit) -> None:
        problem = emit_problem(emit.name, emit.data)
        if problem is None and not self._rate.take():
            problem = rate_exceeded(self.manifest.limits.max_event_rate * DAEMON_RATE_SLACK)
        if problem is not None:
            # The module process checks the same rules first, so only a subverted process
            # gets here: drop, count and say so.
            self.events_refused += 1
            self._module_line("warning", f"dropped an event from the module process: {problem}",
                              "daemon")  # fmt: skip
            return
        event = Event(
            module=self.id,  # never what the guest claims: a module speaks only for itself
            name=emit.name,
            data=emit.data,
            version=emit.version,
            timestamp=now_ms(),
        )
        self.events_emitted += 1
        self._bus.publish(event, retain=emit.retained)
        if emit.name == HEALTH_EVENT:
            self._take_health(event)

    def _health_gone(self) -> None:
        """The process that reported a health is gone: its report no longer holds, so its
        retained ``health`` becomes null (no report) for whoever subscribes later, as an
        entity HA removed becomes null; the next process reports anew."""
        if self.health is None:
            return
        self.health = None
        self._bus.publish(
            Event(module=self.id, name=HEALTH_EVENT, data="null", timestamp=now_ms()), retain=True
        )

    def _take_health(self, event: Event) -> None:
        report = parse_health(event.data, event.timestamp)
        if isinstance(report, str):
            self._module_line(
                "warning",
                f"its {HEALTH_EVENT!r} event is not a health report ({report}); ignored: "
                'emit {"status": "ok" | "degraded" | "error", "message": "..."}, '
                "as the SDK's set_health does",
                "daemon",
            )
            return
        before = self.health
        self.health = report
        if before is None or before.status != report.status:
            # The module's log says when its health changes, not every report (a module
            # that reconnects reports a new message at every attempt).
            level = {"ok": "info", "degraded": "warning"}.get(report.status, "error")
            text = f"health {report.status}" + (f": {report.message}" if report.message else "")
            self._record(level, text, "daemon")

    async def _on_notify(self, method: str, body: msgspec.Raw) -> None:
        if method == _ipc.BUS_EMIT:
            self._emit(_ipc.decode(body, _ipc.Emit))
        elif method == _ipc.BUS_REFUSED:
            self.events_refused += _ipc.decode(body, _ipc.Refused).count
        elif method == _ipc.LOG:
            entry = _ipc.decode(body, _ipc.Log)
            level = level_of(entry.level)
            if entry.source == "process":
                # The module process's last word: the crash's reason if it ends now,
                # kept even when the line itself is dropped for the rate. Not a guest's
                # own log("fatal", ...): the guest's lines are source "host".
                self._fatal = cut_line(entry.message)
            self._module_line(level, entry.message, entry.source)
        elif method == _ipc.LOG_DROPPED:
            self._lines_dropped(_ipc.decode(body, _ipc.LogDropped).count)
        elif method == _ipc.GUEST_BOX:
            if self._box is not None:
                boxed = _ipc.decode(body, _ipc.Boxed)
                self._box.occupied(self.id, boxed.occupied, boxed.why)
        elif method == _ipc.INSTANCE_REPLACED:
            reason = _ipc.decode(body, _ipc.InstanceReplaced).reason
            if self._box is not None:
                self._box.misbehaved(self.id, reason)
            self._bus.publish(
                Event(
                    module="vessel",
                    name="module.instance_replaced",
                    data=msgspec.json.encode(
                        {"module": self.id, "pid": self.pid, "reason": reason}
                    ).decode(),
                    timestamp=now_ms(),
                )
            )

    # -- the module's log ----------------------------------------------------------------

    def _module_line(self, level: str, message: str, source: str) -> None:
        """A line the module caused (not the daemon's own news about it): kept if it is
        within the rate limit, with a known level and source, at most 8 KiB."""
        if not self._log_rate.take():
            self._lines_dropped(1)
            return
        self._record(level_of(level), cut_line(message), source if source in SOURCES else "host")

    def _lines_dropped(self, count: int) -> None:
        self.log_lines_dropped += count
        self._drops_unreported += count
        self._drops_pending.set()

    async def _report_dropped_lines(self) -> None:
        """One line a second at most, while lines are dropped, saying how many."""
        while True:
            await self._drops_pending.wait()
            await trio.sleep(DROPPED_LINES_REPORT)
            self._report_drops()

    def _report_drops(self) -> None:
        count, self._drops_unreported = self._drops_unreported, 0
        self._drops_pending = trio.Event()
        if count:
            self._record("warning", dropped_note(count), "daemon")

    def _record(self, level: str, message: str, source: str) -> None:
        line = LogLine(timestamp=now_ms(), level=level, source=source, message=message)
        self.logs.append(line)
        severity = LEVELS.get(level, logging.INFO)
        if self._logger.isEnabledFor(severity):
            self._logger.log(severity, "%s", one_line(message))
        if self._on_log is not None:
            self._on_log(self.id, line)


def _crash_words(exc: Exception, proc: ProcessActor | None) -> str:
    """Why the process ended, and how when that says more (a signal, an exit code
    other than 0) and is not the reason already."""
    words = str(exc)
    ended = proc.exit_info if proc is not None else None
    if ended is None or not (ended.signal or ended.returncode):
        return words
    if ended.signal:
        try:
            how = f"killed by {signal.Signals(ended.signal).name}"
        except ValueError:
            how = f"killed by signal {ended.signal}"
    else:
        how = f"exited with code {ended.returncode}"
    return words if how in words else f"{words} ({how})"


async def _exit_info(proc: ProcessActor) -> str:
    with trio.move_on_after(5):
        return (await proc.wait()).reason
    return "no answer"


__all__ = ["LogLine", "ModuleCrashed", "WasmModule"]
