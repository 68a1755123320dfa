"""The module manager: which modules exist, which run, and how calls reach them.

It discovers installed modules, keeps their enabled/disabled state in the database, runs
each enabled WASM module as a supervised child (one OS process each), turns supervisor
events into lifecycle events on the bus (``vessel.module.started`` ...), and routes calls
to native and WASM modules alike, refusing call cycles before they can deadlock.
"""

from __future__ import annotations

import enum
import logging
import os
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import trio

from actors import ChildSpec, ForkServer, Restart, Supervisor, SupervisorEvent

from ._active_wait import DEFAULT_LIMIT
from ._bus import EventBus
from ._ceilings import Ceilings
from ._compiler import Compiler
from ._cpu_box import CpuBox
from ._errors import (
    AlreadyInstalled,
    ArtifactNotStored,
    CallError,
    DiskWriteError,
    LimitAboveCeiling,
    UnknownModule,
    UnknownSetting,
    VesselError,
)
from ._events import Event, now_ms
from ._history import History
from ._install import (
    Staged,
    cleanup_staging,
    commit_staged,
    discard_staged,
    remove_module,
    stage_module,
)
from ._installs import Install, Installs
from ._ipc import GuestStats
from ._json_check import depth_problem
from ._logbook import Book, Logbook, LogLine
from ._manifest import (
    Manifest,
    ModuleSource,
    Refusal,
    discover_modules,
    load_module_dir,
    parse_manifest,
)
from ._native import BuiltinModule, NativeModule
from ._paths import modules_dir
from ._storage import Storage
from ._wasm_module import START_TIMEOUT, WasmModule
from .host._engine import artifact_is_current

log = logging.getLogger("vessel.manager")


class ModuleState(enum.Enum):
    #: Its compiled code is being made (or waits for a compile job): ``vessel._compiler``.
    COMPILING = "compiling"
    STARTING = "starting"
    RUNNING = "running"
    RESTARTING = "restarting"
    CRASHED = "crashed"
    STOPPED = "stopped"
    FAILED = "failed"
    DISABLED = "disabled"


@dataclass
class _Entry:
    module: WasmModule
    state: ModuleState
    restarts: int = 0
    last_reason: str | None = None
    #: The compile under way before its start (cancelled by a stop).
    compiling: trio.CancelScope | None = None


@dataclass(frozen=True)
class SupervisionPolicy:
    """Restart policy of every WASM module (OTP words: intensity per period, backoff)."""

    max_restarts: int = 5
    period: float = 60.0
    backoff_initial: float = 0.5
    backoff_max: float = 30.0


