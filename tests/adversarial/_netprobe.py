"""The hand-written netprobe component (tests/guests/wat/netprobe.wat), built at test time.

A real component of the vessel-module world, a few KiB, that compiles in milliseconds:
the sandbox suite uses it as a guest that tries wasi:sockets directly, the durability
suite as a module that installs fast (its on-command answers any action).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import wasmtime

WAT = Path(__file__).resolve().parents[1] / "guests" / "wat" / "netprobe.wat"


@functools.cache
def netprobe_wasm() -> bytes:
    """The component's binary, from its text (wasmtime's wat2wasm reads component text)."""
    return bytes(wasmtime.wat2wasm(WAT.read_text()))


def netprobe_manifest(
    module_id: str,
    *,
    version: str = "0.1.0",
    permissions: dict[str, Any] | None = None,
    limits: dict[str, int] | None = None,
) -> bytes:
    doc: dict[str, Any] = {
        "id": module_id,
        "name": "WASI network probe",
        "version": version,
        "api_version": 1,
        "description": "Tries wasi:sockets directly (tests/guests/wat/netprobe.wat).",
        "permissions": permissions or {},
    }
    if limits is not None:
        doc["limits"] = limits
    return (json.dumps(doc, indent=2) + "\n").encode()
