"""The egress audit of one module process: per destination, what its ``http-fetch`` and
websockets did (``GET /api/modules/<id>/egress``, docs/api.md).

A destination is an origin, ``scheme://host:port``, the host as the URL wrote it (what
``permissions.network.hosts`` is checked against). Bytes are payload bytes: request and
response bodies, WebSocket messages in UTF-8; headers and framing are not counted.

The ledger lives in the module process (its host functions are where the traffic is), so
it covers the process's life: a restart starts it again. It is bounded: at most
``MAX_DESTINATIONS`` entries, and what goes anywhere else is added to one entry named
``OTHER`` so that nothing goes uncounted.
"""

from __future__ import annotations

import time

import msgspec

from .._manifest import origin_of

#: Destinations kept apart per module process; more are counted together under OTHER.
MAX_DESTINATIONS = 128
OTHER = "(other destinations)"


class EgressEntry(msgspec.Struct):
    """What went to one destination. ``last_used`` is milliseconds since the epoch of the
    last request, connection or message (None: only denied attempts)."""

    destination: str
    requests: int = 0
    connections: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    last_used: int | None = None
    denied: int = 0
    last_denied: int | None = None


def destination(scheme: str, host: str, port: int | None) -> str:
    """``scheme://host:port`` with the scheme's default port written out."""
    scheme, host, port = origin_of(scheme, host, port)
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{port}"


class EgressLedger:
    """Counts per destination; every method runs on the module process's trio thread."""

    def __init__(self, max_destinations: int = MAX_DESTINATIONS) -> None:
        self._max = max_destinations
        self._entries: dict[str, EgressEntry] = {}

    def _entry(self, dest: str) -> EgressEntry:
        entry = self._entries.get(dest)
        if entry is None:
            if len(self._entries) >= self._max:
                dest = OTHER
                entry = self._entries.get(OTHER)
            if entry is None:
                entry = self._entries[dest] = EgressEntry(dest)
        return entry

    def used(
        self,
        dest: str,
        *,
        requests: int = 0,
        connections: int = 0,
        sent: int = 0,
        received: int = 0,
    ) -> None:
        entry = self._entry(dest)
        entry.requests += requests
        entry.connections += connections
        entry.bytes_sent += sent
        entry.bytes_received += received
        entry.last_used = _now_ms()

    def denied(self, dest: str) -> None:
        entry = self._entry(dest)
        entry.denied += 1
        entry.last_denied = _now_ms()

    def entries(self) -> list[EgressEntry]:
        """Every destination, most recently used (or denied) first."""
        return sorted(
            self._entries.values(),
            key=lambda e: max(e.last_used or 0, e.last_denied or 0),
            reverse=True,
        )


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
