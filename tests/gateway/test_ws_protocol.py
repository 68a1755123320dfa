"""Protocol v1 on /ws: calls and their responses, and every kind of bad input."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import trio
from trio_websocket import ConnectionClosed

from tests.fixture_types import MakeModuleDir
from vessel.gateway._protocol import PROTOCOL_MAX_MESSAGE

from .harness import running_gateway
from .ws_client import (
    Message,
    call,
    closed_with,
    is_response,
    ready,
    receive,
    receive_until,
    send,
    ws_client,
)


async def test_concurrent_calls_are_answered_independently(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """100 calls in flight on one socket each get exactly one response carrying their own
    result, and a slow call on one module does not hold up fast calls on another."""
    make_module_dir(tmp_path, "testkit", module_id="slow", permissions={})
    make_module_dir(tmp_path, "testkit", module_id="fast", permissions={})
    async with running_gateway(tmp_path) as gw, ws_client(gw) as conn:
        await ready(conn)
        await send(
            conn,
            {"type": "call", "request_id": "slow", "module": "slow", "name": "spin",
             "params": {"ms": 1000}},
        )  # fmt: skip
        for i in range(100):
            await send(
                conn,
                {"type": "call", "request_id": f"echo-{i}", "module": "fast", "name": "echo",
                 "params": {"i": i}},
            )  # fmt: skip
        responses: list[Message] = []
        with trio.fail_after(15):
            while len(responses) < 101:
                message = await receive(conn)
                assert message["type"] == "response", message
                responses.append(message)
        order = [r["request_id"] for r in responses]
        assert sorted(order) == sorted(["slow", *(f"echo-{i}" for i in range(100))])
        assert order[-1] == "slow", "the slow call held up fast ones"
        for r in responses[:-1]:
            assert r["success"] is True
            assert r["data"] == {"i": int(r["request_id"].removeprefix("echo-"))}
        assert responses[-1] == {"type": "response", "request_id": "slow", "success": True,
                                 "data": {}}  # fmt: skip


async def test_failed_calls_carry_stable_codes(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """Unknown module, unknown command, a failing and a trapping command each give a
    failed response with their stable code; the connection and the module keep working."""
    make_module_dir(tmp_path, "testkit", module_id="kit", permissions={})
    async with running_gateway(tmp_path) as gw, ws_client(gw) as conn:
        await ready(conn)
        cases = [
            ("nope", "echo", "unknown_module", "'nope'"),
            ("kit", "no_such_command", "unknown_command", "no_such_command"),
            ("kit", "fail", "module_error", "deliberate failure"),
            ("kit", "trap", "module_error", ""),
            ("vessel", "nope", "unknown_command", "'nope'"),
        ]
        for module, name, code, mentions in cases:
            response = await call(conn, module, name, {}, rid=f"{module}.{name}")
            assert response["success"] is False, response
            assert response["data"]["code"] == code, response
            assert mentions in response["data"]["message"], response
        ok = await call(conn, "kit", "echo", {"after": "trap"}, rid="after")
        assert ok["success"] is True
        assert ok["data"] == {"after": "trap"}


async def test_params_default_and_any_json_value(tmp_path: Path) -> None:
    """``params`` defaults to {} and may be any JSON value; the result is spliced in as
    JSON, not as a string."""
    async with running_gateway(tmp_path) as gw, ws_client(gw) as conn:
        await ready(conn)
        pong = await call(conn, "vessel", "ping", rid="p")
        assert pong == {"type": "response", "request_id": "p", "success": True,
                        "data": {"pong": True}}  # fmt: skip
        version = await call(conn, "vessel", "version", [1, "two", None], rid="v")
        assert version["data"] == {"host_api_version": 1}


async def test_bad_input_is_named_and_the_connection_survives(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """Each kind of bad input is answered with an error naming the problem (a response
    when the frame had a string request_id, so the client's pending call resolves), and
    the connection keeps working after every one of them."""
    make_module_dir(tmp_path, "testkit", module_id="kit", permissions={})
    async with running_gateway(tmp_path) as gw, ws_client(gw) as conn:
        await ready(conn)

        async def expect_error(frame: str | bytes, *mentions: str) -> None:
            await conn.send_message(frame)
            message = await receive(conn)
            assert message["type"] == "error", message
            assert message["code"] == "invalid_message"
            for text in mentions:
                assert text in message["message"], message

        async def expect_failure(frame: dict[str, Any], *mentions: str) -> None:
            await send(conn, frame)
            message = await receive(conn)
            assert message["type"] == "response", message
            assert message["request_id"] == frame["request_id"]
            assert message["success"] is False
            assert message["data"]["code"] == "invalid_message"
            for text in mentions:
                assert text in message["data"]["message"], message

        await expect_error("{not json", "invalid JSON")
        await expect_error("[1, 2]", "must be a JSON object")
        await expect_error('{"type": "bogus"}', "unknown message type 'bogus'", "call")
        await expect_error('{"module": "vessel"}', "`$.type` is required")
        await expect_error('{"type": "call", "module": "vessel", "name": "ping"}',
                           "`$.request_id` is required")  # fmt: skip
        await expect_error(b'{"type": "call"}', "binary frames are not supported")
        await expect_error(b"", "binary frames are not supported")
        padding = "x" * (3 * PROTOCOL_MAX_MESSAGE // 2)
        big = json.dumps({"type": "call", "request_id": "big", "module": "vessel",
                          "name": "ping", "params": padding})  # fmt: skip
        await expect_error(big, f"message of {len(big)} bytes exceeds the 1048576-byte limit")
        await expect_error('{"type": "auth", "token": "x"}', "already authenticated")

        call_ = {"type": "call", "module": "vessel", "name": "ping"}
        await expect_failure({**call_, "request_id": "r1", "name": 5},
                             "Expected `str`, got `int` - at `$.name`")  # fmt: skip
        await expect_failure({"type": "call", "request_id": "r2", "module": "vessel"},
                             "`$.name` is required")  # fmt: skip
        await expect_failure({**call_, "request_id": "r3", "extra": 1}, "unknown field `$.extra`")
        await expect_failure({**call_, "request_id": "r4", "version": -1}, "`$.version`")
        await expect_failure({**call_, "request_id": "x" * 129}, "length <= 128")
        await expect_failure({"type": "subscribe", "module": "kit", "request_id": "r5"},
                             "`$.name` is required")  # fmt: skip

        # A request_id may not be reused while its call is in flight.
        await send(conn, {"type": "call", "request_id": "dup", "module": "kit", "name": "spin",
                          "params": {"ms": 300}})  # fmt: skip
        await send(conn, {"type": "call", "request_id": "dup", "module": "kit", "name": "echo"})
        refused = await receive(conn)
        assert refused["request_id"] == "dup"
        assert refused["success"] is False
        assert refused["data"]["code"] == "invalid_message"
        assert "duplicate request_id" in refused["data"]["message"]
        first = await receive(conn)
        assert first == {"type": "response", "request_id": "dup", "success": True, "data": {}}
        # ...and may be reused once it was answered.
        again = await call(conn, "kit", "echo", {"n": 2}, rid="dup")
        assert again["data"] == {"n": 2}


async def test_frames_over_the_transport_limit_close_with_1009(tmp_path: Path) -> None:
    """Above Hypercorn's 4 MiB limit the frame never reaches the protocol: the connection
    is closed with 1009 (message too big), as docs/protocol.md says."""
    async with running_gateway(tmp_path) as gw, ws_client(gw) as conn:
        await ready(conn)
        # The server may close while the frame is still being sent.
        with contextlib.suppress(ConnectionClosed):
            await conn.send_message("x" * (4 * 1024 * 1024 + 1))
        code, _ = await closed_with(conn)
        assert code == 1009


async def test_too_many_calls_in_flight(tmp_path: Path, make_module_dir: MakeModuleDir) -> None:
    """Past 256 calls in flight on one connection, a call is answered too_many_requests
    at once; the calls in flight still complete."""
    make_module_dir(tmp_path, "testkit", module_id="kit", permissions={})
    async with running_gateway(tmp_path) as gw, ws_client(gw) as conn:
        await ready(conn)
        # The spin keeps the other calls in flight (queued behind it) while they are sent:
        # long enough for a busy machine to send 256 frames meanwhile.
        await send(conn, {"type": "call", "request_id": "s", "module": "kit", "name": "spin",
                          "params": {"ms": 2000}})  # fmt: skip
        for i in range(255):
            await send(conn, {"type": "call", "request_id": f"e{i}", "module": "kit",
                              "name": "echo"})  # fmt: skip
        await send(conn, {"type": "call", "request_id": "extra", "module": "kit", "name": "echo"})
        refused, _ = await receive_until(conn, lambda m: is_response(m, "extra"))
        assert refused["data"]["code"] == "too_many_requests"
        answered = {"extra"}
        with trio.fail_after(15):
            while len(answered) < 257:
                message = await receive(conn)
                assert message["success"] is True, message
                answered.add(message["request_id"])
