"""A dashboard drives Home Assistant through the real gateway's /ws."""

from __future__ import annotations

from pathlib import Path

from tests.fixture_types import MakeModuleDir

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
