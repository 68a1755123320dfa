"""defer-reply / complete-reply: a command answered later, without blocking the module."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from tests.fixture_types import MakeModuleDir
from vessel._errors import CallError

from .harness import call, call_error, running_daemon

TIMERS = {"timers": True}


async def test_deferred_reply_arrives_and_module_keeps_serving(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """A command answered later returns what complete-reply gave; while it is pending
    the module answers other calls (its mailbox is not blocked)."""
    make_module_dir(tmp_path, "testkit", module_id="alpha", permissions=TIMERS)
    async with running_daemon(tmp_path) as daemon:
        answers: list[Any] = []

        async def slow() -> None:
            answers.append(
                await call(daemon, "alpha", "defer", {"after_ms": 400, "reply": {"n": 7}})
            )

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(slow)
                await trio.sleep(0.05)
                for i in range(3):
                    assert await call(daemon, "alpha", "echo", {"i": i}) == {"i": i}
                assert answers == []  # the deferred one is still pending
        assert answers == [{"n": 7}]


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
        with trio.fail_after(15):
            async with trio.open_nursery() as nursery:
                busy = trio.Event()

                async def hog() -> None:
                    busy.set()
                    # Longer than the reply timeout: its own caller times out too.
                    await call_error(daemon, "alpha", "spin", {"ms": 900})

                nursery.start_soon(hog)
                await busy.wait()
                await trio.sleep(0.05)  # the spin is under way in the guest
                error = await call_error(
                    daemon, "alpha", "storage_set", {"key": "late", "value": "ran"}
                )
                assert error.code == "timeout"
                assert "reply_timeout_ms" in error.message
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
