"""The daemon's side of one WASM module: its process, its requests, its log.

``run`` is the supervisor child: it spawns ``python -m vessel.host``, asks it to load the
component and run ``on-load``, pumps the module's subscribed events into it, and returns
(raises) when the process ends. The process is not trusted: every subscription, call,
emitted event and storage access it asks for is checked again here against the manifest,
and every event it emits is stamped with its own module id.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import trio

from actors import (
    ChannelBroken,
    ProcessActor,
    ProcessSpec,
    RemoteError,
    open_process_actor,
)

from . import _ipc
from ._bus import EventBus, Subscription
from ._capabilities import Capabilities
from ._errors import CallError, CapabilityDenied
from ._events import Event, now_ms
from ._manifest import ModuleSource
from ._storage import Storage

#: (module, name, version, params, chain) -> JSON result; raises CallError.
Router = Callable[[str, str, int, str, list[str]], Awaitable[str]]

LOG_LINES_KEPT = 1000
EVENT_QUEUE = 1024
MAX_EVENT_NAME = 200
MAX_EVENT_DATA = 1 << 20
#: Seconds a module may take to load (the first start may compile the component).
START_TIMEOUT = 120.0


class ModuleCrashed(Exception):
    """The module process ended without being asked to; the message says why."""


@dataclass(frozen=True)
class LogLine:
    timestamp: int
    level: str
    source: str
    message: str


class _RateLimit:
    """Token bucket for emitted events: a flooding module is refused, not obeyed."""

    def __init__(self, per_second: int) -> None:
        self._rate = float(per_second)
        self._tokens = float(per_second)
        self._last = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self._rate, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False


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
    ) -> None:
        self.source = source
        self.id = source.id
        self.manifest = source.manifest
        self._caps = Capabilities.from_manifest(source.manifest)
        self._bus = bus
        self._storage = storage
        self._router = router
        self._on_log = on_log
        self._logger = logging.getLogger(f"vessel.module.{self.id}")
        self._rate = _RateLimit(source.manifest.limits.max_event_rate)
        self._subscription: Subscription | None = None
        self._fatal: str | None = None
        self.proc: ProcessActor | None = None
        self.pid: int | None = None
        self.last_start: _ipc.StartResult | None = None
        self.started_at: float | None = None
        self.logs: deque[LogLine] = deque(maxlen=LOG_LINES_KEPT)
        self.events_emitted = 0
        self.events_refused = 0
        self.denials = 0

    def __repr__(self) -> str:
        return f"<WasmModule {self.id!r} pid={self.pid}>"

    # -- supervisor child ----------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        spec = ProcessSpec(
            name=f"module:{self.id}",
            argv=[sys.executable, "-m", "vessel.host", "--module", self.id],
            on_output=self._child_output,
        )
        self._fatal = None
        subscription = self._bus.subscribe(name=f"module:{self.id}", queue_size=EVENT_QUEUE)
        self._subscription = subscription
        try:
            async with open_process_actor(
                spec, on_request=self._on_request, on_notify=self._on_notify
            ) as proc:
                self.proc = proc
                self.pid = proc.pid
                params = _ipc.StartParams(
                    module_dir=str(self.source.dir),
                    source_hash=self.source.hash,
                    manifest=self.manifest,
                )
                try:
                    raw = await proc.request(_ipc.GUEST_START, params, timeout=START_TIMEOUT)
                except RemoteError as exc:
                    raise ModuleCrashed(f"start failed: {exc.message}") from None
                except (ChannelBroken, trio.TooSlowError):
                    ended = await _exit_info(proc)
                    raise ModuleCrashed(self._fatal or f"start failed: {ended}") from None
                self.last_start = _ipc.decode(raw, _ipc.StartResult)
                how = "compiled and cached" if self.last_start.compiled else "precompiled"
                self._record(
                    "info",
                    f"loaded in {self.last_start.load_seconds * 1000:.0f} ms ({how})",
                    "daemon",
                )
                self.started_at = trio.current_time()
                task_status.started()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump_events, proc, subscription)
                    info = await proc.wait()
                    nursery.cancel_scope.cancel()
                raise ModuleCrashed(self._fatal or info.reason)
        finally:
            subscription.close()
            self._subscription = None
            self.proc = None
            self.started_at = None

    async def _pump_events(self, proc: ProcessActor, subscription: Subscription) -> None:
        async for event in subscription:
            try:
                await proc.notify(_ipc.GUEST_EVENT, event)
            except ChannelBroken:
                return

    def _child_output(self, stream: str, line: str) -> None:
        # The module process's own stdout/stderr (not the guest's): Python tracebacks.
        self._record("warning" if stream == "stderr" else "info", f"process: {line}", stream)

    # -- calls from the daemon ---------------------------------------------------------

    async def command(self, name: str, params: str, chain: list[str], *, timeout: float) -> str:
        proc = self.proc
        if proc is None or self.started_at is None:
            raise CallError("module_unavailable", f"module {self.id!r} is not running")
        request = _ipc.CommandRequest(action=name, params=params, chain=chain)
        try:
            raw = await proc.request(_ipc.GUEST_COMMAND, request, timeout=timeout)
        except trio.TooSlowError:
            raise CallError(
                "timeout", f"module {self.id!r} did not answer {name!r} within {timeout:g} s"
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

    # -- requests from the module process ----------------------------------------------

    async def _on_request(self, method: str, body: msgspec.Raw) -> Any:
        try:
            return await self._dispatch(method, body)
        except CapabilityDenied as exc:
            self.denials += 1
            self._record("warning", str(exc), "daemon")
            raise

    async def _dispatch(self, method: str, body: msgspec.Raw) -> Any:
        if method == _ipc.BUS_EMIT:
            self._emit(_ipc.decode(body, _ipc.Emit))
            return None
        if method == _ipc.MODULE_CALL:
            call = _ipc.decode(body, _ipc.Call)
            self._caps.check_call(call.module, call.name, call.version)
            chain = [*call.chain, self.id]
            return await self._router(call.module, call.name, call.version, call.params, chain)
        if method == _ipc.STORAGE_GET:
            self._caps.check_storage()
            return self._storage.get(self.id, _ipc.decode(body, _ipc.StorageKey).key)
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
        if method == _ipc.BUS_RESET:
            if self._subscription is not None:
                for pattern in list(self._subscription.patterns):
                    self._subscription.remove(pattern)
            return None
        raise ValueError(f"unknown request {method!r}")

    def _emit(self, emit: _ipc.Emit) -> None:
        if not 0 < len(emit.name) <= MAX_EVENT_NAME:
            raise ValueError(f"event name must be 1 to {MAX_EVENT_NAME} characters")
        if len(emit.data) > MAX_EVENT_DATA:
            raise ValueError(
                f"event {emit.name!r}: data is {len(emit.data)} bytes, limit {MAX_EVENT_DATA}"
            )
        try:
            msgspec.json.decode(emit.data)
        except msgspec.DecodeError as exc:
            raise ValueError(f"event {emit.name!r}: data is not valid JSON: {exc}") from None
        if not self._rate.take():
            self.events_refused += 1
            raise ValueError(
                f"event rate limit of {self.manifest.limits.max_event_rate}/s exceeded "
                "(limits.max_event_rate); event dropped"
            )
        event = Event(
            module=self.id,  # never what the guest claims: a module speaks only for itself
            name=emit.name,
            data=emit.data,
            version=emit.version,
            timestamp=now_ms(),
        )
        self.events_emitted += 1
        self._bus.publish(event, retain=emit.retained)

    async def _on_notify(self, method: str, body: msgspec.Raw) -> None:
        if method == _ipc.LOG:
            entry = _ipc.decode(body, _ipc.Log)
            if entry.level == "fatal":
                self._fatal = entry.message
            self._record(entry.level, entry.message, entry.source)
        elif method == _ipc.INSTANCE_REPLACED:
            reason = _ipc.decode(body, _ipc.InstanceReplaced).reason
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

    def _record(self, level: str, message: str, source: str) -> None:
        line = LogLine(timestamp=now_ms(), level=level, source=source, message=message)
        self.logs.append(line)
        self._logger.log(_LEVELS.get(level, logging.INFO), "%s", message)
        if self._on_log is not None:
            self._on_log(self.id, line)


_LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "fatal": logging.CRITICAL,
}


async def _exit_info(proc: ProcessActor) -> str:
    with trio.move_on_after(5):
        return (await proc.wait()).reason
    return "no answer"


__all__ = ["LogLine", "ModuleCrashed", "WasmModule"]
