"""JSON nested deeper than any message needs, at every door: WebSocket frames before and
after login, REST call bodies, an uploaded manifest, a module's call to another module,
a module's event. msgspec gives up near Python's recursion limit with ``RecursionError``:
before the depth bound (vessel/_json_check.py) that escaped as a traceback per frame
before login, closed the socket with 1000 instead of the documented error, and made a
REST call answer 500.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import httpx
import pytest

from tests.fixture_types import MakeModuleDir
from tests.gateway.harness import running_gateway
from tests.gateway.ws_client import call, closed_with, ready, receive, send, ws_client
from vessel._json_check import MAX_JSON_DEPTH

from ._figures import Figures
from ._healthy import HEALTHY, healthy_modules, watch_healthy

REPO = Path(__file__).resolve().parents[2]
TESTKIT_MANIFEST = REPO / "tests" / "guests" / "testkit" / "manifest.json"
HOSTILE = "deep"
#: Far past the bound, and past msgspec's own limit (Python's recursion limit).
DEEP = "[" * 1_000 + "]" * 1_000
#: Nested to the bound in a call frame (the frame's object, the params' object, then
#: this): accepted.
NESTED_OK = "[" * (MAX_JSON_DEPTH - 2) + "]" * (MAX_JSON_DEPTH - 2)


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.exc_info is not None]


async def test_deep_json_is_invalid_input_at_every_door(
    tmp_path: Path,
    make_module_dir: MakeModuleDir,
    figures: Figures,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every deep text is refused as invalid input with a message that says it nests too
    deeply, with no traceback in the log: before login the connection gets the documented
    ``unauthorized`` error and 4401; after login an ``invalid_message`` error and the
    connection stays up; a REST call 400; a manifest 400; a module's call to another
    module with deep params fails in the caller and never reaches the callee; a module's
    deep event is refused to it and reaches no subscriber. Text nested exactly to the bound
    passes. The healthy modules are served throughout."""
    caplog.set_level(logging.INFO)
    healthy_modules(make_module_dir, tmp_path)
    make_module_dir(
        tmp_path, "testkit", module_id=HOSTILE, permissions={"call": ["healthy-a.echo@1"]}
    )
    row = figures.row("deeply nested JSON")
    async with running_gateway(tmp_path) as gw, watch_healthy(gw.daemon, row):
        d = gw.daemon
        # Before login: the documented refusal, every time.
        for _ in range(20):
            async with ws_client(gw, token=None) as conn:
                await conn.send_message(DEEP)
                error = await receive(conn)
                assert error["type"] == "error", error
                assert error["code"] == "unauthorized", error
                assert "nested more than" in error["message"], error
                assert (await closed_with(conn))[0] == 4401
            row.bad_inputs += 1
            row.answered += 1

        # After login: an error reply, and the connection serves on.
        async with ws_client(gw) as conn:
            await ready(conn)
            for _ in range(20):
                await conn.send_message('{"type": "call", "request_id": "x", "params": ' + DEEP)
                error = await receive(conn)
                assert (error["type"], error["code"]) == ("error", "invalid_message"), error
                assert "nested more than" in error["message"], error
                row.bad_inputs += 1
                row.answered += 1
            frame = {"type": "call", "request_id": "ok", "module": HEALTHY[0], "name": "echo"}
            await send(conn, {**frame, "params": {"v": json.loads(NESTED_OK)}})
            answer = await receive(conn)
            assert answer["success"], answer
            assert answer["data"] == {"v": json.loads(NESTED_OK)}

            # A module's call to another module with deep params: refused to the caller.
            params = {"module": HEALTHY[0], "name": "echo", "params": DEEP}
            answer = await call(conn, HOSTILE, "call", params, rid="m2m")
            assert not answer["success"], answer
            assert "nested more than" in answer["data"]["message"], answer
            row.bad_inputs += 1
            row.answered += 1

            # A module's deep event: refused to it, delivered to nobody.
            subscribe = {"type": "subscribe", "request_id": "s", "module": HOSTILE, "name": "*"}
            await send(conn, subscribe)
            assert (await receive(conn))["success"]
            emit = {"type": "call", "module": HOSTILE, "name": "emit"}
            await send(conn, {**emit, "request_id": "e", "params": {"name": "deep", "raw": DEEP}})
            await send(conn, {**emit, "request_id": "f", "params": {"name": "fine", "data": 1}})
            seen: dict[str, dict[str, object]] = {}
            events: list[str] = []
            while len(seen) < 2 or not events:  # both answers, and the fine event
                message = await receive(conn)
                if message["type"] == "event":
                    events.append(message["name"])
                else:
                    seen[message["request_id"]] = message
            assert not seen["e"]["success"], seen
            assert "nested more than" in str(seen["e"]["data"]), seen
            assert seen["f"]["success"], seen
            assert events == ["fine"], events
            row.bad_inputs += 1
            row.answered += 1

        async with httpx.AsyncClient(base_url=gw.base_url, headers=gw.auth, timeout=30) as c:
            r = await c.post(f"/api/modules/{HEALTHY[0]}/call/echo", content=DEEP)
            assert r.status_code == 400, r.text
            assert r.json()["code"] == "invalid_request"
            assert "nested more than" in r.json()["message"]
            doc = json.loads(TESTKIT_MANIFEST.read_text())
            deep_manifest = json.dumps({**doc, "id": "deeper"})[:-1] + ', "x": ' + DEEP + "}"
            r = await c.post(
                "/api/modules",
                files={"manifest": ("manifest.json", deep_manifest), "wasm": b"\0asm"},
            )
            assert r.status_code == 400, r.text
            assert r.json()["code"] == "invalid_module"
            assert "nested more than" in r.json()["message"]
            row.bad_inputs += 2
            row.answered += 2

        stats = await d.manager.get(HEALTHY[0]).stats()
        assert stats is not None
        assert stats.traps == 0
        assert tracebacks(caplog) == []
