"""What a module's log line must satisfy, checked on both sides of the process boundary.

A module's lines (its ``log`` host calls, its stdout and stderr, what its process writes
to its own stderr) reach the daemon's memory (the last 1000 lines of each module) and the
daemon's own log (stderr: the journal under systemd). The module process applies these
rules first, so a flooding guest costs the daemon nothing; the daemon applies them again,
with room for lines that arrive bunched up, because it does not trust the module process
(one that escaped wasmtime writes what it likes to its pipes): whatever a module does,
what it can put in the daemon's log is bounded (docs/operations.md, "Reading logs").
"""

from __future__ import annotations

import logging
import re

#: A line's text is kept up to this many bytes of UTF-8; the rest is cut, and the line
#: says how many bytes were cut.
MAX_LINE = 8192
#: Room for that note: a line longer than MAX_LINE + this is cut, so a line the module
#: process cut already passes the daemon's check unchanged.
CUT_NOTE_ROOM = 64
#: A module's lines per second, whatever their level: its process drops the rest, counts
#: them and tells the daemon how many.
MAX_LINES_PER_SECOND = 200
#: The daemon's bucket is this much larger: lines the module process let through may
#: arrive bunched up (a full pipe releases them at once), and a well-behaved process's
#: lines must not be dropped for that. Only a subverted process gets past it.
DAEMON_LINE_SLACK = 2

#: The levels a module may name (any case), and where they go in the daemon's log.
#: ``fatal`` is a level like the others, limited like them: only the module process's own
#: last word (why it ends) is let through over its limit, by the process itself.
LEVELS: dict[str, int] = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "fatal": logging.CRITICAL,
}
#: What any other level becomes: the line is kept, at the level most lines have.
UNKNOWN_LEVEL = "info"
#: Where a line came from: the ``log`` host function, the guest's stdout or stderr, or
#: the module process's last word (why it ends). The daemon's own lines about a module
#: are ``daemon``, which no line from the module process may claim.
SOURCES = frozenset({"host", "stdout", "stderr", "process"})

# A module's line in the daemon's own log is one line: a newline must not start a line
# that looks like the daemon's, nor a terminal escape reach the operator's terminal.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def level_of(level: str) -> str:
    """The level a line is kept at: a known one (lowercased), else UNKNOWN_LEVEL."""
    if level in LEVELS:
        return level
    lowered = level.lower() if len(level) <= 16 else ""
    return lowered if lowered in LEVELS else UNKNOWN_LEVEL


def cut_line(text: str) -> str:
    """``text`` at most MAX_LINE bytes (UTF-8), saying how much was cut; a line already
    cut this way is returned unchanged."""
    # Four bytes per character at most: a short line needs no encoding to be measured.
    if len(text) <= (MAX_LINE + CUT_NOTE_ROOM) // 4:
        return text
    data = text.encode("utf-8", "replace")
    if len(data) <= MAX_LINE + CUT_NOTE_ROOM:
        return text
    return cut_bytes(data)


def cut_bytes(line: bytes) -> str:
    """Bytes written to stdout or stderr as text, at most MAX_LINE of them."""
    if len(line) <= MAX_LINE:
        return line.decode("utf-8", "replace")
    # Cut before a character the limit would split (at a UTF-8 continuation byte, back to
    # its first byte), so it is not shown as a replacement character.
    end = MAX_LINE
    while end > MAX_LINE - 3 and line[end] & 0xC0 == 0x80:
        end -= 1
    return line[:end].decode("utf-8", "replace") + f"... ({len(line) - end} more bytes cut)"


def one_line(text: str) -> str:
    """``text`` with its control characters (newlines, escapes) written as ``\\n``,
    ``\\x1b``: for the daemon's own log, where one module line stays one line."""
    if text.isprintable():
        return text
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


def dropped_note(count: int) -> str:
    """The line that says how many of a module's lines were dropped."""
    lines = "log line" if count == 1 else "log lines"
    return f"{count} {lines} dropped (over {MAX_LINES_PER_SECOND} a second)"
