"""The logbook (vessel/_logbook.py): logs kept in memory and in rotated files on disk,
read back by the next logbook, bounded per book, and the daemon's own records."""

from __future__ import annotations

import logging
from pathlib import Path

import msgspec
import trio
import trio.lowlevel

from vessel._logbook import (
    FILE_BYTES,
    FILES,
    RECENT,
    Book,
    Logbook,
    LogLine,
    open_logbook,
    read_history,
)
from vessel.gateway._rest_logs import LogQuery, follow_stream


def line(n: int, message: str = "", level: str = "info", source: str = "host") -> LogLine:
    return LogLine(timestamp=1_700_000_000_000 + n, level=level, source=source,
                   message=message or f"line {n}")  # fmt: skip


def files_of(path: Path) -> list[Path]:
    return sorted(path.parent.glob(path.name + "*"))


async def test_history_is_read_back_by_the_next_logbook(tmp_path: Path) -> None:
    """What one logbook was given is what the next one (the daemon's next run) reads:
    the same lines, oldest first, the lines appended since after them; the daemon's book
    too."""
    async with open_logbook(tmp_path) as first:
        for n in range(5):
            first.module("alpha").append(line(n))
        first.daemon.append(line(0, "daemon line", source="vessel.test"))
    # Left without waiting for the writer: closing writes what was left.
    async with open_logbook(tmp_path) as second:
        assert [x.message for x in second.daemon.lines()][:1] == ["daemon line"]
        second.module("alpha").append(line(5))
        await second.load(["alpha"])
        assert second.module("alpha").lines() == [line(n) for n in range(6)]
    assert [x.message for x in read_history(second.module_path("alpha"))] == [
        f"line {n}" for n in range(6)
    ]


