"""Module logs over REST: recent lines as JSON, and a live NDJSON follow stream."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import suppress
from typing import Any

import msgspec
import trio

from .._errors import UnknownModule
from .._manager import ModuleManager
from .._wasm_module import LogLine

NDJSON = "application/x-ndjson"


def line_dict(line: LogLine) -> dict[str, Any]:
    return {
        "timestamp": line.timestamp,
        "level": line.level,
        "source": line.source,
        "message": line.message,
    }


def recent_lines(manager: ModuleManager, module_id: str, count: int) -> list[dict[str, Any]]:
    """The last ``count`` lines, oldest first (raises UnknownModule)."""
    lines = manager.logs(module_id)
    return [line_dict(line) for line in (lines[-count:] if count else [])]


def _ndjson(line: LogLine) -> bytes:
    return msgspec.json.encode(line_dict(line)) + b"\n"


async def _next_line(lines: trio.MemoryReceiveChannel[LogLine], stop: trio.Event) -> LogLine | None:
    """The next live line, or None once ``stop`` is set or the channel ended.

    The race lives in its own nursery, opened and closed between two yields of the
    stream, so no cancel scope is ever held open across a ``yield``.
    """
    got: list[LogLine] = []
    async with trio.open_nursery() as nursery:

        async def take() -> None:
            with suppress(trio.EndOfChannel, trio.ClosedResourceError):
                got.append(await lines.receive())
            nursery.cancel_scope.cancel()

        async def wait_stop() -> None:
            await stop.wait()
            nursery.cancel_scope.cancel()

        nursery.start_soon(take)
        nursery.start_soon(wait_stop)
    return got[0] if got and not stop.is_set() else None


async def follow_stream(
    manager: ModuleManager, module_id: str, count: int, stop: trio.Event
) -> AsyncIterator[bytes]:
    """The last ``count`` lines, then live lines until ``stop`` (daemon shutdown).

    A client that goes away cancels the stream (Quart cancels the request) or closes the
    generator; either way the ``follow_logs`` block exits and the follower is released.
    """
    try:
        with manager.follow_logs(module_id) as lines:
            # No await between registering and the snapshot: no line lost or repeated.
            backlog = manager.logs(module_id)[-count:] if count else []
            for old in backlog:
                yield _ndjson(old)
            while (new := await _next_line(lines, stop)) is not None:
                yield _ndjson(new)
    except UnknownModule:  # removed between the request and the first byte
        return
