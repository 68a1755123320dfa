"""A module that gives itself big limits: the daemon's ceilings refuse what is above them,
and what is above the defaults (within the ceilings) is shown at install and by info.

A manifest's ``limits`` are its author's to set, up to the schema's maxima (4 GiB of
memory, 100,000 events a second, a 1 GiB storage quota, 600 s deadlines); before the
ceilings, any module could ask for all of that and nothing said so. Against a real
``vessel serve``: a module folder dropped in asking beyond the default ceilings is
refused at start, an upload asking the same is refused at install (naming each limit,
what it asked, the ceiling, and the flag that raises it) and leaves nothing behind; a
module asking above the defaults but within the ceilings installs, and ``vessel-ctl
install``, ``GET /api/modules/<id>`` and ``vessel-ctl info`` say which limits it raised;
restarted with the ceilings raised (``--limit-ceiling``), the dropped-in module runs.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import trio

from tests.cli._support import Daemon, ctl, start_daemon, stop_daemon
from tests.fixture_types import MakeModuleDir
from vessel._ceilings import DEFAULT_CEILINGS

from ._figures import Figures, Row
from ._netprobe import netprobe_manifest, netprobe_wasm
from ._resources import watch_daemon

#: What the issue found a manifest could give itself without a word: the schema's maxima.
GREEDY = {
    "memory_mb": 4096,
    "max_event_rate": 100_000,
    "storage_quota_kb": 1_048_576,
    "invocation_timeout_ms": 600_000,
}
#: Above the defaults, within the default ceilings: installs, and says so.
MODEST = {"memory_mb": 256, "max_event_rate": 1000}


@asynccontextmanager
async def _serving(
    data: Path, args: Sequence[str] = ()
) -> AsyncIterator[tuple[Daemon, httpx.AsyncClient]]:
    """``vessel serve`` on ``data`` (with ``args``) and a client with its token, for the
    block; stopped at its end (killed, if the block failed)."""
    async with trio.open_nursery() as nursery:
        daemon = await start_daemon(nursery, data, args)
        try:
            token = (data / "token").read_text().strip()
            headers = {"Authorization": f"Bearer {token}"}
            async with httpx.AsyncClient(base_url=daemon.url, headers=headers, timeout=30) as c:
                yield daemon, c
            await stop_daemon(daemon)
        finally:
            if daemon.process.returncode is None:
                daemon.process.kill()
                with trio.CancelScope(shield=True), trio.fail_after(10):
                    await daemon.process.wait()


async def _answers(c: httpx.AsyncClient, module_id: str, row: Row) -> None:
    """The module answers a call. (Asked once it has started: start_daemon returns once
    the daemon has said every module started, and vessel-ctl install once its module has
    settled.)"""
    r = await c.post(f"/api/modules/{module_id}/call/echo", json={})
    if r.status_code != 200:
        info = (await c.get(f"/api/modules/{module_id}")).text
        logs = (await c.get(f"/api/modules/{module_id}/logs")).text
        raise AssertionError(f"{module_id} did not answer: {r.text}\n{info}\n{logs}")
    row.answered += 1


def _names_each_limit(message: str, limits: dict[str, int]) -> None:
    """The refusal names each limit over its ceiling, what was asked, the ceiling, and the
    flag that raises it."""
    for name, asked in limits.items():
        ceiling = DEFAULT_CEILINGS[name]
        assert f"limits.{name} {asked} (ceiling {ceiling})" in message, message
        assert f"--limit-ceiling {name}={asked}" in message, message


async def test_limits_above_the_ceilings_are_refused_and_raised_ones_shown(
    tmp_path: Path, make_module_dir: MakeModuleDir, figures: Figures
) -> None:
    """Beyond the default ceilings: refused at start and at install, naming each limit;
    above the defaults within them: installed, and shown by install, the API and info;
    with the ceilings raised by the admin: runs (module docstring)."""
    row = figures.row("limits above the ceilings")
    data = tmp_path / "data"
    make_module_dir(data, "testkit", module_id="healthy-a")
    make_module_dir(data, "testkit", module_id="greedy", limits=GREEDY)

    async with _serving(data) as (daemon, c):
        await _answers(c, "healthy-a", row)
        # The refusals under watch (the install below adds a module process, whose files
        # the daemon then holds).
        async with watch_daemon(row, daemon.pid):
            # Dropped in asking beyond the ceilings: refused at start, with the reason.
            listing = (await c.get("/api/modules")).json()
            assert [m["id"] for m in listing["modules"]] == ["healthy-a"], listing
            (refusal,) = listing["refused"]
            assert refusal["id"] == "greedy", refusal
            _names_each_limit(refusal["reason"], GREEDY)
            row.bad_inputs += 1

            # Uploaded asking the same: refused at install, nothing left behind.
            files = {
                "manifest": ("manifest.json", netprobe_manifest("greedy-upload", limits=GREEDY)),
                "wasm": ("module.wasm", netprobe_wasm()),
            }
            r = await c.post("/api/modules", files=files)
            assert r.status_code == 400, r.text
            assert r.json()["code"] == "invalid_module", r.text
            _names_each_limit(r.json()["message"], GREEDY)
            row.bad_inputs += 1
            assert not (data / "modules" / "greedy-upload").exists()
            assert [p.name for p in (data / "modules").iterdir() if p.name.startswith(".")] == []
            r = await c.get("/api/modules/greedy-upload")
            assert r.status_code == 404, r.text

        # Above the defaults, within the ceilings: installed, and every view says so.
        src = tmp_path / "modest"
        src.mkdir()
        (src / "manifest.json").write_bytes(netprobe_manifest("modest", limits=MODEST))
        (src / "module.wasm").write_bytes(netprobe_wasm())
        installed = await ctl("install", str(src), env=daemon.env)
        assert installed.returncode == 0, str(installed)
        assert installed.stdout.startswith("installed modest 0.1.0: running"), str(installed)
        assert (
            "limits above the defaults: memory_mb 256 (default 128), "
            "max_event_rate 1000 (default 200)"
        ) in installed.stdout, str(installed)
        await _answers(c, "modest", row)
        detail = (await c.get("/api/modules/modest")).json()
        assert detail["raised_limits"] == MODEST, detail
        plain = (await c.get("/api/modules/healthy-a")).json()
        assert plain["raised_limits"] == {}, plain
        info = await ctl("info", "modest", env=daemon.env)
        assert info.returncode == 0, str(info)
        assert re.search(
            r"^raised limits: +memory_mb 256 \(default 128\), max_event_rate 1000 "
            r"\(default 200\)$",
            info.stdout,
            re.MULTILINE,
        ), info.stdout
        info = await ctl("--json", "info", "modest", env=daemon.env)
        assert json.loads(info.stdout)["raised_limits"] == MODEST, str(info)
        await _answers(c, "healthy-a", row)

    # The admin raises the ceilings: the module it refused runs, its raised limits shown.
    raise_them = [arg for name, v in GREEDY.items() for arg in ("--limit-ceiling", f"{name}={v}")]
    async with _serving(data, raise_them) as (daemon, c):
        await _answers(c, "greedy", row)
        listing = (await c.get("/api/modules")).json()
        assert listing["refused"] == [], listing
        assert (await c.get("/api/modules/greedy")).json()["raised_limits"] == GREEDY
        await _answers(c, "healthy-a", row)
