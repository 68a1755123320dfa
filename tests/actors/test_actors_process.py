"""Process actors: real child processes over real pipes.

The helper child is ``_child_app.py``; these tests use the real clock (a fake clock would
jump ahead while we wait on a real process) with timeouts scaled down.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from typing import Any

import msgspec
import pytest
import trio

from actors import (
    MAX_OUTPUT_LINE,
    ChannelBroken,
    ExitInfo,
    ProcessActor,
    ProcessSpec,
    RemoteError,
    SpawnError,
    open_process_actor,
)

from ._support import (
    INTERMEDIATE_PARENT,
    child_argv,
    child_env,
    decode,
    is_running,
    kid_spec,
    parent_handler,
)


def spec(*flags: str, **overrides: Any) -> ProcessSpec:
    return kid_spec(child_argv("--name", "kid", *flags), **overrides)


async def test_request_reply_with_a_child_and_clean_stop() -> None:
    """A child serves requests over the pipes; stop() asks it politely, it exits 0 well
    before any escalation, and it is reaped."""
    with trio.fail_after(10):
        async with open_process_actor(spec(), on_request=parent_handler) as actor:
            assert decode(await actor.request("echo", {"a": [1, 2]})) == {"a": [1, 2]}
            assert decode(await actor.request("pid", None)) == actor.pid
            info = await actor.stop()
    # Exit status 0 and no signal: it left on its own, before any SIGTERM.
    assert info == ExitInfo(returncode=0, signal=None, reason="stopped")
    assert actor.exit_info == info
    assert await actor.stop("again") == info
    assert "exited: stopped" in repr(actor)


async def test_child_can_call_the_parent() -> None:
    """Requests flow both ways: the child's request reaches the parent's on_request."""
    with trio.fail_after(10):
        async with open_process_actor(spec(), on_request=parent_handler) as actor:
            reply = decode(await actor.request("call_parent", "ping"))
    assert reply == {"method": "hello", "body": "ping"}


async def test_request_timeout_leaves_the_child_usable() -> None:
    """A request that outlives its timeout raises TooSlowError; the child's late reply,
    when it comes, is dropped, and the next request gets its own answer."""
    # No heartbeat in the test's time: the late reply is the one frame the child sends
    # that nobody asked for (any more).
    quiet = spec(heartbeat_interval=3600.0)
    with trio.fail_after(10):
        async with open_process_actor(quiet, on_request=parent_handler) as actor:
            assert decode(await actor.request("echo", "before")) == "before"
            received = actor.channel.statistics().frames_received
            with pytest.raises(trio.TooSlowError):
                await actor.request("sleep", 0.3, timeout=0.05)
            # Nothing announces a dropped reply: look until it has come (bounded above).
            while actor.channel.statistics().frames_received == received:
                await trio.sleep(0.01)
            assert actor.channel.statistics().pending_requests == 0
            assert decode(await actor.request("echo", "after")) == "after"


async def test_remote_error_names_type_and_actor() -> None:
    """An exception in the child's handler arrives as RemoteError('ValueError in kid: …')."""
    with trio.fail_after(10):
        async with open_process_actor(spec(), on_request=parent_handler) as actor:
            with pytest.raises(RemoteError, match=r"^ValueError in kid: nope$"):
                await actor.request("raise", "nope")


async def test_output_lines_are_captured_and_truncated() -> None:
    """Each stdout/stderr line reaches on_output, tagged by stream; an over-long line is
    cut at MAX_OUTPUT_LINE bytes and does not bleed into the next one."""
    lines: list[tuple[str, str]] = []
    long_line = "x" * (MAX_OUTPUT_LINE + 10_000)
    script = [["stdout", "hello\nworld\n"], ["stderr", "oops\n"], ["stdout", long_line + "\nend"]]
    with trio.fail_after(10):
        async with open_process_actor(
            spec(on_output=lambda stream, line: lines.append((stream, line))),
            on_request=parent_handler,
        ) as actor:
            await actor.request("print", script)
    assert [line for line in lines if line[0] == "stderr"] == [("stderr", "oops")]
    assert [line for line in lines if line[0] == "stdout"] == [
        ("stdout", "hello"),
        ("stdout", "world"),
        ("stdout", "x" * MAX_OUTPUT_LINE),
        ("stdout", "end"),
    ]


