"""``vessel-ctl build``: a Python module folder (``manifest.json`` + ``app.py``) into
``build/module.wasm``, with the toolchain (componentize-py). No daemon is needed.

``build_source`` is the one build path of ``vessel-ctl``: ``build`` and ``install`` (of a
folder with ``app.py``) both go through it, so they check the same things, print the
same progress and fail with the same messages:

* the manifest is parsed with the daemon's strict schema first (an error names the field);
* an unchanged module is not rebuilt (the toolchain's cache key): ``up to date``;
* a build prints a line when it starts and one every few seconds while it runs, on stderr;
* a guest that does not build (a SyntaxError, an import that fails, no ``Guest`` export)
  is a CtlError quoting componentize-py's reason: the file, the line, the error.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import threading
import time
from collections.abc import Callable
from pathlib import Path

from .._errors import ManifestError
from .._manifest import MANIFEST_FILE, WASM_FILE, Manifest, parse_manifest
from .._toolchain import BuildError, BuildResult, build_module
from ._ctl_client import CtlError, Settings
from ._ctl_commands import note, out
from ._ctl_format import format_bytes, pretty_json

#: The file componentize-py builds from; it must define (or assign) ``Guest``.
APP_FILE = "app.py"

#: Seconds between the "still building" lines of a running build.
HEARTBEAT_INTERVAL = 5.0

#: What componentize-py says when app.py has no ``Guest`` (the world's export), and what
#: to do about it.
_NO_GUEST = "has no attribute 'Guest'"
_NO_GUEST_HINT = (
    "app.py must export the guest: end it with `Guest = app.guest()` "
    "(see docs/modules.md, the tutorial)"
)

_INSTALL_BUILD_EXTRA = "it is a dependency of Vessel: pip install 'componentize-py>=0.25,<0.26'"


def shown(path: Path) -> str:
    """``path`` relative to the working directory when it is below it, else as is."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def is_python_source(folder: Path) -> bool:
    """A module folder written in Python (has ``app.py``), which is built before use."""
    return (folder / APP_FILE).is_file()


def check_source(src: Path) -> Manifest:
    """The folder's manifest, parsed strictly, once the folder is known to be buildable.

    Raises CtlError naming the folder, or the manifest and its field at fault.
    """
    if not src.is_dir():
        raise CtlError(f"{src}: no such folder")
    manifest_path = src / MANIFEST_FILE
    try:
        data = manifest_path.read_bytes()
    except FileNotFoundError:
        raise CtlError(
            f"{src}: no {MANIFEST_FILE} (a module folder holds {MANIFEST_FILE} and {APP_FILE}; "
            "`vessel-ctl new NAME` makes one)"
        ) from None
    except OSError as exc:
        raise CtlError(f"cannot read {manifest_path}: {exc.strerror}") from None
    try:
        manifest = parse_manifest(data, source=str(manifest_path))
    except ManifestError as exc:
        raise CtlError(str(exc)) from None
    if not is_python_source(src):
        raise CtlError(f"{src}: no {APP_FILE} to build (it must define the class Guest)")
    return manifest


def _has_componentize_py() -> bool:
    try:
        importlib.metadata.version("componentize-py")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


class _Heartbeat:
    """Says every few seconds that a build is still running (from a daemon thread, which
    only prints: the build itself, and Ctrl-C, stay on the main thread)."""

    def __init__(self, module_id: str, interval: float = HEARTBEAT_INTERVAL) -> None:
        self._module_id = module_id
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="build-heartbeat", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._interval)

    def _run(self) -> None:
        started = time.monotonic()
        while not self._stop.wait(self._interval):
            note(f"{self._module_id}: still building ({time.monotonic() - started:.0f} s)")


def build_error_message(exc: BuildError) -> str:
    """The BuildError as the user reads it: what failed, then componentize-py's reason."""
    first, _, details = str(exc).partition("\n")
    message = f"build failed: {first}"
    if details:
        message += "\n" + details
    if _NO_GUEST in details:
        message += "\n  " + _NO_GUEST_HINT
    return message


def build_source(
    src: Path,
    *,
    out: Path | None = None,
    force: bool = False,
    report: Callable[[str], None] = note,
    prebuilt_ok: bool = False,
) -> BuildResult:
    """Build the Python module folder ``src`` unless its build is current.

    Progress goes to stderr; the outcome (``<id>: up to date (...)`` or ``<id>: built in
    N s (...)``) to ``report``. ``out`` defaults to ``src/build/module.wasm``; ``force``
    rebuilds a current build. With ``prebuilt_ok`` (install), a missing componentize-py
    is not an error when a build exists: it is used, unchecked. Raises CtlError.
    """
    manifest = check_source(src)
    module_id = manifest.id
    wasm = (src / "build" / WASM_FILE) if out is None else out
    if not _has_componentize_py():
        if prebuilt_ok and out is None and wasm.is_file():
            note(
                f"{module_id}: componentize-py is not installed, so the build cannot be "
                f"checked; using the existing {shown(wasm)}"
            )
            return BuildResult(wasm, cached=True, seconds=0.0)
        raise CtlError(
            f"{src}: componentize-py is not installed, so {APP_FILE} cannot be built: "
            f"{_INSTALL_BUILD_EXTRA}"
        )
    heartbeat = _Heartbeat(module_id)

    def progress(line: str) -> None:
        # The toolchain says either "<id>: up to date (...)", which the outcome line below
        # repeats, or "<id>: building ...", which starts the heartbeat.
        if " up to date " in line:
            return
        note(line)
        heartbeat.start()

    try:
        result = build_module(src, out=out, force=force, progress=progress)
    except BuildError as exc:
        raise CtlError(build_error_message(exc)) from None
    finally:
        heartbeat.stop()
    if result.cached:
        report(f"{module_id}: up to date ({shown(result.wasm)})")
    else:
        size = format_bytes(result.wasm.stat().st_size)
        report(f"{module_id}: built in {result.seconds:.1f} s ({shown(result.wasm)}, {size})")
    return result


def cmd_build(settings: Settings, args: argparse.Namespace) -> int:
    src: Path = args.dir.expanduser()
    target: Path | None = None
    if args.out is not None:
        target = args.out.expanduser()
        if target.is_dir():
            target = target / WASM_FILE
        target = target.resolve()
    report = note if settings.json else out
    result = build_source(src, out=target, force=args.force, report=report)
    if settings.json:
        doc = {"wasm": str(result.wasm), "cached": result.cached, "seconds": result.seconds}
        out(pretty_json(doc))
    return 0
