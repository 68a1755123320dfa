"""The rules a module's log line must satisfy (``vessel._log_rules``), on their own: the
adversarial suite drives them end to end (``test_log_flood_at_every_level``)."""

from __future__ import annotations

import pytest

from vessel._log_rules import (
    CUT_NOTE_ROOM,
    LEVELS,
    MAX_LINE,
    cut_bytes,
    cut_line,
    dropped_note,
    level_of,
    one_line,
)


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("fatal", "fatal"),
        ("FATAL", "fatal"),
        ("Warn", "warn"),
        ("error", "error"),
        ("notice", "info"),
        ("", "info"),
        ("x" * 100_000, "info"),
        ("error\n2025-01-01 CRITICAL vessel: forged", "info"),
    ],
)
def test_a_level_is_a_known_one_or_info(given: str, kept: str) -> None:
    assert level_of(given) == kept
    assert kept in LEVELS


@pytest.mark.parametrize("char", ["a", "é", "€", "😀"])
def test_a_line_is_cut_at_8_kib_once(char: str) -> None:
    """Cut at MAX_LINE bytes of UTF-8 (never inside a character), saying how much was
    cut; a line cut already, by the module process, passes the daemon's check as it is."""
    size = len(char.encode())
    text = char * (3 * MAX_LINE // size)
    cut = cut_line(text)
    kept, note = cut.split("... (")
    assert set(kept) == {char}
    assert len(kept.encode()) > MAX_LINE - size
    assert len(kept.encode()) <= MAX_LINE
    assert note == f"{len(text.encode()) - len(kept.encode())} more bytes cut)"
    assert len(cut.encode()) <= MAX_LINE + CUT_NOTE_ROOM
    assert cut_line(cut) == cut
    assert cut_bytes(text.encode()).startswith(kept)
    short = char * (MAX_LINE // size)
    assert cut_line(short) == short


def test_one_line_escapes_control_characters_only() -> None:
    assert one_line("plain, with a tab\tand é") == "plain, with a tab\tand é"
    assert one_line("two\nlines\r\x1b[31mred\x7f") == "two\\nlines\\r\\x1b[31mred\\x7f"


def test_dropped_note() -> None:
    assert dropped_note(1) == "1 log line dropped (over 200 a second)"
    assert dropped_note(1234) == "1234 log lines dropped (over 200 a second)"
