"""REST: calling modules, the bearer token, and ids/keys that try to leave their place."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import trio

from tests.fixture_types import MakeModuleDir

from .harness import assert_error, open_api, running_gateway


async def test_call_answers_with_module_data(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """POST call/<name> passes the JSON body as params (no body: {}) and answers 200
    {"data": <the module's JSON>}; the built-in `vessel` module is callable too; a body
    that is not JSON or a bad ?version is 400 invalid_request."""
    make_module_dir(tmp_path, "testkit", module_id="alpha", permissions={})
    with trio.fail_after(30):
        async with open_api(tmp_path) as (_, client):
            params = {"text": "héllo", "list": [1, 2.5, None], "nested": {"ok": True}}
            answer = await client.post("/api/modules/alpha/call/echo", json=params)
            assert answer.status_code == 200
            assert answer.headers["content-type"].startswith("application/json")
            assert answer.json() == {"data": params}

            empty = await client.post("/api/modules/alpha/call/echo")
            assert empty.json() == {"data": {}}
            versioned = await client.post("/api/modules/alpha/call/echo?version=2", json={})
            assert versioned.json() == {"data": {}}

            ping = await client.post("/api/modules/vessel/call/ping")
            assert ping.json() == {"data": {"pong": True}}

            not_json = await client.post("/api/modules/alpha/call/echo", content=b"{oops")
            assert "not valid JSON" in assert_error(not_json, 400, "invalid_request")
            for version in ("x", "-1", str(2**32)):
                bad = await client.post(f"/api/modules/alpha/call/echo?version={version}")
                assert "version" in assert_error(bad, 400, "invalid_request")


async def test_call_errors_map_to_codes_and_statuses(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """Each CallError reaches the client as its code with its status: unknown_module 404,
    unknown_command 404, module_error 502, module_unavailable 503 (disabled), timeout 504
    (a deferred reply the module never completes)."""
    make_module_dir(
        tmp_path,
        "testkit",
        module_id="alpha",
        permissions={"timers": True},
        limits={"reply_timeout_ms": 300},
    )
    with trio.fail_after(30):
        async with open_api(tmp_path) as (_, client):
            call = "/api/modules/{}/call/{}"
            assert_error(await client.post(call.format("nobody", "echo")), 404, "unknown_module")
            missing = await client.post(call.format("alpha", "no-such-command"))
            assert "no-such-command" in assert_error(missing, 404, "unknown_command")
            failed = await client.post(call.format("alpha", "fail"))
            assert "deliberate failure" in assert_error(failed, 502, "module_error")
            never = await client.post(call.format("alpha", "defer"), json={"never": True})
            assert "reply_timeout_ms" in assert_error(never, 504, "timeout")

            assert (await client.post("/api/modules/alpha/disable")).status_code == 200
            off = await client.post(call.format("alpha", "echo"))
            assert "disabled" in assert_error(off, 503, "module_unavailable")


#: Every /api route (with a method it serves), plus an unknown path and a wrong method.
API_ROUTES = [
    ("GET", "/api/modules"),
    ("POST", "/api/modules"),
    ("GET", "/api/modules/version"),
    ("GET", "/api/modules/alpha"),
    ("DELETE", "/api/modules/alpha"),
    ("POST", "/api/modules/alpha/enable"),
    ("POST", "/api/modules/alpha/disable"),
    ("POST", "/api/modules/alpha/restart"),
    ("GET", "/api/modules/alpha/logs"),
    ("GET", "/api/modules/alpha/logs?follow=true"),
    ("GET", "/api/modules/alpha/config"),
    ("GET", "/api/modules/alpha/config/token"),
    ("PUT", "/api/modules/alpha/config/token"),
    ("DELETE", "/api/modules/alpha/config/token"),
    ("POST", "/api/modules/alpha/call/echo"),
    ("GET", "/api/no-such-endpoint"),
    ("PATCH", "/api/modules"),
    ("GET", "/api/modules/..%2Fx"),
]

BAD_AUTHORIZATION: list[dict[str, str]] = [
    {},
    {"Authorization": "Bearer wrong-token"},
    {"Authorization": "Bearer"},
    {"Authorization": "Basic YWRtaW46YWRtaW4="},
]


@pytest.mark.parametrize(("method", "path"), API_ROUTES)
async def test_every_api_route_needs_the_token(tmp_path: Path, method: str, path: str) -> None:
    """Without the right bearer token every /api request is 401 unauthorized with
    `WWW-Authenticate: Bearer`, whatever its path or method; /healthz stays open."""
    with trio.fail_after(20):
        async with running_gateway(tmp_path) as gateway, httpx.AsyncClient() as client:
            for headers in BAD_AUTHORIZATION:
                body = {"value": "x"} if method == "PUT" else None
                response = await client.request(
                    method, gateway.base_url + path, headers=headers, json=body
                )
                message = assert_error(response, 401, "unauthorized")
                assert message == "missing or wrong bearer token"
                assert response.headers["WWW-Authenticate"] == "Bearer"
            health = await client.get(gateway.base_url + "/healthz")
            assert health.status_code == 200


async def test_unauthorized_requests_change_nothing(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """A request refused for its token has no effect: the module keeps running, its
    config is neither written nor deleted, and no module is installed."""
    make_module_dir(tmp_path, "testkit", module_id="alpha", permissions={})
    with trio.fail_after(30):
        async with open_api(tmp_path) as (gateway, client):
            assert (await client.put("/api/modules/alpha/config/a", json={"value": "1"})).is_success
            pid = (await client.get("/api/modules/alpha")).json()["pid"]
            wrong = {"Authorization": "Bearer nope"}
            for method, path, body in [
                ("POST", "/api/modules/alpha/disable", None),
                ("POST", "/api/modules/alpha/restart", None),
                ("DELETE", "/api/modules/alpha", None),
                ("PUT", "/api/modules/alpha/config/b", {"value": "2"}),
                ("DELETE", "/api/modules/alpha/config/a", None),
            ]:
                response = await client.request(method, path, headers=wrong, json=body)
                assert response.status_code == 401
            info = (await client.get("/api/modules/alpha")).json()
            assert (info["state"], info["pid"]) == ("running", pid)
            assert gateway.daemon.storage.keys("alpha") == ["a"]


BAD_IDS = ["..%2Fvictim", "%2E%2E", "..%2F..%2Fvictim", ".hidden", "UPPER", "a_b", "-x", "x" * 64]


async def test_malformed_ids_and_keys_are_refused(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """A module id that is not well-formed (path traversal included) is 404 unknown_module
    on every route and nothing outside the modules folder is touched; a config key with
    a '.' or '..' segment is 400 invalid_request."""
    make_module_dir(tmp_path, "testkit", module_id="alpha", permissions={})
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "manifest.json").write_text("{}")
    with trio.fail_after(30):
        async with open_api(tmp_path) as (_, client):
            for bad in BAD_IDS:
                for method, suffix in [
                    ("GET", ""),
                    ("DELETE", ""),
                    ("POST", "/restart"),
                    ("GET", "/logs"),
                    ("GET", "/config"),
                    ("PUT", "/config/k"),
                    ("POST", "/call/echo"),
                ]:
                    body = {"value": "v"} if method == "PUT" else None
                    response = await client.request(
                        method, f"/api/modules/{bad}{suffix}", json=body
                    )
                    assert_error(response, 404, "unknown_module")
            assert (victim / "manifest.json").is_file()
            assert (tmp_path / "token").is_file()

            for key in ("%2E%2E", "a%2F..%2Fb", "..%2F..%2Ftoken", "a%2F.%2Fb"):
                put = await client.put(f"/api/modules/alpha/config/{key}", json={"value": "v"})
                assert assert_error(put, 400, "invalid_request")
                got = await client.get(f"/api/modules/alpha/config/{key}")
                assert_error(got, 400, "invalid_request")
            assert (await client.get("/api/modules/alpha/config")).json()["keys"] == []