class ModuleManager:
    def __init__(
        self,
        *,
        data_dir: Path,
        storage: Storage,
        bus: EventBus,
        supervisor: Supervisor,
        logbook: Logbook,
        policy: SupervisionPolicy | None = None,
        forkserver: ForkServer | None = None,
        active_wait: float = DEFAULT_LIMIT,
        box: CpuBox | None = None,
        trusted_ca: str = "",
        compiler: Compiler | None = None,
        start_timeout: float = START_TIMEOUT,
        ceilings: Ceilings | None = None,
    ) -> None:
        self.data_dir = data_dir
        #: The most a manifest may raise its limits to (``vessel._ceilings``).
        self.ceilings = ceilings if ceilings is not None else Ceilings()
        self.compiler = compiler if compiler is not None else Compiler()
        self._start_timeout = start_timeout
        self._trusted_ca = trusted_ca
        self._box = box
        self._forkserver = forkserver
        self._active_wait = active_wait
        self._storage = storage
        self._bus = bus
        self._supervisor = supervisor
        self._policy = policy or SupervisionPolicy()
        self._entries: dict[str, _Entry] = {}
        self._native: dict[str, NativeModule] = {}
        #: Each module's log, kept across its restarts and the daemon's (vessel._logbook).
        self.logbook = logbook
        self.refused: list[Refusal] = []
        #: Installs under way or recently ended (``vessel._installs``).
        self.installs = Installs()
        #: Each module's lifecycle history, in the database (``vessel._history``).
        self.history = History(storage)
        self._background: trio.Nursery | None = None
        self.add_native(BuiltinModule(self.list_modules))

    def add_native(self, module: NativeModule) -> None:
        self._native[module.id] = module

    # -- discovery and lifecycle ---------------------------------------------------------

    async def discover(self) -> None:
        """Find every installed module (quick: no module starts yet).

        A broken module is reported (log line, ``vessel.module.refused`` event) and skipped.
        """
        directory = modules_dir(self.data_dir)
        directory.mkdir(parents=True, exist_ok=True)
        cleanup_staging(directory)
        sources, refused = await trio.to_thread.run_sync(discover_modules, directory)
        for refusal in refused:
            self._refuse(refusal)
        for source in sources:
            try:
                self.ceilings.check(source.manifest)
            except LimitAboveCeiling as exc:
                self._refuse(Refusal(source.dir, source.id, str(exc)))
                continue
            self._add(source)
        # Their logs as the last run left them: a restart of the daemon loses no line.
        await self.logbook.load(list(self._entries))

    async def start_all(self) -> None:
        """Start the enabled modules :meth:`discover` found (compiling those that need
        it first); return once each has started or failed to."""
        sources = [entry.module.source for entry in self._entries.values()]
        # Modules do not depend on each other's start (a call to one not yet running is
        # answered module_unavailable), so they start concurrently, as many at a time as
        # there are cores: one at a time, ten modules took ten times one start.
        limiter = trio.CapacityLimiter(max(1, os.cpu_count() or 1))
        enabled = [s.id for s in sources if self._storage.module_enabled(s.id)]
        log.info("starting %d module(s), %d at a time", len(enabled), limiter.total_tokens)

        async def start(module_id: str) -> None:
            async with limiter:
                await self._start(module_id)

        async with trio.open_nursery() as nursery:
            for source in sources:
                if source.id in enabled:
                    nursery.start_soon(start, source.id)
                else:
                    self._entries[source.id].state = ModuleState.DISABLED

    def _refuse(self, refusal: Refusal) -> None:
        self.refused = [r for r in self.refused if r.module_id != refusal.module_id]
        self.refused.append(refusal)
        log.error("module %s refused: %s", refusal.module_id, refusal.reason)
        self._lifecycle("refused", refusal.module_id, reason=refusal.reason)

    def _add(self, source: ModuleSource) -> _Entry:
        entry = _Entry(module=self._new_module(source), state=ModuleState.STOPPED)
        self._entries[source.id] = entry
        return entry

    def _new_module(self, source: ModuleSource) -> WasmModule:
        return WasmModule(
            source,
            bus=self._bus,
            storage=self._storage,
            router=self.call,
            on_log=self._fan_out,
            forkserver=self._forkserver,
            active_wait=self._active_wait,
            box=self._box,
            trusted_ca=self._trusted_ca,
            start_timeout=self._start_timeout,
        )

    def _spec(self, module: WasmModule) -> ChildSpec:
        p = self._policy
        return ChildSpec(
            id=module.id,
            run=module.run,
            restart=Restart.PERMANENT,
            max_restarts=p.max_restarts,
            period=p.period,
            backoff_initial=p.backoff_initial,
            backoff_max=p.backoff_max,
        )

    async def _start(self, module_id: str) -> None:
        entry = self._entry(module_id)
        module = entry.module
        if not await self._compiled(entry) or entry.module is not module:
            return  # failed, stopped, or replaced while it compiled: that one starts
        entry.state = ModuleState.STARTING
        await self._supervisor.start_child(self._spec(module))

    async def _compiled(self, entry: _Entry) -> bool:
        """Compile the module first if its compiled code is missing or stale; False if
        it cannot start (the compile failed: the module is failed, with the reason, and
        not retried; or a stop cancelled it)."""
        source = entry.module.source
        if await trio.to_thread.run_sync(artifact_is_current, source.dir, source.hash):
            return True
        entry.state = ModuleState.COMPILING
        self._lifecycle("compiling", source.id)
        with trio.CancelScope() as entry.compiling:
            try:
                await self.compiler.compile(source.id, source.dir, source.hash)
            except ArtifactNotStored as exc:
                # Better a module that runs with a compiler's memory than none at all (a
                # full disk after an upgrade used to keep every module down).
                log.warning(
                    "module %s: %s; it compiles in its own process at each start until "
                    "there is room (which costs it ~300 MiB of memory meanwhile)",
                    source.id, exc,
                )  # fmt: skip
                entry.module.compile_in_process = True
            except VesselError as exc:
                entry.state = ModuleState.FAILED
                entry.last_reason = str(exc)
                log.error("module %s not started: %s", source.id, exc)
                self._lifecycle("failed", source.id, reason=str(exc), restarts=entry.restarts)
                return False
            finally:
                entry.compiling = None
            return True
        return False  # stopped while it compiled

    def _entry(self, module_id: str) -> _Entry:
        try:
            return self._entries[module_id]
        except KeyError:
            raise UnknownModule(f"no module {module_id!r} is installed") from None

    def _is_supervised(self, module_id: str) -> bool:
        return any(c.id == module_id for c in self._supervisor.which_children())

    async def stop(self, module_id: str) -> None:
        entry = self._entry(module_id)
        if entry.compiling is not None:
            entry.compiling.cancel()
            entry.state = ModuleState.STOPPED
        if self._box is not None:
            self._box.release(module_id)  # also when it is not running (a crash's backoff)
        if self._is_supervised(module_id):
            await self._supervisor.remove_child(module_id)

    async def restart(self, module_id: str) -> None:
        """Stop the module's process and start a new one (clears a ``failed`` state)."""
        entry = self._entry(module_id)
        if entry.state is ModuleState.DISABLED:
            raise CallError("module_unavailable", f"module {module_id!r} is disabled")
        # Re-read the folder: a restart is how an operator picks up a fixed module.
        source = await trio.to_thread.run_sync(load_module_dir, entry.module.source.dir)
        self.ceilings.check(source.manifest)
        self._record("restart_requested", module_id)
        await self.stop(module_id)
        entry.module = self._new_module(source)
        entry.restarts = 0
        await self._start(module_id)

    async def enable(self, module_id: str) -> None:
        entry = self._entry(module_id)
        self._storage.set_module_enabled(module_id, True)
        if entry.state is ModuleState.DISABLED:
            self._record("enabled", module_id)
            await self._start(module_id)

    async def disable(self, module_id: str) -> None:
        entry = self._entry(module_id)
        self._storage.set_module_enabled(module_id, False)
        await self.stop(module_id)
        entry.state = ModuleState.DISABLED
        self._lifecycle("disabled", module_id)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the installs that run on after their request (``vessel._installs``); the
        daemon starts this in its nursery, and cancelling it ends them (a compile under
        way is killed, its staging folder deleted)."""
        async with trio.open_nursery() as nursery:
            self._background = nursery
            nursery.start_soon(self._record_replacements)
            task_status.started()
            await trio.sleep_forever()

    async def _record_replacements(self) -> None:
        """A trap replaces a module's instance without a lifecycle change the manager
        sees: its process announces it on the bus, and the history takes it from there."""
        with self._bus.subscribe(
            "vessel.module.instance_replaced", name="module history", replay=False
        ) as sub:
            async for event in sub:
                fields = msgspec.json.decode(event.data)
                module_id = fields.get("module")
                if isinstance(module_id, str) and module_id in self._entries:
                    self.history.record(module_id, "instance_replaced", event.timestamp, fields)

    async def install(self, manifest: bytes, wasm: bytes | Path, *, replace: bool = False) -> str:
        """Install (or replace) a module and start it, and wait for that; returns its id.

        Raises what :meth:`begin_install` raises, and what ended the install: ManifestError,
        ComponentError (it does not compile), DiskWriteError. The install goes on if the
        caller is cancelled meanwhile (it is the daemon's: ``vessel._installs``).
        """
        install = await self.begin_install(manifest, wasm, replace=replace)
        await install.ended.wait()
        if install.error is not None:
            raise install.error
        return install.module_id

    async def begin_install(
        self, manifest: bytes, wasm: bytes | Path, *, replace: bool = False
    ) -> Install:
        """Check and stage an install, then let the daemon compile, place and start it;
        returns once it is staged, with the record that says how it goes on.

        Raises at once, with nothing changed: ManifestError (a bad manifest),
        AlreadyInstalled (without ``replace``), InstallInProgress, ComponentError (bytes
        that are no component), DiskWriteError. ``wasm`` may be an upload file: it is
        moved into the module.
        """
        if self._background is None:
            raise RuntimeError("ModuleManager.run() is not running")
        parsed = self.parse_manifest(manifest)
        module_id = parsed.id
        if not replace and self.is_installed(module_id):
            raise AlreadyInstalled(
                f"module {module_id!r} is already installed; remove it first or install with "
                "replace"
            )
        install = self.installs.begin(module_id, parsed.version, replace=replace)
        try:
            staged = await trio.to_thread.run_sync(
                lambda: stage_module(
                    self.data_dir, manifest, wasm, replace=replace, source="the uploaded manifest"
                )
            )
        except BaseException:
            self.installs.drop(install)
            raise
        self._background.start_soon(self._finish_install, install, staged)
        return install

    def parse_manifest(self, manifest: bytes) -> Manifest:
        """An uploaded manifest, parsed and checked against the limit ceilings; raises
        ManifestError (LimitAboveCeiling: it asks for more than this daemon allows)."""
        parsed = parse_manifest(manifest, source="the uploaded manifest")
        self.ceilings.check(parsed)
        return parsed

    def is_installed(self, module_id: str) -> bool:
        """Installed under that id: a module, or a folder that was refused."""
        return module_id in self._entries or any(r.module_id == module_id for r in self.refused)

    async def _finish_install(self, install: Install, staged: Staged) -> None:
        """Compile, place and start a staged install; its outcome goes to its record (and
        to the log and a ``vessel.module.install_failed`` event when it fails)."""
        module_id = install.module_id
        try:
            source = await self._compile_and_place(install, staged)
        except BaseException as exc:
            reason = (
                "the daemon stopped before it was done"
                if isinstance(exc, trio.Cancelled)
                else str(exc)
            )
            log.error("install of module %s failed: %s; nothing was changed", module_id, reason)
            self._lifecycle("install_failed", module_id, reason=reason)
            error = exc if isinstance(exc, VesselError) else VesselError(reason)
            self.installs.end(install, error)
            if not isinstance(exc, Exception):
                raise  # a cancellation goes on up
            return
        install.state = "starting"
        # The new files are in place: switching the running module over must not be cut
        # short (the daemon stopping), or the old process would run beside new files.
        try:
            with trio.CancelScope(shield=True):
                if source.id in self._entries:
                    await self.stop(source.id)
                else:
                    # A new module starts with an empty log, whatever files an old one
                    # of that id left (its folder deleted by hand, not removed).
                    await self.logbook.forget(source.id)
                self.refused = [r for r in self.refused if r.module_id != source.id]
                self._add(source)
                self._storage.set_module_enabled(source.id, True)
                self._lifecycle("installed", source.id, version=source.manifest.version)
                await self._start(source.id)
        finally:
            self.installs.end(install)

    async def _compile_and_place(self, install: Install, staged: Staged) -> ModuleSource:
        module_id = install.module_id
        try:
            self._lifecycle("compiling", module_id)
            try:
                await self.compiler.compile(module_id, staged.folder, staged.source.hash)
            except ArtifactNotStored as exc:
                raise DiskWriteError(
                    f"module {module_id!r} was not installed: {exc}; nothing was changed: "
                    "free space in the data dir and retry"
                ) from exc
        except BaseException:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(discard_staged, staged)
            raise
        # Not abandoned if cancelled: the rename is done, or not begun (commit_staged
        # deletes the staging folder whatever happens).
        return await trio.to_thread.run_sync(lambda: commit_staged(staged, replace=install.replace))

    async def remove(self, module_id: str, *, keep_storage: bool = False) -> None:
        self._entry(module_id)
        await self.stop(module_id)
        del self._entries[module_id]
        await trio.to_thread.run_sync(remove_module, self.data_dir, module_id)
        await self.logbook.forget(module_id)
        self._storage.forget_module(module_id)
        self.history.forget(module_id)
        if not keep_storage:
            self._storage.drop_namespace(module_id)
        self._bus.forget_retained(module_id)
        self._lifecycle("removed", module_id)

    # -- supervision -> state and lifecycle events ----------------------------------------

    def on_supervisor_event(self, event: SupervisorEvent) -> None:
        entry = self._entries.get(event.child_id)
        if entry is None:
            return
        module = entry.module
        if event.reason is not None:
            entry.last_reason = event.reason
        kind = event.kind
        if kind == "started":
            entry.state = ModuleState.RUNNING
            name = "restarted" if entry.restarts else "started"
            log.info("module %s %s (pid %s)", module.id, name, module.pid)
            self._lifecycle(name, module.id, pid=module.pid, restarts=entry.restarts)
        elif kind in ("crashed", "exited"):
            entry.state = ModuleState.CRASHED
            log.warning("module %s crashed (pid %s): %s", module.id, module.pid, event.reason)
            self._lifecycle("crashed", module.id, pid=module.pid, reason=event.reason)
        elif kind == "restarting":
            entry.state = ModuleState.RESTARTING
            entry.restarts += 1
            self._log_line(
                module.id,
                "info",
                f"restarting in {event.delay or 0:.1f} s (restart {entry.restarts} of at most "
                f"{self._policy.max_restarts} within {self._policy.period:g} s)",
            )
            self._lifecycle("restarting", module.id, delay=event.delay, restarts=entry.restarts)
        elif kind == "failed":
            entry.state = ModuleState.FAILED
            log.error("module %s failed: %s; not restarting", module.id, event.reason)
            self._log_line(
                module.id,
                "error",
                f"failed: not restarting ({event.reason}); once fixed: vessel-ctl restart "
                f"{module.id}",
            )
            self._lifecycle("failed", module.id, reason=event.reason, restarts=entry.restarts)
        elif kind == "stopped":
            if entry.state is not ModuleState.DISABLED:
                entry.state = ModuleState.STOPPED
            self._log_line(module.id, "info", "its process was stopped")
            self._lifecycle("stopped", module.id, pid=module.pid)

    def _lifecycle(self, name: str, module_id: str, **fields: Any) -> None:
        data = {"module": module_id, **fields}
        timestamp = now_ms()
        self._bus.publish(
            Event(
                module="vessel",
                name=f"module.{name}",
                data=msgspec.json.encode(data).decode(),
                timestamp=timestamp,
            )
        )
        if module_id in self._entries:  # not a new id's failed install, nor a refused one
            self.history.record(module_id, name, timestamp, fields)

    def _record(self, name: str, module_id: str, **fields: Any) -> None:
        """A history entry that is no lifecycle event (an admin's request)."""
        self.history.record(module_id, name, now_ms(), fields)

    # -- calls -----------------------------------------------------------------------

    async def call(
        self,
        module_id: str,
        name: str,
        version: int,
        params: str,
        chain: list[str] | None = None,
        *,
        timeout: float | None = None,
    ) -> str:
        """Route a call to a module; raises CallError with a stable code."""
        return await self.begin_call(module_id, name, version, params, chain, timeout=timeout)

    def begin_call(
        self,
        module_id: str,
        name: str,
        version: int,
        params: str,
        chain: list[str] | None = None,
        *,
        timeout: float | None = None,
    ) -> Coroutine[Any, Any, str]:
        """:meth:`call` in two halves, for a caller that would otherwise start a task
        only to send it: a WASM module's command is on its way when this returns, and the
        returned coroutine (await it, always) waits for the answer. Raises CallError at
        once for what needs no answer from the module (unknown, not running, a cycle)."""
        chain = chain or []
        if problem := depth_problem(params):
            raise CallError("invalid_request", f"call params: {problem}")
        if module_id in chain:
            path = " → ".join([*chain, module_id])
            raise CallError("module_error", f"call cycle detected: {path}")
        native = self._native.get(module_id)
        if native is not None:
            return native.command(name, params, chain)
        entry = self._entries.get(module_id)
        if entry is None:
            raise CallError("unknown_module", f"no module {module_id!r} is installed")
        if entry.state is not ModuleState.RUNNING:
            raise CallError("module_unavailable", f"module {module_id!r} is {entry.state.value}")
        return _checked_answer(
            module_id, name, entry.module.begin_command(name, params, chain, timeout=timeout)
        )

    # -- logs ------------------------------------------------------------------------

    def _fan_out(self, module_id: str, line: LogLine) -> None:
        self.logbook.module(module_id).append(line)

    def _log_line(self, module_id: str, level: str, message: str) -> None:
        """The daemon's own line in a module's log (its supervision: a restart, a stop)."""
        self.logbook.module(module_id).append(LogLine(now_ms(), level, "daemon", message))

    def log_book(self, module_id: str) -> Book:
        """The module's log (raises UnknownModule)."""
        self._entry(module_id)
        return self.logbook.module(module_id)

    def log_followers(self, module_id: str) -> int:
        """How many live log followers a module has (released when they go away)."""
        return self.log_book(module_id).followers

    @contextmanager
    def follow_logs(self, module_id: str) -> Iterator[trio.MemoryReceiveChannel[LogLine]]:
        """Live log lines of a module (after the ones ``logs`` already returns)."""
        with self.log_book(module_id).follow() as lines:
            yield lines

    # -- configuration (the user's side of a module's storage) -------------------------

    def config_keys(self, module_id: str) -> list[str]:
        self._entry(module_id)
        return self._storage.keys(module_id)

    def config_get(self, module_id: str, key: str) -> str | None:
        self._entry(module_id)
        return self._storage.get(module_id, key)

    def config_settings(self, module_id: str) -> list[dict[str, Any]]:
        """The settings the module's manifest declares, in its order, each with whether
        it is set now (never its value)."""
        settings = self._entry(module_id).module.manifest.settings
        # Key by key: a module's storage may hold many more keys than its settings.
        stored = {key for key in settings if self._storage.get(module_id, key) is not None}
        return [
            {
                "key": key,
                "label": setting.label or key,
                "description": setting.description,
                "secret": setting.secret,
                "required": setting.required,
                "default": setting.default,
                "set": key in stored,
            }
            for key, setting in settings.items()
        ]

    def storage_listing(self, module_id: str) -> dict[str, Any]:
        """The module's storage apart from its declared settings: each key with the bytes
        it counts against the quota (never a value), the bytes used and the quota."""
        entry = self._entry(module_id)
        settings = entry.module.manifest.settings
        rows = self._storage.entries(module_id)
        return {
            "keys": [{"key": key, "size": size} for key, size in rows if key not in settings],
            "used": sum(size for _, size in rows),
            "quota": entry.module.manifest.limits.storage_quota_kb * 1024,
        }

    def missing_settings(self, module_id: str) -> list[str]:
        """Required settings of the module that are not set: it cannot work yet."""
        settings = self._entry(module_id).module.manifest.settings
        return [
            key
            for key, setting in settings.items()
            if setting.required and self._storage.get(module_id, key) is None
        ]

    def config_set(self, module_id: str, key: str, value: str) -> None:
        """Store a setting the module reads with storage-get; the module is told through a
        ``vessel.module.config_changed`` event (the key, never the value).

        A module that declares ``settings`` takes only those keys (UnknownSetting)."""
        entry = self._entry(module_id)
        settings = entry.module.manifest.settings
        if settings and key not in settings:
            raise UnknownSetting(
                f"module {module_id!r} has no setting {key!r}; its settings: " + ", ".join(settings)
            )
        quota = entry.module.manifest.limits.storage_quota_kb * 1024
        self._storage.set(module_id, key, value, quota_bytes=quota)
        self._lifecycle("config_changed", module_id, key=key)

    def config_delete(self, module_id: str, key: str) -> bool:
        self._entry(module_id)
        deleted = self._storage.delete(module_id, key)
        if deleted:
            self._lifecycle("config_changed", module_id, key=key)
        return deleted

    # -- introspection ---------------------------------------------------------------

    def get(self, module_id: str) -> WasmModule:
        return self._entry(module_id).module

    def state(self, module_id: str) -> ModuleState:
        return self._entry(module_id).state

    def ids(self) -> list[str]:
        return sorted(self._entries)

    def processes(self) -> dict[str, int]:
        """Module id -> pid of every module process running now."""
        return {m: e.module.proc.pid for m, e in self._entries.items() if e.module.proc is not None}

    def logs(self, module_id: str) -> list[LogLine]:
        """The module's newest log lines, oldest first, across its restarts."""
        return self.log_book(module_id).lines()

    def describe(self, module_id: str) -> dict[str, Any]:
        entry = self._entry(module_id)
        module = entry.module
        m = module.manifest
        running = entry.state is ModuleState.RUNNING and module.started_at is not None
        return {
            "id": module.id,
            "name": m.name,
            "version": m.version,
            "api_version": m.api_version,
            "description": m.description,
            "kind": "wasm",
            "state": entry.state.value,
            "pid": module.pid if running else None,
            "restarts": entry.restarts,
            "uptime": (trio.current_time() - module.started_at)
            if running and module.started_at is not None
            else None,
            "last_reason": entry.last_reason,
            "missing_settings": self.missing_settings(module_id),
            "compiling_for": self.compiling_for(module_id),
            "log_lines_dropped": module.log_lines_dropped,
            # The module's own word on its health, for its running process (vessel._health).
            "health": module.health.to_json() if running and module.health else None,
        }

    def compiling_for(self, module_id: str) -> float | None:
        """Seconds since the module's compile was asked for (queued or under way)."""
        job = self.compiler.job(module_id)
        return None if job is None else trio.current_time() - job.queued_at

    def list_modules(self) -> list[dict[str, Any]]:
        return [self.describe(module_id) for module_id in self.ids()]

    async def stats(self, module_id: str) -> GuestStats | None:
        """Live figures from the module process (None when it is not running)."""
        entry = self._entry(module_id)
        if entry.state is not ModuleState.RUNNING:
            return None
        return await entry.module.stats()

    def enabled(self, module_id: str) -> bool:
        self._entry(module_id)
        return self._storage.module_enabled(module_id)


async def _checked_answer(module_id: str, name: str, answer: Coroutine[Any, Any, str]) -> str:
    """A module's answer, refused if it nests too deeply for its caller (a module's JSON
    parser among them) to decode: vessel/_json_check.py."""
    result = await answer
    if problem := depth_problem(result):
        raise CallError("module_error", f"module {module_id!r} answered {name!r} with {problem}")
    return result


__all__ = ["ModuleManager", "ModuleState", "SupervisionPolicy"]
