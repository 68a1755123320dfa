"""REST: a module's log goes on across its restarts, its crashes and the daemon's restarts
(vessel/_logbook.py), says why its process ended, and is deleted with the module; the
daemon's own log is read the same way at /api/daemon/logs."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import trio

from tests.fixture_types import MakeModuleDir
from vessel._logbook import FILE_BYTES, FILES, logs_dir

from .harness import assert_error, open_api
from .test_rest_logs_config import hang_up

Line = dict[str, Any]


async def read_until(lines: AsyncIterator[str], done: Callable[[Line], bool]) -> list[Line]:
    """Lines of a follow stream up to the first that is ``done`` (bounded by the caller)."""
    seen: list[Line] = []
    while True:
        text = await anext(lines)
        if not text.strip():
            continue
        seen.append(json.loads(text))
        if done(seen[-1]):
            return seen


async def log_of(client: httpx.AsyncClient, module_id: str, **params: str) -> list[Line]:
    response = await client.get(
        f"/api/modules/{module_id}/logs", params={"lines": "1000", **params}
    )
    assert response.status_code == 200, response.text
    lines: list[Line] = response.json()["lines"]
    return lines


async def say(client: httpx.AsyncClient, module_id: str, message: str, level: str = "info") -> None:
    answer = await client.post(
        f"/api/modules/{module_id}/call/log", json={"level": level, "message": message}
    )
    assert answer.status_code == 200, answer.text


async def pid_of(client: httpx.AsyncClient, module_id: str) -> int:
    pid = (await client.get(f"/api/modules/{module_id}")).json()["pid"]
    assert isinstance(pid, int)
    return pid


def index(lines: list[Line], message: str, source: str | None = None, start: int = 0) -> int:
    """Where the first line with ``message`` (and ``source``) is, from ``start``."""
    for i, line in enumerate(lines[start:], start):
        if line["message"] == message and source in (None, line["source"]):
            return i
    raise AssertionError(f"no line {message!r} after line {start} in {lines}")


def log_files(data_dir: Path, module_id: str) -> list[Path]:
    return sorted((logs_dir(data_dir) / "modules").glob(f"{module_id}.log*"))


async def test_a_restart_keeps_the_log_and_says_so(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """`restart` used to start the module with an empty log: the lines before it, the
    daemon's line that the process was stopped, and the new process's lines follow each
    other in one log, oldest first."""
    make_module_dir(tmp_path, "testkit", module_id="alpha")
    with trio.fail_after(60):
        async with open_api(tmp_path) as (_, client):
            await say(client, "alpha", "before the restart")
            response = await client.post("/api/modules/alpha/restart")
            assert response.status_code == 200, response.text
            lines = await log_of(client, "alpha")
    first_load = index(lines, "testkit loaded", "host")
    before = index(lines, "before the restart", "host", first_load)
    stopped = index(lines, "its process was stopped", "daemon", before)
    index(lines, "testkit loaded", "host", stopped)
    assert [line["timestamp"] for line in lines] == sorted(line["timestamp"] for line in lines)


async def test_a_kill_is_explained_in_the_module_log_not_by_the_guest(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """A SIGKILL of the module's process: its log gets the daemon's line saying so and
    that it restarts (source "daemon"); a line the guest logged at level fatal just
    before stays the guest's (source "host") and is not taken for the reason."""
    make_module_dir(tmp_path, "testkit", module_id="alpha")
    forged = "its process ended: the guest says so"
    with trio.fail_after(60):
        async with open_api(tmp_path) as (_, client):
            params = {"follow": "1", "lines": "0"}
            async with client.stream("GET", "/api/modules/alpha/logs", params=params) as stream:
                lines = stream.aiter_lines()
                await say(client, "alpha", forged, level="fatal")
                os.kill(await pid_of(client, "alpha"), signal.SIGKILL)
                seen = await read_until(lines, lambda x: x["message"].startswith("restarting"))
                seen += await read_until(lines, lambda x: x["message"] == "testkit loaded")
                await hang_up(lines)
    guest = seen[index(seen, forged)]
    assert (guest["source"], guest["level"]) == ("host", "fatal")
    ended = [x for x in seen if x["source"] == "daemon" and x["message"].startswith("its process")]
    assert [x["message"] for x in ended] == ["its process ended: killed by SIGKILL"]
    assert ended[0]["level"] == "error"
    restarting = seen[index(seen, ended[0]["message"], "daemon") + 1]
    assert restarting["source"] == "daemon"
    assert restarting["message"].startswith("restarting in "), restarting
    assert "(restart 1 of at most 2 within 30 s)" in restarting["message"]


