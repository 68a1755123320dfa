"""Hostile network clients against a real gateway, with healthy modules watched beside.

Fuzzers (hypothesis, driven from a worker thread, each example run on the trio loop as
``tests/gateway/test_ws_fuzz.py`` does) throw arbitrary and near-valid input at /ws and
at every REST endpoint; other tests send oversized frames, never read, open and drop
hundreds of connections, reuse request ids, try path traversal and upload bad modules.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import trio
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from trio_websocket import ConnectionClosed

from tests.fixture_types import MakeModuleDir
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
    "too_large", "module_error", "timeout", "install_in_progress", "too_many_requests",
    "request_timeout",
}  # fmt: skip


@asynccontextmanager
async def gateway_scenario(
    tmp_path: Path, make_module_dir: MakeModuleDir, figures: Figures, name: str
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


async def test_rest_fuzz(tmp_path: Path, make_module_dir: MakeModuleDir, figures: Figures) -> None:
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

        with trio.fail_after(FUZZ_BOUND):
            await trio.to_thread.run_sync(examples)
        row.bad_inputs += sent
        # The gateway still serves a well-formed request afterwards.
        response = await client.get("/api/modules", headers=gw.auth)
        assert response.status_code == 200
        assert gw.daemon.storage.keys("healthy-a") == []


async def test_ws_fuzz(tmp_path: Path, make_module_dir: MakeModuleDir, figures: Figures) -> None:
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

        with trio.fail_after(FUZZ_BOUND):
            await trio.to_thread.run_sync(examples)
        await prober.settle()
        row.bad_inputs += prober.n
        assert (await call(conn, "healthy-a", "echo", {"x": 1}, rid="after"))["data"] == {"x": 1}


async def test_oversized_frames_and_duplicate_ids(
    tmp_path: Path, make_module_dir: MakeModuleDir, figures: Figures
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


#: Echo calls of this many characters each, sent by the client that never reads: enough
#: of them overflow its send queue (16 M characters) plus what the loopback socket
#: buffers hold, which ~3000 small answers never do.
BIG_ECHO = 256 * 1024
BIG_ECHOES = 160
#: Seconds the gateway may take to give up on a client that stopped reading, and (once it
#: reads again) to deliver its close frame after what the network buffered: a hang
#: detector, generous for a machine whose every CPU is busy (20 s was not, under load).
SLOW_CLIENT_BOUND = 120.0
#: Seconds a fuzzer's whole run may take (each request has its own 15 s bound).
FUZZ_BOUND = 600.0


async def test_client_that_never_reads(
    tmp_path: Path, make_module_dir: MakeModuleDir, figures: Figures
) -> None:
    """A client that subscribes to everything, then sends thousands of calls (some with
    big answers) and never reads: the gateway gives up on it while it still reads
    nothing (its bus subscription is dropped, so what it holds is bounded), and when it
    finally reads it finds, after what the network had buffered, the close 4408 "too
    slow" from the server; the answers that did not fit were dropped. Other clients keep
    getting their events and responses meanwhile."""
    async with gateway_scenario(tmp_path, make_module_dir, figures, "never-reading client") as (
        gw,
        row,
    ):
        bus = gw.daemon.bus
        async with ws_client(gw) as lazy, ws_client(gw) as good:
            await ready(lazy)
            await ready(good)
            await send(good, {"type": "subscribe", "module": "healthy-a", "name": "tick"})
            await send(lazy, {"type": "subscribe", "module": "*", "name": "*",
                              "request_id": "all"})  # fmt: skip
            await receive_until(lazy, lambda m: is_response(m, "all"))
            held = bus.statistics().subscriptions
            asked = 0

            async def flood_itself() -> None:
                nonlocal asked
                big = "x" * BIG_ECHO
                for i in range(3000 + BIG_ECHOES):
                    call_: dict[str, Any] = {"type": "call", "request_id": f"r{i}",
                                             "module": "vessel", "name": "ping"}  # fmt: skip
                    if i >= 3000:
                        call_.update(module=VICTIM, name="echo", params={"pad": big})
                    await send(lazy, call_)
                    asked += 1

            # From here on `lazy` reads nothing: it floods itself with answers.
            with trio.fail_after(SLOW_CLIENT_BOUND):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(flood_itself)
                    while bus.statistics().subscriptions >= held:
                        await trio.sleep(0.02)
                    # Given up on: the gateway stops reading it too, so sending more may
                    # block for good.
                    nursery.cancel_scope.cancel()
            row.bad_inputs += asked
            for _ in range(20):
                event = await receive(good)
                assert event["type"] == "event", event
                assert event["module"] == "healthy-a", event
            assert (await call(good, "healthy-b", "echo", {"ok": 1}))["data"] == {"ok": 1}
            # Reading at last: what the network buffered, then the server's close.
            answers: set[str] = set()
            with trio.fail_after(SLOW_CLIENT_BOUND):
                try:
                    while True:
                        message = json.loads(await lazy.get_message())
                        if message["type"] == "response" and message["request_id"] != "all":
                            assert message["success"], message
                            answers.add(message["request_id"])
                except ConnectionClosed as exc:
                    close = exc.reason
                    assert close is not None
                    code, reason = close.code, close.reason or ""
            assert code == 4408, (code, reason)
            assert re.fullmatch(r"too slow: \d+ messages queued", reason), reason
            # What did not fit in its queue was dropped, not kept for it.
            assert len(answers) < asked, (len(answers), asked)
            assert (await call(good, "victim", "echo", {"ok": 2}))["data"] == {"ok": 2}
        async with ws_client(gw) as conn:
            await ready(conn)
            assert (await call(conn, "healthy-a", "echo", {"ok": 3}))["data"] == {"ok": 3}


async def test_hundreds_of_connections_opened_and_dropped(
    tmp_path: Path, make_module_dir: MakeModuleDir, figures: Figures
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
    tmp_path: Path, make_module_dir: MakeModuleDir, figures: Figures
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
    tmp_path: Path, make_module_dir: MakeModuleDir, figures: Figures, built_guests: Any
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


# -- upload fuzz ------------------------------------------------------------------------

#: A component with nothing in it: valid WebAssembly, but not of our world.
EMPTY_COMPONENT = b"\x00asm\x0d\x00\x01\x00"
#: A core module header: WebAssembly, but not a component.
CORE_MODULE = b"\x00asm\x01\x00\x00\x00"
#: How much of the real testkit component the fuzzer cuts and mutates: its first sections
#: (types, imports) are small, so cuts land on section boundaries too, yet no prefix this
#: short holds its core module, so nothing takes long to compile.
REAL_PREFIX = 64 * 1024
UPLOAD_EXAMPLES = 400
UPLOAD_IDS = ["upload-x", "upload-y", VICTIM, "vessel", "../x", "", "UP", "a" * 70, "-x",
              ".staging-x", "healthy-a/../x", "x\x00"]  # fmt: skip


PART_FILENAMES = [None, "module.wasm", "manifest.json", "../../x", ""]
PART_TYPES = [None, "application/octet-stream", "application/wasm", "text/plain; charset=latin-1"]


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with up to three cuts, byte flips, insertions or deletions."""
    buf = bytearray(data)
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["cut", "flip", "insert", "delete"]))
        i = draw(st.integers(0, max(len(buf) - 1, 0)))
        if op == "insert" or not buf:
            buf[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "cut":
            del buf[i:]
        elif op == "flip":
            buf[i] ^= draw(st.integers(1, 255))
        else:
            del buf[i : i + draw(st.integers(1, 16))]
    return bytes(buf)


@st.composite
def manifests(draw: st.DrawFn) -> bytes:
    """A manifest: near-valid (fields dropped, mistyped, unknown), mutated bytes, any JSON
    or any bytes."""
    doc: dict[str, Any] = {
        "id": draw(st.sampled_from(UPLOAD_IDS) | text),
        "name": "x",
        "version": "1",
        "api_version": draw(st.sampled_from([1, 1, 0, 2, 99, -1, 2**64, "1", None, 1.5])),
    }
    for _ in range(draw(st.integers(0, 2))):
        field = draw(st.sampled_from(["name", "version", "permissions", "limits", "extra",
                                      "description", "api_version"]))  # fmt: skip
        if draw(st.booleans()):
            doc.pop(field, None)
        else:
            doc[field] = draw(json_values)
    encoded = json.dumps(doc).encode()
    return draw(
        st.just(encoded)
        | mutated(encoded)
        | json_values.map(lambda v: json.dumps(v).encode())
        | st.binary(max_size=64)
        | st.just(b"[" * 5000)  # deep nesting
    )


def zip_bundle(manifest: bytes, wasm: bytes) -> bytes:
    """A module folder zipped: a bundle format the endpoint does not take."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as bundle:
        bundle.writestr("manifest.json", manifest)
        bundle.writestr("module.wasm", wasm)
    return out.getvalue()


def wasm_bodies(real: bytes) -> st.SearchStrategy[bytes]:
    """Anything but a component of our world: cut and mutated real components, headers
    with junk after them, a valid but empty component, random bytes, zips."""
    return st.one_of(
        st.integers(0, len(real)).map(lambda n: real[:n]),
        mutated(real),
        st.sampled_from([b"", EMPTY_COMPONENT, CORE_MODULE]),
        st.tuples(st.sampled_from([EMPTY_COMPONENT, CORE_MODULE]), st.binary(max_size=64)).map(
            b"".join
        ),
        st.binary(max_size=256),
        st.integers(0, 4096).map(lambda n: zip_bundle(b"{}", real[:n])),
    )


def _part(name: str | None, filename: str | None, content_type: str | None,
          content: bytes) -> bytes:  # fmt: skip
    disposition = "form-data"
    if name is not None:
        disposition += f'; name="{name}"'
    if filename is not None:
        disposition += f'; filename="{filename}"'
    head = f"Content-Disposition: {disposition}\r\n"
    if content_type is not None:
        head += f"Content-Type: {content_type}\r\n"
    return head.encode() + b"\r\n" + content


@st.composite
def valid_manifests(draw: st.DrawFn) -> bytes:
    """A manifest that passes validation, for an id that is free or installed."""
    doc: dict[str, Any] = {
        "id": draw(st.sampled_from(["upload-x", "upload-y", VICTIM])),
        "name": draw(st.text(min_size=1, max_size=20)),
        "version": draw(st.sampled_from(["1", "0.1.0", "2024.1"])),
        "api_version": 1,
    }
    if draw(st.booleans()):
        doc["permissions"] = draw(st.sampled_from([{}, {"storage": True}, {"timers": True}]))
    if draw(st.booleans()):
        doc["limits"] = {"memory_mb": draw(st.integers(16, 256))}
    return json.dumps(doc).encode()


def _multipart(boundary: str, parts: list[bytes], *, closed: bool) -> bytes:
    mark = b"--" + boundary.encode()
    body = b"".join(mark + b"\r\n" + part + b"\r\n" for part in parts)
    return body + mark + b"--\r\n" if closed else body


@st.composite
def uploads(draw: st.DrawFn, real: bytes) -> tuple[str | None, str | None, bytes]:
    """(``?replace=``, Content-Type, body) of a POST /api/modules that must be refused.

    Half are well-formed requests with a valid manifest, so the wasm reaches the
    component check (cut and mutated real components, wrong worlds, junk); a quarter
    are well-formed with a broken manifest; the rest break the framing: fields renamed,
    dropped, doubled or cut short, mutated bytes, wrong content types, raw bodies.
    """
    boundary = draw(st.sampled_from(["b0undary", "x", "----WebKitFormBoundary7MA4YWxk"]))
    multipart = f"multipart/form-data; boundary={boundary}"
    mode = draw(st.sampled_from(["wasm", "wasm", "manifest", "framing"]))
    wasm = draw(wasm_bodies(real))
    if mode != "framing":
        manifest = draw(valid_manifests() if mode == "wasm" else manifests())
        parts = [_part("manifest", "manifest.json", "application/json", manifest),
                 _part("wasm", "module.wasm", "application/wasm", wasm)]  # fmt: skip
        replace = draw(st.sampled_from([None, "true", "false"]))
        return replace, multipart, _multipart(boundary, parts, closed=True)
    manifest = draw(manifests() | valid_manifests())
    replace = draw(st.sampled_from([None, "true", "", "maybe"]))
    if draw(st.integers(0, 5)) == 0:
        body = draw(st.sampled_from([zip_bundle(manifest, wasm), wasm, manifest]))
    else:
        names = ["manifest", "wasm", "Manifest", "", "x", 'wa"sm', None]
        fields: list[tuple[str | None, bytes]] = [("manifest", manifest), ("wasm", wasm)]
        if draw(st.booleans()):  # a field renamed, dropped, doubled or reordered
            fields = draw(st.permutations([*fields, (draw(st.sampled_from(names)), wasm)]))
            fields = fields[: draw(st.integers(0, len(fields)))]
        parts = [
            _part(
                name,
                draw(st.sampled_from(PART_FILENAMES)),
                draw(st.sampled_from(PART_TYPES)),
                content,
            )
            for name, content in fields
        ]
        body = _multipart(boundary, parts, closed=draw(st.booleans()))
        if draw(st.booleans()):
            body = draw(mutated(body))
    content_type = draw(
        st.sampled_from([multipart] * 4 + [
            None, "multipart/form-data", "multipart/form-data; boundary=other",
            "multipart/mixed; boundary=" + boundary, "application/zip", "application/wasm",
            "application/octet-stream", "application/json", "text/plain",
            "application/x-www-form-urlencoded",
        ])
    )  # fmt: skip
    return replace, content_type, body


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


async def test_upload_fuzz(
    tmp_path: Path, make_module_dir: MakeModuleDir, figures: Figures, built_guests: Any
) -> None:
    """Hundreds of generated uploads (cut and mutated real components, valid components of
    the wrong world, mutated manifests and multipart framing, zip bundles, wrong content
    types, ``?replace`` on an installed id): each is refused with a 4xx JSON error in
    time (never a 5xx, never a hang), nothing half-installed is left in the module list
    or the data dir, the module an upload tried to replace keeps running, and the
    healthy modules never notice."""
    real = Path(built_guests["testkit"]).read_bytes()[:REAL_PREFIX]
    async with (
        gateway_scenario(tmp_path, make_module_dir, figures, "upload fuzz") as (gw, row),
        httpx.AsyncClient(base_url=gw.base_url, headers=gw.auth, timeout=15) as client,
    ):
        manager = gw.daemon.manager
        ids, tree, top = manager.ids(), _tree(modules_dir(tmp_path)), _tree(tmp_path)
        top = [p for p in top if "/" not in p]
        statuses: Counter[int] = Counter()

        async def one(replace: str | None, content_type: str | None, body: bytes) -> None:
            headers = {"content-type": content_type} if content_type else {}
            params = {"replace": replace} if replace is not None else {}
            with trio.fail_after(15):
                r = await client.post("/api/modules", content=body, headers=headers,
                                      params=params)  # fmt: skip
            statuses[r.status_code] += 1
            _check_error(r)
            assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])

        @settings(max_examples=UPLOAD_EXAMPLES, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        @given(uploads(real))
        def examples(upload: tuple[str | None, str | None, bytes]) -> None:
            trio.from_thread.run(one, *upload)

        with trio.fail_after(120):
            await trio.to_thread.run_sync(examples)
        sent = sum(statuses.values())
        row.bad_inputs += sent
        assert sent >= UPLOAD_EXAMPLES, statuses
        # Nothing half-installed: the same modules, the same files, no staging leftovers.
        assert manager.ids() == ids
        assert manager.refused == []
        assert _tree(modules_dir(tmp_path)) == tree
        assert [p for p in _tree(tmp_path) if "/" not in p] == top
        response = await client.get("/api/modules")
        assert response.status_code == 200
        assert [m["state"] for m in response.json()["modules"]] == ["running"] * 3
        assert (await client.post(f"/api/modules/{VICTIM}/call/echo", json={"ok": 1})).json() == {
            "data": {"ok": 1}
        }


async def test_truncated_oversized_post_does_not_stop_the_gateway(
    tmp_path: Path, make_module_dir: MakeModuleDir, figures: Figures
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
