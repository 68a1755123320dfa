"""``vessel-ctl install`` and ``info`` say where a module may connect: the hosts its
manifest lists, or "any host" with a warning when it lists none. A real daemon, the real
``vessel-ctl``, installs of the netprobe component (it compiles in milliseconds)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import trio

from tests.adversarial._netprobe import netprobe_manifest, netprobe_wasm
from tests.fixture_types import MakeModuleDir
from tests.servers import serve_http

from ._support import ctl, start_daemon, stop_daemon

ANY_HOST = (
    "websocket to any host (warning: its manifest lists no permissions.network.hosts, so it "
    "may connect anywhere)"
)


def _source(root: Path, module_id: str, permissions: dict[str, Any]) -> Path:
    src = root / module_id
    src.mkdir()
    (src / "manifest.json").write_bytes(netprobe_manifest(module_id, permissions=permissions))
    (src / "module.wasm").write_bytes(netprobe_wasm())
    return src


def _info_line(stdout: str, field: str) -> str:
    match = re.search(rf"^{field}: +(.*)$", stdout, re.MULTILINE)
    assert match is not None, stdout
    return match[1]


async def test_install_and_info_show_the_destinations_or_warn_of_any_host(
    tmp_path: Path,
) -> None:
    anywhere = _source(tmp_path, "anywhere", {"network": {"websocket": True}})
    listed = _source(
        tmp_path,
        "listed",
        {"network": {"http": True, "websocket": True, "hosts": ["https://*.example.com"]}},
    )
    offline = _source(tmp_path, "offline", {})
    async with trio.open_nursery() as nursery:
        daemon = await start_daemon(nursery, tmp_path / "data")
        installed = await ctl("install", str(anywhere), env=daemon.env)
        assert installed.returncode == 0, str(installed)
        assert f"\nnetwork: {ANY_HOST}\n" in installed.stdout, str(installed)
        installed = await ctl("install", str(listed), env=daemon.env)
        assert installed.returncode == 0, str(installed)
        assert "\nnetwork: http and websocket to https://*.example.com\n" in installed.stdout
        installed = await ctl("install", str(offline), env=daemon.env)
        assert installed.returncode == 0, str(installed)
        assert "network:" not in installed.stdout, str(installed)

        info = await ctl("info", "anywhere", env=daemon.env)
        assert _info_line(info.stdout, "network") == ANY_HOST
        info = await ctl("info", "offline", env=daemon.env)
        assert _info_line(info.stdout, "network") == "none"
        info = await ctl("info", "listed", env=daemon.env)
        assert _info_line(info.stdout, "network") == ("http and websocket to https://*.example.com")
        await stop_daemon(daemon)


async def test_info_shows_the_egress_audit_per_destination(
    tmp_path: Path, make_module_dir: MakeModuleDir, nursery: trio.Nursery
) -> None:
    """After a fetch that went and one that was denied, `info` has an egress line for
    each destination; before any, it says nothing was sent."""
    base = await serve_http(nursery)
    port = int(base.rsplit(":", 1)[1])
    data = tmp_path / "data"
    make_module_dir(
        data,
        "testkit",
        module_id="alpha",
        permissions={"network": {"http": True, "hosts": [f"http://127.0.0.1:{port}"]}},
    )
    daemon = await start_daemon(nursery, data)
    info = await ctl("info", "alpha", env=daemon.env)
    assert _info_line(info.stdout, "egress") == "nothing sent since it started", info.stdout

    def fetch(url: str) -> str:
        return json.dumps({"method": "POST", "url": url, "headers": [], "body": "hello"})

    went = await ctl("call", "alpha", "http", fetch(f"{base}/echo"), env=daemon.env)
    assert went.returncode == 0, str(went)
    refused = await ctl("call", "alpha", "http", fetch(f"http://localhost:{port}/"), env=daemon.env)
    assert refused.returncode != 0, str(refused)
    assert "capability denied: http-fetch to" in refused.stderr, str(refused)

    info = await ctl("info", "alpha", env=daemon.env)
    assert info.returncode == 0, str(info)
    lines = info.stdout.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("egress:"))
    egress = sorted([lines[first].split(":", 1)[1].strip(), lines[first + 1].strip()])
    assert re.fullmatch(
        rf"http://127\.0\.0\.1:{port}: 1 request, 5 B sent, \d+ B received, "
        r"last used \d{4}-\d\d-\d\d [\d:.]+",
        egress[0],
    ), egress
    assert re.fullmatch(
        rf"http://localhost:{port}: 1 attempt denied, the last \d{{4}}-\d\d-\d\d [\d:.]+",
        egress[1],
    ), egress
    as_json = json.loads((await ctl("--json", "info", "alpha", env=daemon.env)).stdout)
    assert {e["destination"] for e in as_json["egress"]} == {
        f"http://localhost:{port}",
        f"http://127.0.0.1:{port}",
    }
    await stop_daemon(daemon)
