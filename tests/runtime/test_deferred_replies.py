"""defer-reply / complete-reply: a command answered later, without blocking the module."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from .harness import call, call_error, running_daemon

TIMERS = {"timers": True}


async def test_deferred_reply_arrives_and_module_keeps_serving(
    tmp_path: Path, make_module_dir: Any
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


async def test_deferred_error_reaches_the_caller(tmp_path: Path, make_module_dir: Any) -> None:
    """complete-reply with err() fails the original call with that message."""
    make_module_dir(tmp_path, "testkit", module_id="alpha", permissions=TIMERS)
    async with running_daemon(tmp_path) as daemon:
        error = await call_error(
            daemon, "alpha", "defer", {"after_ms": 10, "reply": "nope", "fail": True}
        )
        assert (error.code, error.message) == ("module_error", "nope")


async def test_uncompleted_deferred_reply_times_out(tmp_path: Path, make_module_dir: Any) -> None:
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
    tmp_path: Path, make_module_dir: Any
) -> None:
    """A made-up token cannot answer anybody's call."""
    make_module_dir(tmp_path, "testkit", module_id="alpha", permissions={})
    async with running_daemon(tmp_path) as daemon:
        error = await call_error(daemon, "alpha", "complete", {"token": 12345, "reply": 1})
        assert "unknown or expired reply token 12345" in error.message
