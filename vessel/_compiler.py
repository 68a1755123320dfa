"""Compiling modules out of the way: in short-lived processes, a few at a time, at a low
priority, and never in the daemon's heap.

Cranelift takes ~15 s of CPU to compile a componentize-py guest here (several times that
on a Raspberry Pi) and leaves ~300 MiB of heap behind in the process that did it, which
a long-lived process never gives back. So the daemon never compiles, and neither does a
module process: a module whose compiled code is missing or stale (a new install, a
folder dropped into the data dir, a Vessel or wasmtime upgrade) is compiled by ``python
-m vessel.host._compile``, which writes the artifact atomically and exits, before the
module's process is started. The module is ``compiling`` meanwhile, a state of its own:
its start timeout covers loading, instantiating and ``on-load`` only, and a component
that cannot be compiled refuses the module once, with the reason, instead of crashing
it in a loop.

At most ``jobs`` compiles run at once (``vessel serve --compile-jobs``; by default one
fewer than the CPUs, at least one), so the daemon and the modules already running keep
a CPU; each runs at ``nice`` 5 and ``SCHED_BATCH``. The log says what is compiled, in
which order, and how long it has taken (``compiling example (1/3)…``, every
``PROGRESS_EVERY`` seconds ``still compiling example (1/3)… 20 s``).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import trio

from ._errors import ArtifactNotStored, ComponentError, VesselError
from .host._compile import EXIT_NOT_STORED, EXIT_REFUSED

log = logging.getLogger("vessel.compile")

#: Seconds between two "still compiling" lines of one compile.
PROGRESS_EVERY = 10.0


def default_jobs() -> int:
    """One fewer than the CPUs this process may use, at least one."""
    return max(1, len(os.sched_getaffinity(0)) - 1)


@dataclass
class CompileJob:
    """One module's compile, queued or under way."""

    module_id: str
    #: When it was asked for, and when its process started (None: still queued); trio time.
    queued_at: float
    started_at: float | None = None


def _argv(module_id: str, module_dir: Path, source_hash: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "vessel.host._compile",
        str(module_dir),
        "--source-hash",
        source_hash,
        "--module-id",
        module_id,
        "--watch-stdin",
    ]


def _outcome(module_id: str, returncode: int, stderr: bytes) -> None:
    """Raise what a finished compile process's exit says, if it failed."""
    if returncode == 0:
        return
    lines = stderr.decode(errors="replace").strip().splitlines()
    reason = lines[-1] if lines else ""
    if returncode == EXIT_REFUSED:
        raise ComponentError(reason or f"module {module_id!r} cannot be compiled")
    if returncode == EXIT_NOT_STORED:
        raise ArtifactNotStored(reason or f"module {module_id!r}: its compiled code not stored")
    how = f"killed by signal {-returncode}" if returncode < 0 else f"exit status {returncode}"
    raise VesselError(
        f"module {module_id!r}: compiling failed ({how})" + (f": {reason}" if reason else "")
    )


#: The most of a compile process's stderr kept (its last line is the reason).
_STDERR_KEPT = 64 * 1024


def compile_blocking(module_id: str, module_dir: Path, source_hash: str) -> None:
    """Compile in a child process and wait for it, from a thread that may block (an
    installer outside the daemon, a worker thread). Raises as :meth:`Compiler.compile`."""
    with subprocess.Popen(
        _argv(module_id, module_dir, source_hash),
        stdin=subprocess.PIPE,  # held open until it exits: its end is ours going away
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    ) as process:
        assert process.stderr is not None
        stderr = process.stderr.read()[-_STDERR_KEPT:]
        returncode = process.wait()
    _outcome(module_id, returncode, stderr)


class Compiler:
    """Runs the daemon's compiles, ``jobs`` at a time."""

    def __init__(self, jobs: int | None = None) -> None:
        if jobs is not None and jobs < 1:
            raise ValueError(f"compile jobs must be at least 1 (got {jobs})")
        self.jobs = jobs if jobs is not None else default_jobs()
        self._limiter = trio.CapacityLimiter(self.jobs)
        self._queue: list[CompileJob] = []
        #: Compiles asked for since the queue was last empty (the N of "(k/N)").
        self._batch = 0

    def job(self, module_id: str) -> CompileJob | None:
        """The compile of ``module_id`` queued or under way, if any."""
        return next((j for j in self._queue if j.module_id == module_id), None)

    async def compile(self, module_id: str, module_dir: Path, source_hash: str) -> None:
        """Compile the module in ``module_dir`` and return once its artifact is written.

        Raises ComponentError when the component cannot be used (not a component of our
        world, out of memory: the module is refused), ArtifactNotStored when it compiled
        but its artifact could not be written (a full disk), VesselError when the
        machine failed (a killed process). Cancelling kills the compile process.
        """
        if not self._queue:
            self._batch = 0
        self._batch += 1
        number = self._batch
        job = CompileJob(module_id, trio.current_time())
        self._queue.append(job)
        try:
            async with self._limiter:
                job.started_at = trio.current_time()
                log.info("compiling %s (%d/%d)…", module_id, number, self._batch)
                returncode, stderr = await self._run(job, number, module_dir, source_hash)
        finally:
            self._queue.remove(job)
        _outcome(module_id, returncode, stderr)
        log.info("compiled %s in %.1f s", module_id, trio.current_time() - job.started_at)

    async def _run(
        self, job: CompileJob, number: int, module_dir: Path, source_hash: str
    ) -> tuple[int, bytes]:
        """Run one compile process to its end (killed if cancelled): exit status, stderr."""
        process = await trio.lowlevel.open_process(
            _argv(job.module_id, module_dir, source_hash),
            # Held open until it exits: its end is the daemon going away.
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        stderr = bytearray()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._progress, job, number)
                assert process.stderr is not None
                async for chunk in process.stderr:
                    stderr += chunk
                    del stderr[:-_STDERR_KEPT]
                returncode = await process.wait()
                nursery.cancel_scope.cancel()
        finally:
            if process.returncode is None:
                process.kill()  # ours, by PID: cancelled, or the read failed
                with trio.CancelScope(shield=True):
                    await process.wait()
            assert process.stdin is not None
            with trio.CancelScope(shield=True):
                await process.stdin.aclose()
        return returncode, bytes(stderr)

    async def _progress(self, job: CompileJob, number: int) -> None:
        assert job.started_at is not None
        while True:
            await trio.sleep(PROGRESS_EVERY)
            log.info(
                "still compiling %s (%d/%d)… %.0f s",
                job.module_id, number, self._batch, trio.current_time() - job.started_at,
            )  # fmt: skip
