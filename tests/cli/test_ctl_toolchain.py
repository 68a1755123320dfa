"""The module author's toolchain in vessel-ctl: `new`, `build`, `install` of Python source,
and `config` with several KEY=VALUE pairs, all through the real `vessel-ctl` run as a
subprocess in a working folder, as a developer types it (and `vessel serve` as the daemon).

A componentize-py build takes ~10 s: the suite makes one real successful build (the
scaffolded module, then reused by the cache) and two failing ones, run concurrently.
"""

from __future__ import annotations

import json
import shutil
import socket
import time
from pathlib import Path

import pytest
import trio

from vessel._manifest import parse_manifest

from ._support import CTL, Result, base_env, start_daemon, stop_daemon

#: A build runs componentize-py (~10 s, more on a loaded machine); installing compiles the
#: component, in a process of its own at a low priority (100 s was seen beside busy
#: loops on every CPU).
BUILD_TIMEOUT = 600.0
QUICK_TIMEOUT = 30.0

#: The "cached" build re-reads the sources and compares a key: well under this.
UP_TO_DATE_SECONDS = 5.0

NO_TRACEBACK = "Traceback (most recent call last)"


async def run(*args: str, cwd: Path, env: dict[str, str], timeout: float = QUICK_TIMEOUT) -> Result:
    """Run ``vessel-ctl args`` in ``cwd`` to completion (bounded), capturing its output."""
    with trio.fail_after(timeout):
        done = await trio.run_process(
            [*CTL, *args],
            cwd=cwd,
            stdin=b"",
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=env,
        )
    return Result(done.returncode, done.stdout.decode(), done.stderr.decode())


async def run_ok(
    *args: str, cwd: Path, env: dict[str, str], timeout: float = QUICK_TIMEOUT
) -> Result:
    result = await run(*args, cwd=cwd, env=env, timeout=timeout)
    assert result.returncode == 0, f"vessel-ctl {' '.join(args)}: {result}"
    assert NO_TRACEBACK not in result.stderr, result
    return result


