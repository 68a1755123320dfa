"""Running the real ``vessel serve`` and ``vessel-ctl`` as subprocesses, for CLI tests.

``start_daemon`` starts ``vessel serve`` on 127.0.0.1 port 0 with a data dir, waits for
its "vessel running on http://..." log line and keeps draining its stderr in a task of
the test's nursery (a full pipe would block the daemon). ``stop_daemon`` sends SIGTERM
and waits, bounded. ``ctl`` runs one ``vessel-ctl`` command to completion; ``spawn_ctl``
starts a long-running one (``events``, ``logs -f``) whose output is read line by line.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import trio

CTL = [sys.executable, "-m", "vessel.cli.ctl"]
SERVE = [sys.executable, "-m", "vessel.cli.serve", "serve"]

RUNNING = re.compile(r"vessel running on (http://[0-9.]+:\d+)")
#: What ``vessel serve`` logs once every module has started (or failed to).
MODULES_STARTED = "modules started: "

#: Bounds of the waits, generous for a loaded CI machine.
START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0
CTL_TIMEOUT = 30.0


class LineReader:
    """Lines of a process's output stream, read as they come; every line is kept."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buffer = b""
        self.lines: list[str] = []
        self.eof = False

    async def readline(self) -> str | None:
        """The next line (without its newline), or None at the end of the stream."""
        while b"\n" not in self._buffer:
            chunk = await self._stream.receive_some(65536)
            if not chunk:
                self.eof = True
                if not self._buffer:
                    return None
                line, self._buffer = self._buffer, b""
                return self._keep(line)
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return self._keep(line)

    def _keep(self, raw: bytes) -> str:
        line = raw.decode(errors="replace")
        self.lines.append(line)
        return line

    async def wait_for(self, predicate: Callable[[str], bool], *, timeout: float = 15.0) -> str:
        """The first new line that satisfies ``predicate`` (bounded)."""
        with trio.fail_after(timeout):
            while True:
                line = await self.readline()
                if line is None:
                    raise AssertionError(
                        "stream ended before the expected line; it said:\n  "
                        + "\n  ".join(self.lines[-30:])
                    )
                if predicate(line):
                    return line

    async def drain(self) -> None:
        while await self.readline() is not None:
            pass

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@dataclass
class Daemon:
    process: trio.Process
    url: str
    data_dir: Path
    stderr: LineReader
    env: dict[str, str] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.process.pid


def base_env(**extra: str) -> dict[str, str]:
    """The test's environment without Vessel settings that could leak in, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VESSEL_")}
    env.update(extra)
    return env


async def spawn_serve(
    data_dir: Path, args: Sequence[str] = (), **env: str
) -> tuple[trio.Process, LineReader]:
    """``vessel serve --data-dir data_dir --port 0 --no-bundled [args]`` just started (not
    waited for), logging at INFO plus ``env``, with a reader of its stderr; the caller
    ends it (``stop_daemon_process``)."""
    process = await trio.lowlevel.open_process(
        [*SERVE, "--data-dir", str(data_dir), "--port", "0", "--no-bundled", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=base_env(VESSEL_LOG_LEVEL="INFO", **env),
    )
    assert process.stderr is not None
    return process, LineReader(process.stderr)


async def start_daemon(nursery: trio.Nursery, data_dir: Path, args: Sequence[str] = ()) -> Daemon:
    """``vessel serve --data-dir data_dir --port 0 --no-bundled [args]``, up and listening."""
    process, stderr = await spawn_serve(data_dir, args)
    try:
        line = await stderr.wait_for(lambda s: RUNNING.search(s) is not None, timeout=START_TIMEOUT)
        # The gateway answers at once; the modules start (and compile) after it.
        await stderr.wait_for(lambda s: MODULES_STARTED in s, timeout=START_TIMEOUT)
    except BaseException:
        with trio.CancelScope(shield=True):
            await stop_daemon_process(process)
        raise
    match = RUNNING.search(line)
    assert match is not None
    url = match.group(1)
    nursery.start_soon(stderr.drain)
    ctl_env = base_env(VESSEL_URL=url, VESSEL_DATA_DIR=str(data_dir))
    return Daemon(process=process, url=url, data_dir=data_dir, stderr=stderr, env=ctl_env)


async def stop_daemon_process(process: trio.Process) -> int:
    """SIGTERM, then wait (bounded); SIGKILL only if that fails (the test fails then)."""
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
    try:
        with trio.fail_after(STOP_TIMEOUT):
            return await process.wait()
    except trio.TooSlowError:
        process.kill()
        with trio.fail_after(5):
            await process.wait()
        raise AssertionError(f"vessel serve ignored SIGTERM for {STOP_TIMEOUT:g} s") from None


async def stop_daemon(daemon: Daemon) -> int:
    code = await stop_daemon_process(daemon.process)
    assert "Traceback" not in daemon.stderr.text, daemon.stderr.text
    return code


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return f"exit {self.returncode}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


async def ctl(
    *args: str,
    env: dict[str, str] | None = None,
    stdin: bytes = b"",
    timeout: float = CTL_TIMEOUT,
) -> Result:
    """Run ``vessel-ctl args`` to completion (bounded) and capture its output."""
    with trio.fail_after(timeout):
        done = await trio.run_process(
            [*CTL, *args],
            stdin=stdin,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=env if env is not None else base_env(),
        )
    return Result(done.returncode, done.stdout.decode(), done.stderr.decode())


@dataclass
class Spawned:
    """A running ``vessel-ctl`` (``events``, ``logs -f``) and its two output streams."""

    process: trio.Process
    stdout: LineReader
    stderr: LineReader

    async def interrupt(self) -> int:
        """Ctrl-C (SIGINT), then wait for it to exit (bounded); returns its exit status."""
        self.process.send_signal(signal.SIGINT)
        with trio.fail_after(10):
            await self.stdout.drain()
            await self.stderr.drain()
            return await self.process.wait()


# `vessel-ctl` as started from an interactive shell, where Ctrl-C reaches it: a
# process inherits an ignored SIGINT (the suite run as a script's background job), and
# Python then leaves it ignored, so `interrupt` would do nothing.
_AS_TYPED = (
    "import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "runpy.run_module('vessel.cli.ctl', run_name='__main__', alter_sys=True)"
)


async def spawn_ctl(*args: str, env: dict[str, str]) -> Spawned:
    process = await trio.lowlevel.open_process(
        [sys.executable, "-c", _AS_TYPED, *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert process.stdout is not None
    assert process.stderr is not None
    return Spawned(process, LineReader(process.stdout), LineReader(process.stderr))
