"""Sans-IO length-prefixed framing: a 4-byte big-endian length, then the payload.

No I/O happens here, so the same code serves pipes, sockets and in-memory streams, and the
split-anywhere property is tested without any event loop.
"""

from __future__ import annotations

import struct

from ._errors import FrameTooLarge

__all__ = ["HEADER_SIZE", "MAX_FRAME_SIZE", "FrameDecoder", "encode_frame"]

MAX_FRAME_SIZE = 16 * 1024 * 1024
"""Default upper bound of one frame's payload, in bytes."""

_HEADER = struct.Struct(">I")
HEADER_SIZE = _HEADER.size


def encode_frame(payload: bytes, *, max_frame_size: int = MAX_FRAME_SIZE) -> bytes:
    """Return ``payload`` prefixed with its length.

    Raises :class:`FrameTooLarge` if ``len(payload) > max_frame_size``: the receiving
    decoder would reject it and tear the connection down, so fail early instead.
    """
    if len(payload) > max_frame_size:
        raise FrameTooLarge(f"frame of {len(payload)} bytes exceeds the limit of {max_frame_size}")
    return _HEADER.pack(len(payload)) + payload


def pack_header_into(buffer: bytearray, max_frame_size: int = MAX_FRAME_SIZE) -> None:
    """Write the length header into ``buffer[:HEADER_SIZE]`` for the payload after it.

    This lets an encoder serialise straight into a buffer that already reserves room for
    the header (``msgspec``'s ``encode_into(msg, buf, HEADER_SIZE)``), avoiding a copy.
    """
    size = len(buffer) - HEADER_SIZE
    if size > max_frame_size:
        raise FrameTooLarge(f"frame of {size} bytes exceeds the limit of {max_frame_size}")
    _HEADER.pack_into(buffer, 0, size)


class FrameDecoder:
    """Turn a byte stream cut at arbitrary points back into whole frames."""

    __slots__ = ("_buffer", "_max_frame_size")

    def __init__(self, max_frame_size: int = MAX_FRAME_SIZE) -> None:
        if max_frame_size < 0:
            raise ValueError("max_frame_size must be >= 0")
        self._buffer = bytearray()
        self._max_frame_size = max_frame_size

    @property
    def buffered(self) -> int:
        """Bytes received that do not yet form a complete frame."""
        return len(self._buffer)

    def feed(self, data: bytes | bytearray) -> list[bytes]:
        """Add ``data`` and return every frame it completes, in order.

        Raises :class:`FrameTooLarge` as soon as a header announces more than
        ``max_frame_size`` bytes, before buffering the body: a hostile or broken peer must
        not make us allocate whatever it claims. The decoder is unusable afterwards.
        """
        buffer = self._buffer
        buffer += data
        frames: list[bytes] = []
        pos = 0
        end = len(buffer)
        while end - pos >= HEADER_SIZE:
            (size,) = _HEADER.unpack_from(buffer, pos)
            if size > self._max_frame_size:
                raise FrameTooLarge(
                    f"peer announced a frame of {size} bytes, "
                    f"over the limit of {self._max_frame_size}"
                )
            start = pos + HEADER_SIZE
            if end - start < size:
                break
            frames.append(bytes(buffer[start : start + size]))
            pos = start + size
        if pos:
            del buffer[:pos]
        return frames
