"""REST: a module's egress audit (GET /api/modules/<id>/egress), against a real daemon
whose real guest fetches and opens websockets to real servers on 127.0.0.1."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import trio

from tests.fixture_types import MakeModuleDir
from tests.runtime.harness import call, call_error

from ..servers import serve_http, serve_ws_echo
from .harness import assert_error, open_api


async def test_egress_counts_requests_connections_bytes_and_denials_per_destination(
    tmp_path: Path, make_module_dir: MakeModuleDir, nursery: trio.Nursery
) -> None:
    base = await serve_http(nursery)
    http_port = int(base.rsplit(":", 1)[1])
    ws_port = await serve_ws_echo(nursery)
    make_module_dir(
        tmp_path,
        "testkit",
        module_id="alpha",
        permissions={
            "network": {
                "http": True,
                "websocket": True,
                "hosts": [f"http://127.0.0.1:{http_port}", f"ws://127.0.0.1:{ws_port}"],
            }
        },
    )
    before = int(time.time() * 1000)
    async with open_api(tmp_path) as (gw, client):
        daemon = gw.daemon
        fetch = {"method": "POST", "url": f"{base}/echo", "headers": [], "body": "hello"}
        answers = [await call(daemon, "alpha", "http", fetch) for _ in range(2)]
        denied = {**fetch, "url": f"http://localhost:{http_port}/echo"}
        await call_error(daemon, "alpha", "http", denied)
        handle = (await call(daemon, "alpha", "ws_connect", {"url": f"ws://127.0.0.1:{ws_port}/"}))[
            "handle"
        ]
        await call(daemon, "alpha", "ws_send", {"handle": handle, "message": "hi"})
        with trio.fail_after(30):
            while not (await call(daemon, "alpha", "ws_messages"))["messages"]:
                await trio.sleep(0.02)

        response = await client.get("/api/modules/alpha/egress")
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["running"] is True
        by_dest: dict[str, dict[str, Any]] = {e["destination"]: e for e in body["destinations"]}
        assert set(by_dest) == {
            f"http://127.0.0.1:{http_port}",
            f"http://localhost:{http_port}",
            f"ws://127.0.0.1:{ws_port}",
        }
        http = by_dest[f"http://127.0.0.1:{http_port}"]
        assert (http["requests"], http["connections"], http["denied"]) == (2, 0, 0)
        assert http["bytes_sent"] == 2 * len(b"hello")
        assert http["bytes_received"] == sum(len(a["body"].encode()) for a in answers)
        assert http["last_used"] >= before
        refused = by_dest[f"http://localhost:{http_port}"]
        assert (refused["requests"], refused["denied"], refused["last_used"]) == (0, 1, None)
        assert refused["last_denied"] >= before
        ws = by_dest[f"ws://127.0.0.1:{ws_port}"]
        assert (ws["connections"], ws["requests"], ws["denied"]) == (1, 0, 0)
        assert (ws["bytes_sent"], ws["bytes_received"]) == (len("hi"), len("echo:hi"))

        assert_error(await client.get("/api/modules/nosuch/egress"), 404, "unknown_module")
        await client.post("/api/modules/alpha/disable")
        with trio.fail_after(30):
            while (await client.get("/api/modules/alpha")).json()["state"] != "disabled":
                await trio.sleep(0.05)
        stopped = (await client.get("/api/modules/alpha/egress")).json()
        assert stopped == {"running": False, "destinations": []}
