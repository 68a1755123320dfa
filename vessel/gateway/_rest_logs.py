"""Logs over REST, a module's and the daemon's alike: the newest lines as JSON, or those
and then the live ones as an NDJSON follow stream; ``?level=`` keeps the lines at that
level or above. The lines come from the daemon's logbook (vessel/_logbook.py), so they
go on across a module's restarts and the daemon's."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import msgspec
import trio
from quart import Response

from .._logbook import Book, LogLine, severity
from ._app import gateway_state
from ._rest_support import ApiError, Args, query_bool, query_lines

NDJSON = "application/x-ndjson"
#: What ``?level=`` takes (``warn`` and ``fatal`` too, as modules name them).
LEVEL_NAMES = ("debug", "info", "warning", "error", "critical")


@dataclass(frozen=True)
class LogQuery:
    """``?lines=N&level=L&follow=1``."""

    lines: int
    #: The least severity kept (0: every line).
    least: int
    follow: bool

    def keeps(self, line: LogLine) -> bool:
        return self.least == 0 or (severity(line.level) or 0) >= self.least


def log_query(args: Args) -> LogQuery:
    """The query of a logs request; a bad one is ApiError(invalid_request)."""
    lines = query_lines(args)
    follow = query_bool(args, "follow")
    raw = args.get("level")
    least = 0
    if raw is not None and raw.strip():
        found = severity(raw.strip()) if len(raw) <= 16 else None
        if found is None:
            raise ApiError(
                "invalid_request",
                f"query parameter 'level' must be one of {', '.join(LEVEL_NAMES)}",
            )
        least = found
    return LogQuery(lines=lines, least=least, follow=follow)


def line_dict(line: LogLine) -> dict[str, Any]:
    return {
        "timestamp": line.timestamp,
        "level": line.level,
        "source": line.source,
        "message": line.message,
    }


def recent_lines(book: Book, query: LogQuery) -> list[LogLine]:
    """The last ``query.lines`` lines at the query's level or above, oldest first."""
    if not query.lines:
        return []
    kept = [line for line in book.lines() if query.keeps(line)]
    return kept[-query.lines :]


def log_response(book: Book, query: LogQuery) -> Response:
    """``{"lines": [...]}``, or with ``follow`` an NDJSON stream that ends when the
    client goes, the book is closed (its module removed) or the daemon shuts down."""
    if not query.follow:
        body = {"lines": [line_dict(line) for line in recent_lines(book, query)]}
        return Response(msgspec.json.encode(body), mimetype="application/json")
    # The follow starts now, when the request is answered, not when the server first
    # pulls at the body (after the headers are out): a line logged in between, which a
    # client that has its headers may well have caused, is not lost.
    stream = follow_stream(book, query, gateway_state().shutting_down, since=book.appended)
    response = Response(stream, mimetype=NDJSON)
    response.timeout = None  # a follow lasts as long as the client wants it
    response.headers["Cache-Control"] = "no-store"
    return response


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
    book: Book, query: LogQuery, stop: trio.Event, *, since: int | None = None
) -> AsyncGenerator[bytes, None]:
    """The last ``query.lines`` lines, then live lines until ``stop`` (daemon shutdown).

    ``since``: where the follow began (``book.appended`` when the request was answered):
    the lines appended from there until this stream first runs come before the live ones,
    and the backlog is counted back from there.
    A client that goes away cancels the stream (Quart cancels the request) or closes the
    generator; either way the ``follow`` block exits and the follower is released.
    """
    with book.follow() as lines:
        # No await between registering and the snapshot: no line lost or repeated.
        before, missed = book.split_at(book.appended if since is None else since)
        backlog = [line for line in before if query.keeps(line)][-query.lines :]
        for old in (backlog if query.lines else []) + [x for x in missed if query.keeps(x)]:
            yield _ndjson(old)
        while (new := await _next_line(lines, stop)) is not None:
            if query.keeps(new):
                yield _ndjson(new)
