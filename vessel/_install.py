"""Installing and removing module folders, crash-safely.

A module is assembled in ``<modules>/.staging-<random>/`` (manifest.json, module.wasm,
manifest.hash, the precompiled artifact; every file fsynced) and then renamed to
``<modules>/<id>`` in one step. Replacing moves the old folder aside to
``.trash-<id>-<random>`` first; removing renames to ``.removing-<id>-<random>`` before
deleting. So a crash leaves the old module or the new one under the id, never a
half-written folder: ``cleanup_staging`` at the next start deletes leftovers, and puts a
``.trash-`` folder back when a crash came between its two renames.

Compiling a component is CPU-bound (seconds for a Python guest) and leaves its memory
behind in the process that did it: it happens in a short-lived process of its own
(``vessel._compiler``), which the installer waits for. These functions are synchronous;
callers on the trio thread use ``trio.to_thread.run_sync``.
"""

from __future__ import annotations

import logging
import mmap
import os
import secrets
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ._compiler import compile_blocking
from ._errors import (
    AlreadyInstalled,
    ArtifactNotStored,
    ComponentError,
    DiskWriteError,
    ManifestError,
    UnknownModule,
)
from ._manifest import (
    MANIFEST_FILE,
    WASM_FILE,
    ModuleSource,
    hash_files,
    is_valid_module_id,
    parse_manifest,
    write_hash_file,
)
from ._paths import modules_dir
from ._wasm_shape import framing_problem

_log = logging.getLogger("vessel.install")

STAGING_PREFIX = ".staging-"
TRASH_PREFIX = ".trash-"
REMOVING_PREFIX = ".removing-"

#: Compiles a staged module: ``compile(module_id, folder, source_hash)`` (blocking);
#: raises ComponentError if the component cannot be used.
Compile = Callable[[str, Path, str], None]

# Serialises the rename step of concurrent installs in this process (each runs in its own
# worker thread), so two replacements of one id cannot interleave their renames.
_swap_lock = threading.Lock()


def _token() -> str:
    return secrets.token_hex(6)  # hex: never contains the "-" that separates the id


