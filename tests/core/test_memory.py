"""Freed memory goes back to the machine (vessel/_memory.py), in a process of its own."""

from __future__ import annotations

import json
import subprocess
import sys

_PROGRAM = """
import json
from vessel._memory import trim

def private_dirty():
    for line in open("/proc/self/smaps_rollup"):
        if line.startswith("Private_Dirty:"):
            return int(line.split()[1]) * 1024

# 64 MiB in 2 KiB blocks: each is malloc's (above CPython's small-object allocator),
# inside the heap (far below the mmap threshold).
blocks = [bytes(2048) for _ in range(32 * 1024)]
pin = bytes(2048)  # allocated last: the heap's top stays in use, so free() cannot shrink it
before = private_dirty()
del blocks
freed = private_dirty()
trimmed = trim()
after = private_dirty()
print(json.dumps({"before": before, "freed": freed, "after": after, "trimmed": trimmed}))
"""


def test_trim_gives_freed_heap_pages_back() -> None:
    """64 MiB freed in the middle of the heap stay resident until ``trim()``, which hands
    them back (the daemon trims once a minute and after each install)."""
    done = subprocess.run(
        [sys.executable, "-c", _PROGRAM], capture_output=True, text=True, timeout=60, check=True
    )
    seen = json.loads(done.stdout)
    mib = 1 << 20
    assert seen["trimmed"] is True
    # free() alone kept most of it: the pages are only marked free inside the heap.
    assert seen["freed"] > seen["before"] - 16 * mib, seen
    # trim() returned most of it.
    assert seen["after"] < seen["freed"] - 48 * mib, seen
