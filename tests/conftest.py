"""Fixtures and guards shared by the whole suite.

Guest components
    ``built_guests`` (session) builds the guest sources in ``GUEST_SOURCES`` once into
    ``<repo>/.cache/guests/<name>/module.wasm``; the build is cached by a key over the
    sources, so a rerun with nothing changed does not rebuild. It maps name -> wasm path.
    ``guest_artifact(name)`` (session) is the path of its precompiled artifact.

    ``make_module_dir`` (function) installs a guest into a data dir the way the daemon
    expects it, ``<data_dir>/modules/<id>/``: manifest.json (the guest's, with overrides),
    a real copy of module.wasm (tests may tamper with it), manifest.hash, and the
    precompiled artifact in ``compiled/`` with a record naming that hash, so the module
    starts without the ~6 s compile. The artifact is compiled once per wasm and shared
    between tests as a hardlink: to tamper with it, write a new file in its place rather
    than modifying it in place (an in-place change is detected and the cache recompiled).

Guards (autouse)
    Every test fails if a process it started (a descendant of the test process, orphans
    included: the test process is a child subreaper) is still alive at teardown after a
    5 s grace; the leftovers are killed by pid. Every test runs under a watchdog: after
    ``VESSEL_TEST_WATCHDOG`` seconds (default 120; ``@pytest.mark.watchdog(s)`` per test,
    0 disables) it prints every thread's stack and interrupts the run, and if the run
    still has not ended 30 s later the process exits.

    The watchdog is a backstop that ends the run, not a timeout: tests must still bound
    each of their own waits with ``trio.fail_after``.

Several cores (pytest-xdist)
    ``scripts/test`` runs the suite with one worker process per core (``-n auto``). Each
    worker is its own subreaper with its own leak guard and watchdog, so the guards hold
    per worker. Workers share ``.cache/guests``: builds are serialized by the toolchain's
    lock, compiling an artifact by a lock here, so a guest is built and compiled once.
    ``LONG_FIRST`` starts the longest tests first; each worker hands its adversarial
    figures to the controller, which prints the table. Every test must therefore keep
    to its own tmp dir and 127.0.0.1 port 0, as they already must.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import faulthandler
import gc
import hashlib
import json
import os
import select
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
import wasmtime

from tests.adversarial._figures import FIGURES, Row
from tests.fixture_types import MakeModuleDir
from tests.procs import Proc, cmdline, proc_stat
from vessel._toolchain import build_module, locked_file
from vessel.host import _engine

REPO = Path(__file__).resolve().parents[1]
GUEST_CACHE = REPO / ".cache" / "guests"

#: Guest sources the suite builds, by name.
GUEST_SOURCES: Mapping[str, Path] = {
    "example": REPO / "modules" / "example",
    "home-assistant": REPO / "modules" / "home-assistant",
    "sdkkit": REPO / "tests" / "sdk" / "guest",
    "testkit": REPO / "tests" / "guests" / "testkit",
}

WATCHDOG_DEFAULT = 120.0
WATCHDOG_GRACE = 30.0
LEAK_GRACE = 5.0

# -- guest components ------------------------------------------------------------------


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _compute_hash(manifest_bytes: bytes, wasm_path: Path) -> str:
    """The module's tamper hash: sha256 over the manifest bytes, then the wasm bytes."""
    try:
        from vessel._manifest import compute_hash
    except ImportError:
        digest = hashlib.sha256(manifest_bytes)
        digest.update(wasm_path.read_bytes())
        return digest.hexdigest()
    return compute_hash(manifest_bytes, wasm_path.read_bytes())


@dataclass
class _Artifact:
    path: Path
    sha256: str
    stat: tuple[int, int, int]  # (inode, size, mtime_ns): detects an in-place change


