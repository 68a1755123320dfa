"""Home-server figures (issue 22): a first start that compiles, what compiling and
installing leave in memory, what one more module costs, and a soak.

A home server starts with modules nobody has compiled yet (a new data dir, an upgrade
of wasmtime), on a small machine, and then runs for months. So these steps measure:

* ``first_start``: ``vessel serve`` with modules installed without their compiled code,
  the daemon and everything it starts kept on one CPU, to all of them running; floor:
  the same compiles, one after the other, each in a bare ``python -m
  vessel.host._compile`` on the same CPU.
* ``compile_memory``: each module process's private memory after a first start that
  needed a compile, against the same module started from the artifact that compile wrote.
* ``install_memory``: the daemon's own private memory after installs through ``POST
  /api/modules`` (each uploads and compiles a component), against before them.
* ``marginal_memory``: the whole process tree's PSS with few and with many idle modules:
  what one more module costs the machine, and where it goes.
* ``soak`` (``python -m bench --soak MINUTES``, not one of the default steps): busy
  modules for a while, everyone's private memory sampled, a least-squares slope per
  process after a warm-up.

Memory is read from ``/proc/<pid>/smaps_rollup``: USS is Private_Clean + Private_Dirty
(pages this process alone maps), Private_Dirty the written part of it, Pss each page
divided among the processes that map it (so the Pss of a set of processes adds up to
what the set holds).
"""

from __future__ import annotations

import json
import math
import os
import re
import resource
import shutil
import statistics
import time
from collections.abc import Collection, Iterable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio

from vessel._install import install_module
from vessel._manifest import ModuleSource

from ._control import open_control
from ._figures import Bench, Figure, Settings, _bare_child_running
from ._inproc import PARAMS
from ._procs import (
    PYTHON,
    ROOT,
    BenchError,
    LineCounter,
    Vessel,
    load_clients,
    pinned,
    vessel_serve,
)
from ._report import machine
from ._setup import Guest
from ._stats import line_fit

MiB = 2**20
#: The daemon's log line when a compile is over (vessel/_compiler.py).
_COMPILED = re.compile(r"vessel\.compile: compiled (\S+) in ([\d.]+) s")
#: The fork server's command line (actors/_forkserver.py); its children, the module
#: processes, are forks of it and carry the same.
_FORKSERVER = b"actors._forkserver_main"
#: Bounds: one compile of a Python guest (~15 s of CPU here, at nice 5 beside whatever
#: else runs), a daemon's start apart from its compiles, an install's answer.
COMPILE_BOUND = 600.0
START_BOUND = 120.0


@dataclass(frozen=True)
class HomeSettings:
    """How much the home-server steps measure; ``quick`` exercises every code path with
    two modules and a guest that compiles in milliseconds (numbers that mean nothing)."""

    quick: bool
    #: The guest the compiling steps install uncompiled (a Python guest: the example
    #: module, which ticks every second with a storage write and an event).
    compile_guest: str = "example"
    first_start_modules: int = 10
    compile_memory_modules: int = 3
    installs: int = 5
    #: The guest installed through the API (a Python guest that does nothing unasked).
    install_guest: str = "bench-echo"
    #: The idle modules of marginal_memory, and how many: few, then many.
    marginal_guest: str = "bench-echo"
    marginal_counts: tuple[int, int] = (1, 20)
    #: Seconds left alone after the calls before memory is read.
    settle: float = 3.0
    soak_modules: int = 10
    soak_clients: int = 2
    #: Calls per second in all, over every soak module (add, get, echo in turn).
    soak_rate: float = 100.0
    #: Seconds between two memory samples at most (shorter soaks sample more often).
    soak_interval: float = 5.0

    @classmethod
    def make(cls, quick: bool) -> HomeSettings:
        if not quick:
            return cls(quick=False)
        return cls(
            quick=True,
            compile_guest="bench-tiny",
            first_start_modules=2,
            compile_memory_modules=1,
            installs=2,
            install_guest="bench-tiny",
            marginal_counts=(1, 2),
            settle=0.3,
            soak_modules=2,
            soak_clients=1,
            soak_rate=20.0,
        )


# -- reading memory ----------------------------------------------------------------------