async def test_child_exit_mid_request_fails_it_with_channel_broken() -> None:
    """A child that dies while a request is in flight fails that request promptly with
    ChannelBroken, and wait() reports its exit code."""
    with trio.fail_after(10):
        async with open_process_actor(spec(), on_request=parent_handler) as actor:
            with pytest.raises(ChannelBroken):
                await actor.request("exit", 3)
            info = await actor.wait()
            with pytest.raises(ChannelBroken):
                await actor.request("echo", 1)
    assert info == ExitInfo(returncode=3, signal=None, reason="exited with code 3")


async def test_a_child_that_dies_at_once_is_reported_not_raised() -> None:
    """A child that exits before its channel even starts (a bad command line) yields an
    actor whose wait() reports the exit and whose requests fail with ChannelBroken."""
    dead_on_arrival = ProcessSpec(name="doa", argv=[sys.executable, "-c", "raise SystemExit(4)"])
    with trio.fail_after(10):
        async with open_process_actor(dead_on_arrival, on_request=parent_handler) as actor:
            info = await actor.wait()
            with pytest.raises(ChannelBroken):
                await actor.request("echo", None)
    assert info == ExitInfo(returncode=4, signal=None, reason="exited with code 4")


async def test_stop_escalates_to_sigterm(caplog: pytest.LogCaptureFixture) -> None:
    """A child that ignores the stop request is sent SIGTERM after stop_timeout."""
    with trio.fail_after(10):
        async with open_process_actor(
            spec("--ignore-stop", stop_timeout=0.5), on_request=parent_handler
        ) as actor:
            await actor.request("echo", None)  # The child's signal setup is done.
            start = trio.current_time()
            info = await actor.stop()
            elapsed = trio.current_time() - start
    assert info == ExitInfo(returncode=None, signal=signal.SIGTERM, reason="stopped")
    assert elapsed >= 0.5
    assert "SIGKILL" not in caplog.text


async def test_stop_escalates_to_sigkill_with_warning(caplog: pytest.LogCaptureFixture) -> None:
    """A child that ignores both the stop request and SIGTERM is SIGKILLed, with a
    warning logged, and still reaped."""
    with trio.fail_after(10):
        async with open_process_actor(
            spec("--ignore-stop", "--ignore-sigterm", stop_timeout=0.3, term_timeout=0.3),
            on_request=parent_handler,
        ) as actor:
            await actor.request("echo", None)
            with caplog.at_level(logging.WARNING, logger="actors"):
                info = await actor.stop("shutting down")
    assert info == ExitInfo(returncode=None, signal=signal.SIGKILL, reason="shutting down")
    assert "SIGKILL" in caplog.text


async def test_leaving_the_block_stops_the_child_even_when_cancelled() -> None:
    """Cancellation of the block still runs the full stop (shielded): the child gets the
    stop request, exits cleanly, and is reaped before the block is left."""
    with trio.fail_after(10):
        with trio.move_on_after(0.5):
            async with open_process_actor(spec(), on_request=parent_handler) as actor:
                await actor.request("echo", None)
                await trio.sleep_forever()
    assert actor.exit_info == ExitInfo(returncode=0, signal=None, reason="stopped")


async def test_an_error_in_the_block_propagates_unwrapped() -> None:
    """The caller's own exception comes out as itself (not an ExceptionGroup), after the
    child has been stopped."""
    actors: list[ProcessActor] = []

    async def fail_inside() -> None:
        async with open_process_actor(spec(), on_request=parent_handler) as actor:
            actors.append(actor)
            await actor.request("echo", None)
            raise KeyError("mine")

    with trio.fail_after(10), pytest.raises(KeyError):
        await fail_inside()
    assert actors[0].exit_info is not None


async def test_heartbeat_timeout_kills_a_child_whose_loop_is_blocked() -> None:
    """A child whose event loop is stuck cannot answer pings: it is SIGKILLed with reason
    'heartbeat timeout' and the request it was blocked in fails with ChannelBroken."""
    interval, timeout = 0.2, 1.0
    with trio.fail_after(10):
        async with open_process_actor(
            spec(heartbeat_interval=interval, heartbeat_timeout=timeout),
            on_request=parent_handler,
        ) as actor:
            start = trio.current_time()
            with pytest.raises(ChannelBroken):
                await actor.request("block", None)
            info = await actor.wait()
            elapsed = trio.current_time() - start
    # The child never unblocks by itself: only the heartbeat saw it, by the first ping
    # after the block (interval + timeout), here with four times that for a busy machine.
    assert info == ExitInfo(returncode=None, signal=signal.SIGKILL, reason="heartbeat timeout")
    assert elapsed < 4 * (interval + timeout), elapsed


