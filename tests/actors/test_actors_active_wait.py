"""PendingRequest.result(spin=...): waiting actively for a reply, and its bounds.

The spin's budget is real time (``time.perf_counter`` in ``actors._spin``). Here it runs
on ``TurnClock``, which moves on a fixed amount each time the spin looks at it, so a
budget is a number of turns of the loop whatever the machine's scheduler does; and the
peer answers when the waiting task has taken so many steps, or the loop so many turns,
rather than after so much time.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

from actors import Channel, _spin
from actors._cpu import SpareCore

from .test_actors_channel import channel_pair, decode


class StepCounts(trio.abc.Instrument):
    """How many steps each watched task took."""

    def __init__(self) -> None:
        self.steps: dict[trio.lowlevel.Task, int] = {}

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task in self.steps:
            self.steps[task] += 1

    def most(self) -> int:
        return max(self.steps.values(), default=0)


class TurnClock:
    """Stands in for ``time`` in ``actors._spin``: every reading is ``TICK`` later than
    the one before, so a spin of ``n * TICK`` seconds looks at it about ``n`` times."""

    TICK = 0.001

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        self.now += self.TICK
        return self.now


@pytest.fixture(autouse=True)
def turn_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_spin, "time", TurnClock())


def _server(steps: StepCounts) -> Any:
    """The peer's request handler. ``after`` answers "answer" after that many seconds;
    ``turns`` once the loop has turned that many times (this handler takes a step at
    each); ``steps`` once a watched task has taken that many steps, with how many turns
    of the loop that took."""

    async def on_request(method: str, body: msgspec.Raw) -> Any:
        value = decode(body)
        if method == "after":
            await trio.sleep(value)
        elif method == "turns":
            for _ in range(value):
                await trio.lowlevel.checkpoint()
        elif method == "steps":
            turns = 0
            while steps.most() < value:
                await trio.lowlevel.checkpoint()
                turns += 1
            return turns
        return "answer"

    return on_request


async def _result(
    client: Channel, method: str, value: float, spin: float, steps: StepCounts, out: list[Any]
) -> None:
    steps.steps[trio.lowlevel.current_task()] = 0
    pending = client.send_request(method, value)
    out.append(decode(await pending.result(spin=spin)))


@pytest.fixture(autouse=True)
def idle_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The spin tests need a core to spare, whatever else runs beside the suite: the
    active wait reads the machine's load from a /proc/stat that says it is idle."""
    stat = tmp_path / "stat"
    stat.write_text(_stat({cpu: (100, 1000) for cpu in os.sched_getaffinity(0)}))
    spare = SpareCore(stat=stat, interval=0.0)
    spare()  # the first look only takes the starting point
    monkeypatch.setattr(_spin, "_spare_core", spare)


@pytest.fixture
async def steps() -> Any:
    instrument = StepCounts()
    trio.lowlevel.add_instrument(instrument)
    yield instrument
    trio.lowlevel.remove_instrument(instrument)


async def test_spin_keeps_the_waiting_task_turning_and_others_running(steps: StepCounts) -> None:
    """The waiter takes a step at every turn of the loop until the reply is there (a
    plain wait takes two); the server's handler, another task, still runs meanwhile:
    it answers once the waiter has taken 50 steps, which only a spinning waiter does,
    and it has seen the loop turn no more often than that meanwhile."""
    answers: list[Any] = []
    async with channel_pair(on_request=_server(steps)) as (client, _server_channel):
        with trio.fail_after(5):
            await _result(client, "steps", 50, 1.0, steps, answers)
    (turns,) = answers
    assert 0 < turns <= 50, turns


async def test_spin_stops_after_its_budget(steps: StepCounts) -> None:
    """Past ``spin`` the waiter sleeps like any other until the reply wakes it: with a
    budget of 20 looks at the clock it takes about 20 steps, not one for each of the 500
    turns of the loop the reply takes to come."""
    answers: list[Any] = []
    async with channel_pair(on_request=_server(steps)) as (client, _server_channel):
        with trio.fail_after(5):
            await _result(client, "turns", 500, 20 * TurnClock.TICK, steps, answers)
    assert answers == ["answer"]
    (taken,) = steps.steps.values()
    assert 15 <= taken <= 25, taken


