"""The bundled modules: what a fresh data dir gets, so that there is something live.

Vessel carries them as source (``modules/<id>/``: manifest.json and app.py), in a
checkout and in the wheel alike (vessel._paths). A fresh data dir installs each one:

* built already (``modules/<id>/build/module.wasm``: ``scripts/build-modules`` in a
  checkout): installed at once, before the modules start;
* source only (an installed wheel, a checkout nobody built): built from source in the
  background, into the cache (``vessel._paths.cache_dir()``; the toolchain's key over the
  sources, the SDK, the WIT and componentize-py keeps it from being built twice), then
  installed as ``vessel-ctl install`` does it: compiled, placed and started while the
  gateway answers. A wheel carries no component: it would be ~18 MiB per module, built
  for one componentize-py, and the machine that runs Vessel can build it.

A build runs ``python -m vessel._toolchain`` in a process group of its own, so that
cancelling it (the daemon stopping) kills componentize-py too: no build outlives the
daemon.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import trio

from ._errors import VesselError
from ._install import install_from_dir
from ._installs import Install
from ._manager import ModuleManager
from ._paths import cache_dir

log = logging.getLogger("vessel.bundled")

#: How much of a failed build's output the log quotes (its last lines say why).
_OUTPUT_KEPT = 4096


def bundled_sources(directory: Path) -> list[Path]:
    """The module folders (those with a manifest.json) under ``directory``, sorted."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if (p / "manifest.json").is_file())


def prebuilt(src: Path) -> Path | None:
    """The component already built for the bundled module ``src``, if any."""
    for candidate in (src / "build" / "module.wasm", src / "module.wasm"):
        if candidate.is_file():
            return candidate
    return None


def install_prebuilt(data_dir: Path, directory: Path) -> list[Path]:
    """Install the bundled modules under ``directory`` that are built (uncompiled: the
    daemon compiles each before it starts it); return the folders that are source only,
    for :func:`install_from_source`. Blocking."""
    unbuilt: list[Path] = []
    for src in bundled_sources(directory):
        if prebuilt(src) is None:
            unbuilt.append(src)
            continue
        try:
            install_from_dir(data_dir, src, compile=None)
            log.info("installed bundled module %s", src.name)
        except VesselError as exc:
            log.error("bundled module %s not installed: %s", src.name, exc)
    return unbuilt


def build_output(src: Path) -> Path:
    """Where the bundled module ``src`` is built to."""
    return cache_dir() / "bundled" / src.name / "module.wasm"


async def _kill_group(process: trio.Process) -> None:
    # The toolchain runs componentize-py as its own child: end the whole group, ours.
    os.killpg(process.pid, signal.SIGKILL)


async def build_from_source(src: Path) -> Path:
    """Build the bundled module ``src`` into the cache (at once if the cached component is
    current); returns the component. Raises VesselError with the toolchain's reason."""
    out = build_output(src)
    result = await trio.run_process(
        [sys.executable, "-m", "vessel._toolchain", "--out", str(out), str(src)],
        stdin=subprocess.DEVNULL,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        start_new_session=True,
        deliver_cancel=_kill_group,
    )
    if result.returncode != 0:
        output = result.stderr.decode(errors="replace").strip()[-_OUTPUT_KEPT:]
        raise VesselError(f"building it from source failed: {output or result.returncode}")
    # The toolchain's one line: "SRC: up to date (OUT)" or "SRC: built in 9.8 s (OUT)".
    said = result.stdout.decode(errors="replace").strip()[-_OUTPUT_KEPT:]
    log.info("bundled module %s: %s", src.name, said.removeprefix(f"{src}: "))
    return out


def _staged_copy(data_dir: Path, wasm: Path) -> Path:
    """A copy of ``wasm`` in the data dir, for an install to move into place (the cached
    component stays where it is)."""
    fd, name = tempfile.mkstemp(dir=data_dir, prefix=".bundled-", suffix=".wasm")
    os.close(fd)
    shutil.copyfile(wasm, name)
    return Path(name)


async def install_from_source(
    manager: ModuleManager, sources: list[Path], *, building: Callable[[str | None], None]
) -> None:
    """Build each bundled module in ``sources`` and install it; return once every install
    has ended (started, or failed: the log says why). ``building`` hears the module being
    built, then None."""
    installs: list[Install] = []
    for src in sources:
        log.info(
            "bundled module %s: building it from source with componentize-py (10-40 s, "
            "once: cached in %s)",
            src.name, build_output(src).parent,
        )  # fmt: skip
        building(src.name)
        try:
            wasm = await build_from_source(src)
        except VesselError as exc:
            log.error("bundled module %s not installed: %s", src.name, exc)
            continue
        finally:
            building(None)
        copy = await trio.to_thread.run_sync(_staged_copy, manager.data_dir, wasm)
        try:
            manifest = await trio.to_thread.run_sync((src / "manifest.json").read_bytes)
            installs.append(await manager.begin_install(manifest, copy))
        except VesselError as exc:
            log.error("bundled module %s not installed: %s", src.name, exc)
        finally:
            copy.unlink(missing_ok=True)  # moved into the module unless it failed
    for install in installs:
        await install.ended.wait()
        if install.error is None:
            log.info("installed bundled module %s", install.module_id)
