"""REST: listing, inspecting, installing, removing and controlling modules."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import trio

from tests.fixture_types import MakeModuleDir
from vessel._manifest import HOST_API_VERSION
from vessel.gateway._app import MAX_UPLOAD_BYTES

from .harness import open_api

REPO = Path(__file__).resolve().parents[2]
TESTKIT_MANIFEST = REPO / "tests" / "guests" / "testkit" / "manifest.json"

INFO_FIELDS = {
    "id",
    "name",
    "version",
    "api_version",
    "description",
    "kind",
    "state",
    "enabled",
    "pid",
    "restarts",
    "uptime",
    "memory",
    "last_reason",
    "missing_settings",
    "compiling_for",
    "log_lines_dropped",
    "health",
}


def manifest_bytes(**changes: Any) -> bytes:
    doc = json.loads(TESTKIT_MANIFEST.read_bytes())
    doc.update(changes)
    return json.dumps(doc).encode()


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {"code", "message"}
    assert body["code"] == code
    assert body["message"]
    return body


async def wait_state(client: httpx.AsyncClient, module_id: str, state: str) -> dict[str, Any]:
    """Poll the module's REST view until it reaches ``state`` (bounded)."""
    with trio.fail_after(20):
        while True:
            info: dict[str, Any] = (await client.get(f"/api/modules/{module_id}")).json()
            if info["state"] == state:
                return info
            await trio.sleep(0.05)


