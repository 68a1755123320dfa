"""Why a module's process ended is in the module's own log, as the daemon's line (source
"daemon"), for the crashes a REST test cannot cause cheaply: a start that never ends,
and too many traps (the process's own last word, source "process")."""

from __future__ import annotations

from pathlib import Path

import trio

from tests.fixture_types import MakeModuleDir
from vessel._daemon import Daemon
from vessel._logbook import LogLine
from vessel.host._guest_thread import FATAL_EXIT_CODE, MAX_REPLACEMENTS

from .harness import call_error, running_daemon


async def lines_until(daemon: Daemon, module_id: str, prefix: str) -> list[LogLine]:
    """The module's log lines from now up to the daemon's first line starting ``prefix``."""
    seen: list[LogLine] = []
    with daemon.manager.follow_logs(module_id) as lines:
        async for line in lines:
            seen.append(line)
            if line.source == "daemon" and line.message.startswith(prefix):
                return seen
    raise AssertionError(f"the log ended before {prefix!r}: {seen}")


async def test_a_start_that_never_ends_says_so(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """on-load spinning forever: the log says the module did not start within the start
    timeout (not "start failed: no answer")."""
    make_module_dir(tmp_path, "testkit", module_id="alpha", permissions={"storage": True})
    with trio.fail_after(120):
        async with running_daemon(tmp_path, start_timeout=2.0) as daemon:
            daemon.storage.set("alpha", "on_load", "loop", quota_bytes=1 << 20)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(daemon.manager.restart, "alpha")
                seen = await lines_until(daemon, "alpha", "its process ended")
                nursery.cancel_scope.cancel()
    assert seen[-1].level == "error"
    assert seen[-1].message.startswith(
        "its process ended: did not start within 2 s (loading its code and running its on-load)"
    ), seen[-1]


async def test_too_many_traps_end_the_process_with_its_last_word(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """A fourth trap within the period ends the process: its last word (source
    "process", level fatal) and then the daemon's line with the same reason and the
    exit code."""
    make_module_dir(tmp_path, "testkit", module_id="alpha")
    with trio.fail_after(120):
        async with running_daemon(tmp_path) as daemon:
            with daemon.manager.follow_logs("alpha") as lines:
                for _ in range(MAX_REPLACEMENTS + 1):
                    await call_error(daemon, "alpha", "trap")
                seen: list[LogLine] = []
                async for line in lines:
                    seen.append(line)
                    if line.source == "daemon" and line.message.startswith("its process"):
                        break
    last_word = [x for x in seen if x.source == "process"]
    assert len(last_word) == 1, seen
    assert last_word[0].level == "fatal"
    reason = last_word[0].message
    assert reason.startswith(f"{MAX_REPLACEMENTS + 1} traps within 60 s (last: "), reason
    assert seen[-1].message == f"its process ended: {reason} (exited with code {FATAL_EXIT_CODE})"