async def test_only_one_task_spins_at_a_time(steps: StepCounts) -> None:
    """Of two tasks asked to spin at once, one does (the replies come once it has taken
    50 steps); the other waits the ordinary way."""
    answers: list[Any] = []
    async with channel_pair(on_request=_server(steps)) as (client, _server_channel):
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_result, client, "steps", 50, 1.0, steps, answers)
                nursery.start_soon(_result, client, "steps", 50, 1.0, steps, answers)
    assert len(answers) == 2
    counts = sorted(steps.steps.values())
    assert counts[0] <= 3, counts
    assert counts[1] >= 50, counts


async def test_a_spinning_wait_honours_timeout_and_cancellation(steps: StepCounts) -> None:
    """The request's timeout and an outer cancel scope end a spin as they end a wait;
    the next wait may spin again (the slot was given back)."""
    # A spin of 10**9 looks at the clock: not ended by the timeout or the cancel, it would
    # outlast fail_after.
    endless = 10**9 * TurnClock.TICK
    async with channel_pair(on_request=_server(steps)) as (client, _server_channel):
        with trio.fail_after(5):
            timed = client.send_request("after", 10, timeout=0.05)
            with pytest.raises(trio.TooSlowError):
                await timed.result(spin=endless)
            with trio.move_on_after(0.05) as moved:
                await client.send_request("after", 10).result(spin=endless)
            assert moved.cancelled_caught
            answers: list[Any] = []
            await _result(client, "steps", 50, 1.0, steps, answers)
    assert len(answers) == 1


