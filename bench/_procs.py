"""The processes a benchmark run starts: ``vessel serve``, floor servers, clients.

Each is started here and ended here, by PID (SIGTERM, then SIGKILL after a bound), so a
run never leaves anything behind and never touches a process it did not start.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

PYTHON = sys.executable
ROOT = Path(__file__).resolve().parents[1]
_STARTED = re.compile(r"module (\S+) (?:started|restarted) \(pid (\d+)\)")
_STARTING = re.compile(r"starting \d+ module\(s\)")
_RUNNING = re.compile(r"vessel running on (http://\S+?): ")


class BenchError(Exception):
    """A benchmark could not run (a process failed or an answer was wrong)."""


async def _end(process: trio.Process, timeout: float = 10.0) -> None:
    """SIGTERM ``process`` (ours, by PID), SIGKILL if it is still there after ``timeout``."""
    with trio.CancelScope(shield=True):
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            with trio.move_on_after(timeout):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()


async def _lines(stream: trio.abc.ReceiveStream) -> AsyncIterator[str]:
    buffer = b""
    while True:
        chunk = await stream.receive_some(65536)
        if not chunk:
            if buffer:
                yield buffer.decode(errors="replace")
            return
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        for line in complete:
            yield line.decode(errors="replace")


@dataclass
class LineCounter:
    """Counts every line of a daemon's log that ``predicate`` accepts (``Vessel.log``
    keeps only the last 200 lines), and keeps the last one; give it to ``vessel_serve``
    to count from the daemon's first line."""

    predicate: Callable[[str], bool]
    count: int = 0
    last: str = ""

    def see(self, line: str) -> None:
        if self.predicate(line):
            self.count += 1
            self.last = line


@dataclass
class Vessel:
    """A running ``vessel serve``: its URL, token, PID, and when each module started."""

    process: trio.Process
    data_dir: Path
    spawned_at: float
    #: When the daemon logged that it starts its modules (its own boot is over).
    starting_modules_at: float | None = None
    url: str = ""
    token: str = ""
    started: dict[str, float] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)
    counters: Sequence[LineCounter] = ()
    _changed: trio.Event = field(default_factory=trio.Event)

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/ws"

    async def wait_started(self, count: int, timeout: float = 120.0) -> float:
        """Wait until ``count`` modules have started; return the time the last one did."""
        with trio.fail_after(timeout):
            while len(self.started) < count:
                await self._changed.wait()
        return max(self.started.values())

    def _seen(self, line: str) -> None:
        self.log.append(line)
        del self.log[:-200]
        for counter in self.counters:
            counter.see(line)
        if self.starting_modules_at is None and _STARTING.search(line):
            self.starting_modules_at = time.monotonic()
        match = _STARTED.search(line)
        if match:
            self.started[match.group(1)] = time.monotonic()
            self.pids[match.group(1)] = int(match.group(2))
            self._changed.set()
            self._changed = trio.Event()


def pinned(cpus: Collection[int] | None) -> Callable[[], None] | None:
    """A ``preexec_fn`` that keeps a child (and whatever it starts) on ``cpus``, set
    between its fork and its exec, so no thread or child of it ever runs elsewhere."""
    if cpus is None:
        return None
    allowed = set(cpus)

    def pin() -> None:
        os.sched_setaffinity(0, allowed)

    return pin


@asynccontextmanager
async def vessel_serve(
    data_dir: Path,
    *,
    env: dict[str, str] | None = None,
    counters: Sequence[LineCounter] = (),
    cpus: Collection[int] | None = None,
) -> AsyncIterator[Vessel]:
    """``vessel serve --data-dir data_dir --port 0 --no-bundled``, listening; each of
    ``counters`` sees every line of its log. ``cpus``: the daemon runs on those CPUs
    only, from its exec on, and so does every process it starts (they inherit it)."""
    argv = [PYTHON, "-m", "vessel.cli.serve", "serve", "--data-dir", str(data_dir), "--port", "0"]
    argv.append("--no-bundled")
    # bench_echo asks max_event_rate 100000 (fan-out at full speed), far above what a home
    # server lets a module ask by default (vessel/_ceilings.py).
    argv += ["--limit-ceiling", "max_event_rate=100000"]
    spawned_at = time.monotonic()
    process = await trio.lowlevel.open_process(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})},
        preexec_fn=pinned(cpus),
    )
    vessel = Vessel(process=process, data_dir=data_dir, spawned_at=spawned_at, counters=counters)
    listening = trio.Event()

    async def read_log() -> None:
        assert process.stderr is not None
        async for line in _lines(process.stderr):
            vessel._seen(line)
            match = _RUNNING.search(line)
            if match:
                vessel.url = match.group(1)
                listening.set()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_log)
            with trio.move_on_after(120) as waited:
                while not listening.is_set() and process.returncode is None:
                    with trio.move_on_after(0.5):
                        await listening.wait()
                    if process.poll() is not None:
                        break
            if not listening.is_set():
                reason = "did not start in 120 s" if waited.cancelled_caught else "exited"
                raise BenchError(f"vessel serve {reason}:\n" + "\n".join(vessel.log[-20:]))
            vessel.token = (data_dir / "token").read_text().strip()
            try:
                yield vessel
            except BaseException:
                # What the daemon said last is what explains a failed step.
                print("vessel serve's last log lines:", *vessel.log[-30:], sep="\n  ")
                raise
            finally:
                await _end(process)
                nursery.cancel_scope.cancel()
    finally:
        await _end(process)


