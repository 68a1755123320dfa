"""Broken modules are refused with their reason; no module process outlives the daemon."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from tests.fixture_types import MakeModuleDir
from vessel._daemon import Daemon
from vessel._manager import ModuleState

from ..procs import Proc, alive, children_of, cmdline, comm, descendants_of
from .harness import call, running_daemon


def _refusal(daemon: Daemon, module_id: str) -> str:
    reasons = [r.reason for r in daemon.manager.refused if r.module_id == module_id]
    assert reasons, f"{module_id} was not refused; refused: {daemon.manager.refused}"
    return reasons[0]


async def test_tampered_wasm_is_refused_while_good_module_runs(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """A module.wasm changed after install no longer matches manifest.hash: refused with
    'hash mismatch'; the good module beside it runs."""
    bad = make_module_dir(tmp_path, "testkit", module_id="tampered", permissions={})
    make_module_dir(tmp_path, "testkit", module_id="good", permissions={})
    with (bad / "module.wasm").open("r+b") as f:
        f.seek(-10, os.SEEK_END)
        f.write(b"\x00" * 10)
    async with running_daemon(tmp_path) as daemon:
        assert "hash mismatch" in _refusal(daemon, "tampered")
        assert "tampered" not in daemon.manager.ids()
        assert daemon.manager.state("good") is ModuleState.RUNNING
        assert await call(daemon, "good", "echo", {"ok": 1}) == {"ok": 1}


async def test_newer_api_version_is_refused(tmp_path: Path, make_module_dir: MakeModuleDir) -> None:
    """api_version 2 is refused with a message naming both versions."""
    bad = make_module_dir(tmp_path, "testkit", module_id="future", permissions={})
    make_module_dir(tmp_path, "testkit", module_id="good", permissions={})
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["api_version"] = 2
    (bad / "manifest.json").write_text(json.dumps(manifest))
    (bad / "manifest.hash").unlink()  # re-hashed on discovery: the refusal is the version
    async with running_daemon(tmp_path) as daemon:
        reason = _refusal(daemon, "future")
        assert "api_version 2" in reason
        assert "supports 1" in reason
        assert daemon.manager.state("good") is ModuleState.RUNNING


async def test_manifest_with_unknown_field_is_refused(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """A misspelt manifest field is an error that names the field."""
    bad = make_module_dir(tmp_path, "testkit", module_id="typo", permissions={})
    make_module_dir(tmp_path, "testkit", module_id="good", permissions={})
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["permisions"] = manifest.pop("permissions")
    (bad / "manifest.json").write_text(json.dumps(manifest))
    (bad / "manifest.hash").unlink()
    async with running_daemon(tmp_path) as daemon:
        assert "permisions" in _refusal(daemon, "typo")
        assert await call(daemon, "good", "echo", {}) == {}


async def _serve_until_modules_run(
    data_dir: Path, ids: list[str], *options: str
) -> tuple[trio.Process, set[Proc]]:
    """Start the real `vessel serve` and wait until the modules ``ids`` run; return it
    and every process below it (module processes, and the fork server if there is one),
    after checking that the process tree is what docs/operations.md says."""
    process = await trio.lowlevel.open_process(
        [
            sys.executable,
            "-m",
            "vessel.cli.serve",
            "serve",
            "--data-dir",
            str(data_dir),
            "--no-bundled",
            # Any free port: these tests run beside each other (xdist), and beside
            # anything else on the machine that listens on the default one.
            "--port",
            "0",
            *options,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert process.stderr is not None
    seen = b""
    try:
        with trio.fail_after(60):
            # The gateway answers first; the modules start after it.
            while seen.count(b"modules started: ") == 0:
                chunk = await process.stderr.receive_some()
                if not chunk:
                    raise AssertionError(f"daemon exited early:\n{seen.decode()}")
                seen += chunk
    except BaseException:
        # Reaped here, not left to the garbage collector: a failed start must not spill
        # into the next test as an "unraisable" warning about a running subprocess.
        process.kill()
        with trio.move_on_after(10):
            await process.wait()
        await process.stderr.aclose()
        raise
    children = children_of(process.pid)
    if "--no-forkserver" in options:
        modules = children
    else:
        # The daemon's one child is the fork server; the module processes are its own.
        assert [comm(pid) for pid, _ in children] == ["vessel-zygote"], seen.decode()
        ((zygote, _),) = children
        assert "-m actors._forkserver_main" in cmdline(zygote)
        modules = children_of(zygote)
        # Forked, each still shows which module it serves, to ps and to pgrep -f.
        assert sorted(comm(pid) for pid, _ in modules) == [f"vessel:{i}" for i in sorted(ids)]
    assert sorted(cmdline(pid).rsplit(" -m ", 1)[-1] for pid, _ in modules) == [
        f"vessel.host --module {i}" for i in sorted(ids)
    ], seen.decode()
    everything = descendants_of(process.pid)
    assert everything == children | modules
    return process, everything


async def _assert_all_gone(procs: set[Proc]) -> None:
    # Nothing signals us when an unrelated process ends: poll /proc, bounded.
    with trio.fail_after(15):
        while alive(procs):
            await trio.sleep(0.05)


async def test_no_child_left_after_sigterm(tmp_path: Path, make_module_dir: MakeModuleDir) -> None:
    """SIGTERM on `vessel serve`: it shuts down cleanly (exit 0) and reaps every module
    process and the fork server."""
    make_module_dir(tmp_path, "testkit", module_id="alpha", permissions={})
    make_module_dir(tmp_path, "testkit", module_id="beta", permissions={})
    process, procs = await _serve_until_modules_run(tmp_path, ["alpha", "beta"])
    process.send_signal(signal.SIGTERM)
    with trio.fail_after(30):
        assert await process.wait() == 0
    await _assert_all_gone(procs)


async def test_no_child_left_after_sigint(tmp_path: Path, make_module_dir: MakeModuleDir) -> None:
    """SIGINT (Ctrl-C) stops the daemon the same orderly way."""
    make_module_dir(tmp_path, "testkit", module_id="alpha", permissions={})
    process, procs = await _serve_until_modules_run(tmp_path, ["alpha"])
    process.send_signal(signal.SIGINT)
    with trio.fail_after(30):
        assert await process.wait() == 0
    await _assert_all_gone(procs)


@pytest.mark.parametrize("options", [(), ("--no-forkserver",)], ids=["forked", "spawned"])
async def test_no_child_left_after_daemon_sigkill(
    tmp_path: Path, make_module_dir: MakeModuleDir, options: tuple[str, ...]
) -> None:
    """Even when the daemon is SIGKILLed (no cleanup runs), nothing it started survives:
    the fork server sees end-of-file on its socket and SIGKILLs the module processes (which
    PR_SET_PDEATHSIG would kill with it anyway); spawned without it, the module processes
    notice the broken pipe and exit by themselves."""
    make_module_dir(tmp_path, "testkit", module_id="alpha", permissions={})
    make_module_dir(tmp_path, "testkit", module_id="beta", permissions={})
    process, procs = await _serve_until_modules_run(tmp_path, ["alpha", "beta"], *options)
    process.kill()
    with trio.fail_after(10):
        await process.wait()
    await _assert_all_gone(procs)
