"""Guest work gives way to other tasks every ``SLICE``: a runaway guest cannot keep a
woken task waiting for the kernel's next tick.

Once an invocation has run a slice and used a slice of CPU meanwhile, the watchdog
advances the engine's epoch every ``SLICE`` seconds. wasmtime then calls the store's
epoch-deadline callback on the guest's own thread, at the next loop header or function
entry, and the callback yields the CPU (``sched_yield``) before letting the guest go on.
A yield costs nothing when no other task waits for that CPU; when one does (a healthy
module, the daemon, a client woken there), it runs now instead of after the guest's time
slice, which the kernel only ends at a tick (4 ms at HZ=250). The same callback turns the
invocation's deadline into a trap, as epoch interruption does without a callback.

Yielding begins long before the work counts as long (``_confine``: 2 ms in) and is
confined: those first milliseconds, while nothing keeps the healthy modules off the
runaway's CPU yet, are when they wait behind it (docs/performance.md, Isolation). An
ordinary command is over long before its first slice (and one that was only waiting for
a CPU has used none to give up).

Long work busy with the host (``_confine.HOST_BUSY_CALLS``: a burst of emits) stops
yielding once the watchdog has found it busy with the host: it is the daemon's own work,
and yielding slowed a burst of 5,000 emits from 400 to 490 ms (median of 10; the
watchdog's wake-ups every slice compete for the GIL with the host calls). A burst the
rate limit refuses yields again from its first refused emit (``Watchdog.refused``): a
flood gives the daemon no work.

Measured on 2 cores (bench/, the isolation figure, 7 runs each taking turns with the
code before): with the measuring client left to the kernel, a healthy module's noisy p99
went from 2.5-3.9x its quiet p99 (median 3.0x) to 1.8-2.8x (median 2.0x); with the client
kept off the quarantine CPU it did not move beyond the noise (1.8-2.2x, against 1.7-2.7x
before). The price is paid by the runaway alone: its watchdog wakes every slice while it
runs. Yielding from the first slice instead of from 2 ms in (bench.timeline, 3 runs each
taking turns): calls of a healthy module that start in a spin's first 4 ms were slower
than 2 ms in 16-24 % of cases instead of 36-50 %, and beside a trap (whose replacement
instance is long work) in 7-17 % instead of 29-38 %; the isolation figure, whose p99 has
few of those calls, did not move beyond its noise.

wasmtime-py has no wrapper for ``wasmtime_store_epoch_deadline_callback``; it is called
through the bindings that wasmtime-py generates for the C API (``wasmtime._ffi``).
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable

import wasmtime
from wasmtime import _ffi as ffi

#: How often guest work yields the CPU, from its first slice on. The wait a runaway
#: neighbour can add to a healthy call is about this, instead of a scheduler tick.
SLICE = 0.0005

_CONTINUE = 0  # WASMTIME_UPDATE_DEADLINE_CONTINUE
_TRAP_MESSAGE = b"deadline exceeded"

_Callback = ctypes.CFUNCTYPE(
    ctypes.c_size_t,  # wasmtime_error_t*: NULL to continue
    ctypes.POINTER(ffi.wasmtime_context_t),
    ctypes.c_void_p,
    ctypes.POINTER(ctypes.c_uint64),
    ctypes.POINTER(ffi.wasmtime_update_deadline_kind_t),
)
_Finalizer = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
_NO_FINALIZER = ctypes.cast(0, _Finalizer)


class EpochCallback:
    """The epoch-deadline callback of a module process's stores.

    ``expired`` says whether the invocation's deadline has passed (then the guest traps);
    otherwise the tick was a slice's end, and the guest yields and goes on. Keep this
    object alive as long as any store it is installed on.
    """

    def __init__(self, expired: Callable[[], bool]) -> None:
        self._expired = expired
        #: How many times a guest gave way so far.
        self.yields = 0
        self._callback = _Callback(self._on_epoch)

    def install(self, store: wasmtime.Store) -> None:
        ffi.wasmtime_store_epoch_deadline_callback(store.ptr(), self._callback, None, _NO_FINALIZER)

    def _on_epoch(self, _context: object, _data: object, delta: object, kind: object) -> int:
        # Runs on the guest's thread, between two wasm instructions: it must not raise
        # (ctypes would print the exception and return NULL, i.e. continue).
        if self._expired():
            error = ffi.wasmtime_error_new(_TRAP_MESSAGE)
            return ctypes.cast(error, ctypes.c_void_p).value or 0
        self.yields += 1
        os.sched_yield()
        delta[0] = 1  # type: ignore[index]
        kind[0] = _CONTINUE  # type: ignore[index]
        return 0