def rollup(pid: int) -> dict[str, int]:
    """Every field of ``/proc/<pid>/smaps_rollup`` in bytes (Rss, Pss, Shared_Clean,
    Private_Dirty, ...), and ``USS`` = Private_Clean + Private_Dirty."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if len(parts) == 2 and parts[1] == "kB":
            out[key] = int(parts[0]) * 1024
    out["USS"] = out.get("Private_Clean", 0) + out.get("Private_Dirty", 0)
    out["Shared"] = out.get("Shared_Clean", 0) + out.get("Shared_Dirty", 0)
    return out


def _children() -> dict[int, list[int]]:
    """Every process's children, from each one's parent in ``/proc/<pid>/stat``."""
    kids: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:
            continue  # ended meanwhile
        # The name in parentheses may hold spaces and parentheses: split after the last.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(entry.name))
    return kids


@dataclass
class Tree:
    """A daemon's process tree at one moment: each process's rollup."""

    daemon: dict[str, int]
    forkserver: dict[str, int] | None
    #: module id -> its process's rollup
    modules: dict[str, dict[str, int]]
    #: anything else (a compile under way): pid -> rollup
    others: dict[int, dict[str, int]] = field(default_factory=dict)

    def total(self, key: str) -> int:
        every = [self.daemon, *self.modules.values(), *self.others.values()]
        if self.forkserver is not None:
            every.append(self.forkserver)
        return sum(mem.get(key, 0) for mem in every)


def process_tree(vessel: Vessel) -> Tree:
    """The daemon, its fork server, its module processes and anything else it runs."""
    root = vessel.process.pid
    module_of = {pid: module_id for module_id, pid in vessel.pids.items()}
    kids = _children()
    tree = Tree(daemon=rollup(root), forkserver=None, modules={})
    todo = [root]
    while todo:
        parent = todo.pop()
        for pid in kids.get(parent, []):
            todo.append(pid)
            try:
                mem = rollup(pid)
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue  # ended meanwhile (a compile, a restart)
            if pid in module_of:
                tree.modules[module_of[pid]] = mem
            elif parent == root and _FORKSERVER in cmdline:
                tree.forkserver = mem
            else:
                tree.others[pid] = mem
    return tree


def _mib(value: float) -> str:
    return f"{value / MiB:.1f}"


#: A mapping's first line in ``/proc/<pid>/smaps``: range, perms, offset, dev, inode, path.
_MAPPING = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+ *(.*)$")
_KEPT = ("Rss", "Pss", "Private_Clean", "Private_Dirty")


def _kind(path: str, perms: str, size: int) -> str:
    """What a mapping holds, for a breakdown of a process's memory."""
    if path.endswith(".cwasm"):
        # The module's compiled artifact: its code, and the guest's initial memory
        # image, mapped copy-on-write (pages the guest writes become Private_Dirty).
        if "x" in perms:
            return "artifact code"
        return "guest memory image" if "w" in perms else "artifact data"
    if path == "[heap]":
        return "C heap"
    if not path:
        # Wasmtime reserves gigabytes of address space for a guest's linear memory.
        return "wasm memory" if size >= 1 << 30 else "anonymous"
    if path.startswith("["):
        return "other"
    return "interpreter, libraries"


def smaps_by_kind(pid: int) -> dict[str, dict[str, int]]:
    """``/proc/<pid>/smaps`` summed by what each mapping holds (``_kind``): Rss, Pss,
    Private_Clean, Private_Dirty in bytes. "anonymous" is CPython's arenas, malloc's
    large blocks, thread stacks and wasmtime's own allocations."""
    out: dict[str, dict[str, int]] = {}
    current: dict[str, int] | None = None
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        match = _MAPPING.match(line)
        if match:
            size = int(match.group(2), 16) - int(match.group(1), 16)
            kind = _kind(match.group(4).strip(), match.group(3), size)
            current = out.setdefault(kind, dict.fromkeys(_KEPT, 0))
            continue
        key, _, rest = line.partition(":")
        parts = rest.split()
        if current is not None and key in _KEPT and len(parts) == 2 and parts[1] == "kB":
            current[key] += int(parts[0]) * 1024
    return out


def _by_kind(kinds: dict[str, dict[str, int]], key: str) -> str:
    """``kinds``' ``key`` in MiB, largest first (what holds at least 0.1 MiB)."""
    ordered = sorted(kinds.items(), key=lambda item: -item[1][key])
    return ", ".join(f"{kind} {_mib(mem[key])}" for kind, mem in ordered if mem[key] >= MiB / 10)


def _growth_by_kind(
    before: dict[str, dict[str, int]], after: dict[str, dict[str, int]], key: str
) -> str:
    """How ``key`` moved per kind of mapping from ``before`` to ``after`` (MiB)."""
    deltas = {
        kind: after.get(kind, {}).get(key, 0) - before.get(kind, {}).get(key, 0)
        for kind in {*before, *after}
    }
    ordered = sorted(deltas.items(), key=lambda item: -abs(item[1]))
    return ", ".join(f"{kind} {d / MiB:+.1f}" for kind, d in ordered if abs(d) >= MiB / 10)


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> tuple[float, float]:
    """A process's own CPU time and that of its children it has reaped, seconds
    (utime + stime, cutime + cstime of ``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
    return (utime + stime) / _TICK, (cutime + cstime) / _TICK


# -- module folders ----------------------------------------------------------------------


def manifest_as(guest: Guest, module_id: str) -> bytes:
    """``guest``'s manifest under another id."""
    doc = json.loads(guest.manifest)
    doc["id"] = module_id
    return (json.dumps(doc, indent=2) + "\n").encode()


