"""The daemon's one SQLite database: each module's key/value namespace and module state.

Only the daemon process opens it, and only from its trio thread: every statement here is
a sub-millisecond indexed lookup or single-row write, so calls stay synchronous rather
than paying a thread hop each. ``synchronous=FULL`` in WAL mode makes an acknowledged
write durable even if the daemon is SIGKILLed or the machine loses power right after.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

from ._errors import DatabaseMissing, DiskWriteError, QuotaExceeded, StorageError

#: PRAGMA user_version of the schema this code writes.
SCHEMA_VERSION = 1
MAX_KEY_LENGTH = 256
BUSY_TIMEOUT_MS = 5000

_SCHEMA = """
CREATE TABLE kv (
    module_id TEXT NOT NULL,
    key       TEXT NOT NULL,
    value     TEXT NOT NULL,
    size      INTEGER NOT NULL,  -- utf-8 bytes of key + value, summed for the quota
    PRIMARY KEY (module_id, key)
) WITHOUT ROWID;
CREATE TABLE module_state (
    module_id TEXT PRIMARY KEY,
    enabled   INTEGER NOT NULL
) WITHOUT ROWID;
"""

# Each module's lifecycle history (vessel/_history.py). Added after schema version 1 as a
# table of its own, created when missing: a Vessel that predates it ignores it, so this
# needs no new schema version (which an older Vessel would refuse to open).
_HISTORY_SCHEMA = """
CREATE TABLE IF NOT EXISTS module_history (
    seq       INTEGER PRIMARY KEY,  -- insertion order
    module_id TEXT NOT NULL,
    timestamp INTEGER NOT NULL,     -- ms since the epoch
    event     TEXT NOT NULL,
    data      TEXT NOT NULL         -- a JSON object: pid, reason, restarts, ...
);
CREATE INDEX IF NOT EXISTS module_history_by_module ON module_history (module_id, seq);
"""


def _utf8_size(module_id: str, text: str, what: str) -> int:
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise StorageError(
            f"storage of module {module_id!r}: {what} is not valid Unicode text "
            "(it contains a lone surrogate)"
        ) from None


#: SQLite's primary result codes for a write the disk could not take (as opposed to a
#: bad statement or a closed database): they become DiskWriteError.
_DISK_ERRORS = frozenset({sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_READONLY})


@contextmanager
def _translated(module_id: str) -> Iterator[None]:
    """Translate sqlite3's errors (disk full, I/O error, closed database) at the boundary."""
    try:
        yield
    except sqlite3.Error as exc:
        message = f"storage of module {module_id!r}: database error: {exc}"
        # A full disk is the operator's to fix, not the caller's: say so, in a class of
        # its own, so callers can tell it from a bad key (both were StorageError).
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
        if code == sqlite3.SQLITE_FULL:
            raise DiskWriteError(
                f"{message}; nothing was written: free space in the data dir and retry"
            ) from exc
        if code in _DISK_ERRORS:
            raise DiskWriteError(f"{message}; check the data dir's file system") from exc
        raise StorageError(message) from exc


