"""The benchmark harness keeps working: a tiny-iteration run of ``python -m bench --quick``.

Every step runs for real (vessel serve, the floor server, client processes, Extism), but
the numbers are not looked at: timing belongs in the benchmark's table, not in tests.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

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
    "first_start",
    "compile_memory",
    "compile_memory_dirty",
    "install_memory",
    "install_memory_dirty",
    "marginal_memory",
}
#: Figures that count what should not happen (target 0), with no floor and no ratio.
COUNTS = {"ordinary_load"}
#: Figures with a limit in their own unit (MiB), with no floor and no ratio.
LIMITS = {"marginal_memory"}
SOAK_FIGURES = {"soak_daemon", "soak_daemon_dirty", "soak_modules", "soak_modules_dirty"}
CURVES = {"rtt_vs_modules", "fanout_vs_clients", "events_vs_payload"}


# Beyond the run's own bound: a cold run builds and compiles four guests first, under
# pytest-xdist it shares the cores with another worker, and scripts/test-under-load adds
# a busy loop per CPU (300 s was not enough there). A hang detector, not a speed test.
@pytest.mark.watchdog(930)
async def test_quick_run_produces_every_figure_table_json_and_plot(tmp_path: Path) -> None:
    """A quick run exits 0 and reports every figure with a floor (or, for a count, the
    count), every curve, the peer comparison, one table row per figure and one PNG per
    curve."""
    with trio.fail_after(900):
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
        elif figure["key"] in LIMITS:
            _check_limit(figure)
            assert figure["value"] > 0
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


def _check_limit(figure: dict[str, Any]) -> None:
    assert figure["kind"] == "limit"
    assert figure["floor"] is None
    assert figure["ratio"] is None
    assert math.isfinite(figure["value"])
    assert figure["target"] > 0
    assert figure["met"] == (figure["value"] <= figure["target"])


@pytest.mark.watchdog(630)  # a hang detector, generous for a machine under load (above)
async def test_quick_soak_samples_every_process_and_fits_a_slope(tmp_path: Path) -> None:
    """``--soak`` with ``--quick`` (two modules, fifteen seconds) exits 0, samples the
    daemon, the fork server and each module process, fits each a line, and reports the
    soak's figures (slopes against a limit of their own), its table and its plot."""
    with trio.fail_after(600):
        result = await trio.run_process(
            [sys.executable, "-m", "bench", "--quick", "--soak", "0.25", "--out", str(tmp_path)],
            cwd=ROOT,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    output = result.stdout.decode()
    assert result.returncode == 0, result.stderr.decode()[-3000:]

    doc = json.loads((tmp_path / "soak.json").read_text())
    assert set(doc["fits"]) == {"daemon", "fork server", "soak-0", "soak-1"}
    for fit in doc["fits"].values():
        for key in ("USS", "Private_Dirty", "Pss"):
            assert math.isfinite(fit[key]["slope"])
            assert fit[key]["residual_std"] >= 0
            assert fit[key]["n"] >= 3
    figures = {f["key"]: f for f in doc["figures"]}
    assert set(figures) == SOAK_FIGURES
    for figure in figures.values():
        _check_limit(figure)
        assert figure["unit"] == "MiB/h"
        assert f"| {figure['title']} |" in output
    assert " calls (add, get, echo" in figures["soak_daemon"]["note"]
    assert (tmp_path / "soak_memory.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
