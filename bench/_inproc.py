"""In-process floors and the peer, each run as its own process:
``python -m bench._inproc guest <module_dir> <n>`` or ``... extism <n>``.

``guest``: the bench-echo component's ``on-command("echo", ...)`` called directly through
Vessel's own GuestRuntime (the code a module process uses), on the calling thread: the
guest's share of a call with no process boundary, no pipe and no gateway.
``extism``: the same echo, as an Extism plugin (bench/guests/extism/echo.wat), called
through Extism's Python host SDK: a peer that runs plugins inside the host process.
Both print one JSON line of latency percentiles.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Any

from ._stats import latency_summary

#: The params every echo benchmark sends (about 100 bytes of JSON, like a light command).
PARAMS: dict[str, Any] = {"entity_id": "light.kitchen", "brightness": 128, "note": "x" * 40}


def _time_calls(call: Any, n: int, warmup: int) -> dict[str, float]:
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return latency_summary(samples)


def _unavailable(*_args: Any) -> Any:
    raise RuntimeError("host functions are not linked in the in-process floor")


def _host_function_names() -> list[str]:
    """Every function of the WIT ``host`` interface (each gets a stub that traps)."""
    wit = (Path(__file__).resolve().parents[1] / "wit" / "vessel-host.wit").read_text()
    body = wit.split("interface host {", 1)[1].split("\n}", 1)[0]
    return re.findall(r"^\s*([a-z][a-z-]*): func", body, re.MULTILINE)


def guest_runtime(module_dir: Path) -> Any:
    """The module's guest, loaded and instantiated through Vessel's own GuestRuntime,
    ``on-load`` done; host functions trap (the floors never call them)."""
    from vessel._manifest import load_module_dir
    from vessel.host._runtime import GuestRuntime, Limits

    source = load_module_dir(module_dir)
    runtime = GuestRuntime(
        module_id=source.id,
        module_dir=module_dir,
        source_hash=source.hash,
        limits=Limits(memory_bytes=256 << 20, invocation_seconds=30.0),
        imports=dict.fromkeys(_host_function_names(), _unavailable),
        on_output=lambda _stream, _data: None,
    )
    runtime.load()
    runtime.instantiate()
    runtime.call("on-load")
    return runtime


def guest(module_dir: Path, n: int) -> dict[str, float]:
    runtime = guest_runtime(module_dir)
    params = json.dumps(PARAMS)

    def call() -> None:
        runtime.call("on-command", "echo", params)

    try:
        return _time_calls(call, n, warmup=min(n, 200))
    finally:
        runtime.close()


def extism(n: int) -> dict[str, float]:
    import extism as ex
    import wasmtime

    wat = (Path(__file__).parent / "guests" / "extism" / "echo.wat").read_text()
    plugin = ex.Plugin(bytes(wasmtime.wat2wasm(wat)), wasi=False)
    params = json.dumps(PARAMS).encode()
    if plugin.call("echo", params) != params:
        raise RuntimeError("the Extism echo plugin did not echo")
    return _time_calls(lambda: plugin.call("echo", params), n, warmup=min(n, 200))


if __name__ == "__main__":
    kind = sys.argv[1]
    if kind == "guest":
        result = guest(Path(sys.argv[2]), int(sys.argv[3]))
    elif kind == "extism":
        result = extism(int(sys.argv[2]))
    else:
        raise SystemExit(f"unknown kind {kind!r}")
    print(json.dumps(result), flush=True)
