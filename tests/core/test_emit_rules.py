"""The rules an emitted event must satisfy (both sides of the process boundary)."""

from __future__ import annotations

import json

from vessel._emit_rules import MAX_EVENT_DATA, emit_problem


def test_event_data_is_bounded_at_64_kib_of_utf8() -> None:
    """Data up to 64 KiB of UTF-8 is accepted; one byte more is refused with a message
    that names the size, the limit and what happened to the event. Multi-byte text is
    measured in bytes, not characters."""
    assert MAX_EVENT_DATA == 65536
    at_limit = json.dumps("x" * (MAX_EVENT_DATA - 2))
    assert emit_problem("state", at_limit) is None
    over = json.dumps("x" * (MAX_EVENT_DATA - 1))
    assert emit_problem("state", over) == (
        "event 'state' is too big: its data is 65537 bytes, and an event may carry at most "
        "65536 (64 KiB); event dropped"
    )
    wide = json.dumps("é" * 40_000, ensure_ascii=False)  # 40,002 characters, 80,002 bytes
    assert emit_problem("state", wide) is not None
    assert "80002 bytes" in (emit_problem("state", wide) or "")
