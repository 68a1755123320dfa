"""Building a guest module from Python source into a WebAssembly component.

A module source folder holds ``manifest.json`` and ``app.py`` (plus any other Python
files or packages ``app.py`` imports). ``build_module`` runs componentize-py on it against
the repo's WIT contract (world ``vessel-module``) and writes ``build/module.wasm``. The
guest SDK (``modules/sdk``, the package ``vessel_sdk``) is on the import path of every
build, after the folder itself, so any module can ``import vessel_sdk``.

Builds are cached: a key over everything that goes into the component (the folder's
Python sources, the SDK's sources, the WIT files, the componentize-py version) is stored
beside the output as ``module.wasm.key``; an unchanged key with the output present skips
the ~10 s build.

Run as ``python -m vessel._toolchain [--force] [--out FILE] DIR...`` to build folders
from a shell (``scripts/build-modules`` does that for every folder under ``modules/``; the
daemon, for a bundled module it carries as source only: vessel/_bundled.py).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import importlib
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ._errors import VesselError
from ._paths import sdk_dir, wit_dir

__all__ = [
    "WORLD",
    "BuildError",
    "BuildResult",
    "build_module",
    "default_sdk_dir",
    "default_wit_dir",
    "main",
]

#: The WIT world every Vessel module targets (wit/vessel-host.wit).
WORLD = "vessel-module"

#: Seconds a single componentize-py run may take before it is killed.
DEFAULT_TIMEOUT = 600.0

#: Bumped when the cache key's recipe changes, so old keys never match.
_KEY_FORMAT = b"vessel-toolchain-2"

#: Build outputs are ordinary files (readable by the daemon's user when installed).
_FILE_MODE = 0o644

#: How many lines of componentize-py's output a BuildError quotes.
_ERROR_LINES = 12

#: Runs componentize-py's console entry point from this interpreter; the package has no
#: ``__main__``, and going through ``sys.executable`` avoids depending on PATH.
_RUNNER = (
    "import sys\n"
    "from componentize_py import script\n"
    "sys.argv[0] = 'componentize-py'\n"
    "sys.exit(script())\n"
)


class BuildError(VesselError):
    """A module folder could not be built into a component.

    Raised by ``build_module`` when the folder is not a module (no manifest.json or app.py,
    a manifest that is not valid), when componentize-py is missing, fails or times out.
    The message names the folder and quotes the part of componentize-py's output that says
    what is wrong (a Python ``SyntaxError`` with its file and line, a missing export);
    fix the source and build again.
    """


@dataclass(frozen=True)
class BuildResult:
    """What ``build_module`` produced: the component, whether it came from the cache, and
    how long the call took."""

    wasm: Path
    cached: bool
    seconds: float


def default_wit_dir() -> Path:
    """The ``wit/`` folder this Vessel carries (the installed package's, or the
    checkout's), which holds the contract this host speaks."""
    return wit_dir()


def default_sdk_dir() -> Path:
    """The ``modules/sdk`` folder this Vessel carries, the guest SDK package ``vessel_sdk``."""
    return sdk_dir()


def build_module(
    src_dir: Path,
    *,
    out: Path | None = None,
    wit_dir: Path | None = None,
    sdk_dir: Path | None = None,
    force: bool = False,
    progress: Callable[[str], None] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> BuildResult:
    """Build the module folder ``src_dir`` into a component, unless the cached one is current.

    ``out`` defaults to ``src_dir/build/module.wasm``, ``wit_dir`` to the repo's ``wit/`` and
    ``sdk_dir`` to the repo's ``modules/sdk`` (skipped when it does not exist).
    ``force`` rebuilds even when the cache key matches. ``progress`` receives one short
    line when a build starts or the cache is used. Raises ``BuildError``.
    """
    started = time.monotonic()
    src_dir = Path(src_dir).resolve()
    out = (src_dir / "build" / "module.wasm") if out is None else Path(out).resolve()
    wit_dir = default_wit_dir() if wit_dir is None else Path(wit_dir).resolve()
    sdk_dir = default_sdk_dir() if sdk_dir is None else Path(sdk_dir).resolve()
    sdk = sdk_dir if sdk_dir.is_dir() else None
    module_id = _check_source(src_dir)
    version = _componentize_py_version(src_dir)
    key = _cache_key(src_dir, wit_dir, sdk, version)
    key_path = out.with_name(out.name + ".key")
    say = progress if progress is not None else _ignore

    out.parent.mkdir(parents=True, exist_ok=True)
    with locked_file(out.with_name(out.name + ".lock")):
        if not force and out.is_file() and _read_text(key_path) == key:
            say(f"{module_id}: up to date ({out})")
            return BuildResult(out, cached=True, seconds=time.monotonic() - started)
        say(f"{module_id}: building {src_dir} with componentize-py {version}")
        _componentize(src_dir, wit_dir, sdk, out, timeout=timeout)
        _write_atomic(key_path, key.encode())
    return BuildResult(out, cached=False, seconds=time.monotonic() - started)


def _ignore(_line: str) -> None:
    pass


def _check_source(src_dir: Path) -> str:
    """Refuse a folder that is not a module before spending a build on it; return its id."""
    if not src_dir.is_dir():
        raise BuildError(f"{src_dir}: not a directory")
    manifest_path = src_dir / "manifest.json"
    try:
        data = manifest_path.read_bytes()
    except FileNotFoundError:
        raise BuildError(
            f"{src_dir}: no manifest.json (a module folder holds manifest.json and app.py)"
        ) from None
    except OSError as exc:
        raise BuildError(f"{manifest_path}: cannot read: {exc.strerror}") from None
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BuildError(f"{manifest_path}: not valid JSON: {exc}") from None
    module_id = doc.get("id") if isinstance(doc, dict) else None
    if not isinstance(module_id, str) or not module_id:
        raise BuildError(f'{manifest_path}: needs an "id" string naming the module')
    try:
        # Full validation lives in vessel._manifest; use it once it exists.
        manifest_mod = importlib.import_module("vessel._manifest")
        parse_manifest = manifest_mod.parse_manifest
    except (ImportError, AttributeError):
        parse_manifest = None
    if parse_manifest is not None:
        try:
            parse_manifest(data, source=str(manifest_path))
        except VesselError as exc:
            raise BuildError(f"{src_dir}: {exc}") from exc
    if not (src_dir / "app.py").is_file():
        raise BuildError(f"{src_dir}: no app.py (it must define class Guest)")
    return module_id


def _componentize_py_version(src_dir: Path) -> str:
    try:
        return importlib.metadata.version("componentize-py")
    except importlib.metadata.PackageNotFoundError:
        raise BuildError(
            f"{src_dir}: componentize-py is not installed in {sys.prefix}; "
            "it is a dependency of Vessel: pip install 'componentize-py>=0.25,<0.26'"
        ) from None


def _source_files(src_dir: Path) -> list[tuple[str, Path]]:
    """The folder's Python files as (relative posix path, path), sorted by the former."""
    found: list[tuple[str, Path]] = []
    for path in src_dir.rglob("*.py"):
        rel = path.relative_to(src_dir)
        parts = rel.parts
        if parts[0] == "build" or any(p == "__pycache__" or p.startswith(".") for p in parts):
            continue
        if path.is_file():
            found.append((rel.as_posix(), path))
    return sorted(found)


def _cache_key(src_dir: Path, wit_dir: Path, sdk_dir: Path | None, version: str) -> str:
    """sha256 over everything that decides the component's bytes."""
    digest = hashlib.sha256()

    def add(label: str, data: bytes) -> None:
        # Length-prefixed so no two different inputs can produce the same stream.
        name = label.encode()
        digest.update(len(name).to_bytes(8, "big") + name)
        digest.update(len(data).to_bytes(8, "big") + data)

    add("format", _KEY_FORMAT)
    add("componentize-py", version.encode())
    add("world", WORLD.encode())
    wit_files = sorted(wit_dir.rglob("*.wit")) if wit_dir.is_dir() else []
    if not wit_files:
        raise BuildError(f"{src_dir}: no WIT files in {wit_dir}")
    for path in wit_files:
        add("wit:" + path.relative_to(wit_dir).as_posix(), path.read_bytes())
    for rel, path in _source_files(src_dir):
        add("src:" + rel, path.read_bytes())
    for rel, path in _source_files(sdk_dir) if sdk_dir is not None else []:
        add("sdk:" + rel, path.read_bytes())
    return digest.hexdigest()


def _componentize(
    src_dir: Path, wit_dir: Path, sdk_dir: Path | None, out: Path, *, timeout: float
) -> None:
    """Run componentize-py into a temp file beside ``out``, then move it into place."""
    fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    cmd = [
        sys.executable,
        "-c",
        _RUNNER,
        "-d",
        str(wit_dir),
        "-w",
        WORLD,
        "componentize",
        "-p",
        str(src_dir),
        *(["-p", str(sdk_dir)] if sdk_dir is not None else []),
        "app",
        "-o",
        str(tmp),
    ]
    try:
        try:
            proc = subprocess.run(
                cmd,
                cwd=src_dir,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise BuildError(
                f"{src_dir}: componentize-py did not finish within {timeout:g} s "
                "(does app.py loop or block at import time?)"
            ) from None
        except OSError as exc:
            raise BuildError(f"{src_dir}: cannot run componentize-py: {exc}") from None
        output = proc.stdout.decode("utf-8", "replace")
        if proc.returncode != 0:
            raise BuildError(
                f"{src_dir}: componentize-py failed (exit {proc.returncode}):\n"
                + _summarize(output, src_dir, sdk_dir)
            )
        if tmp.stat().st_size == 0:
            raise BuildError(f"{src_dir}: componentize-py wrote no component:\n" + output)
        os.chmod(tmp, _FILE_MODE)  # mkstemp's 0600 would make installing it as another user fail
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


#: componentize-py maps the python path entries to /0, /1, ... inside its interpreter:
#: /0 is the module folder, /1 the SDK.
_GUEST_PATH = re.compile(r'File "/0/')
_SDK_PATH = re.compile(r'File "/1/')

#: How componentize-py re-raises an error of the guest's import or pre-initialization.
_WRAPPER = "AssertionError: "


def _summarize(output: str, src_dir: Path, sdk_dir: Path | None = None) -> str:
    """The lines of componentize-py's output that say what is wrong with the source.

    componentize-py reports a failing app as the guest's traceback wrapped in its own
    (``AssertionError: <guest traceback>``) followed by a Rust backtrace; keep only the
    guest part, with guest paths mapped back to the source folder.
    """
    text = output.split("\nStack backtrace:", 1)[0]
    lines = text.splitlines()
    # Drop the host-side wrapper: the outer traceback down to "AssertionError: ", whose
    # remainder is the first line of the guest's own report.
    if lines and lines[0].startswith("Traceback (most recent call last):"):
        for i, line in enumerate(lines):
            if line.startswith(_WRAPPER):
                lines = [line.removeprefix(_WRAPPER), *lines[i + 1 :]]
                break
    meaningful = [line.rstrip() for line in lines if line.strip()]
    if not meaningful:
        return "  (no output)"
    # The "Caused by:" section repeats the last line of the traceback; drop it when it does.
    if "Caused by:" in meaningful:
        at = meaningful.index("Caused by:")
        if at > 0:
            meaningful = meaningful[:at]
    quoted = meaningful[-_ERROR_LINES:]
    lines = [_GUEST_PATH.sub(f'File "{src_dir.as_posix()}/', line) for line in quoted]
    if sdk_dir is not None:
        lines = [_SDK_PATH.sub(f'File "{sdk_dir.as_posix()}/', line) for line in lines]
    return "\n".join("  " + line for line in lines)


@contextlib.contextmanager
def locked_file(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) across processes: builds
    of one output are serialized (parallel test runs, CI)."""
    with path.open("a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _display(path: Path) -> str:
    """``path`` relative to the working directory when it is below it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m vessel._toolchain [--force] DIR...``: build each module folder, one
    line per folder; exit status 1 if any failed."""
    parser = argparse.ArgumentParser(
        prog="python -m vessel._toolchain",
        description="Build Vessel module folders (manifest.json + app.py) into components.",
    )
    parser.add_argument("dirs", nargs="+", type=Path, metavar="DIR", help="module folder")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    parser.add_argument(
        "--out", type=Path, metavar="FILE", help="write the component here (one DIR only)"
    )
    args = parser.parse_args(argv)
    if args.out is not None and len(args.dirs) != 1:
        parser.error("--out takes one DIR")
    failed = 0
    for src in args.dirs:
        try:
            result = build_module(src, out=args.out, force=args.force)
        except BuildError as exc:
            print(f"{src}: FAILED\n{exc}", file=sys.stderr, flush=True)
            failed += 1
            continue
        shown = _display(result.wasm)
        if result.cached:
            print(f"{src}: up to date ({shown})", flush=True)
        else:
            print(f"{src}: built in {result.seconds:.1f} s ({shown})", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
