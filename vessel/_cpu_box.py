"""A module that runs away is quarantined to the box CPU; the rest of Vessel keeps off
that CPU meanwhile.

A module process confines long guest work to one CPU, the box, by itself
(``vessel.host._confine``), quietly. What it reports to the daemon (``guest.box``) is
work a healthy module does not do: guest work that has used a quarter of its deadline's
CPU time (at least 50 ms) without returning, a flood beyond its rate limit, and a
start-up after a crash (which runs in the box). The daemon also hears of every trap
(a deadline exceeded included) and crash. For any of these the module is quarantined:

* every thread of its process is placed in the box (and so is the process that
  replaces it after a crash, from its first instruction), and so is the fork server
  that starts module processes;
* the daemon's threads and those of every other module process keep to the other CPUs.

How long: while the reported work lasts and ``LINGER`` (1 s) after, ``quarantine``
seconds (default 10) after a trap or a crash: a module that misbehaves tends to do it
again. When no module is quarantined any more, every thread gets all its CPUs back. An
admin restart, stop or removal lifts a module's quarantine at once. The operator reads
one line at INFO when a module goes into quarantine, saying why in plain words; how the
threads were placed, and the end, are DEBUG.

Why: confinement alone keeps a runaway to one core, but the kernel still wakes the
healthy call chain (daemon, module, client) onto that core, where each wake-up may wait
behind the runaway, and what a misbehaving module does besides (trapping, restarting)
lands on any core. On 2 cores (bench/: a healthy module's p99 call latency beside a
neighbour that spins, traps and floods, with the measuring client kept off the box as a
remote dashboard would be; docs/performance.md) that cost the healthy module 2.5-3.4x
its quiet p99; with the quarantine 1.55-2.86x, mostly under 2x. While a module is
quarantined, the others have one CPU fewer: which is why only a runaway is, never a
healthy module's long command (session 12 quarantined on any 2 ms of guest work, and
ten healthy modules under ordinary load were quarantined four times a second).

A claim is checked against the CPU it is made for. The module process is not trusted
(security.md): one that says it has work in the box and does not use a CPU for it (a
compromised process holding everyone else off a CPU) is not quarantined for it. While a
module holds the box, its process's CPU time is looked at every ``CLAIM_WINDOW``; a
window in which it used less than ``CLAIM_MIN_SHARE`` of a CPU makes its claims
unbacked, and stays so (releasing and claiming again, or the ``LINGER`` a release would
give, do not help) until a window shows it using the CPU again. Real long work in the
box uses a quarter of that CPU or more, even shared with other runaways (each yields
every slice). The first window is trusted: a runaway is quarantined at once.

Only threads that have one of the sets placed here (every CPU Vessel runs on, the CPUs
off the box, the box) are moved, so a thread somebody pinned elsewhere on purpose is
left alone; so is a thread of a module that is not quarantined found in the box (its
own process confined it). Nothing here needs privileges (the daemon may set the
affinity of its own children), and with a single usable CPU it does nothing.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping

import trio

from actors import affinity_changed

from .host._confine import box_cpu

log = logging.getLogger("vessel.cpu")

#: Seconds a module stays quarantined after a trap or a crash.
QUARANTINE = 10.0
#: Seconds it stays after reported work that ended well: a runaway that is back within
#: this (the next command of a flood) finds the others still off its CPU.
LINGER = 1.0
#: Seconds between two looks at the CPU time of a module that holds the box.
CLAIM_WINDOW = 1.0
#: The share of a CPU a module that holds the box must use for its claim to count.
CLAIM_MIN_SHARE = 0.05

#: Seconds a module that misbehaved (trapped, crashed, ran away, flooded) stays a
#: suspect: its long work is reported as a runaway from its confinement on (2 ms in),
#: not a quarter of its deadline in, its restarts included.
SUSPECT = 600.0

#: What the operator reads for each reason a module process gives for its claim.
_CLAIMS = {
    "runaway": "its code has been running for a long time without returning",
    "flood": "it sends events or log lines faster than its rate limit allows",
    "restart": "it is starting again after a crash",
}

_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of process ``pid`` so far (None: it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # After the command name, which may hold spaces and parentheses: state is field 3.
    fields = stat[stat.rfind(b")") + 2 :].split()
    try:
        return (int(fields[11]) + int(fields[12])) / _TICKS_PER_SECOND
    except (IndexError, ValueError):
        return None


class CpuBox:
    """Quarantines modules that do long work to the box CPU; see the module docstring.

    ``occupied(module_id, True/False)`` as the modules report; ``misbehaved`` when one
    traps or crashes; ``process_started`` for each new module process;
    ``release(module_id)`` when an admin restarts, stops or removes one. ``run`` (a
    task) applies the changes.
    """

    def __init__(
        self,
        processes: Callable[[], Mapping[str, int]],
        *,
        helpers: Callable[[], Iterable[int]] = tuple,
        allowed: Iterable[int] | None = None,
        quarantine: float = QUARANTINE,
    ) -> None:
        """``processes()``: module id -> pid of every module process running now.
        ``helpers()``: processes that go into the box with a quarantined module (the
        fork server: what it does is start module processes, long work that is not in
        a hurry, and a quarantined module restarts often). ``allowed``: the CPUs Vessel
        runs on (by default this thread's, as the module processes compute theirs)."""
        self._processes = processes
        self._helpers = helpers
        self._everything = frozenset(os.sched_getaffinity(0) if allowed is None else allowed)
        self._box = box_cpu(self._everything)
        self._boxed = frozenset({self._box}) if self._box is not None else frozenset()
        self._clear = self._everything - self._boxed
        self.quarantine = quarantine
        #: Modules with work in the box now, and when the others' quarantine ends.
        self._holding: set[str] = set()
        #: Why each module was last sent to the box, in the operator's words.
        self._why: dict[str, str] = {}
        #: When each module last misbehaved (for ``suspect``).
        self._misbehaved: dict[str, float] = {}
        self._until: dict[str, float] = {}
        #: Per module that held the box: its pid, the time and its process's CPU time at
        #: the start of the current window; and those whose claims are unbacked.
        self._windows: dict[str, tuple[int, float, float]] = {}
        self._unbacked: set[str] = set()
        #: The quarantined modules as last placed, and as being placed now (the same
        #: but during a placement: ``_apply`` goes in steps).
        self._placed: frozenset[str] = frozenset()
        self._placing: frozenset[str] = frozenset()
        #: Quarantined modules that reported since: their threads are placed again (a
        #: confined thread given its CPUs back by its own process must go back in).
        self._recheck: set[str] = set()
        self._changed = trio.Event()
        #: How many times the daemon went off the box, and threads moved in all.
        self.narrowings = 0
        self.moved = 0

    @property
    def enabled(self) -> bool:
        return self._box is not None

    @property
    def quarantined(self) -> frozenset[str]:
        """The modules in quarantine now (placed, or being placed)."""
        return self._placing

    @property
    def placed(self) -> frozenset[str]:
        """The quarantine as the last finished placement left it: these modules' threads
        in the box, everyone else's off it. Behind :attr:`quarantined` while a placement
        is under way (it goes one process at a time)."""
        return self._placed

    @property
    def unbacked(self) -> frozenset[str]:
        """Modules whose claims to the box are ignored: no CPU use to back them."""
        return frozenset(self._unbacked)

    @property
    def narrowed(self) -> bool:
        """True while the daemon and the other modules keep off the box: from the start
        of a quarantine's placement to the end of the placement that lifts it."""
        return bool(self._placed or self._placing)

    def occupied(self, module_id: str, occupied: bool, why: str = "runaway") -> None:
        """Module ``module_id`` has (or no longer has) work on the box CPU, for ``why``
        (``vessel.host._confine.BoxReason``)."""
        if not self.enabled:
            return
        if occupied:
            self._holding.add(module_id)  # a quarantine it is in goes on (``_extend``)
            self._why[module_id] = _CLAIMS.get(why, _CLAIMS["runaway"])
            if why != "restart":
                self._misbehaved[module_id] = trio.current_time()
            self._open_window(module_id)
        elif module_id in self._holding:
            self._holding.discard(module_id)
            if module_id not in self._unbacked:
                self._extend(module_id, LINGER)
        self._recheck.add(module_id)
        self._changed.set()

    def misbehaved(self, module_id: str, why: str) -> None:
        """Module ``module_id`` trapped or crashed (``why``, in the operator's words:
        "it trapped: ..."): quarantined for ``quarantine`` s."""
        if not self.enabled:
            return
        self._why[module_id] = why
        self._misbehaved[module_id] = trio.current_time()
        self._extend(module_id, self.quarantine)
        self._changed.set()

    def suspect(self, module_id: str) -> bool:
        """Whether ``module_id`` misbehaved within ``SUSPECT`` seconds (an admin restart
        lifts its quarantine, not this): its next process reports long work at once."""
        at = self._misbehaved.get(module_id)
        return at is not None and trio.current_time() - at < SUSPECT

    def _extend(self, module_id: str, seconds: float) -> None:
        until = trio.current_time() + seconds
        self._until[module_id] = max(until, self._until.get(module_id, until))

    def release(self, module_id: str) -> None:
        """Lift ``module_id``'s quarantine now (an admin restarted, stopped or removed it)."""
        self._windows.pop(module_id, None)
        self._why.pop(module_id, None)
        self._unbacked.discard(module_id)
        if module_id in self._holding or module_id in self._until:
            self._holding.discard(module_id)
            self._until.pop(module_id, None)
            self._changed.set()

    def _open_window(self, module_id: str) -> None:
        """Start looking at the CPU use behind a claim, unless a window of this process
        is under way (a claim made again soon after a release does not start afresh)."""
        pid = self._processes().get(module_id)
        window = self._windows.get(module_id)
        now = trio.current_time()
        if pid is None or (window and window[0] == pid and now - window[1] < 2 * CLAIM_WINDOW):
            return
        cpu = process_cpu_seconds(pid)
        if cpu is not None:
            self._windows[module_id] = (pid, now, cpu)

    def _check_claims(self, now: float) -> None:
        """Close the windows that are over for the modules holding the box."""
        processes = self._processes() if self._holding else {}
        for module_id in sorted(self._holding):
            window = self._windows.get(module_id)
            if window is None or now - window[1] < CLAIM_WINDOW:
                continue
            pid, since, cpu_then = window
            cpu = process_cpu_seconds(pid)
            if cpu is None or processes.get(module_id) != pid:
                del self._windows[module_id]  # the process is gone: its claims with it
                continue
            self._windows[module_id] = (pid, now, cpu)
            used, elapsed = cpu - cpu_then, now - since
            if used >= CLAIM_MIN_SHARE * elapsed:
                self._unbacked.discard(module_id)
            elif module_id not in self._unbacked:
                self._unbacked.add(module_id)
                log.warning(
                    "module %s says it is busy on CPU %s, but its process used only %.0f "
                    "ms of CPU in the last %.1f s: it is not kept in quarantine for that "
                    "(a module process that says so without using the CPU may have been "
                    "tampered with)",
                    module_id, self._box, used * 1000, elapsed,
                )  # fmt: skip

    def _next_look(self) -> float:
        ends = [w[1] + CLAIM_WINDOW for m, w in self._windows.items() if m in self._holding]
        return min([*self._until.values(), *ends], default=math.inf)

    def process_started(self, module_id: str, pid: int) -> None:
        """Place a new module process at once: a quarantined module's in the box. (One
        forked meanwhile starts in the box, where the fork server is.)"""
        if self._placing:
            self.moved += self._place(pid, self._target(module_id), True)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        if not self.enabled:
            return
        try:
            while True:
                with trio.move_on_at(self._next_look()):
                    await self._changed.wait()
                self._changed = trio.Event()
                now = trio.current_time()
                for module_id in [m for m, until in self._until.items() if until <= now]:
                    del self._until[module_id]
                self._check_claims(now)
                held = frozenset(self._holding - self._unbacked)
                for _ in self._apply(held | frozenset(self._until)):
                    await trio.lowlevel.checkpoint()
        finally:
            # Stopping (maybe in the middle of a placement): leave no thread narrowed
            # or boxed, all at once.
            for _ in self._apply(frozenset(), force=True):
                pass

    # -- placing threads -----------------------------------------------------------------

    def _apply(self, quarantined: frozenset[str], *, force: bool = False) -> Iterator[None]:
        """Place every thread for ``quarantined`` being the quarantine, one process at a
        time: the caller lets the daemon's other tasks run at each step. Moving the
        threads of every module process holds the daemon's loop for as long as it takes
        (measured: 0.4 ms with 10 module processes, 1.4-3 ms with 50, and several times
        that in a busy daemon), which every call and event then waits for. The daemon
        goes first, then the quarantined modules, then the others and the helpers.
        ``force``: place everything even if nothing changed (a placement cut short)."""
        recheck, self._recheck = self._recheck, set()
        if quarantined == self._placed and not force:
            # Nothing changed but reports: put back what a confinement's end let out.
            processes = self._processes()
            for module_id in recheck & quarantined:
                if module_id in processes:
                    self.moved += self._place(processes[module_id], self._boxed, True)
                    yield
            return
        before = self._placed
        # Threads in the box that a placement of ours (maybe one cut short) put there.
        ours = before | self._placing | quarantined
        self._placing = quarantined
        if quarantined and not before:
            self.narrowings += 1
        moved = self._place(os.getpid(), self._target(None), False)
        affinity_changed()  # the daemon's active wait must not spin on a single CPU
        processes = self._processes()
        for module_id in sorted(processes, key=lambda m: m not in quarantined):
            yield
            pid = processes[module_id]
            moved += self._place(pid, self._target(module_id), module_id in ours)
        for pid in self._helpers():
            yield
            moved += self._place(pid, self._boxed if quarantined else self._everything, True)
        self._placed = quarantined
        self.moved += moved
        for module_id in sorted(quarantined - before):
            log.info(
                "module %s is quarantined to CPU %d (the daemon and the other modules keep "
                "off it meanwhile): %s",
                module_id, self._box, self._why.get(module_id, _CLAIMS["runaway"]),
            )  # fmt: skip
        if before and not quarantined:
            log.debug("quarantine over, every CPU in use again")
        log.debug("placed for quarantine %s: %d threads moved", sorted(quarantined), moved)

    def _target(self, module_id: str | None) -> frozenset[int]:
        if module_id is not None and module_id in self._placing:
            return self._boxed
        return self._clear if self._placing else self._everything

    def _place(self, pid: int, target: frozenset[int], ours_in_box: bool) -> int:
        """Move the threads of ``pid`` that have one of our sets to ``target``. Threads
        in the box are moved only if we put them there (``ours_in_box``)."""
        movable = {self._everything, self._clear} | ({self._boxed} if ours_in_box else set())
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            return 0  # the process ended
        moved = 0
        for tid in map(int, tids):
            try:
                cpus = frozenset(os.sched_getaffinity(tid))
                if cpus != target and cpus in movable:
                    os.sched_setaffinity(tid, target)
                    moved += 1
            except OSError:
                continue  # the thread ended, or the CPUs allowed changed (a cpuset)
        return moved
