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


def line_fit(points: Sequence[tuple[float, float]]) -> dict[str, float]:
    """The least-squares line through ``points`` (x, y): its slope and intercept, the
    residuals' standard deviation (the noise around the line) and the slope's standard
    error (how far the slope could be off from noise alone). At least 3 points."""
    n = len(points)
    if n < 3:
        raise ValueError(f"a line fit needs at least 3 points, got {n}")
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    if sxx == 0:
        raise ValueError("a line fit needs points at more than one x")
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / sxx
    intercept = mean_y - slope * mean_x
    residual = math.sqrt(sum((y - intercept - slope * x) ** 2 for x, y in points) / (n - 2))
    return {
        "slope": slope,
        "intercept": intercept,
        "residual_std": residual,
        "slope_se": residual / math.sqrt(sxx),
        "n": float(n),
    }
