"""DNS rebinding: a page on a name the attacker controls, resolved to this machine, talks
to the gateway with an Origin that matches its Host. Before the allowed-hosts check
(vessel/gateway/_auth.py host_allowed) the WebSocket origin check compared Origin with
Host and let it in, so a user who typed the token into that page gave it the daemon."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import trio
from trio_websocket import wrap_client_stream

from tests.fixture_types import MakeModuleDir
from tests.gateway.harness import Gateway, running_gateway
from tests.gateway.ws_client import closed_with

from ._figures import Figures
from ._resources import watch_daemon


async def request_as(gw: Gateway, host: str, path: str) -> httpx.Response:
    """GET ``path`` from the gateway (on 127.0.0.1) with ``Host: host`` and a matching
    Origin, as a browser on a page of that host would send it."""
    port = gw.base_url.rsplit(":", 1)[1]
    headers = {"Host": f"{host}:{port}", "Origin": f"http://{host}:{port}", **gw.auth}
    async with httpx.AsyncClient(base_url=gw.base_url, timeout=15) as client:
        return await client.get(path, headers=headers)


async def ws_close_as(gw: Gateway, host: str) -> tuple[int, str]:
    """Open /ws with ``Host: host`` and a matching Origin; the server's close."""
    port = gw.base_url.rsplit(":", 1)[1]
    origin = [(b"Origin", f"http://{host}:{port}".encode())]
    with trio.fail_after(15):
        stream = await trio.open_tcp_stream("127.0.0.1", int(port))
        async with stream, trio.open_nursery() as nursery:
            conn = await wrap_client_stream(
                nursery, stream, f"{host}:{port}", "/ws", extra_headers=origin
            )
            return await closed_with(conn)


async def test_a_host_the_gateway_does_not_serve_is_refused(
    tmp_path: Path, make_module_dir: MakeModuleDir, figures: Figures
) -> None:
    """Requests for a name the attacker controls are refused 421 ``host_not_allowed``
    on every path (the dashboard, /healthz, the API with the token) and the WebSocket
    is closed 4403 before it could log in; IP addresses, localhost, the machine's own
    name and names given with ``--allowed-host`` are served."""
    row = figures.row("DNS rebinding (Host)")
    hosts = frozenset({"vessel.home.arpa"})
    async with running_gateway(tmp_path, allowed_hosts=hosts) as gw, watch_daemon(row):
        for path in ("/", "/healthz", "/api/modules"):
            response = await request_as(gw, "evil.example", path)
            assert response.status_code == 421, (path, response.text)
            body = response.json()
            assert body["code"] == "host_not_allowed"
            assert "--allowed-host" in body["message"]
            row.bad_inputs += 1
            row.answered += 1
        code, reason = await ws_close_as(gw, "evil.example")
        assert code == 4403, (code, reason)
        assert "host not allowed" in reason
        row.bad_inputs += 1
        row.answered += 1

        served = ["127.0.0.1", "localhost", "vessel.home.arpa", socket.gethostname()]
        for host in served:
            response = await request_as(gw, host, "/api/modules")
            assert response.status_code == 200, (host, response.text)
            row.answered += 1
