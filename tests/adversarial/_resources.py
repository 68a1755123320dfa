"""What the daemon holds through a scenario, and a limit on what it may take.

``watch_daemon(row, pid)`` watches the daemon's memory and open files for its block: the
daemon is this process for the scenarios that run it in the pytest worker
(``running_daemon``, ``running_gateway``; ``watch_healthy`` watches it for them), or the
pid of a ``vessel serve`` subprocess. At the start it reads both and resets the kernel's
peak-RSS mark (``/proc/PID/clear_refs``, 5), so the peak is the kernel's, not sampled; a
task samples the open files and the private writable memory meanwhile. Once the attack
is over it waits (bounded) for the open files to come back down, writes start, peak and
after into the row, and asserts the bounds below. Where the daemon is the pytest worker,
its figures include the test's own (clients, fuzzers, what the test keeps).

``memory_limited(row, daemon)`` gives an in-process daemon ``MEMORY_ROOM`` more private
writable memory than it has (RLIMIT_DATA: heap, anonymous mappings, thread stacks) for
its block; ``limit_memory(pid)`` does the same to a ``vessel serve`` (``prlimit --pid``).
An allocation beyond it fails, so a module that could grow the daemon that much makes it
die or log a MemoryError, as the OOM killer would on a machine with that much to spare.
Module processes are forked by the fork server, which the daemon starts before it runs
anything (and so before the limit): they keep their own limits, which matters, as each
needs as much memory as its own ``memory_mb`` and wasmtime reserves GiBs of address space
per instance. RLIMIT_DATA rather than RLIMIT_AS because address space the daemon only
reserves (a malloc arena: 64 MiB per thread that mallocs, mostly never written) is no
memory; rather than a cgroup's memory.max, because moving a process between cgroups
takes root and a cgroup the test's runner does not own, and what a cgroup counts
includes the page cache of the files the daemon writes (docs/security.md, "The
adversarial suite").
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import trio

from vessel._daemon import Daemon

from ._figures import Row

MiB = 2**20
#: How often the open files are sampled during the block (reading /proc/PID/fd is a few
#: microseconds a file; no event says a file was opened).
SAMPLE_EVERY = 0.05
#: How long the open files may take to come back down after the attack: a connection the
#: test closed is closed on the daemon's side once it reads the end of the stream, an idle
#: one by the gateway's keep-alive timer (15 s), a dead module's pipes once it is reaped.
FDS_SETTLE = 30.0
#: What the daemon's peak resident memory may grow by during any attack. The bugs the
#: suite found took it up by 600 MiB to 2 GB (security.md, 11, 13, 18); what is seen now
#: is tens of MiB at most (the table), the test's own included where the daemon is the
#: pytest worker.
PEAK_BOUND = 256 * MiB
#: What it may still hold above its start once the attack is over. Freed memory is not
#: all given back (pymalloc keeps an arena while one object in it lives, glibc keeps its
#: heap below the top), so not zero; a leak of the size the issue is about (a retained
#: state that stays at 1 GB) is far above it.
AFTER_BOUND = 128 * MiB
#: The room a memory-limited daemon has above its private writable memory at the limit's
#: start: far above what any attack takes now (a few MiB: the table's "data" column) or a
#: thread stack (8 MiB), far below what the bugs took, and what a small home server
#: could spare.
MEMORY_ROOM = 256 * MiB


def _status(pid: int) -> dict[str, int]:
    """The memory lines of /proc/PID/status, in bytes."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if value.strip().endswith(" kB"):
            found[name] = int(value.split()[0]) * 1024
    return found