async def test_garbage_on_the_channel_gets_the_child_killed() -> None:
    """A child that writes an undecodable frame is broken: it is ended with a
    'protocol error' reason and its pending requests fail with ChannelBroken. (Whether
    our SIGKILL or its own exit on seeing the channel close gets there first is a race.)"""
    with trio.fail_after(10):
        async with open_process_actor(spec(), on_request=parent_handler) as actor:
            with pytest.raises(ChannelBroken):
                await actor.request("garbage", None)
            info = await actor.wait()
    assert info.reason.startswith("protocol error: undecodable frame")


async def test_what_a_child_wrote_before_it_exited_is_still_handled() -> None:
    """A child that notifies and exits at once (a module that emits, then crashes): its
    exit may be noticed before its last frames are read, and they are handled all the
    same, in order."""
    got: list[int] = []

    async def on_notify(method: str, body: msgspec.Raw) -> None:
        got.append(decode(body))

    with trio.fail_after(10):
        async with open_process_actor(
            spec(), on_request=parent_handler, on_notify=on_notify
        ) as actor:
            with pytest.raises(ChannelBroken):
                await actor.request("notify_and_exit", 3000)
            info = await actor.wait()
    assert info.returncode == 0
    assert got == list(range(3000))


async def test_a_child_that_hangs_up_but_lives_on_is_killed() -> None:
    """A child that closes its channel but keeps running can no longer be reached: after
    stop_timeout it is killed rather than left running unsupervised."""
    with trio.fail_after(10):
        async with open_process_actor(spec(stop_timeout=0.3), on_request=parent_handler) as actor:
            with pytest.raises(ChannelBroken):
                await actor.request("close_channel", None)
            info = await actor.wait()
    assert info == ExitInfo(None, signal.SIGKILL, "channel closed by the child")


async def test_kill_records_the_reason() -> None:
    """kill(reason) ends the child at once and wait() reports that reason."""
    with trio.fail_after(10):
        async with open_process_actor(spec(), on_request=parent_handler) as actor:
            await actor.request("echo", None)
            assert f"pid={actor.pid} running" in repr(actor)
            actor.kill("over memory budget")
            info = await actor.wait()
    assert info == ExitInfo(returncode=None, signal=signal.SIGKILL, reason="over memory budget")


async def test_spawn_error_for_a_missing_executable() -> None:
    """A command that cannot be started raises SpawnError naming it, and leaks no fds."""
    fds_before = set(os.listdir("/proc/self/fd"))
    with trio.fail_after(5), pytest.raises(SpawnError, match="no-such-binary"):
        async with open_process_actor(
            ProcessSpec(name="x", argv=["/nonexistent/no-such-binary"]),
            on_request=parent_handler,
        ):
            pass  # pragma: no cover
    assert set(os.listdir("/proc/self/fd")) == fds_before


async def test_child_exits_when_its_parent_is_sigkilled(tracked_pids: list[int]) -> None:
    """A child whose parent dies without any cleanup (SIGKILL) notices the closed pipe and
    exits by itself: no orphan outlives the daemon."""
    with trio.fail_after(15):
        parent = await trio.lowlevel.open_process(
            [sys.executable, str(INTERMEDIATE_PARENT)],
            stdout=subprocess.PIPE,
            env=child_env(),
        )
        assert parent.stdout is not None
        try:
            output = b""
            while not output.endswith(b"\n"):
                chunk = await parent.stdout.receive_some()
                assert chunk, "intermediate parent exited before reporting its child"
                output += chunk
            grandchild = int(output)
            tracked_pids.append(grandchild)
            assert is_running(grandchild)
            parent.kill()
            await parent.wait()
        finally:
            with trio.CancelScope(shield=True):
                parent.kill()
                await parent.wait()
                await parent.stdout.aclose()
        # No event announces the death of a process that is not our child: poll, briefly,
        # under fail_after.
        while is_running(grandchild):
            await trio.sleep(0.02)