async def test_list_shows_running_module_refusals_and_health(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """The list shows each module with the full ModuleInfo shape, a running one with its
    pid and live memory, a refused folder with its reason; /healthz counts them."""
    make_module_dir(tmp_path, "testkit", module_id="alpha")
    make_module_dir(tmp_path, "testkit", module_id="newer", manifest={"api_version": 2})
    with trio.fail_after(30):
        async with open_api(tmp_path) as (_, client):
            response = await client.get("/api/modules")
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("application/json")
            body = response.json()
            [alpha] = body["modules"]
            assert set(alpha) == INFO_FIELDS
            assert alpha["id"] == "alpha"
            assert alpha["kind"] == "wasm"
            assert alpha["state"] == "running"
            assert alpha["enabled"] is True
            assert isinstance(alpha["pid"], int)
            assert Path(f"/proc/{alpha['pid']}").exists()
            assert isinstance(alpha["memory"], int)
            # Private memory (USS): what /proc says the process alone holds. Read around
            # a second answer, since it moves when another process maps the same files.
            before = _uss(alpha["pid"])
            again = (await client.get("/api/modules")).json()["modules"][0]["memory"]
            after = _uss(alpha["pid"])
            assert 0.95 * min(before, after) < again < 1.05 * max(before, after), (
                again,
                before,
                after,
            )
            assert alpha["uptime"] >= 0
            assert alpha["restarts"] == 0
            [refused] = body["refused"]
            assert refused["id"] == "newer"
            assert "api_version 2" in refused["reason"]
            assert refused["dir"].endswith("newer")

            health = await client.get("/healthz", headers={"Authorization": ""})
            assert health.status_code == 200
            assert health.json() == {
                "status": "ok",
                "modules": {"total": 1, "running": 1, "failed": 0},
                "not_ok": [],
            }


async def test_version_is_not_shadowed_by_module_route(tmp_path: Path) -> None:
    """/api/modules/version is the host's API version, not a module named "version"."""
    with trio.fail_after(20):
        async with open_api(tmp_path) as (_, client):
            response = await client.get("/api/modules/version")
            assert response.status_code == 200
            assert response.json() == {"host_api_version": HOST_API_VERSION}


async def test_detail_has_permissions_limits_and_hash(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """A module's detail is ModuleInfo plus its granted permissions, limits and hash;
    an id that is not installed is 404 unknown_module."""
    module_dir = make_module_dir(
        tmp_path,
        "testkit",
        module_id="alpha",
        permissions={"storage": True, "subscribe": ["beta.*"]},
        limits={"memory_mb": 96},
    )
    with trio.fail_after(30):
        async with open_api(tmp_path) as (_, client):
            detail = (await client.get("/api/modules/alpha")).json()
            assert set(detail) == INFO_FIELDS | {"permissions", "limits", "raised_limits", "hash"}
            assert detail["permissions"]["storage"] is True
            assert detail["permissions"]["subscribe"] == ["beta.*"]
            assert detail["permissions"]["network"] == {
                "http": False,
                "websocket": False,
                "tcp": False,
                "hosts": None,  # none listed: any host (issue 25)
            }
            assert detail["limits"]["memory_mb"] == 96
            assert detail["raised_limits"] == {}  # 96 is below the default: nothing raised
            assert detail["hash"] == (module_dir / "manifest.hash").read_text().strip()
            assert_error(await client.get("/api/modules/nobody"), 404, "unknown_module")


async def test_install_refuses_bad_uploads(
    tmp_path: Path, make_module_dir: MakeModuleDir, built_guests: Mapping[str, Path]
) -> None:
    """Bad uploads are refused with a code and a message naming the problem, and leave
    nothing installed: a missing field, bytes that are not wasm, a truncated component,
    an unknown manifest field, a newer api_version, an id already installed, a body over
    the size limit."""
    make_module_dir(tmp_path, "testkit", module_id="alpha")
    wasm = built_guests["testkit"].read_bytes()
    good = manifest_bytes(id="fresh")

    with trio.fail_after(45):
        async with open_api(tmp_path) as (_, client):

            async def upload(manifest: bytes | None, module: bytes | None) -> httpx.Response:
                files = {}
                if manifest is not None:
                    files["manifest"] = ("manifest.json", manifest)
                if module is not None:
                    files["wasm"] = ("module.wasm", module)
                return await client.post("/api/modules", files=files or {"other": b"x"})

            body = assert_error(await upload(good, None), 400, "invalid_request")
            assert "'wasm'" in body["message"]
            body = assert_error(await upload(None, wasm), 400, "invalid_request")
            assert "'manifest'" in body["message"]

            assert_error(await upload(good, b"this is not wasm"), 400, "invalid_module")
            assert_error(await upload(good, wasm[: len(wasm) // 2]), 400, "invalid_module")

            typo = manifest_bytes(id="fresh", permisions={})
            body = assert_error(await upload(typo, wasm), 400, "invalid_module")
            assert "permisions" in body["message"]

            newer = manifest_bytes(id="fresh", api_version=HOST_API_VERSION + 1)
            body = assert_error(await upload(newer, wasm), 400, "invalid_module")
            assert "upgrade Vessel" in body["message"]

            taken = manifest_bytes(id="alpha")
            body = assert_error(await upload(taken, wasm), 409, "already_installed")
            assert "replace" in body["message"]

            listed = (await client.get("/api/modules")).json()
            assert [m["id"] for m in listed["modules"]] == ["alpha"]
            assert not (tmp_path / "modules" / "fresh").exists()

        # Over the limit: refused from the Content-Length alone, before reading the body.
        async with open_api(tmp_path) as (_, client):
            # Only the headers: the body would never be read. (An httpx upload here left
            # httpx's body generator unfinished when the answer came first: a
            # ResourceWarning whenever the garbage collector ran during the test.)
            response = await _raw_post_headers(client, "/api/modules", MAX_UPLOAD_BYTES + 1)
            assert_error(response, 413, "too_large")


async def _raw_post_headers(client: httpx.AsyncClient, path: str, length: int) -> httpx.Response:
    """POST announcing a ``length``-byte multipart body but sending none, over a plain
    socket; returns the server's answer."""
    url = client.base_url
    assert url.port is not None
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {url.host}:{url.port}\r\n"
        f"Authorization: {client.headers['authorization']}\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\n"
        f"Content-Length: {length}\r\nConnection: close\r\n\r\n"
    )
    stream = await trio.open_tcp_stream(url.host, url.port)
    async with stream:
        await stream.send_all(head.encode())
        raw = b""
        # The answer's own Content-Length says when it is complete: the server may keep
        # waiting for the body we announced instead of closing.
        while b"\r\n\r\n" not in raw or len(raw.partition(b"\r\n\r\n")[2]) < _length(raw):
            chunk = await stream.receive_some(65536)
            if not chunk:
                break
            raw += chunk
    header_block, _, body = raw.partition(b"\r\n\r\n")
    status = int(header_block.split(b" ", 2)[1])
    lines = header_block.split(b"\r\n")[1:]
    headers = [(name, value) for name, value in (line.split(b": ", 1) for line in lines)]
    return httpx.Response(status, headers=headers, content=body)


def _length(raw: bytes) -> int:
    for line in raw.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


async def test_remove_deletes_module_and_its_config(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """DELETE stops and removes the module (204): its folder and config are gone and
    later requests for it are 404; ?keep_storage=true keeps the config."""
    make_module_dir(tmp_path, "testkit", module_id="alpha")
    make_module_dir(tmp_path, "testkit", module_id="beta")
    with trio.fail_after(30):
        async with open_api(tmp_path) as (gateway, client):
            pid = (await client.get("/api/modules/alpha")).json()["pid"]
            for module_id in ("alpha", "beta"):
                put = await client.put(f"/api/modules/{module_id}/config/url", json={"value": "x"})
                assert put.status_code == 204

            response = await client.delete("/api/modules/alpha")
            assert response.status_code == 204
            assert response.content == b""
            assert not (tmp_path / "modules" / "alpha").exists()
            assert gateway.daemon.storage.keys("alpha") == []
            assert not Path(f"/proc/{pid}").exists() or _is_zombie(pid)
            assert_error(await client.get("/api/modules/alpha"), 404, "unknown_module")
            assert_error(await client.delete("/api/modules/alpha"), 404, "unknown_module")

            kept = await client.delete("/api/modules/beta", params={"keep_storage": "true"})
            assert kept.status_code == 204
            assert gateway.daemon.storage.keys("beta") == ["url"]
            assert (await client.get("/api/modules")).json()["modules"] == []


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] in "ZX"


async def test_disable_enable_restart(tmp_path: Path, make_module_dir: MakeModuleDir) -> None:
    """disable stops the module (state disabled, no pid) and restarting it then is 409
    module_unavailable; enable starts it again; restart replaces its process."""
    make_module_dir(tmp_path, "testkit", module_id="alpha")
    with trio.fail_after(40):
        async with open_api(tmp_path) as (_, client):
            disabled = await client.post("/api/modules/alpha/disable")
            assert disabled.status_code == 200
            info = disabled.json()
            assert (info["state"], info["enabled"], info["pid"], info["memory"]) == (
                "disabled",
                False,
                None,
                None,
            )
            assert_error(await client.post("/api/modules/alpha/restart"), 409, "module_unavailable")

            enabled = await client.post("/api/modules/alpha/enable")
            assert enabled.status_code == 200
            assert enabled.json()["enabled"] is True
            first = await wait_state(client, "alpha", "running")

            restarted = await client.post("/api/modules/alpha/restart")
            assert restarted.status_code == 200
            second = await wait_state(client, "alpha", "running")
            assert second["pid"] != first["pid"]
            assert isinstance(second["pid"], int)

            for action in ("enable", "disable", "restart"):
                missing = await client.post(f"/api/modules/nobody/{action}")
                assert_error(missing, 404, "unknown_module")


def _uss(pid: int) -> int:
    return sum(
        int(line.split()[1]) * 1024
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
        if line.startswith(("Private_Clean:", "Private_Dirty:"))
    )