async def test_rotation_keeps_each_book_within_its_files_and_bytes(tmp_path: Path) -> None:
    """A flood of long lines rotates the book's file: at most FILES files, none above
    FILE_BYTES, the newest lines kept (on disk and in memory), the oldest gone; the
    other book's single line is untouched (a flood evicts nobody else's history)."""
    long = "x" * 8000
    # More than the files hold, and more than memory holds.
    total = max((FILES + 2) * FILE_BYTES // len(long), RECENT + 100)
    async with open_logbook(tmp_path) as logbook:
        logbook.module("quiet").append(line(0, "the quiet module's line"))
        flood = logbook.module("flood")
        for n in range(total):
            flood.append(line(n, f"{n} {long}"))
            if n % 100 == 99:
                await trio.lowlevel.checkpoint()  # as a flood: the writer runs meanwhile
        assert len(flood.lines()) == RECENT
    path = logbook.module_path("flood")
    files = files_of(path)
    assert [p.name for p in files] == ["flood.log", "flood.log.1", "flood.log.2"][:FILES]
    assert all(p.stat().st_size <= FILE_BYTES for p in files), [p.stat().st_size for p in files]
    kept = read_history(path)
    assert kept[-1].message.startswith(f"{total - 1} ")
    numbers = [int(x.message.split()[0]) for x in kept]
    assert numbers == sorted(numbers)
    assert numbers[0] > 0  # the first ones are gone
    assert [x.message for x in read_history(logbook.module_path("quiet"))] == [
        "the quiet module's line"
    ]


async def test_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    """A line cut short by a crash mid-write, or garbage, is skipped when read back."""
    async with open_logbook(tmp_path) as logbook:
        logbook.module("alpha").append(line(1))
    path = logbook.module_path("alpha")
    with path.open("ab") as f:
        f.write(b'{"timestamp": 1, "level": "in')
    async with open_logbook(tmp_path) as again:
        await again.load(["alpha"])
        assert again.module("alpha").lines() == [line(1)]
        again.module("alpha").append(line(2))
    assert read_history(path)[-1] == line(2)


async def test_forget_deletes_the_files_and_ends_the_follows(tmp_path: Path) -> None:
    """An uninstalled module's files are deleted (after any write of its last lines), its
    followers' streams end, and the same id starts again with an empty log."""
    async with open_logbook(tmp_path) as logbook:
        book = logbook.module("alpha")
        book.append(line(1))
        with book.follow() as follow:
            book.append(line(2))
            await logbook.forget("alpha")
            assert await follow.receive() == line(2)
            with trio.fail_after(5):
                async for _ in follow:
                    raise AssertionError("nothing after the end")
        assert files_of(logbook.module_path("alpha")) == []
        assert logbook.module("alpha").lines() == []
        logbook.module("alpha").append(line(3))
    assert read_history(logbook.module_path("alpha")) == [line(3)]


async def test_a_failing_disk_is_said_once_and_lines_stay_in_memory(tmp_path: Path) -> None:
    """When the files cannot be written the daemon's log says so once (not per batch),
    the lines stay readable in memory, and once it can write again it says so and the
    file says how many lines it missed."""
    (tmp_path / "modules").write_text("a file where the folder should be")
    logger = logging.getLogger("vessel.logbook")
    level = logger.level
    logger.setLevel(logging.INFO)  # for "written again"
    try:
        await _fail_then_recover(tmp_path)
    finally:
        logger.setLevel(level)


async def _fail_then_recover(tmp_path: Path) -> None:
    async with open_logbook(tmp_path) as logbook:
        book = logbook.module("alpha")
        with logbook.daemon.follow() as daemon_lines:
            book.append(line(1))
            with trio.fail_after(10):
                warning = await daemon_lines.receive()
            assert warning.level == "warning"
            assert "cannot write log files under" in warning.message
            book.append(line(2))
            (tmp_path / "modules").unlink()
            book.append(line(3))
            with trio.fail_after(10):
                again = await daemon_lines.receive()
            assert "are written again" in again.message, again
        assert [x.message for x in book.lines()] == ["line 1", "line 2", "line 3"]
        assert [x.message for x in logbook.daemon.lines()].count(warning.message) == 1
    on_disk = read_history(logbook.module_path("alpha"))
    assert on_disk[0].message.startswith("1 log line was not written to this file")
    assert on_disk[1:] == [line(2), line(3)]


async def test_daemon_records_go_to_the_daemon_book_but_module_lines_do_not(
    tmp_path: Path,
) -> None:
    """Records of vessel.* and actors.* loggers (from the trio thread or a worker
    thread) are the daemon's log; a module's lines, logged as vessel.module.<id> for the
    journal, are not (they are in the module's own book)."""
    async with open_logbook(tmp_path) as logbook:
        with logbook.daemon.follow() as lines:
            logging.getLogger("vessel.test").warning("from the loop")
            await trio.to_thread.run_sync(
                lambda: logging.getLogger("actors.test").error("from thread %s", "x")
            )
            logging.getLogger("vessel.module.alpha").warning("a module's line")
            logging.getLogger("vessel.test").warning("last")
            got: list[LogLine] = []
            with trio.fail_after(10):
                while not got or got[-1].message != "last":
                    got.append(await lines.receive())
    assert [(x.source, x.level, x.message) for x in got] == [
        ("vessel.test", "warning", "from the loop"),
        ("actors.test", "error", "from thread x"),
        ("vessel.test", "warning", "last"),
    ]


async def test_a_slow_follower_misses_lines_but_never_holds_the_book(tmp_path: Path) -> None:
    """A follower that does not read loses what overflows its queue; appending never
    waits, and the book keeps its newest RECENT lines."""
    book = Book(tmp_path / "x.log", lambda: None)
    with book.follow() as follow:
        for n in range(RECENT * 3):
            book.append(line(n))
        assert book.followers == 1
        assert follow.statistics().current_buffer_used == follow.statistics().max_buffer_size
    assert book.followers == 0
    assert book.lines() == [line(n) for n in range(RECENT * 2, RECENT * 3)]


async def test_a_logbook_without_its_writer_loses_nothing_on_close(tmp_path: Path) -> None:
    """close() writes whatever is pending, with no writer task ever run."""
    logbook = Logbook(tmp_path)
    logbook.module("alpha").append(line(1))
    logbook.close()
    assert read_history(logbook.module_path("alpha")) == [line(1)]


async def test_a_follow_begins_when_it_is_answered_not_when_its_body_is_first_read(
    tmp_path: Path,
) -> None:
    """A follow's stream is answered (its headers sent) before the server first pulls at
    its body; a line appended in between (which the client, holding its headers, may
    have caused) comes first in the stream, after the backlog counted back from the
    answer, and nothing is repeated."""
    book = Book(tmp_path / "x.log", lambda: None)
    for n in range(5):
        book.append(line(n, level="warning" if n % 2 else "info"))
    query = LogQuery(lines=2, least=0, follow=True)
    stop = trio.Event()
    stream = follow_stream(book, query, stop, since=book.appended)
    book.append(line(5, "between the answer and the first read"))
    with trio.fail_after(5):
        first = [msgspec.json.decode(await anext(stream)) for _ in range(3)]
    assert [x["timestamp"] for x in first] == [line(n).timestamp for n in (3, 4, 5)]
    book.append(line(6, "live"))
    with trio.fail_after(5):
        assert msgspec.json.decode(await anext(stream))["message"] == "live"
    stop.set()
    with trio.fail_after(5):
        assert [chunk async for chunk in stream] == []
    assert book.followers == 0


async def test_a_follow_keeps_its_level_for_the_lines_it_caught_up_on(tmp_path: Path) -> None:
    """?level= applies to the lines appended before the first read too."""
    book = Book(tmp_path / "x.log", lambda: None)
    stream = follow_stream(book, LogQuery(lines=0, least=30, follow=True), trio.Event(), since=0)
    book.append(line(1, "quiet"))
    book.append(line(2, "loud", level="warning"))
    with trio.fail_after(5):
        assert msgspec.json.decode(await anext(stream))["message"] == "loud"
    await stream.aclose()
    assert book.followers == 0
