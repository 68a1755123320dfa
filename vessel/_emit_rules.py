"""What an emitted event must satisfy, checked on both sides of the process boundary.

The module process checks first, so the guest's ``emit`` returns the error at once and a
refused event never crosses the pipe; emitting is then a one-way message (no round trip
per event). The daemon checks again on receipt, because it does not trust the module
process: a process that sends what its own checks would refuse has been subverted, and its
events are dropped and counted.
"""

from __future__ import annotations

import time

from ._events import utf8_size
from ._json_check import json_problem

MAX_EVENT_NAME = 200
#: The most an event's data may be, in bytes of UTF-8 (64 KiB). An event is state or news
#: (an entity's state object, a button press), sent to every subscriber and kept whole as
#: retained state: bulk data belongs in storage or a command's answer. At the old 1 MiB, a
#: thousand retained events held a gigabyte and a dashboard's replay took seconds.
MAX_EVENT_DATA = 64 * 1024
#: The daemon's bucket is this much larger than the manifest's rate: events the module
#: process allowed may arrive bunched up (a full pipe releases them at once), and an event
#: the guest was told was accepted must not be dropped for that.
DAEMON_RATE_SLACK = 2


def emit_problem(name: str, data: str) -> str | None:
    """Why an event ``name`` with JSON text ``data`` cannot be emitted, or None."""
    if not 0 < len(name) <= MAX_EVENT_NAME:
        return f"event name must be 1 to {MAX_EVENT_NAME} characters"
    size = utf8_size(data)
    if size > MAX_EVENT_DATA:
        return (
            f"event {name!r} is too big: its data is {size} bytes, and an event may carry "
            f"at most {MAX_EVENT_DATA} (64 KiB); event dropped"
        )
    if problem := json_problem(data):
        return f"event {name!r}: data is {problem}; event dropped"
    return None


def rate_exceeded(per_second: int) -> str:
    return f"event rate limit of {per_second}/s exceeded (limits.max_event_rate); event dropped"


class RateLimit:
    """Token bucket for emitted events: a flooding module is refused, not obeyed."""

    def __init__(self, per_second: float) -> None:
        self._rate = float(per_second)
        self._tokens = float(per_second)
        self._last = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self._rate, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False
