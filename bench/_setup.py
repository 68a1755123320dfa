"""Guests for the benchmarks: built from source (cached), installed into data dirs.

The bench guests live in ``bench/guests``; the example and Home Assistant modules are
the bundled ones. ``bench-tiny`` is hand-written component text (``module.wat``), built
with ``wasmtime.wat2wasm``: it compiles in milliseconds, for the smoke runs of the steps
that compile.
Each guest is installed once with the real installer (validate, precompile, hash) into a
template data dir under ``.cache/bench``, keyed by the component's hash and the artifact
key; ``add_module`` copies that installed folder under any id, recomputing the hashes.
Compiling an 18 MB component for each of 50 modules would dominate the run and measure
nothing the figures are about.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import msgspec
import wasmtime

from vessel._install import install_module
from vessel._manifest import compute_hash, write_hash_file
from vessel._toolchain import build_module
from vessel.host import _engine

ROOT = Path(__file__).resolve().parents[1]
GUESTS = {
    "bench-echo": ROOT / "bench" / "guests" / "bench_echo",
    "bench-hostile": ROOT / "bench" / "guests" / "bench_hostile",
    "example": ROOT / "modules" / "example",
    "home-assistant": ROOT / "modules" / "home-assistant",
}
#: Guests written as component text: name -> folder holding module.wat and manifest.json.
WAT_GUESTS = {"bench-tiny": ROOT / "bench" / "guests" / "bench_tiny"}
EXTISM_ECHO = ROOT / "bench" / "guests" / "extism" / "echo.wat"
BUILD_CACHE = ROOT / ".cache" / "bench"


@dataclass(frozen=True)
class Guest:
    name: str
    manifest: bytes
    wasm: Path


def build_guests(progress: bool = True) -> dict[str, Guest]:
    """Build (or reuse) every bench guest; returns name -> Guest."""
    out: dict[str, Guest] = {}
    for name, src in GUESTS.items():
        result = build_module(
            src,
            out=BUILD_CACHE / name / "module.wasm",
            progress=(lambda line: print(f"  {line}", flush=True)) if progress else None,
        )
        out[name] = Guest(name, (src / "manifest.json").read_bytes(), result.wasm)
    for name, src in WAT_GUESTS.items():
        wasm = BUILD_CACHE / name / "module.wasm"
        data = bytes(wasmtime.wat2wasm((src / "module.wat").read_text()))
        if not wasm.is_file() or wasm.read_bytes() != data:
            wasm.parent.mkdir(parents=True, exist_ok=True)
            wasm.write_bytes(data)
        out[name] = Guest(name, (src / "manifest.json").read_bytes(), wasm)
    return out


def _template(guest: Guest) -> Path:
    """The guest installed once by the real installer; reused while its inputs match."""
    digest = hashlib.sha256(guest.wasm.read_bytes() + guest.manifest).hexdigest()[:16]
    data_dir = BUILD_CACHE / "installed" / f"{guest.name}-{digest}-{_engine.artifact_key()}"
    module_dir = data_dir / "modules" / guest.name
    if not (module_dir / "manifest.hash").is_file():
        shutil.rmtree(data_dir, ignore_errors=True)
        install_module(data_dir, guest.manifest, guest.wasm.read_bytes(), compile=_compile_now)
    return module_dir


def _compile_now(module_id: str, folder: Path, source_hash: str) -> None:
    """Compile in this short-lived process, at its own priority: the daemon's installs
    compile in a process of their own at a low one, which would make a cold benchmark
    run wait behind whatever else runs (the smoke test beside the rest of the suite)."""
    _engine.precompile(_engine.make_engine(), folder, source_hash=source_hash, module_id=module_id)


def _link_or_copy(src: str, dst: str) -> None:
    # The component and its artifact are never written after install: share them. The
    # small files are rewritten per id, so they must be copies.
    if os.path.getsize(src) > 1 << 20:
        os.link(src, dst)
    else:
        shutil.copy2(src, dst)


def add_module(data_dir: Path, guest: Guest, module_id: str | None = None) -> Path:
    """Install ``guest`` into ``data_dir`` as ``module_id`` (default: its own id): a copy
    of its installed template with the manifest's id and every hash rewritten."""
    template = _template(guest)
    target = data_dir / "modules" / (module_id or guest.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(template, target, copy_function=_link_or_copy)
    if module_id is None:
        return target
    doc = json.loads((target / "manifest.json").read_bytes())
    doc["id"] = module_id
    manifest = (json.dumps(doc, indent=2) + "\n").encode()
    (target / "manifest.json").write_bytes(manifest)
    digest = compute_hash(manifest, (target / "module.wasm").read_bytes())
    write_hash_file(target, digest)
    artifact, record = _engine.artifact_paths(target)
    rec = _engine.ArtifactRecord(
        key=_engine.artifact_key(),
        source_hash=digest,
        sha256=hashlib.sha256(artifact.read_bytes()).hexdigest(),
    )
    record.write_bytes(msgspec.json.encode(rec))
    return target
