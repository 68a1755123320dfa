"""Durability: ``vessel serve`` killed with SIGKILL in the middle of writes and installs,
restarted; a data dir it cannot write; a data dir on a full disk.

Every write the daemon acknowledged (a config PUT or DELETE answered 204, a module's
storage-set answered 200) must be there after the restart, and the database must pass
SQLite's integrity check. Every install it acknowledged (201) must be there and run, and
an interrupted one must leave nothing half-installed. A data dir the daemon cannot write
must stop it at start with a clear message, not a traceback; a full disk must refuse
writes and installs with an error that says so, and lose nothing acknowledged.

The disk-full test mounts a small tmpfs (so it needs root, or CAP_SYS_ADMIN), always
unmounted at its end: a real file system that runs out of space (ENOSPC), rather than a
limit that only imitates one (RLIMIT_FSIZE gives EFBIG, per file).
"""

from __future__ import annotations

import errno
import gc
import os
import random
import re
import shlex
import shutil
import signal
import sqlite3
import subprocess
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, closing
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import trio

from tests.cli._support import (
    RUNNING,
    SERVE,
    Daemon,
    LineReader,
    base_env,
    ctl,
    start_daemon,
    stop_daemon,
    stop_daemon_process,
)
from tests.fixture_types import MakeModuleDir
from vessel._ceilings import DEFAULT_CEILINGS
from vessel._paths import database_path
from vessel._storage import Storage

from ._figures import Figures, Row
from ._netprobe import netprobe_manifest, netprobe_wasm
from ._resources import watch_daemon

ROUNDS = 3
WRITER = "writer"
#: A SIGKILL can land while httpx is sending a request body: the request fails with the
#: TransportError the tests expect, and the body's async generator is left unfinished, so
#: trio warns when it is garbage collected, whenever that happens to be. The tests that
#: kill mid-request ignore just that warning and collect at their end, so that it never
#: falls into a later test. It is the client's leftover, not the daemon's.
ABANDONED_BODIES = (
    r"ignore:Async generator 'httpx\._\w+\.\w+\.__aiter__' was garbage collected"
    ":ResourceWarning"
)
#: Config keys the overwriter sets and deletes in turn, across every round.
OVERWRITTEN = 3
#: New keys acknowledged in a round before its SIGKILL may come.
ACKED_PER_ROUND = 10


async def _writes(
    url: str, token: str, tag: str, acked: dict[str, str], possible: dict[str, set[str | None]]
) -> int:
    """Config and storage writes as fast as the daemon takes them, until it dies.

    ``acked``: new keys, each written once. ``possible``: for each of a few keys that are
    overwritten and deleted over and over, the values it may hold now (None: absent):
    the last acknowledged one, plus any sent after it whose answer never came.
    """
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

        async def overwriter() -> None:
            nonlocal tried
            for i in range(100000):
                key = f"o-{i % OVERWRITTEN}"
                value = None if i % 4 == 3 else f"{tag}-{i}"
                tried += 1
                possible.setdefault(key, {None}).add(value)
                path = f"/api/modules/{WRITER}/config/{key}"
                if value is None:
                    r = await client.delete(path)
                    assert r.status_code in (204, 404), r.text
                else:
                    r = await client.put(path, json={"value": value})
                    assert r.status_code == 204, r.text
                possible[key] = {value}

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(config_writer)
                nursery.start_soon(storage_writer)
                nursery.start_soon(overwriter)
        except* httpx.TransportError:
            pass  # the daemon was killed under us: expected
    return tried


