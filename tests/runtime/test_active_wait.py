"""The daemon waits actively for a module that answers fast, and only for such a one.

Seen at the one place the daemon decides it: the budget it hands the actors' reply wait
(``PendingRequest.result(spin=...)``) for each call, more than zero for an active wait.
What a wait does with its budget (a step at every turn of the loop, and only where the
machine has a core to spare) is the actors tests' business
(tests/actors/test_actors_active_wait.py); here the daemon's choice is what counts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

from actors import PendingRequest
from tests.fixture_types import MakeModuleDir
from vessel._active_wait import ActiveWait
from vessel._daemon import Daemon
from vessel.cli.serve import build_parser

from .harness import call, running_daemon

# Far above a fast call's round trip on any machine the tests run on, busy or not (so
# that "fast" holds under load), and below what three slow answers average (see SLOW).
LIMIT = 0.2
# Busy for that long in the guest: each slow answer takes at least as long, whatever the
# machine does. The running average (a quarter of the newest answer,
# vessel/_active_wait.py) is past LIMIT after three of them from any start: 0.4 x (1 -
# 0.75**3) = 0.23 s.
SLOW = {"ms": 400}


@pytest.fixture
def spins(monkeypatch: pytest.MonkeyPatch) -> list[tuple[trio.lowlevel.Task, float]]:
    """Every reply wait of the run: the task that waited and the budget it was given."""
    seen: list[tuple[trio.lowlevel.Task, float]] = []
    result = PendingRequest.result

    async def recorded(self: PendingRequest, *, spin: float = 0.0) -> msgspec.Raw:
        seen.append((trio.lowlevel.current_task(), spin))
        return await result(self, spin=spin)

    monkeypatch.setattr(PendingRequest, "result", recorded)
    return seen


async def _wait(
    daemon: Daemon, name: str, params: Any, spins: list[tuple[trio.lowlevel.Task, float]]
) -> str:
    """How the daemon waited for one call's answer: "active" or "ordinary"."""
    task = trio.lowlevel.current_task()
    before = len(spins)
    await call(daemon, "alpha", name, params)
    (budget,) = [spin for waiter, spin in spins[before:] if waiter is task]
    return "active" if budget > 0 else "ordinary"


async def test_fast_module_waited_for_actively_slow_one_not(
    tmp_path: Path, make_module_dir: MakeModuleDir, spins: list[tuple[trio.lowlevel.Task, float]]
) -> None:
    make_module_dir(tmp_path, "testkit", module_id="alpha", permissions={})
    async with running_daemon(tmp_path, active_wait=LIMIT) as daemon:
        with trio.fail_after(30):
            # No answer yet: nothing known about the module, no active wait.
            assert await _wait(daemon, "echo", {}, spins) == "ordinary"
            assert await _wait(daemon, "echo", {}, spins) == "active"
            # Slow answers make it an ordinary wait (one waited for actively is waited for
            # so for the budget only, then the ordinary way)...
            for _ in range(3):
                await call(daemon, "alpha", "spin", SLOW)
            assert await _wait(daemon, "spin", SLOW, spins) == "ordinary"
            # ...until the module answers fast again.
            for _ in range(6):
                await call(daemon, "alpha", "echo", {})
            assert await _wait(daemon, "echo", {}, spins) == "active"


async def test_active_wait_zero_turns_it_off(
    tmp_path: Path, make_module_dir: MakeModuleDir, spins: list[tuple[trio.lowlevel.Task, float]]
) -> None:
    make_module_dir(tmp_path, "testkit", module_id="alpha", permissions={})
    async with running_daemon(tmp_path, active_wait=0.0) as daemon:
        with trio.fail_after(30):
            for _ in range(5):
                assert await _wait(daemon, "echo", {}, spins) == "ordinary"


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
