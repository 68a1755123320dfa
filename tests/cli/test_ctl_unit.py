"""vessel-ctl without a daemon: parsing, settings, formatting, and the errors a user sees
before any request succeeds."""

from __future__ import annotations

import io
import json
import shutil
import socket
import time
from collections.abc import Mapping
from pathlib import Path

import pytest
import trio

from vessel.cli._ctl_client import CtlError, Settings, normalize_url, read_token
from vessel.cli._ctl_commands import UsageError, read_params
from vessel.cli._ctl_events import subscriptions
from vessel.cli._ctl_format import (
    MASK,
    format_bytes,
    format_duration,
    format_event,
    format_log_line,
    format_module_info,
    format_module_list,
    format_not_ok,
    format_table,
    shown_value,
)
from vessel.cli._ctl_install import find_module_files
from vessel.cli._ctl_parser import COMMANDS, build_parser, resolve_settings
from vessel.cli.ctl import main, split_pattern, split_setting

from ._support import base_env, ctl

# -- parsing and settings -----------------------------------------------------------------


def test_global_options_work_before_and_after_the_command() -> None:
    """`--json`/`--url` may follow the command without being reset by the subparser."""
    parser = build_parser()
    before = parser.parse_args(["--json", "--url", "http://h:1", "list"])
    after = parser.parse_args(["list", "--json", "--url", "http://h:1"])
    plain = parser.parse_args(["--json", "list"])
    for args in (before, after):
        assert args.json is True
        assert args.url == "http://h:1"
    assert plain.json is True
    assert plain.url is None


def test_subcommand_arguments() -> None:
    """Each command's own arguments parse to the names the commands read."""
    parser = build_parser()
    logs = parser.parse_args(["logs", "kit", "-n", "5", "-f"])
    assert (logs.id, logs.lines, logs.follow) == ("kit", 5, True)
    call = parser.parse_args(["call", "kit", "echo", '{"a": 1}', "--version", "2"])
    assert (call.module, call.name, call.params, call.version) == ("kit", "echo", '{"a": 1}', 2)
    assert parser.parse_args(["call", "kit", "echo"]).params == "{}"
    remove = parser.parse_args(["remove", "kit", "--keep-storage"])
    assert remove.keep_storage is True
    install = parser.parse_args(["install", "some/dir", "--replace"])
    assert (install.path, install.replace) == (Path("some/dir"), True)
    events = parser.parse_args(["events", "a.*", "b"])
    assert events.patterns == ["a.*", "b"]
    config = parser.parse_args(["config", "kit", "--delete", "url"])
    assert (config.id, config.setting, config.delete) == ("kit", None, "url")


