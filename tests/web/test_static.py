"""The gateway serves web/ at / — and nothing else, and without changing the API."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import httpx
import trio

from ..gateway.harness import Gateway, running_gateway

WEB = Path(__file__).resolve().parents[2] / "web"
WAIT = 10.0


def _complete(response: bytes) -> bool:
    head, sep, body = response.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


async def raw_get(gw: Gateway, target: str, *, token: bool = False) -> tuple[int, bytes]:
    """Send ``target`` byte for byte (no client-side normalisation of ``..``): the
    status and the whole response (read up to its Content-Length: Hypercorn leaves the
    closing to the client)."""
    url = urlsplit(gw.base_url)
    assert url.hostname is not None
    assert url.port is not None
    auth = f"Authorization: Bearer {gw.token}\r\n" if token else ""
    request = f"GET {target} HTTP/1.1\r\nHost: {url.netloc}\r\n{auth}Connection: close\r\n\r\n"
    with trio.fail_after(WAIT):
        stream = await trio.open_tcp_stream(url.hostname, url.port)
        async with stream:
            await stream.send_all(request.encode())
            response = b""
            while not _complete(response):
                chunk = await stream.receive_some(65536)
                if not chunk:
                    break
                response += chunk
    status = int(response.split(b" ", 2)[1])
    return status, response


async def test_index_and_assets_have_their_types_and_revalidate(tmp_path: Path) -> None:
    """/ is index.html and each asset comes with the content type a browser needs (ES
    modules only run as JavaScript), no-cache with an ETag (a reload revalidates, so a
    new version is never hidden by a stale cache), nosniff, and a strict CSP on the page."""
    async with (
        running_gateway(tmp_path) as gw,
        httpx.AsyncClient(base_url=gw.base_url, timeout=WAIT) as client,
    ):
        index = await client.get("/")
        assert index.status_code == 200
        assert index.headers["content-type"] == "text/html; charset=utf-8"
        assert index.content == (WEB / "index.html").read_bytes()
        assert "default-src 'self'" in index.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in index.headers["content-security-policy"]
        expected = {
            "/app.js": "text/javascript; charset=utf-8",
            "/vessel.js": "text/javascript; charset=utf-8",
            "/style.css": "text/css; charset=utf-8",
            "/icon.svg": "image/svg+xml",
            "/index.html": "text/html; charset=utf-8",
        }
        for path, content_type in expected.items():
            response = await client.get(path)
            assert response.status_code == 200, path
            assert response.headers["content-type"] == content_type, path
            assert response.headers["cache-control"] == "no-cache", path
            assert response.headers["x-content-type-options"] == "nosniff", path
            assert response.content == (WEB / path[1:]).read_bytes(), path

        etag = index.headers["etag"]
        again = await client.get("/", headers={"If-None-Match": etag})
        assert again.status_code == 304
        assert again.content == b""
        head = await client.head("/app.js")
        assert head.status_code == 200
        assert head.headers["content-type"] == "text/javascript; charset=utf-8"


async def test_only_files_of_web_are_served(tmp_path: Path) -> None:
    """No path leaves web/ (dot segments, encoded or not, backslashes), there is no
    directory listing, and only known file types are served: each is a JSON 404."""
    secret = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_bytes()
    async with running_gateway(tmp_path) as gw:
        for target in [
            "/../pyproject.toml",
            "/%2e%2e/pyproject.toml",
            "/..%2fpyproject.toml",
            "/%2e%2e%2fpyproject.toml",
            "/..%5cpyproject.toml",
            "/web/index.html",
            "/web/",
            "/.git/config",
            "/.gitignore",
            "/index.html/",
            "/missing.js",
            "/app.js.map",
            "/README.md",
            "/_static.py",
            "/tests/web/harness.py",
        ]:
            status, response = await raw_get(gw, target)
            assert status in (400, 404), (target, response[:200])
            assert secret not in response, target
            assert b"<html" not in response.lower(), target


async def test_the_api_and_health_are_unchanged_by_the_dashboard(tmp_path: Path) -> None:
    """The dashboard's routes take nothing from the API: /api still needs the token for
    every path, unknown /api paths stay 404 for every method, a malformed module id is
    still unknown_module, and /healthz still answers."""
    async with (
        running_gateway(tmp_path) as gw,
        httpx.AsyncClient(base_url=gw.base_url, timeout=WAIT) as client,
    ):
        assert (await client.get("/healthz")).json()["status"] == "ok"
        refused = await client.get("/api/modules")
        assert refused.status_code == 401
        assert (await client.get("/api/app.js")).status_code == 401
        for method in ("GET", "POST", "PUT", "DELETE"):
            response = await client.request(method, "/api", headers=gw.auth)
            assert response.status_code == 404, method
            assert response.json()["code"] == "not_found"
        status, _ = await raw_get(gw, "/api/modules/..%2Fetc")
        assert status == 401  # no token: refused before anything else
        status, raw = await raw_get(gw, "/api/modules/..%2Fetc", token=True)
        assert status == 404
        assert b'"unknown_module"' in raw
        bad_id = await client.get("/api/modules/UPPER", headers=gw.auth)
        assert bad_id.json()["code"] == "unknown_module"
        for method in ("POST", "PUT", "DELETE"):
            response = await client.request(method, "/", headers=gw.auth)
            assert response.status_code == 405, method
