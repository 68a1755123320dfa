"""A module runs in its own process, talks to the bus, and survives its own failures."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.fixture_types import MakeModuleDir
from vessel._errors import CallError
from vessel._manager import ModuleState
from vessel._manifest import compute_hash, write_hash_file
from vessel._storage import Storage

from .harness import (
    FAST,
    call,
    call_error,
    data,
    lifecycle,
    next_event,
    running_daemon,
    wait_until,
)

ALL_BUS = {"subscribe": ["*"], "storage": True, "timers": True}


async def test_module_runs_in_its_own_process_and_emits(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """on-load runs in a child process (its pid is not ours); an emitted event reaches a bus
    subscriber stamped with the module's own id; guest stdout lands in the module log."""
    make_module_dir(tmp_path, "testkit", module_id="alpha", permissions=ALL_BUS)
    async with running_daemon(tmp_path) as daemon:
        assert daemon.manager.state("alpha") is ModuleState.RUNNING
        pid = daemon.manager.get("alpha").pid
        assert pid is not None
        assert pid != os.getpid()
        assert Path(f"/proc/{pid}").exists()
        sub = daemon.bus.subscribe("alpha.*", name="test")
        await call(daemon, "alpha", "emit", {"name": "hello", "data": {"x": 1}})
        event = await next_event(sub, lambda e: e.name == "hello")
        assert event.module == "alpha"
        assert data(event) == {"x": 1}
        logs = [line.message for line in daemon.manager.logs("alpha")]
        assert "testkit loaded" in logs
        assert "testkit stdout line" in logs