@pytest.mark.parametrize(
    "argv",
    [[], ["frobnicate"], ["info"], ["logs", "kit", "-n", "-3"], ["list", "--timeout", "0"]],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """A malformed command line is exit status 2 with argparse's usage message."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "usage: vessel-ctl" in capsys.readouterr().err


def test_settings_come_from_options_then_environment_then_defaults(tmp_path: Path) -> None:
    """--url/--token/--data-dir beat VESSEL_URL/VESSEL_TOKEN/VESSEL_DATA_DIR, which beat
    the defaults (127.0.0.1:8080, the token file)."""
    parser = build_parser()
    env = {
        "VESSEL_URL": "http://envhost:1",
        "VESSEL_TOKEN": "envtoken",
        "VESSEL_DATA_DIR": str(tmp_path / "env"),
    }
    from_env = resolve_settings(parser.parse_args(["list"]), env)
    assert (from_env.url, from_env.token, from_env.data_dir) == (
        "http://envhost:1",
        "envtoken",
        tmp_path / "env",
    )
    explicit = resolve_settings(
        parser.parse_args(
            ["--url", "optionhost:2/", "--token", "t", "--data-dir", str(tmp_path), "list"]
        ),
        env,
    )
    assert explicit.url == "http://optionhost:2"
    assert (explicit.token, explicit.data_dir) == ("t", tmp_path)
    default = resolve_settings(parser.parse_args(["list"]), {"VESSEL_DATA_DIR": str(tmp_path)})
    assert default.url == "http://127.0.0.1:8080"
    assert default.token is None


@pytest.mark.parametrize("url", ["ftp://h", "http://", "http://h:notaport", "http://h/api"])
def test_bad_urls_are_refused(url: str) -> None:
    """A URL that cannot name a daemon is an error before any connection."""
    with pytest.raises(CtlError, match="invalid --url"):
        normalize_url(url)


def test_token_falls_back_to_the_data_dir_token_file(tmp_path: Path) -> None:
    """Without --token/VESSEL_TOKEN the daemon's <data-dir>/token is used; without that
    file the error says every way to give one."""
    settings = Settings(url="http://127.0.0.1:1", data_dir=tmp_path)
    with pytest.raises(CtlError) as exc:
        read_token(settings)
    message = str(exc.value)
    assert message.startswith(
        "no token: set VESSEL_TOKEN or pass --token-file, or run on the daemon's host"
    )
    assert str(tmp_path / "token") in message
    (tmp_path / "token").write_text("secret-token\n")
    assert read_token(settings) == "secret-token"
    explicit = Settings(url="http://127.0.0.1:1", data_dir=tmp_path, token="given")
    assert read_token(explicit) == "given"


def test_token_file_beats_the_environment_and_never_goes_on_the_command_line(
    tmp_path: Path,
) -> None:
    """--token-file FILE is read when the token is needed, and beats VESSEL_TOKEN (the
    command line beats the environment); VESSEL_TOKEN_FILE comes after VESSEL_TOKEN;
    --token with --token-file is a usage error. A missing, unreadable or empty file is
    one line naming it."""
    token_file = tmp_path / "token-file"
    token_file.write_text("from-the-file\n")
    parser = build_parser()
    env = {"VESSEL_TOKEN": "from-env", "VESSEL_DATA_DIR": str(tmp_path / "data")}
    settings = resolve_settings(parser.parse_args(["list", "--token-file", str(token_file)]), env)
    assert (settings.token, settings.token_file) == (None, token_file)
    assert read_token(settings) == "from-the-file"
    from_env = resolve_settings(
        parser.parse_args(["list"]), {**env, "VESSEL_TOKEN_FILE": str(token_file)}
    )
    assert read_token(from_env) == "from-env"
    only_file = resolve_settings(
        parser.parse_args(["list"]), {"VESSEL_TOKEN_FILE": str(token_file)}
    )
    assert read_token(only_file) == "from-the-file"
    with pytest.raises(UsageError, match="--token or --token-file, not both"):
        resolve_settings(
            parser.parse_args(["--token", "t", "list", "--token-file", str(token_file)]), env
        )

    for path, why in (
        (tmp_path / "missing", f"cannot read the token file {tmp_path / 'missing'}: "),
        (tmp_path, f"cannot read the token file {tmp_path}: "),
        (tmp_path / "empty", f"the token file {tmp_path / 'empty'} is empty"),
    ):
        (tmp_path / "empty").write_text("\n")
        given = Settings(url="http://127.0.0.1:1", data_dir=tmp_path, token_file=path)
        with pytest.raises(CtlError) as exc:
            read_token(given)
        assert str(exc.value).startswith(why), exc.value
        assert "\n" not in str(exc.value)


# -- patterns, settings, params -------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("*.*", ("*", "*")),
        ("vessel.module.*", ("vessel", "module.*")),
        ("example", ("example", "*")),
        ("home-assistant.state_changed", ("home-assistant", "state_changed")),
        ("*.tick", ("*", "tick")),
    ],
)
def test_split_pattern_at_first_dot(pattern: str, expected: tuple[str, str]) -> None:
    """An events PATTERN splits at its first dot into module and name globs."""
    assert split_pattern(pattern) == expected


@pytest.mark.parametrize("pattern", [".x", "x.", ""])
def test_split_pattern_refuses_empty_parts(pattern: str) -> None:
    """A pattern with an empty module or name part is refused, not sent."""
    with pytest.raises(ValueError, match="bad event pattern"):
        split_pattern(pattern)


def test_events_default_to_everything() -> None:
    """`vessel-ctl events` with no pattern subscribes to module "*" name "*"."""
    assert subscriptions([]) == [("*", "*")]
    assert subscriptions(["a.b", "c"]) == [("a", "b"), ("c", "*")]


def test_split_setting() -> None:
    """KEY=VALUE splits at the first '=' (values may contain '='); KEY alone reads."""
    assert split_setting("url=http://h/?a=b") == ("url", "http://h/?a=b")
    assert split_setting("url") == ("url", None)
    assert split_setting("empty=") == ("empty", "")
    with pytest.raises(ValueError, match="bad setting"):
        split_setting("=x")


def test_params_must_be_json(monkeypatch: pytest.MonkeyPatch) -> None:
    """Params are checked before anything is sent; '-' reads them from stdin."""
    assert read_params('{"a": [1, 2]}') == '{"a": [1, 2]}'
    with pytest.raises(CtlError, match=r"^invalid JSON for params: Expecting"):
        read_params("{a: 1}")
    # A module's commands take an object: an array is refused here, not by the module.
    with pytest.raises(CtlError, match=r"^params must be a JSON object, .* \(got an array\)$"):
        read_params("[1, 2]")
    with pytest.raises(CtlError, match=r"\(got a number\)$"):
        read_params("3")
    monkeypatch.setattr("sys.stdin", io.StringIO('{"from": "stdin"}'))
    assert json.loads(read_params("-")) == {"from": "stdin"}


def test_invalid_params_exit_1_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """`call` with bad JSON exits 1 with one `vessel-ctl: invalid JSON for params` line,
    no traceback, and never contacts the daemon (the URL is unreachable)."""
    with pytest.raises(SystemExit) as exc:
        main(["--url", "http://127.0.0.1:1", "--token", "t", "call", "kit", "echo", "{nope"])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("vessel-ctl: invalid JSON for params: ")
    assert err.count("\n") == 1


def test_config_usage_conflicts_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    """KEY[=VALUE] together with --delete, or --stdin with anything else, is a usage
    error, decided before connecting (and before reading standard input)."""
    for argv, expected in (
        (["kit", "a=b", "--delete", "a"], "not both"),
        (["kit", "a=b", "--stdin", "token"], "--stdin KEY sets that one key"),
        (["kit", "--stdin", "token=x"], "--stdin takes a KEY, not KEY=VALUE"),
    ):
        with pytest.raises(SystemExit) as exc:
            main(["--url", "http://127.0.0.1:1", "config", *argv])
        assert exc.value.code == 2
        assert expected in capsys.readouterr().err


# -- formatting -----------------------------------------------------------------------------


def test_table_columns_align() -> None:
    """Columns are as wide as their widest cell, two spaces apart, without trailing blanks."""
    table = format_table(("ID", "STATE"), [["a-long-id", "running"], ["b", "-"]])
    assert table.splitlines() == ["ID         STATE", "a-long-id  running", "b          -"]


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(None, "-"), (0.4, "0s"), (42, "42s"), (307, "5m07s"), (11040, "3h04m"), (183600, "2d03h")],
)
def test_durations(seconds: float | None, shown: str) -> None:
    """Uptimes show at most two units."""
    assert format_duration(seconds) == shown


@pytest.mark.parametrize(
    ("size", "shown"),
    [(None, "-"), (512, "512 B"), (2048, "2.0 KiB"), (12_900_000, "12.3 MiB"), ("n/a", "n/a")],
)
def test_sizes(size: object, shown: str) -> None:
    """Memory shows in binary units; a value that is not a number is shown as it is."""
    assert format_bytes(size) == shown


def test_module_list_has_the_columns_and_refused_modules() -> None:
    """`list` shows ID STATE HEALTH PID RESTARTS UPTIME MEMORY VERSION, then what the
    modules that are not ok say of their health, what a module still needs configured,
    then refused modules with their reason."""
    doc = {
        "modules": [
            {
                "id": "kit",
                "state": "running",
                "pid": 4242,
                "restarts": 1,
                "uptime": 65.2,
                "memory": 3 * 1024 * 1024,
                "version": "0.1.0",
                "health": {"status": "ok", "message": "fine", "since": 1},
            },
            {"id": "off", "state": "disabled", "pid": None, "restarts": 0, "version": "2.0.0"},
            {
                "id": "ha",
                "state": "running",
                "pid": 7,
                "restarts": 0,
                "version": "0.3.0",
                "missing_settings": ["token", "pin"],
                "health": {"status": "error", "message": "not configured", "since": 1},
            },
        ],
        "refused": [{"id": "bad", "reason": "hash mismatch", "dir": "/d/modules/bad"}],
    }
    lines = format_module_list(doc).splitlines()
    assert lines[0].split() == [
        "ID", "STATE", "HEALTH", "PID", "RESTARTS", "UPTIME", "MEMORY", "VERSION"
    ]  # fmt: skip
    assert lines[1].split() == ["kit", "running", "ok", "4242", "1", "1m05s", "3.0", "MiB", "0.1.0"]
    assert lines[2].split() == ["off", "disabled", "-", "-", "0", "-", "-", "2.0.0"]
    assert lines[3].split()[:3] == ["ha", "running", "error"]
    assert "ha reports error: not configured" in lines
    assert not any(line.startswith(("kit reports", "off reports")) for line in lines)
    hint = "ha needs configuration: token, pin (vessel-ctl config ha --stdin KEY, for each)"
    assert hint in lines
    assert not any(line.startswith(("kit needs", "off needs")) for line in lines)
    assert any("bad: hash mismatch" in line for line in lines[7:])


def test_health_in_info_and_status() -> None:
    """`info` has a health line (the status and the module's message, "-" without a
    report); `status` prints each entry of /healthz's not_ok on one line."""
    info = {"id": "ha", "health": {"status": "degraded", "message": "reconnecting", "since": 1}}
    assert "health:" in format_module_info(info)
    assert any(
        line.split(None, 1) == ["health:", "degraded: reconnecting"]
        for line in format_module_info(info).splitlines()
    )
    assert any(
        line.split(None, 1) == ["health:", "-"]
        for line in format_module_info({"id": "kit"}).splitlines()
    )
    assert (
        format_not_ok(
            {"id": "ha", "state": "running", "health": "error", "message": "token refused"}
        )
        == "ha: running, health error: token refused"
    )
    assert (
        format_not_ok(
            {"id": "kit", "state": "crashed", "health": None, "message": "killed by SIGKILL"}
        )
        == "kit: crashed: killed by SIGKILL"
    )


def test_event_and_log_lines() -> None:
    """An event prints as `time module.name data` (retained state a subscribe replayed
    says so); a log line as `time LEVEL source: msg`."""
    ts = int(time.mktime((2025, 1, 31, 14, 3, 7, 0, 0, -1))) * 1000 + 250
    event = {"module": "vessel", "name": "module.started", "data": {"module": "kit"}}
    assert format_event({**event, "timestamp": ts}) == (
        '14:03:07.250 vessel.module.started {"module":"kit"}'
    )
    state = {"module": "example", "name": "tick", "data": {"count": 5}, "replayed": True}
    assert format_event({**state, "timestamp": ts}) == (
        '14:03:07.250 example.tick {"count":5} (retained)'
    )
    line = {"timestamp": ts, "level": "info", "source": "guest", "message": "testkit loaded"}
    assert format_log_line(line) == "2025-01-31 14:03:07.250 INFO  guest: testkit loaded"


def test_credentials_are_masked_in_listings() -> None:
    """Values of keys naming a token, password, secret or key never print in a listing."""
    for key in ("token", "ha_TOKEN", "password", "client_secret", "api_key"):
        assert shown_value(key, "hunter2") == MASK
    assert shown_value("url", "http://h") == "http://h"


# -- install: which files are uploaded ------------------------------------------------------

REPO = Path(__file__).resolve().parents[2]


def test_install_finds_the_manifest_and_the_component(tmp_path: Path) -> None:
    """PATH may be a folder (module.wasm at the top, else build/module.wasm) or a .wasm
    file with manifest.json beside it or one folder up; anything else is a clear error."""
    folder = tmp_path / "mod"
    (folder / "build").mkdir(parents=True)
    manifest = folder / "manifest.json"
    manifest.write_text("{}")
    built = folder / "build" / "module.wasm"
    built.write_bytes(b"built")
    assert find_module_files(folder) == (manifest, built)
    top = folder / "module.wasm"
    top.write_bytes(b"top")
    assert find_module_files(folder) == (manifest, top)
    assert find_module_files(top) == (manifest, top)
    assert find_module_files(built) == (manifest, built)

    with pytest.raises(CtlError, match=r"no manifest\.json beside it"):
        find_module_files(_file(tmp_path / "lonely" / "x.wasm"))
    with pytest.raises(CtlError, match=r"expected a module folder or a \.wasm file"):
        find_module_files(manifest)
    with pytest.raises(CtlError, match="no such file or folder"):
        find_module_files(tmp_path / "missing")
    with pytest.raises(CtlError, match=r"no manifest\.json"):
        find_module_files(_file(tmp_path / "empty" / "readme").parent)
    only_manifest = tmp_path / "only"
    _file(only_manifest / "manifest.json")
    with pytest.raises(CtlError, match=r"no module.wasm \(looked in"):
        find_module_files(only_manifest)


def _file(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_install_of_python_source_goes_through_the_toolchain(
    tmp_path: Path, built_guests: Mapping[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """A folder with app.py is built with the toolchain before upload; a current build is
    reused (the toolchain's cache key), and progress goes to stderr, not stdout."""
    src = tmp_path / "testkit"
    shutil.copytree(REPO / "tests" / "guests" / "testkit", src)
    cached = built_guests["testkit"]
    (src / "build").mkdir()
    shutil.copyfile(cached, src / "build" / "module.wasm")
    shutil.copyfile(cached.with_name("module.wasm.key"), src / "build" / "module.wasm.key")
    assert find_module_files(src) == (src / "manifest.json", src / "build" / "module.wasm")
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "testkit: up to date" in captured.err


# -- as a subprocess --------------------------------------------------------------------------


async def test_help_of_every_command_exits_0() -> None:
    """`vessel-ctl --help` and `vessel-ctl COMMAND --help` exit 0 with a description and
    examples for every command."""
    results: dict[str, tuple[int, str]] = {}

    async def run(name: str) -> None:
        args = [name, "--help"] if name else ["--help"]
        result = await ctl(*args, env=base_env())
        results[name] = (result.returncode, result.stdout)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for name in ["", *COMMANDS]:
                nursery.start_soon(run, name)
    for name, (code, out) in results.items():
        assert code == 0, name
        assert "examples:" in out, name
        if name:
            assert COMMANDS[name].summary in out, name
            assert f"usage: vessel-ctl {name}" in out


def _closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.mark.parametrize("command", [["list"], ["status"], ["events"], ["restart", "kit"]])
async def test_daemon_not_running(command: list[str]) -> None:
    """Against a closed port every command exits 1 with one line naming the URL and how to
    start the daemon, and no traceback."""
    url = f"http://127.0.0.1:{_closed_port()}"
    result = await ctl("--url", url, "--token", "t", *command, env=base_env())
    assert result.returncode == 1, result
    assert result.stderr == (
        f"vessel-ctl: daemon not running at {url} (connection refused); "
        "start it with `vessel serve`\n"
    ), result
    assert result.stdout == ""


async def test_no_token_is_one_line(tmp_path: Path) -> None:
    """Without any token the error says how to give one (and names the file it tried)."""
    url = f"http://127.0.0.1:{_closed_port()}"
    result = await ctl("--url", url, "--data-dir", str(tmp_path), "list", env=base_env())
    assert result.returncode == 1, result
    assert result.stderr.startswith("vessel-ctl: no token: set VESSEL_TOKEN or pass --token-file")
    assert result.stderr.count("\n") == 1
