"""bench-echo: the guest every benchmark figure calls.

``echo`` answers its params unchanged (the SDK decodes and re-encodes them, as any real
command would); ``burst`` emits ``count`` events ``bench-echo.<name>`` whose data is a
JSON string of ``size`` characters, for the fan-out and payload figures.
"""

from __future__ import annotations

from typing import Any

from vessel_sdk import CommandError, Module

app = Module()


@app.command("echo")
def echo(params: Any) -> Any:
    return params


@app.command("burst")
def burst(params: Any) -> Any:
    count = params.get("count")
    size = params.get("size")
    name = params.get("name", "burst")
    if not isinstance(count, int) or not isinstance(size, int) or count < 0 or size < 0:
        raise CommandError("burst needs non-negative integers 'count' and 'size'")
    payload = "x" * size
    for _ in range(count):
        app.emit(name, payload)
    return {"emitted": count}


Guest = app.guest()
