"""REST: module logs (recent and followed) and module configuration."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import trio

from tests.fixture_types import MakeModuleDir

from .harness import Gateway, assert_error, open_api


async def hang_up(lines: AsyncIterator[str]) -> None:
    """Stop reading a stream by cancelling a read that waits for data.

    The cancellation unwinds httpx's nested async generators, so each one finishes;
    closing only the outer one would leave the inner ones to the garbage collector.
    """
    with trio.CancelScope() as scope:
        scope.cancel()
        while True:
            try:
                await anext(lines)
            except StopAsyncIteration:
                return


def followers(gateway: Gateway, module_id: str) -> int:
    """How many log followers the manager holds for the module (white-box: no public
    counter exists)."""
    return gateway.daemon.manager.log_followers(module_id)


async def test_logs_returns_recent_lines(tmp_path: Path, make_module_dir: MakeModuleDir) -> None:
    """GET logs returns the module's recent lines (the testkit logs "testkit loaded" on
    load) oldest first, at most ?lines of them; a bad ?lines is 400."""
    make_module_dir(tmp_path, "testkit", module_id="alpha")
    with trio.fail_after(30):
        async with open_api(tmp_path) as (_, client):
            response = await client.get("/api/modules/alpha/logs")
            assert response.status_code == 200
            lines = response.json()["lines"]
            assert {"timestamp", "level", "source", "message"} == set(lines[0])
            loaded = [line for line in lines if line["message"] == "testkit loaded"]
            assert loaded
            assert loaded[0]["level"] == "info"
            assert [line["timestamp"] for line in lines] == sorted(
                line["timestamp"] for line in lines
            )

            last = (await client.get("/api/modules/alpha/logs", params={"lines": 1})).json()
            assert last["lines"] == lines[-1:]
            none = (await client.get("/api/modules/alpha/logs", params={"lines": 0})).json()
            assert none == {"lines": []}
            capped = await client.get("/api/modules/alpha/logs", params={"lines": 10**6})
            assert capped.json()["lines"] == lines

            for bad in ({"lines": "many"}, {"lines": -1}, {"follow": "perhaps"}):
                response = await client.get("/api/modules/alpha/logs", params=bad)
                assert_error(response, 400, "invalid_request")
            assert_error(await client.get("/api/modules/nobody/logs"), 404, "unknown_module")


async def test_follow_streams_live_lines_and_releases_follower(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """?follow=true streams NDJSON: the last N lines, then a line the module logs while
    the client watches; when the client goes away the follower is released."""
    make_module_dir(tmp_path, "testkit", module_id="alpha")
    with trio.fail_after(30):
        async with open_api(tmp_path) as (gateway, client):
            params = {"follow": "true", "lines": "2"}
            async with client.stream("GET", "/api/modules/alpha/logs", params=params) as response:
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("application/x-ndjson")
                lines = response.aiter_lines()
                backlog = [json.loads(await anext(lines)) for _ in range(2)]
                recent = (await client.get("/api/modules/alpha/logs?lines=2")).json()
                assert backlog == recent["lines"]
                assert followers(gateway, "alpha") == 1

                said = {"level": "warn", "message": "followed line"}
                answer = await client.post("/api/modules/alpha/call/log", json=said)
                assert answer.status_code == 200
                while (line := json.loads(await anext(lines)))["message"] != "followed line":
                    pass
                assert line["level"] == "warn"
                await hang_up(lines)

            while followers(gateway, "alpha"):
                await trio.sleep(0.01)


async def test_follow_ends_when_daemon_shuts_down(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """A followed log ends (the response completes) when the gateway is shutting down,
    so shutdown never waits on a client that would follow forever."""
    make_module_dir(tmp_path, "testkit", module_id="alpha")
    with trio.fail_after(30):
        async with open_api(tmp_path) as (gateway, client):
            params = {"follow": "1", "lines": "0"}
            async with client.stream("GET", "/api/modules/alpha/logs", params=params) as response:
                assert response.status_code == 200
                gateway.state.shutting_down.set()
                with trio.fail_after(5):
                    assert await response.aread() == b""
            assert followers(gateway, "alpha") == 0


async def test_config_set_get_list_delete(tmp_path: Path, make_module_dir: MakeModuleDir) -> None:
    """PUT stores a value the module reads with storage-get; the key list never shows
    values; GET returns one value; DELETE removes it; missing keys are 404 not_found."""
    make_module_dir(tmp_path, "testkit", module_id="alpha", permissions={"storage": True})
    with trio.fail_after(30):
        async with open_api(tmp_path) as (_, client):
            base = "/api/modules/alpha/config"
            assert (await client.get(base)).json() == {"keys": [], "settings": []}

            put = await client.put(f"{base}/token", json={"value": "s3cret-token"})
            assert put.status_code == 204
            assert put.content == b""
            assert (
                await client.put(f"{base}/ha/url", json={"value": "http://ha"})
            ).status_code == 204

            listed = await client.get(base)
            assert listed.json() == {"keys": ["ha/url", "token"], "settings": []}
            assert "s3cret" not in listed.text

            got = await client.get(f"{base}/token")
            assert got.json() == {"key": "token", "value": "s3cret-token"}
            assert (await client.get(f"{base}/ha/url")).json()["value"] == "http://ha"
            read = await client.post("/api/modules/alpha/call/storage_get", json={"key": "token"})
            assert read.json() == {"data": {"value": "s3cret-token"}}

            assert (await client.put(f"{base}/token", json={"value": "v2"})).status_code == 204
            assert (await client.get(f"{base}/token")).json()["value"] == "v2"

            deleted = await client.delete(f"{base}/token")
            assert deleted.status_code == 204
            assert_error(await client.get(f"{base}/token"), 404, "not_found")
            assert_error(await client.delete(f"{base}/token"), 404, "not_found")
            assert (await client.get(base)).json()["keys"] == ["ha/url"]

            for path in ("", "/token"):
                missing = await client.get(f"/api/modules/nobody/config{path}")
                assert_error(missing, 404, "unknown_module")
            put_missing = await client.put("/api/modules/nobody/config/k", json={"value": "v"})
            assert_error(put_missing, 404, "unknown_module")


async def test_config_refuses_bad_bodies_keys_and_quota(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """A body that is not {"value": <string>} is 400 naming the problem; a key that is too
    long or has control characters is 400; a value past the module's storage quota is
    413 too_large with the storage message; nothing is stored by any of them."""
    make_module_dir(
        tmp_path, "testkit", module_id="alpha", permissions={}, limits={"storage_quota_kb": 1}
    )
    with trio.fail_after(30):
        async with open_api(tmp_path) as (_, client):
            url = "/api/modules/alpha/config/key"
            message = assert_error(await client.put(url, content=b"{nope"), 400, "invalid_request")
            assert "not JSON" in message
            message = assert_error(await client.put(url, json={"value": 5}), 400, "invalid_request")
            assert "$.value" in message
            message = assert_error(await client.put(url, json={}), 400, "invalid_request")
            assert "value" in message
            extra = await client.put(url, json={"value": "v", "secret": True})
            assert "secret" in assert_error(extra, 400, "invalid_request")
            assert_error(await client.put(url, json=["value"]), 400, "invalid_request")

            long_key = "k" * 257
            put = await client.put(f"/api/modules/alpha/config/{long_key}", json={"value": "v"})
            assert "256" in assert_error(put, 400, "invalid_request")
            assert (
                await client.put(f"/api/modules/alpha/config/{'k' * 256}", json={"value": "v"})
            ).status_code == 204
            for bad in ("a%01b", "tab%09key", "del%7F"):
                put = await client.put(f"/api/modules/alpha/config/{bad}", json={"value": "v"})
                assert "control" in assert_error(put, 400, "invalid_request")

            big = await client.put(url, json={"value": "x" * 2000})
            assert "quota" in assert_error(big, 413, "too_large")
            assert (await client.get("/api/modules/alpha/config")).json()["keys"] == ["k" * 256]


SETTINGS = {
    "url": {"label": "Server URL", "description": "Where the server is.",
            "default": "ws://server.local/ws"},
    "token": {"label": "Access token", "secret": True, "required": True},
    "mode": {},
}  # fmt: skip


async def test_declared_settings_are_listed_checked_and_default(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """A module whose manifest declares settings: the config list describes each (set or
    not, never a value), a required one not set is named in the module's info, a key it
    does not declare is refused (a typo) naming the ones it does, and an unset setting
    reads as its default in the module."""
    make_module_dir(
        tmp_path, "testkit", module_id="alpha", permissions={"storage": True},
        manifest={"settings": SETTINGS},
    )  # fmt: skip
    with trio.fail_after(30):
        async with open_api(tmp_path) as (_, client):
            base = "/api/modules/alpha/config"
            listed = (await client.get(base)).json()
            assert listed["keys"] == []
            assert listed["settings"] == [
                {"key": "url", "label": "Server URL", "description": "Where the server is.",
                 "secret": False, "required": False, "default": "ws://server.local/ws",
                 "set": False},
                {"key": "token", "label": "Access token", "description": "", "secret": True,
                 "required": True, "default": None, "set": False},
                {"key": "mode", "label": "mode", "description": "", "secret": False,
                 "required": False, "default": None, "set": False},
            ]  # fmt: skip
            info = (await client.get("/api/modules/alpha")).json()
            assert info["missing_settings"] == ["token"]

            typo = assert_error(
                await client.put(f"{base}/tokn", json={"value": "x"}), 400, "invalid_request"
            )
            assert typo == "module 'alpha' has no setting 'tokn'; its settings: url, token, mode"
            assert (await client.get(base)).json()["keys"] == []

            async def read(key: str) -> Any:
                answer = await client.post("/api/modules/alpha/call/storage_get", json={"key": key})
                return answer.json()["data"]["value"]

            assert await read("url") == "ws://server.local/ws"
            assert await read("mode") is None
            for key, value in (("token", "s3cret"), ("url", "ws://other/ws")):
                assert (await client.put(f"{base}/{key}", json={"value": value})).status_code == 204
            assert await read("url") == "ws://other/ws"
            listed = (await client.get(base)).json()
            assert [s["set"] for s in listed["settings"]] == [True, True, False]
            assert "s3cret" not in json.dumps(listed)
            assert (await client.get("/api/modules/alpha")).json()["missing_settings"] == []

            assert (await client.delete(f"{base}/url")).status_code == 204
            assert await read("url") == "ws://server.local/ws"  # back to its default