def _stat_key(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class GuestCache:
    """The session's built guests and their precompiled artifacts (compiled on first use)."""

    def __init__(self, wasm: Mapping[str, Path]) -> None:
        self.wasm = dict(wasm)
        self._engine: wasmtime.Engine | None = None
        self._artifacts: dict[str, _Artifact] = {}

    def _compile(self, name: str) -> _Artifact:
        cache_dir = self.wasm[name].parent
        # pytest-xdist workers share the cache: one compiles, the others wait and reuse it.
        with locked_file(cache_dir / "compiled.lock"):
            return self._compile_locked(name, cache_dir)

    def _compile_locked(self, name: str, cache_dir: Path) -> _Artifact:
        source_hash = _sha256_file(self.wasm[name])
        artifact, record = _engine.artifact_paths(cache_dir)
        try:
            rec = msgspec.json.decode(record.read_bytes(), type=_engine.ArtifactRecord)
        except (OSError, msgspec.DecodeError, msgspec.ValidationError):
            rec = None
        current = (
            rec is not None
            and rec.key == _engine.artifact_key()
            and rec.source_hash == source_hash
            and artifact.is_file()
            and _sha256_file(artifact) == rec.sha256
        )
        if not current:
            if self._engine is None:
                self._engine = _engine.make_engine()
            # Unlink first: the old artifact may still be hardlinked into a test's folder.
            artifact.unlink(missing_ok=True)
            _engine.precompile(self._engine, cache_dir, source_hash=source_hash, module_id=name)
            rec = msgspec.json.decode(record.read_bytes(), type=_engine.ArtifactRecord)
        assert rec is not None
        return _Artifact(artifact, rec.sha256, _stat_key(artifact))

    def artifact(self, name: str) -> _Artifact:
        """The guest's precompiled artifact, recompiled if a test changed it in place."""
        known = self._artifacts.get(name)
        if known is None or not known.path.is_file() or _stat_key(known.path) != known.stat:
            known = self._artifacts[name] = self._compile(name)
        return known


@pytest.fixture(scope="session")
def _guest_cache() -> GuestCache:
    wasm: dict[str, Path] = {}
    for name, src in GUEST_SOURCES.items():
        result = build_module(src, out=GUEST_CACHE / name / "module.wasm")
        wasm[name] = result.wasm
    return GuestCache(wasm)


@pytest.fixture(scope="session")
def built_guests(_guest_cache: GuestCache) -> Mapping[str, Path]:
    """Guest name -> its built module.wasm (shared by the session: copy before changing)."""
    return dict(_guest_cache.wasm)


@pytest.fixture(scope="session")
def guest_artifact(_guest_cache: GuestCache) -> Callable[[str], Path]:
    """``guest_artifact(name) -> Path``: the precompiled artifact of guest ``name``, for an
    engine from ``vessel.host._engine.make_engine()`` (compiled once per session; do not
    modify it)."""
    return lambda name: _guest_cache.artifact(name).path


@pytest.fixture
def make_module_dir(_guest_cache: GuestCache) -> MakeModuleDir:
    """``make_module_dir(data_dir, name, *, module_id=None, permissions=None, limits=None,
    manifest=None) -> Path`` installs guest ``name`` as ``<data_dir>/modules/<id>/``.

    ``permissions`` and ``limits`` replace those sections of the guest's manifest;
    ``manifest`` sets any other top-level fields (``{"api_version": 2}``).
    """

    def make(
        data_dir: Path,
        name: str,
        *,
        module_id: str | None = None,
        permissions: Mapping[str, Any] | None = None,
        limits: Mapping[str, Any] | None = None,
        manifest: Mapping[str, Any] | None = None,
    ) -> Path:
        doc = json.loads((GUEST_SOURCES[name] / "manifest.json").read_bytes())
        if module_id is not None:
            doc["id"] = module_id
        if permissions is not None:
            doc["permissions"] = dict(permissions)
        if limits is not None:
            doc["limits"] = dict(limits)
        doc.update(manifest or {})
        module_dir = Path(data_dir) / "modules" / str(doc["id"])
        module_dir.mkdir(parents=True, exist_ok=True)
        manifest_bytes = (json.dumps(doc, indent=2) + "\n").encode()
        (module_dir / "manifest.json").write_bytes(manifest_bytes)
        wasm = module_dir / "module.wasm"
        shutil.copyfile(_guest_cache.wasm[name], wasm)
        digest = _compute_hash(manifest_bytes, wasm)
        (module_dir / "manifest.hash").write_text(digest + "\n")

        cached = _guest_cache.artifact(name)
        artifact, record = _engine.artifact_paths(module_dir)
        artifact.parent.mkdir(exist_ok=True)
        artifact.unlink(missing_ok=True)
        try:
            os.link(cached.path, artifact)
        except OSError:  # another file system: fall back to a copy
            shutil.copyfile(cached.path, artifact)
        rec = _engine.ArtifactRecord(
            key=_engine.artifact_key(), source_hash=digest, sha256=cached.sha256
        )
        record.write_bytes(msgspec.json.encode(rec))
        return module_dir

    return make


# -- leaked processes ------------------------------------------------------------------

_PR_SET_CHILD_SUBREAPER = 36


def _become_subreaper() -> None:
    """Orphaned grandchildren are re-parented to us instead of init, so the leak guard
    sees a module process whose daemon died."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _descendants() -> dict[Proc, str]:
    """Every live process below this one: (pid, start time) -> state."""
    parent_of: dict[int, int] = {}
    info: dict[int, tuple[str, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = proc_stat(int(entry))
        if stat is not None:
            parent_of[int(entry)] = stat[1]
            info[int(entry)] = (stat[0], stat[2])
    children: dict[int, list[int]] = {}
    for pid, ppid in parent_of.items():
        children.setdefault(ppid, []).append(pid)
    found: dict[Proc, str] = {}
    stack = list(children.get(os.getpid(), []))
    while stack:
        pid = stack.pop()
        state, start = info[pid]
        found[(pid, start)] = state
        stack.extend(children.get(pid, []))
    return found


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _still_running(before: set[Proc]) -> dict[Proc, str]:
    """Processes started since ``before`` that have not exited; zombies are reaped."""
    alive: dict[Proc, str] = {}
    for proc, state in _descendants().items():
        if proc in before:
            continue
        if state in ("Z", "X"):
            _reap(proc[0])
        else:
            alive[proc] = state
    return alive


def _kill(proc: Proc) -> None:
    pid, start = proc
    stat = proc_stat(pid)
    if stat is None or stat[2] != start:
        return  # already gone, or the pid now names another process
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        stat = proc_stat(pid)
        if stat is None or stat[2] != start or stat[0] in ("Z", "X"):
            break
        select.select([], [], [], 0.01)
    _reap(pid)


@pytest.fixture(autouse=True)
def _no_leaked_processes() -> Iterator[None]:
    """Fail the test if a process it started outlives it (after a short grace)."""
    before = set(_descendants())
    yield
    deadline = time.monotonic() + LEAK_GRACE
    alive = _still_running(before)
    while alive and time.monotonic() < deadline:
        select.select([], [], [], 0.05)
        alive = _still_running(before)
    if not alive:
        return
    described = [f"pid {pid}: {cmdline(pid)}" for pid, _ in alive]
    for proc in alive:
        _kill(proc)
    pytest.fail(
        f"test left {len(alive)} process(es) running {LEAK_GRACE:g} s after it ended "
        "(killed now):\n  " + "\n  ".join(described),
        pytrace=False,
    )


# -- watchdog --------------------------------------------------------------------------

_real_stderr: int | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _real_stderr
    config.addinivalue_line(
        "markers",
        "watchdog(seconds): interrupt the run if this test takes longer (0 disables)",
    )
    _become_subreaper()
    # Output capture is suspended while plugins configure: fd 2 is the real stderr here,
    # and the watchdog must reach it from inside a captured test.
    try:
        _real_stderr = os.dup(2)
    except OSError as exc:
        if exc.errno != errno.EBADF:
            raise


def pytest_unconfigure(config: pytest.Config) -> None:
    global _real_stderr
    if _real_stderr is not None:
        os.close(_real_stderr)
        _real_stderr = None


def _watchdog_seconds(item: pytest.Item) -> float:
    marker = item.get_closest_marker("watchdog")
    if marker is not None:
        return float(marker.args[0])
    return float(os.environ.get("VESSEL_TEST_WATCHDOG", WATCHDOG_DEFAULT))


def _bark(nodeid: str, seconds: float, fd: int) -> None:
    os.write(
        fd,
        f"\n\nwatchdog: {nodeid} still running after {seconds:g} s; stacks of all "
        "threads follow, then the test is interrupted (SIGINT)\n".encode(),
    )
    faulthandler.dump_traceback(file=fd, all_threads=True)
    _dump_trio_tasks(fd)
    # A real signal (not interrupt_main) so a blocking system call returns EINTR.
    signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)


def _dump_trio_tasks(fd: int) -> None:
    """Where each task of a hung trio run waits: a thread dump shows only the loop idle
    in epoll, and a hang past a ``fail_after`` is a task blocked where a cancel cannot
    reach it (a shielded scope, a thread not abandoned). The runner is found among the
    live objects (its context is the test thread's); read while that loop is idle, which
    it is when the watchdog barks."""
    runners = [o for o in gc.get_objects() if type(o).__name__ == "Runner" and hasattr(o, "tasks")]
    for runner in runners:
        lines = ["trio tasks, each with where it waits (outermost first):"]
        try:
            for task in list(runner.tasks):
                frames = [  # trio's own machinery says nothing about the hang
                    f"{frame.f_code.co_filename.rsplit('/', 2)[-1]}:{lineno} {frame.f_code.co_name}"
                    for frame, lineno in task.iter_await_frames()
                    if "/trio/_core/" not in frame.f_code.co_filename
                ]
                lines.append(f"  {task.name}\n    " + "\n    ".join(frames[-8:]))
        except Exception as exc:  # a diagnostic: never the watchdog's own failure
            lines.append(f"  (could not walk the tasks: {exc!r})")
        os.write(fd, ("\n".join(lines) + "\n").encode())


@pytest.fixture(autouse=True)
def _watchdog(request: pytest.FixtureRequest) -> Iterator[None]:
    """Interrupt a hung test, then end the process if that does not work."""
    seconds = _watchdog_seconds(request.node)
    fd = _real_stderr
    if seconds <= 0 or fd is None:
        yield
        return
    timer = threading.Timer(seconds, _bark, args=(request.node.nodeid, seconds, fd))
    timer.daemon = True
    timer.start()
    faulthandler.dump_traceback_later(seconds + WATCHDOG_GRACE, exit=True, file=fd)
    try:
        yield
    finally:
        timer.cancel()
        faulthandler.cancel_dump_traceback_later()


# -- running on several cores ----------------------------------------------------------

#: Test files that hold the longest tests (componentize-py builds, compiling components,
#: the benchmark smoke run, the browser, the adversarial scenarios), longest first. They
#: are collected before every other file so that with pytest-xdist (scripts/test: one
#: worker per core, tests handed out in order as workers free up) the long tests start
#: early, spread over the workers, and the short ones fill in after them, instead of the
#: run ending on one long test. Only the order changes: a file missing here starts later.
LONG_FIRST = (
    "tests/test_packaging.py",
    "tests/cli/test_serve_options.py",
    "tests/cli/test_ctl_toolchain.py",
    "tests/bench/test_smoke.py",
    "tests/gateway/test_rest_modules.py",
    "tests/test_toolchain.py",
    "tests/runtime/test_lifecycle.py",
    "tests/web/test_dashboard.py",
    "tests/adversarial/test_hostile_clients.py",
    "tests/sdk/test_docs.py",
    "tests/cli/test_ctl_e2e.py",
    "tests/sdk/test_build.py",
    "tests/adversarial/test_durability.py",
    "tests/core/test_install.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {path: i for i, path in enumerate(LONG_FIRST)}

    def key(item: pytest.Item) -> int:
        return rank.get(item.nodeid.split("::", 1)[0], len(rank))

    items.sort(key=key)  # stable: the order within each file is kept


def pytest_sessionfinish(session: pytest.Session) -> None:
    """An xdist worker hands its adversarial figures to the controller."""
    output = getattr(session.config, "workeroutput", None)
    if output is not None:
        output["adversarial_figures"] = [dataclasses.asdict(row) for row in FIGURES.rows]


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """The xdist controller collects each worker's adversarial figures."""
    rows = getattr(node, "workeroutput", {}).get("adversarial_figures", [])
    FIGURES.rows.extend(Row(**row) for row in rows)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not FIGURES.rows:
        return
    terminalreporter.section("adversarial figures")
    for line in FIGURES.render():
        terminalreporter.write_line(line)
