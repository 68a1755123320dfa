"""The daemon's SQLite database: namespaces, quotas, durability, corruption."""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from vessel._errors import DatabaseMissing, QuotaExceeded, StorageError
from vessel._storage import MAX_KEY_LENGTH, SCHEMA_VERSION, Storage

REPO = Path(__file__).resolve().parents[2]
BIG = 1 << 20


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "vessel.db"


@pytest.fixture
def db(db_path: Path) -> Iterator[Storage]:
    with Storage.open(db_path) as storage:
        yield storage


def test_values_round_trip_and_survive_reopen(db_path: Path) -> None:
    """What is set is what is read back, also after the daemon restarts."""
    with Storage.open(db_path) as s:
        s.set("m", "token", "abc ✓", quota_bytes=BIG)
        assert s.get("m", "token") == "abc ✓"
        s.set("m", "token", "def", quota_bytes=BIG)
    with Storage.open(db_path) as s:
        assert s.get("m", "token") == "def"
        assert s.get("m", "missing") is None


def test_namespaces_are_isolated(db: Storage) -> None:
    """A module never sees, counts or deletes another module's keys."""
    db.set("a", "k", "from a", quota_bytes=BIG)
    db.set("b", "k", "from b", quota_bytes=BIG)
    assert db.get("a", "k") == "from a"
    assert db.keys("b") == ["k"]
    assert db.delete("a", "k") is True
    assert db.get("b", "k") == "from b"
    assert db.usage("a") == 0
    db.drop_namespace("b")
    assert db.keys("b") == []


def test_delete_reports_whether_the_key_existed(db: Storage) -> None:
    """delete() is True once, then False."""
    db.set("m", "k", "v", quota_bytes=BIG)
    assert db.delete("m", "k") is True
    assert db.delete("m", "k") is False


def test_keys_are_sorted_and_usage_counts_utf8_bytes(db: Storage) -> None:
    """Usage is the utf-8 size of every key plus value, as the quota counts it."""
    db.set("m", "b", "ü", quota_bytes=BIG)  # 1 + 2 bytes
    db.set("m", "a", "xyz", quota_bytes=BIG)  # 1 + 3 bytes
    assert db.keys("m") == ["a", "b"]
    assert db.usage("m") == 7


def test_quota_refuses_a_write_that_would_exceed_it(db: Storage) -> None:
    """A write past the quota raises QuotaExceeded, says by how much, and writes nothing."""
    db.set("m", "k1", "x" * 8, quota_bytes=20)  # 10 bytes
    with pytest.raises(QuotaExceeded) as info:
        db.set("m", "k2", "y" * 9, quota_bytes=20)  # would be 21
    assert str(info.value) == (
        "storage quota of module 'm' exceeded: 21 of 20 bytes used (setting 'k2' needs "
        "11 bytes); delete keys or raise limits.storage_quota_kb in its manifest"
    )
    assert db.get("m", "k2") is None
    assert db.usage("m") == 10
    db.set("m", "k2", "y" * 8, quota_bytes=20)  # exactly 20 is allowed
    assert db.usage("m") == 20


def test_replacing_a_key_counts_only_the_difference(db: Storage) -> None:
    """Overwriting a value of the same size at a full quota succeeds."""
    db.set("m", "k", "x" * 19, quota_bytes=20)  # 20 bytes: full
    db.set("m", "k", "y" * 19, quota_bytes=20)
    assert db.get("m", "k") == "y" * 19
    with pytest.raises(QuotaExceeded):
        db.set("m", "k", "z" * 20, quota_bytes=20)
    assert db.get("m", "k") == "y" * 19


def test_shrinking_write_is_allowed_over_a_lowered_quota(db: Storage) -> None:
    """After the quota is lowered below usage, a module can still make room."""
    db.set("m", "k", "x" * 100, quota_bytes=1000)
    db.set("m", "k", "x" * 50, quota_bytes=10)
    assert db.usage("m") == 51
    with pytest.raises(QuotaExceeded):
        db.set("m", "k2", "", quota_bytes=10)


def test_a_value_larger_than_the_quota_is_refused(db: Storage) -> None:
    """No single value may exceed the whole quota."""
    with pytest.raises(QuotaExceeded, match="exceeded: 1025 of 1024 bytes used"):
        db.set("m", "k", "x" * 1024, quota_bytes=1024)


@pytest.mark.parametrize("key", ["", "k" * (MAX_KEY_LENGTH + 1)])
def test_key_length_is_checked(db: Storage, key: str) -> None:
    """Keys are 1 to 256 characters; the error says so and how long this one was."""
    with pytest.raises(StorageError) as info:
        db.set("m", key, "v", quota_bytes=BIG)
    assert str(info.value) == (
        f"storage of module 'm': key must be 1 to {MAX_KEY_LENGTH} characters, got {len(key)}"
    )
    db.set("m", "k" * MAX_KEY_LENGTH, "v", quota_bytes=BIG)


def test_text_that_is_not_unicode_is_refused(db: Storage) -> None:
    """A lone surrogate (possible from JSON "\\ud800") is a clear StorageError."""
    with pytest.raises(StorageError, match="the value is not valid Unicode text"):
        db.set("m", "k", "\ud800", quota_bytes=BIG)
    with pytest.raises(StorageError, match="the key is not valid Unicode text"):
        db.set("m", "\ud800", "v", quota_bytes=BIG)


