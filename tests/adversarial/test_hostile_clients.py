"""Hostile network clients against a real gateway, with healthy modules watched beside.

Fuzzers (hypothesis, driven from a worker thread, each example run on the trio loop as
``tests/gateway/test_ws_fuzz.py`` does) throw arbitrary and near-valid input at /ws and
at every REST endpoint; other tests send oversized frames, never read, open and drop
hundreds of connections, reuse request ids, try path traversal and upload bad modules.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import trio
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tests.gateway.harness import Gateway, running_gateway
from tests.gateway.test_ws_fuzz import Prober, frames, json_values, text
from tests.gateway.ws_client import (
    call,
    closed_with,
    is_response,
    ready,
    receive,
    receive_until,
    send,
    ws_client,
)
from vessel._paths import modules_dir

from ._figures import Figures, Row
from ._healthy import healthy_modules, watch_healthy

VICTIM = "victim"
ERROR_CODES = {
    "invalid_request", "invalid_module", "unauthorized", "not_found", "unknown_module",
    "unknown_command", "method_not_allowed", "already_installed", "module_unavailable",
    "too_large", "module_error", "timeout",
}  # fmt: skip


@asynccontextmanager
async def gateway_scenario(
    tmp_path: Path, make_module_dir: Any, figures: Figures, name: str
) -> AsyncIterator[tuple[Gateway, Row]]:
    """A gateway whose daemon runs the healthy pair and a victim testkit, watched."""
    healthy_modules(make_module_dir, tmp_path)
    make_module_dir(tmp_path, "testkit", module_id=VICTIM, permissions={"storage": True})
    row = figures.row(name)
    async with running_gateway(tmp_path) as gw, watch_healthy(gw.daemon, row):
        yield gw, row
        await trio.sleep(0.1)


def _check_error(response: httpx.Response) -> None:
    """Every refusal is a JSON {code, message} with a documented code; never a 500."""
    assert response.status_code < 500 or response.status_code in (502, 503, 504), (
        response.status_code,
        response.text[:300],
    )
    if response.status_code >= 400 and response.request.method != "HEAD":
        body = response.json()
        assert set(body) == {"code", "message"}, body
        assert body["code"] in ERROR_CODES, body
        assert body["message"], body


# -- REST fuzz --------------------------------------------------------------------------

segment = st.sampled_from(
    [VICTIM, "nope", "vessel", "..", ".", "%2e%2e", "..%2F..%2Fetc", "UPPER", "a_b", "x" * 70,
     "-", "a%00b", "%", "etc%2Fpasswd", "victim%2F..%2Fhealthy-a"]
) | text.filter(bool).map(lambda t: quote(t, safe=""))  # fmt: skip
key = st.sampled_from(
    ["k", "a/b", "../../x", "%2e%2e/x", "a/./b", "%00", "a" * 300, "/", "a//b", "..", "\\x"]
) | text.filter(bool).map(lambda t: quote(t, safe="/"))  # fmt: skip
paths = st.one_of(
    st.just("/api/modules"),
    st.just("/api/modules/version"),
    st.builds("/api/modules/{}".format, segment),
    st.builds(
        "/api/modules/{}/{}".format,
        segment,
        st.sampled_from(["enable", "disable", "restart", "logs", "config", "call", "x"]),
    ),
    st.builds("/api/modules/{}/config/{}".format, segment, key),
    st.builds("/api/modules/{}/call/{}".format, segment, segment),
    st.builds("/api/{}".format, segment),
    st.builds("/api{}".format, key),
)
queries = st.dictionaries(
    st.sampled_from(["replace", "lines", "keep_storage", "x", "timeout"]) | text,
    text | st.sampled_from(["true", "false", "1", "-1", "99999999999999999999", ""]),
    max_size=3,
)
bodies = st.one_of(
    st.none(),
    st.binary(max_size=64),
    json_values.map(lambda v: json.dumps(v).encode()),
    text.map(str.encode),
)
requests = st.tuples(
    st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]),
    paths,
    queries,
    bodies,
    st.sampled_from(["admin", "admin", "admin", "none", "wrong"]),
    st.sampled_from(
        [
            None,
            "application/json",
            "multipart/form-data; boundary=x",
            "text/plain",
            "application/x-www-form-urlencoded",
        ]
    ),
)


async def test_rest_fuzz(tmp_path: Path, make_module_dir: Any, figures: Figures) -> None:
    """Arbitrary and near-valid requests on every REST endpoint: each gets a documented
    answer (never a 500, never a hang), and the healthy modules never notice."""
    async with (
        gateway_scenario(tmp_path, make_module_dir, figures, "REST fuzz") as (gw, row),
        httpx.AsyncClient(base_url=gw.base_url, timeout=15) as client,
    ):
        sent = 0

        async def one(req: tuple[str, str, dict[str, str], bytes | None, str, str | None]) -> None:
            nonlocal sent
            method, path, query, body, auth, ctype = req
            query.pop("follow", None)  # a live log follow is endless by design
            headers = {"content-type": ctype} if ctype else {}
            if auth == "admin":
                headers.update(gw.auth)
            elif auth == "wrong":
                headers["Authorization"] = "Bearer wrong"
            url = httpx.URL(gw.base_url + path, params=query)
            response = await client.request(method, url, content=body, headers=headers)
            sent += 1
            _check_error(response)
            if auth != "admin" and path.startswith("/api/modules"):
                assert response.status_code in (401, 404, 405), (path, response.status_code)

        @settings(max_examples=1200, deadline=None, database=None)
        @given(requests)
        def examples(req: Any) -> None:
            assume("healthy" not in req[1])
            trio.from_thread.run(one, req)

        with trio.fail_after(100):
            await trio.to_thread.run_sync(examples)
        row.bad_inputs += sent
        # The gateway still serves a well-formed request afterwards.
        response = await client.get("/api/modules", headers=gw.auth)
        assert response.status_code == 200
        assert gw.daemon.storage.keys("healthy-a") == []


async def test_ws_fuzz(tmp_path: Path, make_module_dir: Any, figures: Figures) -> None:
    """Arbitrary JSON, near-valid messages, raw text and binary frames on /ws: each is
    answered at most once (exactly once when it carried a request_id), the connection
    survives, and the healthy modules never notice."""
    async with (
        gateway_scenario(tmp_path, make_module_dir, figures, "WS fuzz") as (gw, row),
        ws_client(gw) as conn,
    ):
        await ready(conn)
        prober = Prober(conn)

        @settings(max_examples=800, deadline=None, database=None)
        @given(frames)
        def examples(frame: tuple[str, Any]) -> None:
            trio.from_thread.run(prober.probe, *frame)

        with trio.fail_after(100):
            await trio.to_thread.run_sync(examples)
        await prober.settle()
        row.bad_inputs += prober.n
        assert (await call(conn, "healthy-a", "echo", {"x": 1}, rid="after"))["data"] == {"x": 1}


async def test_oversized_frames_and_duplicate_ids(
    tmp_path: Path, make_module_dir: Any, figures: Figures
) -> None:
    """A frame over the protocol limit gets an error and the connection stays up; one over
    the transport limit ends only that connection; a request_id reused while in flight
    is refused for the new message and the first call is still answered once."""
    async with gateway_scenario(tmp_path, make_module_dir, figures, "oversize/dup ids") as (
        gw,
        row,
    ):
        async with ws_client(gw, max_message_size=16 * 1024 * 1024) as conn:
            await ready(conn)
            await conn.send_message("x" * (2 * 1024 * 1024))
            error = await receive(conn)
            assert error["type"] == "error", error
            assert "exceeds" in error["message"], error
            row.bad_inputs += 1
            # Same request_id twice while the first (a slow call) is in flight.
            slow = {"type": "call", "request_id": "dup", "module": VICTIM, "name": "spin",
                    "params": {"ms": 300}}  # fmt: skip
            await send(conn, slow)
            await send(conn, slow)
            refused, _ = await receive_until(conn, lambda m: m.get("request_id") == "dup")
            assert refused["type"] == "response", refused
            assert not refused["success"], refused
            assert "duplicate" in refused["data"]["message"], refused
            answered, _ = await receive_until(conn, lambda m: is_response(m, "dup"))
            assert answered["success"] is True, answered
            row.bad_inputs += 1
            assert (await call(conn, "healthy-b", "echo", {"y": 2}))["data"] == {"y": 2}
        async with ws_client(gw, max_message_size=16 * 1024 * 1024) as conn:
            await ready(conn)
            await conn.send_message("x" * (5 * 1024 * 1024))
            code, _ = await closed_with(conn)
            assert code == 1009, code
            row.bad_inputs += 1
        async with ws_client(gw) as conn:
            await ready(conn)
            assert (await call(conn, "healthy-a", "echo", {"z": 3}))["data"] == {"z": 3}


async def test_client_that_never_reads(
    tmp_path: Path, make_module_dir: Any, figures: Figures
) -> None:
    """A client that subscribes to everything and sends thousands of calls but never reads
    (what the gateway holds for it is bounded: it is closed as too slow once its queue
    is full); other clients keep getting their events and responses meanwhile."""
    async with gateway_scenario(tmp_path, make_module_dir, figures, "never-reading client") as (
        gw,
        row,
    ):
        async with ws_client(gw) as lazy, ws_client(gw) as good:
            await ready(lazy)
            await ready(good)
            await send(lazy, {"type": "subscribe", "module": "*", "name": "*"})
            await send(good, {"type": "subscribe", "module": "healthy-a", "name": "tick"})
            # The lazy client floods itself with responses it never reads.
            for i in range(3000):
                await send(lazy, {"type": "call", "request_id": f"r{i}", "module": "vessel",
                                  "name": "ping"})  # fmt: skip
            row.bad_inputs += 3000
            for _ in range(20):
                event = await receive(good)
                assert event["type"] == "event", event
                assert event["module"] == "healthy-a", event
            assert (await call(good, "healthy-b", "echo", {"ok": 1}))["data"] == {"ok": 1}
        async with ws_client(gw) as conn:
            await ready(conn)


async def test_hundreds_of_connections_opened_and_dropped(
    tmp_path: Path, make_module_dir: Any, figures: Figures
) -> None:
    """Hundreds of TCP connections dropped at once, half-sent HTTP requests and
    WebSocket handshakes abandoned midway: the gateway keeps serving."""
    async with gateway_scenario(tmp_path, make_module_dir, figures, "connection churn") as (
        gw,
        row,
    ):
        url = urlsplit(gw.base_url)
        assert url.hostname == "127.0.0.1"
        assert url.port is not None
        host, port = url.hostname, url.port
        partial = [
            b"",
            b"GET /api/modules HTTP/1.1\r\nHost: x\r\n",
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS hello on a plain port
            b"POST /api/modules HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\nab",
        ]

        async def churn(i: int) -> None:
            with trio.fail_after(10):
                stream = await trio.open_tcp_stream(host, port)
                async with stream:
                    if data := partial[i % len(partial)]:
                        await stream.send_all(data)

        with trio.fail_after(60):
            for batch in range(3):
                async with trio.open_nursery() as nursery:
                    for i in range(200):
                        nursery.start_soon(churn, i + batch)
                row.bad_inputs += 200
            async with trio.open_nursery() as nursery:
                for _ in range(50):
                    nursery.start_soon(_ws_call_once, gw)
        async with httpx.AsyncClient(base_url=gw.base_url, headers=gw.auth, timeout=10) as c:
            assert (await c.get("/api/modules")).status_code == 200


async def _ws_call_once(gw: Gateway) -> None:
    async with ws_client(gw) as conn:
        await ready(conn)
        assert (await call(conn, "vessel", "ping"))["success"] is True


async def test_path_traversal_in_ids_and_keys(
    tmp_path: Path, make_module_dir: Any, figures: Figures
) -> None:
    """Traversal in module ids and config keys never reaches the file system or another
    module's namespace."""
    async with (
        gateway_scenario(tmp_path, make_module_dir, figures, "path traversal") as (gw, row),
        httpx.AsyncClient(base_url=gw.base_url, headers=gw.auth, timeout=10) as client,
    ):
        before = sorted(p.name for p in modules_dir(tmp_path).iterdir())
        ids = ["..", "..%2F..", "..%2Fhealthy-a", "%2e%2e", "victim%2F..%2Fhealthy-a",
               "..%5C..", "healthy-a%00", "%2Fetc%2Fpasswd"]  # fmt: skip
        for module_id in ids:
            for method, suffix in (("GET", ""), ("DELETE", ""), ("POST", "/disable"),
                                   ("PUT", "/config/k"), ("GET", "/logs")):  # fmt: skip
                r = await client.request(
                    method, f"/api/modules/{module_id}{suffix}", json={"value": "v"}
                )
                _check_error(r)
                assert r.status_code in (400, 404, 405), (module_id, suffix, r.status_code)
                row.bad_inputs += 1
        # Encoded, so no client normalises them away before the server sees them.
        for bad_key in ("..%2F..%2Fhealthy-a%2Fk", "a%2F..%2Fb", ".%2Fa", "a%2F.%2Fb", "%00",
                        "a" * 300):  # fmt: skip
            r = await client.put(f"/api/modules/{VICTIM}/config/{bad_key}", json={"value": "v"})
            _check_error(r)
            assert r.status_code in (400, 404), (bad_key, r.status_code)
            row.bad_inputs += 1
        # A key that merely looks like a path is just a key in the victim's namespace.
        r = await client.put(
            f"/api/modules/{VICTIM}/config/healthy-a%2Fsecret", json={"value": "v"}
        )
        assert r.status_code in (200, 204), r.text
        assert gw.daemon.storage.keys("healthy-a") == []
        assert sorted(p.name for p in modules_dir(tmp_path).iterdir()) == before
        assert all(
            gw.daemon.manager.state(m).value == "running" for m in ("healthy-a", "healthy-b")
        )


