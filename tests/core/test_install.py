"""Installing modules: validation, precompilation, atomic swap, crash recovery; paths."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
import wasmtime

from vessel import _paths
from vessel._errors import ComponentError, ManifestError, TamperError, UnknownModule
from vessel._file_identity import FileIdentity
from vessel._install import cleanup_staging, install_from_dir, install_module, remove_module
from vessel._manifest import compute_hash, discover_modules, load_module_dir
from vessel._wasm_shape import framing_problem
from vessel.host._engine import (
    REQUIRED_EXPORTS,
    ArtifactRecord,
    artifact_key,
    artifact_paths,
    load_component,
    make_engine,
)

REPO = Path(__file__).resolve().parents[2]
GUEST_EXPORTS = sorted(REQUIRED_EXPORTS | {"on-websocket-closed"})


def wat_component(export_names: list[str]) -> bytes:
    """A tiny component exporting the guest interface with the given function names.

    Signatures are not the real ones: install checks the world by export names, and this
    compiles in milliseconds where a Python guest takes seconds."""
    core = "".join(f'(func (export "{n}"))' for n in export_names)
    lifts = "".join(
        f'(func $f{i} (canon lift (core func $i "{n}")))' for i, n in enumerate(export_names)
    )
    exports = "".join(f'(export "{n}" (func $f{i}))' for i, n in enumerate(export_names))
    wat = f"""(component
      (core module $m {core})
      (core instance $i (instantiate $m))
      {lifts}
      (instance $g {exports})
      (export "vessel:host/guest@1.0.0" (instance $g)))"""
    return bytes(wasmtime.wat2wasm(wat))


WAT_GUEST = wat_component(GUEST_EXPORTS)


def manifest(module_id: str = "demo", version: str = "1.0.0", **fields: Any) -> bytes:
    doc = {"id": module_id, "name": "Demo", "version": version, "api_version": 1, **fields}
    return json.dumps(doc, indent=2).encode()


def entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ── a real Python guest ─────────────────────────────────────────────────────


@pytest.fixture(scope="session")
def real_guest(built_guests: Mapping[str, Path]) -> bytes:
    """An 18 MB componentize-py component of the real world: the bundled example module,
    which the session builds once anyway (tests/conftest.py, cached by its sources)."""
    return built_guests["example"].read_bytes()


# ── install ─────────────────────────────────────────────────────────────────


def test_install_writes_a_complete_verified_folder(tmp_path: Path) -> None:
    """An install leaves exactly the module folder: manifest, component, hash and a
    precompiled artifact whose record names the hash; discovery then loads it."""
    src = install_module(tmp_path, manifest(), WAT_GUEST)
    modules = _paths.modules_dir(tmp_path)
    folder = modules / "demo"
    assert (src.id, src.dir, src.manifest.version) == ("demo", folder, "1.0.0")
    assert entries(modules) == ["demo"]
    assert entries(folder) == ["compiled", "manifest.hash", "manifest.json", "module.wasm"]
    assert (folder / "manifest.json").read_bytes() == manifest()
    assert (folder / "module.wasm").read_bytes() == WAT_GUEST
    assert src.hash == compute_hash(manifest(), WAT_GUEST)
    assert (folder / "manifest.hash").read_text().strip() == src.hash
    artifact, record_path = artifact_paths(folder)
    record = msgspec.json.decode(record_path.read_bytes(), type=ArtifactRecord)
    assert record.key == artifact_key()
    assert record.source_hash == src.hash
    assert record.sha256 == hashlib.sha256(artifact.read_bytes()).hexdigest()
    assert load_module_dir(folder).hash == src.hash
    sources, refusals = discover_modules(modules)
    assert ([s.id for s in sources], refusals) == (["demo"], [])


def test_start_uses_the_artifact_instead_of_compiling(tmp_path: Path) -> None:
    """Compile once: loading an installed module deserializes the install-time artifact
    and leaves it untouched."""
    src = install_module(tmp_path, manifest(), WAT_GUEST)
    artifact, _ = artifact_paths(src.dir)
    before = (artifact.stat().st_mtime_ns, artifact.read_bytes())
    load_component(make_engine(), src.dir, source_hash=src.hash, module_id=src.id)
    assert (artifact.stat().st_mtime_ns, artifact.read_bytes()) == before


def _record(module_dir: Path) -> ArtifactRecord:
    return msgspec.json.decode(artifact_paths(module_dir)[1].read_bytes(), type=ArtifactRecord)


def _flip_last_byte(path: Path) -> None:
    """Change the file in place: same inode, same size, other bytes."""
    with path.open("r+b") as f:
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 0xFF]))


def test_a_tampered_artifact_is_refused(tmp_path: Path) -> None:
    """Native code is only loaded from bytes Vessel produced: an artifact changed after
    install is refused with a message that says what to do."""
    src = install_module(tmp_path, manifest(), WAT_GUEST)
    artifact, _ = artifact_paths(src.dir)
    _flip_last_byte(artifact)
    with pytest.raises(TamperError, match="does not match its recorded hash"):
        load_component(make_engine(), src.dir, source_hash=src.hash, module_id=src.id)


def test_a_checked_artifact_is_remembered_until_it_changes(tmp_path: Path) -> None:
    """A start that hashed the artifact and found it right notes the file's identity in
    the record; a later start with the same identity needs no hash; any write to the
    artifact changes its identity, so a tampered one is still refused."""
    src = install_module(tmp_path, manifest(), WAT_GUEST)
    artifact, _ = artifact_paths(src.dir)
    assert _record(src.dir).verified is None

    def load() -> None:
        load_component(make_engine(), src.dir, source_hash=src.hash, module_id=src.id, settled_ns=0)

    load()
    identity = FileIdentity.of(artifact.stat())
    assert _record(src.dir).verified == identity
    load()
    assert _record(src.dir).verified == identity
    _flip_last_byte(artifact)
    assert FileIdentity.of(artifact.stat()) != identity
    with pytest.raises(TamperError, match="does not match its recorded hash"):
        load()


def test_a_fresh_artifact_is_checked_but_not_remembered(tmp_path: Path) -> None:
    """Right after it was written, an artifact's times may not yet tell a later write
    apart (the file system's clock ticks coarsely): it is hashed at every start until it
    has been left alone a while."""
    src = install_module(tmp_path, manifest(), WAT_GUEST)
    load_component(make_engine(), src.dir, source_hash=src.hash, module_id=src.id)
    assert _record(src.dir).verified is None


def test_installing_over_an_existing_module_needs_replace(tmp_path: Path) -> None:
    """Without replace, an installed module is never overwritten, and nothing is left
    behind by the refused attempt."""
    install_module(tmp_path, manifest(version="1"), WAT_GUEST)
    with pytest.raises(ManifestError) as info:
        install_module(tmp_path, manifest(version="2"), WAT_GUEST)
    assert str(info.value) == (
        "module 'demo' is already installed; remove it first or install with replace"
    )
    assert load_module_dir(_paths.modules_dir(tmp_path) / "demo").manifest.version == "1"
    assert entries(_paths.modules_dir(tmp_path)) == ["demo"]


def test_replace_swaps_in_the_new_version(tmp_path: Path) -> None:
    """replace=True installs the new version in place and deletes the old one."""
    install_module(tmp_path, manifest(version="1"), WAT_GUEST)
    src = install_module(tmp_path, manifest(version="2"), WAT_GUEST, replace=True)
    assert src.manifest.version == "2"
    assert load_module_dir(src.dir).manifest.version == "2"
    assert entries(_paths.modules_dir(tmp_path)) == ["demo"]


@pytest.mark.parametrize(
    "wasm",
    [
        b"",
        b"not wasm at all",
        os.urandom(4096),
        WAT_GUEST[: len(WAT_GUEST) // 2],
        bytes(wasmtime.wat2wasm("(module)")),
    ],
    ids=["empty", "text", "random", "truncated", "core-module"],
)
def test_non_components_are_refused_and_leave_nothing(tmp_path: Path, wasm: bytes) -> None:
    """Bytes that are not a component give a ComponentError naming the module, and the
    failed install leaves no folder behind."""
    with pytest.raises(ComponentError) as info:
        install_module(tmp_path, manifest(), wasm)
    assert str(info.value).startswith(
        "module 'demo': module.wasm is not a valid WebAssembly component: "
    )
    assert entries(_paths.modules_dir(tmp_path)) == []


def test_the_first_look_passes_components_and_refuses_what_is_cut_short(
    built_guests: Mapping[str, Path],
) -> None:
    """The framing check before a compile process is started (vessel/_wasm_shape.py)
    never refuses a real component, and refuses every cut of one that ends inside a
    section, with where; a cut at a section's end is left to the compile."""
    for wasm in (WAT_GUEST, built_guests["testkit"].read_bytes()):
        assert framing_problem(wasm) is None
        cut_inside = 0
        for end in range(9, min(len(wasm), 70_000), 97):
            problem = framing_problem(wasm[:end])
            if problem is not None:
                assert problem.startswith("it ends inside a section at byte "), problem
                cut_inside += 1
        assert cut_inside > 0


@pytest.mark.parametrize(
    ("wasm", "expected"),
    [
        (bytes(wasmtime.wat2wasm("(component)")), "it does not export vessel:host/guest@1.0.0"),
        (wat_component(["on-load", "on-event"]), "lacks on-command, on-timer"),
    ],
    ids=["exports-nothing", "missing-functions"],
)
def test_components_of_another_world_are_refused(
    tmp_path: Path, wasm: bytes, expected: str
) -> None:
    """A component that does not implement the vessel-module world is refused at install,
    not when it first runs."""
    with pytest.raises(ComponentError) as info:
        install_module(tmp_path, manifest(), wasm)
    assert "does not match the vessel-module world" in str(info.value)
    assert expected in str(info.value)
    assert entries(_paths.modules_dir(tmp_path)) == []


def test_components_without_the_optional_export_are_accepted(tmp_path: Path) -> None:
    """on-websocket-closed is an extension: components built against 1.0.0 still install."""
    wasm = wat_component(sorted(REQUIRED_EXPORTS))
    assert install_module(tmp_path, manifest(), wasm).id == "demo"


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (manifest(permisions={}), "unknown field `permisions`"),
        (manifest(module_id="../evil"), "is not a valid module id"),
        (manifest(module_id="vessel"), "reserved for the built-in module"),
        (manifest(api_version=2), "requires api_version 2"),
    ],
)
def test_bad_manifests_are_refused_before_anything_is_written(
    tmp_path: Path, doc: bytes, expected: str
) -> None:
    """Manifest errors stop the install before any file exists (and no path is built
    from an unvalidated id)."""
    with pytest.raises(ManifestError, match=expected):
        install_module(tmp_path, doc, WAT_GUEST)
    assert entries(tmp_path) == []


