"""Fixtures for the actors suite: a guard against leaked child processes.

``tests/conftest.py`` already guards the whole suite (all descendants, with a grace
period). This one is stricter, with no grace: when an actors test ends, every process it
spawned must already be reaped, because ``open_process_actor`` reaps before returning.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pytest

from ._support import children_of, is_running, process_state


@pytest.fixture
def tracked_pids() -> list[int]:
    """PIDs of processes a test caused but did not spawn itself (grandchildren).

    The guard fails the test if one is still running at teardown. Because the suite's
    process is a child subreaper, such an orphan becomes our child when its parent dies;
    once it has exited it is reaped here instead of being reported as a zombie.
    """
    return []


@pytest.fixture(autouse=True)
def no_leaked_processes(tracked_pids: list[int]) -> Iterator[None]:
    """Fail the test if a process it started is still running, or left unreaped, after it."""
    before = children_of(os.getpid())
    yield
    for pid in tracked_pids:
        if not is_running(pid):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
    leaked = (children_of(os.getpid()) - before) | {p for p in tracked_pids if is_running(p)}
    if leaked:
        details = {pid: process_state(pid) for pid in sorted(leaked)}
        pytest.fail(f"test leaked child processes (pid: state): {details}", pytrace=False)
