"""Durability: ``vessel serve`` killed with SIGKILL in the middle of writes, restarted.

Every write the daemon acknowledged (a config PUT answered 204, a module's storage-set
answered 200) must be there after the restart, and the database must pass SQLite's
integrity check. A data dir the daemon cannot write must stop it at start with a clear
message, not a traceback.
"""

from __future__ import annotations

import os
import random
import shlex
import shutil
import signal
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.cli._support import SERVE, base_env, start_daemon, stop_daemon
from vessel._paths import database_path
from vessel._storage import Storage

from ._figures import Figures

ROUNDS = 3
WRITER = "writer"


async def _writes(url: str, token: str, tag: str, acked: dict[str, str]) -> int:
    """Config and storage writes as fast as the daemon takes them, until it dies."""
    tried = 0
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=10) as client:

        async def config_writer() -> None:
            nonlocal tried
            for i in range(100000):
                key, value = f"c-{tag}-{i}", f"v{i}" * 10
                tried += 1
                r = await client.put(f"/api/modules/{WRITER}/config/{key}", json={"value": value})
                assert r.status_code == 204, r.text
                acked[key] = value

        async def storage_writer() -> None:
            nonlocal tried
            for i in range(100000):
                key, value = f"s-{tag}-{i}", f"w{i}" * 10
                tried += 1
                r = await client.post(
                    f"/api/modules/{WRITER}/call/storage_set", json={"key": key, "value": value}
                )
                assert r.status_code == 200, r.text
                acked[key] = value

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(config_writer)
                nursery.start_soon(storage_writer)
        except* httpx.TransportError:
            pass  # the daemon was killed under us: expected
    return tried


@pytest.mark.watchdog(110)
async def test_sigkill_during_writes_loses_no_acknowledged_write(
    tmp_path: Path, make_module_dir: Any, figures: Figures
) -> None:
    """SIGKILL of ``vessel serve`` at a random moment during config and storage writes,
    three times in a row: after each restart every acknowledged write is on disk, the
    database is intact and the modules run again."""
    row = figures.row("SIGKILL during writes")
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    make_module_dir(tmp_path, "testkit", module_id=WRITER, permissions={"storage": True})
    make_module_dir(tmp_path, "testkit", module_id="healthy-a", permissions={"storage": True})
    acked: dict[str, str] = {}
    for round_no in range(ROUNDS + 1):
        async with trio.open_nursery() as nursery:
            daemon = await start_daemon(nursery, tmp_path)
            token = (tmp_path / "token").read_text().strip()
            headers = {"Authorization": f"Bearer {token}"}
            async with httpx.AsyncClient(base_url=daemon.url, headers=headers, timeout=30) as c:
                with trio.fail_after(30):  # the modules are back after the restart
                    while True:
                        r = await c.post("/api/modules/healthy-a/call/echo", json={"n": 1})
                        if r.status_code == 200:
                            break
                        await trio.sleep(0.05)
                row.answered += 1
            if round_no == ROUNDS:
                await stop_daemon(daemon)
                break
            tried: list[int] = []

            async def writes(
                url: str = daemon.url,
                tag: str = str(round_no),
                token: str = token,
                tried: list[int] = tried,
            ) -> None:
                tried.append(await _writes(url, token, tag, acked))

            with trio.fail_after(30):
                async with trio.open_nursery() as writers:
                    writers.start_soon(writes)
                    # Kill in the middle of the writes: they end on the broken connection
                    # (not by cancellation, which would abandon httpx mid-request).
                    await trio.sleep(rng.uniform(0.3, 1.2))
                    daemon.process.send_signal(signal.SIGKILL)
                    await daemon.process.wait()
            row.bad_inputs += sum(tried)
            row.crashes_survived += 1
    assert len(acked) > 20, (seed, len(acked))
    with sqlite3.connect(database_path(tmp_path)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    db.close()
    with Storage.open(database_path(tmp_path)) as store:
        lost = {k for k, v in acked.items() if store.get(WRITER, k) != v}
    row.data_lost += len(lost)
    assert not lost, (seed, sorted(lost)[:10])


def _read_only_serve(data: Path, serve: list[str]) -> list[str]:
    """The command that runs ``serve`` with ``data`` read-only for it.

    A normal user: the directory's own permissions suffice. Root ignores permissions, so
    it gets a read-only bind mount in a private mount namespace (util-linux's unshare).
    """
    if os.geteuid() != 0:
        data.chmod(0o555)
        return serve
    assert shutil.which("unshare"), "as root this test needs util-linux's unshare"
    script = f"mount --bind -o ro {shlex.quote(str(data))} {shlex.quote(str(data))}"
    return ["unshare", "-m", "sh", "-c", f"{script} && exec {shlex.join(serve)}"]


async def test_read_only_data_dir_is_a_clear_error_at_start(
    tmp_path: Path, make_module_dir: Any, figures: Figures
) -> None:
    """``vessel serve`` on a data dir it cannot write (a read-only bind mount, so it holds
    for root too) exits 1 at start with one line naming the data dir, no traceback."""
    row = figures.row("read-only data dir")
    data = tmp_path / "data"
    data.mkdir()
    make_module_dir(data, "testkit", module_id="healthy-a", permissions={"storage": True})
    serve = [*SERVE, "--data-dir", str(data), "--port", "0", "--no-bundled"]
    try:
        with trio.fail_after(30):
            done = await trio.run_process(
                _read_only_serve(data, serve),
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                env=base_env(),
            )
    finally:
        data.chmod(0o755)  # so tmp_path can be cleaned up
    row.bad_inputs += 1
    err = done.stderr.decode()
    assert done.returncode == 1, err
    assert "Traceback" not in err, err
    assert str(data) in err, err
    assert "cannot listen" not in err, err
