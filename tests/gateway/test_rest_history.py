"""REST: a module's lifecycle history (GET .../history) and its storage apart from its
settings (GET .../storage), against a real daemon whose module processes really crash."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import httpx
import trio
import trio.testing

from tests.fixture_types import MakeModuleDir
from tests.runtime.harness import lifecycle, next_event
from vessel._manager import ModuleState
from vessel._storage import Storage

from .harness import assert_error, open_api


async def _history(client: httpx.AsyncClient, module_id: str) -> list[dict[str, Any]]:
    response = await client.get(f"/api/modules/{module_id}/history")
    assert response.status_code == 200, response.text
    entries: list[dict[str, Any]] = response.json()["history"]
    return entries


def _events(entries: list[dict[str, Any]]) -> list[str]:
    return [e["event"] for e in entries]


async def test_history_records_crashes_requests_and_outlives_the_daemon(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """A SIGKILL, a trap, a restart, a disable and an enable each leave their entries,
    in order, with pids, reasons and times; the history is still there after the daemon
    restarts (which it records too), and it goes with the module when it is removed."""
    make_module_dir(tmp_path, "testkit", module_id="alpha", permissions={"storage": True})
    make_module_dir(tmp_path, "testkit", module_id="beta", permissions={})
    with trio.fail_after(90):
        async with open_api(tmp_path) as (gateway, client):
            manager = gateway.daemon.manager
            first = await _history(client, "alpha")
            assert _events(first) == ["started"]
            pid = manager.get("alpha").pid
            assert first[0]["pid"] == pid

            with gateway.daemon.bus.subscribe("vessel.module.*", name="test", replay=False) as sub:
                assert pid is not None
                os.kill(pid, signal.SIGKILL)
                await next_event(sub, lifecycle("restarted", "alpha"))
                crash = await _history(client, "alpha")
                assert _events(crash) == ["started", "crashed", "restarting", "restarted"]
                assert crash[1]["pid"] == pid
                assert crash[1]["reason"] == "killed by SIGKILL"
                assert crash[2]["delay"] > 0
                assert crash[3]["pid"] == manager.get("alpha").pid != pid
                times = [e["timestamp"] for e in crash]
                assert times == sorted(times)

                # A trap replaces the instance: its process announces it on the bus.
                trapped = await client.post("/api/modules/alpha/call/trap", json={})
                assert trapped.status_code == 502
                await next_event(sub, lifecycle("instance_replaced", "alpha"))
                await trio.testing.wait_all_tasks_blocked()  # the history took it too
                replaced = (await _history(client, "alpha"))[-1]
                assert replaced["event"] == "instance_replaced"
                assert "trap" in replaced["reason"]

            assert (await client.post("/api/modules/alpha/restart")).status_code == 200
            assert (await client.post("/api/modules/alpha/disable")).status_code == 200
            assert (await client.post("/api/modules/alpha/enable")).status_code == 200
            before_stop = await _history(client, "alpha")
            assert _events(before_stop)[5:] == [
                "restart_requested", "stopped", "started",
                "stopped", "disabled",
                "enabled", "started",
            ]  # fmt: skip
            # Another module's history is its own.
            assert _events(await _history(client, "beta")) == ["started"]
            missing = await client.get("/api/modules/nobody/history")
            assert_error(missing, 404, "unknown_module")

        async with open_api(tmp_path) as (gateway, client):
            after = await _history(client, "alpha")
            assert after[: len(before_stop)] == before_stop
            assert _events(after)[len(before_stop) :] == ["stopped", "started"]
            assert after[-1]["pid"] == gateway.daemon.manager.get("alpha").pid

            assert (await client.delete("/api/modules/alpha")).status_code == 204
            assert_error(await client.get("/api/modules/alpha/history"), 404, "unknown_module")
    with Storage.open(tmp_path / "vessel.db") as storage:
        assert storage.history("alpha") == []
        # Two daemon runs, each stopping its modules as it ends.
        beta = [event for _, event, _ in storage.history("beta")]
        assert beta == ["started", "stopped", "started", "stopped"]


async def test_history_of_a_crash_loop_ends_failed_with_the_reason(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """A module whose on-load always traps: each crash and restart is recorded, then
    `failed` with the trap's reason, which the module's info gives too."""
    make_module_dir(tmp_path, "testkit", module_id="broken", permissions={"storage": True})
    with Storage.open(tmp_path / "vessel.db") as storage:
        storage.set("broken", "on_load", "trap", quota_bytes=1 << 20)
    with trio.fail_after(60):
        async with open_api(tmp_path) as (gateway, client):
            manager = gateway.daemon.manager
            with gateway.daemon.bus.subscribe("vessel.module.*", name="test") as sub:
                while manager.state("broken") is not ModuleState.FAILED:
                    await next_event(sub, lifecycle("failed", "broken"), timeout=45)
            entries = await _history(client, "broken")
            events = _events(entries)
            assert events[-1] == "failed"
            assert "crashed" in events
            assert "restarting" in events
            assert (
                entries[-1]["reason"]
                == (await client.get("/api/modules/broken")).json()["last_reason"]
            )
            assert "trap" in entries[-1]["reason"] or "on-load" in entries[-1]["reason"]


SETTINGS = {"token": {"label": "Access token", "secret": True, "required": True}}


async def test_storage_lists_the_module_keys_apart_from_its_settings(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """GET storage lists what the module keeps for itself (keys and sizes, never
    values), not its declared settings; a value is read one at a time; a setting read as
    storage points at its configuration; a module without settings lists every key."""
    make_module_dir(
        tmp_path, "testkit", module_id="alpha", permissions={"storage": True},
        manifest={"settings": SETTINGS}, limits={"storage_quota_kb": 4},
    )  # fmt: skip
    make_module_dir(tmp_path, "testkit", module_id="plain", permissions={"storage": True})
    with trio.fail_after(30):
        async with open_api(tmp_path) as (_, client):
            base = "/api/modules/alpha"
            assert (await client.get(f"{base}/storage")).json() == {
                "keys": [], "used": 0, "quota": 4096
            }  # fmt: skip
            await client.put(f"{base}/config/token", json={"value": "s3cret"})
            stored = await client.post(
                f"{base}/call/storage_set", json={"key": "count", "value": "42"}
            )
            assert stored.status_code == 200, stored.text
            listed = (await client.get(f"{base}/storage")).json()
            assert listed == {
                "keys": [{"key": "count", "size": len("count42")}],
                "used": len("count42") + len("tokens3cret"),
                "quota": 4096,
            }
            # The configuration still names every key, for the clients that read it.
            assert (await client.get(f"{base}/config")).json()["keys"] == ["count", "token"]
            value = await client.get(f"{base}/storage/count")
            assert value.json() == {"key": "count", "value": "42"}
            setting = assert_error(await client.get(f"{base}/storage/token"), 404, "not_found")
            assert "/api/modules/alpha/config/token" in setting
            assert "s3cret" not in setting
            assert_error(await client.get(f"{base}/storage/nothing"), 404, "not_found")
            assert_error(await client.get("/api/modules/nobody/storage"), 404, "unknown_module")

            await client.put("/api/modules/plain/config/greeting", json={"value": "hi"})
            plain = (await client.get("/api/modules/plain/storage")).json()
            assert plain["keys"] == [{"key": "greeting", "size": len("greetinghi")}]
