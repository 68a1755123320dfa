"""The fork server: real server processes forking real children over real sockets.

The children are the actors test app run as ``python -m tests.actors._child_app`` (and
``tests.actors._exits``); the server preloads ``tests.actors._preloaded``, which records
the pid that imported it. Real clock, timeouts scaled down, every wait bounded.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from actors import (
    CHANNEL_FDS_ENV,
    ChannelBroken,
    ExitInfo,
    ForkServer,
    ProcessSpec,
    launch_forkserver,
    open_forkserver,
    open_process_actor,
)

from ..procs import alive, descendants_of, proc_stat
from ._support import (
    CHILD_APP,
    HERE,
    child_argv,
    child_env,
    decode,
    is_running,
    kid_spec,
    parent_handler,
)

PRELOAD = ("tests.actors._preloaded",)
APP = "tests.actors._child_app"
OWNER = HERE / "_forkserver_owner.py"


def fork_argv(*args: str, module: str = APP) -> list[str]:
    return [sys.executable, "-m", module, *args]


def spec(*flags: str, **overrides: Any) -> ProcessSpec:
    return kid_spec(fork_argv("--name", "kid", *flags), **overrides)


def _collect(lines: list[tuple[str, str]], stream: str, line: str) -> None:
    lines.append((stream, line))


def ppid(pid: int) -> int | None:
    stat = proc_stat(pid)
    return None if stat is None else stat[1]


@pytest.fixture
async def forkserver() -> AsyncIterator[ForkServer]:
    """A ready fork server for the actors test app (its environment is child_env())."""
    async with open_forkserver(PRELOAD, name="test-zygote", env=child_env()) as server:
        with trio.fail_after(30):
            assert await server.wait_ready()
        yield server


async def test_a_server_launched_early_is_adopted() -> None:
    """launch_forkserver starts the server process at once (it imports while its owner is
    still starting); open_forkserver(launched=...) takes it over, with its settings, and
    forks from it. A launch can be handed over only once."""
    launched = launch_forkserver(PRELOAD, name="early-zygote", env=child_env())
    with trio.fail_after(20):
        async with open_forkserver(launched=launched) as server:
            assert server.name == "early-zygote"
            assert await server.wait_ready()
            async with open_process_actor(
                spec(), on_request=parent_handler, forkserver=server
            ) as actor:
                assert actor.forked
                got = decode(await actor.request("introspect", None))
                assert got["preloaded_in"] == server.pid
            with pytest.raises(RuntimeError, match="already handed"):
                async with open_forkserver(launched=launched):
                    pass  # pragma: no cover


async def test_a_forked_child_serves_requests_and_stops_cleanly(forkserver: ForkServer) -> None:
    """A child forked by the server is a child of the server, talks over its channel both
    ways, and stops on request with exit status 0 (no escalation)."""
    with trio.fail_after(10):
        async with open_process_actor(
            spec(), on_request=parent_handler, forkserver=forkserver
        ) as actor:
            assert actor.forked
            assert decode(await actor.request("echo", {"a": [1, 2]})) == {"a": [1, 2]}
            assert decode(await actor.request("pid", None)) == actor.pid
            assert ppid(actor.pid) == forkserver.pid
            assert decode(await actor.request("call_parent", "hi")) == {
                "method": "hello",
                "body": "hi",
            }
            info = await actor.stop()
    assert info == ExitInfo(returncode=0, signal=None, reason="stopped")
    assert forkserver.spawned == 1


async def test_a_signal_the_owner_ignored_stays_ignored_in_forked_children() -> None:
    """A daemon started with SIGINT ignored (nohup, a script's background job) spawns
    children that ignore it too; forked ones must not get Python's Ctrl-C handler
    instead (they did: two e2e tests failed when the suite ran in the background)."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        # The server inherits the disposition when it is executed, at once.
        launched = launch_forkserver(PRELOAD, name="ignoring-zygote", env=child_env())
    finally:
        signal.signal(signal.SIGINT, previous)
    with trio.fail_after(10):
        async with (
            open_forkserver(launched=launched) as server,
            open_process_actor(spec(), on_request=parent_handler, forkserver=server) as child,
        ):
            assert child.forked
            got = decode(await child.request("introspect", None))
    assert got["signals"]["SIGINT"] == str(signal.SIG_IGN)
    assert got["signals"]["SIGTERM"] == str(signal.SIG_DFL)


async def test_the_child_looks_like_python_dash_m(forkserver: ForkServer, tmp_path: Path) -> None:
    """Environment, working directory, argv, sys.path[0], session, signal dispositions,
    stdin and open fds are what `python -m` started by a plain spawn would have; the
    preloaded module comes from the server; ps shows the title and the command line."""
    env = {**child_env(), "FORKED_TEST_VAR": "value ü"}
    forked = spec("--name", "kid", env=env, cwd=str(tmp_path), title="kid-title-too-long")
    plain = spec("--name", "kid", env=env, cwd=str(tmp_path), argv=child_argv("--name", "kid"))
    with trio.fail_after(10):
        async with (
            open_process_actor(forked, on_request=parent_handler, forkserver=forkserver) as one,
            open_process_actor(plain, on_request=parent_handler) as two,
        ):
            assert one.forked
            assert not two.forked
            got = decode(await one.request("introspect", None))
            spawned = decode(await two.request("introspect", None))
    assert got["pid"] == one.pid
    assert got["ppid"] == forkserver.pid
    assert got["sid"] == one.pid  # its own session, like start_new_session
    assert got["argv"] == [str(CHILD_APP), "--name", "kid", "--name", "kid"]
    assert got["orig_argv"] == forked.argv
    assert got["main_file"] == str(CHILD_APP)
    assert got["cwd"] == got["path0"] == str(tmp_path)
    assert got["env"]["FORKED_TEST_VAR"] == "value ü"
    assert CHANNEL_FDS_ENV not in got["env"]
    assert got["env"] == spawned["env"]
    assert got["comm"] == "kid-title-too-l"  # the kernel keeps 15 bytes
    assert got["cmdline"] == [arg.encode() for arg in forked.argv]
    assert got["preloaded_in"] == forkserver.pid
    assert spawned["preloaded_in"] is None  # it imports only what it needs itself
    assert got["signals"] == spawned["signals"]
    assert got["stdin"] == spawned["stdin"] == "/dev/null"
    # Same kinds of fds as a spawned child: nothing of the server's (its socket, its
    # wakeup pipe) leaked into the child.
    assert got["fds"] == spawned["fds"]
    assert got["threads"] == spawned["threads"]


@pytest.mark.parametrize(
    ("args", "returncode", "signum", "stdout", "stderr"),
    [
        (["code", "3"], 3, None, ["buffered", "atexit ran"], None),
        (["code", "0"], 0, None, ["buffered", "atexit ran"], None),
        (["message", "bye"], 1, None, ["buffered", "atexit ran"], "bye"),
        (["raise"], 1, None, ["buffered", "atexit ran"], "RuntimeError: boom"),
        (["interrupt"], None, signal.SIGINT, ["buffered", "atexit ran"], "KeyboardInterrupt"),
    ],
    ids=["exit-3", "exit-0", "exit-message", "exception", "keyboard-interrupt"],
)
async def test_a_forked_child_ends_like_a_spawned_one(
    forkserver: ForkServer,
    args: list[str],
    returncode: int | None,
    signum: int | None,
    stdout: list[str],
    stderr: str | None,
) -> None:
    """SystemExit codes and messages, an uncaught exception (traceback on stderr, status
    1) and KeyboardInterrupt (death by SIGINT) end a forked child exactly as they end a
    spawned one, atexit callbacks run and buffered output is flushed."""
    results: list[tuple[ExitInfo, list[str], list[str]]] = []
    for server in (forkserver, None):
        lines: list[tuple[str, str]] = []
        exits = ProcessSpec(
            name="exits",
            argv=fork_argv(*args, module="tests.actors._exits"),
            env=child_env(),
            on_output=functools.partial(_collect, lines),
        )
        with trio.fail_after(10):
            async with open_process_actor(
                exits, on_request=parent_handler, forkserver=server
            ) as actor:
                assert actor.forked == (server is not None)
                info = await actor.wait()
        assert (info.returncode, info.signal) == (returncode, signum)
        printed = [line for stream, line in lines if stream == "stdout"]
        assert printed == stdout
        errors = [line for stream, line in lines if stream == "stderr"]
        if stderr is None:
            assert errors == []
        else:
            assert errors[-1] == stderr, errors
        # Tracebacks differ in the frames above the module (runpy's), not in the end.
        results.append((info, printed, errors[-1:]))
    assert results[0] == results[1]


async def test_a_missing_module_fails_with_status_1(forkserver: ForkServer) -> None:
    """`-m` of a module that does not exist ends the child with status 1 and the error
    on its stderr, as the interpreter does."""
    lines: list[str] = []
    missing = ProcessSpec(
        name="missing",
        argv=fork_argv(module="tests.actors.no_such_module"),
        env=child_env(),
        on_output=lambda stream, line: lines.append(line),
    )
    with trio.fail_after(10):
        async with open_process_actor(
            missing, on_request=parent_handler, forkserver=forkserver
        ) as actor:
            assert actor.forked
            info = await actor.wait()
    assert info == ExitInfo(1, None, "exited with code 1")
    assert any("No module named tests.actors.no_such_module" in line for line in lines), lines


async def test_exit_statuses_and_kills_are_reported(forkserver: ForkServer) -> None:
    """The server's exit reports reach the actors: an exit code, a SIGKILL sent through
    the pidfd (with our reason), and a SIGTERM by the stop escalation."""
    with trio.fail_after(15):
        async with open_process_actor(
            spec(), on_request=parent_handler, forkserver=forkserver
        ) as exiting:
            await exiting.request("echo", None)
            with pytest.raises(ChannelBroken):
                await exiting.request("exit", 3)
            assert await exiting.wait() == ExitInfo(3, None, "exited with code 3")
        async with open_process_actor(
            spec(), on_request=parent_handler, forkserver=forkserver
        ) as killed:
            await killed.request("echo", None)
            killed.kill("over budget")
            assert await killed.wait() == ExitInfo(None, signal.SIGKILL, "over budget")
            # The exit is known: signalling now must not reach whoever reuses the pid.
            killed.kill("again")
        async with open_process_actor(
            spec("--ignore-stop", stop_timeout=0.3),
            on_request=parent_handler,
            forkserver=forkserver,
        ) as termed:
            await termed.request("echo", None)
            assert await termed.stop() == ExitInfo(None, signal.SIGTERM, "stopped")


async def test_output_lines_arrive(forkserver: ForkServer) -> None:
    """A forked child's stdout and stderr reach on_output line by line, through the pipes
    the server dup2'ed to its fds 1 and 2."""
    lines: list[tuple[str, str]] = []
    script = [["stdout", "hello\nworld\n"], ["stderr", "oops\n"], ["stdout", "end"]]
    with trio.fail_after(10):
        async with open_process_actor(
            spec(on_output=lambda stream, line: lines.append((stream, line))),
            on_request=parent_handler,
            forkserver=forkserver,
        ) as actor:
            await actor.request("print", script)
    assert [line for line in lines if line[0] == "stdout"] == [
        ("stdout", "hello"),
        ("stdout", "world"),
        ("stdout", "end"),
    ]
    assert [line for line in lines if line[0] == "stderr"] == [("stderr", "oops")]


async def test_a_child_that_ignores_stop_and_sigterm_is_sigkilled(
    forkserver: ForkServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Stop escalation works on forked children: ignoring the stop request and SIGTERM
    (delivered through the pidfd) ends in SIGKILL with a warning."""
    with trio.fail_after(10):
        async with open_process_actor(
            spec("--ignore-stop", "--ignore-sigterm", stop_timeout=0.3, term_timeout=0.3),
            on_request=parent_handler,
            forkserver=forkserver,
        ) as actor:
            await actor.request("echo", None)
            with caplog.at_level(logging.WARNING, logger="actors"):
                info = await actor.stop("shutting down")
    assert info == ExitInfo(None, signal.SIGKILL, "shutting down")
    assert "SIGKILL" in caplog.text


async def test_concurrent_spawns(forkserver: ForkServer) -> None:
    """Several actors started at once are all forked, each with its own channel."""
    pids: dict[int, int] = {}

    async def one(index: int) -> None:
        async with open_process_actor(
            spec(), on_request=parent_handler, forkserver=forkserver
        ) as actor:
            assert actor.forked
            pids[index] = decode(await actor.request("pid", None))
            assert pids[index] == actor.pid

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            for index in range(6):
                nursery.start_soon(one, index)
    assert len(set(pids.values())) == 6


async def test_a_sigkilled_forkserver_takes_its_children_and_is_restarted(
    forkserver: ForkServer, tracked_pids: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    """Killing the server kills every child it forked (PR_SET_PDEATHSIG): their actors
    report SIGKILL at once; the server is restarted and the next child is forked by the
    new one."""
    old = forkserver.pid
    assert old is not None
    with trio.fail_after(20):
        async with (
            open_process_actor(spec(), on_request=parent_handler, forkserver=forkserver) as a,
            open_process_actor(spec(), on_request=parent_handler, forkserver=forkserver) as b,
        ):
            await a.request("echo", None)
            await b.request("echo", None)
            # Re-parented to us (the suite is a child subreaper) once the server is gone.
            tracked_pids.extend([old, a.pid, b.pid])
            os.kill(old, signal.SIGKILL)
            assert await a.wait() == ExitInfo(None, signal.SIGKILL, "killed by SIGKILL")
            assert await b.wait() == ExitInfo(None, signal.SIGKILL, "killed by SIGKILL")
        assert not is_running(a.pid)
        assert not is_running(b.pid)
        assert await forkserver.wait_ready()
        assert forkserver.pid not in (None, old)
        assert forkserver.restarts == 1
        async with open_process_actor(
            spec(), on_request=parent_handler, forkserver=forkserver
        ) as c:
            assert c.forked
            assert decode(await c.request("echo", "again")) == "again"
            assert ppid(c.pid) == forkserver.pid
    assert f"test-zygote (pid {old}) ended" in caplog.text


async def test_with_no_restarts_left_children_are_spawned_plainly(
    tracked_pids: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    """Once the server has died more often than it may be restarted, spawns fall back to
    the plain way, with a log line: a child never fails to start for want of a server."""
    with trio.fail_after(20):
        async with open_forkserver(
            PRELOAD, name="fragile", env=child_env(), max_restarts=0
        ) as server:
            assert await server.wait_ready()
            dead = server.pid
            assert dead is not None
            tracked_pids.append(dead)
            os.kill(dead, signal.SIGKILL)
            with caplog.at_level(logging.INFO, logger="actors"):
                async with open_process_actor(
                    spec(), on_request=parent_handler, forkserver=server
                ) as actor:
                    assert not actor.forked
                    assert ppid(actor.pid) == os.getpid()
                    assert decode(await actor.request("echo", 1)) == 1
            assert server.pid is None
    assert "fragile gave up after 1 failures" in caplog.text
    assert "kid: fork server unavailable" in caplog.text


async def test_a_preload_that_starts_a_thread_is_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A server whose preloads leave a second thread running refuses to fork (it could
    hand a child a lock held by a thread that does not exist there); children are then
    spawned the plain way."""
    with trio.fail_after(20):
        async with open_forkserver(
            ["tests.actors._starts_thread"], name="threaded", env=child_env()
        ) as server:
            assert not await server.wait_ready()
            async with open_process_actor(
                spec(), on_request=parent_handler, forkserver=server
            ) as actor:
                assert not actor.forked
                assert decode(await actor.request("echo", 1)) == 1
    assert "refusing to fork: 2 threads after the preloads" in caplog.text


async def test_a_failed_preload_is_logged_and_not_fatal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A preload that cannot be imported is a warning; the server serves anyway."""
    with trio.fail_after(20):
        async with open_forkserver(
            ["tests.actors.no_such_preload", *PRELOAD], name="partial", env=child_env()
        ) as server:
            assert await server.wait_ready()
            async with open_process_actor(
                spec(), on_request=parent_handler, forkserver=server
            ) as actor:
                assert actor.forked
                got = decode(await actor.request("introspect", None))
    assert got["preloaded_in"] == got["ppid"]
    assert "preload 'tests.actors.no_such_preload' failed" in caplog.text


async def test_commands_a_fork_cannot_reproduce_are_spawned(forkserver: ForkServer) -> None:
    """Only `[<the server's python>, -m, module, ...]` with the server's interpreter-start
    environment is forked: a script path, interpreter options, another interpreter or a
    different PYTHON* variable is spawned the plain way."""
    env = child_env()
    assert forkserver.accepts(fork_argv("--x"), env)
    assert not forkserver.accepts(child_argv(), env)
    assert not forkserver.accepts([sys.executable, "-u", "-m", APP], env)
    assert not forkserver.accepts(["/usr/bin/python3", "-m", APP], env)
    assert not forkserver.accepts([sys.executable, "-m"], env)
    assert not forkserver.accepts(fork_argv(), {**env, "PYTHONHASHSEED": "1"})
    assert not forkserver.accepts(fork_argv(), {**env, "LC_ALL": "C"})
    with trio.fail_after(10):
        async with open_process_actor(
            spec(env={**env, "PYTHONHASHSEED": "1"}),
            on_request=parent_handler,
            forkserver=forkserver,
        ) as actor:
            assert not actor.forked
            got = decode(await actor.request("introspect", None))
    assert got["ppid"] == os.getpid()
    assert got["env"]["PYTHONHASHSEED"] == "1"


async def test_closing_the_server_kills_the_children_it_still_has() -> None:
    """Leaving open_forkserver with a child still running: the server SIGKILLs it and
    reports it before it exits, so the process object knows how it ended."""
    # The child's channel: we hold the other ends, so it waits for us forever.
    to_child, from_us = os.pipe()
    to_us, from_child = os.pipe()
    try:
        with trio.fail_after(15):
            async with open_forkserver(PRELOAD, name="closing", env=child_env()) as server:
                process = await server.spawn(
                    fork_argv("--name", "lingering"),
                    env={**child_env(), CHANNEL_FDS_ENV: "3,4"},
                    cwd=os.getcwd(),
                    title="lingering",
                    pass_fds=[to_child, from_child],
                )
                assert process.returncode is None
                server_pid = server.pid
            assert process.returncode == -signal.SIGKILL
            assert await process.wait() == -signal.SIGKILL
            for stream in (process.stdout, process.stderr):
                await stream.aclose()
    finally:
        for fd in (to_child, from_us, to_us, from_child):
            os.close(fd)
    assert server_pid is not None
    assert not is_running(server_pid)
    assert not is_running(process.pid)


async def test_when_the_owner_is_sigkilled_nothing_survives(tracked_pids: list[int]) -> None:
    """The owner of a fork server dies without any cleanup (SIGKILL): the server sees the
    end of its socket (and PR_SET_PDEATHSIG fires), and the server and every child it
    forked are gone: no orphans."""
    with trio.fail_after(30):
        owner = await trio.lowlevel.open_process(
            [sys.executable, str(OWNER)], stdout=subprocess.PIPE, env=child_env()
        )
        assert owner.stdout is not None
        try:
            output = b""
            while not output.endswith(b"\n"):
                chunk = await owner.stdout.receive_some()
                assert chunk, "the owner exited before reporting its processes"
                output += chunk
            server, *children = (int(pid) for pid in output.split())
            below = descendants_of(owner.pid)
            tracked_pids.extend(pid for pid, _ in below)
            assert {pid for pid, _ in below} == {server, *children}
            assert {ppid(child) for child in children} == {server}
            owner.kill()
            await owner.wait()
        finally:
            with trio.CancelScope(shield=True):
                owner.kill()
                await owner.wait()
                await owner.stdout.aclose()
        # Nothing announces the end of processes that are not our children: poll.
        while alive(below):
            await trio.sleep(0.02)