class Storage:
    """An open database. Use ``Storage.open(path)``; close it (or use ``with``) when done."""

    def __init__(self, conn: sqlite3.Connection, path: Path, *, created: bool = False) -> None:
        self._conn = conn
        self._closed = False
        self.path = path
        #: This open wrote the schema: the database was new (or empty) until now.
        self.created = created

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Storage {str(self.path)!r} {state}>"

    @classmethod
    def open(cls, path: Path, *, create: bool = True) -> Storage:
        """Open the database at ``path`` and check it is intact; ``created`` says whether
        this open wrote its schema.

        ``create=False``: the database must be there already, with Vessel's data in it;
        a missing file, or one with no schema (zero bytes, say), raises DatabaseMissing
        and nothing is written. Otherwise it is created (or its schema written) then.

        Raises StorageError when the file is not a database, is corrupt, or was written by
        a newer Vessel.
        """
        if not create and not path.exists():
            raise DatabaseMissing(f"database {path} is missing", "missing")
        path.parent.mkdir(parents=True, exist_ok=True)
        # Module storage holds secrets (tokens a user configured): owner-only, created
        # that way so there is no window; SQLite gives its -wal/-shm files the same mode.
        if not path.exists():
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE in set()).
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            created = cls._prepare(conn, path, create=create)
        except BaseException:
            conn.close()
            raise
        return cls(conn, path, created=created)

    @staticmethod
    def _prepare(conn: sqlite3.Connection, path: Path, *, create: bool) -> bool:
        advice = "restore it from a backup, or move it aside to start with an empty one"
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            rows = conn.execute("PRAGMA integrity_check").fetchall()
            if rows != [("ok",)]:
                problems = "; ".join(str(r[0]) for r in rows[:3])
                raise StorageError(f"database {path} is corrupt ({problems}); {advice}")
            # Read before anything is written (switching to WAL writes the header of an
            # empty file): an empty database that must not be created stays untouched.
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            if version == 0 and not create:
                size = path.stat().st_size
                what = "is empty (0 bytes)" if size == 0 else "holds no Vessel data (no schema)"
                raise DatabaseMissing(f"database {path} {what}", "empty")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            if version > SCHEMA_VERSION:
                raise StorageError(
                    f"database {path} has schema version {version}, written by a newer "
                    f"Vessel; this one understands up to {SCHEMA_VERSION}: upgrade Vessel"
                )
            if version == 0:
                # executescript would COMMIT first; the schema and its version are
                # written in one transaction so a crash cannot leave half a schema.
                conn.execute("BEGIN IMMEDIATE")
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                conn.execute("COMMIT")
            for statement in _HISTORY_SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            return bool(version == 0)
        except sqlite3.DatabaseError as exc:
            raise StorageError(
                f"database {path} is corrupt or not a SQLite database ({exc}); {advice}"
            ) from None

    def close(self) -> None:
        """Close the database. Idempotent; later calls raise StorageError."""
        self._closed = True
        self._conn.close()

    def __enter__(self) -> Storage:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @contextmanager
    def _transaction(self, module_id: str) -> Iterator[sqlite3.Connection]:
        """One write transaction. IMMEDIATE takes the write lock up front, so nothing can
        change between what the transaction reads and what it writes."""
        conn = self._conn
        with _translated(module_id):
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def _execute(self, module_id: str, sql: str, params: tuple[object, ...]) -> sqlite3.Cursor:
        with _translated(module_id):
            return self._conn.execute(sql, params)

    # ── module key/value namespace ─────────────────────────────────────────
    def _check_key(self, module_id: str, key: str) -> int:
        if not 1 <= len(key) <= MAX_KEY_LENGTH:
            raise StorageError(
                f"storage of module {module_id!r}: key must be 1 to {MAX_KEY_LENGTH} "
                f"characters, got {len(key)}"
            )
        return _utf8_size(module_id, key, "the key")

    def get(self, module_id: str, key: str) -> str | None:
        """The value stored under ``key``, or None."""
        row = self._execute(
            module_id, "SELECT value FROM kv WHERE module_id = ? AND key = ?", (module_id, key)
        ).fetchone()
        return None if row is None else str(row[0])

    def set(self, module_id: str, key: str, value: str, *, quota_bytes: int) -> None:
        """Store ``value`` under ``key``; durable when this returns.

        The namespace's usage (utf-8 bytes of every key plus value) may not exceed
        ``quota_bytes``; replacing a key counts only the difference. Raises QuotaExceeded
        (nothing is written) or StorageError for a bad key.
        """
        size = self._check_key(module_id, key) + _utf8_size(module_id, value, "the value")
        with self._transaction(module_id) as conn:
            (used,) = conn.execute(
                "SELECT COALESCE(SUM(size), 0) FROM kv WHERE module_id = ?", (module_id,)
            ).fetchone()
            old = conn.execute(
                "SELECT size FROM kv WHERE module_id = ? AND key = ?", (module_id, key)
            ).fetchone()
            after = used - (old[0] if old else 0) + size
            # A write that shrinks the namespace is allowed even over quota (the quota
            # may have been lowered), so a module can always clean up.
            if after > quota_bytes and after > used:
                raise QuotaExceeded(
                    f"storage quota of module {module_id!r} exceeded: {after} of "
                    f"{quota_bytes} bytes used (setting {key!r} needs {size} bytes); delete "
                    "keys or raise limits.storage_quota_kb in its manifest"
                )
            conn.execute(
                "INSERT INTO kv (module_id, key, value, size) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (module_id, key) DO UPDATE SET value = excluded.value, "
                "size = excluded.size",
                (module_id, key, value, size),
            )

    def delete(self, module_id: str, key: str) -> bool:
        """Remove ``key``; True if it existed."""
        cur = self._execute(
            module_id, "DELETE FROM kv WHERE module_id = ? AND key = ?", (module_id, key)
        )
        return cur.rowcount > 0

    def keys(self, module_id: str) -> list[str]:
        """Every key of the namespace, sorted."""
        rows = self._execute(
            module_id, "SELECT key FROM kv WHERE module_id = ? ORDER BY key", (module_id,)
        ).fetchall()
        return [str(r[0]) for r in rows]

    def usage(self, module_id: str) -> int:
        """Bytes the namespace counts against its quota."""
        (used,) = self._execute(
            module_id, "SELECT COALESCE(SUM(size), 0) FROM kv WHERE module_id = ?", (module_id,)
        ).fetchone()
        return int(used)

    def drop_namespace(self, module_id: str) -> None:
        """Delete every key of the module (its state, enabled or not, is kept)."""
        self._execute(module_id, "DELETE FROM kv WHERE module_id = ?", (module_id,))

    # ── module state ───────────────────────────────────────────────────────
    def module_enabled(self, module_id: str) -> bool:
        """Whether the module should run. Modules never seen before are enabled."""
        row = self._execute(
            module_id, "SELECT enabled FROM module_state WHERE module_id = ?", (module_id,)
        ).fetchone()
        return True if row is None else bool(row[0])

    def set_module_enabled(self, module_id: str, enabled: bool) -> None:
        self._execute(
            module_id,
            "INSERT INTO module_state (module_id, enabled) VALUES (?, ?) "
            "ON CONFLICT (module_id) DO UPDATE SET enabled = excluded.enabled",
            (module_id, int(enabled)),
        )

    def forget_module(self, module_id: str) -> None:
        """Delete the module's state (it reads as enabled again). Its namespace is kept:
        uninstalling may keep the user's configuration; ``drop_namespace`` deletes it."""
        self._execute(module_id, "DELETE FROM module_state WHERE module_id = ?", (module_id,))

    # ── module lifecycle history ───────────────────────────────────────────
    def history_append(
        self, module_id: str, timestamp: int, event: str, data: str, *, keep: int, total: int
    ) -> None:
        """Add one entry; then keep the module's newest ``keep`` entries and the newest
        ``total`` of all modules (ids no longer installed age out that way)."""
        with self._transaction(module_id) as conn:
            conn.execute(
                "INSERT INTO module_history (module_id, timestamp, event, data) "
                "VALUES (?, ?, ?, ?)",
                (module_id, timestamp, event, data),
            )
            conn.execute(
                "DELETE FROM module_history WHERE module_id = ? AND seq <= (SELECT seq FROM "
                "module_history WHERE module_id = ? ORDER BY seq DESC LIMIT 1 OFFSET ?)",
                (module_id, module_id, keep),
            )
            conn.execute(
                "DELETE FROM module_history WHERE seq <= (SELECT seq FROM module_history "
                "ORDER BY seq DESC LIMIT 1 OFFSET ?)",
                (total,),
            )

    def history(self, module_id: str) -> list[tuple[int, str, str]]:
        """The module's entries, oldest first: (timestamp, event, data)."""
        rows = self._execute(
            module_id,
            "SELECT timestamp, event, data FROM module_history WHERE module_id = ? ORDER BY seq",
            (module_id,),
        ).fetchall()
        return [(int(r[0]), str(r[1]), str(r[2])) for r in rows]

    def forget_history(self, module_id: str) -> None:
        self._execute(module_id, "DELETE FROM module_history WHERE module_id = ?", (module_id,))

    def entries(self, module_id: str) -> list[tuple[str, int]]:
        """Every key of the namespace with the bytes it counts against the quota, sorted."""
        rows = self._execute(
            module_id, "SELECT key, size FROM kv WHERE module_id = ? ORDER BY key", (module_id,)
        ).fetchall()
        return [(str(r[0]), int(r[1])) for r in rows]
