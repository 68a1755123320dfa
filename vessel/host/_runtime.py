"""The guest side of a module process: one component, one store, one instance at a time.

Everything here runs on the guest's worker thread (never on the trio loop), one call at a
time. Host functions are plain callables supplied by the caller; this module only knows
how to link them, how to bound a call in time and memory, and how to replace an instance
after a trap.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import wasmtime
from wasmtime import component as wc

from . import _engine
from ._confine import (
    CONFINE_AFTER,
    CONFINE_CPU,
    HOST_BUSY_CALLS,
    BoxChange,
    Confinement,
    box_cpu,
    runaway_cpu,
)
from ._slicing import SLICE, EpochCallback
from ._wasm_types import add_import, fix_export

log = logging.getLogger("vessel.host")

#: An invocation's deadline is its limit of the guest's own CPU time, but at most this
#: many times the limit of wall-clock time (host calls excluded) passes before it traps.
DEADLINE_WAIT_FACTOR = 2.0
#: The least time given at once for having waited (fewer wake-ups near the end).
MIN_WAIT_STEP = 0.001

#: Host functions of ``vessel:host/host@1.0.0``, by WIT name. Each gets the guest's
#: arguments (not the store) and must never raise: errors are returned as values.
HostImports = dict[str, Callable[..., Any]]

#: What the watchdog looks at during an invocation, each when it is due: the deadline,
#: whether the work is long (confined), whether it runs away (reported), a slice's end.
_Step = Literal["deadline", "long", "runaway", "slice"]


class HostFunctionFailed(Exception):
    """A host function raised (a bug in Vessel: they return their errors as values).

    wasmtime turns the exception into a trap of the calling guest and raises it again
    once the guest has unwound: the instance is as dead as after any other trap.
    """

    def __init__(self, name: str, cause: Exception) -> None:
        super().__init__(f"host function {name!r} failed: {cause!r}")
        self.name = name
        self.cause = cause


class GuestTrap(Exception):
    """A guest export trapped, ran past its deadline or ran out of memory.

    The instance is unusable afterwards; the caller replaces it (``instantiate``).
    """

    def __init__(self, export: str, reason: str) -> None:
        super().__init__(f"{export} trapped: {reason}")
        self.export = export
        self.reason = reason


class Watchdog:
    """Advances the engine's epoch when an invocation's deadline passes; advances it
    every slice, once the invocation has used a slice of CPU, so that it yields the CPU
    (``_slicing``); confines an invocation that runs long to one CPU, and reports one that
    runs away (``_confine``).

    Ticking only at deadlines (instead of a fixed-rate ticker) keeps an idle module process
    idle. Time spent inside host functions is not charged to the guest: a host call pauses
    every clock, so a slow ``call`` or ``http-fetch`` (which has its own timeout) cannot
    make the caller miss its compute deadline (nor get it confined).

    Nor is time the guest spent waiting for a CPU: every step is taken only once the
    guest has used the CPU time it stands for, and when its deadline comes, an invocation
    that has used less CPU than its limit gets the difference (a busy machine, a runaway
    beside it in the box, pages read back from disk), up to as much again as the limit
    (``DEADLINE_WAIT_FACTOR``). A guest can only compute or call the host, so its CPU
    time is the work it did; the cap still stops one that the machine starves for good.

    Arming, pausing and disarming happen on every invocation and every host call, so they
    only write the times under the lock: the watchdog thread is woken only when it is
    idle or would look too late. Otherwise it wakes at the time it last planned for,
    finds the invocation over (or a later time), and goes back to sleep. Waking it on
    every change cost more than the guest call itself (two thread switches and a GIL
    hand-over per invocation, measured in bench/).
    """

    def __init__(
        self,
        engine: wasmtime.Engine,
        confinement: Confinement | None = None,
        *,
        runaway: Callable[[float], float] = runaway_cpu,
    ) -> None:
        """``runaway(limit)``: the guest CPU time after which an invocation with that
        deadline is a runaway (``_confine.runaway_cpu``)."""
        self._engine = engine
        self._runaway = runaway
        self._confinement = confinement if confinement is not None else Confinement(None)
        self._cond = threading.Condition()
        #: The armed invocation's steps, by when each is due (monotonic time); while a
        #: host call pauses them, by how long each still had to go.
        self._due: dict[_Step, float] = {}
        self._paused: dict[_Step, float] = {}
        #: The armed invocation's limit (CPU time of its own), the CPU time after which
        #: it is a runaway, and the wall-clock time it may still be given at its deadline
        #: for having waited for a CPU.
        self._limit = 0.0
        self._runaway_cpu = 0.0
        self._wait_left = 0.0
        #: It has begun to yield at every slice (before, the watchdog only looks whether
        #: it has used a slice of CPU).
        self._yielding = False
        #: The thread running the armed invocation (the one to confine), its CPU clock,
        #: and the CPU time it had used when armed plus what its host calls have used
        #: since (the guest's own CPU time is the rest), and when the current host call
        #: began, on that clock.
        self._tid: int | None = None
        self._cpu_ident: int | None = None
        self._cpu_clock: int | None = None
        self._cpu_at_arm = 0.0
        self._host_cpu_from: float | None = None
        #: Host calls the armed invocation has made so far (not counting refused ones).
        self._host_calls = 0
        #: The armed invocation was confined as long work busy with the host: neither
        #: reported nor made to yield (``HOST_BUSY_CALLS``).
        self._host_busy = False
        #: The host refused one of its calls for a rate limit: it floods.
        self._flooding = False
        #: When the thread will look next; None while it waits for a notify.
        self._wake_at: float | None = None
        self._closed = False
        self.fired = False
        #: The module misbehaved lately (it trapped, or the daemon says so at its start):
        #: its long work is reported as a runaway as soon as it is confined. A module
        #: that misbehaves tends to do it again, and the first milliseconds of a runaway
        #: are when the healthy modules beside it wait behind it (performance.md).
        self.suspect = False
        self._thread = threading.Thread(target=self._loop, name="vessel-watchdog", daemon=True)
        self._thread.start()

    @property
    def confined(self) -> int:
        """How many invocations were confined to one CPU so far."""
        return self._confinement.count

    def _plan(self) -> None:
        """Wake the thread if it would look too late for the current times."""
        if self._due and (self._wake_at is None or min(self._due.values()) < self._wake_at):
            self._cond.notify()

    def arm(self, seconds: float) -> None:
        """Start an invocation's clock; call on the thread that runs the invocation."""
        with self._cond:
            now = time.monotonic()
            self.fired = False
            self._paused = {}
            self._tid = threading.get_native_id()
            self._host_calls = 0
            self._host_busy = self._flooding = self._yielding = False
            self._cpu_at_arm = time.thread_time()
            self._host_cpu_from = None
            if self._cpu_clock is None or self._cpu_ident != threading.get_ident():
                self._cpu_ident = threading.get_ident()
                self._cpu_clock = time.pthread_getcpuclockid(self._cpu_ident)
            self._limit = seconds
            self._runaway_cpu = self._runaway(seconds)
            self._wait_left = seconds * (DEADLINE_WAIT_FACTOR - 1)
            self._due = {
                "deadline": now + seconds,
                "long": now + CONFINE_AFTER,
                "slice": now + SLICE,
            }
            self._plan()

    def disarm(self) -> None:
        """End the invocation (on the thread that armed it): it gets its CPUs back."""
        with self._cond:
            self._due, self._paused = {}, {}
            self._host_busy = self._flooding = False
            if self._tid is not None:
                self._confinement.release(self._tid)
                self._tid = None

    def pause(self) -> None:
        """A host call begins (on the guest's thread): neither its time nor its CPU time
        is the guest's, and the guest does not yield while the host works."""
        with self._cond:
            self._host_calls += 1
            self._host_cpu_from = time.thread_time()
            now = time.monotonic()
            self._paused = {step: max(0.0, at - now) for step, at in self._due.items()}
            self._due = {}

    def resume(self) -> None:
        """The host call has returned (on the guest's thread)."""
        with self._cond:
            if self._host_cpu_from is not None:
                self._cpu_at_arm += time.thread_time() - self._host_cpu_from
                self._host_cpu_from = None
            now = time.monotonic()
            self._due = {step: now + left for step, left in self._paused.items()}
            self._paused = {}
            self._plan()

    def refused(self) -> None:
        """The host refused the current host call for a rate limit (call from inside it,
        on the guest thread): it gave the daemon no work to do.

        So it does not count towards being busy with the host, and long work is a flood
        from now on: it is reported (its module is quarantined) once it is confined, at
        once if it is already, and it yields every slice like any other runaway.
        """
        with self._cond:
            self._host_calls = max(0, self._host_calls - 1)
            if self._flooding:
                return
            self._flooding = True
            if self._tid is not None:
                self._confinement.report(self._tid, "flood")
            if self._host_busy:
                self._host_busy = False
                if self._host_cpu_from is not None:
                    # Inside a host call, the clocks paused: ``resume`` starts the slice.
                    self._paused["slice"] = SLICE
                else:  # a line the guest printed, say: no host call to come back from
                    self._due["slice"] = time.monotonic() + SLICE
                    self._plan()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()

    def _cpu_short(self, needed: float) -> float:
        """How much CPU time the armed invocation's guest still has to use to have used
        ``needed`` of its own (0: it has, or its thread cannot be asked)."""
        if self._cpu_clock is None:
            return 0.0
        try:
            used = time.clock_gettime(self._cpu_clock) - self._cpu_at_arm
        except OSError:
            return 0.0
        return max(0.0, needed - used)

    def _loop(self) -> None:
        with self._cond:
            while not self._closed:
                now = time.monotonic()
                step = min(self._due, key=self._due.__getitem__, default=None)
                if step is None or self._due[step] > now:
                    self._wake_at = self._due[step] if step is not None else None
                    self._cond.wait(None if self._wake_at is None else self._wake_at - now)
                    self._wake_at = None
                    continue
                # The earliest first, so a watchdog woken late still takes its steps in
                # order (the first slice's yield before the confinement, say).
                del self._due[step]
                if step == "deadline":
                    # It needs at least that much more time to use its CPU time.
                    short = self._cpu_short(self._limit)
                    more = min(max(short, MIN_WAIT_STEP), self._wait_left) if short else 0.0
                    if more > 0:
                        self._due["deadline"] = now + more
                        self._wait_left -= more
                    else:
                        self.fired = True
                        self._engine.increment_epoch()
                elif step == "long":
                    # Waiting for a CPU is not running long: a busy machine must not get
                    # a healthy module confined. Nor is it a runaway: ``runaway`` asks
                    # for its own CPU time again.
                    if short := self._cpu_short(CONFINE_CPU):
                        self._due["long"] = now + short
                    else:
                        self._confine()
                elif step == "runaway":
                    if short := self._cpu_short(self._runaway_cpu):
                        self._due["runaway"] = now + short
                    elif self._tid is not None:
                        self._confinement.report(self._tid, "runaway")
                elif step == "slice":
                    if not self._yielding:
                        if short := self._cpu_short(SLICE):
                            # It has been waiting for a CPU: nothing to give up yet.
                            self._due["slice"] = now + short
                            continue
                        self._yielding = True
                    self._due["slice"] = now + SLICE
                    self._engine.increment_epoch()

    def _confine(self) -> None:
        """The armed invocation counts as long work now (the lock held)."""
        self._host_busy = self._host_calls >= HOST_BUSY_CALLS and not self._flooding
        if self._tid is not None:
            self._confinement.confine(self._tid)
            if self._flooding:
                self._confinement.report(self._tid, "flood")
        if self._host_busy:
            self._due.pop("slice", None)  # the daemon's own work: no yielding, no report
        elif self.suspect and self._tid is not None:
            self._confinement.report(self._tid, "runaway")
        else:
            self._due["runaway"] = time.monotonic() + self._cpu_short(self._runaway_cpu)


