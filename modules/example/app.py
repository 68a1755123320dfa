"""Example counter: the module a fresh Vessel runs so the dashboard has something live.

Every second it increments a counter, persists it in storage (so it survives restarts)
and publishes it as the retained event ``example.tick`` ``{"count": n}``. It also listens
to the built-in ``vessel`` module's lifecycle events and remembers the last few.

Everything is imported at the top: componentize-py snapshots the interpreter at build
time, and a guest cannot import modules that were not loaded then.
"""

from __future__ import annotations

import json
from collections import deque
from typing import Any

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import host, types

MODULE_ID = "example"  # the host stamps the real id on everything we emit
TICK_MS = 1000
COUNT_KEY = "count"
LIFECYCLE_PATTERN = "vessel.module.*"
LIFECYCLE_KEEP = 20


class _State:
    """The module's state; one instance lives as long as the component instance."""

    def __init__(self) -> None:
        self.count = 0
        self.timer = 0
        self.lifecycle: deque[tuple[str, str]] = deque(maxlen=LIFECYCLE_KEEP)


STATE = _State()


def _load_count() -> int:
    raw = host.storage_get(COUNT_KEY)
    if raw is None:
        return 0
    try:
        value = json.loads(raw)
    except ValueError:
        value = None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    host.log("warning", f"stored count {raw!r} is not an integer; starting from 0")
    return 0


def _publish(count: int) -> None:
    """Persist ``count`` and publish it as the retained ``tick`` event."""
    STATE.count = count
    try:
        host.storage_set(COUNT_KEY, json.dumps(count))
    except Err as e:
        host.log("warning", f"cannot persist the count: {e.value}")
    event = types.Event(
        module=MODULE_ID,
        name="tick",
        version=1,
        data=json.dumps({"count": count}),
        timestamp=0,
    )
    try:
        host.emit_retained(event)
    except Err as e:
        host.log("warning", f"cannot emit tick: {e.value}")


def _params(raw: str) -> Any:
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except ValueError:
        raise Err("params must be JSON") from None


def _add(params: Any) -> str:
    n = params.get("n") if isinstance(params, dict) else None
    if not isinstance(n, int) or isinstance(n, bool):
        raise Err("add needs an integer n")
    _publish(STATE.count + n)
    return json.dumps({"count": STATE.count})


class Guest(exports.Guest):
    """The ``vessel:host/guest`` exports."""

    def on_load(self) -> None:
        STATE.count = _load_count()
        try:
            host.subscribe(LIFECYCLE_PATTERN)
        except Err as e:
            host.log("warning", f"no lifecycle events: {e.value}")
        STATE.timer = host.set_interval(TICK_MS)
        if STATE.timer == 0:
            host.log("warning", "timers refused; the counter will not tick")
        _publish(STATE.count)
        host.log("info", f"example counter loaded at {STATE.count}")

    def on_unload(self) -> None:
        if STATE.timer:
            host.clear_timer(STATE.timer)
            STATE.timer = 0

    def on_event(self, event: types.Event) -> None:
        STATE.lifecycle.append((event.module, event.name))

    def on_command(self, action: str, params: str) -> str:
        if action == "get":
            return json.dumps({"count": STATE.count})
        if action == "reset":
            _publish(0)
            return json.dumps({"count": 0})
        if action == "add":
            return _add(_params(params))
        if action == "echo":
            return params if params.strip() else "null"
        if action == "lifecycle":
            return json.dumps([list(item) for item in STATE.lifecycle])
        raise Err(f"unknown command: {action}")

    def on_timer(self, handle: int) -> None:
        if handle == STATE.timer:
            _publish(STATE.count + 1)

    def on_websocket_message(self, handle: int, message: str) -> None:
        pass

    def on_websocket_closed(self, handle: int, reason: str) -> None:
        pass
