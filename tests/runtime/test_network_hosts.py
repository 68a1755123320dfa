"""``permissions.network.hosts``: a real guest in a real module process reaches exactly the
destinations its manifest names, on real servers on 127.0.0.1.

127.0.0.1 and localhost are the same machine but different hosts as written, and another
port is another destination: that is how each test tells allowed from denied.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import trio

from tests.fixture_types import MakeModuleDir

from ..servers import serve_http, serve_ws_echo
from .harness import call, call_error, running_daemon

DENIED = "capability denied: "
FIELD = "is not declared in permissions.network.hosts of module 'alpha'"


def _fetch(url: str) -> dict[str, Any]:
    return {"method": "GET", "url": url, "headers": [], "body": None}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def _redirector(nursery: trio.Nursery, location: str) -> str:
    """A bare HTTP server that answers every request with a 302 to ``location``."""

    async def handler(stream: trio.SocketStream) -> None:
        async with stream:
            data = b""
            while b"\r\n\r\n" not in data and (chunk := await stream.receive_some()):
                data += chunk
            await stream.send_all(
                f"HTTP/1.1 302 Found\r\nLocation: {location}\r\n"
                "Content-Length: 0\r\nConnection: close\r\n\r\n".encode()
            )

    listeners = await nursery.start(trio.serve_tcp, handler, 0)
    port = listeners[0].socket.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _denials(daemon: Any) -> list[str]:
    """The module's log lines denying a destination (the testkit's on-load also tries
    storage, which these modules are not granted)."""
    lines = daemon.manager.logs("alpha")
    return [line.message for line in lines if DENIED in line.message and "hosts" in line.message]


async def test_http_fetch_reaches_only_the_listed_hosts(
    tmp_path: Path, make_module_dir: MakeModuleDir, nursery: trio.Nursery
) -> None:
    """An entry for 127.0.0.1 on the server's port lets the fetch through; the same server
    as ``localhost``, or another port, is denied with the destination and the field named,
    and the module's log says so."""
    base = await serve_http(nursery)
    port = int(base.rsplit(":", 1)[1])
    other = _free_port()
    make_module_dir(
        tmp_path,
        "testkit",
        module_id="alpha",
        permissions={"network": {"http": True, "hosts": [f"http://127.0.0.1:{port}"]}},
    )
    async with running_daemon(tmp_path) as daemon:
        response = await call(daemon, "alpha", "http", _fetch(f"{base}/echo"))
        assert response["status"] == 200
        error = await call_error(daemon, "alpha", "http", _fetch(f"http://localhost:{port}/echo"))
        assert error.message == f"{DENIED}http-fetch to 'http://localhost:{port}' {FIELD}"
        error = await call_error(daemon, "alpha", "http", _fetch(f"http://127.0.0.1:{other}/echo"))
        assert error.message == f"{DENIED}http-fetch to 'http://127.0.0.1:{other}' {FIELD}"
        assert _denials(daemon) == [
            f"{DENIED}http-fetch to 'http://localhost:{port}' {FIELD}",
            f"{DENIED}http-fetch to 'http://127.0.0.1:{other}' {FIELD}",
        ]


async def test_a_redirect_is_checked_against_the_list(
    tmp_path: Path, make_module_dir: MakeModuleDir, nursery: trio.Nursery
) -> None:
    """A redirect to a listed origin is followed; one to a host not listed ends the fetch
    with a denial that names where it was sent."""
    target = await serve_http(nursery)
    target_port = int(target.rsplit(":", 1)[1])
    elsewhere_port = _free_port()
    to_target = await _redirector(nursery, f"{target}/echo")
    to_elsewhere = await _redirector(nursery, f"http://127.0.0.1:{elsewhere_port}/echo")
    hosts = [f"http://127.0.0.1:{target_port}"]
    hosts += [f"http://127.0.0.1:{u.rsplit(':', 1)[1]}" for u in (to_target, to_elsewhere)]
    make_module_dir(
        tmp_path,
        "testkit",
        module_id="alpha",
        permissions={"network": {"http": True, "hosts": hosts}},
    )
    async with running_daemon(tmp_path) as daemon:
        inside = await call(daemon, "alpha", "http", _fetch(f"{to_target}/"))
        assert inside["status"] == 200
        assert json.loads(inside["body"])["method"] == "GET"
        error = await call_error(daemon, "alpha", "http", _fetch(f"{to_elsewhere}/"))
        assert error.message == (
            f"{DENIED}http-fetch redirect to 'http://127.0.0.1:{elsewhere_port}' {FIELD}"
        )
        assert len(_denials(daemon)) == 1