def _spins_in_child(code: str) -> str:
    """Run ``code`` in a fresh interpreter, then one 10 ms spin: "spun no_spare_core"."""
    code += (
        "\nimport trio\nfrom actors._spin import spin_statistics as s, spin_until"
        "\ntrio.run(spin_until, trio.Event(), 0.01)\nprint(s.spun, s.no_spare_core)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return out.stdout.strip()


def test_no_spinning_on_a_single_core() -> None:
    """With one usable core the peer that is to answer needs it: spin is ignored."""
    assert _spins_in_child(
        "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})"
    ) == ("0 1")


def test_no_spinning_once_narrowed_to_a_single_core() -> None:
    """The daemon narrows itself to the CPUs off the box while a module is quarantined
    (vessel/_cpu_box.py) and says so: from then on it does not spin."""
    code = (
        "import os, actors._spin as spin\n"
        "from actors._cpu import SpareCore\n"
        # A window of no time at all: the machine looks idle, so only the core count
        # can stop the spin.
        "spin._spare_core = SpareCore(interval=0.0)\n"
        "spin._spare_core()\n"
        "os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})\n"
        "spin.affinity_changed()"
    )
    assert _spins_in_child(code) == "0 1"


def _stat(cpus: dict[int, tuple[int, int]]) -> str:
    """A /proc/stat whose CPU ``n`` has spent ``cpus[n]`` = (busy, idle) jiffies (user
    and idle), with the machine's line first as the kernel writes it."""
    busy, idle = sum(b for b, _ in cpus.values()), sum(i for _, i in cpus.values())
    lines = [f"cpu  {busy} 0 0 {idle} 0 0 0 0 0 0"]
    lines += [f"cpu{n} {b} 0 0 {i} 0 0 0 0 0 0" for n, (b, i) in sorted(cpus.items())]
    return "\n".join([*lines, "intr 12345 0 0", ""])


def test_spare_core_reads_the_other_processes_load(tmp_path: Path) -> None:
    """Busy time of the CPUs it may use minus this process's own, in cores, against
    those CPUs less the one the waiting task takes."""
    stat = tmp_path / "stat"
    stat.write_text(_stat({0: (1000, 5000), 1: (0, 5000)}))
    now = [100.0]
    spare = SpareCore(
        cpus={0, 1}, stat=stat, interval=0.0, own_cpu=lambda: 0.0, clock=lambda: now[0]
    )
    assert spare() is False  # the first look only takes the starting point
    now[0] += 0.1
    assert spare() is True  # nothing was busy since
    begun = now[0]
    now[0] += 0.1
    # 0.4 s of CPU time in 0.1 s: the other processes keep more than one core busy.
    stat.write_text(_stat({0: (1000 + int(0.4 * os.sysconf("SC_CLK_TCK")), 5000), 1: (0, 5000)}))
    assert spare() is False
    assert spare.others is not None
    assert spare.others > 0.4 / (now[0] - begun) - 0.01
    now[0] += 0.1
    assert spare() is True  # and then idle again


def test_spare_core_counts_only_the_cpus_it_may_use(tmp_path: Path) -> None:
    """Two CPUs of an eight-core host, say in a container: the other six all busy take
    nothing from a task waiting on those two (the machine's line of /proc/stat would
    say six cores are busy); its own two busy do. Narrowed to one CPU, it never spares
    one."""
    stat = tmp_path / "stat"
    now = [100.0]
    second = os.sysconf("SC_CLK_TCK")

    def load(ours: int, elsewhere: int) -> None:
        """Jiffies busy so far on each of CPUs 0-1, and on each of CPUs 2-7."""
        jiffies = {n: (elsewhere, 5000) for n in range(2, 8)}
        stat.write_text(_stat({0: (ours, 5000), 1: (ours, 5000), **jiffies}))

    load(0, 0)
    spare = SpareCore(
        cpus={0, 1}, stat=stat, interval=0.0, own_cpu=lambda: 0.0, clock=lambda: now[0]
    )
    assert spare() is False  # the starting point
    now[0] += 1.0
    load(0, second)  # a second of CPU on each of the other six
    assert spare() is True
    assert spare.others == 0
    now[0] += 1.0
    load(second, 2 * second)  # and on both of its own
    assert spare() is False
    assert spare.others == 2
    spare.use({0})
    now[0] += 1.0
    load(second, 3 * second)
    assert spare.cores == 1
    assert spare() is False  # a fresh starting point after the change


def test_spare_core_is_false_when_the_load_cannot_be_read(tmp_path: Path) -> None:
    """No file, garbage, a CPU's line that is not numbers, or one of its CPUs missing."""
    texts = (None, "garbage\n", "cpu  a b c d e\ncpu0 a b c d e\ncpu1 1 2 3 4\n", "cpu0 1 0 0 5\n")
    for text in texts:
        stat = tmp_path / "stat"
        if text is None:
            stat.unlink(missing_ok=True)
        else:
            stat.write_text(text)
        spare = SpareCore(cpus={0, 1}, stat=stat, interval=0.0)
        assert (spare(), spare()) == (False, False)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _until_each_burned(burners: list[trio.Process], seconds: float) -> None:
    """Until every burner has used ``seconds`` more CPU (nothing announces it: look)."""
    start = [_cpu_seconds(b.pid) for b in burners]
    with trio.fail_after(10):
        while any(_cpu_seconds(b.pid) - s < seconds for b, s in zip(burners, start, strict=True)):
            await trio.sleep(0.02)


async def test_spare_core_sees_real_processes_keeping_every_core_busy() -> None:
    """As many busy-looping processes as there are cores: no core to spare."""
    cores = len(os.sched_getaffinity(0))
    burners = [
        await trio.lowlevel.open_process([sys.executable, "-c", "while True: pass"])
        for _ in range(cores)
    ]
    try:
        await _until_each_burned(burners, 0.05)  # running, not still starting
        spare = SpareCore(interval=0.0)
        spare()
        # A window in which each burner used a good share of a core.
        await _until_each_burned(burners, 0.3)
        assert spare() is False, f"others {spare.others} of {cores} cores"
    finally:
        with trio.CancelScope(shield=True), trio.fail_after(10):
            for burner in burners:
                burner.kill()  # ours, by PID
                await burner.wait()