def _compile_log() -> tuple[LineCounter, dict[str, float]]:
    """A counter of a daemon's ``compiled X in N s`` lines, and what they said (module id
    -> seconds), filled as the lines come."""
    seconds: dict[str, float] = {}

    def seen(line: str) -> bool:
        match = _COMPILED.search(line)
        if match:
            seconds[match.group(1)] = float(match.group(2))
        return match is not None

    return LineCounter(seen), seconds


async def _compile_alone(source: ModuleSource, cpus: Collection[int]) -> float:
    """Compile ``source`` in a bare ``python -m vessel.host._compile`` kept on ``cpus``
    (the daemon's own compile process, without the daemon); seconds it took."""
    argv = [PYTHON, "-m", "vessel.host._compile", str(source.dir)]
    argv += ["--source-hash", source.hash, "--module-id", source.id]
    start = time.monotonic()
    # Cancelled (the bound), trio ends the process it started.
    with trio.fail_after(COMPILE_BOUND):
        result = await trio.run_process(
            argv, capture_stderr=True, check=False, cwd=ROOT, preexec_fn=pinned(cpus)
        )
    if result.returncode != 0:
        raise BenchError(f"compiling {source.id} failed:\n{result.stderr.decode()[-2000:]}")
    return time.monotonic() - start


def _spread(values: Iterable[float], unit: str = "s") -> str:
    ordered = sorted(values)
    return f"{ordered[0]:.1f} to {ordered[-1]:.1f} {unit} each"


# -- the steps ---------------------------------------------------------------------------