async def test_a_trap_in_on_load_is_the_reason_and_failed_says_what_to_do(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """A module whose on-load traps: its log has the guest's traceback, then the daemon's
    line that its start failed because on-load trapped, for each start, then the line
    that the daemon gave up and how to retry."""
    make_module_dir(tmp_path, "testkit", module_id="alpha", permissions={"storage": True})
    with trio.fail_after(90):
        async with open_api(tmp_path) as (_, client):
            answer = await client.put("/api/modules/alpha/config/on_load", json={"value": "trap"})
            assert answer.status_code == 204, answer.text
            params = {"follow": "1", "lines": "0"}
            async with client.stream("GET", "/api/modules/alpha/logs", params=params) as stream:
                lines = stream.aiter_lines()
                await client.post("/api/modules/alpha/restart")
                seen = await read_until(lines, lambda x: x["message"].startswith("failed: "))
                await hang_up(lines)
    daemon = [x["message"] for x in seen if x["source"] == "daemon"]
    ended = [m for m in daemon if m.startswith("its process ended: ")]
    # The first start and its two restarts (FAST: at most 2).
    assert len(ended) == 3, daemon
    assert all(m.startswith("its process ended: start failed: on-load trapped") for m in ended)
    trace = index(seen, "RuntimeError: deliberate trap in on_load")
    assert seen[trace]["source"] == "stderr"
    assert trace < index(seen, ended[0], "daemon")
    assert daemon[-1].startswith("failed: not restarting ("), daemon
    assert daemon[-1].endswith("once fixed: vessel-ctl restart alpha"), daemon


async def test_the_log_outlives_a_daemon_restart(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """The module's lines and the daemon's own of one run are there in the next run,
    before the new ones; the files under logs/ are what carried them."""
    make_module_dir(tmp_path, "testkit", module_id="alpha")
    with trio.fail_after(90):
        async with open_api(tmp_path) as (_, client):
            await say(client, "alpha", "from the first run", level="warn")
            killed = await pid_of(client, "alpha")
            params = {"follow": "1", "lines": "0"}
            async with client.stream("GET", "/api/modules/alpha/logs", params=params) as stream:
                live = stream.aiter_lines()
                os.kill(killed, signal.SIGKILL)
                await read_until(live, lambda x: x["message"] == "testkit loaded")
                await hang_up(live)
        assert log_files(tmp_path, "alpha") == [logs_dir(tmp_path) / "modules" / "alpha.log"]
        async with open_api(tmp_path) as (_, client):
            lines = await log_of(client, "alpha")
            daemon = (await client.get("/api/daemon/logs", params={"level": "warning"})).json()
    first = index(lines, "from the first run", "host")
    ended = index(lines, "its process ended: killed by SIGKILL", "daemon", first)
    stopped = index(lines, "its process was stopped", "daemon", ended)  # the daemon's stop
    index(lines, "testkit loaded", "host", stopped)  # the second run's start
    crashed = [x for x in daemon["lines"] if x["message"].startswith("module alpha crashed")]
    assert crashed, daemon
    assert crashed[0]["message"] == f"module alpha crashed (pid {killed}): killed by SIGKILL"
    assert crashed[0]["source"] == "vessel.manager"


async def test_daemon_log_over_rest(tmp_path: Path, make_module_dir: MakeModuleDir) -> None:
    """GET /api/daemon/logs: the daemon's records, ?level= keeps that level and above (a bad
    one is 400 naming the levels), ?follow=1 streams new ones as NDJSON; a module's own
    lines are in its log, not the daemon's; the token is needed as everywhere."""
    make_module_dir(tmp_path, "testkit", module_id="alpha")
    with trio.fail_after(60):
        async with open_api(tmp_path) as (gateway, client):
            params = {"follow": "1", "lines": "0", "level": "warning"}
            async with client.stream("GET", "/api/daemon/logs", params=params) as stream:
                assert stream.headers["content-type"].startswith("application/x-ndjson")
                lines = stream.aiter_lines()
                await say(client, "alpha", "a module's warning", level="warn")
                os.kill(await pid_of(client, "alpha"), signal.SIGKILL)
                seen = await read_until(lines, lambda x: "module alpha crashed" in x["message"])
                await hang_up(lines)
            assert all(x["level"] in ("warning", "error", "critical") for x in seen), seen
            assert not [x for x in seen if "a module's warning" in x["message"]]
            assert seen[-1]["message"].startswith("module alpha crashed (pid ")
            assert set(seen[-1]) == {"timestamp", "level", "source", "message"}

            everything = (await client.get("/api/daemon/logs", params={"lines": "1000"})).json()
            assert seen[-1] in everything["lines"]
            errors = (await client.get("/api/daemon/logs", params={"level": "error"})).json()
            assert seen[-1] not in errors["lines"]
            last = (await client.get("/api/daemon/logs", params={"lines": "1"})).json()["lines"]
            assert last == everything["lines"][-1:]

            message = assert_error(
                await client.get("/api/daemon/logs", params={"level": "loud"}),
                400,
                "invalid_request",
            )
            assert "debug, info, warning, error, critical" in message
            assert_error(
                await client.get("/api/daemon/logs", params={"lines": "x"}), 400, "invalid_request"
            )
            async with httpx.AsyncClient(base_url=gateway.base_url) as anonymous:
                assert (await anonymous.get("/api/daemon/logs")).status_code == 401

            # The module's log filters the same way.
            module_warnings = await log_of(client, "alpha", level="warn")
            assert [x["message"] for x in module_warnings][:1] == ["a module's warning"]
            assert all(x["level"] != "info" for x in module_warnings)


async def test_remove_deletes_the_log_and_a_new_install_starts_empty(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """Removing a module deletes its log files and ends a follow of its log; the same
    id installed again starts with an empty log (no line of the old one)."""
    make_module_dir(tmp_path, "testkit", module_id="alpha")
    with trio.fail_after(90):
        async with open_api(tmp_path) as (_, client):
            await say(client, "alpha", "the old module's line")
            params = {"follow": "1", "lines": "0"}
            async with client.stream("GET", "/api/modules/alpha/logs", params=params) as stream:
                response = await client.delete("/api/modules/alpha")
                assert response.status_code == 204, response.text
                with trio.fail_after(10):
                    rest = await stream.aread()
                assert b"the old module's line" not in rest
            assert log_files(tmp_path, "alpha") == []
        make_module_dir(tmp_path, "testkit", module_id="alpha")
        async with open_api(tmp_path) as (_, client):
            lines = await log_of(client, "alpha")
    assert not [x for x in lines if x["message"] == "the old module's line"]
    index(lines, "testkit loaded", "host")


async def test_a_flood_rotates_its_own_files_and_evicts_no_other_log(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """A module logging long lines as fast as it may: its files rotate, at most FILES of
    at most FILE_BYTES each; another module's line is still in its log and its file."""
    make_module_dir(tmp_path, "testkit", module_id="alpha")
    make_module_dir(tmp_path, "testkit", module_id="beta")
    long = "x" * 8000
    with trio.fail_after(120):
        async with open_api(tmp_path) as (_, client):
            await say(client, "beta", "beta's own line")
            for _ in range(4):
                answer = await client.post(
                    "/api/modules/alpha/call/log", json={"message": long, "count": 400}
                )
                assert answer.status_code == 200, answer.text
            flood = [x for x in await log_of(client, "alpha") if x["message"] == long]
            beta = await log_of(client, "beta")
    # Enough got through the module's rate limit for a rotation to be due.
    assert len(flood) * len(long) > FILE_BYTES
    files = log_files(tmp_path, "alpha")
    assert 2 <= len(files) <= FILES, files
    assert all(p.stat().st_size <= FILE_BYTES for p in files), [p.stat().st_size for p in files]
    index(beta, "beta's own line", "host")
    on_disk = (logs_dir(tmp_path) / "modules" / "beta.log").read_text()
    assert "beta's own line" in on_disk
