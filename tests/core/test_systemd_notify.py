"""systemd's notify protocol (vessel/_systemd.py) against real AF_UNIX datagram sockets.

The last test runs a real ``vessel serve`` with ``$NOTIFY_SOCKET`` and ``$WATCHDOG_USEC``
set, as systemd starts a ``Type=notify`` unit with ``WatchdogSec=``, and reads what it
says: READY=1 once the gateway answers, WATCHDOG=1 pings, STOPPING=1 on SIGTERM.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import socket
import time
from pathlib import Path

import httpx
import trio

from tests.cli._support import spawn_serve, stop_daemon_process
from tests.procs import cmdline, descendants_of
from vessel._systemd import Notifier, watchdog_interval

#: Bounds of the waits, generous for a loaded machine.
TIMEOUT = 60.0


def _datagram_socket(address: str) -> trio.socket.SocketType:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    return trio.socket.from_stdlib_socket(sock)


async def _receive(sock: trio.socket.SocketType) -> list[str]:
    """The lines of the next datagram."""
    data = await sock.recv(65536)
    return data.decode().split("\n")


def test_watchdog_interval_is_half_of_watchdog_usec_for_this_process() -> None:
    """Pings come at half the interval systemd gives, only when the watchdog is meant for
    this process (``$WATCHDOG_PID`` unset or ours), and not at all without a valid one."""
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}, 42) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "42"}, 42) == 1.0
    assert watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "7"}, 42) is None
    assert watchdog_interval({}, 42) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}, 42) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}, 42) is None


def test_from_environ_takes_the_variables_away_from_children() -> None:
    """The notify variables are read once and removed: a module or compile process the
    daemon starts afterwards cannot speak for it. ``@name`` is an abstract socket."""
    env = {"NOTIFY_SOCKET": "@vessel-test", "WATCHDOG_USEC": "4000000", "PATH": "/bin"}
    notifier = Notifier.from_environ(env, pid=1)
    assert notifier is not None
    assert notifier.address == "\0vessel-test"
    assert notifier.watchdog == 2.0
    assert env == {"PATH": "/bin"}
    notifier.close()
    assert Notifier.from_environ({"WATCHDOG_USEC": "4000000"}) is None
    assert Notifier.from_environ({"NOTIFY_SOCKET": "relative/path"}) is None


async def test_notifier_reaches_an_abstract_socket_and_survives_a_missing_one(
    tmp_path: Path,
) -> None:
    """A datagram reaches an abstract-namespace socket as one message of newline-separated
    lines; sending to a socket that is gone neither raises nor blocks."""
    name = f"vessel-test-{os.getpid()}-{time.monotonic_ns()}"
    with _datagram_socket("\0" + name) as sock:
        notifier = Notifier.from_environ({"NOTIFY_SOCKET": "@" + name})
        assert notifier is not None
        notifier.send("READY=1", "STATUS=two\nlines")
        with trio.fail_after(TIMEOUT):
            assert await _receive(sock) == ["READY=1", "STATUS=two lines"]
        notifier.close()
    gone = Notifier(str(tmp_path / "no-such-socket"))
    gone.send("WATCHDOG=1")
    gone.send("WATCHDOG=1")
    gone.close()


async def test_a_wedged_trio_loop_sends_no_watchdog_ping(tmp_path: Path) -> None:
    """The pings come from the trio loop itself: while the loop is blocked (a synchronous
    call that never yields), no WATCHDOG=1 is sent, however long it lasts, so systemd
    restarts a wedged daemon; once the loop runs again, so do the pings."""
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.setblocking(False)

        async def receive() -> bytes:
            await trio.lowlevel.wait_readable(sock)
            return sock.recv(65536)

        def drain() -> int:
            """How many datagrams wait (read without yielding to trio)."""
            count = 0
            while True:
                try:
                    sock.recv(65536)
                except BlockingIOError:
                    return count
                count += 1

        notifier = Notifier(path, watchdog=0.02)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(notifier.serve_watchdog)
            with trio.fail_after(TIMEOUT):
                for _ in range(3):
                    assert await receive() == b"WATCHDOG=1"
            drain()  # what was sent before the wedge
            # The wedge, on purpose: the trio loop blocked in a synchronous wait, fifty ping
            # intervals long, for a ping that must not come while it is blocked.
            readable, _, _ = select.select([sock], [], [], 1.0)
            assert not readable, "a ping was sent while the trio loop was blocked"
            with trio.fail_after(TIMEOUT):
                assert await receive() == b"WATCHDOG=1"
            nursery.cancel_scope.cancel()
        notifier.close()


async def test_vessel_serve_tells_systemd_ready_watchdog_and_stopping(tmp_path: Path) -> None:
    """``vessel serve`` under ``Type=notify`` with ``WatchdogSec=2``: READY=1 comes once the
    gateway answers (``/healthz`` at the address its STATUS= names, with no retry), then
    WATCHDOG=1 pings keep coming, then STOPPING=1 on SIGTERM, and the daemon exits 0. Its
    children (the fork server) do not see ``$NOTIFY_SOCKET``: only the daemon speaks."""
    path = str(tmp_path / "notify")
    with _datagram_socket(path) as sock:
        process, stderr = await spawn_serve(
            tmp_path / "data", NOTIFY_SOCKET=path, WATCHDOG_USEC="2000000"
        )
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(stderr.drain)
                seen: list[str] = []
                with trio.fail_after(TIMEOUT):
                    while "READY=1" not in seen:
                        seen += await _receive(sock)
                assert seen[0].startswith("STATUS=starting"), seen
                status = [line for line in seen if line.startswith("STATUS=serving on ")]
                assert status, seen
                url = re.search(r"http://127\.0\.0\.1:\d+", status[-1])
                assert url is not None, status
                # Ready means answering: the first request must succeed.
                async with httpx.AsyncClient(base_url=url.group(0), timeout=TIMEOUT) as client:
                    health = await client.get("/healthz")
                assert health.status_code == 200, health.text
                children = descendants_of(process.pid)
                assert children, "vessel serve runs its fork server"
                for pid, _ in children:
                    with contextlib.suppress(OSError):  # one that has exited meanwhile
                        environ = Path(f"/proc/{pid}/environ").read_bytes()
                        assert b"NOTIFY_SOCKET=" not in environ, cmdline(pid)

                pings = 0
                with trio.fail_after(TIMEOUT):
                    while pings < 3:
                        lines = await _receive(sock)
                        assert "READY=1" not in lines
                        pings += lines.count("WATCHDOG=1")

                process.send_signal(signal.SIGTERM)
                after: list[str] = []
                with trio.fail_after(TIMEOUT):
                    while "STOPPING=1" not in after:
                        after += await _receive(sock)
                    assert await process.wait() == 0
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await stop_daemon_process(process)
    assert "Traceback" not in stderr.text, stderr.text
    assert "cannot notify systemd" not in stderr.text, stderr.text


async def test_the_watchdogs_sigabrt_shows_where_the_daemon_was(tmp_path: Path) -> None:
    """When the watchdog fires, systemd sends SIGABRT: the daemon dies writing every
    thread's Python stack to stderr (the journal), the trio loop's among them, so the
    operator sees where it was stuck; its module processes go with it."""
    process, stderr = await spawn_serve(tmp_path / "data")
    try:
        await stderr.wait_for(lambda s: "vessel running on" in s, timeout=TIMEOUT)
        process.send_signal(signal.SIGABRT)
        with trio.fail_after(TIMEOUT):
            await stderr.drain()
            assert await process.wait() == -signal.SIGABRT
    finally:
        with trio.CancelScope(shield=True):
            await stop_daemon_process(process)
    assert "Fatal Python error: Aborted" in stderr.text, stderr.text
    assert re.search(r'File ".*/trio/_core/_run\.py", line \d+ in run', stderr.text), stderr.text
