"""A LAN device without the token holding connections open, against a real ``vessel
serve`` started with systemd's default soft limit of open files (1,024 here: 256, so the
test needs fewer sockets), and a hard limit above it.

Before the admission rules (vessel/gateway/_admission.py), a connection left idle after
one ``GET /healthz`` was never closed, and ~1,000 of them made ``/healthz``, every REST
call and ``vessel-ctl`` time out, with EMFILE in the log. The LAN device is played from
127.0.0.2 and up (other loopback addresses count as remote; the tests contact only
127.0.0.1), the admin from 127.0.0.1.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import httpx
import trio

from tests.cli._support import (
    MODULES_STARTED,
    RUNNING,
    SERVE,
    START_TIMEOUT,
    Daemon,
    LineReader,
    base_env,
    ctl,
    stop_daemon,
    stop_daemon_process,
)
from vessel.gateway._admission import KEEP_ALIVE_TIMEOUT, PER_PEER

from ._figures import Figures
from ._resources import watch_daemon

SOFT, HARD = 256, 1024


async def start_limited_daemon(nursery: trio.Nursery, data_dir: Path) -> Daemon:
    """``vessel serve`` under ``prlimit --nofile=SOFT:HARD`` (same PID: prlimit execs)."""
    argv = [
        "prlimit", f"--nofile={SOFT}:{HARD}", "--",
        *SERVE, "--data-dir", str(data_dir), "--port", "0", "--no-bundled",
    ]  # fmt: skip
    process = await trio.lowlevel.open_process(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=base_env(VESSEL_LOG_LEVEL="INFO"),
    )
    assert process.stderr is not None
    stderr = LineReader(process.stderr)
    try:
        line = await stderr.wait_for(lambda s: RUNNING.search(s) is not None, timeout=START_TIMEOUT)
        await stderr.wait_for(lambda s: MODULES_STARTED in s, timeout=START_TIMEOUT)
    except BaseException:
        with trio.CancelScope(shield=True):
            await stop_daemon_process(process)
        raise
    match = RUNNING.search(line)
    assert match is not None
    nursery.start_soon(stderr.drain)
    env = base_env(VESSEL_URL=match.group(1), VESSEL_DATA_DIR=str(data_dir))
    return Daemon(process=process, url=match.group(1), data_dir=data_dir, stderr=stderr, env=env)


def soft_open_files(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no open-file limit")


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def connect_from(daemon: Daemon, source: str) -> trio.SocketStream:
    """A TCP connection to the daemon (on 127.0.0.1) from the local address ``source``."""
    port = int(daemon.url.rsplit(":", 1)[1])
    sock = trio.socket.socket()
    await sock.bind((source, 0))
    await sock.connect(("127.0.0.1", port))
    return trio.SocketStream(sock)


async def answer(stream: trio.SocketStream) -> bytes:
    """Everything the server sends until it closes the connection."""
    raw = b""
    with trio.fail_after(30):
        while chunk := await stream.receive_some(65536):
            raw += chunk
    return raw


async def test_idle_and_hoarded_connections_leave_the_admin_a_way_in(
    tmp_path: Path, figures: Figures
) -> None:
    """The daemon raises its soft open-file limit to the hard one. An idle keep-alive
    connection is closed after the keep-alive timeout. One address gets PER_PEER
    connections, the next ones a 503 ``too_many_connections`` that says why; all remote
    addresses together get a quarter of the open-file limit. Meanwhile, with every
    remote slot held, the admin on 127.0.0.1 still gets ``/healthz`` and ``vessel-ctl
    status``; the daemon's open files stay far below its limit, with no EMFILE."""
    row = figures.row("connection hoarding")
    async with trio.open_nursery() as nursery:
        daemon = await start_limited_daemon(nursery, tmp_path / "data")
        held: list[trio.SocketStream] = []
        try:
            # The held connections are closed before the watch ends: what the daemon
            # holds for them must be given back.
            async with watch_daemon(row, daemon.pid):
                try:
                    assert soft_open_files(daemon.pid) == HARD
                    remote_cap = HARD // 4

                    # An idle keep-alive connection is closed by the server.
                    idle = await connect_from(daemon, "127.0.0.2")
                    async with idle:
                        await idle.send_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                        with trio.fail_after(KEEP_ALIVE_TIMEOUT * 6):
                            reply = await answer(idle)  # the answer, then the close
                    assert reply.startswith(b"HTTP/1.1 200"), reply[:100]
                    row.bad_inputs += 1
                    row.answered += 1

                    # One address: PER_PEER connections, then refusals that say why.
                    refused: list[bytes] = []
                    with trio.fail_after(60):
                        for _ in range(PER_PEER):
                            held.append(await connect_from(daemon, "127.0.0.2"))
                        for _ in range(3):
                            async with await connect_from(daemon, "127.0.0.2") as extra:
                                refused.append(await answer(extra))
                    for reply in refused:
                        assert reply.startswith(b"HTTP/1.1 503"), reply[:100]
                        assert b'"code":"too_many_connections"' in reply, reply
                        assert b"127.0.0.2 has 32 connections open" in reply, reply
                    row.bad_inputs += 3
                    row.answered += 3

                    # Many addresses: the remote total, then refusals.
                    with trio.fail_after(120):
                        source = 3
                        while len(held) < remote_cap:
                            for _ in range(min(PER_PEER, remote_cap - len(held))):
                                held.append(await connect_from(daemon, f"127.0.0.{source}"))
                            source += 1
                        async with await connect_from(daemon, f"127.0.0.{source}") as extra:
                            reply = await answer(extra)
                    assert reply.startswith(b"HTTP/1.1 503"), reply[:100]
                    assert f"has {remote_cap} remote connections open".encode() in reply, reply
                    row.bad_inputs += len(held) + 1
                    row.answered += 1

                    # Every remote slot held: the admin gets in, by REST and vessel-ctl.
                    with trio.fail_after(60):
                        async with httpx.AsyncClient(base_url=daemon.url, timeout=30) as admin:
                            assert (await admin.get("/healthz")).status_code == 200
                        status = await ctl("status", env=daemon.env)
                    assert status.returncode == 0, status
                    assert "vessel is running" in status.stdout
                    row.answered += 2
                    assert open_files(daemon.pid) < HARD // 2
                    assert "EMFILE" not in daemon.stderr.text
                    assert "Too many open files" not in daemon.stderr.text
                    refusals = [
                        line for line in daemon.stderr.lines if "refusing connections" in line
                    ]
                    # Once per address a minute: not a line per refused connection.
                    assert len(refusals) <= 2, refusals
                finally:
                    for stream in held:
                        await stream.aclose()
        finally:
            await stop_daemon(daemon)
