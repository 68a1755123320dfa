"""The daemon waits actively for a module that answers fast, and only for such a one.

Seen from the calling task: a call waited for actively takes a step at every turn of
the event loop until the answer is there; one waited for the ordinary way takes a few.
Whether the machine had a core to spare is the actors tests' business
(tests/actors/test_actors_active_wait.py); here the daemon's choice is what counts.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import trio

from actors._spin import spin_statistics
from tests.fixture_types import MakeModuleDir
from vessel._active_wait import ActiveWait
from vessel._daemon import Daemon
from vessel.cli.serve import build_parser

from .harness import call, running_daemon

# Far above a fast call's round trip on any machine the tests run on (so that "fast"
# holds under load), far below the slow command's 300 ms.
LIMIT = 0.15
SLOW = {"ms": 300}


class _Steps(trio.abc.Instrument):
    def __init__(self, task: trio.lowlevel.Task) -> None:
        self.task = task
        self.count = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.task:
            self.count += 1


async def _wait(daemon: Daemon, name: str, params: Any) -> str:
    """How the daemon waited for one call's answer: "active", "ordinary", or "busy
    machine" (an active wait was due, but the machine had no core to spare: the suite
    may run beside other work, so that answer stands for "active" here)."""
    before = dataclasses.replace(spin_statistics)
    steps = _Steps(trio.lowlevel.current_task())
    trio.lowlevel.add_instrument(steps)
    try:
        await call(daemon, "alpha", name, params)
    finally:
        trio.lowlevel.remove_instrument(steps)
    if spin_statistics.spun > before.spun:
        assert steps.count > 10, f"an active wait of {steps.count} steps"
        return "active"
    if spin_statistics.no_spare_core > before.no_spare_core:
        return "busy machine"
    assert steps.count <= 4, f"an ordinary wait of {steps.count} steps"
    return "ordinary"


ACTIVE = ("active", "busy machine")


async def _unpartitioned(daemon: Daemon) -> None:
    """Wait out a quarantine the cold first command may have caused: it uses 1.5-2.5 ms
    of CPU of its own, which on a busy machine is long work (vessel/_cpu_box.py). The
    placements in and out of it take turns of the loop a spin is counted in."""
    box = daemon.cpu_box
    assert box is not None
    with trio.fail_after(5):
        while box.narrowed:
            await trio.sleep(0.01)


async def test_fast_module_waited_for_actively_slow_one_not(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    make_module_dir(tmp_path, "testkit", module_id="alpha", permissions={})
    async with running_daemon(tmp_path, active_wait=LIMIT) as daemon:
        with trio.fail_after(30):
            # No answer yet: nothing known about the module, no active wait.
            assert await _wait(daemon, "echo", {}) == "ordinary"
            await _unpartitioned(daemon)
            assert await _wait(daemon, "echo", {}) in ACTIVE
            # Slow answers make it an ordinary wait (the first slow one was spun for
            # the budget only, then slept)...
            for _ in range(3):
                await call(daemon, "alpha", "spin", SLOW)
            assert await _wait(daemon, "spin", SLOW) == "ordinary"
            # ...until the module answers fast again.
            for _ in range(6):
                await call(daemon, "alpha", "echo", {})
            assert await _wait(daemon, "echo", {}) in ACTIVE


async def test_active_wait_zero_turns_it_off(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    make_module_dir(tmp_path, "testkit", module_id="alpha", permissions={})
    async with running_daemon(tmp_path, active_wait=0.0) as daemon:
        with trio.fail_after(30):
            for _ in range(5):
                assert await _wait(daemon, "echo", {}) == "ordinary"


def test_budget_follows_the_answer_times() -> None:
    wait = ActiveWait(0.0005)
    assert wait.budget() == 0.0  # not assumed fast before the first answer
    wait.record(0.0001)
    assert wait.budget() == pytest.approx(0.0002)  # twice the typical answer time
    wait.record(0.0004)
    assert wait.budget() == pytest.approx(0.00035)  # a running average: 2 x 0.000175
    wait.record(0.0004)
    wait.record(0.0004)
    assert wait.budget() == pytest.approx(0.0005)  # 2 x 0.000273, capped at the limit
    wait.record(0.05)  # one slow answer
    assert wait.budget() == 0.0
    for _ in range(20):
        wait.record(0.0001)
    assert 0 < wait.budget() < 0.0005


def test_limit_zero_never_waits_actively_and_negative_is_refused() -> None:
    wait = ActiveWait(0.0)
    wait.record(0.00001)
    assert wait.budget() == 0.0
    with pytest.raises(ValueError, match="cannot be negative"):
        ActiveWait(-1)


def test_serve_option_and_its_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    parse = build_parser().parse_args
    assert parse(["serve"]).active_wait_us == 0.0005
    assert parse(["serve", "--active-wait-us", "0"]).active_wait_us == 0.0
    monkeypatch.setenv("VESSEL_ACTIVE_WAIT_US", "250")
    assert build_parser().parse_args(["serve"]).active_wait_us == pytest.approx(0.00025)
    monkeypatch.setenv("VESSEL_ACTIVE_WAIT_US", "soon")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve"])
