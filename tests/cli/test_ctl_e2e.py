"""vessel-ctl against the real daemon: both run as subprocesses, the way an operator uses
them (`vessel serve` on 127.0.0.1 port 0, `vessel-ctl` finding it through VESSEL_URL and
its token through VESSEL_DATA_DIR)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.fixture_types import MakeModuleDir

from ..procs import alive, descendants_of
from ._support import (
    Daemon,
    Result,
    Spawned,
    ctl,
    spawn_ctl,
    start_daemon,
    stop_daemon,
)

#: Installing compiles the component, in a process of its own at a low priority: ~15 s
#: here, and 100 s was seen beside busy loops on every CPU.
INSTALL_TIMEOUT = 600.0


async def run_ok(daemon: Daemon, *args: str, timeout: float = 30.0) -> str:
    """Run a vessel-ctl command that must succeed; its stdout."""
    result = await ctl(*args, env=daemon.env, timeout=timeout)
    assert result.returncode == 0, f"vessel-ctl {' '.join(args)}: {result}"
    return result.stdout


async def modules(daemon: Daemon) -> dict[str, dict[str, Any]]:
    """`vessel-ctl --json list`, by module id."""
    doc = json.loads(await run_ok(daemon, "--json", "list"))
    return {m["id"]: m for m in doc["modules"]}


def table_row(listing: str, module_id: str) -> list[str]:
    for line in listing.splitlines():
        cells = line.split()
        if cells and cells[0] == module_id:
            return cells
    raise AssertionError(f"{module_id} not in:\n{listing}")


def lifecycle(line: str) -> tuple[str, dict[str, Any]]:
    """A plain `events` line, ``HH:MM:SS.mmm module.name {data}`` -> (module.name, data)."""
    _clock, key, data = line.split(" ", 2)
    return key, json.loads(data)


async def wait_watching(events: Spawned) -> None:
    """`events` says `watching` once the daemon acknowledged every subscription."""
    await events.stderr.wait_for(lambda s: s.startswith("vessel-ctl: watching"))


def guest_source_folder(folder: Path, wasm: Path, module_id: str, **manifest: Any) -> Path:
    """A module folder as a developer has it: testkit's manifest (new id) + module.wasm."""
    doc = json.loads((Path(__file__).parents[1] / "guests/testkit/manifest.json").read_text())
    doc.update(id=module_id, **manifest)
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps(doc, indent=2))
    shutil.copyfile(wasm, folder / "module.wasm")
    return folder


@pytest.mark.watchdog(900)  # a compile at a low priority, on a busy machine (above)
async def test_install_list_restart_and_lifecycle_events(
    tmp_path: Path, built_guests: Mapping[str, Path], nursery: trio.Nursery
) -> None:
    """`install` uploads a module folder, says it is compiling, and the module runs;
    `list` shows it running with its pid; `restart` gives it a new pid, and a concurrent
    `vessel-ctl events 'vessel.module.*'` sees it stop (old pid) and start (new pid);
    Ctrl-C ends `events` with status 0."""
    daemon = await start_daemon(nursery, tmp_path / "data")
    try:
        src = guest_source_folder(tmp_path / "src", built_guests["testkit"], "uploaded")
        installed = await ctl("install", str(src), env=daemon.env, timeout=INSTALL_TIMEOUT)
        assert installed.returncode == 0, installed
        # It says what the daemon does while it compiles, not just "uploading".
        assert "compiling uploaded… " in installed.stderr, installed.stderr
        out = installed.stdout
        assert out.startswith("installed uploaded 0.1.0: running, pid "), out
        old_pid = int(out.rsplit(" ", 1)[1])

        row = table_row(await run_ok(daemon, "list"), "uploaded")
        assert row[:4] == ["uploaded", "running", "-", str(old_pid)]  # "-": no health report

        again = await ctl("install", str(src), env=daemon.env, timeout=INSTALL_TIMEOUT)
        assert again.returncode == 1
        assert "already installed; pass --replace" in again.stderr
        assert "uploading" not in again.stderr  # refused before anything was sent

        events = await spawn_ctl("events", "vessel.module.*", env=daemon.env)
        try:
            await wait_watching(events)
            out = await run_ok(daemon, "restart", "uploaded")
            assert out.startswith(f"restarted uploaded: pid {old_pid} → pid "), out
            new_pid = int(out.rsplit(" ", 1)[1])
            assert new_pid != old_pid

            seen: dict[str, dict[str, Any]] = {}

            def lifecycle_of_uploaded(line: str) -> bool:
                key, data = lifecycle(line)
                if data.get("module") == "uploaded":
                    seen[key] = data
                return "vessel.module.started" in seen

            await events.stdout.wait_for(lifecycle_of_uploaded)
            assert seen["vessel.module.stopped"]["pid"] == old_pid
            assert seen["vessel.module.started"]["pid"] == new_pid
        finally:
            code = await events.interrupt()
        assert code == 0, events.stderr.text
        assert "Traceback" not in events.stderr.text

        assert (await modules(daemon))["uploaded"]["pid"] == new_pid
    finally:
        await stop_daemon(daemon)


