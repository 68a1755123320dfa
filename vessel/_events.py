"""The event record that travels on the bus, over pipes and to clients."""

from __future__ import annotations

import time

import msgspec


def utf8_size(text: str) -> int:
    """The UTF-8 size of ``text`` in bytes: what an event's limits count."""
    # isascii() is a flag check: ASCII text (JSON as json.dumps writes it) is not copied.
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def now_ms() -> int:
    """Wall-clock milliseconds since the Unix epoch (the unit of every event timestamp)."""
    return time.time_ns() // 1_000_000


class Event(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One event. ``data`` is JSON text, validated when the event enters the bus, so it can
    be spliced into every client's envelope without decoding and re-encoding it."""

    module: str
    name: str
    data: str = "null"
    version: int = 1
    timestamp: int = 0

    @property
    def key(self) -> str:
        """``module.name``: the string subscription globs are matched against."""
        return f"{self.module}.{self.name}"
