"""``vessel serve`` options checked at start, run as an operator runs it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
import trio

from tests.fixture_types import MakeModuleDir

from ._support import (
    MODULES_STARTED,
    RUNNING,
    SERVE,
    START_TIMEOUT,
    LineReader,
    base_env,
    stop_daemon_process,
)


async def test_a_ca_file_that_cannot_be_used_stops_the_start_with_one_line(
    tmp_path: Path,
) -> None:
    """A missing or wrong ``--ca-file`` ends ``vessel serve`` at once, exit 1, with one
    line naming the file and the problem: before the data dir is touched, and before any
    module could run without the trust its admin asked for."""
    not_pem = tmp_path / "ha.crt"
    not_pem.write_bytes(b"\x30\x82\x01\x0a binary DER, not PEM")
    for ca_file, problem in ((tmp_path / "missing.pem", "cannot read it"),
                             (not_pem, "no certificate in it")):  # fmt: skip
        data = tmp_path / "data"
        serve = [*SERVE, "--data-dir", str(data), "--port", "0", "--no-bundled"]
        with trio.fail_after(30):
            done = await trio.run_process(
                [*serve, "--ca-file", str(ca_file)],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                env=base_env(),
            )
        err = done.stderr.decode()
        assert done.returncode == 1, err
        assert err.strip().splitlines()[-1].startswith(f"vessel: --ca-file {ca_file}: {problem}")
        assert "Traceback" not in err, err
        assert not data.exists()


async def test_a_bad_limit_ceiling_stops_the_start_with_one_line(tmp_path: Path) -> None:
    """A ``--limit-ceiling`` (or ``VESSEL_LIMIT_CEILINGS`` entry) that names no limit, or
    sets a ceiling below the limit's default, is a usage error naming it, before the data
    dir is touched."""
    data = tmp_path / "data"
    serve = [*SERVE, "--data-dir", str(data), "--port", "0", "--no-bundled"]
    for args, env, problem in (
        (["--limit-ceiling", "memry_mb=512"], {}, "no limit 'memry_mb'; the limits are: "),
        ([], {"VESSEL_LIMIT_CEILINGS": "max_timers=300,memory_mb=64"},
         "memory_mb: the ceiling must be between the default 128"),
    ):  # fmt: skip
        with trio.fail_after(30):
            done = await trio.run_process(
                [*serve, *args], capture_stderr=True, check=False, env=base_env(**env)
            )
        err = done.stderr.decode()
        assert done.returncode == 2, err
        last = err.strip().splitlines()[-1]
        assert last.startswith(
            f"vessel: error: --limit-ceiling (or VESSEL_LIMIT_CEILINGS): {problem}"
        ), err
        assert not data.exists()


# A compile runs at a low priority: beside busy loops on every CPU it took 100 s here.
@pytest.mark.watchdog(900)
async def test_the_gateway_answers_while_a_module_compiles(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """``vessel serve`` does not wait for its modules: with a module that must be
    compiled first (a real ~18 MiB component, seconds of Cranelift), /healthz answers
    and the module is listed as ``compiling`` before its compile is over; the log says
    what is compiled; the module then runs, started once, and a final line says so."""
    data = tmp_path / "data"
    module_dir = make_module_dir(data, "testkit", module_id="alpha", permissions={})
    shutil.rmtree(module_dir / "compiled")
    serve = [*SERVE, "--data-dir", str(data), "--port", "0", "--no-bundled"]
    process = await trio.lowlevel.open_process(
        [*serve, "--compile-jobs", "1"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=base_env(VESSEL_LOG_LEVEL="INFO"),
    )
    assert process.stderr is not None
    stderr = LineReader(process.stderr)
    try:
        line = await stderr.wait_for(lambda s: RUNNING.search(s) is not None, timeout=START_TIMEOUT)
        match = RUNNING.search(line)
        assert match is not None
        token = (data / "token").read_text().strip()
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=match.group(1), timeout=10) as http:
            assert (await http.get("/healthz")).status_code == 200
            info = (await http.get("/api/modules/alpha", headers=headers)).json()
        assert info["state"] == "compiling", info
        assert info["compiling_for"] >= 0
        # Fifty times what it takes on an idle machine: a compile gives way to all else.
        started = await stderr.wait_for(lambda s: MODULES_STARTED in s, timeout=600)
        assert "1 running (alpha)" in started, started
        assert "compiling alpha (1/1)…" in stderr.text
        assert "compiled alpha in " in stderr.text
        assert "restart" not in stderr.text.lower(), stderr.text
    finally:
        with trio.CancelScope(shield=True):
            await stop_daemon_process(process)
            await process.stderr.aclose()
