"""WebSocket protocol v1: the messages on ``/ws`` and their JSON encoding (sans-IO).

Client messages are a msgspec tagged union on ``"type"``, decoded by one reused decoder
with unknown fields forbidden, so a typo is an error that names the field. ``decode``
turns every way a frame can be wrong into an ``InvalidMessage`` whose text names the
problem and which carries the frame's ``request_id`` when it had a usable one, so the
client's pending request can be answered instead of left hanging.

Server messages are encoded here too. An event's ``data`` is JSON text already checked by
the bus; it is spliced into the envelope unparsed (``msgspec.Raw``), and each event is
encoded once however many clients receive it. See docs/protocol.md for the reference.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Final

import msgspec
from msgspec import Meta, Raw, Struct

from .._events import Event
from .._json_check import MAX_JSON_DEPTH, depth_problem, json_problem
from .._manifest import HOST_API_VERSION

PROTOCOL_VERSION: Final = 1

#: Largest client frame the protocol decodes; a bigger one is answered with an error and
#: the connection stays open. (Hypercorn closes the connection with 1009 above
#: ``_serve.TRANSPORT_MAX_MESSAGE``, 4 MiB, before the frame ever reaches us.)
PROTOCOL_MAX_MESSAGE: Final = 1024 * 1024

#: Stable error codes carried by ``response.data.code`` and ``error.code``.
INVALID_MESSAGE: Final = "invalid_message"
UNAUTHORIZED: Final = "unauthorized"
UNKNOWN_MODULE: Final = "unknown_module"
UNKNOWN_COMMAND: Final = "unknown_command"
MODULE_UNAVAILABLE: Final = "module_unavailable"
TIMEOUT: Final = "timeout"
MODULE_ERROR: Final = "module_error"
TOO_MANY_REQUESTS: Final = "too_many_requests"
TOO_MANY_SUBSCRIPTIONS: Final = "too_many_subscriptions"
INTERNAL_ERROR: Final = "internal_error"

RequestId = Annotated[str, Meta(min_length=1, max_length=128)]
#: Module ids and command/event names (globs, for subscriptions).
Name = Annotated[str, Meta(min_length=1, max_length=256)]
U32 = Annotated[int, Meta(ge=0, le=2**32 - 1)]


# -- client -> server ---------------------------------------------------------------


class _ClientMessage(Struct, tag_field="type", forbid_unknown_fields=True):
    """Base of the messages a client sends (untrusted: unknown fields are errors)."""


class Auth(_ClientMessage, tag="auth"):
    """Browser authentication: the first message when no Authorization header was sent."""

    token: str


class Call(_ClientMessage, tag="call"):
    """Run command ``name`` of ``module``; answered by exactly one ``Response``."""

    request_id: RequestId
    module: Name
    name: Name
    version: U32 = 1
    #: Any JSON value, kept as text: it is handed to the module without re-encoding.
    params: Raw = Raw(b"{}")


class Subscribe(_ClientMessage, tag="subscribe"):
    """Receive events whose ``module.name`` matches these globs (retained state first)."""

    module: Name
    name: Name
    request_id: RequestId | None = None


class Unsubscribe(_ClientMessage, tag="unsubscribe"):
    """Stop receiving events for a pattern given to ``Subscribe`` (unknown: no-op)."""

    module: Name
    name: Name
    request_id: RequestId | None = None


ClientMessage = Auth | Call | Subscribe | Unsubscribe

CLIENT_TYPES: Final = ("auth", "call", "subscribe", "unsubscribe")

_decoder: Final[msgspec.json.Decoder[ClientMessage]] = msgspec.json.Decoder(ClientMessage)


class _Probe(Struct):
    """What an invalid frame is looked at for: its type and request_id, if any."""

    type: Any = None
    request_id: Any = None


_probe_decoder: Final = msgspec.json.Decoder(_Probe)


_MAX_ERROR_TEXT: Final = 500


class InvalidMessage(Exception):
    """A client frame that is not a valid protocol message.

    ``str(exc)`` names the problem; ``request_id`` is the frame's own when it had a string
    one (answer with a failed ``response`` for it), else None (answer with an ``error``).
    """

    def __init__(self, message: str, request_id: str | None = None) -> None:
        if len(message) > _MAX_ERROR_TEXT:
            # It quotes client input (a field name, a type): keep replies and logs small.
            message = message[:_MAX_ERROR_TEXT] + "…"
        super().__init__(message)
        self.message = message
        self.request_id = request_id


def decode(frame: str | bytes | None) -> ClientMessage:
    """The message in one WebSocket frame (``bytes``/``None``: a binary frame).

    Raises InvalidMessage naming the problem.
    """
    if not isinstance(frame, str):
        raise InvalidMessage("binary frames are not supported: send JSON text frames")
    # Measured exactly only when it could be over: a character is at most 4 UTF-8 bytes.
    if len(frame) * 4 > PROTOCOL_MAX_MESSAGE:
        size = len(frame.encode(errors="surrogatepass"))
        if size > PROTOCOL_MAX_MESSAGE:
            raise InvalidMessage(
                f"message of {size} bytes exceeds the {PROTOCOL_MAX_MESSAGE}-byte limit"
            )
    if problem := depth_problem(frame):
        raise InvalidMessage(f"invalid JSON: {problem}")
    try:
        return _decoder.decode(frame)
    except RecursionError:  # pragma: no cover - the depth check refuses such frames first
        raise InvalidMessage(f"invalid JSON: nested more than {MAX_JSON_DEPTH} levels") from None
    except msgspec.ValidationError as exc:
        raise InvalidMessage(_describe(exc, frame), _request_id(frame)) from None
    except msgspec.DecodeError as exc:
        raise InvalidMessage(f"invalid JSON: {exc}") from None
    except UnicodeEncodeError:
        # Only a str built in-process can hold lone surrogates; a text frame cannot.
        raise InvalidMessage("invalid JSON: the text is not valid Unicode") from None


def _request_id(frame: str) -> str | None:
    """The frame's request_id if it is a string (only called on the error path)."""
    try:
        probe = _probe_decoder.decode(frame)
    except msgspec.MsgspecError:
        return None
    return probe.request_id if isinstance(probe.request_id, str) else None


