"""``python -m bench.timeline [--act spin|trap|flood|loop] [--acts N] [--out FILE]``: when
a healthy module's calls are slow, relative to what a hostile neighbour does.

The isolation figure gives one p99 per round of a few hundred calls, which cannot say
*when* in the round the slow calls were. Here one client process (kept off the
quarantine CPU, as in the figure) calls ``bench-echo`` back to back for the whole run and
stamps every call with when it started; meanwhile the neighbour (``bench-hostile``) is
restarted before each act, left alone for ``--gap`` seconds, made to do one act, and left
alone again. Every call is then sorted by when it started, relative to the act it falls
beside: before it, in its first 4 ms, 4 to 15 ms in, from 15 ms to its end, and after it.
Calls during a restart between acts are left out, as the figure leaves them out.

It prints one markdown table (calls, share slower than ``--slow-ms``, p50, p99, max per
phase) and, with ``--out``, writes the stamped calls and acts as JSON. Measured this way
(docs/performance.md, Isolation), the slow calls of a noisy round are in the first
milliseconds of an act. A diagnostic, not a figure: nothing here has a target.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from ._figures import Bench, Settings, _box_cpus, _echo_frame, _off_box_cpus
from ._neighbour import HOSTILE_LOOP, MODULE, Acts, Neighbour, driving_from, neighbourhood
from ._procs import stamped_client
from ._setup import build_guests
from ._stats import percentile

ACTS: dict[str, Acts] = {
    "spin": (("spin", {}),),
    "trap": (("trap", {}),),
    "flood": (("flood", {"count": 2000}),),
    "loop": HOSTILE_LOOP,
}
#: Phases of an act by when a call started, seconds from the act's start; the last one
#: ends with the act.
EARLY = ((0.0, 0.004, "its first 4 ms"), (0.004, 0.015, "4 to 15 ms in"))
PHASES = ("before the act", *(name for _, _, name in EARLY), "from 15 ms in to its end", "after")


@dataclass
class Timeline:
    #: (start, end) of each act, ``time.monotonic`` as the client stamps its calls.
    acts: list[tuple[float, float]] = field(default_factory=list)
    calls: list[tuple[float, float]] = field(default_factory=list)
    gap: float = 0.0

    def phase(self, started: float) -> str | None:
        """The phase of a call that started at ``started``; None during a restart."""
        for begin, end in self.acts:
            if begin - self.gap <= started < begin:
                return PHASES[0]
            if begin <= started < end:
                for low, high, name in EARLY:
                    if low <= started - begin < high:
                        return name
                return PHASES[-2]
            if end <= started < end + self.gap:
                return PHASES[-1]
        return None

    def table(self, slow_ms: float) -> str:
        by_phase: dict[str, list[float]] = {name: [] for name in PHASES}
        for started, seconds in self.calls:
            name = self.phase(started)
            if name is not None:
                by_phase[name].append(seconds)
        lines = [
            f"| calls starting | calls | slower than {slow_ms:g} ms | p50 | p99 | max |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for name, samples in by_phase.items():
            if not samples:
                lines.append(f"| {name} | 0 | | | | |")
                continue
            slow = sum(1 for s in samples if s * 1000 > slow_ms)
            lines.append(
                f"| {name} | {len(samples)} | {slow} ({slow / len(samples):.1%}) "
                f"| {percentile(samples, 50) * 1e6:,.0f} µs "
                f"| {percentile(samples, 99) * 1e6:,.0f} µs | {max(samples) * 1e6:,.0f} µs |"
            )
        return "\n".join(lines)


async def run(args: argparse.Namespace, bench: Bench) -> tuple[Timeline, Neighbour]:
    data_dir = bench.data_dir({"bench-echo": "bench-echo", MODULE: MODULE})
    timeline = Timeline(gap=args.gap)
    async with neighbourhood(data_dir) as (vessel, neighbour):

        async def drive() -> None:
            for _ in range(args.acts):
                await neighbour.settle()
                await trio.sleep(args.gap)
                begin = time.monotonic()  # the client's clock: it stamps its calls
                # The driver stands in for a remote caller, as in the figure.
                with driving_from(_box_cpus()):
                    await neighbour.act(ACTS[args.act])
                timeline.acts.append((begin, time.monotonic()))
                await trio.sleep(args.gap)

        spec = {
            "url": vessel.ws_url,
            "token": vessel.token,
            "frame": _echo_frame(),
            "warmup": args.warmup,
            "cpus": _off_box_cpus(),
        }
        result = await stamped_client(spec, drive)
    timeline.calls = [(float(at), float(seconds)) for at, seconds in result["calls"]]
    return timeline, neighbour


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.timeline", description=__doc__)
    parser.add_argument("--act", choices=sorted(ACTS), default="spin")
    parser.add_argument("--acts", type=int, default=30, help="how many acts (default 30)")
    parser.add_argument("--gap", type=float, default=0.4, help="seconds alone around each act")
    parser.add_argument("--warmup", type=int, default=200, help="client calls before it starts")
    parser.add_argument("--slow-ms", type=float, default=2.0, help="a call slower is slow")
    parser.add_argument("--out", type=Path, help="write the stamped calls and acts here")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    guests = build_guests(progress=False)
    with tempfile.TemporaryDirectory(prefix="vessel-timeline-") as scratch:
        bench = Bench(guests, Path(scratch), Settings.make(quick=False))
        timeline, neighbour = trio.run(run, args, bench)
    durations = [end - begin for begin, end in timeline.acts]
    outcomes = ", ".join(f"{key} {n}" for key, n in sorted(neighbour.outcomes.items()))
    print(
        f"\n## Healthy calls beside {args.acts} acts of `{args.act}`\n\n"
        f"{timeline.table(args.slow_ms)}\n\n"
        f"* acts took {statistics.median(durations) * 1000:.0f} ms (median); the neighbour's "
        f"calls came to: {outcomes}; it was away restarting {neighbour.comebacks} times"
    )
    if args.out is not None:
        doc: dict[str, Any] = {"act": args.act, "acts": timeline.acts, "calls": timeline.calls}
        args.out.write_text(json.dumps(doc))
        print(f"* wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
