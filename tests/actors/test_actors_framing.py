"""Sans-IO layers: length-prefixed framing, the wire messages, output line splitting."""

from __future__ import annotations

import struct

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors import (
    MAX_FRAME_SIZE,
    ErrorReply,
    FrameDecoder,
    FrameTooLarge,
    Notify,
    Ping,
    Pong,
    ProtocolError,
    Reply,
    Request,
    encode_frame,
)
from actors._framing import HEADER_SIZE
from actors._lines import LineSplitter
from actors._wire import decode_message, encode_body, encode_error, encode_message

payloads = st.lists(st.binary(max_size=300), max_size=20)


def test_round_trip_in_one_chunk() -> None:
    """Frames encoded back to back decode to the same payloads, in order, empty included."""
    frames = [b"hello", b"", b"\x00" * 1000]
    decoder = FrameDecoder()
    assert decoder.feed(b"".join(encode_frame(f) for f in frames)) == frames
    assert decoder.buffered == 0


def test_header_is_four_byte_big_endian_length() -> None:
    """The wire format is a 4-byte big-endian length prefix (the other end may not be us)."""
    assert encode_frame(b"abc") == b"\x00\x00\x00\x03abc"


@given(payloads, st.data())
def test_split_anywhere(frames: list[bytes], data: st.DataObject) -> None:
    """However the byte stream is cut into reads, the decoder yields exactly the frames."""
    stream = b"".join(encode_frame(f) for f in frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=30)))
    decoder = FrameDecoder()
    decoded: list[bytes] = []
    start = 0
    for cut in [*cuts, len(stream)]:
        decoded += decoder.feed(stream[start:cut])
        start = cut
    assert decoded == frames
    assert decoder.buffered == 0


def test_too_large_header_rejected_before_body_arrives() -> None:
    """A header announcing more than max_frame_size fails at once, without buffering."""
    decoder = FrameDecoder(max_frame_size=10)
    with pytest.raises(FrameTooLarge):
        decoder.feed(struct.pack(">I", 11))


def test_frame_of_exactly_max_size_is_accepted() -> None:
    """The limit is inclusive: a frame of max_frame_size bytes is valid."""
    decoder = FrameDecoder(max_frame_size=10)
    assert decoder.feed(encode_frame(b"x" * 10, max_frame_size=10)) == [b"x" * 10]


def test_encode_refuses_frames_the_peer_would_reject() -> None:
    """The sender fails early instead of sending a frame the receiver must refuse."""
    with pytest.raises(FrameTooLarge):
        encode_frame(b"x" * 11, max_frame_size=10)
    assert MAX_FRAME_SIZE == 16 * 1024 * 1024


@pytest.mark.parametrize(
    "message",
    [
        Request(1, "echo", encode_body({"a": [1, 2]})),
        Reply(2, encode_body("ok")),
        ErrorReply(3, "ValueError", "bad", "module-x"),
        Notify("event", encode_body(None)),
        Ping(4),
        Pong(4),
    ],
)
def test_wire_round_trip(message: Request | Reply | ErrorReply | Notify | Ping | Pong) -> None:
    """Every message type survives encode → frame → decode with its tag and fields."""
    (payload,) = FrameDecoder().feed(bytes(encode_message(message)))
    decoded = decode_message(payload)
    assert type(decoded) is type(message)
    for field in message.__struct_fields__:
        left, right = getattr(decoded, field), getattr(message, field)
        if isinstance(left, msgspec.Raw):
            assert bytes(left) == bytes(right)
        else:
            assert left == right


def test_bodies_stay_raw_for_the_layer_above() -> None:
    """A body is decoded by the application into its own type, not by the wire layer."""

    class Point(msgspec.Struct):
        x: int
        y: int

    (payload,) = FrameDecoder().feed(
        bytes(encode_message(Request(1, "m", encode_body(Point(1, 2)))))
    )
    message = decode_message(payload)
    assert isinstance(message, Request)
    assert msgspec.msgpack.decode(message.body, type=Point) == Point(1, 2)


@pytest.mark.parametrize(
    "payload",
    [
        b"\xc1",  # never used in msgpack
        msgspec.msgpack.encode(["nope", 1]),
        msgspec.msgpack.encode(["req", "not-an-int", "m", None]),
        msgspec.msgpack.encode(["ping", 1, "extra"]),
    ],
)
def test_garbage_is_a_protocol_error(payload: bytes) -> None:
    """Anything that is not exactly one of our messages raises ProtocolError."""
    with pytest.raises(ProtocolError):
        decode_message(payload)


@given(
    st.lists(
        st.text(alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\n\r")),
        max_size=10,
    ),
    st.data(),
)
def test_lines_split_anywhere(lines: list[str], data: st.DataObject) -> None:
    """Output lines come out whole and in order however the pipe reads cut them."""
    stream = "".join(line + "\n" for line in lines).encode()
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    splitter = LineSplitter(max_line=1 << 20)
    out: list[str] = []
    start = 0
    for cut in [*cuts, len(stream)]:
        out += splitter.feed(stream[start:cut])
        start = cut
    assert out + splitter.flush() == lines


def test_long_lines_are_truncated_and_the_rest_dropped() -> None:
    """A line over max_line bytes is cut; the overflow never leaks into the next line."""
    splitter = LineSplitter(max_line=4)
    out = splitter.feed(b"abcdefgh")
    out += splitter.feed(b"ij\nok\nxyz")
    assert out == ["abcd", "ok"]
    assert splitter.flush() == ["xyz"]
    assert splitter.feed(b"\xff\n") == ["\ufffd"]


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no")


def _error(frame: bytearray) -> ErrorReply:
    message = decode_message(bytes(frame[HEADER_SIZE:]))
    assert isinstance(message, ErrorReply)
    return message


def test_an_error_reply_always_gets_the_exception_across() -> None:
    """Whatever the exception, the caller gets an answer naming at least its type."""
    plain = _error(encode_error(7, ValueError("bad value"), "actor"))
    assert (plain.id, plain.type, plain.message, plain.actor) == (7, "ValueError", "bad value",
                                                                  "actor")  # fmt: skip
    unprintable = _error(encode_error(8, _Unprintable(), "actor"))
    assert unprintable.type == "_Unprintable"
    assert "could not be rendered" in unprintable.message
    huge = _error(encode_error(9, ValueError("x" * 1_000_000), "actor"))
    assert huge.message == "x" * 16 * 1024  # a runaway message is cut, not fatal
    tight = _error(encode_error(10, ValueError("x" * 1000), "actor", max_frame_size=200))
    assert (tight.type, tight.message) == ("ValueError", "")
