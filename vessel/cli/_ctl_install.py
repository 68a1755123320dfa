"""``vessel-ctl install``: find (or build) a module's files and upload them.

PATH is a module folder or a ``.wasm`` file:

* a folder with ``app.py`` is Python source: it is built first, exactly as
  ``vessel-ctl build`` does (``_ctl_build.build_source``: same checks, same progress, a
  current build reused) and ``build/module.wasm`` is uploaded;
* a folder without it holds ``manifest.json`` and ``module.wasm`` or ``build/module.wasm``;
* a ``.wasm`` file is uploaded with the ``manifest.json`` beside it (or one folder up,
  for ``<module>/build/module.wasm``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from .._manifest import MANIFEST_FILE, WASM_FILE
from ._ctl_build import build_source, check_source, is_python_source
from ._ctl_client import INSTALL_TIMEOUT, ApiError, Client, CtlError, Settings, module_path
from ._ctl_commands import describe_state, module_info, note, out, wait_settled
from ._ctl_format import format_bytes, format_network, format_raised_limits, pretty_json

#: How often ``install`` asks how its install goes, and says so at most.
FOLLOW_INTERVAL = 1.0
PROGRESS_EVERY = 10.0


def find_manifest(path: Path) -> Path:
    """The manifest.json that goes with PATH (nothing is built yet)."""
    path = path.expanduser()
    if path.is_file():
        if path.suffix != ".wasm":
            raise CtlError(f"{path}: expected a module folder or a .wasm file")
        for folder in (path.parent, path.parent.parent):
            if (folder / MANIFEST_FILE).is_file():
                return folder / MANIFEST_FILE
        raise CtlError(f"{path}: no {MANIFEST_FILE} beside it")
    if not path.is_dir():
        raise CtlError(f"{path}: no such file or folder")
    manifest = path / MANIFEST_FILE
    if not manifest.is_file():
        raise CtlError(
            f"{path}: no {MANIFEST_FILE} (a module folder holds {MANIFEST_FILE} and {WASM_FILE})"
        )
    return manifest


def find_module_files(path: Path) -> tuple[Path, Path]:
    """(manifest.json, module.wasm) for PATH, building Python source first."""
    manifest = find_manifest(path)
    path = path.expanduser()
    if path.is_file():
        return manifest, path
    if is_python_source(path):
        return manifest, build_source(path, report=note, prebuilt_ok=True).wasm
    for wasm in (path / WASM_FILE, path / "build" / WASM_FILE):
        if wasm.is_file():
            return manifest, wasm
    raise CtlError(f"{path}: no {WASM_FILE} (looked in {WASM_FILE} and build/{WASM_FILE})")


def _manifest_id(manifest: bytes) -> str | None:
    try:
        doc = json.loads(manifest)
    except ValueError:
        return None
    value = doc.get("id") if isinstance(doc, dict) else None
    return value if isinstance(value, str) else None


def _refuse_if_installed(settings: Settings, module_id: str | None) -> None:
    """Before anything is built or uploaded: an installed id without --replace."""
    if module_id is None:
        return  # the daemon names what is wrong with the manifest
    with Client(settings) as client:
        try:
            client.json("GET", f"/api/modules/{module_id}")
        except ApiError as exc:
            if exc.status == 401:
                raise
            return  # not installed (404), or a bad id the upload is refused for
    raise CtlError(f"module {module_id!r} is already installed; pass --replace to replace it")


def follow_install(client: Client, install: dict[str, Any]) -> dict[str, Any]:
    """Wait for an install to end (bounded by --timeout), saying what it is doing every
    :data:`PROGRESS_EVERY` seconds; returns its last record."""
    module_id = str(install["id"])
    deadline = time.monotonic() + client.timeout
    said: object = None
    next_note = 0.0
    while install.get("state") in ("compiling", "starting"):
        now = time.monotonic()
        if now >= deadline:
            raise CtlError(
                f"{module_id} is still {install.get('state')} after {client.timeout:.0f} s; the "
                f"daemon goes on with it: see vessel-ctl list, or raise --timeout"
            )
        if install.get("state") != said or now >= next_note:
            note(_progress(install))
            said, next_note = install.get("state"), now + PROGRESS_EVERY
        time.sleep(FOLLOW_INTERVAL)
        install = client.json("GET", f"{module_path(module_id)}/install")
    return install


def _progress(install: dict[str, Any]) -> str:
    module_id = install.get("id")
    if install.get("state") == "starting":
        return f"starting {module_id}…"
    return f"compiling {module_id}… {install.get('elapsed', 0):.0f} s (it runs at a low priority)"


def cmd_install(settings: Settings, args: argparse.Namespace) -> int:
    if not args.replace:
        # After what can be checked here (the build's manifest check names a bad field
        # without asking any daemon), before anything is built or uploaded.
        source = args.path.expanduser()
        if source.is_dir() and is_python_source(source):
            module_id: str | None = check_source(source).id
        else:
            try:
                module_id = _manifest_id(find_manifest(args.path).read_bytes())
            except OSError as exc:
                raise CtlError(f"cannot read {exc.filename}: {exc.strerror}") from None
        _refuse_if_installed(settings, module_id)
    manifest_path, wasm_path = find_module_files(args.path)
    try:
        manifest = manifest_path.read_bytes()
        wasm = wasm_path.read_bytes()
    except OSError as exc:
        raise CtlError(f"cannot read {exc.filename}: {exc.strerror}") from None
    shown_id = _manifest_id(manifest) or "?"
    note(f"uploading {shown_id} ({WASM_FILE} {format_bytes(len(wasm))}) to {settings.url}")
    with Client(settings, default_timeout=INSTALL_TIMEOUT) as client:
        try:
            answer = client.json(
                "POST",
                "/api/modules",
                params={"replace": "true", "wait": "false"} if args.replace else {"wait": "false"},
                files={
                    "manifest": (MANIFEST_FILE, manifest, "application/json"),
                    "wasm": (WASM_FILE, wasm, "application/wasm"),
                },
            )
        except ApiError as exc:
            if exc.code == "already_installed":
                raise CtlError(
                    f"module {shown_id!r} is already installed; pass --replace to replace it"
                ) from None
            if exc.status == 401:
                raise
            raise CtlError(f"cannot install {args.path}: {exc.message}") from None
        if "enabled" not in answer:  # an install record: the daemon goes on by itself
            ended = follow_install(client, answer)
            if ended.get("state") == "failed":
                raise CtlError(f"cannot install {args.path}: {ended.get('reason')}")
            answer = module_info(client, str(ended["id"]))
        # (A daemon that waits for the compile itself answers with the ModuleInfo.)
        info = wait_settled(client, answer)
    if settings.json:
        out(pretty_json(info))
    else:
        out(f"installed {info.get('id')} {info.get('version')}: {describe_state(info)}")
        network = format_network(info.get("permissions"))
        if network != "none":  # where it may connect: the admin's to know, like limits
            out(f"network: {network}")
        if raised := format_raised_limits(info.get("raised_limits")):
            # What the module gave itself beyond what every module gets: the admin's to know.
            out(f"limits above the defaults: {raised}")
    return 0