async def test_bad_uploads(
    tmp_path: Path, make_module_dir: Any, figures: Figures, built_guests: Any
) -> None:
    """Uploads of non-wasm, truncated wasm, a core module and junk manifests are refused
    with invalid_module and leave nothing behind."""
    testkit = Path(built_guests["testkit"]).read_bytes()
    manifest = json.dumps({"id": "upload-x", "name": "x", "version": "1", "api_version": 1})
    bad = [
        (manifest, b"this is not wasm"),
        (manifest, b""),
        (manifest, testkit[: len(testkit) // 2]),
        (manifest, testkit[:8]),
        (manifest, b"\x00asm\x01\x00\x00\x00"),  # a core module, not a component
        ("{", testkit[:100]),
        (json.dumps({"id": "../../etc", "name": "x", "version": "1", "api_version": 1}), b""),
        (json.dumps({"id": "upload-x", "name": "x", "version": "1", "api_version": 99}),
         testkit[:100]),
    ]  # fmt: skip
    async with (
        gateway_scenario(tmp_path, make_module_dir, figures, "bad uploads") as (gw, row),
        httpx.AsyncClient(base_url=gw.base_url, headers=gw.auth, timeout=60) as client,
    ):
        before = sorted(p.name for p in modules_dir(tmp_path).iterdir())
        for manifest_text, wasm in bad:
            files = {"manifest": ("manifest.json", manifest_text.encode()),
                     "wasm": ("module.wasm", wasm)}  # fmt: skip
            r = await client.post("/api/modules", files=files)
            _check_error(r)
            assert r.status_code == 400, r.text
            assert r.json()["code"] in ("invalid_module", "invalid_request"), r.text
            row.bad_inputs += 1
        assert sorted(p.name for p in modules_dir(tmp_path).iterdir()) == before
        assert "upload-x" not in gw.daemon.manager.ids()


async def test_truncated_oversized_post_does_not_stop_the_gateway(
    tmp_path: Path, make_module_dir: Any, figures: Figures
) -> None:
    """Regression: a POST announcing a huge body, then a hang-up, made Hypercorn raise
    BusyResourceError out of ``serve`` and stopped the gateway for every client."""
    async with gateway_scenario(tmp_path, make_module_dir, figures, "truncated big POST") as (
        gw,
        row,
    ):
        url = urlsplit(gw.base_url)
        assert url.hostname is not None
        assert url.port is not None
        for _ in range(20):
            with trio.fail_after(10):
                stream = await trio.open_tcp_stream(url.hostname, url.port)
                async with stream:
                    await stream.send_all(
                        b"POST /api/modules HTTP/1.1\r\nHost: x\r\n"
                        b"Content-Length: 99999999\r\n\r\nab"
                    )
            row.bad_inputs += 1
        async with httpx.AsyncClient(base_url=gw.base_url, headers=gw.auth, timeout=10) as c:
            assert (await c.get("/api/modules")).status_code == 200
