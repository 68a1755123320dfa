"""defer-reply / complete-reply: a command answered later, without blocking the module."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.fixture_types import MakeModuleDir
from vessel._errors import CallError

from .harness import call, call_error, running_daemon

TIMERS = {"timers": True}


async def test_deferred_reply_arrives_and_module_keeps_serving(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """A command answered later returns what complete-reply gave; while deferred replies
    are pending (one of them never completed) the module answers other calls: its
    mailbox is not blocked."""
    make_module_dir(tmp_path, "testkit", module_id="alpha", permissions=TIMERS)
    async with running_daemon(tmp_path) as daemon:
        manager = daemon.manager
        with trio.fail_after(10):
            # On their way before the echoes, on the one lane the guest takes commands
            # from in order: both are deferred before the first echo is looked at.
            never = manager.begin_call("alpha", "defer", 1, json.dumps({"never": True}))
            later = manager.begin_call(
                "alpha", "defer", 1, json.dumps({"after_ms": 50, "reply": {"n": 7}})
            )
            for i in range(3):
                assert await call(daemon, "alpha", "echo", {"i": i}) == {"i": i}
            assert json.loads(await later) == {"n": 7}
            with trio.CancelScope() as given_up:
                given_up.cancel()  # nobody waits for the one never completed
                await never


async def test_deferred_error_reaches_the_caller(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """complete-reply with err() fails the original call with that message."""
    make_module_dir(tmp_path, "testkit", module_id="alpha", permissions=TIMERS)
    async with running_daemon(tmp_path) as daemon:
        error = await call_error(
            daemon, "alpha", "defer", {"after_ms": 10, "reply": "nope", "fail": True}
        )
        assert (error.code, error.message) == ("module_error", "nope")


async def test_uncompleted_deferred_reply_times_out(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """A deferred reply never completed fails with `timeout` after limits.reply_timeout_ms
    and the module keeps working."""
    make_module_dir(
        tmp_path,
        "testkit",
        module_id="alpha",
        permissions=TIMERS,
        limits={"reply_timeout_ms": 300},
    )
    async with running_daemon(tmp_path) as daemon:
        with trio.fail_after(10):
            error = await call_error(daemon, "alpha", "defer", {"never": True})
        assert error.code == "timeout"
        assert "reply_timeout_ms" in error.message
        assert await call(daemon, "alpha", "echo", {"ok": 1}) == {"ok": 1}


async def test_complete_reply_with_unknown_token_is_an_error(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """A made-up token cannot answer anybody's call."""
    make_module_dir(tmp_path, "testkit", module_id="alpha", permissions={})
    async with running_daemon(tmp_path) as daemon:
        error = await call_error(daemon, "alpha", "complete", {"token": 12345, "reply": 1})
        assert "unknown or expired reply token 12345" in error.message


async def test_a_command_nobody_waits_for_is_not_run(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """A command queued behind a busy guest past limits.reply_timeout_ms fails with
    `timeout` for its caller, and the guest never runs it (its effect never happens)."""
    make_module_dir(
        tmp_path,
        "testkit",
        module_id="alpha",
        permissions={"storage": True},
        limits={"reply_timeout_ms": 300, "invocation_timeout_ms": 5000},
    )
    async with running_daemon(tmp_path) as daemon:
        manager = daemon.manager
        with trio.fail_after(15):
            # Both on their way at once, the spin first, on the one lane the guest takes
            # commands from in order: storage_set waits behind 900 ms of spinning, three
            # times its reply timeout.
            spin = manager.begin_call("alpha", "spin", 1, json.dumps({"ms": 900}))
            late = manager.begin_call(
                "alpha", "storage_set", 1, json.dumps({"key": "late", "value": "ran"})
            )
            for pending in (spin, late):  # each caller times out, the spin's own too
                with pytest.raises(CallError) as timed_out:
                    await pending
                assert timed_out.value.code == "timeout"
                assert "reply_timeout_ms" in timed_out.value.message
            # Once the guest is free again (nothing signals that: ask until it answers)...
            while True:
                try:
                    await call(daemon, "alpha", "echo", {})
                    break
                except CallError as exc:
                    if exc.code != "timeout":
                        raise
            # ...the queued storage_set turns out skipped, not run late.
            assert await call(daemon, "alpha", "storage_get", {"key": "late"}) == {"value": None}
            logs = [line.message for line in daemon.manager.logs("alpha")]
            assert not any("Traceback" in line for line in logs), logs


async def test_commands_from_many_callers_are_all_answered_in_time(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """Many calls in flight at once on one module (they queue on its lane): every caller
    gets its own answer."""
    make_module_dir(tmp_path, "testkit", module_id="alpha", permissions={})
    async with running_daemon(tmp_path) as daemon:
        answers: dict[int, Any] = {}

        async def one(i: int) -> None:
            answers[i] = await call(daemon, "alpha", "echo", {"i": i})

        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                for i in range(200):
                    nursery.start_soon(one, i)
        assert answers == {i: {"i": i} for i in range(200)}
