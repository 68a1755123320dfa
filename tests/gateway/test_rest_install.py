"""REST installs: answered at once (``?wait=false``) with progress to follow, refused as
soon as the manifest says so, and failures reported once, with the reason."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.fixture_types import MakeModuleDir
from tests.runtime.harness import data, lifecycle, next_event

from .harness import NOT_OUR_COMPONENT, assert_error, open_api

REPO = Path(__file__).resolve().parents[2]
TESTKIT_MANIFEST = REPO / "tests" / "guests" / "testkit" / "manifest.json"

INSTALL_FIELDS = {"id", "version", "replace", "state", "elapsed", "compiling_for", "reason"}


def manifest_bytes(**changes: Any) -> bytes:
    doc = json.loads(TESTKIT_MANIFEST.read_bytes())
    doc.update(changes)
    return json.dumps(doc).encode()


def files(manifest: bytes, wasm: bytes) -> dict[str, tuple[str, bytes]]:
    return {"manifest": ("manifest.json", manifest), "wasm": ("module.wasm", wasm)}


def leftovers(data_dir: Path) -> list[str]:
    """Staging folders and upload files under modules/ (none once an install ended)."""
    return sorted(p.name for p in (data_dir / "modules").iterdir() if p.name.startswith("."))


@pytest.mark.watchdog(900)  # a compile at a low priority, on a busy machine (below)
async def test_install_without_waiting_shows_its_progress_then_runs(
    tmp_path: Path, built_guests: Mapping[str, Path]
) -> None:
    """``?wait=false`` answers 202 with the install (compiling, and how long) and where to
    follow it; the module list shows it under ``installing``; a second upload of the id
    meanwhile is 409 install_in_progress; the install then ends ``installed``, the module
    runs and answers calls, and a plain upload of the id again is 409 already_installed."""
    upload = files(manifest_bytes(id="uploaded"), built_guests["testkit"].read_bytes())
    # The compile runs in a process of its own at a low priority: ~15 s here, and 100 s
    # was seen beside busy loops on every CPU.
    with trio.fail_after(600):
        async with open_api(tmp_path) as (gateway, client):
            events = gateway.daemon.bus.subscribe("vessel.module.*", name="test")
            response = await client.post("/api/modules?wait=false", files=upload)
            assert response.status_code == 202, response.text
            install = response.json()
            assert set(install) == INSTALL_FIELDS
            assert install["id"] == "uploaded"
            assert install["state"] == "compiling"
            assert install["reason"] is None
            assert response.headers["location"] == "/api/modules/uploaded/install"
            await next_event(events, lifecycle("compiling", "uploaded"))

            listed = (await client.get("/api/modules")).json()
            assert [i["id"] for i in listed["installing"]] == ["uploaded"]
            assert listed["installing"][0]["state"] in ("compiling", "starting", "installed")

            again = await client.post("/api/modules?wait=false", files=upload)
            if (await client.get("/api/modules/uploaded/install")).json()["state"] == "compiling":
                assert_error(again, 409, "install_in_progress")

            await next_event(events, lifecycle("started", "uploaded"), timeout=600)
            status = (await client.get("/api/modules/uploaded/install")).json()
            assert status["state"] == "installed"
            assert status["reason"] is None
            assert status["elapsed"] > 0
            answer = await client.post("/api/modules/uploaded/call/echo", json={"n": 7})
            assert answer.json() == {"data": {"n": 7}}
            assert_error(await client.post("/api/modules", files=upload), 409, "already_installed")
            assert leftovers(tmp_path) == []


async def test_install_that_does_not_compile_fails_once_with_its_reason(
    tmp_path: Path,
) -> None:
    """Bytes that pass the framing check but are no component of our world: without
    waiting, the install is answered 202 and then ends ``failed`` with the compiler's
    reason, an ``install_failed`` event says so, nothing is installed and nothing is left
    on disk; waiting, the same upload is 400 invalid_module naming the module."""
    upload = files(manifest_bytes(id="broken"), NOT_OUR_COMPONENT)
    with trio.fail_after(120):
        async with open_api(tmp_path) as (gateway, client):
            events = gateway.daemon.bus.subscribe("vessel.module.*", name="test")
            response = await client.post("/api/modules?wait=false", files=upload)
            assert response.status_code == 202, response.text
            failed = await next_event(events, lifecycle("install_failed", "broken"), timeout=60)
            assert "broken" in data(failed)["reason"]
            status = (await client.get("/api/modules/broken/install")).json()
            assert status["state"] == "failed"
            assert status["reason"] == data(failed)["reason"]
            listed = (await client.get("/api/modules")).json()
            assert listed["modules"] == []
            assert [(i["id"], i["state"]) for i in listed["installing"]] == [("broken", "failed")]
            assert leftovers(tmp_path) == []

            message = assert_error(
                await client.post("/api/modules", files=upload), 400, "invalid_module"
            )
            assert "broken" in message
            assert_error(await client.get("/api/modules/broken"), 404, "unknown_module")
            assert leftovers(tmp_path) == []
        assert not (tmp_path / "modules" / "broken").exists()


async def test_refused_upload_is_answered_and_leaves_nothing(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """A bad manifest (400) or an installed id (409) is refused however the parts are
    ordered: the manifest first (checked the moment it is in, before any of the component
    is stored) or last (the stored component is deleted). A client sending a large
    component gets the answer, not a reset connection, and nothing is left on disk."""
    make_module_dir(tmp_path, "testkit", module_id="taken")
    component = b"\0" * 8 * 2**20  # never looked at: the manifest is refused
    with trio.fail_after(60):
        async with open_api(tmp_path) as (_, client):
            for manifest, status, code in (
                (manifest_bytes(id="fresh", permisions={}), 400, "invalid_module"),
                (manifest_bytes(id="taken"), 409, "already_installed"),
            ):
                for order in (("manifest", "wasm"), ("wasm", "manifest")):
                    parts = {"manifest": ("manifest.json", manifest), "wasm": ("m.wasm", component)}
                    response = await client.post(
                        "/api/modules", files={name: parts[name] for name in order}
                    )
                    assert_error(response, status, code)
                    assert leftovers(tmp_path) == []
            listed = (await client.get("/api/modules")).json()
            assert [m["id"] for m in listed["modules"]] == ["taken"]
            assert listed["installing"] == []
