"""A dashboard drives Home Assistant through the real gateway's /ws."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import trio

from tests.fixture_types import MakeModuleDir

from ..cli._support import base_env, ctl
from ..gateway.harness import running_gateway
from ..gateway.ws_client import call, is_event, is_response, ready, receive_until, send, ws_client
from .fake_ha import open_fake_ha
from .test_home_assistant import HA, LIGHT_ON, TOKEN, configure


async def test_dashboard_calls_a_service_and_sees_the_state_change(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """Over /ws, a client's call to home-assistant.call_service is answered with HA's
    result and the state change arrives as an event with the envelope; a client that
    subscribes afterwards gets the entity's retained state before its subscribe ack."""
    async with open_fake_ha(token=TOKEN) as fake:
        make_module_dir(tmp_path, HA)
        configure(tmp_path, url=fake.url, token=TOKEN)
        async with running_gateway(tmp_path) as gw, ws_client(gw) as dash:
            await ready(dash)
            await send(dash, {"type": "subscribe", "module": HA, "name": "status"})
            await receive_until(
                dash, lambda m: is_event(m, HA, "status") and m["data"]["state"] == "connected"
            )
            await send(
                dash,
                {"type": "subscribe", "module": HA, "name": "state_changed", "request_id": "s"},
            )
            await receive_until(dash, lambda m: is_response(m, "s"))

            response = await call(dash, HA, "call_service", LIGHT_ON, rid="turn-on")
            assert response["success"] is True, response
            assert response["data"]["response"] is None
            event, _ = await receive_until(dash, lambda m: is_event(m, HA, "state_changed"))
            assert event["version"] == 1
            assert event["timestamp"] > 0
            assert event["data"]["entity_id"] == "light.kitchen"
            assert event["data"]["new_state"]["state"] == "on"

            failed = await call(dash, HA, "call_service", {"domain": "light", "service": "x"})
            assert failed["success"] is False
            assert failed["data"] == {
                "code": "module_error",
                "message": "not_found: Service light.x not found.",
            }

            async with ws_client(gw) as late:
                await ready(late)
                await send(
                    late,
                    {"type": "subscribe", "module": HA, "name": "state.*", "request_id": "r"},
                )
                _, before = await receive_until(late, lambda m: is_response(m, "r"))
                replayed = {m["name"]: m["data"] for m in before if m["type"] == "event"}
                assert set(replayed) == {f"state.{e}" for e in fake.states}
                assert replayed["state.light.kitchen"]["state"] == "on"


async def test_health_shows_in_the_api_healthz_and_vessel_ctl(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """An unconfigured Home Assistant module is running but says it is in error: the API's
    module info carries its health, /healthz stays 200 (the daemon is fine) and lists it
    under not_ok with its message, and vessel-ctl list, info and status show it; once
    configured and connected it is ok and not_ok is empty."""
    async with open_fake_ha(token=TOKEN) as fake:
        make_module_dir(tmp_path, HA)
        async with (
            running_gateway(tmp_path) as gw,
            httpx.AsyncClient(base_url=gw.base_url, headers=gw.auth, timeout=30) as client,
        ):

            async def health_of_ha() -> Any:
                return (await client.get(f"/api/modules/{HA}")).json()["health"]

            with trio.fail_after(30):
                while (await health_of_ha() or {}).get("status") != "error":
                    await trio.sleep(0.05)
            health = await health_of_ha()
            assert health["message"].startswith("not configured: set its token with ")
            listed = (await client.get("/api/modules")).json()["modules"]
            assert [m["health"] for m in listed if m["id"] == HA] == [health]

            healthz = await client.get("/healthz", headers={"Authorization": ""})
            assert healthz.status_code == 200
            assert healthz.json()["status"] == "ok"
            assert healthz.json()["not_ok"] == [
                {"id": HA, "state": "running", "health": "error", "message": health["message"]}
            ]

            env = base_env(VESSEL_URL=gw.base_url, VESSEL_TOKEN=gw.token)
            listing = await ctl("list", env=env)
            assert listing.returncode == 0, listing
            assert listing.stdout.splitlines()[1].split()[:3] == [HA, "running", "error"]
            assert f"{HA} reports error: {health['message']}" in listing.stdout.splitlines()
            info = await ctl("info", HA, env=env)
            shown = [line.split(None, 1) for line in info.stdout.splitlines()]
            assert ["health:", f"error: {health['message']}"] in shown
            status = await ctl("status", env=env)
            assert status.returncode == 0, status
            assert f"  {HA}: running, health error: {health['message']}" in status.stdout

            gw.daemon.manager.config_set(HA, "url", fake.url)
            gw.daemon.manager.config_set(HA, "token", TOKEN)
            with trio.fail_after(30):
                while (await health_of_ha() or {}).get("status") != "ok":
                    await trio.sleep(0.05)
            assert (await client.get("/healthz")).json()["not_ok"] == []
