"""Sans-IO splitting of a child's output into bounded text lines."""

from __future__ import annotations

__all__ = ["LineSplitter"]


class LineSplitter:
    """Split a byte stream into lines of at most ``max_line`` bytes.

    A longer line is cut at ``max_line`` bytes and the rest of it, up to its newline, is
    discarded: a child printing megabytes without a newline must not make the parent
    buffer them. Bytes are decoded as UTF-8 with replacement, so a truncated or garbled
    character never raises.
    """

    __slots__ = ("_buffer", "_discarding", "_max_line", "_scanned")

    def __init__(self, max_line: int) -> None:
        if max_line < 1:
            raise ValueError("max_line must be >= 1")
        self._max_line = max_line
        self._buffer = bytearray()
        self._scanned = 0
        self._discarding = False

    def feed(self, data: bytes | bytearray) -> list[str]:
        """Add ``data``; return the lines it completes, without their line endings."""
        lines: list[str] = []
        buffer = self._buffer
        buffer += data
        start = 0
        while True:
            newline = buffer.find(b"\n", max(start, self._scanned))
            if newline < 0:
                break
            if self._discarding:
                self._discarding = False
            else:
                lines.append(self._decode(buffer[start:newline]))
            start = newline + 1
            self._scanned = start
        del buffer[:start]
        self._scanned = len(buffer)
        if len(buffer) >= self._max_line:
            if not self._discarding:
                lines.append(self._decode(buffer))
                self._discarding = True
            buffer.clear()
            self._scanned = 0
        return lines

    def flush(self) -> list[str]:
        """Return the unterminated last line, if any (call at end of stream)."""
        rest = bytes(self._buffer)
        self._buffer.clear()
        self._scanned = 0
        if not rest or self._discarding:
            self._discarding = False
            return []
        return [self._decode(rest)]

    def _decode(self, line: bytes | bytearray) -> str:
        line = line[: self._max_line]
        if line.endswith(b"\r"):
            line = line[:-1]
        return line.decode("utf-8", "replace")