def _write_durable(path: Path, data: bytes) -> None:
    with path.open("xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    """Make the directory's entries (a rename, a new file) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _already_installed(module_id: str) -> AlreadyInstalled:
    return AlreadyInstalled(
        f"module {module_id!r} is already installed; remove it first or install with replace"
    )


def _swap_in(staging: Path, target: Path, *, replace: bool) -> None:
    modules = target.parent
    if not target.exists():
        # rename() refuses a non-empty target, so a racing install cannot be clobbered.
        os.rename(staging, target)
        _fsync_dir(modules)
        return
    if not replace:
        raise _already_installed(target.name)
    trash = modules / f"{TRASH_PREFIX}{target.name}-{_token()}"
    os.rename(target, trash)
    try:
        os.rename(staging, target)
    except BaseException:
        os.rename(trash, target)
        raise
    _fsync_dir(modules)
    shutil.rmtree(trash, ignore_errors=True)


@dataclass
class Staged:
    """A module assembled under ``<modules>/.staging-*`` and not yet in place."""

    source: ModuleSource
    #: The folder the module will be renamed to (``<modules>/<id>``).
    target: Path

    @property
    def folder(self) -> Path:
        return self.source.dir


def _place_wasm(wasm: bytes | Path, path: Path) -> None:
    """Put the component at ``path``, durably: written from bytes, or moved from an
    upload file (on the same file system, so nothing is copied)."""
    if isinstance(wasm, bytes):
        _write_durable(path, wasm)
        return
    os.rename(wasm, path)
    with path.open("rb") as f:
        os.fsync(f.fileno())


def _framing_problem_of(path: Path) -> str | None:
    # Mapped, not read: an 18 MB upload stays in the page cache, not in the heap.
    with path.open("rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return framing_problem(b"")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            return framing_problem(mapped)


def stage_module(
    data_dir: Path,
    manifest_bytes: bytes,
    wasm: bytes | Path,
    *,
    replace: bool,
    source: str = "manifest.json",
) -> Staged:
    """Check the manifest and the component's framing and assemble the module in a
    staging folder (nothing compiled yet, nothing in place). ``wasm``: the component's
    bytes, or a file it is moved from. Raises as :func:`install_module`; nothing is left
    behind then. Blocking."""
    manifest = parse_manifest(manifest_bytes, source=source)
    module_id = manifest.id
    modules = modules_dir(data_dir)
    modules.mkdir(parents=True, exist_ok=True)
    target = modules / module_id
    if target.exists() and not replace:
        raise _already_installed(module_id)  # early, before seconds of compiling
    staging = modules / f"{STAGING_PREFIX}{_token()}"
    try:
        staging.mkdir()
        _write_durable(staging / MANIFEST_FILE, manifest_bytes)
        _place_wasm(wasm, staging / WASM_FILE)
        digest = hash_files(staging / MANIFEST_FILE, staging / WASM_FILE)
        write_hash_file(staging, digest)
        if (problem := _framing_problem_of(staging / WASM_FILE)) is not None:
            raise ComponentError(
                f"module {module_id!r}: module.wasm is not a valid WebAssembly component: {problem}"
            )
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise _disk_error(module_id, modules, exc) from exc
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Staged(ModuleSource(id=module_id, dir=staging, manifest=manifest, hash=digest), target)


def _disk_error(module_id: str, modules: Path, exc: OSError) -> DiskWriteError:
    # A full disk (or a failing one) used to escape as a bare OSError, which the gateway
    # could only answer with a generic 500; name the cause instead.
    return DiskWriteError(
        f"module {module_id!r} was not installed: cannot write its files under {modules}: "
        f"{exc.strerror or exc}; nothing was changed: free space in the data dir and retry"
    )


def commit_staged(staged: Staged, *, replace: bool) -> ModuleSource:
    """Put a staged (and, if wanted, compiled) module in place under its id, in one
    rename; the staging folder is gone afterwards whatever happens. Blocking."""
    module_id = staged.source.id
    try:
        try:
            if (staged.folder / "compiled").is_dir():
                _fsync_dir(staged.folder / "compiled")
            _fsync_dir(staged.folder)
        except OSError as exc:
            raise _disk_error(module_id, staged.target.parent, exc) from exc
        with _swap_lock:
            _swap_in(staged.folder, staged.target, replace=replace)
    except BaseException:
        discard_staged(staged)
        raise
    manifest = staged.source.manifest
    _log.info(
        "installed module %r version %s (%s)", module_id, manifest.version, staged.source.hash
    )
    return ModuleSource(id=module_id, dir=staged.target, manifest=manifest, hash=staged.source.hash)


def discard_staged(staged: Staged) -> None:
    """Delete a staged module that will not be installed (blocking)."""
    shutil.rmtree(staged.folder, ignore_errors=True)


def _install(
    data_dir: Path,
    manifest_bytes: bytes,
    wasm: bytes | Path,
    *,
    replace: bool,
    source: str,
    compile: Compile | None,
) -> ModuleSource:
    staged = stage_module(data_dir, manifest_bytes, wasm, replace=replace, source=source)
    try:
        if compile is not None:
            # Compiles module.wasm (ComponentError if it is not a component of our world)
            # and stores the artifact and its record under compiled/.
            compile(staged.source.id, staged.folder, staged.source.hash)
    except ArtifactNotStored as exc:
        discard_staged(staged)
        raise DiskWriteError(
            f"module {staged.source.id!r} was not installed: {exc}; nothing was changed: "
            "free space in the data dir and retry"
        ) from exc
    except BaseException:
        discard_staged(staged)
        raise
    return commit_staged(staged, replace=replace)


def install_module(
    data_dir: Path,
    manifest_bytes: bytes,
    wasm: bytes | Path,
    *,
    replace: bool = False,
    compile: Compile | None = compile_blocking,
) -> ModuleSource:
    """Validate, compile (``compile``, in a process of its own by default) and install a
    module under ``<data_dir>/modules/<id>``. ``compile=None`` installs it uncompiled:
    the daemon compiles it before it starts it. ``wasm``: the component's bytes, or a
    file in the data dir's file system that is moved into the module (an upload).

    Raises ManifestError (bad manifest, or already installed without ``replace``),
    ComponentError (not a component, or not the vessel-module world) or DiskWriteError
    (the data dir could not take the files: disk full); nothing is left behind then.
    Blocking.
    """
    return _install(
        data_dir,
        manifest_bytes,
        wasm,
        replace=replace,
        source="manifest.json",
        compile=compile,
    )


def install_from_dir(
    data_dir: Path,
    src_dir: Path,
    *,
    replace: bool = False,
    compile: Compile | None = compile_blocking,
) -> ModuleSource:
    """Install from a module's source folder: its manifest.json and its module.wasm (at
    the top, or in build/ where the build puts it)."""
    manifest_path = src_dir / MANIFEST_FILE
    try:
        manifest_bytes = manifest_path.read_bytes()
    except FileNotFoundError:
        raise ManifestError(f"{src_dir} has no {MANIFEST_FILE}") from None
    for wasm_path in (src_dir / WASM_FILE, src_dir / "build" / WASM_FILE):
        if wasm_path.is_file():
            break
    else:
        raise ManifestError(
            f"{src_dir} has no {WASM_FILE} (looked in {WASM_FILE} and build/{WASM_FILE}); "
            "build the module first"
        )
    return _install(
        data_dir,
        manifest_bytes,
        wasm_path.read_bytes(),  # not moved: the source folder is the caller's
        replace=replace,
        source=str(manifest_path),
        compile=compile,
    )


def remove_module(data_dir: Path, module_id: str) -> None:
    """Uninstall: rename the folder aside, then delete it. Raises UnknownModule."""
    modules = modules_dir(data_dir)
    # The id check comes first: it is what keeps "../x" from naming a path outside.
    if not is_valid_module_id(module_id) or not (modules / module_id).is_dir():
        raise UnknownModule(f"no module {module_id!r} is installed")
    aside = modules / f"{REMOVING_PREFIX}{module_id}-{_token()}"
    with _swap_lock:
        os.rename(modules / module_id, aside)
        _fsync_dir(modules)
    shutil.rmtree(aside, ignore_errors=True)
    _log.info("removed module %r", module_id)


def cleanup_staging(modules_dir: Path) -> None:
    """Finish what a crash interrupted; call at startup, before discovery and before any
    install can run.

    ``.staging-*`` and ``.removing-*`` folders are deleted. A ``.trash-<id>-*`` folder is
    the old copy of a module being replaced: it is moved back if ``<id>`` is missing (the
    crash fell between the two renames), otherwise deleted.
    """
    try:
        entries = sorted(modules_dir.iterdir())
    except FileNotFoundError:
        return
    for entry in entries:
        name = entry.name
        if name.startswith(TRASH_PREFIX):
            module_id = name[len(TRASH_PREFIX) :].rpartition("-")[0]
            target = modules_dir / module_id
            if is_valid_module_id(module_id) and not target.exists():
                os.rename(entry, target)
                _fsync_dir(modules_dir)
                _log.warning("restored module %r after an interrupted replace", module_id)
                continue
        elif not name.startswith((STAGING_PREFIX, REMOVING_PREFIX)):
            continue
        _log.info("deleting %s left by an interrupted install", entry)
        shutil.rmtree(entry, ignore_errors=True)
