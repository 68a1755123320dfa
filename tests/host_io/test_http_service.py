"""HttpService against a real Hypercorn server on 127.0.0.1: what the guest sends arrives,
what the server answers comes back, and every refusal names its reason."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import pytest
import trio

from vessel.host._hosterrors import HostCallError
from vessel.host._http import HttpService

#: Bound on every test; the slowest legitimate wait here is a 0.3 s timeout.
DEADLINE = 10


@asynccontextmanager
async def running(**settings: Any) -> AsyncIterator[HttpService]:
    service = HttpService(**settings)
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        yield service
        nursery.cancel_scope.cancel()


async def test_get_with_headers(http_base: str) -> None:
    """A GET carries the guest's headers; status, headers and body come back as text."""
    with trio.fail_after(DEADLINE):
        async with running() as http:
            status, headers, body = await http.fetch(
                "GET", f"{http_base}/echo", [("X-Token", "abc"), ("Accept", "text/plain")], None
            )
    assert status == 200
    assert ("x-reply", "yes") in headers
    assert ("content-type", "application/json") in headers
    echoed = json.loads(body)
    assert echoed["method"] == "GET"
    assert ["x-token", "abc"] in echoed["headers"]
    assert ["accept", "text/plain"] in echoed["headers"]
    assert echoed["body"] == ""


async def test_post_body_is_sent_as_utf8(http_base: str) -> None:
    """A POST body reaches the server as UTF-8 with a correct content-length; the method
    may be given in any case."""
    payload = json.dumps({"temperature": "21 °C"})
    with trio.fail_after(DEADLINE):
        async with running() as http:
            status, _, body = await http.fetch(
                "post", f"{http_base}/echo", [("Content-Type", "application/json")], payload
            )
    assert status == 200
    echoed = json.loads(body)
    assert echoed["method"] == "POST"
    assert echoed["body"] == payload
    assert ["content-length", str(len(payload.encode()))] in echoed["headers"]


async def test_error_status_is_a_response(http_base: str) -> None:
    """404 and 500 are answers for the guest to inspect, not host errors."""
    with trio.fail_after(DEADLINE):
        async with running() as http:
            missing = await http.fetch("GET", f"{http_base}/status/404", [], None)
            broken = await http.fetch("DELETE", f"{http_base}/status/500", [], None)
    assert (missing[0], missing[2]) == (404, '{"error": "not here"}')
    assert broken[0] == 500


async def test_redirects_are_followed_up_to_the_limit(http_base: str) -> None:
    """Up to max_redirects hops land on the final response; one more is an error."""
    with trio.fail_after(DEADLINE):
        async with running(max_redirects=3) as http:
            status, _, body = await http.fetch("GET", f"{http_base}/redirect/3", [], None)
            assert status == 200
            assert json.loads(body)["method"] == "GET"
            url = f"{http_base}/redirect/4"
            with pytest.raises(HostCallError) as excinfo:
                await http.fetch("GET", url, [], None)
    assert str(excinfo.value) == f"http-fetch GET {url}: more than 3 redirects"


@pytest.mark.parametrize("query", ["", "?chunked"])
async def test_oversized_response_is_refused(http_base: str, query: str) -> None:
    """A body over max_response_bytes is an error naming the limit, whether the server
    announces its length or streams it; a body at the limit is fine."""
    with trio.fail_after(DEADLINE):
        async with running(max_response_bytes=5000) as http:
            status, _, body = await http.fetch("GET", f"{http_base}/big/5000{query}", [], None)
            assert (status, len(body)) == (200, 5000)
            url = f"{http_base}/big/5001{query}"
            with pytest.raises(HostCallError) as excinfo:
                await http.fetch("GET", url, [], None)
    assert str(excinfo.value) == (
        f"http-fetch GET {url}: response body is larger than the limit of 5000 bytes"
    )


async def test_declared_charset_is_honoured(http_base: str) -> None:
    """A body in the charset the response declares is decoded with that charset."""
    with trio.fail_after(DEADLINE):
        async with running() as http:
            _, _, body = await http.fetch("GET", f"{http_base}/latin1", [], None)
    assert body == "café"


async def test_connection_refused(refused_port: int) -> None:
    """A refused connection is a HostCallError naming method, URL and the OS's reason."""
    url = f"http://127.0.0.1:{refused_port}/x"
    with trio.fail_after(DEADLINE):
        async with running() as http:
            with pytest.raises(HostCallError) as excinfo:
                await http.fetch("GET", url, [], None)
    assert str(excinfo.value) == f"http-fetch GET {url}: connection refused"


async def test_whole_fetch_is_bounded(nursery: trio.Nursery) -> None:
    """A server that never answers cannot hold the guest past ``timeout``."""

    async def mute(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    listeners = await nursery.start(partial(trio.serve_tcp, mute, 0, host="127.0.0.1"))
    url = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}/"
    with trio.fail_after(DEADLINE):
        async with running(timeout=0.3) as http:
            with pytest.raises(HostCallError) as excinfo:
                await http.fetch("GET", url, [], None)
    assert str(excinfo.value) == f"http-fetch GET {url}: timed out after 0.3 s"


@pytest.mark.parametrize(
    ("method", "url", "headers", "message"),
    [
        ("GET", "file:///etc/passwd", [], "url scheme 'file' is not allowed (http or https only)"),
        ("GET", "ftp://127.0.0.1/", [], "url scheme 'ftp' is not allowed (http or https only)"),
        ("GET", "http:///path", [], "invalid url 'http:///path'"),
        ("CONNECT", "http://127.0.0.1/", [], "method 'CONNECT' is not allowed (GET, HEAD,"),
        ("GET", "http://127.0.0.1/", [("Bad Name", "x")], "invalid header name 'Bad Name'"),
        (
            "GET",
            "http://127.0.0.1/",
            [("X-A", "ok\r\nX-Injected: 1")],
            "header 'X-A' has a value that is not printable ASCII",
        ),
        (
            "POST",
            "http://127.0.0.1/",
            [("Content-Length", "3")],
            "header 'Content-Length' is set by the host from the body; remove it",
        ),
    ],
)
async def test_bad_requests_are_refused_before_any_io(
    method: str, url: str, headers: list[tuple[str, str]], message: str
) -> None:
    """Schemes other than http(s), unknown methods and malformed or framing headers are
    refused with a message that says what is wrong, before anything is sent."""
    with trio.fail_after(DEADLINE):
        async with running() as http:
            with pytest.raises(HostCallError) as excinfo:
                await http.fetch(method, url, headers, "abc")
    assert str(excinfo.value).startswith(f"http-fetch: {message}")


async def test_stopped_service_refuses() -> None:
    """After run ends, fetch fails with a clear error instead of using a closed client."""
    with trio.fail_after(DEADLINE):
        async with running() as http:
            pass
        with pytest.raises(HostCallError, match="http is stopped"):
            await http.fetch("GET", "http://127.0.0.1/", [], None)
