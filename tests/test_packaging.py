"""Vessel as a normal package: a wheel built from the repository, installed into a fresh
venv outside the checkout, runs ``vessel serve`` with its bundled modules and
``vessel-ctl new``, as ``pipx install <wheel>`` would on a fresh machine.

Honest and fast: the wheel is built from a copy of the working tree (what a clone holds,
not the checkout's build leftovers) by pip in an isolated build environment, and
installed with its dependencies into a venv that sees nothing of the checkout or of the
test's own venv (no ``--system-site-packages``, no ``.pth``). The dependencies come from
a local wheelhouse, ``.cache/wheelhouse/<key>``: the wheels of the versions this test's
venv runs, downloaded once (``pip download``) and reused by every later session.

The bundled modules are built by the installed Vessel from the sources the wheel carries,
through the toolchain's own cache: the cache is seeded with the components the session
built from the repository's sources, and the toolchain uses them only if its key over
the sources it reads from the installed package (the module, the SDK, the WIT, the
componentize-py version) equals the repository's; the daemon's log must say "up to
date" for each. So the ~20 s componentize-py builds are skipped only if the wheel carries
those sources byte for byte; the compiles to native code still run (~15 s each). The
second test starts the same install with an empty cache, so that it builds from source
for real, and stops it meanwhile.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trio
from packaging.requirements import Requirement

from tests.cli._support import (
    MODULES_STARTED,
    RUNNING,
    LineReader,
    Result,
    base_env,
    stop_daemon_process,
)
from tests.procs import Proc, alive, cmdline, descendants_of
from vessel._toolchain import locked_file

REPO = Path(__file__).resolve().parents[1]
WHEELHOUSE = REPO / ".cache" / "wheelhouse"

#: The folders the wheel must carry, as vessel/_paths.py finds them.
SHIPPED = ("wit", "web", "modules")
BUNDLED = ("example", "home-assistant")

#: Downloading the wheelhouse the first time (~150 MiB), building and installing: bounds
#: generous for a slow network and a loaded machine.
DOWNLOAD_TIMEOUT = 900.0
STEP_TIMEOUT = 300.0
#: Two bundled modules compiled to native code, ~15 s of CPU each, on a busy machine.
MODULES_TIMEOUT = 300.0


def _pins() -> list[str]:
    """Vessel's dependencies at the versions this venv runs, and the build backend."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    pins = [
        f"{Requirement(dep).name}=={importlib.metadata.version(Requirement(dep).name)}"
        for dep in project["project"]["dependencies"]
    ]
    backend = project["build-system"]["requires"]
    return sorted(pins) + sorted(backend) + ["wheel"]


def _run(argv: list[str], *, cwd: Path, env: Mapping[str, str], timeout: float) -> Result:
    done = subprocess.run(
        argv,
        cwd=cwd,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    result = Result(done.returncode, done.stdout.decode(), done.stderr.decode())
    assert result.returncode == 0, f"{' '.join(argv)}: {result}"
    return result


@pytest.fixture(scope="session")
def wheelhouse() -> Path:
    """Wheels of Vessel's dependencies (and of setuptools, to build it), downloaded once."""
    pins = _pins()
    tag = f"py{sys.version_info.major}{sys.version_info.minor}"
    key = hashlib.sha256("\n".join([tag, *pins]).encode()).hexdigest()[:16]
    folder = WHEELHOUSE / key
    folder.mkdir(parents=True, exist_ok=True)
    with locked_file(WHEELHOUSE / f"{key}.lock"):  # pytest-xdist workers share it
        if not (folder / "complete").is_file():
            _run(
                [sys.executable, "-m", "pip", "download", "--only-binary=:all:", "-q",
                 "--dest", str(folder), *pins],
                cwd=REPO, env=os.environ, timeout=DOWNLOAD_TIMEOUT,
            )  # fmt: skip
            (folder / "complete").write_text("\n".join(pins) + "\n")
            for stale in WHEELHOUSE.iterdir():  # the wheels of versions no longer pinned
                if stale.is_dir() and stale.name != key:
                    shutil.rmtree(stale, ignore_errors=True)
                    (WHEELHOUSE / f"{stale.name}.lock").unlink(missing_ok=True)
    return folder


def _working_tree(dest: Path) -> None:
    """Copy what a clone of the repository holds (with uncommitted work, without ignored
    files: no .venv, no build output) to ``dest``."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, check=True, timeout=60,
    ).stdout.decode()  # fmt: skip
    for rel in filter(None, listed.split("\0")):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def _tracked(folder: str) -> set[str]:
    """The files git keeps under ``folder`` of the repository (tracked or new)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", folder],
        cwd=REPO, capture_output=True, check=True, timeout=60,
    ).stdout.decode()  # fmt: skip
    return {rel for rel in listed.split("\0") if rel and (REPO / rel).is_file()}


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment of a shell on a fresh machine: nothing that points at the checkout
    or the test's venv."""
    env = base_env(**extra)
    for name in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "PYTHONSTARTUP"):
        env.pop(name, None)
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(str(REPO))
    )
    return env


