"""The lifecycle history's bounds and shape, in a real SQLite database (vessel/_history.py)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from vessel._history import KEEP_PER_MODULE, MAX_REASON, History
from vessel._storage import SCHEMA_VERSION, Storage


def test_history_keeps_the_newest_entries_of_each_module_and_of_all(tmp_path: Path) -> None:
    """Per module: the newest KEEP_PER_MODULE, oldest first; in total: the newest
    `total` of all modules, so ids no longer installed age out."""
    with Storage.open(tmp_path / "vessel.db") as storage:
        history = History(storage)
        for i in range(KEEP_PER_MODULE + 20):
            history.record("a", "crashed", 1000 + i, {"module": "a", "pid": i, "reason": None})
        entries = history.entries("a")
        assert len(entries) == KEEP_PER_MODULE
        assert entries[0] == {"timestamp": 1020, "event": "crashed", "pid": 20}
        assert entries[-1]["pid"] == KEEP_PER_MODULE + 19

        for i in range(5):
            storage.history_append("b", i, "started", "{}", keep=10, total=8)
        assert len(storage.history("b")) == 5
        assert len(storage.history("a")) == 3  # the 8 newest of all: 5 of b, 3 of a
        assert storage.history("a")[-1][0] == 1000 + KEEP_PER_MODULE + 19


def test_history_cuts_long_reasons_ignores_other_events_and_is_forgotten(
    tmp_path: Path,
) -> None:
    with Storage.open(tmp_path / "vessel.db") as storage:
        history = History(storage)
        history.record("a", "config_changed", 1, {"key": "token"})
        history.record("a", "failed", 2, {"reason": "x" * (MAX_REASON + 10), "restarts": 5})
        (entry,) = history.entries("a")
        assert entry["reason"] == "x" * MAX_REASON + "... (10 more cut)"
        assert entry["restarts"] == 5
        history.forget("a")
        assert history.entries("a") == []


def test_history_table_is_added_to_a_database_of_an_earlier_vessel(tmp_path: Path) -> None:
    """A database written before the history existed (schema version 1, no table) gets
    the table at its next open, with the schema version unchanged, so an earlier Vessel
    still opens it."""
    path = tmp_path / "vessel.db"
    with Storage.open(path) as storage:
        storage.set("m", "k", "v", quota_bytes=1 << 20)
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE module_history")
    conn.commit()
    conn.close()
    with Storage.open(path, create=False) as storage:
        History(storage).record("m", "started", 5, {"pid": 7})
        assert History(storage).entries("m") == [{"timestamp": 5, "event": "started", "pid": 7}]
        assert storage.get("m", "k") == "v"
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    conn.close()
