"""Percentiles and rates: the only arithmetic the figures need."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def percentile(samples: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``samples``, nearest-rank."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def latency_summary(samples_s: Sequence[float]) -> dict[str, float]:
    """p50/p99/mean in microseconds and the sample count."""
    return {
        "p50_us": percentile(samples_s, 50) * 1e6,
        "p99_us": percentile(samples_s, 99) * 1e6,
        "mean_us": sum(samples_s) / len(samples_s) * 1e6,
        "n": float(len(samples_s)),
    }


def median_of(runs: Sequence[dict[str, float]]) -> dict[str, float]:
    """Each figure's median over several runs of the same measurement (same keys)."""
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}
