"""Each figure of the benchmark, measured with its floor in the same run.

A figure is a :class:`Figure`: what was measured, its floor, and the target ratio. The
functions here start what they need (``vessel serve`` on a fresh data dir, the floor
server, client processes) and end it before returning.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import statistics
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio

from vessel.host._confine import box_cpu

from . import _procs
from ._control import open_control
from ._inproc import PARAMS
from ._neighbour import MODULE, neighbourhood
from ._procs import PYTHON, ROOT, BenchError, Vessel, client, fanout_clients, vessel_serve
from ._setup import Guest, add_module
from ._stats import median_of

#: Restart backoff of a crashed module (vessel._manager.SupervisionPolicy.backoff_initial).
RESTART_BACKOFF = 0.5


@dataclass
class Figure:
    """One row of the table: a value, its floor and the target for their ratio
    (``higher_is_better`` flips how ratio and target compare). A figure with no floor
    is met while its value is at most its target: ``Figure.count`` counts something that
    should not happen (an int), ``Figure.at_most`` is a quantity with a limit of its own
    (a float; what it compares with is in its note)."""

    key: str
    title: str
    value: float
    floor: float | None
    unit: str
    target: float
    higher_is_better: bool = False
    note: str = ""

    @classmethod
    def count(cls, key: str, title: str, value: int, unit: str, note: str = "") -> Figure:
        """A count whose target is 0."""
        return cls(key, title, value, None, unit, 0, note=note)

    @classmethod
    def at_most(
        cls, key: str, title: str, value: float, unit: str, target: float, note: str = ""
    ) -> Figure:
        """A quantity whose target is a limit in its own unit (MiB, MiB/hour)."""
        return cls(key, title, float(value), None, unit, target, note=note)

    @property
    def kind(self) -> str:
        if self.floor is not None:
            return "ratio"
        return "count" if isinstance(self.value, int) else "limit"

    @property
    def ratio(self) -> float | None:
        if self.floor is None:
            return None
        return self.value / self.floor if self.floor else float("inf")

    @property
    def met(self) -> bool:
        if self.ratio is None:
            return self.value <= self.target
        return self.ratio >= self.target if self.higher_is_better else self.ratio <= self.target

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "kind": self.kind, "ratio": self.ratio, "met": self.met}


@dataclass
class Settings:
    """How much to measure; ``quick`` is the smoke run the test suite uses."""

    quick: bool
    rtt_calls: int = 3000
    pipelined_calls: int = 5000
    #: The call figures alternate Vessel and its floor this many times (see calls()).
    call_rounds: int = 9
    window: int = 64
    fanout_events: int = 2000
    #: The fan-out figure alternates Vessel and its floor this many times (see fanout()).
    fanout_rounds: int = 7
    repeats: int = 7
    modules_curve: tuple[int, ...] = (1, 10, 50)
    clients_curve: tuple[int, ...] = (1, 10, 100)
    #: The largest is near the 64 KiB an event may carry (vessel._emit_rules).
    sizes_curve: tuple[int, ...] = (100, 10_000, 64_000)
    #: Ordinary load (see ordinary_load()): modules, client processes, calls per second
    #: in all, and for how long.
    load_modules: int = 10
    load_clients: int = 4
    load_rate: float = 450.0
    load_seconds: float = 45.0

    @classmethod
    def make(cls, quick: bool) -> Settings:
        if not quick:
            return cls(quick=False)
        return cls(
            quick=True,
            rtt_calls=50,
            pipelined_calls=100,
            call_rounds=1,
            window=8,
            fanout_events=20,
            fanout_rounds=1,
            repeats=1,
            modules_curve=(1, 2),
            clients_curve=(1, 2),
            sizes_curve=(100, 10_000),
            load_modules=2,
            load_clients=2,
            load_rate=100.0,
            load_seconds=1.0,
        )


@dataclass
class Results:
    figures: list[Figure] = field(default_factory=list)
    comparison: dict[str, dict[str, float]] = field(default_factory=dict)
    curves: dict[str, dict[str, list[float]]] = field(default_factory=dict)


def _echo_frame(module: str = "bench-echo") -> dict[str, Any]:
    return {
        "type": "call",
        "request_id": "0",
        "module": module,
        "name": "echo",
        "params": PARAMS,
    }


def _rtt_spec(
    url: str, token: str | None, s: Settings, module: str = "bench-echo"
) -> dict[str, Any]:
    return {
        "mode": "rtt",
        "url": url,
        "token": token,
        "frame": _echo_frame(module),
        "n": s.rtt_calls,
        "warmup": max(20, s.rtt_calls // 10),
    }


class Bench:
    """One benchmark run: the guests, a scratch folder and the settings."""

    def __init__(self, guests: dict[str, Guest], scratch: Path, settings: Settings) -> None:
        self.guests = guests
        self.scratch = scratch
        self.s = settings
        self._dirs = 0
        self.results = Results()

    def data_dir(self, modules: dict[str, str]) -> Path:
        """A fresh data dir holding ``modules`` (id -> guest name)."""
        self._dirs += 1
        path = self.scratch / f"data-{self._dirs}"
        path.mkdir()
        for module_id, guest in modules.items():
            add_module(path, self.guests[guest], module_id)
        return path

    def echo_dir(self) -> Path:
        return self.data_dir({"bench-echo": "bench-echo"})

    # -- the in-process side -----------------------------------------------------------

    async def inproc_guest(self, n: int) -> dict[str, float]:
        module_dir = self.echo_dir() / "modules" / "bench-echo"
        argv = [PYTHON, "-m", "bench._inproc", "guest", str(module_dir), str(n)]
        return await _procs.run_json(argv)

    async def extism(self, n: int) -> dict[str, float]:
        return await _procs.run_json([PYTHON, "-m", "bench._inproc", "extism", str(n)])

    # -- calls -------------------------------------------------------------------------

    async def calls(self) -> None:
        """The call figures, Vessel and its floor taking turns.

        Both servers run at once and the clients alternate between them, ``call_rounds``
        times; each figure is the median of its rounds. Measured one after the other,
        a burst of load from elsewhere on this shared machine lands on one side only
        (the same code gave 1.36x and 1.91x in two runs an hour apart).
        """
        s = self.s
        echo_dir = self.echo_dir()
        guest = await self.inproc_guest(max(s.rtt_calls, 200))
        peer = await self.extism(max(s.rtt_calls, 200))
        rtt_spec = {"n": max(s.rtt_calls // s.call_rounds, 20)}
        pipelined_spec = {
            "mode": "pipelined",
            "n": max(s.pipelined_calls // s.call_rounds, 20),
            "window": s.window,
        }
        runs: dict[str, list[dict[str, float]]] = {
            "inproc": [],
            "rtt": [],
            "rtt_sleeping": [],
            "pipelined_floor": [],
            "pipelined": [],
        }
        async with (
            _procs.floor_server(echo_dir / "modules" / "bench-echo") as floor_url,
            vessel_serve(echo_dir) as vessel,
            # The same daemon without its active wait for fast answers (the default is
            # on; docs/performance.md): what it buys, measured in the same rounds.
            vessel_serve(self.echo_dir(), env={"VESSEL_ACTIVE_WAIT_US": "0"}) as sleeping,
        ):
            await vessel.wait_started(1)
            await sleeping.wait_started(1)
            floor_ws = floor_url.replace("http://", "ws://")
            floor = _rtt_spec(floor_ws + "/guest", None, s)
            ours = _rtt_spec(vessel.ws_url, vessel.token, s)
            ours_sleeping = _rtt_spec(sleeping.ws_url, sleeping.token, s)
            echo = await client(_rtt_spec(floor_ws + "/echo", None, s))
            for _ in range(s.call_rounds):
                runs["inproc"].append(await client({**floor, **rtt_spec}))
                runs["rtt"].append(await client({**ours, **rtt_spec}))
                runs["rtt_sleeping"].append(await client({**ours_sleeping, **rtt_spec}))
                runs["pipelined_floor"].append(await client({**floor, **pipelined_spec}))
                runs["pipelined"].append(await client({**ours, **pipelined_spec}))
        inproc, rtt, rtt_sleeping, pipelined_floor, pipelined = (
            median_of(runs[key])
            for key in ("inproc", "rtt", "rtt_sleeping", "pipelined_floor", "pipelined")
        )
        figures = self.results.figures
        for key, label, pct, target in (
            ("call_p50", "call round trip p50", "p50_us", 1.5),
            ("call_p99", "call round trip p99", "p99_us", 2.5),
        ):
            parts = echo[pct] + guest[pct]
            note = (
                f"medians of {s.call_rounds} rounds, Vessel and floor taking turns; "
                f"with the daemon's active wait off (--active-wait-us 0) "
                f"{rtt_sleeping[pct]:.0f} µs = {rtt_sleeping[pct] / inproc[pct]:.2f}x; "
                f"floor = the bare Quart-Trio server calling the same guest export "
                f"in-process for each message ({inproc[pct]:.0f} µs); the sum of the parts "
                f"measured apart, bare WS echo {echo[pct]:.0f} µs + on-command in a tight "
                f"loop {guest[pct]:.0f} µs = {parts:.0f} µs, gives "
                f"{rtt[pct] / parts:.2f}x"
            )
            figures.append(Figure(key, label, rtt[pct], inproc[pct], "µs", target, note=note))
        # Pipelined, the guest's time adds to the transport's per message.
        figures.append(
            Figure(
                "call_throughput",
                f"call throughput, {s.window} in flight on one socket",
                pipelined["msgs_per_s"],
                pipelined_floor["msgs_per_s"],
                "calls/s",
                0.6,
                higher_is_better=True,
                note=f"floor = the same {s.window} in flight to the bare server calling the "
                f"guest in-process; medians of {s.call_rounds} rounds, taking turns",
            )
        )
        self.results.comparison = {
            "Vessel: WS client → module process → guest, round trip": rtt,
            "the same, the daemon's active wait off (--active-wait-us 0)": rtt_sleeping,
            "no isolation: bare Quart-Trio server calling the guest in-process, round trip": (
                inproc
            ),
            "bare Quart-Trio WS echo round trip (no guest)": echo,
            "Vessel's GuestRuntime: on-command in a tight loop, in-process": guest,
            "Extism Python host SDK: echo plugin in a tight loop, in-process": peer,
        }

    # -- fan-out -----------------------------------------------------------------------

    async def _vessel_fanout(self, vessel: Vessel, clients: int, events: int, size: int) -> float:
        """Delivered messages per second: ``events`` events to ``clients`` subscribers."""
        specs = _spread(
            {
                "mode": "fanout",
                "url": vessel.ws_url,
                "token": vessel.token,
                "expect": events,
                "subscribe": {
                    "type": "subscribe",
                    "request_id": "s",
                    "module": "bench-echo",
                    "name": "burst",
                },
            },
            clients,
        )
        async with open_control(vessel) as control:

            async def trigger() -> None:
                await control.call("bench-echo", "burst", {"count": events, "size": size})

            start, results = await fanout_clients(specs, trigger)
        return _rate(clients * events, start, results)

    async def _floor_fanout(self, floor_url: str, clients: int, events: int, size: int) -> float:
        specs = _spread(
            {
                "mode": "fanout",
                "url": floor_url.replace("http://", "ws://") + "/fanout",
                "token": None,
                "expect": events,
                "subscribe": None,
            },
            clients,
        )

        async def trigger() -> None:
            async with httpx.AsyncClient() as http:
                response = await http.post(
                    f"{floor_url}/burst", json={"count": events, "size": size}, timeout=60
                )
                response.raise_for_status()

        start, results = await fanout_clients(specs, trigger)
        return _rate(clients * events, start, results)

    async def fanout(self) -> None:
        """The fan-out figure and curves, Vessel and its floor taking turns.

        As in calls(): both servers run at once and each measurement of one is followed
        by the same measurement of the other, so a burst of load from elsewhere on this
        shared machine lands on both sides alike. (Measured one after the other, all
        floor rounds first, the figure ranged 64-122 % over one session's runs of the
        same code.)
        """
        s = self.s
        clients = 10 if not s.quick else 2
        floor: list[float] = []
        ours: list[float] = []
        floor_curve: list[float] = []
        curve: list[float] = []
        floor_sizes: list[float] = []
        sizes: list[float] = []
        async with (
            _procs.floor_server() as floor_url,
            vessel_serve(self.echo_dir()) as vessel,
        ):
            await vessel.wait_started(1)

            async def both(n: int, events: int, size: int) -> tuple[float, float]:
                theirs = await self._floor_fanout(floor_url, n, events, size)
                return theirs, await self._vessel_fanout(vessel, n, events, size)

            for _ in range(s.fanout_rounds):
                theirs, mine = await both(clients, s.fanout_events, 100)
                floor.append(theirs)
                ours.append(mine)
            for n in s.clients_curve:
                theirs, mine = await both(n, s.fanout_events, 100)
                floor_curve.append(theirs)
                curve.append(mine)
            for size in s.sizes_curve:
                theirs, mine = await both(1, _events_for(size, s), size)
                floor_sizes.append(theirs)
                sizes.append(mine)
        rounds = sorted(mine / theirs for mine, theirs in zip(ours, floor, strict=True))
        self.results.figures.append(
            Figure(
                "fanout",
                f"event fan-out to {clients} clients",
                statistics.median(ours),
                statistics.median(floor),
                "msgs/s",
                0.75,
                higher_is_better=True,
                note=f"a module emits 100 B events; floor = bare Quart-Trio broadcast of the "
                f"same frames; medians of {s.fanout_rounds} rounds, taking turns (the rounds' "
                f"own ratios: {rounds[0]:.0%} to {rounds[-1]:.0%})",
            )
        )
        self.results.curves["fanout_vs_clients"] = {
            "x": [float(n) for n in s.clients_curve],
            "vessel": curve,
            "floor": floor_curve,
        }
        self.results.curves["events_vs_payload"] = {
            "x": [float(n) for n in s.sizes_curve],
            "vessel": sizes,
            "floor": floor_sizes,
        }

    # -- starting ----------------------------------------------------------------------

    async def bare_child(self, module_dir: Path) -> float:
        """Seconds from spawn to a bare child's ``ready`` (see bench/_bare_child.py)."""
        start = time.monotonic()
        async with _bare_child_running(module_dir):
            return time.monotonic() - start

    async def _bare_child_limited(self, module_dir: Path, limiter: trio.CapacityLimiter) -> None:
        async with limiter:
            await self.bare_child(module_dir)

    async def starting(self) -> None:
        s = self.s
        ha_dir = self.data_dir({"home-assistant": "home-assistant"})
        module_dir = ha_dir / "modules" / "home-assistant"
        floor = statistics.median([await self.bare_child(module_dir) for _ in range(s.repeats)])
        cold: list[float] = []
        respawn: list[float] = []
        async with vessel_serve(ha_dir) as vessel:
            await vessel.wait_started(1)
            async with (
                open_control(vessel) as control,
                httpx.AsyncClient(
                    base_url=vessel.url, headers={"authorization": f"Bearer {vessel.token}"}
                ) as http,
            ):
                for _ in range(s.repeats):
                    (await http.post("/api/modules/home-assistant/disable")).raise_for_status()
                    await control.lifecycle_event("home-assistant", {"stopped", "disabled"})
                    start = time.monotonic()
                    (await http.post("/api/modules/home-assistant/enable")).raise_for_status()
                    await control.lifecycle_event("home-assistant", {"started", "restarted"})
                    cold.append(time.monotonic() - start)
                # Kills in a row back off exponentially (0.5 s, 1 s, 2 s ...) and count
                # against the restart intensity: a restart between two measured kills
                # resets both, so each kill is the first crash of a healthy module.
                for _ in range(s.repeats):
                    (await http.post("/api/modules/home-assistant/restart")).raise_for_status()
                    pid = (await http.get("/api/modules/home-assistant")).json()["pid"]
                    start = time.monotonic()
                    os.kill(pid, signal.SIGKILL)  # a module process this run's daemon started
                    await control.lifecycle_event("home-assistant", {"restarted"})
                    await control.call("home-assistant", "status", {})
                    respawn.append(time.monotonic() - start)
        figures = self.results.figures
        figures.append(
            Figure(
                "cold_start",
                "cold start: spawn → on-load done (Home Assistant)",
                statistics.median(cold) * 1000,
                floor * 1000,
                "ms",
                1.3,
                note="enable request → started event; floor = bare child: python + import "
                "wasmtime + load precompiled + instantiate",
            )
        )
        figures.append(
            Figure(
                "respawn",
                "kill -9 → serving again",
                statistics.median(respawn) * 1000,
                (RESTART_BACKOFF + floor) * 1000,
                "ms",
                1.3,
                note="SIGKILL of a healthy module → restarted and a call answered; "
                f"floor = {RESTART_BACKOFF} s backoff + cold-start floor",
            )
        )
        await self._daemon_start()

    async def _daemon_start(self) -> None:
        s = self.s
        count = 10 if not s.quick else 2
        data_dir = self.data_dir({f"echo-{i}": "bench-echo" for i in range(count)})
        module_dir = data_dir / "modules" / "echo-0"
        phases: list[float] = []
        totals: list[float] = []
        floors: list[float] = []
        for _ in range(max(1, min(3, s.repeats))):
            start = time.monotonic()
            limiter = trio.CapacityLimiter(2)
            async with trio.open_nursery() as nursery:
                for _ in range(count):
                    nursery.start_soon(self._bare_child_limited, module_dir, limiter)
            floors.append(time.monotonic() - start)
            async with vessel_serve(data_dir) as vessel:
                last = await vessel.wait_started(count)
                assert vessel.starting_modules_at is not None
                phases.append(last - vessel.starting_modules_at)
                totals.append(last - vessel.spawned_at)
        self.results.figures.append(
            Figure(
                "daemon_start",
                f"daemon start with {count} modules → all running",
                statistics.median(phases) * 1000,
                statistics.median(floors) * 1000,
                "ms",
                1.0,
                note=f"from the daemon starting its modules to all {count} started "
                f"(from exec of vessel serve: {statistics.median(totals) * 1000:.0f} ms, "
                "which adds the daemon's own boot: Python, imports, database); floor = "
                f"{count} bare children, 2 at a time",
            )
        )

    # -- memory ------------------------------------------------------------------------

    async def memory(self) -> None:
        data_dir = self.echo_dir()
        module_dir = data_dir / "modules" / "bench-echo"
        params = json.dumps(PARAMS)
        # The floor in the state the module process is measured in: on-load run and one
        # echo answered (see bench/_bare_child.py). The bare child whose guest never ran,
        # the floor this figure used to have, is in the note.
        async with _bare_child_running(module_dir) as pid:
            unrun = _memory(pid)
        async with _bare_child_running(module_dir, call=("echo", params)) as pid:
            floor = _memory(pid)
        async with vessel_serve(data_dir) as vessel:
            await vessel.wait_started(1)
            async with open_control(vessel) as control:
                await control.call("bench-echo", "echo", PARAMS)  # touched once, then idle
            await trio.sleep(0.5)
            ours = _memory(vessel.pids["bench-echo"])
        self.results.figures.append(
            Figure(
                "memory",
                "private memory (USS) of an idle module process",
                ours["uss"] / 2**20,
                floor["uss"] / 2**20,
                "MiB",
                1.5,
                note="pages only this process holds (Private_Clean + Private_Dirty), on both "
                "sides after on-load and one echo call; floor = the bare child holding the "
                f"same instance (USS {unrun['uss'] / 2**20:.1f} MiB before its guest ran). "
                "Private_Dirty only (written pages this process alone holds): "
                f"{ours['private_dirty'] / 2**20:.1f} MiB vs "
                f"{floor['private_dirty'] / 2**20:.1f} MiB; Private_Clean is mapped files "
                "(the guest's .cwasm, libwasmtime), which drop out of USS while another "
                "process maps the same file. A module process shares the interpreter with "
                "the fork server, which RssAnon counts in every process: RssAnon "
                f"{ours['rss_anon'] / 2**20:.1f} MiB vs the bare child's "
                f"{floor['rss_anon'] / 2**20:.1f} MiB",
            )
        )

    # -- isolation ---------------------------------------------------------------------

    async def isolation(self) -> None:
        """A healthy module's p99 with and without a hostile neighbour, taking turns
        ``call_rounds`` times (medians): one measurement of each, one after the other,
        gave anything from 0.9x to 3.7x for the same code. The neighbour is restarted
        before each quiet round, so every noisy round has it running (bench/_neighbour.py
        says why), and the note says what it did.

        The measuring client stands in for a dashboard on another machine, so it is kept
        off the CPU Vessel quarantines misbehaving modules to (vessel/_cpu_box.py): on
        this machine it would otherwise wait there behind the neighbour, which no remote
        client does. It still shares the other CPUs with the daemon and the healthy
        module. The benchmark process that drives the neighbour stands in for a remote
        caller too, and keeps to that CPU while it does (bench/_neighbour.py). The same
        rounds with nothing placed (client and driver left to the kernel) are measured
        too, and the note gives them."""
        s = self.s
        data_dir = self.data_dir({"bench-echo": "bench-echo", MODULE: MODULE})
        spec = {**_rtt_spec("", None, s), "n": max(s.rtt_calls // s.call_rounds, 20)}
        off_box = _off_box_cpus()
        driver = _box_cpus()
        sides = ("quiet", "noisy", "floor_quiet", "floor_noisy", "free_quiet", "free_noisy")
        runs: dict[str, list[dict[str, float]]] = {side: [] for side in sides}
        echo_dir = self.echo_dir()
        async with (
            neighbourhood(data_dir) as (vessel, neighbour),
            # For context: how much the same neighbour slows the in-process floor server,
            # one process doing all the work (the machine's share of the figure).
            _procs.floor_server(echo_dir / "modules" / "bench-echo") as floor_url,
        ):
            free = {**spec, "url": vessel.ws_url, "token": vessel.token}
            ours = {**free, "cpus": off_box}
            floor = {**spec, "url": floor_url.replace("http://", "ws://") + "/guest"}
            floor["cpus"] = off_box
            for _ in range(s.call_rounds):
                for key, side in (("quiet", ours), ("floor_quiet", floor), ("free_quiet", free)):
                    await neighbour.settle()
                    runs[key].append(await client(side))
                for key, side, cpus in (
                    ("noisy", ours, driver),
                    ("floor_noisy", floor, driver),
                    ("free_noisy", free, None),
                ):
                    await neighbour.settle()
                    runs[key].append(await neighbour.beside(side, cpus))
        m = {side: median_of(runs[side]) for side in sides}

        def ratio(quiet: str, noisy: str) -> str:
            before, after = m[quiet]["p99_us"], m[noisy]["p99_us"]
            return f"p99 {before:.0f} -> {after:.0f} µs ({after / before:.2f}x)"

        self.results.figures.append(
            Figure(
                "isolation",
                "healthy module's p99 call latency beside a hostile neighbour",
                m["noisy"]["p99_us"],
                m["quiet"]["p99_us"],
                "µs",
                2.0,
                note="neighbour loops spin (100 ms deadline), trap, flood 2000 events; "
                f"floor = the same p99 without it; medians of {s.call_rounds} rounds, "
                "with and without the neighbour taking turns, the neighbour restarted "
                "before each round; the measuring client kept off the CPU a misbehaving "
                f"module is quarantined to (CPUs {off_box}: it stands in for a remote "
                "dashboard), and the benchmark process that drives the neighbour kept to "
                f"that CPU ({sorted(driver) if driver else None}: it stands in for a remote "
                "caller). What the neighbour's calls came to, over all noisy "
                f"rounds: {neighbour.summary()}. The same with nothing placed (client and "
                f"driver left to the kernel): {ratio('free_quiet', 'free_noisy')}. For "
                "context, the in-process floor server beside the same neighbour (driver "
                f"placed as above): {ratio('floor_quiet', 'floor_noisy')}",
            )
        )

    # -- ordinary load -------------------------------------------------------------------

    async def ordinary_load(self) -> None:
        """The CPU box's log lines (vessel/_cpu_box.py, logger ``vessel.cpu``) while
        healthy modules answer an ordinary load: ``load_modules`` example modules (each
        also ticks every second: a storage write and an event) and ``load_clients``
        client processes calling their ``add``, ``get`` and ``echo`` in turn, one call at
        a time, ``load_rate`` calls per second in all, for ``load_seconds``. Nothing there
        runs long, so nothing should be quarantined and no claim warned about, from the
        daemon's start on: the target is 0 lines (issue 21: hundreds of them in such a
        run, and 53 of a healthy first start's 285 lines)."""
        s = self.s
        modules = [f"example-{i}" for i in range(s.load_modules)]
        data_dir = self.data_dir(dict.fromkeys(modules, "example"))
        # Every (module, command) pair once per round: 10 modules and 3 commands, 30.
        frames = [
            {"type": "call", "module": modules[i % len(modules)], "name": name, "params": params}
            for i in range(math.lcm(len(modules), len(LOAD_CALLS)))
            for name, params in [LOAD_CALLS[i % len(LOAD_CALLS)]]
        ]
        lines = _procs.LineCounter(lambda line: _cpu_box_level(line) is not None)
        quarantines = _procs.LineCounter(
            lambda line: _cpu_box_level(line) is not None and _QUARANTINED in line
        )
        warnings = _procs.LineCounter(lambda line: _cpu_box_level(line) not in (None, "INFO"))
        counters = (lines, quarantines, warnings)
        before: list[int] = []  # each counter's count when the load starts

        def load_starts() -> None:
            before.extend(c.count for c in counters)

        env = {"VESSEL_LOG_LEVEL": "INFO"}
        async with vessel_serve(data_dir, env=env, counters=counters) as vessel:
            await vessel.wait_started(len(modules))
            specs = [
                {
                    "mode": "load",
                    "url": vessel.ws_url,
                    "token": vessel.token,
                    # Each client starts at another place in the same round of calls.
                    "frames": frames[i:] + frames[:i],
                    "rate": s.load_rate / s.load_clients,
                    "seconds": s.load_seconds,
                    "warmup": len(frames),
                }
                for i in range(s.load_clients)
            ]
            results = await _procs.load_clients(specs, load_starts)
            # What the load's last second set off: the box looks at claims every second.
            await trio.sleep(1.0)
        during = [c.count - then for c, then in zip(counters, before, strict=True)]
        calls = sum(r["calls"] for r in results)
        seconds = max(r["seconds"] for r in results)
        errors = sum(r["errors"] for r in results)
        first_error = next((r["first_error"] for r in results if r["first_error"]), None)
        box = _box_cpus()
        counted = (
            f"lines of the daemon's logger vessel.cpu at INFO or above, from the daemon's "
            f"start (a healthy first start included) to 1 s after the clients' end, "
            f"{quarantines.count} of them quarantines and {warnings.count} warnings (box: "
            f"CPU {sorted(box) if box else 'none, one CPU'}); {before[0]} of them before the "
            f"load, while the modules started and the clients warmed up, {during[0]} during it"
        )
        if lines.count:
            counted += f"; the last: {lines.last!r}"
        load = (
            f"{s.load_clients} client processes called add, get and echo of "
            f"{len(modules)} example modules in turn, one call at a time: {calls} calls in "
            f"{seconds:.1f} s ({calls / seconds:.0f} calls/s, {s.load_rate:.0f} asked), p50 "
            f"{statistics.median(r['p50_us'] for r in results):.0f} µs, p99 "
            f"{statistics.median(r['p99_us'] for r in results):.0f} µs (medians over the "
            f"clients), {errors} failed"
        )
        if first_error:
            load += f" (the first: {first_error[:300]})"
        self.results.figures.append(
            Figure.count(
                "ordinary_load",
                f"CPU-box log lines under ordinary load ({len(modules)} modules, "
                f"{s.load_clients} clients)",
                lines.count,
                "lines",
                note=f"{counted}. {load}",
            )
        )

    # -- scaling -----------------------------------------------------------------------

    async def modules_curve(self) -> None:
        s = self.s
        p50: list[float] = []
        for count in s.modules_curve:
            modules = {"bench-echo": "bench-echo"}
            modules.update({f"idle-{i}": "bench-echo" for i in range(count - 1)})
            async with vessel_serve(self.data_dir(modules)) as vessel:
                await vessel.wait_started(count, timeout=600)
                p50.append((await client(_rtt_spec(vessel.ws_url, vessel.token, s)))["p50_us"])
        self.results.curves["rtt_vs_modules"] = {
            "x": [float(n) for n in s.modules_curve],
            "vessel": p50,
        }


#: What the ordinary load calls on each module, in turn: (command, params).
LOAD_CALLS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("add", {"n": 1}),
    ("get", {}),
    ("echo", PARAMS),
)
#: A line of the daemon's logger ``vessel.cpu`` (or one below it) at INFO or above, in
#: ``vessel serve``'s format: ``<date> <time> <LEVEL> <logger>: <message>``.
_CPU_BOX_LINE = re.compile(r"^\S+ \S+ (INFO|WARNING|ERROR|CRITICAL) vessel\.cpu(?:\.\S+)?: ")
#: What the box's line about a quarantine says.
_QUARANTINED = "quarantined to CPU"


def _cpu_box_level(line: str) -> str | None:
    """The level of a line of the CPU box at INFO or above; None for any other line."""
    match = _CPU_BOX_LINE.match(line)
    return match.group(1) if match else None


def _box_cpus() -> set[int] | None:
    """The CPU Vessel quarantines misbehaving modules to, as a set (None: a single CPU,
    no box)."""
    box = box_cpu(os.sched_getaffinity(0))
    return {box} if box is not None else None


def _off_box_cpus() -> list[int] | None:
    """The CPUs other than the one Vessel quarantines misbehaving modules to (None: a
    single CPU, nothing to keep off)."""
    allowed = os.sched_getaffinity(0)
    box = box_cpu(allowed)
    return sorted(allowed - {box}) if box is not None else None


@asynccontextmanager
async def _bare_child_running(
    module_dir: Path, call: tuple[str, str] | None = None
) -> AsyncIterator[int]:
    """A bare child (bench/_bare_child.py) holding its instance; yields its pid once it
    said ``ready``, and ends it (closing its stdin) on the way out. ``call``: (action,
    params JSON) to run ``on-load`` and that one command first."""
    process = await trio.lowlevel.open_process(
        [PYTHON, str(ROOT / "bench" / "_bare_child.py"), str(module_dir), *(call or ())],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        with trio.fail_after(60):
            got = await process.stdout.receive_some(64)
        if not got.startswith(b"ready"):
            raise BenchError(f"the bare child said {got!r}")
        yield process.pid
    finally:
        if process.stdin is not None:
            await process.stdin.aclose()
        with trio.move_on_after(10):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()


def _rate(messages: int, start: float, results: list[dict[str, Any]]) -> float:
    """Messages per second from the trigger to the last client's last message."""
    last = max(float(r["last"]) for r in results)
    return messages / (last - start)


def _events_for(size: int, s: Settings) -> int:
    """Fewer events for bigger payloads: about the same bytes per measurement."""
    return max(5 if s.quick else 20, min(s.fanout_events, 2_000_000 // max(size, 1)))


def _spread(spec: dict[str, Any], clients: int) -> list[dict[str, Any]]:
    """``clients`` connections over at most 10 client processes."""
    processes = min(clients, 10)
    return [
        {**spec, "connections": clients // processes + (1 if i < clients % processes else 0)}
        for i in range(processes)
    ]


def _memory(pid: int) -> dict[str, int]:
    """RssAnon (from /proc/<pid>/status), USS (private pages) and the dirty part of it
    (smaps_rollup), bytes."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss_anon = next(
        int(line.split()[1]) for line in status.splitlines() if line.startswith("RssAnon:")
    )
    private = {"Private_Clean": 0, "Private_Dirty": 0}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key = line.split(":", 1)[0]
        if key in private:
            private[key] = int(line.split()[1])
    return {
        "rss_anon": rss_anon * 1024,
        "uss": (private["Private_Clean"] + private["Private_Dirty"]) * 1024,
        "private_dirty": private["Private_Dirty"] * 1024,
    }
