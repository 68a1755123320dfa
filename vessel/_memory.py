"""Giving freed memory back to the machine.

glibc's malloc keeps what a process frees inside its heaps, for the next allocation:
the heap's top is returned only past a threshold that grows with the largest block
freed so far, and free pages in the middle of a heap never are. A daemon that runs for
months under a steady load therefore keeps its high-water mark, plus the fragments its
allocation pattern leaves, and drifts upwards: the soak measured the daemon's private
memory growing a few MiB an hour while the bytes actually in use stayed flat
(docs/performance.md, "Home server"). ``malloc_trim(0)`` hands every whole free page
back (``MADV_DONTNEED`` on the pages inside a heap, not only its top), in all of
malloc's arenas. It costs a walk over the free lists (well under a millisecond for the
daemon's heap), so the daemon does it once a minute and after one-off heavy work (an
install), rather than paying a lower mmap threshold on every allocation.

On a C library without ``malloc_trim`` (musl, macOS) this does nothing: their
allocators return memory on their own terms, and nothing here is needed for
correctness.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable
from typing import Final

import trio

log = logging.getLogger(__name__)

#: How often the daemon gives its free pages back.
TRIM_INTERVAL: Final = 60.0


def _find_malloc_trim() -> Callable[[int], int] | None:
    # The process's own symbols, the C library's among them: no library search (ctypes'
    # find_library runs ldconfig in a subprocess, not something to do at import).
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_malloc_trim: Final = _find_malloc_trim()


def trim() -> bool:
    """Return the free pages of every malloc arena to the kernel; True if any was."""
    if _malloc_trim is None:
        return False
    return bool(_malloc_trim(0))


async def keep_trimmed(interval: float = TRIM_INTERVAL) -> None:
    """Trim every ``interval`` seconds, for as long as the caller's nursery runs."""
    if _malloc_trim is None:
        log.debug("no malloc_trim in this C library: freed memory is left to it")
        return
    while True:
        await trio.sleep(interval)
        trim()