class HomeBench(Bench):
    """The benchmark run with the home-server steps (and the soak) beside the others."""

    def __init__(self, guests: dict[str, Guest], scratch: Path, settings: Settings) -> None:
        super().__init__(guests, scratch, settings)
        self.home = HomeSettings.make(settings.quick)

    def uncompiled_dir(self, modules: dict[str, str]) -> tuple[Path, list[ModuleSource]]:
        """A fresh data dir with ``modules`` (id -> guest name) installed by the real
        installer without their compiled code (``compile=None``): the daemon compiles
        each before its first start, as after a new install dropped in or an upgrade."""
        path = self.data_dir({})
        sources = [
            install_module(
                path,
                manifest_as(self.guests[guest], module_id),
                self.guests[guest].wasm.read_bytes(),
                compile=None,
            )
            for module_id, guest in modules.items()
        ]
        return path, sources

    def own_copies_dir(self, modules: dict[str, str]) -> Path:
        """A fresh data dir with ``modules`` installed from their compiled templates, each
        with a compiled artifact of its own: ``add_module`` hard-links one file into every
        module, which would let all their processes share the compiled code's pages, as
        no two different modules of a real home server do."""
        path = self.data_dir(modules)
        for artifact in (path / "modules").glob("*/compiled/*"):
            if artifact.is_file() and artifact.stat().st_nlink > 1:
                copy = artifact.with_name(artifact.name + ".copy")
                shutil.copyfile(artifact, copy)
                os.replace(copy, artifact)
        return path

    # -- first start -------------------------------------------------------------------

    async def first_start(self) -> None:
        """``vessel serve`` → all modules running, with every module still to compile and
        the daemon on one CPU; floor: the same compiles in bare processes, one after the
        other, on the same CPU."""
        h = self.home
        count = h.first_start_modules
        cpu = {min(os.sched_getaffinity(0))}
        modules = {f"first-{i}": h.compile_guest for i in range(count)}
        _, floor_sources = self.uncompiled_dir(modules)
        # The CPU time of the children this process reaps: the floor's compiles only.
        reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
        floor_each = [await _compile_alone(source, cpu) for source in floor_sources]
        floor = sum(floor_each)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        floor_cpu = after.ru_utime + after.ru_stime - reaped.ru_utime - reaped.ru_stime

        data_dir, _ = self.uncompiled_dir(modules)
        counter, compiled = _compile_log()
        async with vessel_serve(data_dir, counters=(counter,), cpus=cpu) as vessel:
            answered = time.monotonic() - vessel.spawned_at
            last = await vessel.wait_started(count, timeout=START_BOUND + COMPILE_BOUND * count)
            starting = (vessel.starting_modules_at or vessel.spawned_at) - vessel.spawned_at
            first = min(vessel.started.values()) - vessel.spawned_at
            # Where that CPU's time went: the daemon, the compiles it reaped, the fork
            # server and the module processes (started, loaded, running).
            daemon_cpu, compiles_cpu = cpu_seconds(vessel.process.pid)
            # Its children still there: the fork server (the module processes are its).
            forkserver_cpu = sum(
                cpu_seconds(pid)[0] for pid in _children().get(vessel.process.pid, [])
            )
            modules_cpu = sum(cpu_seconds(pid)[0] for pid in vessel.pids.values())
        if sorted(compiled) != sorted(modules):
            raise BenchError(f"the daemon compiled {sorted(compiled)}, not {sorted(modules)}")
        total = last - vessel.spawned_at
        self.results.figures.append(
            Figure(
                "first_start",
                f"first start, {count} modules to compile, one CPU: vessel serve → all running",
                total,
                floor,
                "s",
                1.1,
                note=f"{count} {h.compile_guest} modules installed without their compiled "
                f"code; the daemon and everything it starts kept on CPU {min(cpu)} (its "
                "compile jobs: the default, one there). It answered HTTP "
                f"{answered:.1f} s after its exec, began starting its modules at "
                f"{starting:.1f} s, the first ran at {first:.1f} s and all {count} at "
                f"{total:.1f} s; its compiles took {sum(compiled.values()):.1f} s by its own "
                f"log ({_spread(compiled.values())}). Floor = the same {count} compiles one "
                "after the other, each a bare `python -m vessel.host._compile` (nice 5, "
                f"SCHED_BATCH, as the daemon's) on the same CPU: {floor:.1f} s "
                f"({_spread(floor_each)}). CPU time used on that CPU: Vessel's compiles "
                f"{compiles_cpu:.1f} s (the floor's {floor_cpu:.1f} s), the daemon "
                f"{daemon_cpu:.1f} s, the fork server {forkserver_cpu:.1f} s, the module "
                f"processes {modules_cpu:.1f} s in all; of the {total:.1f} s, "
                f"{total - compiles_cpu - daemon_cpu - forkserver_cpu - modules_cpu:.1f} s "
                f"went to no process of Vessel's (others on that CPU, or idle); for the "
                f"floor, {floor - floor_cpu:.1f} s",
            )
        )

    # -- memory after a compile --------------------------------------------------------

    async def _modules_memory(
        self, data_dir: Path, ids: list[str], compiles: int
    ) -> tuple[dict[str, dict[str, int]], dict[str, float]]:
        """Each module process's rollup after all ``ids`` have started (``compiles`` of
        them compiled first), each has answered one echo and the daemon was left alone
        ``settle`` seconds; and each module's age (seconds since it started) then."""
        counter, compiled = _compile_log()
        bound = START_BOUND + COMPILE_BOUND * compiles
        async with vessel_serve(data_dir, counters=(counter,)) as vessel:
            await vessel.wait_started(len(ids), timeout=bound)
            async with open_control(vessel) as control:
                for module_id in ids:
                    await control.call(module_id, "echo", PARAMS)
            await trio.sleep(self.home.settle)
            now = time.monotonic()
            memory = {module_id: rollup(vessel.pids[module_id]) for module_id in ids}
            ages = {module_id: now - vessel.started[module_id] for module_id in ids}
        if len(compiled) != compiles:
            raise BenchError(f"expected {compiles} compiles, the daemon logged {compiled}")
        return memory, ages

    async def compile_memory(self) -> None:
        """Each module process's USS and Private_Dirty after a first start that compiled
        it, against the same module (same folder, same artifact) started again from that
        artifact by a new daemon; the figures are the module with the largest ratio."""
        h = self.home
        ids = [f"compiled-{i}" for i in range(h.compile_memory_modules)]
        data_dir, _ = self.uncompiled_dir(dict.fromkeys(ids, h.compile_guest))
        after_compile, ages = await self._modules_memory(data_dir, ids, compiles=len(ids))
        from_artifact, loaded_ages = await self._modules_memory(data_dir, ids, compiles=0)
        for key, label, figure_key in (
            ("USS", "private memory (USS)", "compile_memory"),
            ("Private_Dirty", "Private_Dirty", "compile_memory_dirty"),
        ):
            ratios = {i: after_compile[i][key] / from_artifact[i][key] for i in ids}
            worst = max(ids, key=lambda i: ratios[i])
            each = ", ".join(
                f"{i} {_mib(after_compile[i][key])} vs {_mib(from_artifact[i][key])}" for i in ids
            )
            self.results.figures.append(
                Figure(
                    figure_key,
                    f"{label} of a module process after a first start that compiled it",
                    after_compile[worst][key] / MiB,
                    from_artifact[worst][key] / MiB,
                    "MiB",
                    1.1,
                    note=f"{len(ids)} {h.compile_guest} modules installed uncompiled; a "
                    "daemon compiled each (in its own process) and started it; floor = "
                    "the same module started by a new daemon from the artifact that "
                    "compile wrote; each after one echo call and "
                    f"{h.settle:g} s idle; the module with the largest ratio: {worst}. "
                    f"Every module, MiB after the compile vs from the artifact: {each}; "
                    f"their ages when read: {_spread(ages.values())} vs "
                    f"{_spread(loaded_ages.values())}",
                )
            )

    # -- the daemon's memory after installs ---------------------------------------------

    async def _warm(self, http: httpx.AsyncClient) -> None:
        """A first round of the API's reads, so its first use is not counted as growth."""
        for path in ("/healthz", "/api/modules", "/api/modules/version"):
            (await http.get(path)).raise_for_status()

    async def install_memory(self) -> None:
        """The daemon's USS and Private_Dirty after ``installs`` installs through ``POST
        /api/modules`` (``installs`` ids of one guest, each uploaded, compiled and
        started), against before them; beside it, a new daemon starting the same modules
        already installed (what the modules themselves cost the daemon)."""
        h = self.home
        guest = self.guests[h.install_guest]
        wasm = guest.wasm.read_bytes()
        ids = [f"installed-{i}" for i in range(h.installs)]
        data_dir = self.data_dir({})
        steps: list[dict[str, int]] = []
        took: list[float] = []
        async with vessel_serve(data_dir) as vessel:
            pid = vessel.process.pid
            async with _api(vessel) as http:
                await self._warm(http)
                await trio.sleep(h.settle)
                before = rollup(pid)
                kinds_before = smaps_by_kind(pid)
                for number, module_id in enumerate(ids, 1):
                    files = {
                        "manifest": ("manifest.json", manifest_as(guest, module_id), None),
                        "wasm": ("module.wasm", wasm, "application/wasm"),
                    }
                    start = time.monotonic()
                    with trio.fail_after(COMPILE_BOUND + START_BOUND):
                        response = await http.post("/api/modules", files=files)
                        if response.status_code not in (200, 201, 202):
                            raise BenchError(
                                f"installing {module_id}: {response.status_code} "
                                f"{response.text[:500]}"
                            )
                        await vessel.wait_started(number, timeout=COMPILE_BOUND + START_BOUND)
                    took.append(time.monotonic() - start)
                    await trio.sleep(h.settle)
                    steps.append(rollup(pid))
                kinds_after = smaps_by_kind(pid)
        async with vessel_serve(data_dir) as vessel:
            await vessel.wait_started(len(ids))
            async with _api(vessel) as http:
                await self._warm(http)
            await trio.sleep(h.settle)
            preinstalled = rollup(vessel.process.pid)
            kinds_preinstalled = smaps_by_kind(vessel.process.pid)
        after = steps[-1]
        for key, label, figure_key in (
            ("USS", "private memory (USS)", "install_memory"),
            ("Private_Dirty", "Private_Dirty", "install_memory_dirty"),
        ):
            growth = " → ".join(_mib(mem[key]) for mem in [before, *steps])
            self.results.figures.append(
                Figure(
                    figure_key,
                    f"daemon's {label} after {len(ids)} installs through the API",
                    after[key] / MiB,
                    before[key] / MiB,
                    "MiB",
                    1.1,
                    note=f"{len(ids)} modules of one guest ({h.install_guest}, "
                    f"{len(wasm) / MiB:.1f} MiB of wasm) installed one after the other by "
                    "POST /api/modules (multipart manifest + wasm; each compiled in its "
                    f"own process and started: {_spread(took)}); floor = the same daemon "
                    "before the first, its API warmed by one GET each of /healthz, "
                    f"/api/modules and /api/modules/version; read {h.settle:g} s after "
                    f"each. The daemon's {key} in MiB, before and after each install: "
                    f"{growth}. A new daemon that started the same {len(ids)} modules "
                    f"already installed (same warm-up): {_mib(preinstalled[key])} MiB (what "
                    "running them costs the daemon, without their installs). Where "
                    f"the {key} moved, by kind of mapping, MiB: after the installs "
                    f"{_growth_by_kind(kinds_before, kinds_after, key) or 'nowhere'}; the "
                    "new daemon against the one before the installs "
                    f"{_growth_by_kind(kinds_before, kinds_preinstalled, key) or 'nowhere'}",
                )
            )

    # -- marginal memory -----------------------------------------------------------------

    async def marginal_memory(self) -> None:
        """The PSS of the daemon's whole process tree with few and with many idle
        modules, per added module; broken down by process. Each module has a compiled
        artifact of its own, as different modules do."""
        h = self.home
        low, high = h.marginal_counts
        trees: dict[int, Tree] = {}
        module_dirs: list[Path] = []
        for count in (low, high):
            ids = [f"idle-{i}" for i in range(count)]
            data_dir = self.own_copies_dir(dict.fromkeys(ids, h.marginal_guest))
            module_dirs = [data_dir / "modules" / i for i in ids]
            async with vessel_serve(data_dir) as vessel:
                await vessel.wait_started(count, timeout=START_BOUND + 5 * count)
                async with open_control(vessel) as control:
                    for module_id in ids:
                        await control.call(module_id, "echo", PARAMS)
                await trio.sleep(h.settle)
                trees[count] = process_tree(vessel)
                # The module process of median Pss, mapping by mapping.
                by_pss = sorted(ids, key=lambda i: trees[count].modules[i]["Pss"])
                typical = smaps_by_kind(vessel.pids[by_pss[len(by_pss) // 2]])
                if len(trees[count].modules) != count or trees[count].forkserver is None:
                    raise BenchError(
                        f"expected a fork server and {count} module processes under the "
                        f"daemon, found {len(trees[count].modules)} modules and fork server "
                        f"{trees[count].forkserver is not None}"
                    )
        # For comparison: the same modules as bare children (python + wasmtime + the
        # instance, after the same call), no daemon and no fork server.
        bare: dict[int, int] = {}
        for count in (low, high):
            async with AsyncExitStack() as stack:
                pids = [
                    await stack.enter_async_context(
                        _bare_child_running(module_dir, call=("echo", json.dumps(PARAMS)))
                    )
                    for module_dir in module_dirs[:count]
                ]
                await trio.sleep(h.settle)
                bare[count] = sum(rollup(pid)["Pss"] for pid in pids)
        added = high - low
        few, many = trees[low], trees[high]
        per_module = (many.total("Pss") - few.total("Pss")) / added
        daemon = (many.daemon["Pss"] - few.daemon["Pss"]) / added
        assert few.forkserver is not None
        assert many.forkserver is not None
        forkserver = (many.forkserver["Pss"] - few.forkserver["Pss"]) / added
        modules = (
            sum(m["Pss"] for m in many.modules.values())
            - sum(m["Pss"] for m in few.modules.values())
        ) / added

        def median(key: str) -> float:
            return statistics.median(m[key] for m in many.modules.values())

        self.results.figures.append(
            Figure.at_most(
                "marginal_memory",
                f"memory per added idle module (PSS of the whole process tree, {low} → "
                f"{high} modules)",
                per_module / MiB,
                "MiB",
                20.0,
                note=f"sum of Pss over the daemon and all its descendants (fork server, "
                f"module processes) with {low} and {high} {h.marginal_guest} modules (a "
                "Python guest; each its own compiled artifact), after one echo call each "
                f"and {h.settle:g} s idle: {_mib(few.total('Pss'))} → "
                f"{_mib(many.total('Pss'))} MiB. Per added module: daemon "
                f"{_mib(daemon)}, fork server {_mib(forkserver)} (its pages, shared with "
                f"more children, count less in its own Pss), module processes "
                f"{_mib(modules)} MiB. With {high}: daemon Pss {_mib(many.daemon['Pss'])} "
                f"(USS {_mib(many.daemon['USS'])}), fork server Pss "
                f"{_mib(many.forkserver['Pss'])} (Rss {_mib(many.forkserver['Rss'])}); a "
                f"module process (medians) Pss {_mib(median('Pss'))} = private "
                f"{_mib(median('USS'))} (Private_Dirty {_mib(median('Private_Dirty'))}, "
                f"Private_Clean {_mib(median('Private_Clean'))}: mostly its compiled code) "
                f"+ its share of pages mapped by others too, of its Shared "
                f"{_mib(median('Shared'))} (Rss {_mib(median('Rss'))}). For comparison, the "
                f"same modules as bare children (python + wasmtime + the instance, after "
                f"the same call; no daemon, no fork server): Pss {_mib(bare[low])} → "
                f"{_mib(bare[high])} MiB, {_mib((bare[high] - bare[low]) / added)} per "
                f"added child. A module process of median Pss, by kind of mapping, MiB: "
                f"Pss {_by_kind(typical, 'Pss')}; Private_Dirty "
                f"{_by_kind(typical, 'Private_Dirty')}; Private_Clean "
                f"{_by_kind(typical, 'Private_Clean')} (artifact code and data: its "
                "compiled component file, mapped; guest memory image: the guest's initial "
                "linear memory, mapped copy-on-write from that file; wasm memory: the rest "
                "of its linear memory; anonymous: CPython's and wasmtime's heaps, thread "
                "stacks)",
            )
        )

    # -- soak ------------------------------------------------------------------------------

    async def soak(self, minutes: float) -> dict[str, Any]:
        """Busy modules for ``minutes``: calls (``add`` writes storage and emits an event,
        ``get``, ``echo``) at ``soak_rate`` in all, each module's own 1 s timer (a storage
        write and an event), every event delivered to a subscribed WebSocket. The
        daemon's, the fork server's and each module's memory are sampled all along; after
        a warm-up (a third of the run, at most 2 minutes) each gets a least-squares
        slope. Adds the figures to the results; returns the samples and fits."""
        h = self.home
        seconds = minutes * 60
        interval = min(h.soak_interval, max(0.5, seconds / 60))
        warmup = min(seconds / 3, 120.0)
        ids = [f"soak-{i}" for i in range(h.soak_modules)]
        data_dir = self.own_copies_dir(dict.fromkeys(ids, "example"))
        frames = [
            {"type": "call", "module": ids[i % len(ids)], "name": name, "params": params}
            for i in range(math.lcm(len(ids), len(SOAK_CALLS)))
            for name, params in [SOAK_CALLS[i % len(SOAK_CALLS)]]
        ]
        samples: dict[str, list[tuple[float, dict[str, int]]]] = {}
        restarts: dict[str, int] = {}
        # Each process's mappings by kind at the warm-up's end and at the end: where it
        # grew. name -> (pid, smaps_by_kind)
        mappings: dict[str, dict[str, tuple[int, dict[str, dict[str, int]]]]] = {}
        go = trio.Event()

        def by_kind(vessel: Vessel) -> dict[str, tuple[int, dict[str, dict[str, int]]]]:
            processes = {"daemon": vessel.process.pid, **vessel.pids}
            out = {}
            for name, pid in processes.items():
                try:
                    out[name] = (pid, smaps_by_kind(pid))
                except OSError:
                    continue  # restarting
            return out

        async def sample(vessel: Vessel) -> None:
            await go.wait()
            start = trio.current_time()
            pids: dict[str, int] = {}
            while True:
                tree = process_tree(vessel)
                at = trio.current_time() - start
                current = {"daemon": tree.daemon, **tree.modules}
                if tree.forkserver is not None:
                    current["fork server"] = tree.forkserver
                for name, mem in current.items():
                    pid = vessel.pids.get(name)
                    if pid is not None and pids.setdefault(name, pid) != pid:
                        # Restarted: a new process, a new series.
                        restarts[name] = restarts.get(name, 0) + 1
                        pids[name] = pid
                        samples[name] = []
                    samples.setdefault(name, []).append((at, mem))
                if at >= warmup and "start" not in mappings:
                    mappings["start"] = by_kind(vessel)
                await trio.sleep_until(start + interval * (len(samples["daemon"])))

        async with vessel_serve(data_dir) as vessel:
            await vessel.wait_started(len(ids), timeout=START_BOUND + 5 * len(ids))
            async with open_control(vessel) as control:
                for module_id in ids:
                    frame = {"type": "subscribe", "module": module_id, "name": "*"}
                    await control.request(frame)
                specs = [
                    {
                        "mode": "load",
                        "url": vessel.ws_url,
                        "token": vessel.token,
                        "frames": frames[i:] + frames[:i],
                        "rate": h.soak_rate / h.soak_clients,
                        "seconds": seconds,
                        "warmup": len(frames),
                    }
                    for i in range(h.soak_clients)
                ]
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(sample, vessel)
                    results = await load_clients(specs, go.set, timeout=seconds + 600)
                    nursery.cancel_scope.cancel()
                events = control.events
            mappings["end"] = by_kind(vessel)
        growth: dict[str, dict[str, dict[str, int]]] = {}
        for name, (pid, start) in mappings.get("start", {}).items():
            end_pid, end = mappings["end"].get(name, (None, {}))
            if end_pid == pid:  # the same process at both ends
                growth[name] = {}
                for kind in {*start, *end}:
                    moved = {
                        key: end.get(kind, {}).get(key, 0) - start.get(kind, {}).get(key, 0)
                        for key in _KEPT
                    }
                    moved["USS"] = moved["Private_Clean"] + moved["Private_Dirty"]
                    growth[name][kind] = moved
        # A process restarted at the very end has too few samples for a line: left out.
        fits = {name: _fits(p, warmup) for name, p in samples.items() if len(p) >= 3}
        calls = sum(r["calls"] for r in results)
        errors = sum(r["errors"] for r in results)
        load = (
            f"{len(ids)} example modules for {minutes:g} min: {calls} calls (add, get, "
            f"echo in turn; {calls / seconds:.0f}/s, p50 "
            f"{statistics.median(r['p50_us'] for r in results):.0f} µs, {errors} failed), "
            f"{events} events delivered to a subscribed WebSocket, each module's 1 s timer "
            f"(a storage write and an event); memory sampled every {interval:g} s, the first "
            f"{warmup:.0f} s left out of the fits"
        )
        if restarts:
            load += f"; restarted meanwhile (each fit is its last process): {restarts}"
        self._soak_figures(fits, load, growth)
        return {
            "machine": machine(),
            "minutes": minutes,
            "interval_s": interval,
            "warmup_s": warmup,
            "load": load,
            "restarts": restarts,
            "fits": fits,
            "growth_by_kind": growth,
            "samples": {
                name: [[at, mem["USS"], mem["Private_Dirty"], mem["Pss"]] for at, mem in points]
                for name, points in samples.items()
            },
        }

    def _soak_figures(
        self,
        fits: dict[str, dict[str, dict[str, float]]],
        load: str,
        growth: dict[str, dict[str, dict[str, int]]],
    ) -> None:
        def described(name: str, key: str) -> str:
            fit = fits[name][key]
            return (
                f"{name}: {fit['slope']:+.2f} ± {2 * fit['slope_se']:.2f} MiB/h (noise "
                f"{fit['residual_std']:.2f} MiB; {fit['first']:.1f} → {fit['last']:.1f} MiB)"
            )

        def where(name: str, key: str) -> str:
            """Where ``name``'s ``key`` moved from the warm-up's end to the end."""
            if name not in growth:
                return ""
            moved = sorted(growth[name].items(), key=lambda item: -abs(item[1][key]))
            parts = [f"{kind} {d[key] / MiB:+.2f}" for kind, d in moved if abs(d[key]) >= MiB / 100]
            return f"; where {name}'s {key} moved after the warm-up, by kind of mapping, MiB: " + (
                ", ".join(parts) or "nowhere"
            )

        modules = [name for name in fits if name not in ("daemon", "fork server")]
        for key, suffix in (("USS", ""), ("Private_Dirty", "_dirty")):
            self.results.figures.append(
                Figure.at_most(
                    f"soak_daemon{suffix}",
                    f"daemon's {key} growth under a steady load",
                    fits["daemon"][key]["slope"],
                    "MiB/h",
                    1.0,
                    note=f"least-squares slope after the warm-up, ± 2 standard errors; "
                    f"{described('daemon', key)}{where('daemon', key)}; "
                    f"{described('fork server', key) if 'fork server' in fits else ''}. "
                    f"{load}",
                )
            )
            steepest = max(modules, key=lambda name: fits[name][key]["slope"])
            self.results.figures.append(
                Figure.at_most(
                    f"soak_modules{suffix}",
                    f"module process {key} growth under a steady load (the steepest "
                    f"of {len(modules)})",
                    fits[steepest][key]["slope"],
                    "MiB/h",
                    1.0,
                    note="; ".join(described(name, key) for name in modules) + where(steepest, key),
                )
            )


#: What the soak calls, in turn: ``add`` writes storage and emits an event.
SOAK_CALLS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("add", {"n": 1}),
    ("get", {}),
    ("echo", PARAMS),
)


def _fits(points: list[tuple[float, dict[str, int]]], warmup: float) -> dict[str, dict[str, float]]:
    """Per key (USS, Private_Dirty, Pss): the line through the samples after
    ``warmup`` seconds, in MiB per hour, with the first and last values kept (MiB)."""
    kept = [(at, mem) for at, mem in points if at >= warmup]
    if len(kept) < 3:
        kept = points[-3:]  # a very short run: its last samples, to have a line at all
    out: dict[str, dict[str, float]] = {}
    for key in ("USS", "Private_Dirty", "Pss"):
        line = [(at / 3600, mem[key] / MiB) for at, mem in kept]
        fit = line_fit(line)
        out[key] = {**fit, "first": line[0][1], "last": line[-1][1]}
    return out


def soak_table(detail: dict[str, Any]) -> str:
    """Markdown: each process's slope and noise, USS and Private_Dirty."""
    lines = [
        "| process | USS, MiB | USS slope, MiB/h | noise | Private_Dirty, MiB "
        "| Private_Dirty slope, MiB/h | noise |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, fit in detail["fits"].items():
        cells = [name]
        for key in ("USS", "Private_Dirty"):
            f = fit[key]
            cells += [
                f"{f['first']:.1f} → {f['last']:.1f}",
                f"{f['slope']:+.2f} ± {2 * f['slope_se']:.2f}",
                f"{f['residual_std']:.2f}",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def soak_plot(detail: dict[str, Any], out: Path) -> Path:
    """soak_memory.png: every process's USS and Private_Dirty over the run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    warmup = detail["warmup_s"]
    for ax, column, label in ((axes[0], 1, "USS"), (axes[1], 2, "Private_Dirty")):
        for name, points in detail["samples"].items():
            # Each process against itself at the end of the warm-up: the growth shows.
            base = next((p[column] for p in points if p[0] >= warmup), points[0][column])
            style = "-" if name in ("daemon", "fork server") else ":"
            ax.plot(
                [p[0] / 60 for p in points],
                [(p[column] - base) / MiB for p in points],
                style,
                label=name if name in ("daemon", "fork server") else None,
            )
        ax.axvline(warmup / 60, color="grey", linewidth=0.8)
        ax.set_title(f"{label} change since the warm-up (dotted: modules)")
        ax.set_xlabel("minutes")
        ax.set_ylabel("MiB")
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path = out / "soak_memory.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def _api_headers(vessel: Vessel) -> dict[str, str]:
    return {"authorization": f"Bearer {vessel.token}"}


def _api(vessel: Vessel) -> httpx.AsyncClient:
    """An HTTP client for the daemon's REST API (long timeout: an install compiles)."""
    return httpx.AsyncClient(
        base_url=vessel.url, headers=_api_headers(vessel), timeout=COMPILE_BOUND + START_BOUND
    )