async def test_call_config_logs_and_errors(
    tmp_path: Path, make_module_dir: MakeModuleDir, nursery: trio.Nursery
) -> None:
    """`call` prints the module's JSON answer; a value set with `config` is what the module
    reads from its storage; `logs` shows its log lines and `logs -f` streams new ones
    until Ctrl-C (with the token from --token-file, which keeps it out of the command
    line other users can read); expected failures are one line on stderr with exit
    status 1."""
    data = tmp_path / "data"
    make_module_dir(data, "testkit", module_id="kit", permissions={"storage": True})
    daemon = await start_daemon(nursery, data)
    try:
        status = await run_ok(daemon, "status")
        assert f"vessel is running at {daemon.url}" in status
        assert "host API version: 1" in status
        assert "modules: 1 installed, 1 running, 0 failed" in status

        params = {"hello": ["world", 1], "nested": {"ok": True}}
        answer = await run_ok(daemon, "call", "kit", "echo", json.dumps(params))
        assert json.loads(answer) == params
        raw = json.loads(await run_ok(daemon, "--json", "call", "kit", "echo", "{}"))
        assert raw == {"data": {}}

        await run_ok(daemon, "config", "kit", "greeting=hello = world")
        read = await run_ok(daemon, "call", "kit", "storage_get", '{"key": "greeting"}')
        assert json.loads(read) == {"value": "hello = world"}
        listed = await ctl("config", "kit", env=daemon.env)
        assert listed.returncode == 0, listed
        assert listed.stdout.split() == ["greeting"]
        # Its keys are its storage, not settings it declares: said beside the list.
        assert listed.stderr == "kit declares no settings; the keys of its storage:\n"
        assert await run_ok(daemon, "config", "kit", "greeting") == "hello = world\n"
        await run_ok(daemon, "config", "kit", "api_token=s3cret")
        listing = await run_ok(daemon, "config", "kit", "--values")
        assert "greeting=hello = world" in listing
        assert "s3cret" not in listing
        await run_ok(daemon, "config", "kit", "--delete", "greeting")
        read = await run_ok(daemon, "call", "kit", "storage_get", '{"key": "greeting"}')
        assert json.loads(read) == {"value": None}

        logs = await run_ok(daemon, "logs", "kit", "-n", "50")
        assert "testkit loaded" in logs
        token = (data / "token").read_text().strip()
        token_file = tmp_path / "my-token"
        token_file.write_text(token + "\n")
        without_data_dir = {k: v for k, v in daemon.env.items() if k != "VESSEL_DATA_DIR"}
        follow = await spawn_ctl("--token-file", str(token_file), "logs", "-f", "kit",
                                 env=without_data_dir)  # fmt: skip
        try:
            await follow.stdout.wait_for(lambda s: "testkit loaded" in s)
            cmdline = Path(f"/proc/{follow.process.pid}/cmdline").read_bytes()
            assert token.encode() not in cmdline
            await run_ok(daemon, "call", "kit", "log", '{"message": "followed line"}')
            await follow.stdout.wait_for(lambda s: "followed line" in s)
        finally:
            code = await follow.interrupt()
        assert code == 0, follow.stderr.text
        assert "Traceback" not in follow.stderr.text

        wrong_file = tmp_path / "wrong-token"
        wrong_file.write_text("wrong\n")
        failures = {
            ("info", "nosuch"): "vessel-ctl: unknown module 'nosuch'\n",
            ("call", "nosuch", "echo"): "vessel-ctl: unknown module 'nosuch'\n",
            ("--token", "wrong", "list"): "vessel-ctl: wrong token: ",
            ("--token-file", str(wrong_file), "list"): "vessel-ctl: wrong token: ",
            ("--token-file", str(tmp_path / "nofile"), "list"): (
                f"vessel-ctl: cannot read the token file {tmp_path / 'nofile'}: "
            ),
            ("config", "kit", "missing"): "vessel-ctl: module 'kit' has no config key 'missing'",
            ("call", "kit", "fail"): "vessel-ctl: kit.fail@1 failed (",
        }
        results: dict[tuple[str, ...], Result] = {}

        async def attempt(args: tuple[str, ...]) -> None:
            results[args] = await ctl(*args, env=daemon.env)

        async with trio.open_nursery() as attempts:
            for args in failures:
                attempts.start_soon(attempt, args)
        for args, expected in failures.items():
            result = results[args]
            assert result.returncode == 1, (args, result)
            assert result.stderr.startswith(expected), (args, result)
            assert result.stderr.count("\n") == 1, (args, result)

        out = await run_ok(daemon, "remove", "kit")
        assert out == "removed kit\n"
        assert await modules(daemon) == {}
    finally:
        await stop_daemon(daemon)


