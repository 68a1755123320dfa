"""Example counter: the module a fresh Vessel runs so the dashboard has something live.

Every second it increments a counter, persists it in storage (so it survives restarts)
and publishes it as the retained event ``example.tick`` ``{"count": n}``. It also listens
to the built-in ``vessel`` module's lifecycle events and remembers the last few.

Written on the guest SDK (``vessel_sdk``, docs/modules.md). Everything is imported at
the top: componentize-py snapshots the interpreter at build time, and a guest cannot
import modules that were not loaded then.
"""

from __future__ import annotations

import json
from collections import deque
from typing import Any

from vessel_sdk import CommandError, Event, HostError, Module

TICK_MS = 1000
COUNT_KEY = "count"
LIFECYCLE_KEEP = 20

app = Module()


class _State:
    """The module's state; one instance lives as long as the component instance."""

    def __init__(self) -> None:
        self.count = 0
        self.lifecycle: deque[tuple[str, str]] = deque(maxlen=LIFECYCLE_KEEP)


STATE = _State()


def _load_count() -> int:
    raw = app.storage.get(COUNT_KEY)
    if raw is None:
        return 0
    try:
        value = json.loads(raw)
    except ValueError:
        value = None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    app.log.warning(f"stored count {raw!r} is not an integer; starting from 0")
    return 0


def _publish(count: int) -> dict[str, int]:
    """Persist ``count`` and publish it as the retained ``tick`` event."""
    STATE.count = count
    try:
        app.storage.set(COUNT_KEY, json.dumps(count))
    except HostError as e:
        app.log.warning(f"cannot persist the count: {e.message}")
    try:
        app.emit("tick", {"count": count}, retained=True)
    except HostError as e:
        app.log.warning(f"cannot emit tick: {e.message}")
    return {"count": count}


@app.on_load
def load() -> None:
    STATE.count = _load_count()
    try:
        app.set_interval(TICK_MS, lambda: _publish(STATE.count + 1))
    except HostError as e:
        app.log.warning(f"the counter will not tick: {e.message}")
    _publish(STATE.count)
    app.log.info(f"example counter loaded at {STATE.count}")


@app.on_event("vessel.module.*")
def lifecycle_event(event: Event) -> None:
    STATE.lifecycle.append((event.module, event.name))


@app.command("get")
def get(params: dict[str, Any]) -> Any:
    return {"count": STATE.count}


@app.command("reset")
def reset(params: dict[str, Any]) -> Any:
    return _publish(0)


@app.command("add")
def add(params: dict[str, Any]) -> Any:
    n = params.get("n")
    if not isinstance(n, int) or isinstance(n, bool):
        raise CommandError("add needs an integer n")
    return _publish(STATE.count + n)


@app.command("echo")
def echo(params: dict[str, Any]) -> Any:
    return params


@app.command("lifecycle")
def lifecycle(params: dict[str, Any]) -> Any:
    return [list(item) for item in STATE.lifecycle]


Guest = app.guest()