@dataclass(frozen=True)
class Installed:
    """The wheel built from the working tree, and a fresh venv it is installed in."""

    wheel: Path
    venv: Path


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory, wheelhouse: Path) -> Installed:
    """Build the wheel from a copy of the working tree, as pip does for ``pipx install
    PATH``, and install it with its dependencies into a fresh venv that sees nothing of
    the test's own (once for this file's tests)."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "src"
    dist = root / "dist"
    venv = root / "venv"
    _working_tree(source)
    offline = ["--no-index", "--find-links", str(wheelhouse)]
    pip = [sys.executable, "-m", "pip"]
    for argv in (
        [*pip, "wheel", "-q", "--no-deps", *offline, "-w", str(dist), str(source)],
        [sys.executable, "-m", "venv", "--without-pip", str(venv)],
    ):
        _run(argv, cwd=root, env=os.environ, timeout=STEP_TIMEOUT)
    (wheel,) = dist.glob("vessel-*.whl")
    _run(
        [*pip, "--python", str(venv / "bin" / "python"), "install", "-q", *offline, str(wheel)],
        cwd=root, env=os.environ, timeout=STEP_TIMEOUT,
    )  # fmt: skip
    return Installed(wheel, venv)


@pytest.mark.watchdog(900)  # the first test of a worker builds and installs the wheel
async def test_a_wheel_installed_outside_the_checkout_serves_its_bundled_modules(
    tmp_path: Path, installed: Installed, built_guests: Mapping[str, Path]
) -> None:
    """``pip install <wheel>`` into a fresh venv, then ``vessel serve`` from it in a new
    data dir: /healthz and the dashboard answer, both bundled modules are built from the
    sources the wheel carries (the toolchain's cache matches them), installed and run
    (systemd's STATUS= says so meanwhile), and ``vessel-ctl new`` writes a module; nothing
    is read from the checkout."""
    venv = installed.venv
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    for folder in SHIPPED:
        missing = {f"vessel/_data/{rel}" for rel in _tracked(folder)} - names
        assert not missing, f"the wheel does not carry {sorted(missing)}"
    assert not [n for n in names if "__pycache__" in n or n.endswith((".wasm", ".cwasm"))]
    assert not [n for n in names if "/build/" in n], "build output in the wheel"

    home = tmp_path / "home"
    work = tmp_path / "work"
    for made in (home, work):
        made.mkdir()
    cache = tmp_path / "cache"
    env = _clean_env(
        HOME=str(home),
        XDG_CACHE_HOME=str(cache),
        XDG_DATA_HOME=str(tmp_path / "share"),
        VESSEL_LOG_LEVEL="INFO",
    )
    where = _run(
        [str(venv / "bin" / "python"), "-c",
         "import vessel, vessel._paths as p; "
         "print(vessel.__file__, p.wit_dir(), p.web_dir(), p.sdk_dir(), sep='\\n')"],
        cwd=work, env=env, timeout=STEP_TIMEOUT,
    ).stdout.split()  # fmt: skip
    for path in where:
        assert Path(path).is_relative_to(venv), f"{path} is not in the installed package"

    # The toolchain's cache, seeded with what the session built from the repo's sources.
    for name in BUNDLED:
        built = cache / "vessel" / "bundled" / name
        built.mkdir(parents=True)
        wasm = built_guests[name]
        shutil.copyfile(wasm, built / "module.wasm")
        shutil.copyfile(wasm.with_name("module.wasm.key"), built / "module.wasm.key")

    data = tmp_path / "share" / "vessel"  # the XDG default: no --data-dir given
    # As systemd runs it (Type=notify): what it says it does while it installs them.
    notify_path = str(tmp_path / "notify")
    notify_socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify_socket.bind(notify_path)
    notify = trio.socket.from_stdlib_socket(notify_socket)
    process = await trio.lowlevel.open_process(
        [str(venv / "bin" / "vessel"), "serve", "--port", "0"],
        cwd=work,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**env, "NOTIFY_SOCKET": notify_path},
    )
    assert process.stderr is not None
    stderr = LineReader(process.stderr)
    code: int | None = None
    try:
        line = await stderr.wait_for(lambda s: RUNNING.search(s) is not None, timeout=60)
        match = RUNNING.search(line)
        assert match is not None
        url = match.group(1)
        await stderr.wait_for(lambda s: MODULES_STARTED in s, timeout=MODULES_TIMEOUT)
        for name in BUNDLED:
            assert re.search(rf"bundled module {name}: up to date", stderr.text), (
                f"{name} was not taken from the toolchain's cache: the wheel's sources "
                f"differ from the repository's\n{stderr.text}"
            )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stderr.drain)  # a full pipe would block the daemon
            said: list[str] = []
            with trio.fail_after(60):
                while not any(re.search(r"modules: 2 running$", line) for line in said):
                    said += (await notify.recv(65536)).decode().split("\n")
            assert "READY=1" in said, said
            assert [line for line in said if "installing example (compiling)" in line], said
            async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                assert (await client.get("/healthz")).status_code == 200
                page = await client.get("/")
                assert page.status_code == 200
                assert "<html" in page.text.lower()

            def ctl(*args: str) -> Result:
                ctl_env = {**env, "VESSEL_URL": url, "VESSEL_DATA_DIR": str(data)}
                return _run(
                    [str(venv / "bin" / "vessel-ctl"), *args],
                    cwd=work, env=ctl_env, timeout=STEP_TIMEOUT,
                )  # fmt: skip

            listed = await trio.to_thread.run_sync(ctl, "list")
            for name in BUNDLED:
                assert re.search(rf"^{re.escape(name)}\s+running\b", listed.stdout, re.M), listed
            called = await trio.to_thread.run_sync(ctl, "call", "example", "get")
            assert "count" in called.stdout, called
            new = await trio.to_thread.run_sync(ctl, "new", "hello")
            assert (work / "hello" / "manifest.json").is_file(), new
            assert "from vessel_sdk import" in (work / "hello" / "app.py").read_text()
            code = await stop_daemon_process(process)  # the drain ends at its EOF
    finally:
        with trio.CancelScope(shield=True):
            await stop_daemon_process(process)
        notify.close()
    assert code == 0, stderr.text
    assert "Traceback" not in stderr.text, stderr.text


@pytest.mark.watchdog(900)  # the first test of a worker builds and installs the wheel
async def test_a_stop_while_a_bundled_module_builds_leaves_no_process(
    tmp_path: Path, installed: Installed
) -> None:
    """A first start of the installed wheel, with an empty cache, builds the bundled
    modules from source in the background; SIGTERM meanwhile stops the daemon at once,
    cleanly (exit 0), and the build (the toolchain and the componentize-py it runs) is
    killed with it rather than left running."""
    env = _clean_env(
        HOME=str(tmp_path),
        XDG_CACHE_HOME=str(tmp_path / "cache"),
        VESSEL_LOG_LEVEL="INFO",
    )
    env.pop("CACHE_DIRECTORY", None)
    serve = [str(installed.venv / "bin" / "vessel"), "serve", "--port", "0"]
    process = await trio.lowlevel.open_process(
        [*serve, "--data-dir", str(tmp_path / "data")],
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert process.stderr is not None
    stderr = LineReader(process.stderr)
    code: int | None = None
    try:
        await stderr.wait_for(lambda s: "building it from source" in s, timeout=60)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stderr.drain)
            with trio.fail_after(60):  # no event says a process started: look for it
                while not (builds := _toolchain_processes(process.pid)):
                    await trio.sleep(0.05)
            build_tree = builds | {p for pid, _ in builds for p in descendants_of(pid)}
            process.send_signal(signal.SIGTERM)
            with trio.fail_after(60):
                code = await process.wait()
    finally:
        with trio.CancelScope(shield=True):
            await stop_daemon_process(process)
    assert code == 0, stderr.text
    assert not alive(build_tree), [cmdline(pid) for pid in alive(build_tree)]
    assert "Traceback" not in stderr.text, stderr.text


def _toolchain_processes(pid: int) -> set[Proc]:
    """The descendants of ``pid`` that run vessel's toolchain (a bundled module's build)."""
    return {p for p in descendants_of(pid) if "vessel._toolchain" in cmdline(p[0])}


def test_the_systemd_unit_verifies_against_a_venv_install(
    tmp_path: Path, installed: Installed
) -> None:
    """``packaging/vessel.service`` passes ``systemd-analyze verify`` without a word, with
    ``/opt/vessel`` standing for the venv the wheel was installed in: every setting is
    known to systemd, and ExecStart names the ``vessel`` a venv install has."""
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None, (
        "systemd-analyze is not installed, so the unit cannot be checked: "
        "install it (Debian: sudo apt install systemd)"
    )
    unit = (REPO / "packaging" / "vessel.service").read_text()
    assert "ExecStart=/opt/vessel/bin/vessel serve" in unit
    assert re.search(r"^Type=notify$", unit, re.M)
    assert re.search(r"^WatchdogSec=\d+s?$", unit, re.M)
    (tmp_path / "vessel.service").write_text(unit.replace("/opt/vessel", str(installed.venv)))
    checked = subprocess.run(
        [analyze, "verify", str(tmp_path / "vessel.service")],
        capture_output=True, timeout=STEP_TIMEOUT, check=False,
    )  # fmt: skip
    said = (checked.stdout + checked.stderr).decode()
    assert checked.returncode == 0, said
    assert said.strip() == "", said