async def test_config_of_a_module_with_declared_settings(
    tmp_path: Path, make_module_dir: MakeModuleDir, nursery: trio.Nursery
) -> None:
    """`config ID` lists the settings the manifest declares: set, default or missing,
    and what each is for; reading a declared setting that is not set says how to set it;
    a key it does not declare is refused naming the ones it does;
    `--values` masks a setting declared secret whatever its name; `--stdin KEY` sets a
    value read from standard input."""
    data = tmp_path / "data"
    settings = {
        "url": {"label": "Server URL", "default": "ws://server.local/ws"},
        "pin": {"label": "PIN", "description": "The door's code.", "secret": True,
                "required": True},
        "mode": {},
    }  # fmt: skip
    make_module_dir(
        data, "testkit", module_id="kit", permissions={"storage": True},
        manifest={"settings": settings},
    )  # fmt: skip
    daemon = await start_daemon(nursery, data)
    try:
        lines = (await run_ok(daemon, "config", "kit")).splitlines()
        assert lines[0].split() == ["KEY", "STATE", "ABOUT"]
        assert lines[1].split() == ["url", "default", "Server", "URL"]
        assert lines[2].split() == ["pin", "MISSING", "PIN:", "The", "door's", "code."]
        assert lines[3].split() == ["mode", "unset", "mode"]
        assert len(lines) == 4

        # A declared setting that is not set is not "no such key": it says how to set it.
        unset = await ctl("config", "kit", "pin", env=daemon.env)
        assert unset.returncode == 1, unset
        assert unset.stderr == (
            "vessel-ctl: module 'kit' declares the setting 'pin' (required), and it is not "
            "set; set it with: vessel-ctl config kit --stdin pin\n"
        )
        typo = await ctl("config", "kit", "pn=1234", env=daemon.env)
        assert typo.returncode == 1, typo
        assert typo.stderr == (
            "vessel-ctl: module 'kit' has no setting 'pn'; its settings: url, pin, mode\n"
        )
        await run_ok(daemon, "config", "kit", "pin=1234", "mode=eco")
        listing = await run_ok(daemon, "config", "kit", "--values")
        assert "1234" not in listing
        rows = [line.split()[:3] for line in listing.splitlines()]
        assert rows[1:] == [["url", "default", "ws://server.local/ws"],
                            ["pin", "set", "********"], ["mode", "set", "eco"]]  # fmt: skip
        listed = json.loads(await run_ok(daemon, "--json", "config", "kit"))
        assert [s["set"] for s in listed["settings"]] == [False, True, True]

        # A secret from standard input: not on the command line, one newline dropped.
        piped = await ctl("config", "kit", "--stdin", "pin", env=daemon.env, stdin=b"9 8 7\n")
        assert (piped.returncode, piped.stdout) == (0, "set kit config pin\n"), piped
        read = await run_ok(daemon, "call", "kit", "storage_get", '{"key": "pin"}')
        assert json.loads(read) == {"value": "9 8 7"}
        empty = await ctl("config", "kit", "--stdin", "pin", env=daemon.env, stdin=b"\n")
        assert empty.returncode == 2, empty
        assert "standard input holds no value for 'pin'; nothing was set" in empty.stderr
        assert await run_ok(daemon, "config", "kit", "pin") == "9 8 7\n"
    finally:
        await stop_daemon(daemon)


async def test_disable_survives_a_daemon_restart_and_sigterm_leaves_no_child(
    tmp_path: Path, make_module_dir: MakeModuleDir, nursery: trio.Nursery
) -> None:
    """A module stopped with `disable` stays disabled when the daemon restarts on the same
    data dir; SIGTERM on `vessel serve` exits 0 with every module process gone."""
    data = tmp_path / "data"
    make_module_dir(data, "testkit", module_id="kit")
    make_module_dir(data, "testkit", module_id="off")
    daemon = await start_daemon(nursery, data)
    try:
        off_pid = (await modules(daemon))["off"]["pid"]
        # A child of the fork server, which is the child of vessel serve.
        off_process = {c for c in descendants_of(daemon.pid) if c[0] == off_pid}
        assert off_process, "the module process runs below vessel serve"
        out = await run_ok(daemon, "disable", "off")
        assert out == "disabled off: disabled\n"
        assert alive(off_process) == [], "disable stopped the module's process"
        listing = await run_ok(daemon, "list")
        assert table_row(listing, "off")[:3] == ["off", "disabled", "-"]
        assert table_row(listing, "kit")[1] == "running"
        kit_pid = (await modules(daemon))["kit"]["pid"]
        children = descendants_of(daemon.pid)
        assert kit_pid in {pid for pid, _ in children}
    finally:
        code = await stop_daemon(daemon)
    assert code == 0, daemon.stderr.text
    assert alive(children) == [], "module processes outlived vessel serve"

    daemon = await start_daemon(nursery, data)
    try:
        after = await modules(daemon)
        assert (after["off"]["state"], after["off"]["enabled"]) == ("disabled", False)
        assert after["kit"]["state"] == "running"
        out = await run_ok(daemon, "enable", "off")
        assert out.startswith("enabled off: running, pid "), out
    finally:
        await stop_daemon(daemon)