def test_install_from_dir_finds_the_build_output(tmp_path: Path) -> None:
    """A source folder with build/module.wasm (where the build puts it) installs."""
    src_dir = tmp_path / "src" / "demo"
    (src_dir / "build").mkdir(parents=True)
    (src_dir / "manifest.json").write_bytes(manifest())
    (src_dir / "build" / "module.wasm").write_bytes(WAT_GUEST)
    src = install_from_dir(tmp_path / "data", src_dir)
    assert src.hash == compute_hash(manifest(), WAT_GUEST)


def test_install_from_dir_names_what_is_missing(tmp_path: Path) -> None:
    """A folder without a manifest or a component says which, and where it looked."""
    src_dir = tmp_path / "src"
    src_dir.mkdir()
    with pytest.raises(ManifestError, match=r"src has no manifest\.json"):
        install_from_dir(tmp_path / "data", src_dir)
    (src_dir / "manifest.json").write_bytes(manifest())
    with pytest.raises(ManifestError, match=r"looked in module\.wasm and build/module\.wasm"):
        install_from_dir(tmp_path / "data", src_dir)


def test_install_from_dir_names_the_file_in_manifest_errors(tmp_path: Path) -> None:
    """A bad manifest in a source folder is reported with its path."""
    (tmp_path / "manifest.json").write_bytes(manifest(limits={"memory_mb": 1}))
    (tmp_path / "module.wasm").write_bytes(WAT_GUEST)
    with pytest.raises(ManifestError) as info:
        install_from_dir(tmp_path / "data", tmp_path)
    assert str(info.value) == (f"{tmp_path / 'manifest.json'}: `$.limits.memory_mb` must be >= 16")


