"""The sans-IO side of protocol v1: decoding client frames and encoding server frames."""

from __future__ import annotations

import json

import msgspec
import pytest

from vessel._events import Event
from vessel.gateway import _protocol as proto


def test_decodes_each_client_message_with_defaults() -> None:
    """Every client message decodes to its Struct; call defaults to version 1 and params
    {}, and keeps params as the client's JSON text."""
    call = proto.decode('{"type":"call","request_id":"1","module":"m","name":"n"}')
    assert isinstance(call, proto.Call)
    assert (call.version, bytes(call.params)) == (1, b"{}")
    call = proto.decode('{"type":"call","request_id":"1","module":"m","name":"n","params":[1, 2]}')
    assert isinstance(call, proto.Call)
    assert bytes(call.params) == b"[1, 2]"
    assert proto.decode('{"type":"auth","token":"t"}') == proto.Auth(token="t")
    assert proto.decode('{"type":"subscribe","module":"m","name":"*"}') == proto.Subscribe(
        module="m", name="*"
    )
    assert proto.decode(
        '{"type":"unsubscribe","module":"m","name":"*","request_id":"r"}'
    ) == proto.Unsubscribe(module="m", name="*", request_id="r")


@pytest.mark.parametrize(
    ("frame", "message", "request_id"),
    [
        ("nope", "invalid JSON: JSON is malformed", None),
        ("", "invalid JSON: Input data was truncated", None),
        ("3", "a message must be a JSON object", None),
        ('{"type": "x", "request_id": "r"}', "unknown message type 'x'", "r"),
        ('{"type": 1}', "Expected `str` - at `$.type`", None),
        ("{}", "`$.type` is required (one of: auth, call, subscribe, unsubscribe)", None),
        ('{"type": "call", "request_id": "r"}', "`$.module` is required", "r"),
        ('{"type": "call", "request_id": 7}', "`$.request_id`", None),
        ('{"type": "auth", "token": "t", "request_id": "r"}', "unknown field `$.request_id`", "r"),
        ('{"type": "subscribe", "module": "", "name": "x"}', "length >= 1 - at `$.module`", None),
    ],
)
def test_invalid_frames_name_the_problem(frame: str, message: str, request_id: str | None) -> None:
    """The error names what is wrong and carries the frame's string request_id if any."""
    with pytest.raises(proto.InvalidMessage) as caught:
        proto.decode(frame)
    assert message in caught.value.message
    assert caught.value.request_id == request_id


def test_size_limit_counts_utf8_bytes() -> None:
    """The 1 MiB limit is on UTF-8 bytes, so multi-byte text is measured exactly, and
    binary frames are refused whatever their content."""
    euro = '{"type":"auth","token":"' + "€" * (proto.PROTOCOL_MAX_MESSAGE // 3) + '"}'
    with pytest.raises(proto.InvalidMessage, match=f"message of {len(euro.encode())} bytes"):
        proto.decode(euro)
    fits = '{"type":"auth","token":"' + "x" * (proto.PROTOCOL_MAX_MESSAGE - 30) + '"}'
    assert isinstance(proto.decode(fits), proto.Auth)
    for frame in (b'{"type":"auth","token":"t"}', None):
        with pytest.raises(proto.InvalidMessage, match="binary frames are not supported"):
            proto.decode(frame)


def test_event_frame_splices_data_and_is_encoded_once() -> None:
    """An event's JSON text is spliced in unparsed, and the frame of one event is built
    once however many clients ask for it."""
    event = Event(module="m", name="n", data='{"b": [1, 2.50]}', version=3, timestamp=42)
    frame = proto.encode_event(event)
    assert '"data":{"b": [1, 2.50]}' in frame
    assert json.loads(frame) == {"type": "event", "module": "m", "name": "n", "version": 3,
                                 "data": {"b": [1, 2.5]}, "timestamp": 42}  # fmt: skip
    assert proto.encode_event(event) is frame
    assert proto.encode_event(msgspec.structs.replace(event)) is frame  # equal events


def test_frame_cache_is_bounded() -> None:
    """The event-frame cache drops its oldest entries past its entry and size bounds."""
    cache = proto._FrameCache(max_entries=2, max_chars=10_000)
    events = [Event(module="m", name=f"e{i}", data="1", timestamp=1) for i in range(3)]
    frames = [cache.get(e) for e in events]
    assert cache.get(events[2]) is frames[2]
    assert cache.get(events[0]) is not frames[0]  # evicted, encoded again
    big = Event(module="m", name="big", data=json.dumps("x" * 20_000), timestamp=1)
    cache.get(big)
    assert cache._chars <= 10_000


def test_server_messages() -> None:
    """ready, response (success with spliced JSON, failure with code/message) and error
    have the documented shapes."""
    assert json.loads(proto.READY_FRAME) == {"type": "ready", "protocol": 1,
                                             "host_api_version": 1}  # fmt: skip
    assert json.loads(proto.success("r", '{"x": 1}')) == {
        "type": "response", "request_id": "r", "success": True, "data": {"x": 1}
    }  # fmt: skip
    assert json.loads(proto.failure("r", "timeout", "too slow")) == {
        "type": "response", "request_id": "r", "success": False,
        "data": {"code": "timeout", "message": "too slow"},
    }  # fmt: skip
    assert json.loads(proto.error("invalid_message", "bad")) == {
        "type": "error", "code": "invalid_message", "message": "bad"
    }  # fmt: skip
