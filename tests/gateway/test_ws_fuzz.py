"""Arbitrary and near-valid input on one /ws connection (hypothesis)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from trio_websocket import WebSocketConnection

from .harness import running_gateway
from .ws_client import Message, is_response, ready, receive, receive_until, send, ws_client

CODES = {
    "invalid_message",
    "unknown_module",
    "unknown_command",
    "module_unavailable",
    "timeout",
    "module_error",
    "too_many_requests",
    "too_many_subscriptions",
}

# Text a WebSocket text frame can carry (no lone surrogates).
text = st.text(st.characters(exclude_categories=["Cs"]), max_size=20)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=8,
)

VALID: list[dict[str, Any]] = [
    {"type": "call", "request_id": "r", "module": "vessel", "name": "ping", "version": 1,
     "params": {}},
    {"type": "call", "request_id": "r", "module": "nope", "name": "x"},
    {"type": "subscribe", "module": "nope", "name": "*", "request_id": "r"},
    {"type": "unsubscribe", "module": "nope", "name": "*", "request_id": "r"},
    {"type": "subscribe", "module": "nope", "name": "x"},
    {"type": "auth", "token": "t"},
]  # fmt: skip
KEYS = ["type", "request_id", "module", "name", "version", "params", "token", "extra"]


@st.composite
def near_valid(draw: st.DrawFn) -> dict[str, Any]:
    """A valid message with up to three fields dropped, replaced or added."""
    message = dict(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from(KEYS))
        if draw(st.booleans()):
            message.pop(key, None)
        else:
            message[key] = draw(json_values | st.sampled_from(["call", "subscribe", "x" * 129]))
    return message


#: (how to send it, what): a JSON-encoded value, raw text (mostly not JSON), binary.
frames = st.one_of(
    near_valid().map(lambda v: ("json", v)),
    json_values.map(lambda v: ("json", v)),
    text.map(lambda t: ("raw", t)),
    st.binary(max_size=20).map(lambda b: ("binary", b)),
)


def with_unique_id(value: Any, n: int) -> Any:
    """A string request_id replaced by one unique to this example, of a length in the same
    validity class (empty, 1..128, longer), so each response can be told apart."""
    if not isinstance(value, dict) or not isinstance(value.get("request_id"), str):
        return value
    original: str = value["request_id"]
    unique = f"h{n}" if original else ""
    return {**value, "request_id": unique.ljust(len(original), "x")}


class Prober:
    """Sends one input then a barrier call, and checks what came back."""

    def __init__(self, conn: WebSocketConnection) -> None:
        self.conn = conn
        self.n = 0
        self.responses: Counter[str] = Counter()
        #: How many responses each request_id is owed: the empty id cannot be made
        #: unique (its validity class has one member), so it may be owed several.
        self.expected: Counter[str] = Counter()

    def note(self, message: Message) -> str:
        kind = message["type"]
        assert kind in ("response", "error", "event"), message
        if kind == "response":
            self.responses[message["request_id"]] += 1
            if not message["success"]:
                assert message["data"]["code"] in CODES, message
                assert message["data"]["message"], message
        elif kind == "error":
            assert message["code"] == "invalid_message", message
            assert message["message"], message
        return str(kind)

    async def probe(self, how: str, value: Any) -> None:
        self.n += 1
        value = with_unique_id(value, self.n)
        if how == "json":
            await send(self.conn, value)
        else:
            await self.conn.send_message(value)
        barrier = f"barrier-{self.n}"
        await send(self.conn, {"type": "call", "request_id": barrier, "module": "vessel",
                               "name": "ping"})  # fmt: skip
        response, before = await receive_until(self.conn, lambda m: is_response(m, barrier))
        assert response["success"] is True, response
        kinds = [self.note(m) for m in before]
        rid = value.get("request_id") if how == "json" and isinstance(value, dict) else None
        if isinstance(rid, str):
            # Answered by exactly one response (maybe after the barrier: calls run
            # concurrently), never by a bare error.
            assert "error" not in kinds, (value, before)
            self.expected[rid] += 1
        else:
            assert kinds.count("error") <= 1, (value, before)
            if "error" not in kinds:
                # Only a valid subscribe/unsubscribe without request_id is silent.
                assert how == "json", (value, before)
                assert isinstance(value, dict), (value, before)
                assert value.get("type") in ("subscribe", "unsubscribe"), (value, before)

    async def settle(self) -> None:
        """Wait for late responses; every request carrying a request_id was answered
        exactly once."""
        with trio.fail_after(10):
            while not self.expected <= self.responses:
                self.note(await receive(self.conn))
        assert {rid: self.responses[rid] for rid in self.expected} == self.expected


async def test_arbitrary_input_gets_an_answer_and_the_connection_survives(
    tmp_path: Path,
) -> None:
    """Over one connection, each arbitrary JSON value, near-valid message, non-JSON text or
    binary frame gets at most one error, or one response when it carried a string
    request_id (only a valid subscribe/unsubscribe without one is silent), and the
    connection keeps answering calls throughout."""
    async with running_gateway(tmp_path) as gw, ws_client(gw) as conn:
        await ready(conn)
        prober = Prober(conn)

        # Hypothesis drives from a worker thread; each example runs on this trio loop.
        @settings(max_examples=200, deadline=None, database=None)
        @given(frames)
        def examples(frame: tuple[str, Any]) -> None:
            trio.from_thread.run(prober.probe, *frame)

        with trio.fail_after(120):
            await trio.to_thread.run_sync(examples)
        await prober.settle()
        assert prober.n >= 200
