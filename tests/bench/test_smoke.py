"""The benchmark harness keeps working: a tiny-iteration run of ``python -m bench --quick``.

Every step runs for real (vessel serve, the floor server, client processes, Extism), but
the numbers are not looked at: timing belongs in the benchmark's table, not in tests.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import trio

ROOT = Path(__file__).resolve().parents[2]
FIGURES = {
    "call_p50",
    "call_p99",
    "call_throughput",
    "fanout",
    "cold_start",
    "respawn",
    "daemon_start",
    "memory",
    "isolation",
    "ordinary_load",
}
#: Figures that count what should not happen (target 0), with no floor and no ratio.
COUNTS = {"ordinary_load"}
CURVES = {"rtt_vs_modules", "fanout_vs_clients", "events_vs_payload"}


# Beyond the run's own 300 s bound: a cold run builds and compiles four guests first,
# and under pytest-xdist it shares the cores with another worker.
@pytest.mark.watchdog(330)
async def test_quick_run_produces_every_figure_table_json_and_plot(tmp_path: Path) -> None:
    """A quick run exits 0 and reports every figure with a floor (or, for a count, the
    count), every curve, the peer comparison, one table row per figure and one PNG per
    curve."""
    with trio.fail_after(300):
        result = await trio.run_process(
            [sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path)],
            cwd=ROOT,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    output = result.stdout.decode()
    assert result.returncode == 0, result.stderr.decode()[-3000:]

    doc = json.loads((tmp_path / "results.json").read_text())
    figures = {f["key"]: f for f in doc["figures"]}
    assert set(figures) == FIGURES
    for figure in figures.values():
        if figure["key"] in COUNTS:
            assert figure["kind"] == "count"
            assert figure["floor"] is None
            assert figure["ratio"] is None
            assert figure["target"] == 0
            assert isinstance(figure["value"], int)
            assert figure["value"] >= 0
            assert figure["met"] == (figure["value"] == 0)
        else:
            assert figure["kind"] == "ratio"
            for name in ("value", "floor", "ratio", "target"):
                assert math.isfinite(figure[name]), (figure["key"], name)
                assert figure[name] > 0, (figure["key"], name)
        assert isinstance(figure["met"], bool)
        assert f"| {figure['title']} |" in output
    assert set(doc["curves"]) == CURVES
    for curve in doc["curves"].values():
        assert len(curve["vessel"]) == len(curve["x"]) >= 2
        assert all(v > 0 for v in curve["vessel"])
    assert " calls in " in figures["ordinary_load"]["note"]
    assert any("Extism" in name for name in doc["comparison"])
    assert doc["machine"]["cores"] >= 1
    for key in CURVES:
        assert (tmp_path / f"{key}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
