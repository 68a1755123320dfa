"""``python -m bench.timeline`` keeps working, and sorts calls into the right phases.

The smoke run drives everything for real (vessel serve, the hostile neighbour, a client
process) for two acts; its numbers are not looked at.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import trio

from bench.timeline import PHASES, Timeline

ROOT = Path(__file__).resolve().parents[2]


def test_calls_are_sorted_by_when_they_started_relative_to_an_act() -> None:
    timeline = Timeline(acts=[(10.0, 10.1), (20.0, 20.2)], gap=0.5)
    assert timeline.phase(9.4) is None  # during the restart before the act
    assert timeline.phase(9.6) == "before the act"
    assert timeline.phase(10.0) == "its first 4 ms"
    assert timeline.phase(10.005) == "4 to 15 ms in"
    assert timeline.phase(10.02) == "from 15 ms in to its end"
    assert timeline.phase(10.1) == "after"
    assert timeline.phase(10.7) is None
    assert timeline.phase(20.003) == "its first 4 ms"
    timeline.calls = [(9.6, 0.001), (10.001, 0.003), (10.05, 0.0008), (10.3, 0.0009)]
    table = timeline.table(slow_ms=2.0)
    assert "| its first 4 ms | 1 | 1 (100.0%) | 3,000 µs |" in table
    assert "| before the act | 1 | 0 (0.0%) |" in table
    assert "| 4 to 15 ms in | 0 |" in table


@pytest.mark.watchdog(200)
async def test_a_short_run_reports_every_phase_and_writes_its_calls(tmp_path: Path) -> None:
    out = tmp_path / "timeline.json"
    argv = [sys.executable, "-m", "bench.timeline", "--act", "loop", "--acts", "2"]
    argv += ["--gap", "0.1", "--warmup", "20", "--out", str(out)]
    with trio.fail_after(180):
        result = await trio.run_process(
            argv, cwd=ROOT, capture_stdout=True, capture_stderr=True, check=False
        )
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    output = result.stdout.decode()
    for name in PHASES:
        assert f"| {name} |" in output, output
    doc = json.loads(out.read_text())
    assert doc["act"] == "loop"
    assert len(doc["acts"]) == 2
    assert all(begin < end for begin, end in doc["acts"])
    assert doc["calls"], "the client made no calls"
    # The neighbour really did its loop: a spin into its deadline, at least.
    assert "spin: deadline" in output
