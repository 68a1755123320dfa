"""``vessel-ctl install`` and ``info`` say where a module may connect: the hosts its
manifest lists, or "any host" with a warning when it lists none. A real daemon, the real
``vessel-ctl``, installs of the netprobe component (it compiles in milliseconds)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import trio

from tests.adversarial._netprobe import netprobe_manifest, netprobe_wasm

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