@dataclass(frozen=True)
class Limits:
    memory_bytes: int
    invocation_seconds: float


class GuestRuntime:
    """Loads one module's component and calls its exports under limits."""

    def __init__(
        self,
        *,
        module_id: str,
        module_dir: Path,
        source_hash: str,
        limits: Limits,
        imports: HostImports,
        on_output: Callable[[str, bytes], None],
        on_box: BoxChange | None = None,
        compile_in_process: bool = False,
    ) -> None:
        self.module_id = module_id
        self._compile_in_process = compile_in_process
        self._module_dir = module_dir
        self._source_hash = source_hash
        self._limits = limits
        self._imports = imports
        self._on_output = on_output
        self._engine = _engine.make_engine()
        self._watchdog = Watchdog(self._engine, Confinement(box_cpu(), on_box))
        watchdog = self._watchdog
        self._epoch_callback = EpochCallback(lambda: watchdog.fired)
        self._component: wc.Component | None = None
        self._linker: wc.Linker | None = None
        self._store: wasmtime.Store | None = None
        self._funcs: dict[str, wc.Func] = {}

    # -- loading -----------------------------------------------------------------------

    def load(self) -> None:
        """Load the compiled component (never compile: the daemon has had it compiled in
        a process of its own, ``vessel.host._compile``) and link the host functions."""
        self._component = _engine.load_component(
            self._engine,
            self._module_dir,
            source_hash=self._source_hash,
            module_id=self.module_id,
            compile_if_missing=self._compile_in_process,
        )
        linker = wc.Linker(self._engine)
        # WASI p2 for the guest's libc: no preopens, no env, no args and no network are
        # configured on the store, and wasi-http is never linked. wasi:sockets is linked
        # (every componentize-py guest imports it), but a store without network refuses
        # it: create-tcp-socket / create-udp-socket answer access-denied and name lookup
        # permanent-resolver-failure (tests/adversarial/test_sandbox.py, netprobe.wat).
        linker.add_wasip2()
        with linker.root() as root, root.add_instance(_engine.HOST_INTERFACE) as inst:
            for name, fn in self._imports.items():
                add_import(inst, name, self._wrap_import(name, fn))
        self._linker = linker

    def _wrap_import(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        watchdog = self._watchdog

        def call(_store: Any, *args: Any) -> Any:
            watchdog.pause()
            try:
                return fn(*args)
            except Exception as exc:
                raise HostFunctionFailed(name, exc) from exc
            finally:
                watchdog.resume()

        call.__name__ = f"host_{name.replace('-', '_')}"
        return call

    def instantiate(self) -> None:
        """Create a fresh store and instance (first start, or after a trap)."""
        assert self._linker is not None
        assert self._component is not None
        store = wasmtime.Store(self._engine)
        wasi = wasmtime.WasiConfig()
        wasi.stdout_custom = lambda data: self._on_output("stdout", data)
        wasi.stderr_custom = lambda data: self._on_output("stderr", data)
        store.set_wasi(wasi)
        store.set_limits(memory_size=self._limits.memory_bytes)
        self._epoch_callback.install(store)
        store.set_epoch_deadline(1)
        self._watchdog.arm(self._limits.invocation_seconds)
        try:
            instance = self._linker.instantiate(store, self._component)
        except wasmtime.WasmtimeError as exc:
            raise GuestTrap("instantiate", _describe_trap(exc, self._watchdog.fired)) from None
        except HostFunctionFailed as exc:
            raise _host_trap("instantiate", exc) from exc
        finally:
            self._watchdog.disarm()
        guest = instance.get_export_index(store, _engine.GUEST_INTERFACE)
        funcs: dict[str, wc.Func] = {}
        for name in _engine.REQUIRED_EXPORTS | _engine.OPTIONAL_EXPORTS:
            index = instance.get_export_index(store, name, guest)
            func = instance.get_func(store, index) if index is not None else None
            if func is not None:
                fix_export(func, store)
                funcs[name] = func
        self._store = store
        self._funcs = funcs

    @property
    def confined(self) -> int:
        """Invocations so far that ran long and were confined to one CPU (``_confine``)."""
        return self._watchdog.confined

    @property
    def suspect(self) -> bool:
        """The module misbehaved lately: its long work is a runaway from its confinement
        on (``Watchdog.suspect``)."""
        return self._watchdog.suspect

    @suspect.setter
    def suspect(self, value: bool) -> None:
        self._watchdog.suspect = value

    def refused(self) -> None:
        """A host function refused the current host call for a rate limit
        (``Watchdog.refused``)."""
        self._watchdog.refused()

    @property
    def yields(self) -> int:
        """Times long guest work gave way to other tasks at a slice's end (``_slicing``)."""
        return self._epoch_callback.yields

    def has_export(self, name: str) -> bool:
        return name in self._funcs

    # -- calling -----------------------------------------------------------------------

    def call(self, export: str, *args: Any) -> Any:
        """Call a guest export under the invocation deadline; raises GuestTrap."""
        store = self._store
        func = self._funcs.get(export)
        if store is None or func is None:
            raise GuestTrap(export, "no live instance")
        store.set_epoch_deadline(1)
        self._watchdog.arm(self._limits.invocation_seconds)
        try:
            result = func(store, *args)
            func.post_return(store)
        except wasmtime.WasmtimeError as exc:
            self._store = None
            self._funcs = {}
            raise GuestTrap(export, _describe_trap(exc, self._watchdog.fired)) from None
        except HostFunctionFailed as exc:
            self._store = None
            self._funcs = {}
            raise _host_trap(export, exc) from exc
        finally:
            self._watchdog.disarm()
        return result

    def close(self) -> None:
        self._watchdog.close()
        self._store = None
        self._funcs = {}


def _host_trap(export: str, exc: HostFunctionFailed) -> GuestTrap:
    """The trap a failed host function caused, with its traceback in the process's log:
    the guest did nothing wrong, but its instance is gone all the same."""
    log.error("host function %r raised in %s", exc.name, export, exc_info=exc.cause)
    return GuestTrap(export, f"{exc} (a bug in Vessel: please report it)")


def _describe_trap(exc: wasmtime.WasmtimeError, deadline_fired: bool) -> str:
    """A one-line reason an operator can act on, from wasmtime's multi-line trap text."""
    text = str(exc)
    if deadline_fired or "wasm trap: interrupt" in text:
        return "deadline exceeded (limits.invocation_timeout_ms)"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    trap = next((line for line in lines if line.startswith("wasm trap:")), None)
    frames = [line for line in lines if " - " in line and "!" in line]
    if any("abort" in f for f in frames[:4]):
        # componentize-py aborts the instance on an uncaught Python exception or a failed
        # allocation (MemoryError); the guest's stderr (in the module log) has the details.
        return "guest aborted (uncaught exception or out of memory; see the module log)"
    if trap:
        return trap
    return lines[0] if lines else type(exc).__name__