# ── remove ──────────────────────────────────────────────────────────────────


def test_remove_deletes_the_folder(tmp_path: Path) -> None:
    """After remove, the module is gone from disk and from discovery."""
    install_module(tmp_path, manifest(), WAT_GUEST)
    remove_module(tmp_path, "demo")
    assert entries(_paths.modules_dir(tmp_path)) == []
    with pytest.raises(UnknownModule, match="no module 'demo' is installed"):
        remove_module(tmp_path, "demo")


@pytest.mark.parametrize("bad_id", ["..", "../data", "", ".staging-x", "a/b"])
def test_remove_refuses_ids_that_are_paths(tmp_path: Path, bad_id: str) -> None:
    """remove_module never turns an untrusted id into a path outside the modules dir."""
    _paths.modules_dir(tmp_path).mkdir(parents=True)
    (tmp_path / "data").mkdir()
    (_paths.modules_dir(tmp_path) / ".staging-x").mkdir()
    with pytest.raises(UnknownModule):
        remove_module(tmp_path, bad_id)
    assert (tmp_path / "data").is_dir()
    assert (_paths.modules_dir(tmp_path) / ".staging-x").is_dir()


# ── crashes ─────────────────────────────────────────────────────────────────


def test_cleanup_finishes_interrupted_work(tmp_path: Path) -> None:
    """Leftover staging and removal folders are deleted; a module moved aside by an
    interrupted replace is put back when its id is missing, deleted when it is not."""
    modules = _paths.modules_dir(tmp_path)
    install_module(tmp_path, manifest("kept"), WAT_GUEST)
    install_module(tmp_path, manifest("lost"), WAT_GUEST)
    (modules / "lost").rename(modules / ".trash-lost-0a1b2c")
    (modules / ".trash-kept-0a1b2c").mkdir()
    (modules / ".staging-123").mkdir()
    (modules / ".staging-123" / "module.wasm").write_bytes(b"half")
    (modules / ".removing-gone-0a1b2c").mkdir()
    cleanup_staging(modules)
    assert entries(modules) == ["kept", "lost"]
    sources, refusals = discover_modules(modules)
    assert ([s.id for s in sources], refusals) == (["kept", "lost"], [])
    cleanup_staging(tmp_path / "missing")  # a fresh data dir has nothing to clean


