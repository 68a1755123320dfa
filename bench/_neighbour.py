"""The hostile neighbour of the isolation figure: ``bench-hostile`` made to spin, trap
and flood, and a count of what it really did.

A module that traps more than three times a minute is ended by its own process and
restarted by the daemon's supervisor with a growing backoff, and one restarted five
times within the supervisor's period is left ``failed``. A driver that just calls the
neighbour over and over soon finds it gone: before this module existed, the figure's
neighbour was down for most of the run and the driver hammered the daemon with calls
that failed in half a millisecond (``module_unavailable``), which measured a busy
client, not a hostile module. So the driver waits for a restarting neighbour instead of
hammering it, and between rounds it is restarted by hand (as an admin would) so each
noisy round starts with a fresh, running neighbour whose backoff and restart count are
reset.

The driver is this benchmark process: it stands in for whoever calls the misbehaving
module, a client on another machine as much as the measuring one is. So while it drives
the neighbour it keeps to the CPU Vessel quarantines misbehaving modules to (``beside``'s
``driver_cpus``), out of the healthy call chain's way: its own work (encoding calls,
reading their answers and the lifecycle events of every trap and restart) is the
measuring apparatus, not the neighbour's hostility. Measured on 2 cores, 8 runs each
taking turns: with the driver left to the kernel the isolation figure was 1.58-2.70x
(median 2.20x), with it on the box 1.25-2.24x (median 1.89x); the in-process floor
server beside the same neighbour gained as much (docs/performance.md, Isolation).
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio

from ._control import Control, open_control
from ._procs import BenchError, Vessel, gated_client, vessel_serve

MODULE = "bench-hostile"
#: Commands for the neighbour, in turn: (name, params).
Acts = tuple[tuple[str, dict[str, Any]], ...]
#: What the neighbour is asked to do, over and over, in a noisy round.
HOSTILE_LOOP: Acts = (
    ("spin", {}),
    ("trap", {}),
    ("flood", {"count": 2000}),
)
#: Longest wait for the neighbour to come back by itself (the supervisor's first
#: backoffs are 0.5, 1 and 2 s; a neighbour still away after this is a bench failure).
COMEBACK_TIMEOUT = 20.0
#: Left to the machine after a restart between rounds: the new process's start-up and
#: the old one's exit must not fall into the quiet round that follows.
SETTLE = 0.2


@dataclass
class Neighbour:
    control: Control
    http: httpx.AsyncClient
    #: What the calls of the noisy rounds came to: ``spin: timeout``, ``flood: ok`` ...
    outcomes: Counter[str] = field(default_factory=Counter)
    #: Times the neighbour was away (restarting) during a noisy round, waited for.
    comebacks: int = 0
    #: Seconds of noisy rounds, and how much of them the neighbour was away.
    hostile_time: float = 0.0
    away_time: float = 0.0

    async def beside(
        self, spec: dict[str, Any], driver_cpus: set[int] | None = None
    ) -> dict[str, float]:
        """An ``rtt`` client's result, measured with the neighbour hostile from its
        first measured call to its last, driven from ``driver_cpus`` (None: wherever
        the kernel runs this process)."""
        stop = trio.Event()
        async with trio.open_nursery() as nursery:

            async def unleash() -> None:
                nursery.start_soon(self.run, stop, driver_cpus)

            result = await gated_client(spec, unleash)
            stop.set()
        return result

    async def settle(self) -> None:
        """A fresh, running, idle neighbour, outside any measurement."""
        (await self.http.post(f"/api/modules/{MODULE}/restart")).raise_for_status()
        state = (await self.http.get(f"/api/modules/{MODULE}")).json()["state"]
        if state != "running":
            raise BenchError(f"{MODULE} is {state} after a restart")
        await trio.sleep(SETTLE)

    async def run(self, stop: trio.Event, driver_cpus: set[int] | None = None) -> None:
        """Be hostile until ``stop``; each call runs to its end (the next quiet round
        must not start beside a neighbour still spinning)."""
        started = trio.current_time()
        try:
            with driving_from(driver_cpus):
                await self._run(stop)
        finally:
            self.hostile_time += trio.current_time() - started

    async def _run(self, stop: trio.Event) -> None:
        while not stop.is_set():
            await self.act(HOSTILE_LOOP, stop)

    async def act(self, calls: Acts, stop: trio.Event | None = None) -> None:
        """Make the neighbour do ``calls`` in turn, each to its end (until ``stop``),
        waiting for it while it is away restarting; their outcomes are counted."""
        for name, params in calls:
            if stop is not None and stop.is_set():
                return
            self._forget_lifecycle()
            doc = await self.control.request(
                {"type": "call", "module": MODULE, "name": name, "params": params},
                check=False,
            )
            outcome = _outcome(doc)
            self.outcomes[f"{name}: {outcome}"] += 1
            if outcome == "module_unavailable":
                await self._comeback()

    def summary(self) -> str:
        acts = ", ".join(f"{key} {count}" for key, count in sorted(self.outcomes.items()))
        away = self.away_time / self.hostile_time if self.hostile_time else 0.0
        return (
            f"{acts}; it was away (restarting after its traps) {self.comebacks} times, "
            f"{away:.0%} of the noisy time"
        )

    async def _comeback(self) -> None:
        self.comebacks += 1
        started = trio.current_time()
        try:
            await self._wait_until_back()
        finally:
            self.away_time += trio.current_time() - started

    async def _wait_until_back(self) -> None:
        state = (await self.http.get(f"/api/modules/{MODULE}")).json()["state"]
        if state == "running":
            return  # it came back between the call and this look
        if state == "failed":
            raise BenchError(f"{MODULE} failed during a noisy round (restarted too often)")
        event = await self.control.lifecycle_event(
            MODULE, {"started", "restarted", "failed"}, timeout=COMEBACK_TIMEOUT
        )
        if event["name"].endswith("failed"):
            raise BenchError(f"{MODULE} failed during a noisy round (restarted too often)")

    def _forget_lifecycle(self) -> None:
        """Drop lifecycle events already seen: a wait must see the next start, not one
        from before."""
        while True:
            try:
                self.control.lifecycle.receive_nowait()
            except trio.WouldBlock:
                return


@contextlib.asynccontextmanager
async def neighbourhood(data_dir: Path) -> AsyncIterator[tuple[Vessel, Neighbour]]:
    """``vessel serve`` on ``data_dir`` (``bench-echo`` and the neighbour installed),
    both modules started, and the neighbour's driver."""
    async with (
        vessel_serve(data_dir) as vessel,
        open_control(vessel) as control,
        httpx.AsyncClient(
            base_url=vessel.url, headers={"authorization": f"Bearer {vessel.token}"}
        ) as http,
    ):
        await vessel.wait_started(2)
        yield vessel, Neighbour(control, http)


@contextlib.contextmanager
def driving_from(cpus: set[int] | None) -> Iterator[None]:
    """Keep every thread of this process to ``cpus`` (None: leave them be) for the
    block. (A client started meanwhile would inherit them: start it before.)"""
    if not cpus:
        yield
        return
    before = _keep_to(cpus)
    try:
        yield
    finally:
        _keep_to(before)


def _keep_to(cpus: set[int]) -> set[int]:
    before = os.sched_getaffinity(0)
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(ProcessLookupError):  # the thread ended
            os.sched_setaffinity(int(tid), cpus)
    return before


def _outcome(doc: dict[str, Any]) -> str:
    if doc.get("success"):
        return "ok"
    data = doc.get("data") or {}
    code = str(data.get("code", "error"))
    if code == "module_error" and "deadline exceeded" in str(data.get("message", "")):
        return "deadline"
    if code == "module_error" and "trapped" in str(data.get("message", "")):
        return "trap"
    return code