async def test_glob_filtering_delivers_only_matching_events(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """A subscription for `alpha.door.*` gets door events and nothing else."""
    make_module_dir(tmp_path, "testkit", module_id="alpha", permissions=ALL_BUS)
    async with running_daemon(tmp_path) as daemon:
        sub = daemon.bus.subscribe("alpha.door.*", name="test")
        for name in ("light.on", "door.open", "window.open", "door.closed"):
            await call(daemon, "alpha", "emit", {"name": name, "data": name})
        await call(daemon, "alpha", "emit", {"name": "door.last", "data": None})
        got = [(await next_event(sub, lambda e: True)).name for _ in range(3)]
        # door.last is a barrier: nothing unmatched was queued before it.
        assert got == ["door.open", "door.closed", "door.last"]


async def test_module_receives_subscribed_events(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """A module that subscribes gets matching events in on-event, and only those."""
    make_module_dir(tmp_path, "testkit", module_id="alpha", permissions={"subscribe": ["beta.*"]})
    make_module_dir(tmp_path, "testkit", module_id="beta", permissions={})
    async with running_daemon(tmp_path) as daemon:
        await call(daemon, "alpha", "subscribe", {"pattern": "beta.*"})
        await call(daemon, "beta", "emit", {"name": "ping", "data": 1})
        await call(daemon, "beta", "emit", {"name": "pong", "data": 2})

        async def received() -> list[Any]:
            events: list[Any] = (await call(daemon, "alpha", "events"))["events"]
            return events

        with trio.fail_after(15):
            while len(events := await received()) < 2:
                await trio.sleep(0.02)
        assert [(m, n) for m, n, _ in events] == [("beta", "ping"), ("beta", "pong")]


async def test_trap_fails_one_call_and_the_next_succeeds(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """A trap in on-command is an error for that call only; the instance is replaced and
    the next call is served by the same process."""
    make_module_dir(tmp_path, "testkit", module_id="alpha", permissions={})
    async with running_daemon(tmp_path) as daemon:
        pid = daemon.manager.get("alpha").pid
        error = await call_error(daemon, "alpha", "trap")
        assert error.code == "module_error"
        assert "trapped" in error.message
        assert await call(daemon, "alpha", "echo", {"a": 1}) == {"a": 1}
        assert daemon.manager.get("alpha").pid == pid


async def test_guest_error_is_module_error_not_trap(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """An Err returned by the guest is passed to the caller verbatim."""
    make_module_dir(tmp_path, "testkit", module_id="alpha", permissions={})
    async with running_daemon(tmp_path) as daemon:
        error = await call_error(daemon, "alpha", "fail")
        assert (error.code, error.message) == ("module_error", "deliberate failure")
        unknown = await call_error(daemon, "alpha", "no-such-command")
        assert unknown.code == "unknown_command"


def _cpu_seconds(pid: int) -> float:
    """CPU time ``pid`` has used so far (user and system), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


#: The spinner's deadline, long beside a healthy module's answer (milliseconds on any
#: machine, busy or not): the neighbour has all of it to answer while the loop runs.
SPIN_DEADLINE_MS = 1500


async def test_infinite_loop_hits_deadline_while_neighbour_answers(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """An infinite loop fails by its deadline; another module answers while it spins."""
    make_module_dir(
        tmp_path,
        "testkit",
        module_id="spinner",
        permissions={},
        limits={"invocation_timeout_ms": SPIN_DEADLINE_MS},
    )
    make_module_dir(tmp_path, "testkit", module_id="healthy", permissions={})
    async with running_daemon(tmp_path) as daemon:
        pid = daemon.manager.get("spinner").pid
        assert pid is not None
        n = answered = 0
        with trio.fail_after(10):
            idle = _cpu_seconds(pid)
            spin = daemon.manager.begin_call("spinner", "loop", 1, "{}")
            # The loop is running once its process has used CPU time for it (nothing
            # announces that: look); it has most of its deadline still to go.
            while _cpu_seconds(pid) - idle < 0.05:
                await trio.sleep(0.01)
            async with trio.open_nursery() as nursery:
                result: list[CallError] = []

                async def spinner() -> None:
                    try:
                        await spin
                    except CallError as exc:
                        result.append(exc)

                nursery.start_soon(spinner)
                while not result:
                    assert await call(daemon, "healthy", "echo", {"n": n}) == {"n": n}
                    n += 1
                    if not result:  # answered while the loop's call is still unanswered
                        answered += 1
        assert "deadline exceeded" in result[0].message
        assert answered >= 1
        assert await call(daemon, "spinner", "echo", {}) == {}


async def test_allocation_loop_is_stopped_by_memory_limit(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """Allocating without bound hits limits.memory_mb: that call fails, the module lives."""
    make_module_dir(tmp_path, "testkit", module_id="hog", permissions={}, limits={"memory_mb": 64})
    async with running_daemon(tmp_path) as daemon:
        pid = daemon.manager.get("hog").pid
        error = await call_error(daemon, "hog", "alloc")
        assert error.code == "module_error"
        assert "trapped" in error.message
        assert await call(daemon, "hog", "echo", {"ok": True}) == {"ok": True}
        assert daemon.manager.get("hog").pid == pid


async def test_kill_9_restarts_with_backoff_and_lifecycle_events(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """SIGKILL of a module process: crashed → restarting (with a delay) → restarted with a
    new pid, and it serves calls again."""
    make_module_dir(tmp_path, "testkit", module_id="alpha", permissions={})
    async with running_daemon(tmp_path) as daemon:
        sub = daemon.bus.subscribe("vessel.module.*", name="test")
        old = daemon.manager.get("alpha").pid
        assert old is not None
        os.kill(old, signal.SIGKILL)
        crashed = await next_event(sub, lifecycle("crashed", "alpha"))
        assert data(crashed)["pid"] == old
        restarting = await next_event(sub, lifecycle("restarting", "alpha"))
        assert data(restarting)["delay"] > 0
        restarted = await next_event(sub, lifecycle("restarted", "alpha"))
        assert restarted.timestamp >= crashed.timestamp
        new = data(restarted)["pid"]
        assert new not in (None, old)
        assert await call(daemon, "alpha", "echo", {"back": 1}) == {"back": 1}


async def test_crash_loop_ends_in_failed_and_neighbours_are_untouched(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """A module whose on-load always traps is restarted up to the intensity, then marked
    failed; the healthy module beside it keeps its process and answers."""
    make_module_dir(tmp_path, "testkit", module_id="broken", permissions={"storage": True})
    make_module_dir(tmp_path, "testkit", module_id="healthy", permissions={})
    with Storage.open(tmp_path / "vessel.db") as storage:
        storage.set("broken", "on_load", "trap", quota_bytes=1 << 20)
    # The intensity counted over a period longer than the test may run (its watchdog
    # stops it after 120 s): every restart counts, however slowly the machine starts one.
    policy = dataclasses.replace(FAST, period=600.0)
    async with running_daemon(tmp_path, policy=policy) as daemon:
        sub = daemon.bus.subscribe("vessel.module.*", name="test", replay=False)
        healthy_pid = daemon.manager.get("healthy").pid
        failed = await next_event(sub, lifecycle("failed", "broken"), timeout=30)
        assert "on-load" in data(failed)["reason"] or "trapped" in data(failed)["reason"]
        assert daemon.manager.state("broken") is ModuleState.FAILED
        error = await call_error(daemon, "broken", "echo")
        assert error.code == "module_unavailable"
        assert daemon.manager.get("healthy").pid == healthy_pid
        assert await call(daemon, "healthy", "echo", {"x": 1}) == {"x": 1}


async def test_storage_survives_module_and_daemon_restart(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """A value stored by a module is there after its process is restarted and after the
    whole daemon is restarted."""
    make_module_dir(tmp_path, "testkit", module_id="alpha", permissions={"storage": True})
    async with running_daemon(tmp_path) as daemon:
        await call(daemon, "alpha", "storage_set", {"key": "greeting", "value": "hi"})
        await daemon.manager.restart("alpha")
        await wait_until(lambda: daemon.manager.state("alpha") is ModuleState.RUNNING)
        assert await call(daemon, "alpha", "storage_get", {"key": "greeting"}) == {"value": "hi"}
    async with running_daemon(tmp_path) as daemon:
        assert await call(daemon, "alpha", "storage_get", {"key": "greeting"}) == {"value": "hi"}
        await call(daemon, "alpha", "storage_delete", {"key": "greeting"})
        assert await call(daemon, "alpha", "storage_get", {"key": "greeting"}) == {"value": None}


async def test_disabled_state_persists_across_daemon_restart(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """A disabled module stays disabled (no process) after the daemon restarts."""
    make_module_dir(tmp_path, "testkit", module_id="alpha", permissions={})
    async with running_daemon(tmp_path) as daemon:
        await daemon.manager.disable("alpha")
        assert daemon.manager.state("alpha") is ModuleState.DISABLED
    async with running_daemon(tmp_path) as daemon:
        assert daemon.manager.state("alpha") is ModuleState.DISABLED
        assert (await call_error(daemon, "alpha", "echo")).code == "module_unavailable"
        await daemon.manager.enable("alpha")
        await wait_until(lambda: daemon.manager.state("alpha") is ModuleState.RUNNING)
        assert await call(daemon, "alpha", "echo", {"on": 1}) == {"on": 1}


# A compile runs at a low priority: beside busy loops on every CPU it took 100 s here.
@pytest.mark.watchdog(900)
async def test_a_module_is_compiled_before_it_starts_and_then_loaded(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """A module folder without compiled code is compiled first, in a process of its own
    (vessel/_compiler.py), in a state of its own: its start timeout covers loading only,
    so a compile that takes far longer than that (a real ~18 MiB component, a 5 s start
    timeout) starts it without a crash or a restart. The next start loads the artifact
    without compiling (and so without writing it again)."""
    module_dir = make_module_dir(tmp_path, "testkit", module_id="alpha", permissions={})
    shutil.rmtree(module_dir / "compiled")
    async with running_daemon(tmp_path, start_timeout=5.0, wait_for_modules=False) as daemon:
        sub = daemon.bus.subscribe("vessel.module.*", name="test")
        await next_event(sub, lifecycle("compiling", "alpha"))
        assert daemon.manager.describe("alpha")["state"] == "compiling"
        assert daemon.manager.describe("alpha")["compiling_for"] >= 0
        # Fifty times what it takes on an idle machine: a compile gives way to all else.
        started = await next_event(sub, lifecycle("started", "alpha"), timeout=600)
        assert json.loads(started.data)["restarts"] == 0
        assert daemon.manager.describe("alpha")["compiling_for"] is None
        (artifact,) = (module_dir / "compiled").glob("*.cwasm")
        written = artifact.stat()
        await daemon.manager.restart("alpha")
        await wait_until(lambda: daemon.manager.state("alpha") is ModuleState.RUNNING)
        again = artifact.stat()
        assert (again.st_ino, again.st_mtime_ns, again.st_size) == (
            written.st_ino,
            written.st_mtime_ns,
            written.st_size,
        )
        assert await call(daemon, "alpha", "echo", {"ok": 1}) == {"ok": 1}


async def test_a_component_that_cannot_be_compiled_fails_once_with_the_reason(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """Bytes that are no component (dropped into the data dir, so no installer checked
    them) are refused by the compile, once: the module is failed with the reason, not
    restarted in a loop, and the others run."""
    module_dir = make_module_dir(tmp_path, "testkit", module_id="broken", permissions={})
    make_module_dir(tmp_path, "testkit", module_id="healthy", permissions={})
    shutil.rmtree(module_dir / "compiled")
    wasm = b"\0asm\x0d\0\x01\0not a component"
    (module_dir / "module.wasm").write_bytes(wasm)
    write_hash_file(module_dir, compute_hash((module_dir / "manifest.json").read_bytes(), wasm))
    async with running_daemon(tmp_path) as daemon:
        info = daemon.manager.describe("broken")
        assert info["state"] == "failed"
        assert "not a valid WebAssembly component" in info["last_reason"]
        assert info["restarts"] == 0
        assert await call(daemon, "healthy", "echo", {"ok": 1}) == {"ok": 1}


async def test_storage_quota_is_enforced(tmp_path: Path, make_module_dir: MakeModuleDir) -> None:
    """A write past limits.storage_quota_kb is refused with a message naming the quota;
    what was stored before stays, and deleting frees room again."""
    make_module_dir(
        tmp_path,
        "testkit",
        module_id="alpha",
        permissions={"storage": True},
        limits={"storage_quota_kb": 4},
    )
    async with running_daemon(tmp_path) as daemon:
        await call(daemon, "alpha", "storage_set", {"key": "a", "value": "x" * 3000})
        error = await call_error(daemon, "alpha", "storage_set", {"key": "b", "value": "y" * 3000})
        assert "quota" in error.message
        assert await call(daemon, "alpha", "storage_get", {"key": "b"}) == {"value": None}
        await call(daemon, "alpha", "storage_delete", {"key": "a"})
        await call(daemon, "alpha", "storage_set", {"key": "b", "value": "y" * 3000})