CRASHER = """
import os, sys
from pathlib import Path
sys.path.insert(0, {repo!r})
from vessel._install import install_module

real_rename, calls = os.rename, 0

def crashing_rename(src, dst):
    # Dies like a SIGKILL (no cleanup handlers run) around the N-th rename.
    global calls
    calls += 1
    if calls == {at} and {before}:
        os._exit(3)
    real_rename(src, dst)
    if calls == {at} and not {before}:
        os._exit(3)

os.rename = crashing_rename
data = Path({data!r})
install_module(data, (data / "new.json").read_bytes(), (data / "new.wasm").read_bytes(),
               replace=True)
"""


@pytest.mark.parametrize(
    ("at", "before", "expected"),
    [(1, True, "1"), (1, False, "1"), (2, True, "1"), (2, False, "2")],
    ids=["before-aside", "after-aside", "before-swap", "after-swap"],
)
async def test_crash_during_replace_leaves_old_or_new(
    tmp_path: Path, at: int, before: bool, expected: str
) -> None:
    """Killed at any step of a replace, the next start finds the old or the new module
    under its id, complete and verified, never a half-written folder."""
    install_module(tmp_path, manifest(version="1"), WAT_GUEST)
    (tmp_path / "new.json").write_bytes(manifest(version="2"))
    (tmp_path / "new.wasm").write_bytes(WAT_GUEST)
    script = CRASHER.format(repo=str(REPO), at=at, before=before, data=str(tmp_path))
    with trio.fail_after(60):
        proc = await trio.run_process([sys.executable, "-c", script], check=False)
    assert proc.returncode == 3
    modules = _paths.modules_dir(tmp_path)
    cleanup_staging(modules)
    assert entries(modules) == ["demo"]
    assert load_module_dir(modules / "demo").manifest.version == expected


