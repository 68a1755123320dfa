"""Looking at processes through /proc: one implementation for every test that checks
that no child outlives what started it.

A process is named by (pid, start time) so a recycled pid is never mistaken for it; a
zombie counts as gone (it has exited; only its parent's wait is missing).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

Proc = tuple[int, int]


def proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, start time) of ``pid``, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode(errors="replace")
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[19])


def children_of(pid: int) -> set[Proc]:
    """Live (not zombie) direct children of ``pid``."""
    found: set[Proc] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = proc_stat(int(entry))
        if stat is not None and stat[1] == pid and stat[0] not in ("Z", "X"):
            found.add((int(entry), stat[2]))
    return found


def descendants_of(pid: int) -> set[Proc]:
    """Live descendants of ``pid`` at any depth."""
    found: set[Proc] = set()
    todo = [pid]
    while todo:
        for child in children_of(todo.pop()):
            if child not in found:
                found.add(child)
                todo.append(child[0])
    return found


def alive(procs: Iterable[Proc]) -> list[int]:
    """Which of ``procs`` still run."""
    still = []
    for pid, start in procs:
        stat = proc_stat(pid)
        if stat is not None and stat[2] == start and stat[0] not in ("Z", "X"):
            still.append(pid)
    return still


def comm(pid: int) -> str:
    """The name ``ps``/``top`` show for ``pid`` (/proc/<pid>/comm; "" when it is gone)."""
    try:
        with open(f"/proc/{pid}/comm", "rb") as f:
            return f.read().decode(errors="replace").strip()
    except OSError:
        return ""


def cmdline(pid: int) -> str:
    """The command line of ``pid`` ("" when it is gone)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""