@asynccontextmanager
async def floor_server(guest: Path | None = None) -> AsyncIterator[str]:
    """The bare Quart-Trio floor server (bench/_floor.py); yields its http URL. With
    ``guest`` (a module dir) it also serves ``/guest``, the guest called in-process."""
    process = await trio.lowlevel.open_process(
        [PYTHON, "-m", "bench._floor", *(["--guest", str(guest)] if guest else [])],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
    )
    try:
        assert process.stdout is not None
        url = ""
        with trio.fail_after(60):
            async for line in _lines(process.stdout):
                if line.startswith("listening "):
                    url = line.split()[1]
                    break
        if not url:
            raise BenchError("the floor server did not start")
        yield url
    finally:
        await _end(process)


async def run_json(argv: list[str], timeout: float = 300.0) -> dict[str, Any]:
    """Run a helper process to completion; return the JSON of its last stdout line."""
    with trio.fail_after(timeout):
        result = await trio.run_process(
            argv, capture_stdout=True, capture_stderr=True, check=False, cwd=ROOT
        )
    if result.returncode != 0:
        raise BenchError(f"{' '.join(argv[:4])} failed:\n{result.stderr.decode()[-2000:]}")
    last: dict[str, Any] = json.loads(result.stdout.decode().strip().splitlines()[-1])
    return last


async def client(spec: dict[str, Any], timeout: float = 300.0) -> dict[str, Any]:
    """One client process (bench/_client.py) running ``spec``."""
    return await run_json([PYTHON, "-m", "bench._client", json.dumps(spec)], timeout)


async def gated_client(
    spec: dict[str, Any], when_warm: Callable[[], Awaitable[None]], timeout: float = 300.0
) -> dict[str, Any]:
    """One ``rtt`` client process that measures only once ``when_warm()`` has returned
    (it runs after the client's warm-up, so whatever it starts is there from the first
    measured call, not spent during the client's own start-up)."""

    async def gate(stdin: trio.abc.SendStream) -> None:
        await when_warm()
        await stdin.send_all(b"go\n")

    return await _gated({**spec, "gate": True}, gate, timeout)


async def stamped_client(
    spec: dict[str, Any], drive: Callable[[], Awaitable[None]], timeout: float = 600.0
) -> dict[str, Any]:
    """One ``stamped`` client process calling while ``drive()`` runs, from the end of
    the client's warm-up to ``drive``'s return: ``{"calls": [[started_at, seconds]...]}``."""

    async def gate(stdin: trio.abc.SendStream) -> None:
        await stdin.send_all(b"go\n")
        await drive()
        await stdin.send_all(b"stop\n")

    return await _gated({**spec, "mode": "stamped"}, gate, timeout)


async def _gated(
    spec: dict[str, Any],
    gate: Callable[[trio.abc.SendStream], Awaitable[None]],
    timeout: float,
) -> dict[str, Any]:
    """A client process whose ``warm`` line runs ``gate`` (given the client's stdin)."""
    process = await trio.lowlevel.open_process(
        [PYTHON, "-m", "bench._client", json.dumps(spec)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    result: dict[str, Any] | None = None
    try:
        assert process.stdin is not None
        assert process.stdout is not None
        assert process.stderr is not None
        with trio.fail_after(timeout):
            async for line in _lines(process.stdout):
                if line == "warm":
                    await gate(process.stdin)
                elif line.startswith("{"):
                    result = json.loads(line)
            if await process.wait() != 0 or result is None:
                err = await process.stderr.receive_some(65536)
                raise BenchError(f"client failed: {err.decode()[-2000:]}")
    finally:
        await _end(process)
    return result


async def load_clients(
    specs: list[dict[str, Any]], when_warm: Callable[[], None], timeout: float = 600.0
) -> list[dict[str, Any]]:
    """One ``load`` client process per spec, all started together once every one is
    warm, just after ``when_warm()``; returns their results."""
    results: list[dict[str, Any]] = []
    warm = 0
    all_warm = trio.Event()

    async def gate(stdin: trio.abc.SendStream) -> None:
        nonlocal warm
        warm += 1
        if warm == len(specs):
            when_warm()
            all_warm.set()
        await all_warm.wait()
        await stdin.send_all(b"go\n")

    async def one(spec: dict[str, Any]) -> None:
        results.append(await _gated(spec, gate, timeout))

    async with trio.open_nursery() as nursery:
        for spec in specs:
            nursery.start_soon(one, spec)
    return results


async def fanout_clients(
    specs: list[dict[str, Any]], trigger: Callable[[], Any], timeout: float = 300.0
) -> tuple[float, list[dict[str, Any]]]:
    """Start one client process per spec, wait until all are subscribed, note the time,
    run ``trigger()``, and collect every result. Returns (trigger time, results)."""
    results: list[dict[str, Any]] = []
    processes: list[trio.Process] = []
    ready = 0
    all_ready = trio.Event()

    async def one(spec: dict[str, Any]) -> None:
        nonlocal ready
        process = await trio.lowlevel.open_process(
            [PYTHON, "-m", "bench._client", json.dumps(spec)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
        )
        processes.append(process)
        assert process.stdout is not None
        assert process.stderr is not None
        async for line in _lines(process.stdout):
            if line == "ready":
                ready += 1
                if ready == len(specs):
                    all_ready.set()
            elif line.startswith("{"):
                results.append(json.loads(line))
        if await process.wait() != 0:
            err = await process.stderr.receive_some(65536)
            raise BenchError(f"fan-out client failed: {err.decode()[-2000:]}")

    started = 0.0
    try:
        with trio.fail_after(timeout):
            async with trio.open_nursery() as nursery:
                for spec in specs:
                    nursery.start_soon(one, spec)
                await all_ready.wait()
                started = time.monotonic()
                await trigger()
    finally:
        for process in processes:
            await _end(process)
    return started, results