_MISSING = re.compile(r"^Object missing required field `(?P<field>[^`]+)`(?: - at `(?P<at>.+)`)?$")
_UNKNOWN = re.compile(r"^Object contains unknown field `(?P<field>[^`]+)`(?: - at `(?P<at>.+)`)?$")


def _describe(exc: msgspec.ValidationError, frame: str) -> str:
    """msgspec's message, reworded where a client deserves plainer words."""
    text = str(exc)
    if match := _MISSING.match(text):
        path = f"{match['at'] or '$'}.{match['field']}"
        if path == "$.type":
            return f"`$.type` is required (one of: {', '.join(CLIENT_TYPES)})"
        return f"`{path}` is required"
    if match := _UNKNOWN.match(text):
        return f"unknown field `{match['at'] or '$'}.{match['field']}`"
    if text.startswith("Invalid value") and text.endswith("- at `$.type`"):
        try:
            kind = _probe_decoder.decode(frame).type
        except msgspec.MsgspecError:  # pragma: no cover - the frame decoded once already
            kind = None
        return f"unknown message type {kind!r} (expected one of: {', '.join(CLIENT_TYPES)})"
    if text.startswith("Expected `object`"):
        return f"a message must be a JSON object: {text}"
    return text


# -- server -> client ---------------------------------------------------------------


class _ServerMessage(Struct, tag_field="type"):
    """Base of the messages the server sends."""


class Ready(_ServerMessage, tag="ready"):
    """Sent once, when the connection is authenticated."""

    protocol: int = PROTOCOL_VERSION
    host_api_version: int = HOST_API_VERSION


class EventMessage(_ServerMessage, tag="event", omit_defaults=True):
    module: str
    name: str
    version: int
    #: The event's JSON text, spliced in unparsed.
    data: Raw
    timestamp: int
    #: Retained state a subscribe replayed, not news (left out of live events).
    replayed: bool = False


class ErrorData(Struct):
    code: str
    message: str


class Response(_ServerMessage, tag="response"):
    """The one answer to a ``call`` (or to a ``subscribe``/``unsubscribe`` with an id)."""

    request_id: str
    success: bool
    #: The result (JSON text spliced in as Raw) on success, ErrorData on failure.
    data: Any


class Error(_ServerMessage, tag="error"):
    """A complaint about input that had no usable request_id to answer."""

    code: str
    message: str


_encoder: Final = msgspec.json.Encoder()


def encode(message: _ServerMessage) -> str:
    return _encoder.encode(message).decode()


READY_FRAME: Final = encode(Ready())


class _FrameCache:
    """Recent event frames by event, bounded in entries and in characters.

    Events are immutable and hashable (and equal events make equal frames), so the fan-out
    of one event to N clients, which happens within moments, encodes it once. Bounded in
    size too, so a module emitting huge events cannot pin much memory here.
    """

    def __init__(self, max_entries: int, max_chars: int, *, replayed: bool = False) -> None:
        self.replayed = replayed
        self.max_entries = max_entries
        self.max_chars = max_chars
        self._frames: dict[Event, str] = {}
        self._chars = 0

    def get(self, event: Event) -> str:
        frame = self._frames.get(event)
        if frame is None:
            frame = self._frames[event] = _encode_event(event, self.replayed)
            self._chars += len(frame)
            # Insertion order is age: drop the oldest until within bounds.
            while len(self._frames) > self.max_entries or self._chars > self.max_chars:
                oldest = next(iter(self._frames))
                self._chars -= len(self._frames.pop(oldest))
        return frame


def _encode_event(event: Event, replayed: bool) -> str:
    return encode(
        EventMessage(
            module=event.module,
            name=event.name,
            version=event.version,
            data=Raw(event.data),
            timestamp=event.timestamp,
            replayed=replayed,
        )
    )


_event_frames: Final = _FrameCache(max_entries=256, max_chars=8 * 1024 * 1024)
# Dashboards opening a page replay the same retained state, one client after another.
_replayed_frames: Final = _FrameCache(max_entries=256, max_chars=8 * 1024 * 1024, replayed=True)


def encode_event(event: Event) -> str:
    """The ``event`` frame for ``event``, encoded once for every client that receives it."""
    return _event_frames.get(event)


def encode_replayed_event(event: Event) -> str:
    """The frame of a retained ``event`` that a subscribe replays (``"replayed": true``)."""
    return _replayed_frames.get(event)


def success(request_id: str, data_json: str) -> str:
    """A successful response whose ``data`` is the JSON text ``data_json``."""
    return encode(Response(request_id=request_id, success=True, data=Raw(data_json)))


def success_value(request_id: str, data: Any) -> str:
    return encode(Response(request_id=request_id, success=True, data=data))


def failure(request_id: str, code: str, message: str) -> str:
    return encode(Response(request_id=request_id, success=False, data=ErrorData(code, message)))


def error(code: str, message: str) -> str:
    return encode(Error(code=code, message=message))


def is_json(text: str) -> bool:
    """Is ``text`` one JSON value? (A module's answer is checked before it is spliced.)"""
    return json_problem(text) is None