def _open_files(pid: int) -> dict[int, str]:
    """The process's open files: descriptor -> what it is (a path, ``socket:[...]``)."""
    files = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        # (One may be closed since the listing: the listing's own, in this process.)
        with contextlib.suppress(FileNotFoundError):
            files[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
    return files


@dataclass
class Usage:
    """The daemon's memory and open files through one watched block, in bytes and files."""

    pid: int
    rss_start: int
    data_start: int
    files_start: dict[int, str]
    fds_peak: int
    #: The most private writable memory seen (VmData, what RLIMIT_DATA limits), sampled.
    data_peak: int
    rss_peak: int = 0
    rss_after: int = 0
    files_after: dict[int, str] = field(default_factory=dict)

    @property
    def fds_after(self) -> int:
        return len(self.files_after) - len(self.files_start)

    def sample(self) -> None:
        self.fds_peak = max(self.fds_peak, len(_open_files(self.pid)))
        self.data_peak = max(self.data_peak, _status(self.pid)["VmData"])

    def new_files(self) -> list[str]:
        """What the daemon has open now that it did not at the start (for a failure)."""
        return sorted(
            what for fd, what in self.files_after.items() if self.files_start.get(fd) != what
        )


def _mib(n: int) -> float:
    return round(n / MiB, 1)


@asynccontextmanager
async def watch_daemon(row: Row, pid: int | None = None) -> AsyncIterator[Usage]:
    """Watch the daemon's (``pid``, or this process's) memory and open files for the
    block; then write them into ``row`` and assert that its peak memory grew by less than
    PEAK_BOUND, that less than AFTER_BOUND of it stayed, and that its open files came
    back down to at most what it had at the start (module docstring)."""
    pid = os.getpid() if pid is None else pid
    # The peak from here on: the kernel's own mark, reset to what is resident now.
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    files = _open_files(pid)
    status = _status(pid)
    usage = Usage(pid, status["VmRSS"], status["VmData"], files, len(files), status["VmData"])

    async def sampler() -> None:
        while True:
            try:
                usage.sample()
            except OSError:
                return  # the daemon is gone: the block fails, and says why
            await trio.sleep(SAMPLE_EVERY)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sampler)
        yield usage
        nursery.cancel_scope.cancel()
    # (Only once the block succeeded: a failed one's daemon may be gone, and its error
    # is the one to see.)
    usage.sample()
    usage.rss_peak = _status(pid)["VmHWM"]
    usage.files_after = _open_files(pid)
    with trio.move_on_after(FDS_SETTLE):
        # Nothing announces a close in another process, or in a task of the daemon's:
        # look again until they are back down.
        while usage.fds_after > 0:
            await trio.sleep(SAMPLE_EVERY)
            usage.files_after = _open_files(pid)
    usage.rss_after = _status(pid)["VmRSS"]
    row.rss_start = _mib(usage.rss_start)
    row.rss_peak = _mib(usage.rss_peak - usage.rss_start)
    row.rss_after = _mib(usage.rss_after - usage.rss_start)
    row.data_peak = _mib(usage.data_peak - usage.data_start)
    row.fds_peak = usage.fds_peak - len(usage.files_start)
    row.fds_after = usage.fds_after
    assert usage.rss_peak - usage.rss_start < PEAK_BOUND, f"peak grew {row.rss_peak} MiB"
    assert usage.rss_after - usage.rss_start < AFTER_BOUND, f"kept {row.rss_after} MiB"
    assert usage.fds_after <= 0, (
        f"{usage.fds_after} more open files than at the start, {FDS_SETTLE:g} s after",
        usage.new_files(),
    )


class _MemoryRefused(logging.Handler):
    """Every log record of the daemon's that says an allocation was refused (MemoryError,
    ENOMEM, a thread that could not start): what a daemon at its limit would say if it
    carried on. A module's own lines (``vessel.module.<id>``) are the guest's text, and
    a guest that runs out of its own memory says MemoryError too: only an exception the
    daemon logs with them counts."""

    SIGNS = ("MemoryError", "Cannot allocate memory", "can't start new thread")

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        text = "" if record.name.startswith("vessel.module.") else record.getMessage()
        if exc is not None:
            text += f" {type(exc).__name__}: {exc}"
        if any(sign in text for sign in self.SIGNS):
            self.seen.append(f"{record.name}: {text[:500]}")


def data_limit(pid: int) -> int:
    """The process's soft RLIMIT_DATA (``resource.RLIM_INFINITY``: none)."""
    return resource.prlimit(pid, resource.RLIMIT_DATA)[0]


def limit_memory(pid: int, room: int = MEMORY_ROOM) -> tuple[int, int]:
    """Lower the soft RLIMIT_DATA of ``pid`` to its private writable memory now plus
    ``room`` (``prlimit --pid PID --data=...``); the limits it had before. The hard
    limit stays, so the soft one can be restored."""
    before = resource.prlimit(pid, resource.RLIMIT_DATA)
    limit = _status(pid)["VmData"] + room
    resource.prlimit(pid, resource.RLIMIT_DATA, (limit, before[1]))
    return before


def module_limits(pids: dict[str, int]) -> dict[str, int]:
    """The soft RLIMIT_DATA of each process still running, by name."""
    found = {}
    for name, pid in pids.items():
        # (One may have ended since: a module that crashed.)
        with contextlib.suppress(ProcessLookupError):
            found[name] = data_limit(pid)
    return found


@contextmanager
def memory_limited(row: Row, daemon: Daemon, room: int = MEMORY_ROOM) -> Iterator[None]:
    """This process, running ``daemon``, limited to ``room`` more private writable memory
    for the block (module docstring); restored after. With no fork server (``vessel serve
    --no-forkserver``, ``VESSEL_FORKSERVER=0``) module processes would be started by the
    daemon and inherit the limit: the block then runs unlimited, and the row says so."""
    forkserver = daemon.forkserver.pid if daemon.forkserver is not None else None
    if forkserver is None:
        yield
        return
    pid = os.getpid()
    refused = _MemoryRefused()
    root = logging.getLogger()
    before = limit_memory(pid, room)
    row.mem_limit = room // MiB
    root.addHandler(refused)
    try:
        yield
        # Every process the daemon runs modules in keeps the limits it had.
        processes = {"fork server": forkserver, **daemon.manager.processes()}
        limited = {n: v for n, v in module_limits(processes).items() if v != before[0]}
        assert not limited, f"module processes under the daemon's memory limit: {limited}"
    finally:
        root.removeHandler(refused)
        resource.prlimit(pid, resource.RLIMIT_DATA, before)
    assert not refused.seen, f"the daemon ran out of memory: {refused.seen[:5]}"