def test_module_state_defaults_to_enabled_and_persists(db_path: Path) -> None:
    """A new module runs; disabling it survives restarts; forgetting it resets its state
    but keeps its storage (an uninstall may keep the user's configuration)."""
    with Storage.open(db_path) as s:
        assert s.module_enabled("m") is True
        s.set_module_enabled("m", False)
        s.set("m", "k", "v", quota_bytes=BIG)
    with Storage.open(db_path) as s:
        assert s.module_enabled("m") is False
        assert s.module_enabled("other") is True
        s.set_module_enabled("m", True)
        assert s.module_enabled("m") is True
        s.set_module_enabled("m", False)
        s.forget_module("m")
        assert s.module_enabled("m") is True
        assert s.keys("m") == ["k"]


def test_drop_namespace_keeps_module_state(db: Storage) -> None:
    """Resetting a module's storage does not re-enable a disabled module."""
    db.set_module_enabled("m", False)
    db.set("m", "k", "v", quota_bytes=BIG)
    db.drop_namespace("m")
    assert db.keys("m") == []
    assert db.module_enabled("m") is False


def test_database_is_in_wal_mode_with_a_schema_version(db_path: Path) -> None:
    """The file is WAL (readers never block the writer) and records its schema version."""
    Storage.open(db_path).close()
    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    finally:
        conn.close()


def test_garbage_file_is_refused_with_advice(db_path: Path) -> None:
    """A file that is not a database gives a StorageError naming it and what to do."""
    db_path.parent.mkdir(parents=True)
    db_path.write_bytes(b"this is not sqlite" * 500)
    with pytest.raises(StorageError) as info:
        Storage.open(db_path)
    msg = str(info.value)
    assert str(db_path) in msg
    assert "not a SQLite database" in msg
    assert "restore it from a backup" in msg


def test_corrupted_pages_are_detected_at_open(db_path: Path) -> None:
    """Damage inside a valid database file is found by the integrity check at open."""
    with Storage.open(db_path) as s:
        for i in range(300):
            s.set("m", f"key-{i:04}", "v" * 200, quota_bytes=BIG)
    conn = sqlite3.connect(db_path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    (page_size,) = conn.execute("PRAGMA page_size").fetchone()
    conn.close()
    data = bytearray(db_path.read_bytes())
    pages = len(data) // page_size
    assert pages > 12
    # Pages from the middle of the file: the kv table's b-tree (the other tables are
    # small, their root pages come first; page 0 here is the header page).
    for page in (pages // 2 - 1, pages // 2, pages // 2 + 1):
        start = page * page_size + 8
        data[start : start + 64] = b"\xa5" * 64
    db_path.write_bytes(bytes(data))
    with pytest.raises(StorageError, match="corrupt"):
        Storage.open(db_path)


def test_newer_schema_is_refused(db_path: Path) -> None:
    """A database written by a newer Vessel is not silently misread."""
    Storage.open(db_path).close()
    conn = sqlite3.connect(db_path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StorageError, match="written by a newer Vessel"):
        Storage.open(db_path)


def test_use_after_close_is_a_storage_error(db_path: Path) -> None:
    """Touching a closed database raises StorageError, not a raw sqlite3 error."""
    s = Storage.open(db_path)
    s.close()
    s.close()
    with pytest.raises(StorageError, match="storage of module 'm': database error"):
        s.get("m", "k")
    with pytest.raises(StorageError):
        s.set("m", "k", "v", quota_bytes=BIG)
    assert "closed" in repr(s)


async def test_acknowledged_write_survives_sigkill(db_path: Path) -> None:
    """Once set() returns, the value is on disk: a daemon killed right after keeps it."""
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        from pathlib import Path
        sys.path.insert(0, {str(REPO)!r})
        from vessel._storage import Storage
        s = Storage.open(Path({str(db_path)!r}))
        s.set("m", "k", "survived", quota_bytes=100)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    with trio.fail_after(30):
        proc = await trio.run_process([sys.executable, "-c", script], check=False)
    assert proc.returncode == -signal.SIGKILL
    with Storage.open(db_path) as s:
        assert s.get("m", "k") == "survived"


def test_storage_repr_names_the_file(db_path: Path) -> None:
    """Logs and failing tests show which database and whether it is open."""
    with Storage.open(db_path) as s:
        assert repr(s) == f"<Storage {str(db_path)!r} open>"
    assert os.path.exists(db_path)


def test_new_database_is_owner_only(tmp_path: Path) -> None:
    """The database holds module secrets: a new one is created readable by its owner only."""
    path = tmp_path / "vessel.db"
    with Storage.open(path) as storage:
        storage.set("m", "token", "s3cret", quota_bytes=1024)
    assert path.stat().st_mode & 0o777 == 0o600


def test_a_database_that_must_exist_is_neither_created_nor_written(db_path: Path) -> None:
    """``create=False`` (a data dir whose modules keep their state in it): a missing file
    or one with no schema is DatabaseMissing, and the file is left as it was; a database
    with Vessel's schema opens, and ``created`` tells a new one from an existing one."""
    with pytest.raises(DatabaseMissing, match="is missing") as missing:
        Storage.open(db_path, create=False)
    assert missing.value.reason == "missing"
    assert not db_path.exists()
    db_path.parent.mkdir(parents=True)
    db_path.write_bytes(b"")
    with pytest.raises(DatabaseMissing, match=r"is empty \(0 bytes\)") as empty:
        Storage.open(db_path, create=False)
    assert empty.value.reason == "empty"
    assert db_path.stat().st_size == 0
    with Storage.open(db_path) as s:
        assert s.created
        s.set_module_enabled("m", False)
    with Storage.open(db_path, create=False) as s:
        assert not s.created
        assert s.module_enabled("m") is False
