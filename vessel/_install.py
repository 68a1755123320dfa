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
import os
import secrets
import shutil
import threading
from collections.abc import Callable
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
    compute_hash,
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


def _install(
    data_dir: Path,
    manifest_bytes: bytes,
    wasm_bytes: bytes,
    *,
    replace: bool,
    source: str,
    compile: Compile | None,
) -> ModuleSource:
    manifest = parse_manifest(manifest_bytes, source=source)
    module_id = manifest.id
    modules = modules_dir(data_dir)
    modules.mkdir(parents=True, exist_ok=True)
    target = modules / module_id
    if target.exists() and not replace:
        raise _already_installed(module_id)  # early, before seconds of compiling
    staging = modules / f"{STAGING_PREFIX}{_token()}"
    try:
        try:
            staging.mkdir()
            _write_durable(staging / MANIFEST_FILE, manifest_bytes)
            _write_durable(staging / WASM_FILE, wasm_bytes)
            digest = compute_hash(manifest_bytes, wasm_bytes)
            write_hash_file(staging, digest)
            if (problem := framing_problem(wasm_bytes)) is not None:
                raise ComponentError(
                    f"module {module_id!r}: module.wasm is not a valid WebAssembly "
                    f"component: {problem}"
                )
            if compile is not None:
                # Compiles module.wasm (ComponentError if it is not a component of our
                # world) and stores the artifact and its record under compiled/.
                compile(module_id, staging, digest)
                _fsync_dir(staging / "compiled")
            _fsync_dir(staging)
        except ArtifactNotStored as exc:
            raise DiskWriteError(
                f"module {module_id!r} was not installed: {exc}; nothing was changed: free "
                "space in the data dir and retry"
            ) from exc
        except OSError as exc:
            # A full disk (or a failing one) used to escape as a bare OSError, which the
            # gateway could only answer with a generic 500; name the cause instead.
            raise DiskWriteError(
                f"module {module_id!r} was not installed: cannot write its files under "
                f"{modules}: {exc.strerror or exc}; nothing was changed: free space in the "
                "data dir and retry"
            ) from exc
        with _swap_lock:
            _swap_in(staging, target, replace=replace)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _log.info("installed module %r version %s (%s)", module_id, manifest.version, digest)
    return ModuleSource(id=module_id, dir=target, manifest=manifest, hash=digest)


def install_module(
    data_dir: Path,
    manifest_bytes: bytes,
    wasm_bytes: bytes,
    *,
    replace: bool = False,
    compile: Compile | None = compile_blocking,
) -> ModuleSource:
    """Validate, compile (``compile``, in a process of its own by default) and install a
    module under ``<data_dir>/modules/<id>``. ``compile=None`` installs it uncompiled:
    the daemon compiles it before it starts it.

    Raises ManifestError (bad manifest, or already installed without ``replace``),
    ComponentError (not a component, or not the vessel-module world) or DiskWriteError
    (the data dir could not take the files: disk full); nothing is left behind then.
    Blocking.
    """
    return _install(
        data_dir,
        manifest_bytes,
        wasm_bytes,
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
        wasm_path.read_bytes(),
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