async def test_wildcard_port_and_websocket_connect(
    tmp_path: Path, make_module_dir: MakeModuleDir, nursery: trio.Nursery
) -> None:
    """``ws://127.0.0.1:*`` allows any port on 127.0.0.1 and nothing on localhost."""
    port = await serve_ws_echo(nursery)
    make_module_dir(
        tmp_path,
        "testkit",
        module_id="alpha",
        permissions={"network": {"websocket": True, "hosts": ["ws://127.0.0.1:*"]}},
    )
    async with running_daemon(tmp_path) as daemon:
        handle = (await call(daemon, "alpha", "ws_connect", {"url": f"ws://127.0.0.1:{port}/"}))[
            "handle"
        ]
        assert isinstance(handle, int)
        assert handle > 0
        error = await call_error(daemon, "alpha", "ws_connect", {"url": f"ws://localhost:{port}/"})
        assert error.message == f"{DENIED}websocket-connect to 'ws://localhost:{port}' {FIELD}"
        assert _denials(daemon) == [error.message]


async def test_a_setting_entry_follows_the_settings_current_value(
    tmp_path: Path, make_module_dir: MakeModuleDir, nursery: trio.Nursery
) -> None:
    """``{settings.url}`` allows the scheme, host and port of the setting's current value,
    ws and http being one origin: its default first, then what the admin sets, at once.
    The module reads the setting without the storage capability."""
    port = await serve_ws_echo(nursery)
    other = await serve_ws_echo(nursery)
    make_module_dir(
        tmp_path,
        "testkit",
        module_id="alpha",
        permissions={"network": {"websocket": True, "hosts": ["{settings.url}"]}},
        manifest={"settings": {"url": {"default": f"http://127.0.0.1:{port}/ui"}}},
    )
    async with running_daemon(tmp_path) as daemon:
        first = await call(daemon, "alpha", "ws_connect", {"url": f"ws://127.0.0.1:{port}/ws"})
        assert isinstance(first["handle"], int)
        denied = await call_error(
            daemon, "alpha", "ws_connect", {"url": f"ws://127.0.0.1:{other}/"}
        )
        assert denied.message == (f"{DENIED}websocket-connect to 'ws://127.0.0.1:{other}' {FIELD}")
        daemon.manager.config_set("alpha", "url", f"ws://127.0.0.1:{other}/api/websocket")
        now = await call(daemon, "alpha", "ws_connect", {"url": f"ws://127.0.0.1:{other}/"})
        assert isinstance(now["handle"], int)
        before = await call_error(daemon, "alpha", "ws_connect", {"url": f"ws://127.0.0.1:{port}/"})
        assert before.message == f"{DENIED}websocket-connect to 'ws://127.0.0.1:{port}' {FIELD}"


async def test_without_hosts_any_host_is_allowed(
    tmp_path: Path, make_module_dir: MakeModuleDir, nursery: trio.Nursery
) -> None:
    """A manifest without ``hosts`` keeps its old meaning: localhost is reachable too."""
    base = await serve_http(nursery)
    port = int(base.rsplit(":", 1)[1])
    make_module_dir(tmp_path, "testkit", module_id="alpha", permissions={"network": {"http": True}})
    async with running_daemon(tmp_path) as daemon:
        response = await call(daemon, "alpha", "http", _fetch(f"http://localhost:{port}/echo"))
        assert response["status"] == 200
        assert _denials(daemon) == []
