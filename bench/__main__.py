"""``python -m bench [--quick] [--out DIR] [--only NAME ...] [--soak MINUTES]``: run the
benchmarks.

Prints the markdown table, writes ``results.json`` and the plots into ``--out`` (default
``bench/results``, not committed). ``--quick`` is a tiny-iteration smoke run: every code
path, numbers that mean nothing. ``--soak MINUTES`` runs the soak instead of the steps
(bench/_home_server.py): busy modules for that long, every process's memory sampled, a
slope per process; it writes ``soak.json`` and ``soak_memory.png`` (with ``--quick``,
two modules; ``--soak 0.25 --quick`` is its smoke run).
"""

from __future__ import annotations

import argparse
import datetime
import json
import signal
import sys
import tempfile
import time
from pathlib import Path

import trio

from . import _report
from ._figures import Settings
from ._home_server import HomeBench, soak_plot, soak_table
from ._procs import ROOT
from ._setup import build_guests

STEPS = (
    "calls",
    "fanout",
    "starting",
    "memory",
    "isolation",
    "ordinary_load",
    "modules_curve",
    # Home server (issue 22): compiling, installing, memory per module.
    "first_start",
    "compile_memory",
    "install_memory",
    "marginal_memory",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--only", nargs="+", choices=STEPS, help="run only these steps")
    parser.add_argument(
        "--soak",
        type=float,
        metavar="MINUTES",
        help="run the soak for MINUTES (fractions too) instead of the steps",
    )
    args = parser.parse_args(argv)
    if args.soak is not None and (args.only or args.soak <= 0):
        parser.error("--soak takes a positive number of minutes, and no --only")
    # SIGTERM (a timeout, a CI stop) unwinds like Ctrl-C: every process the run started
    # is ended by its owner on the way out.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    args.out.mkdir(parents=True, exist_ok=True)
    print("building guests", flush=True)
    guests = build_guests()
    settings = Settings.make(args.quick)
    stamp = datetime.date.today().isoformat()
    quick = " (quick: not meaningful)" if args.quick else ""
    if args.soak is not None:
        with tempfile.TemporaryDirectory(prefix="vessel-bench-") as scratch:
            soaking = HomeBench(guests, Path(scratch), settings)
            print(f"soaking for {args.soak:g} min", flush=True)
            detail = trio.run(soaking.soak, args.soak)
        detail["figures"] = [f.to_json() for f in soaking.results.figures]
        (args.out / "soak.json").write_text(json.dumps(detail, indent=2) + "\n")
        plot = soak_plot(detail, args.out)
        print(f"\n## Vessel soak, {args.soak:g} min, {stamp}{quick}\n")
        print(soak_table(detail))
        print()
        print(_report.table(soaking.results))
        print(f"\nwrote {args.out / 'soak.json'} and {plot.name}")
        return 0
    with tempfile.TemporaryDirectory(prefix="vessel-bench-") as scratch:
        bench = HomeBench(guests, Path(scratch), settings)

        async def run() -> None:
            for step in args.only or STEPS:
                started = time.monotonic()
                print(f"running {step}", flush=True)
                await getattr(bench, step)()
                print(f"  {step}: {time.monotonic() - started:.1f} s", flush=True)

        trio.run(run)
    results = bench.results
    _report.write_json(results, args.out / "results.json")
    written = _report.plots(results, args.out)
    print(f"\n## Vessel benchmarks, {stamp}{quick}\n")
    print(_report.table(results))
    print(f"\nwrote {args.out / 'results.json'} and {', '.join(p.name for p in written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
