"""The message dialog spoken over a channel, as msgpack-encoded msgspec Structs.

Every frame carries exactly one message of the tagged union :data:`Message`. Structs are
``array_like`` (``["req", 7, "echo", <body>]``): compact and fast, and still evolvable by
appending new fields *with defaults* at the end — never reorder fields or change a
field's type. ``forbid_unknown_fields`` makes a mismatched peer fail loudly.

Bodies are application payloads encoded separately and kept as :class:`msgspec.Raw`, so
this layer never needs to know the application's types: the layer above decodes them with
``msgspec.msgpack.decode(raw, type=T)``.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import msgspec

from ._errors import FrameTooLarge, ProtocolError
from ._framing import HEADER_SIZE, MAX_FRAME_SIZE, pack_header_into

__all__ = [
    "ErrorReply",
    "Message",
    "Notify",
    "Ping",
    "Pong",
    "Reply",
    "Request",
    "decode_message",
    "encode_body",
    "encode_error",
    "encode_message",
]

# An error message travels inside one frame; keep a runaway str(exc) from breaking it.
_MAX_ERROR_MESSAGE = 16 * 1024


class _Base(
    msgspec.Struct,
    array_like=True,
    frozen=True,
    forbid_unknown_fields=True,
    gc=False,
    tag_field="t",
):
    pass


class Request(_Base, tag="req", frozen=True):
    """Call ``method`` on the peer; answered by exactly one Reply or ErrorReply."""

    id: int
    method: str
    body: msgspec.Raw


class Reply(_Base, tag="rep", frozen=True):
    """The successful result of the Request with the same ``id``."""

    id: int
    body: msgspec.Raw


class ErrorReply(_Base, tag="err", frozen=True):
    """The peer's handler for Request ``id`` raised ``type``: ``message`` in ``actor``."""

    id: int
    type: str
    message: str
    actor: str


class Notify(_Base, tag="not", frozen=True):
    """A one-way message: no reply, handled in order."""

    method: str
    body: msgspec.Raw


class Ping(_Base, tag="ping", frozen=True):
    """Liveness probe, answered by the peer's reader task with a Pong of the same seq."""

    seq: int


class Pong(_Base, tag="pong", frozen=True):
    """Answer to the Ping with the same ``seq``."""

    seq: int


Message: TypeAlias = Request | Reply | ErrorReply | Notify | Ping | Pong

# One encoder and one decoder for the whole process: building them is the expensive part.
_ENCODER = msgspec.msgpack.Encoder()
_DECODER: msgspec.msgpack.Decoder[Message] = msgspec.msgpack.Decoder(Message)


def encode_body(body: Any) -> msgspec.Raw:
    """Encode an application payload; a :class:`msgspec.Raw` passes through untouched."""
    if isinstance(body, msgspec.Raw):
        return body
    return msgspec.Raw(_ENCODER.encode(body))


def encode_message(message: Message, max_frame_size: int = MAX_FRAME_SIZE) -> bytearray:
    """Encode ``message`` as one complete frame (length header included).

    Encodes in place after a reserved header, so the payload is never copied. Raises
    :class:`FrameTooLarge` if the payload exceeds ``max_frame_size``.
    """
    buffer = bytearray(HEADER_SIZE)
    _ENCODER.encode_into(message, buffer, HEADER_SIZE)
    pack_header_into(buffer, max_frame_size)
    return buffer


def encode_error(
    request_id: int, exc: BaseException, actor: str, max_frame_size: int = MAX_FRAME_SIZE
) -> bytearray:
    """The frame answering request ``request_id`` with ``exc`` (a RemoteError over there).

    Never raises: an exception whose message cannot be rendered, or does not fit, still
    gets its type across — the caller must get an answer.
    """
    try:
        message = str(exc)[:_MAX_ERROR_MESSAGE]
    except Exception:
        message = "(the exception's message could not be rendered)"
    try:
        return encode_message(
            ErrorReply(request_id, type(exc).__name__, message, actor), max_frame_size
        )
    except FrameTooLarge:
        return encode_message(ErrorReply(request_id, type(exc).__name__, "", actor))


def decode_message(payload: bytes) -> Message:
    """Decode one frame's payload; raises :class:`ProtocolError` if it is not a Message."""
    try:
        return _DECODER.decode(payload)
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"undecodable frame from peer: {exc}") from exc