def no_daemon_env() -> dict[str, str]:
    """An environment whose daemon address is a closed port: what needs no daemon works."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return base_env(VESSEL_URL=f"http://127.0.0.1:{port}", VESSEL_TOKEN="unused")


def assert_one_line_error(result: Result, expected: str) -> None:
    """Exit 1, nothing on stdout, one line on stderr that contains ``expected``."""
    assert result.returncode == 1, result
    assert result.stdout == "", result
    assert result.stderr.startswith("vessel-ctl: "), result
    assert result.stderr.count("\n") == 1, result
    assert expected in result.stderr, result


@pytest.mark.watchdog(1200)  # a build, then a compile at a low priority (above)
async def test_new_build_install_call_and_config(tmp_path: Path, nursery: trio.Nursery) -> None:
    """From an empty folder and without a daemon, `new greeter` scaffolds a module whose
    manifest the daemon's schema accepts (no permissions) and prints the next steps;
    `build greeter` builds it (progress on stderr), and a second `build` is `up to date`
    at once. Then, against a real daemon, `install greeter` reuses that build (the same
    outcome line as `build`) and starts the module, `call greeter hello` answers with a
    greeting from its params, `logs` shows its on_load line, and `config` sets two
    KEY=VALUE pairs in one call, both read back."""
    work = tmp_path / "work"
    work.mkdir()
    offline = no_daemon_env()

    created = await run_ok("new", "greeter", cwd=work, env=offline)
    assert (
        created.stdout.splitlines()[0] == "created greeter/ with manifest.json, app.py, README.md"
    )
    assert "  vessel-ctl build greeter" in created.stdout
    assert "  vessel-ctl install greeter" in created.stdout
    assert """  vessel-ctl call greeter hello '{"name": "Ada"}'""" in created.stdout
    folder = work / "greeter"
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "app.py", "manifest.json"]
    manifest_bytes = (folder / "manifest.json").read_bytes()
    manifest = parse_manifest(manifest_bytes, source="scaffold")
    assert (manifest.id, manifest.version, manifest.api_version) == ("greeter", "0.1.0", 1)
    assert "permissions" not in json.loads(manifest_bytes)
    app = (folder / "app.py").read_text()
    assert "docs/modules.md" in app
    assert app.rstrip().endswith("Guest = app.guest()")
    readme = (folder / "README.md").read_text()
    for step in ("vessel-ctl build greeter", "vessel-ctl install greeter", "permissions"):
        assert step in readme

    built = await run_ok("build", "greeter", cwd=work, env=offline, timeout=BUILD_TIMEOUT)
    assert built.stdout.startswith("greeter: built in "), built
    assert "(greeter/build/module.wasm, " in built.stdout
    assert "greeter: building " in built.stderr
    wasm = folder / "build" / "module.wasm"
    assert wasm.read_bytes()[:4] == b"\0asm"

    started = time.monotonic()
    again = await run_ok("build", "greeter", cwd=work, env=offline)
    elapsed = time.monotonic() - started
    assert again.stdout == "greeter: up to date (greeter/build/module.wasm)\n", again
    assert again.stderr == ""
    assert elapsed < UP_TO_DATE_SECONDS, elapsed

    # --out FILE: the cache key lives beside FILE, so a copy of the build with its key is
    # current there too (no second 10 s build to prove the option is honoured).
    elsewhere = tmp_path / "dist" / "greeter.wasm"
    elsewhere.parent.mkdir()
    shutil.copyfile(wasm, elsewhere)
    shutil.copyfile(wasm.with_name("module.wasm.key"), elsewhere.with_name("greeter.wasm.key"))
    copied = await run_ok("build", "greeter", "--out", str(elsewhere), cwd=work, env=offline)
    assert copied.stdout == f"greeter: up to date ({elsewhere.resolve()})\n", copied

    daemon = await start_daemon(nursery, tmp_path / "data")
    try:
        env = daemon.env
        installed = await run_ok("install", "greeter", cwd=work, env=env, timeout=BUILD_TIMEOUT)
        assert "greeter: up to date (greeter/build/module.wasm)" in installed.stderr
        assert installed.stdout.startswith("installed greeter 0.1.0: running, pid "), installed

        answer = await run_ok("call", "greeter", "hello", '{"name": "Ada"}', cwd=work, env=env)
        assert json.loads(answer.stdout) == {"greeting": "Hello, Ada!"}
        default = await run_ok("call", "greeter", "hello", cwd=work, env=env)
        assert json.loads(default.stdout) == {"greeting": "Hello, world!"}
        logs = await run_ok("logs", "greeter", cwd=work, env=env)
        assert "greeter loaded" in logs.stdout

        url = "ws://ha:8123/api/websocket"
        both = await run_ok("config", "greeter", f"url={url}", "token=abc", cwd=work, env=env)
        assert both.stdout == "set greeter config url, token\n"
        assert (await run_ok("config", "greeter", "url", cwd=work, env=env)).stdout == url + "\n"
        assert (await run_ok("config", "greeter", "token", cwd=work, env=env)).stdout == "abc\n"
        keys = await run_ok("config", "greeter", cwd=work, env=env)
        assert sorted(keys.stdout.split()) == ["token", "url"]
    finally:
        await stop_daemon(daemon)


async def test_guests_that_do_not_build_are_readable_errors(tmp_path: Path) -> None:
    """A scaffolded guest given a syntax error, and one whose `Guest` export was deleted,
    fail `build` with exit 1 and a readable reason (no traceback of vessel-ctl): the
    first names app.py, the line and the SyntaxError; the second names the missing
    `Guest` and how to export it. Neither leaves a module.wasm behind."""
    offline = no_daemon_env()
    for name in ("broken", "noexport"):
        await run_ok("new", name, cwd=tmp_path, env=offline)
    broken_app = tmp_path / "broken" / "app.py"
    lines = broken_app.read_text().splitlines()
    at = lines.index("app = Module()") + 1  # insert right after it
    lines.insert(at, "def oops(:")
    broken_app.write_text("\n".join(lines) + "\n")
    noexport_app = tmp_path / "noexport" / "app.py"
    noexport_app.write_text(noexport_app.read_text().replace("Guest = app.guest()", ""))

    results: dict[str, Result] = {}

    async def build(name: str) -> None:
        results[name] = await run("build", name, cwd=tmp_path, env=offline, timeout=BUILD_TIMEOUT)

    async with trio.open_nursery() as builds:
        for name in ("broken", "noexport"):
            builds.start_soon(build, name)

    for name, result in results.items():
        assert result.returncode == 1, result
        assert result.stdout == "", result
        assert NO_TRACEBACK not in result.stderr, result
        assert f"vessel-ctl: build failed: {tmp_path / name}: " in result.stderr, result
        assert not (tmp_path / name / "build" / "module.wasm").exists()
    broken = results["broken"].stderr
    assert f'File "{broken_app}", line {at + 1}' in broken, broken
    assert "SyntaxError" in broken
    noexport = results["noexport"].stderr
    assert "module 'app' has no attribute 'Guest'" in noexport, noexport
    assert "end it with `Guest = app.guest()`" in noexport


async def test_new_refuses_bad_ids_and_existing_folders(tmp_path: Path) -> None:
    """`new` refuses an id the daemon would refuse, with the rule in one line, and never
    writes into a folder that exists (its contents are left alone); nothing is created."""
    offline = no_daemon_env()
    rule = "use 1 to 63 lowercase letters, digits and '-', starting with a letter or digit"
    for bad in ("My_Module", "", "a" * 64, "dots.in.id", "sp ace"):
        result = await run("new", bad, cwd=tmp_path, env=offline)
        assert_one_line_error(result, f"invalid module id {bad!r}: {rule}")
    reserved = await run("new", "vessel", cwd=tmp_path, env=offline)
    assert_one_line_error(reserved, "'vessel' is reserved")
    assert list(tmp_path.iterdir()) == []

    existing = tmp_path / "taken"
    existing.mkdir()
    (existing / "app.py").write_text("# mine\n")
    result = await run("new", "taken", cwd=tmp_path, env=offline)
    assert_one_line_error(result, "taken already exists")
    assert [p.name for p in existing.iterdir()] == ["app.py"]
    assert (existing / "app.py").read_text() == "# mine\n"
    elsewhere = await run("new", "taken", "--dir", str(tmp_path), cwd=Path("/"), env=offline)
    assert_one_line_error(elsewhere, f"{existing} already exists")


async def test_build_and_install_refuse_a_bad_manifest_naming_the_field(tmp_path: Path) -> None:
    """A manifest the daemon's schema refuses fails `build` before componentize-py runs,
    naming the file and the field; `install` goes through the same build path, so it
    fails with the same line, before it contacts any daemon."""
    offline = no_daemon_env()
    await run_ok("new", "typo", cwd=tmp_path, env=offline)
    manifest = tmp_path / "typo" / "manifest.json"
    doc = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**doc, "permisions": {"storage": True}}))
    expected = "vessel-ctl: typo/manifest.json: unknown field `permisions`\n"
    built = await run("build", "typo", cwd=tmp_path, env=offline)
    assert_one_line_error(built, "")
    assert built.stderr == expected
    installed = await run("install", "typo", cwd=tmp_path, env=offline)
    assert installed.returncode == 1, installed
    assert installed.stderr == expected

    manifest.write_text(json.dumps({**doc, "version": 1}))
    wrong_type = await run("build", "typo", cwd=tmp_path, env=offline)
    assert_one_line_error(wrong_type, "`$.version` must be a string, got an integer")
    missing = await run("build", "nowhere", cwd=tmp_path, env=offline)
    assert_one_line_error(missing, "nowhere: no such folder")


async def test_config_arguments_that_do_not_go_together_exit_2(tmp_path: Path) -> None:
    """`config` takes one KEY to read, or KEY=VALUE pairs to set: a KEY among pairs, or
    a key given twice, is a usage error (exit 2) caught before any request."""
    offline = no_daemon_env()
    for args, expected in (
        (("url=x", "token"), "'token' has no '='"),
        (("url", "token=y"), "'url' has no '='"),
        (("url=x", "url=y"), "key 'url' is given twice"),
    ):
        result = await run("config", "kit", *args, cwd=tmp_path, env=offline)
        assert result.returncode == 2, result
        assert expected in result.stderr, result
