"""`vessel-ctl logs` against a real `vessel serve`: a module's log across a restart of the
module and of the daemon, the daemon's own log (--daemon, --level, -f), and a guest's
terminal escapes shown escaped, never sent to the terminal."""

from __future__ import annotations

import json
import re
from pathlib import Path

import trio

from tests.fixture_types import MakeModuleDir
from vessel.cli._ctl_format import format_log_line

from ._support import ctl, spawn_ctl, start_daemon, stop_daemon
from .test_ctl_e2e import run_ok

#: What a terminal would act on (C0 but tab, DEL, C1).
RAW_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f]")


async def test_logs_of_a_module_go_on_across_restarts_and_escape_controls(
    tmp_path: Path, make_module_dir: MakeModuleDir, nursery: trio.Nursery
) -> None:
    """`logs kit` shows the lines from before `restart kit` and before a restart of the
    daemon, then the new ones; what the guest printed with escape sequences is shown as
    \\x1b..., in plain and --json output."""
    data = tmp_path / "data"
    make_module_dir(data, "testkit", module_id="kit")
    daemon = await start_daemon(nursery, data)
    try:
        await run_ok(daemon, "call", "kit", "log", '{"message": "before the restart"}')
        printed = {"text": "\x1b[31mred\x1b[0m \x9b2J \u202eevil"}
        await run_ok(daemon, "call", "kit", "print", json.dumps(printed))
        await run_ok(daemon, "restart", "kit")
        logs = await run_ok(daemon, "logs", "kit")
        assert logs.index("before the restart") < logs.index("daemon: its process was stopped")
        assert logs.rindex("testkit loaded") > logs.index("its process was stopped")
        assert "stdout: \\x1b[31mred\\x1b[0m \\x9b2J \\u202eevil" in logs
        assert not RAW_CONTROL.search(logs.replace("\n", "")), logs
        assert "\u202e" not in logs
        as_json = await run_ok(daemon, "--json", "logs", "kit")
        assert not RAW_CONTROL.search(as_json.replace("\n", ""))
        assert printed["text"] in [x["message"] for x in json.loads(as_json)["lines"]]
    finally:
        await stop_daemon(daemon)

    daemon = await start_daemon(nursery, data)
    try:
        logs = await run_ok(daemon, "logs", "kit", "-n", "1000")
        assert logs.index("before the restart") < logs.rindex("testkit loaded")
        warnings = await run_ok(daemon, "logs", "kit", "--level", "warning", "-n", "1000")
        assert "before the restart" not in warnings  # an info line
    finally:
        await stop_daemon(daemon)


async def test_the_daemons_own_log(
    tmp_path: Path, make_module_dir: MakeModuleDir, nursery: trio.Nursery
) -> None:
    """`logs --daemon` shows the daemon's records (its start), --level keeps that level
    and above, -f prints new records until Ctrl-C; without an id or --daemon, or with
    both, the command line is refused saying what to give."""
    data = tmp_path / "data"
    make_module_dir(data, "testkit", module_id="kit")
    daemon = await start_daemon(nursery, data)
    try:
        own = await run_ok(daemon, "logs", "--daemon")
        assert re.search(r" INFO  vessel: vessel running on http://127\.0\.0\.1:\d+", own), own
        assert "testkit loaded" not in own  # the module's line is in the module's log
        warnings = await run_ok(daemon, "logs", "--daemon", "--level", "warning")
        assert "vessel running on" not in warnings
        as_json = json.loads(await run_ok(daemon, "--json", "logs", "--daemon", "-n", "1000"))
        started = [x for x in as_json["lines"] if x["message"].startswith("vessel running on")]
        assert [(x["level"], x["source"]) for x in started] == [("info", "vessel")]

        follow = await spawn_ctl("logs", "--daemon", "-f", "-n", "0", env=daemon.env)
        try:
            await run_ok(daemon, "restart", "kit")
            await follow.stdout.wait_for(lambda s: "vessel.manager: module kit started" in s)
        finally:
            code = await follow.interrupt()
        assert code == 0, follow.stderr.text
        assert "Traceback" not in follow.stderr.text

        for args, said in (
            (("logs",), "name a module ID"),
            (("logs", "kit", "--daemon"), "give a module ID or --daemon, not both"),
            (("logs", "--daemon", "--level", "loud"), "not a level: 'loud'"),
        ):
            result = await ctl(*args, env=daemon.env)
            assert result.returncode == 2, result
            assert said in result.stderr, result
    finally:
        await stop_daemon(daemon)


def test_a_log_line_is_printed_without_anything_a_terminal_acts_on() -> None:
    """Escape sequences (C0 and C1), a carriage return and bidirectional overrides are
    written escaped, in the message and the source; a message on several lines keeps
    its lines, the later ones indented, so none passes for a line of the log."""
    line = {
        "timestamp": 0,
        "level": "error",
        "source": "std\x1b]0;x\x07out",
        "message": "\x1b[2Jcleared\rover \x9b31m \u202eevil\nTraceback:\n  File x",
    }
    printed = format_log_line(line)
    assert printed.endswith(
        " ERROR std\\x1b]0;x\\x07out: \\x1b[2Jcleared\\rover \\x9b31m \\u202eevil"
        "\n    Traceback:\n      File x"
    ), printed
    assert not RAW_CONTROL.search(printed.replace("\n", ""))
    assert "\u202e" not in printed
