"""Helpers for tests that run a real daemon with real module processes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from vessel._bus import Subscription
from vessel._daemon import Daemon, DaemonConfig, open_daemon
from vessel._errors import CallError
from vessel._events import Event
from vessel._manager import SupervisionPolicy

#: Restart quickly so crash tests stay fast; intensity small enough to reach `failed`.
FAST = SupervisionPolicy(max_restarts=2, period=30.0, backoff_initial=0.05, backoff_max=0.2)


@asynccontextmanager
async def running_daemon(
    data_dir: Path, *, policy: SupervisionPolicy = FAST, **options: Any
) -> AsyncIterator[Daemon]:
    """A daemon on ``data_dir``; ``options`` are more DaemonConfig fields."""
    config = DaemonConfig(data_dir=data_dir, install_bundled=False, policy=policy, **options)
    async with open_daemon(config) as daemon:
        yield daemon


async def call(daemon: Daemon, module: str, name: str, params: Any = None, **kw: Any) -> Any:
    """Call a module the way a client does and decode its JSON answer."""
    result = await daemon.manager.call(module, name, 1, json.dumps(params or {}), **kw)
    return json.loads(result)


async def call_error(daemon: Daemon, module: str, name: str, params: Any = None) -> CallError:
    """Call expecting failure; returns the CallError (fails the test if it succeeded)."""
    try:
        result = await daemon.manager.call(module, name, 1, json.dumps(params or {}))
    except CallError as exc:
        return exc
    raise AssertionError(f"{module}.{name} succeeded unexpectedly: {result}")


async def next_event(
    sub: Subscription, predicate: Callable[[Event], bool], *, timeout: float = 15.0
) -> Event:
    """The first event on ``sub`` that satisfies ``predicate`` (bounded wait)."""
    with trio.fail_after(timeout):
        async for event in sub:
            if predicate(event):
                return event
    raise AssertionError("subscription closed")


def lifecycle(name: str, module: str) -> Callable[[Event], bool]:
    def match(event: Event) -> bool:
        return (
            event.module == "vessel"
            and event.name == f"module.{name}"
            and json.loads(event.data).get("module") == module
        )

    return match


def data(event: Event) -> Any:
    return json.loads(event.data)


async def wait_until(
    check: Callable[[], Any], *, timeout: float = 15.0, interval: float = 0.02
) -> Any:
    """Poll an in-process condition that has no event to await (bounded)."""
    with trio.fail_after(timeout):
        while not (value := check()):
            await trio.sleep(interval)
    return value