async def test_crash_during_first_install_leaves_nothing(tmp_path: Path) -> None:
    """Killed before its rename, a first install leaves only staging, which is cleaned."""
    (tmp_path / "new.json").write_bytes(manifest(version="2"))
    (tmp_path / "new.wasm").write_bytes(WAT_GUEST)
    script = CRASHER.format(repo=str(REPO), at=1, before=True, data=str(tmp_path))
    with trio.fail_after(60):
        proc = await trio.run_process([sys.executable, "-c", script], check=False)
    assert proc.returncode == 3
    modules = _paths.modules_dir(tmp_path)
    assert [n for n in entries(modules) if n.startswith(".staging-")]
    cleanup_staging(modules)
    assert entries(modules) == []


# ── a real guest ────────────────────────────────────────────────────────────


async def test_real_python_guest_installs_off_the_trio_thread(
    tmp_path: Path, real_guest: bytes
) -> None:
    """A componentize-py guest installs through trio.to_thread (compiling takes seconds)
    and then loads from its artifact without recompiling."""
    src_dir = tmp_path / "src"
    (src_dir / "build").mkdir(parents=True)
    (src_dir / "manifest.json").write_bytes(manifest())
    (src_dir / "build" / "module.wasm").write_bytes(real_guest)
    with trio.fail_after(300):
        src = await trio.to_thread.run_sync(install_from_dir, tmp_path / "data", src_dir)
    artifact, _ = artifact_paths(src.dir)
    before = artifact.stat().st_mtime_ns
    with trio.fail_after(120):
        await trio.to_thread.run_sync(
            lambda: load_component(make_engine(), src.dir, source_hash=src.hash, module_id="demo")
        )
    assert artifact.stat().st_mtime_ns == before


# ── paths ───────────────────────────────────────────────────────────────────


def test_data_dir_prefers_vessel_data_dir_then_xdg(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """$VESSEL_DATA_DIR wins, then an absolute $XDG_DATA_HOME, then ~/.local/share."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("VESSEL_DATA_DIR", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert _paths.default_data_dir() == tmp_path / "explicit"
    monkeypatch.delenv("VESSEL_DATA_DIR")
    assert _paths.default_data_dir() == tmp_path / "xdg" / "vessel"
    monkeypatch.setenv("XDG_DATA_HOME", "relative/path")
    assert _paths.default_data_dir() == tmp_path / "home" / ".local" / "share" / "vessel"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert _paths.default_data_dir() == tmp_path / "home" / ".local" / "share" / "vessel"


def test_layout_under_the_data_dir(tmp_path: Path) -> None:
    """Modules and the database live at fixed places under the data dir; the WIT
    contract is found from the package."""
    assert _paths.modules_dir(tmp_path) == tmp_path / "modules"
    assert _paths.database_path(tmp_path) == tmp_path / "vessel.db"
    assert _paths.repo_root() == REPO
    assert (_paths.wit_dir() / "vessel-host.wit").is_file()