@pytest.mark.watchdog(110)
@pytest.mark.filterwarnings(ABANDONED_BODIES)
async def test_sigkill_during_writes_loses_no_acknowledged_write(
    tmp_path: Path, make_module_dir: MakeModuleDir, figures: Figures
) -> None:
    """SIGKILL of ``vessel serve`` at a random moment during config and storage writes,
    three times in a row: after each restart every acknowledged write is on disk (new
    keys, and keys overwritten and deleted over and over: none goes back to an older
    value or comes back after an acknowledged delete), the database is intact and the
    modules run again."""
    row = figures.row("SIGKILL during writes")
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    make_module_dir(tmp_path, "testkit", module_id=WRITER, permissions={"storage": True})
    make_module_dir(tmp_path, "testkit", module_id="healthy-a", permissions={"storage": True})
    acked: dict[str, str] = {}
    possible: dict[str, set[str | None]] = {}
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
            acked_before = len(acked)

            async def writes(
                url: str = daemon.url,
                tag: str = str(round_no),
                token: str = token,
                tried: list[int] = tried,
            ) -> None:
                tried.append(await _writes(url, token, tag, acked, possible))

            with trio.fail_after(30):
                async with trio.open_nursery() as writers:
                    writers.start_soon(writes)
                    # Kill in the middle of the writes, once this round has had some
                    # acknowledged (nothing announces one: look), at a random moment
                    # after: they end on the broken connection (not by cancellation,
                    # which would abandon httpx mid-request).
                    while len(acked) < acked_before + ACKED_PER_ROUND:
                        await trio.sleep(0.01)
                    await trio.sleep(rng.uniform(0, 0.9))
                    daemon.process.send_signal(signal.SIGKILL)
                    await daemon.process.wait()
            row.bad_inputs += sum(tried)
            row.crashes_survived += 1
    with sqlite3.connect(database_path(tmp_path)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    db.close()
    with Storage.open(database_path(tmp_path)) as store:
        lost = {k for k, v in acked.items() if store.get(WRITER, k) != v}
        # An acknowledged overwrite or delete must not be undone either.
        lost |= {k for k, v in possible.items() if store.get(WRITER, k) not in v}
    row.data_lost += len(lost)
    assert not lost, (seed, sorted(lost)[:10])
    assert len(possible) == OVERWRITTEN, possible
    gc.collect()  # abandoned request bodies: finalized here, under ABANDONED_BODIES


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
    tmp_path: Path, make_module_dir: MakeModuleDir, figures: Figures
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


# -- a lost database --------------------------------------------------------------------


def _database_files(data: Path) -> list[Path]:
    """vessel.db and its WAL companions."""
    db = database_path(data)
    return [db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")]


def _online_backup(db: Path, to: Path) -> None:
    """The online backup of docs/operations.md ("Backup and restore"), taken while the
    daemon runs: SQLite's backup API, not a copy of the file."""
    with closing(sqlite3.connect(db)) as source, closing(sqlite3.connect(to)) as target:
        source.backup(target)


async def _refused_at_start(data: Path) -> tuple[int, str]:
    """``vessel serve`` on ``data``, which must stop at start: its exit status and stderr.
    A daemon that starts instead is stopped, and the test fails saying so."""
    process = await trio.lowlevel.open_process(
        [*SERVE, "--data-dir", str(data), "--port", "0", "--no-bundled"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=base_env(VESSEL_LOG_LEVEL="INFO"),
    )
    assert process.stderr is not None
    stderr = LineReader(process.stderr)
    try:
        with trio.fail_after(30):
            while (line := await stderr.readline()) is not None:
                if RUNNING.search(line):
                    raise AssertionError(f"vessel serve started:\n{stderr.text}")
            return await process.wait(), stderr.text
    finally:
        with trio.CancelScope(shield=True):
            await stop_daemon_process(process)


async def _answers(c: httpx.AsyncClient, module_id: str, row: Row) -> None:
    """The module answers a call (asked after start_daemon, which returns once the daemon
    has said every module started)."""
    r = await c.post(f"/api/modules/{module_id}/call/echo", json={})
    if r.status_code != 200:
        info = (await c.get(f"/api/modules/{module_id}")).text
        logs = (await c.get(f"/api/modules/{module_id}/logs")).text
        raise AssertionError(f"{module_id} did not answer: {r.text}\n{info}\n{logs}")
    row.answered += 1


@pytest.mark.watchdog(110)
async def test_missing_or_empty_database_is_refused_at_start(
    tmp_path: Path, make_module_dir: MakeModuleDir, figures: Figures
) -> None:
    """A data dir the daemon has run in, with modules installed, whose vessel.db is
    missing or empty (zero bytes): ``vessel serve`` refuses to start, in one line naming
    the database, the modules, the backup and ``--reset-database``, and writes nothing.
    Restored from the online backup of docs/operations.md, the setting is back and the
    disabled module still disabled. ``--reset-database`` starts over with an empty one,
    saying so; once no module is installed, a lost database is no reason to refuse. (A
    new data dir with module folders dropped in starts as always: the first start.)"""
    row = figures.row("database missing or empty")
    data = tmp_path / "data"
    for module_id in ("kept", "off"):
        make_module_dir(data, "testkit", module_id=module_id, permissions={"storage": True})
    db = database_path(data)
    backup = tmp_path / "backup.db"
    async with _serving(data) as (daemon, c):
        await _answers(c, "kept", row)
        r = await c.put("/api/modules/kept/config/url", json={"value": "ws://ha.local"})
        assert r.status_code == 204, r.text
        assert (await c.post("/api/modules/off/disable")).status_code == 200
        await trio.to_thread.run_sync(_online_backup, db, backup)
        await c.aclose()  # an idle keep-alive connection would hold up the stop
        await stop_daemon(daemon)

    for broken in ("missing", "empty"):
        for path in _database_files(data):
            path.unlink(missing_ok=True)
        if broken == "empty":
            db.write_bytes(b"")
        code, err = await _refused_at_start(data)
        row.bad_inputs += 1
        assert code == 1, err
        assert "Traceback" not in err, err
        for said in (f"database {db} is {broken}", "(kept, off)", "Backup and restore",
                     "--reset-database"):  # fmt: skip
            assert said in err, (said, err)
        # Nothing written: what the admin restores over is what was there.
        assert db.stat().st_size == 0 if broken == "empty" else not db.exists()

    # Restored from the backup, as docs/operations.md says.
    for path in _database_files(data):
        path.unlink(missing_ok=True)
    shutil.copyfile(backup, db)
    async with _serving(data) as (daemon, c):
        await _answers(c, "kept", row)
        off = (await c.get("/api/modules/off")).json()
        url = await c.get("/api/modules/kept/config/url")
        lost = [
            *(["off's disabled state"] if (off["enabled"], off["state"]) != (False, "disabled")
              else []),
            *(["kept's url"] if url.status_code != 200 or url.json()["value"] != "ws://ha.local"
              else []),
        ]  # fmt: skip
        row.data_lost += len(lost)
        assert lost == [], (lost, off, url.text)
        await c.aclose()
        await stop_daemon(daemon)

    # The admin chooses to start over: it starts, and the log says what that means.
    for path in _database_files(data):
        path.unlink(missing_ok=True)
    async with _serving(data, ["--reset-database"]) as (daemon, c):
        assert "started with a new, empty database" in daemon.stderr.text, daemon.stderr.text
        await _answers(c, "off", row)
        assert (await c.get("/api/modules/off")).json()["enabled"] is True
        for module_id in ("kept", "off"):
            assert (await c.delete(f"/api/modules/{module_id}")).status_code == 204
        await c.aclose()
        await stop_daemon(daemon)

    # No module installed: nothing depends on the database; a lost one is only noted.
    for path in _database_files(data):
        path.unlink(missing_ok=True)
    async with _serving(data) as (daemon, c):
        assert "was missing or empty: started with a new one" in daemon.stderr.text
        assert (await c.get("/api/modules")).json()["modules"] == []
        await c.aclose()
        await stop_daemon(daemon)


# -- disk full -------------------------------------------------------------------------

DISK_FULL = re.compile(r"(?i)disk is full|no space left")
TMPFS_MB = 96


@asynccontextmanager
async def _tmpfs(mountpoint: Path, size_mb: int) -> AsyncIterator[Path]:
    """A small tmpfs at ``mountpoint`` for the block (a real file system that fills up:
    writes beyond it fail with ENOSPC); unmounted afterwards, whatever happened."""
    mountpoint.mkdir()
    with trio.fail_after(10):
        done = await trio.run_process(
            ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0700", "tmpfs", str(mountpoint)],
            capture_stderr=True,
            check=False,
        )
    assert done.returncode == 0, (
        "the disk-full test mounts a tmpfs (needs root or CAP_SYS_ADMIN): " + done.stderr.decode()
    )
    try:
        yield mountpoint
    finally:
        with trio.CancelScope(shield=True):
            await _umount(mountpoint)


async def _umount(mountpoint: Path) -> None:
    """Unmount, waiting (bounded) for the processes that still use it to end; if that
    fails, detach it anyway (lazy) so no mount outlives the test, and say so."""
    with trio.move_on_after(10):
        while True:
            done = await trio.run_process(
                ["umount", str(mountpoint)], capture_stderr=True, check=False
            )
            if done.returncode == 0:
                return
            await trio.sleep(0.1)
    with trio.fail_after(10):
        await trio.run_process(["umount", "-l", str(mountpoint)])
    raise AssertionError(f"{mountpoint} was still busy after 10 s: detached lazily")


@asynccontextmanager
async def _killed_at_exit(daemon: Daemon) -> AsyncIterator[Daemon]:
    """A test that fails half-way must not leave the daemon holding the tmpfs."""
    try:
        yield daemon
    finally:
        if daemon.process.returncode is None:
            daemon.process.kill()
            with trio.CancelScope(shield=True), trio.fail_after(10):
                await daemon.process.wait()


def _fill(folder: Path, name: str = "ballast") -> Path:
    """Fill the file system of ``folder`` up to the last byte with one ballast file."""
    ballast = folder / name
    with ballast.open("wb", buffering=0) as f:
        for chunk in (1 << 20, 1 << 12, 1):
            try:
                while True:
                    f.write(b"\0" * chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
    return ballast


def _is_disk_full(r: httpx.Response, status: int = 507) -> bool:
    """A refusal that says what is wrong: ``status`` (507 insufficient_storage for the
    daemon's own writes; a module's failed storage write is its command's error, 502), the
    JSON error shape, and a message naming the full disk."""
    if r.status_code < 400:
        return False
    body = r.json()
    assert set(body) == {"code", "message"}, body
    assert r.status_code == status, (r.status_code, body)
    assert DISK_FULL.search(body["message"]), (r.status_code, body)
    return True


async def test_disk_full_is_a_clear_error_and_loses_nothing(
    tmp_path: Path, make_module_dir: MakeModuleDir, figures: Figures
) -> None:
    """The data dir on a small tmpfs, filled to the last byte by a ballast file. Config
    writes, a module's storage writes and an install are refused with an error naming
    the full disk (not a generic 500, not a silent success); the install leaves nothing
    behind; the daemon keeps serving calls and reads. Killed and restarted on the full
    disk, it starts, and every module runs, even one whose compiled code must be rebuilt
    and cannot be cached. Once the ballast is deleted the same install succeeds; when the
    daemon has stopped, every write acknowledged before, during and after is on disk."""
    row = figures.row("disk full (tmpfs)")
    acked: dict[str, str] = {}
    async with _tmpfs(tmp_path / "data", TMPFS_MB) as data:
        make_module_dir(
            data, "testkit", module_id=WRITER, permissions={"storage": True},
            # As much as the default ceiling allows: the disk fills up long before.
            limits={"storage_quota_kb": DEFAULT_CEILINGS["storage_quota_kb"]},
        )  # fmt: skip
        async with _serving(data) as (daemon, c):
            await _ready(c, WRITER)
            assert (await _install(c, "probe-a")).status_code == 201
            for i in range(5):
                assert await _put(c, acked, f"before-c{i}", "x" * 1000) == 204
                assert await _store(c, acked, f"before-s{i}", "y" * 1000) == 200
            # From the full disk until the kill (no file of its own is left open by a
            # refused write or install).
            async with watch_daemon(row, daemon.pid):
                await trio.to_thread.run_sync(_fill, data)

                # Values big enough that the database must grow: a few may still fit in
                # pages SQLite already has (acknowledged: they must survive like any other);
                # the rest must be refused, saying why.
                refused = {"config": 0, "storage": 0}
                big = "z" * 65536
                for i in range(64):
                    if _is_disk_full(await _put_r(c, acked, f"full-c{i}", big)):
                        refused["config"] += 1
                    if _is_disk_full(await _store_r(c, acked, f"full-s{i}", big), status=502):
                        refused["storage"] += 1
                    row.bad_inputs += 2
                    if min(refused.values()) >= 3:
                        break
                assert min(refused.values()) >= 3, refused
                assert _is_disk_full(await _install(c, "probe-b"))
                row.bad_inputs += 1
                assert _debris(data) == [], _debris(data)
                assert not (data / "modules" / "probe-b").exists()
                await _still_serving(c, row)
            daemon.process.kill()
            await daemon.process.wait()
            row.crashes_survived += 1
        assert "Traceback" not in daemon.stderr.text, daemon.stderr.text

        # Restart on the full disk; probe-a's compiled code is gone (as after an upgrade
        # of wasmtime): it compiles again and cannot cache the result.
        shutil.rmtree(data / "modules" / "probe-a" / "compiled")
        await trio.to_thread.run_sync(_fill, data, "ballast-2")
        async with _serving(data) as (daemon, c):
            await _ready(c, WRITER)
            await _ready(c, "probe-a")
            await _still_serving(c, row)
            for key in ("before-c0", "before-s0"):
                r = await c.post(f"/api/modules/{WRITER}/call/storage_get", json={"key": key})
                assert r.json()["data"] == {"value": acked[key]}, r.text
            assert _is_disk_full(await _install(c, "probe-b"))
            row.bad_inputs += 1
            for name in ("ballast", "ballast-2"):
                (data / name).unlink()
            # Space again: the same install and writes go through.
            assert (await _install(c, "probe-b")).status_code == 201
            await _ready(c, "probe-b")
            assert await _put(c, acked, "after-c", "ok") == 204
            assert await _store(c, acked, "after-s", "ok") == 200
            await c.aclose()  # an idle keep-alive connection would hold up the stop
            await stop_daemon(daemon)
        with Storage.open(database_path(data)) as store:
            lost = {k for k, v in acked.items() if store.get(WRITER, k) != v}
    row.data_lost += len(lost)
    assert not lost, sorted(lost)[:10]


@asynccontextmanager
async def _serving(
    data: Path, args: Sequence[str] = ()
) -> AsyncIterator[tuple[Daemon, httpx.AsyncClient]]:
    """``vessel serve`` on ``data`` (with ``args``) and a client with its token, for the
    block."""
    async with trio.open_nursery() as nursery:
        daemon = await start_daemon(nursery, data, args)
        async with _killed_at_exit(daemon), _client(daemon) as c:
            yield daemon, c


def _client(daemon: Daemon) -> httpx.AsyncClient:
    token = (daemon.data_dir / "token").read_text().strip()
    headers = {"Authorization": f"Bearer {token}"}
    return httpx.AsyncClient(base_url=daemon.url, headers=headers, timeout=30)


async def _ready(c: httpx.AsyncClient, module_id: str) -> None:
    """Wait (bounded) until the module answers a call."""
    with trio.move_on_after(30):
        while (await c.post(f"/api/modules/{module_id}/call/echo", json={})).status_code != 200:
            await trio.sleep(0.05)
        return
    info = (await c.get(f"/api/modules/{module_id}")).text
    logs = (await c.get(f"/api/modules/{module_id}/logs")).text
    raise AssertionError(f"{module_id} did not answer within 30 s: {info}\n{logs}")


async def _install(
    c: httpx.AsyncClient, module_id: str, *, version: str = "0.1.0", replace: bool = False
) -> httpx.Response:
    """Upload the netprobe component as ``module_id`` (POST /api/modules)."""
    files = {
        "manifest": ("manifest.json", netprobe_manifest(module_id, version=version)),
        "wasm": ("module.wasm", netprobe_wasm()),
    }
    params = {"replace": "true"} if replace else {}
    return await c.post("/api/modules", params=params, files=files)


async def _put_r(
    c: httpx.AsyncClient, acked: dict[str, str], key: str, value: str
) -> httpx.Response:
    r = await c.put(f"/api/modules/{WRITER}/config/{key}", json={"value": value})
    if r.status_code == 204:
        acked[key] = value
    return r


async def _store_r(
    c: httpx.AsyncClient, acked: dict[str, str], key: str, value: str
) -> httpx.Response:
    body = {"key": key, "value": value}
    r = await c.post(f"/api/modules/{WRITER}/call/storage_set", json=body)
    if r.status_code == 200:
        acked[key] = value
    return r


async def _put(c: httpx.AsyncClient, acked: dict[str, str], key: str, value: str) -> int:
    return (await _put_r(c, acked, key, value)).status_code


async def _store(c: httpx.AsyncClient, acked: dict[str, str], key: str, value: str) -> int:
    return (await _store_r(c, acked, key, value)).status_code


async def _still_serving(c: httpx.AsyncClient, row: Row) -> None:
    """Calls, reads and the module list still work (on a full disk)."""
    for _ in range(5):
        r = await c.post(f"/api/modules/{WRITER}/call/echo", json={"n": 1})
        assert r.status_code == 200, r.text
        row.answered += 1
    r = await c.get(f"/api/modules/{WRITER}/config/before-c0")
    assert r.status_code == 200, r.text
    assert r.json()["value"] == "x" * 1000, r.text
    r = await c.get("/api/modules")
    assert r.status_code == 200, r.text
    assert r.json()["refused"] == [], r.text
    assert all(m["state"] == "running" for m in r.json()["modules"]), r.text


def _debris(data: Path) -> list[str]:
    """Leftovers of interrupted installs, replacements and removals."""
    return sorted(p.name for p in (data / "modules").iterdir() if p.name.startswith("."))


# -- SIGKILL during installs -----------------------------------------------------------

STABLE = "stable"
#: Where each round's SIGKILL lands: while an install is being written and compiled in
#: its staging folder, while a replacement has the old copy set aside, once a new module
#: folder is in place but before its install was answered (the module is starting), and
#: at a random moment.
KILL_MOMENTS = ("staging", "trash", "placed", "random")
#: Fresh installs per round (each adds a module process to every later restart).
FRESH_PER_ROUND = 4


@dataclass
class Installs:
    """What the installers asked for and what the daemon acknowledged (201)."""

    acked: dict[str, str] = field(default_factory=dict)  # module id -> version
    attempted: dict[str, list[str]] = field(default_factory=dict)  # id -> versions, in order
    in_flight: dict[str, str] = field(default_factory=dict)  # sent, not answered

    def send(self, module_id: str, version: str) -> None:
        self.attempted.setdefault(module_id, []).append(version)
        self.in_flight[module_id] = version

    def answered(self, module_id: str, version: str, r: httpx.Response) -> None:
        assert r.status_code == 201, r.text
        self.acked[module_id] = version
        del self.in_flight[module_id]


async def _installer(c: httpx.AsyncClient, tag: int, state: Installs) -> None:
    """Fresh installs and replacements of ``stable``, back to back, until the daemon dies."""

    async def fresh() -> None:
        for i in range(FRESH_PER_ROUND):
            module_id = f"m{tag}-{i}"
            state.send(module_id, "0.1.0")
            state.answered(module_id, "0.1.0", await _install(c, module_id))

    async def replace() -> None:
        for i in range(100000):
            version = f"1.{tag}.{i}"
            state.send(STABLE, version)
            state.answered(
                STABLE, version, await _install(c, STABLE, version=version, replace=True)
            )

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fresh)
            nursery.start_soon(replace)
    except* httpx.TransportError:
        pass  # the daemon was killed under us: expected


async def _kill_moment(moment: str, data: Path, state: Installs, rng: random.Random) -> None:
    """Return at the moment named: when the data dir shows it (polled every millisecond,
    for 5 s at most), or after a random delay."""
    modules = data / "modules"

    def seen() -> bool:
        names = [p.name for p in modules.iterdir()] if modules.is_dir() else []
        if moment == "staging":
            return any(n.startswith(".staging-") for n in names)
        if moment == "trash":
            return any(n.startswith(".trash-") for n in names)
        # "placed": a fresh module's folder is in place, its install not yet answered
        return any(m != STABLE and m in names for m in state.in_flight)

    if moment == "random":
        await trio.sleep(rng.uniform(0.05, 1.0))
        return
    with trio.move_on_after(5):
        while not seen():
            await trio.sleep(0.001)


async def _check_installs(c: httpx.AsyncClient, data: Path, state: Installs, row: Row) -> None:
    """After a restart: nothing half-installed, every acknowledged install there and
    running, and a retry of each interrupted install goes through."""
    assert _debris(data) == [], _debris(data)
    listing = (await c.get("/api/modules")).json()
    assert listing["refused"] == [], listing["refused"]
    listed = {m["id"]: m["version"] for m in listing["modules"]}
    for module_id, version in state.acked.items():
        assert module_id in listed, (module_id, sorted(listed))
        if module_id == STABLE:
            # The acknowledged version, or the one in flight if it got as far as its rename.
            allowed = {version, state.in_flight.get(STABLE, version)}
            assert listed[STABLE] in allowed, (listed[STABLE], allowed)
    for module_id in listed:
        assert module_id in state.attempted, (module_id, sorted(state.attempted))
        await _ready(c, module_id)
        row.answered += 1
    for module_id, version in list(state.in_flight.items()):
        # The interrupted request, retried as a client would. A replacement goes through
        # (201). A new install goes through too, or, if the kill came after its folder
        # was in place, gets "already installed" (409): the module is there, running.
        replace = module_id == STABLE
        r = await _install(c, module_id, version=version, replace=replace)
        if module_id in listed and not replace:
            assert r.status_code == 409, r.text
        else:
            assert r.status_code == 201, r.text
            listed[module_id] = version
        state.acked[module_id] = listed[module_id]
        del state.in_flight[module_id]
        await _ready(c, module_id)


@pytest.mark.watchdog(110)
@pytest.mark.filterwarnings(ABANDONED_BODIES)
async def test_sigkill_during_installs_leaves_no_half_installed_module(
    tmp_path: Path, figures: Figures
) -> None:
    """``vessel serve`` SIGKILLed while modules are installed and replaced over REST, at
    different moments (mid-write in staging, mid-replace with the old copy set aside, a
    new folder in place but unanswered, random): after each restart no half-installed
    module is listed or refused, every acknowledged install is there and runs (a replaced
    module at its acknowledged version or the one in flight), no staging debris is left,
    and retrying the interrupted install works; last, vessel-ctl replaces a module."""
    row = figures.row("SIGKILL during installs")
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    state = Installs()
    for round_no, moment in enumerate(KILL_MOMENTS):
        async with _serving(tmp_path) as (daemon, c):
            await _check_installs(c, tmp_path, state, row)
            with trio.fail_after(30):
                async with trio.open_nursery() as installers:
                    installers.start_soon(_installer, c, round_no, state)
                    await _kill_moment(moment, tmp_path, state, rng)
                    daemon.process.kill()
                    await daemon.process.wait()
            row.crashes_survived += 1
        assert "Traceback" not in daemon.stderr.text, (seed, daemon.stderr.text)
    async with _serving(tmp_path) as (daemon, c):
        await _check_installs(c, tmp_path, state, row)
        # The CLI's way in, too: vessel-ctl install --replace.
        src = tmp_path / "src"
        src.mkdir()
        (src / "manifest.json").write_bytes(netprobe_manifest(STABLE, version="2.0.0"))
        (src / "module.wasm").write_bytes(netprobe_wasm())
        done = await ctl("install", "--replace", str(src), env=daemon.env)
        assert done.returncode == 0, (seed, str(done))
        assert (await c.get(f"/api/modules/{STABLE}")).json()["version"] == "2.0.0"
        await _ready(c, STABLE)
        await c.aclose()  # an idle keep-alive connection would hold up the stop
        await stop_daemon(daemon)
    row.bad_inputs += sum(len(v) for v in state.attempted.values())
    assert len(state.acked) > len(KILL_MOMENTS), (seed, state.acked)
    gc.collect()  # abandoned request bodies: finalized here, under ABANDONED_BODIES
