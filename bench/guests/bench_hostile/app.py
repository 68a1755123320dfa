"""bench-hostile: the misbehaving neighbour of the isolation figure.

``spin`` loops until the invocation deadline stops it; ``trap`` traps the instance (a
host import given a mistyped argument traps rather than raises; the host replaces the
instance); ``flood`` emits ``count`` events as fast as the host lets it (the
manifest's rate limit refuses most of them, which is the point).
"""

from __future__ import annotations

from typing import Any

from vessel_sdk import HostError, Module
from wit_world.imports import host

app = Module()


@app.command("spin")
def spin(params: Any) -> Any:
    while True:
        pass


@app.command("trap")
def trap(params: Any) -> Any:
    host.log(0, 0)


@app.command("flood")
def flood(params: Any) -> Any:
    sent = refused = 0
    for _ in range(int(params.get("count", 1000))):
        try:
            app.emit("flood", "x" * 100)
            sent += 1
        except HostError:
            refused += 1
    return {"sent": sent, "refused": refused}


Guest = app.guest()
