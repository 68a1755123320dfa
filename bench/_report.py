"""The run's outputs: one markdown table, a JSON file and the scaling plots."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

from ._figures import Results


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


TIMES = "\N{MULTIPLICATION SIGN}"


def _fmt(value: float) -> str:
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.0f}"
    return f"{value:.2f}"


def table(results: Results) -> str:
    lines = [
        "| figure | Vessel | floor | ratio | target | met |",
        "| --- | ---: | ---: | ---: | ---: | :---: |",
    ]
    for f in results.figures:
        if f.kind == "count":  # no floor, no ratio
            value, floor, ratio, target = f"{f.value:,.0f} {f.unit}", "—", "—", f"{f.target:g}"
        elif f.floor is None or f.ratio is None:  # a limit in its own unit
            value, floor, ratio = f"{_fmt(f.value)} {f.unit}", "—", "—"
            target = f"≤ {f.target:g} {f.unit}"
        else:
            value, floor = f"{_fmt(f.value)} {f.unit}", f"{_fmt(f.floor)} {f.unit}"
            target = f"≥ {f.target:.0%}" if f.higher_is_better else f"≤ {f.target:g}{TIMES}"
            ratio = f"{f.ratio:.0%}" if f.higher_is_better else f"{f.ratio:.2f}{TIMES}"
        lines.append(
            f"| {f.title} | {value} | {floor} | {ratio} | {target} "
            f"| {'yes' if f.met else '**no**'} |"
        )
    if results.comparison:
        lines += ["", "| for comparison: one echo call | p50 | p99 |", "| --- | ---: | ---: |"]
        for name, summary in results.comparison.items():
            lines.append(f"| {name} | {summary['p50_us']:.0f} µs | {summary['p99_us']:.0f} µs |")
    notes = [f"* {f.title}: {f.note}" for f in results.figures if f.note]
    return "\n".join([*lines, "", *notes])


def write_json(results: Results, path: Path) -> None:
    doc = {
        "machine": machine(),
        "figures": [f.to_json() for f in results.figures],
        "comparison": results.comparison,
        "curves": results.curves,
    }
    path.write_text(json.dumps(doc, indent=2) + "\n")


_PLOTS = {
    "rtt_vs_modules": ("call round trip p50 vs running modules", "modules", "p50 (µs)", False),
    "fanout_vs_clients": ("event fan-out vs clients", "clients", "delivered msgs/s", True),
    "events_vs_payload": ("event throughput vs payload", "payload (bytes)", "events/s", True),
}


def plots(results: Results, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for key, curve in results.curves.items():
        title, xlabel, ylabel, logx = _PLOTS[key]
        fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
        for series, style in (("vessel", "o-"), ("floor", "s--")):
            if series in curve:
                ax.plot(curve["x"], curve[series], style, label=series)
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if logx or key == "events_vs_payload":
            ax.set_xscale("log")
        if key == "events_vs_payload":
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = out / f"{key}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written
