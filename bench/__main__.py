"""``python -m bench [--quick] [--out DIR] [--only NAME ...]``: run the benchmarks.

Prints the markdown table, writes ``results.json`` and the plots into ``--out`` (default
``bench/results``, not committed). ``--quick`` is a tiny-iteration smoke run: every code
path, numbers that mean nothing.
"""

from __future__ import annotations

import argparse
import datetime
import signal
import sys
import tempfile
import time
from pathlib import Path

import trio

from . import _report
from ._figures import Bench, Settings
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
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--only", nargs="+", choices=STEPS, help="run only these steps")
    args = parser.parse_args(argv)
    # SIGTERM (a timeout, a CI stop) unwinds like Ctrl-C: every process the run started
    # is ended by its owner on the way out.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    args.out.mkdir(parents=True, exist_ok=True)
    print("building guests", flush=True)
    guests = build_guests()
    settings = Settings.make(args.quick)
    with tempfile.TemporaryDirectory(prefix="vessel-bench-") as scratch:
        bench = Bench(guests, Path(scratch), settings)

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
    stamp = datetime.date.today().isoformat()
    print(f"\n## Vessel benchmarks, {stamp}{' (quick: not meaningful)' if args.quick else ''}\n")
    print(_report.table(results))
    print(f"\nwrote {args.out / 'results.json'} and {', '.join(p.name for p in written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
