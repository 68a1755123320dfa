"""Module processes come from the daemon's fork server, survive its death, and can do
without it."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import trio

from tests.fixture_types import MakeModuleDir
from vessel._daemon import FORKSERVER_NAME, Daemon, DaemonConfig, open_daemon
from vessel._manager import ModuleState

from ..procs import comm, proc_stat
from .harness import FAST, call, data, running_daemon


def _parent(pid: int) -> int | None:
    stat = proc_stat(pid)
    return None if stat is None else stat[1]


def _start_line(daemon: Daemon, module_id: str) -> str:
    lines = [line.message for line in daemon.manager.logs(module_id) if "after" in line.message]
    assert lines, f"{module_id} logged no start line"
    return lines[-1]


async def test_module_processes_are_forked_by_the_fork_server(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """With the default configuration every module process is a child of the daemon's
    one fork server, named vessel:<id>, and its log says it was forked."""
    make_module_dir(tmp_path, "testkit", module_id="alpha", permissions={})
    make_module_dir(tmp_path, "testkit", module_id="beta", permissions={})
    async with running_daemon(tmp_path) as daemon:
        assert daemon.forkserver is not None
        zygote = daemon.forkserver.pid
        assert zygote is not None
        assert _parent(zygote) == os.getpid()
        assert comm(zygote) == FORKSERVER_NAME
        for module_id in ("alpha", "beta"):
            pid = daemon.manager.get(module_id).pid
            assert pid is not None
            assert _parent(pid) == zygote
            assert comm(pid) == f"vessel:{module_id}"
            assert "after forking its process" in _start_line(daemon, module_id)
            assert await call(daemon, module_id, "echo", {"id": module_id}) == {"id": module_id}


async def test_a_killed_fork_server_takes_the_modules_and_they_come_back(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """kill -9 of the fork server kills every module process it forked; each is reported
    crashed (killed by SIGKILL) and restarted by the supervisor, forked by a new fork
    server, and serves calls again."""
    make_module_dir(tmp_path, "testkit", module_id="alpha", permissions={})
    make_module_dir(tmp_path, "testkit", module_id="beta", permissions={})
    async with running_daemon(tmp_path) as daemon:
        assert daemon.forkserver is not None
        old_zygote = daemon.forkserver.pid
        assert old_zygote is not None
        old = {m: daemon.manager.get(m).pid for m in ("alpha", "beta")}
        sub = daemon.bus.subscribe("vessel.module.*", name="test")
        os.kill(old_zygote, signal.SIGKILL)
        # One stream of events: a module may be back before the other is reported.
        crashed: dict[str, Any] = {}
        restarted: dict[str, int] = {}
        with trio.fail_after(20):
            async for event in sub:
                if event.name == "module.crashed":
                    crashed[data(event)["module"]] = data(event)
                elif event.name == "module.restarted":
                    restarted[data(event)["module"]] = data(event)["pid"]
                if len(crashed) == len(restarted) == 2:
                    break
        for module_id in ("alpha", "beta"):
            assert crashed[module_id]["pid"] == old[module_id]
            assert crashed[module_id]["reason"] == "killed by SIGKILL"
        with trio.fail_after(15):
            assert await daemon.forkserver.wait_ready()
        new_zygote = daemon.forkserver.pid
        assert new_zygote not in (None, old_zygote)
        for module_id, pid in restarted.items():
            assert pid != old[module_id]
            assert daemon.manager.state(module_id) is ModuleState.RUNNING
            assert await call(daemon, module_id, "echo", {"back": 1}) == {"back": 1}
            # Forked by the new server, or spawned if the supervisor got there first.
            assert _parent(pid) in (new_zygote, os.getpid())


async def test_without_the_fork_server_modules_are_spawned(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """DaemonConfig(forkserver=False) (vessel serve --no-forkserver): no fork server, each
    module process is a fresh interpreter and a direct child of the daemon."""
    make_module_dir(tmp_path, "testkit", module_id="alpha", permissions={})
    config = DaemonConfig(data_dir=tmp_path, install_bundled=False, policy=FAST, forkserver=False)
    async with open_daemon(config) as daemon:
        assert daemon.forkserver is None
        pid = daemon.manager.get("alpha").pid
        assert pid is not None
        assert _parent(pid) == os.getpid()
        assert "after spawning its process" in _start_line(daemon, "alpha")
        assert await call(daemon, "alpha", "echo", {"ok": 1}) == {"ok": 1}
