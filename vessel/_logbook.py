"""Log history that outlives processes: each module's lines, and the daemon's own.

A module's log used to live in its ``WasmModule``, so a restart, an upgrade or a daemon
restart lost the very lines that explained it. Here each module has a :class:`Book`
keyed by its id, kept by the daemon for as long as the module is installed:

* in memory, its newest ``RECENT`` lines (what ``GET .../logs`` and ``vessel-ctl logs``
  serve, and what a follower is sent after);
* on disk, ``<data-dir>/logs/modules/<id>.log`` plus ``.1`` ... rotated files, one JSON
  object a line, at most ``FILE_BYTES`` a file and ``FILES`` files a module; read back
  at the daemon's start, so the history goes on across daemon restarts.

Each book has its own files and its own bounds, so one module's flood can never evict
another module's history. The daemon's own log (every ``vessel.*`` and ``actors.*``
record but module lines, which are in their module's book) is one more book,
``logs/daemon.log``, fed by :class:`DaemonLogHandler`.

Lines are written by one writer task in batches, in a worker thread: a slow disk never
blocks the trio loop. What waits for it is bounded per book (``PENDING``); beyond that the
oldest waiting lines are not written, and the file says how many. No fsync: a daemon
crash loses nothing the kernel had, a power cut the last second or so.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import msgspec
import trio

from ._events import now_ms
from ._log_rules import LEVELS, cut_line

log = logging.getLogger("vessel.logbook")

#: Lines of each book kept in memory: what the API serves (its ``lines`` maximum).
RECENT = 1000
#: Bytes of one log file before it is rotated (a line is at most ~8 KiB: MAX_LINE).
FILE_BYTES = 1024 * 1024
#: Files of one book: the current one and ``FILES - 1`` rotated ones (``.1`` newest).
FILES = 3
#: Lines of one book waiting for the writer; beyond, the oldest are not written.
PENDING = RECENT
#: Seconds the writer lets lines gather before a write: one write for a burst.
BATCH_DELAY = 0.1
#: Followers a line may be queued for before the follower misses lines.
FOLLOW_QUEUE = 1000

#: Every level a line may have, by severity: the module levels and Python's own.
SEVERITY: dict[str, int] = {**LEVELS, "critical": logging.CRITICAL}
#: Loggers whose records are the daemon's log (not ``vessel.module.<id>``: see below).
DAEMON_LOGGERS = ("vessel", "actors")
#: A module's lines are logged under this name too (for the journal); in the daemon's
#: book they would let a flooding module evict the daemon's own lines.
MODULE_LOGGER_PREFIX = "vessel.module."


@dataclass(frozen=True)
class LogLine:
    """One line: ``source`` says who wrote it: for a module ``host`` (its ``log`` host
    calls), ``stdout``/``stderr`` (its prints), ``process`` (its process's last word) or
    ``daemon`` (the daemon's news about it: a crash, a restart); for the daemon's own
    log, the logger's name."""

    timestamp: int
    level: str
    source: str
    message: str


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(LogLine).decode


def logs_dir(data_dir: Path) -> Path:
    return data_dir / "logs"


def severity(level: str) -> int | None:
    """The severity of a level name (any case; ``warn`` and ``fatal`` too), or None."""
    return SEVERITY.get(level.lower())


class Book:
    """One module's log (or the daemon's): its newest lines in memory, its followers,
    and the lines waiting to be written to its files."""

    def __init__(self, path: Path, wake: Callable[[], None]) -> None:
        self.path = path
        self._wake = wake
        self._recent: deque[LogLine] = deque(maxlen=RECENT)
        self._pending: deque[LogLine] = deque()
        #: Lines that never reached the disk (a slow or failing one), not yet said so.
        self._unwritten = 0
        self._followers: set[trio.MemorySendChannel[LogLine]] = set()
        #: Lines appended since the book was opened (those read from its files not
        #: counted): a position a reader can come back to (``lines_since``).
        self.appended = 0

    def __repr__(self) -> str:
        return f"<Book {self.path.name} {len(self._recent)} lines, {len(self._pending)} pending>"

    def append(self, line: LogLine) -> None:
        """Keep a line, send it to the followers, and have it written (never waits)."""
        self._recent.append(line)
        self.appended += 1
        self._pending.append(line)
        if len(self._pending) > PENDING:
            self._pending.popleft()
            self._unwritten += 1
        for send in self._followers:
            # A follower that cannot keep up misses lines; the writer never waits.
            with suppress(trio.WouldBlock, trio.BrokenResourceError):
                send.send_nowait(line)
        self._wake()

    def lines(self) -> list[LogLine]:
        """The newest lines (at most RECENT), oldest first."""
        return list(self._recent)

    def split_at(self, position: int) -> tuple[list[LogLine], list[LogLine]]:
        """The newest lines split at ``position`` (a value ``appended`` had): those
        appended before it and those appended since, each oldest first (lines pushed out
        of the newest RECENT since then are gone from both)."""
        recent = list(self._recent)
        since = min(self.appended - position, len(recent))
        return recent[: len(recent) - since], recent[len(recent) - since :]

    @property
    def followers(self) -> int:
        return len(self._followers)

    @contextmanager
    def follow(self) -> Iterator[trio.MemoryReceiveChannel[LogLine]]:
        """Every line appended from now on (until the book is closed: the channel ends)."""
        send, receive = trio.open_memory_channel[LogLine](FOLLOW_QUEUE)
        self._followers.add(send)
        try:
            yield receive
        finally:
            self._followers.discard(send)
            send.close()

    def close(self) -> None:
        """End every follow (the module was removed)."""
        for send in self._followers:
            send.close()
        self._followers.clear()

    def _take(self) -> tuple[list[LogLine], int]:
        lines, self._pending = list(self._pending), deque()
        unwritten, self._unwritten = self._unwritten, 0
        return lines, unwritten

    def _load(self, lines: list[LogLine]) -> None:
        """Put the lines read from its files before those appended since."""
        newer = list(self._recent)
        self._recent.clear()
        self._recent.extend(lines)
        self._recent.extend(newer)


class Logbook:
    """Every book, and the task that writes them (:func:`open_logbook` runs it)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._modules: dict[str, Book] = {}
        self.daemon = Book(directory / "daemon.log", self._set_dirty)
        self._dirty = trio.Event()
        # Held while files are written or deleted: a removed module's files are deleted
        # after (never during) a write of its last lines.
        self._lock = trio.Lock()
        self._failing: str | None = None

    def _set_dirty(self) -> None:
        self._dirty.set()

    def module_path(self, module_id: str) -> Path:
        return self.directory / "modules" / f"{module_id}.log"

    def module(self, module_id: str) -> Book:
        """The module's book (a new, empty one if it has none yet)."""
        book = self._modules.get(module_id)
        if book is None:
            book = self._modules[module_id] = Book(self.module_path(module_id), self._set_dirty)
        return book

    async def load(self, module_ids: list[str]) -> None:
        """Read the history of these modules from their files, before the lines they
        have now: at the daemon's start, for the modules it found installed."""
        books = [self.module(module_id) for module_id in module_ids]
        read = await trio.to_thread.run_sync(lambda: [read_history(b.path) for b in books])
        for book, lines in zip(books, read, strict=True):
            book._load(lines)

    async def forget(self, module_id: str) -> None:
        """Drop a module's history and delete its files (uninstalled: a new install of
        the same id starts with an empty log)."""
        book = self._modules.pop(module_id, None)
        if book is not None:
            book.close()
        async with self._lock:
            try:
                await trio.to_thread.run_sync(remove_files, self.module_path(module_id))
            except OSError as exc:  # not worth failing an uninstall for
                log.warning("could not delete the log files of %s: %s", module_id, exc)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write what the books append, batch by batch, until cancelled."""
        task_status.started()
        while True:
            await self._dirty.wait()
            await trio.sleep(BATCH_DELAY)
            self._dirty = trio.Event()
            async with self._lock:
                batch = self._take()
                # Not abandoned on cancel: close() writes the rest once this is done.
                failed = await trio.to_thread.run_sync(write_batch, batch)
            self._report(batch, failed)

    def close(self) -> None:
        """Write what is left, here and now (the daemon is stopping: nothing else runs)."""
        batch = self._take()
        self._report(batch, write_batch(batch))

    def _take(self) -> list[tuple[Book, list[LogLine], int]]:
        batch = []
        for book in (self.daemon, *self._modules.values()):
            lines, unwritten = book._take()
            if lines or unwritten:
                batch.append((book, lines, unwritten))
        return batch

    def _report(self, batch: list[tuple[Book, list[LogLine], int]], failed: dict[int, str]) -> None:
        """Count the lines of the books that failed (their file will say so), and say
        when writing starts or stops failing."""
        for index, (book, lines, unwritten) in enumerate(batch):
            if index in failed:
                book._unwritten += len(lines) + unwritten
        error = next(iter(failed.values()), None)
        # Once per failure, not once per batch: the warning itself goes to the daemon's
        # book, whose write would fail in turn.
        if error is not None and self._failing is None:
            log.warning(
                "cannot write log files under %s (%s); the newest lines of each log stay "
                "in memory (vessel-ctl logs) until it can: check the disk's free space",
                self.directory, error,
            )  # fmt: skip
        elif error is None and self._failing is not None:
            log.info("log files under %s are written again", self.directory)
        self._failing = error


# -- files (worker thread) --------------------------------------------------------------


def _rotated(path: Path, index: int) -> Path:
    return path if index == 0 else path.with_name(f"{path.name}.{index}")


def read_history(path: Path) -> list[LogLine]:
    """The newest RECENT lines of a book's files, oldest first; a line that does not
    decode (torn by a crash mid-write, edited by hand) is skipped."""
    lines: deque[LogLine] = deque(maxlen=RECENT)
    for index in range(FILES - 1, -1, -1):
        try:
            with _rotated(path, index).open("rb") as f:
                for raw in f:
                    with suppress(msgspec.DecodeError, msgspec.ValidationError):
                        lines.append(_decode(raw))
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("cannot read log file %s: %s", _rotated(path, index), exc)
    return list(lines)


def remove_files(path: Path) -> None:
    for index in range(FILES):
        with suppress(FileNotFoundError):
            _rotated(path, index).unlink()


def _rotate(path: Path) -> None:
    """``.log`` becomes ``.log.1``, ``.1`` becomes ``.2``...; the oldest is overwritten."""
    for index in range(FILES - 1, 0, -1):
        with suppress(FileNotFoundError):
            os.replace(_rotated(path, index - 1), _rotated(path, index))


def _unwritten_note(count: int) -> LogLine:
    lines = "line was" if count == 1 else "lines were"
    return LogLine(
        timestamp=now_ms(),
        level="warning",
        source="daemon",
        message=f"{count} log {lines} not written to this file: the disk was too slow or failing",
    )


def append_lines(path: Path, lines: list[LogLine], unwritten: int) -> None:
    """Append to a book's current file, rotating it whenever it would pass FILE_BYTES."""
    if unwritten:
        lines = [_unwritten_note(unwritten), *lines]
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        size = 0
    # A line torn by a crash mid-write is left alone, not continued.
    chunk: list[bytes] = [b"\n"] if size and not _ends_a_line(path) else []
    for line in lines:
        data = _encode(line) + b"\n"
        if size and size + len(data) > FILE_BYTES:
            _write(path, chunk)
            chunk = []
            _rotate(path)
            size = 0
        chunk.append(data)
        size += len(data)
    _write(path, chunk)


def _ends_a_line(path: Path) -> bool:
    with path.open("rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def _write(path: Path, chunk: list[bytes]) -> None:
    if chunk:
        with path.open("ab") as f:
            f.write(b"".join(chunk))


def write_batch(batch: list[tuple[Book, list[LogLine], int]]) -> dict[int, str]:
    """Write every book's lines; returns what went wrong, by index in ``batch``. A book
    that fails loses its batch on disk (it is in memory still); the others are written
    all the same."""
    failed: dict[int, str] = {}
    for index, (book, lines, unwritten) in enumerate(batch):
        try:
            append_lines(book.path, lines, unwritten)
        except OSError as exc:
            failed[index] = f"{book.path.name}: {exc.strerror or exc}"
    return failed


# -- the daemon's own log ---------------------------------------------------------------


class DaemonLogHandler(logging.Handler):
    """Puts the daemon's log records (not module lines) into the daemon's book.

    Records logged from another thread (a worker thread's) reach the book through the
    trio loop, which owns it."""

    def __init__(self, book: Book) -> None:
        super().__init__()
        self._book = book
        self._token = trio.lowlevel.current_trio_token()
        self._thread = threading.get_ident()
        self._formatter = logging.Formatter()

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(MODULE_LOGGER_PREFIX):
            return
        try:
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + self._formatter.formatException(record.exc_info)
            line = LogLine(
                timestamp=int(record.created * 1000),
                level=record.levelname.lower(),
                source=record.name,
                message=cut_line(message),
            )
        except Exception:
            self.handleError(record)
            return
        if threading.get_ident() == self._thread:
            self._book.append(line)
        else:
            with suppress(trio.RunFinishedError):
                self._token.run_sync_soon(self._book.append, line)


@asynccontextmanager
async def open_logbook(directory: Path) -> AsyncIterator[Logbook]:
    """A logbook with its writer running and the daemon's log records going into its
    daemon book (the previous runs' lines read first); on exit, everything left is
    written. Enter it before anything that logs, leave it last."""
    logbook = Logbook(directory)

    def prepare() -> list[LogLine]:
        # Made now, not at the first write: the data dir's layout is there from the start.
        with suppress(OSError):  # the writer says so if it cannot write
            (directory / "modules").mkdir(parents=True, exist_ok=True)
        return read_history(logbook.daemon.path)

    logbook.daemon._load(await trio.to_thread.run_sync(prepare))
    handler = DaemonLogHandler(logbook.daemon)
    loggers = [logging.getLogger(name) for name in DAEMON_LOGGERS]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(logbook.run)
            yield logbook
            nursery.cancel_scope.cancel()
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
        logbook.close()


__all__ = [
    "FILES",
    "FILE_BYTES",
    "RECENT",
    "Book",
    "DaemonLogHandler",
    "LogLine",
    "Logbook",
    "logs_dir",
    "open_logbook",
    "severity",
]
