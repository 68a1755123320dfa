"""``vessel-ctl``'s command line: the argparse tree and the global settings.

Global options work before or after the command (``vessel-ctl --json list`` and
``vessel-ctl list --json``): each subcommand repeats them with ``SUPPRESS`` defaults, so a
value given after the command wins and an absent one does not reset it.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path

from .._paths import default_data_dir
from ._ctl_client import DEFAULT_URL, Settings, normalize_url
from ._ctl_commands import UsageError

PROG = "vessel-ctl"

DESCRIPTION = """\
Administer a running Vessel daemon over its REST API: list, install and remove modules,
start and stop them, read their logs, set their configuration, call them and watch events.
Write modules too: `new` makes a Python module folder and `build` builds it (these two
need no daemon).

The admin token is read from <data-dir>/token when vessel-ctl runs on the daemon's host
as the daemon's user; elsewhere set VESSEL_TOKEN or pass --token-file (--token works too,
but every local user can read a command line)."""

EPILOG = """\
exit status: 0 success; 1 the command failed (one line on stderr says why);
2 the command line is wrong.

examples:
  vessel-ctl status
  vessel-ctl list
  vessel-ctl restart home-assistant
  vessel-ctl new my-module && vessel-ctl install my-module
  vessel-ctl --url http://server.lan:8080 --token-file ~/.config/vessel/token list
  vessel-ctl logs --help"""


class _Command:
    """One subcommand's texts: a one-line description and its examples."""

    def __init__(self, name: str, summary: str, *examples: str) -> None:
        self.name = name
        self.summary = summary
        self.examples = examples

    @property
    def epilog(self) -> str:
        return "examples:\n" + "\n".join(f"  {PROG} {e}" for e in self.examples)


COMMANDS: dict[str, _Command] = {
    c.name: c
    for c in (
        _Command("status", "Is the daemon running? Its API version and module counts.", "status"),
        _Command("list", "List installed modules and their state (and refused ones).", "list"),
        _Command("info", "Show everything about one module.", "info home-assistant"),
        _Command(
            "new",
            "Create a Python module folder NAME/ (manifest.json, app.py, README.md).",
            "new my-module",
            "new my-module --dir ~/src",
        ),
        _Command(
            "build",
            "Build a Python module folder into build/module.wasm (no daemon needed).",
            "build my-module",
            "build my-module --force",
            "build my-module --out /tmp/my-module.wasm",
        ),
        _Command(
            "install",
            "Install a module from a folder (manifest.json + module.wasm, or app.py: built "
            "first) or a .wasm file.",
            "install my-module",
            "install modules/example",
            "install ./my-module/build/module.wasm",
            "install --replace modules/example",
        ),
        _Command(
            "remove",
            "Uninstall a module (and delete its storage unless --keep-storage).",
            "remove example",
            "remove example --keep-storage",
        ),
        _Command("enable", "Enable a module and start it; it starts with the daemon.", "enable x"),
        _Command("disable", "Stop a module; it stays stopped across daemon restarts.", "disable x"),
        _Command(
            "restart",
            "Restart a module's process (also clears a failed state).",
            "restart home-assistant",
        ),
        _Command(
            "logs",
            "Show a module's log (kept across its restarts and the daemon's), or the "
            "daemon's own with --daemon; -f follows new lines until Ctrl-C.",
            "logs example",
            "logs example -n 200",
            "logs -f home-assistant",
            "logs --daemon --level warning",
            "logs --daemon -f",
        ),
        _Command(
            "call",
            "Call a module's command with JSON params and print its JSON answer.",
            "call vessel ping",
            'call example greet \'{"name": "Ada"}\'',
            'call home-assistant get_state \'{"entity_id": "light.kitchen"}\' --version 1',
            "call example greet - < params.json",
        ),
        _Command(
            "events",
            "Print live events until Ctrl-C (PATTERN: module.name globs, default *.*).",
            "events",
            "events 'vessel.module.*'",
            "events 'home-assistant.*' 'example.tick'",
            "events --json 'vessel.*' | jq .data",
        ),
        _Command(
            "config",
            "List, show, set or delete a module's configuration keys.",
            "config home-assistant",
            "config home-assistant url=http://homeassistant.local:8123",
            'config home-assistant url=ws://ha:8123/api/websocket token="$HA_TOKEN"',
            "config home-assistant url",
            "config home-assistant --values",
            "config home-assistant --delete token",
            "config home-assistant --stdin token < ha-token.txt",
        ),
    )
}


def _add_global_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """The global options; on subcommands with SUPPRESS defaults (see the module doc)."""

    def default(value: object) -> object:
        return value if top else argparse.SUPPRESS

    group = parser.add_argument_group("global options")
    group.add_argument(
        "--url",
        default=default(None),
        help=f"the daemon's address (env VESSEL_URL; default {DEFAULT_URL})",
    )
    group.add_argument(
        "--token",
        default=default(None),
        help="admin token (env VESSEL_TOKEN; default: read <data-dir>/token). Other local "
        "users can read it in the process list: prefer VESSEL_TOKEN or --token-file",
    )
    group.add_argument(
        "--token-file",
        type=Path,
        default=default(None),
        metavar="FILE",
        help="read the admin token from FILE (env VESSEL_TOKEN_FILE)",
    )
    group.add_argument(
        "--data-dir",
        type=Path,
        default=default(None),
        help="the daemon's data dir, to find its token (env VESSEL_DATA_DIR; "
        "default ~/.local/share/vessel)",
    )
    group.add_argument(
        "--json",
        action="store_true",
        default=default(False),
        help="print the API's JSON instead of text (one object per line when streaming)",
    )
    group.add_argument(
        "--timeout",
        type=_positive_float,
        default=default(None),
        metavar="SECONDS",
        help="how long to wait for the daemon (default 10; install 300)",
    )


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0: {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more: {text!r}")
    return value


def _log_level(text: str) -> str:
    level = text.strip().lower()
    if level not in ("debug", "info", "warning", "warn", "error", "critical", "fatal"):
        raise argparse.ArgumentTypeError(
            f"not a level: {text!r} (debug, info, warning, error or critical)"
        )
    return level


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_global_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str) -> argparse.ArgumentParser:
        command = COMMANDS[name]
        p = sub.add_parser(
            name,
            help=command.summary,
            description=command.summary,
            epilog=command.epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        _add_global_options(p, top=False)
        return p

    add("status")
    add("list")
    add("info").add_argument("id", metavar="ID", help="module id")

    p = add("new")
    p.add_argument(
        "name",
        metavar="NAME",
        help="the module id, also the folder's name (lowercase letters, digits and '-')",
    )
    p.add_argument(
        "--dir",
        type=Path,
        metavar="PARENT",
        help="create PARENT/NAME (default: ./NAME)",
    )

    p = add("build")
    p.add_argument(
        "dir",
        metavar="DIR",
        type=Path,
        help="a Python module folder (manifest.json and app.py)",
    )
    p.add_argument("--force", action="store_true", help="rebuild even when up to date")
    p.add_argument(
        "--out",
        type=Path,
        metavar="FILE",
        help="where to write the component (default DIR/build/module.wasm)",
    )

    p = add("install")
    p.add_argument(
        "path",
        metavar="PATH",
        type=Path,
        help="a module folder (manifest.json and module.wasm or build/module.wasm; one with "
        "app.py is built first), or a .wasm file with manifest.json beside it",
    )
    p.add_argument("--replace", action="store_true", help="replace an installed module")

    p = add("remove")
    p.add_argument("id", metavar="ID", help="module id")
    p.add_argument(
        "--keep-storage",
        action="store_true",
        help="keep the module's storage and configuration for a later reinstall",
    )

    for name in ("enable", "disable", "restart"):
        add(name).add_argument("id", metavar="ID", help="module id")

    p = add("logs")
    p.add_argument("id", metavar="ID", nargs="?", help="module id (or --daemon)")
    p.add_argument(
        "--daemon", action="store_true", help="the daemon's own log instead of a module's"
    )
    p.add_argument(
        "-n",
        "--lines",
        type=_non_negative_int,
        default=100,
        metavar="N",
        help="how many recent lines (default 100, at most 1000)",
    )
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    p.add_argument(
        "--level",
        type=_log_level,
        metavar="LEVEL",
        help="only lines at LEVEL or above: debug, info, warning, error or critical",
    )

    p = add("call")
    p.add_argument("module", metavar="MODULE", help="module id")
    p.add_argument("name", metavar="NAME", help="command name")
    p.add_argument(
        "params",
        metavar="JSON",
        nargs="?",
        default="{}",
        help="params as JSON text (default {}; - reads stdin)",
    )
    p.add_argument(
        "--version",
        type=_non_negative_int,
        default=1,
        metavar="N",
        help="version of the command (default 1)",
    )

    p = add("events")
    p.add_argument(
        "patterns",
        metavar="PATTERN",
        nargs="*",
        help='module.name glob, split at the first dot ("vessel.module.*" is module '
        '"vessel", name "module.*"; "example" is every event of example); default *.*',
    )

    p = add("config")
    p.add_argument("id", metavar="ID", help="module id")
    p.add_argument(
        "setting",
        metavar="KEY[=VALUE]",
        nargs="?",
        help="KEY prints the value; KEY=VALUE sets it; none lists the keys",
    )
    p.add_argument(
        "more",
        metavar="KEY=VALUE",
        nargs="*",
        default=[],
        help="more keys to set in the same call",
    )
    p.add_argument("--delete", metavar="KEY", help="delete KEY")
    p.add_argument(
        "--stdin",
        metavar="KEY",
        help="set KEY to what standard input holds (one trailing newline dropped), or "
        "ask for it without echo on a terminal: a secret stays out of the shell history "
        "and the process list",
    )
    p.add_argument(
        "--values",
        action="store_true",
        help="list keys with their values (credentials masked)",
    )
    return parser


def resolve_settings(args: argparse.Namespace, environ: Mapping[str, str]) -> Settings:
    """The global options, falling back to the environment, then to the defaults.

    The token: --token or --token-file (not both: UsageError), else VESSEL_TOKEN, else
    VESSEL_TOKEN_FILE, else the daemon's <data-dir>/token (read when needed).
    """
    url = args.url or environ.get("VESSEL_URL") or DEFAULT_URL
    if args.data_dir is not None:
        data_dir = Path(args.data_dir).expanduser()
    elif environ.get("VESSEL_DATA_DIR"):
        data_dir = Path(environ["VESSEL_DATA_DIR"]).expanduser()
    else:
        data_dir = default_data_dir()
    token: str | None = args.token or None
    token_file: Path | None = args.token_file
    if token is not None and token_file is not None:
        raise UsageError("give the token one way: --token or --token-file, not both")
    if token is None and token_file is None:
        token = environ.get("VESSEL_TOKEN") or None
        if token is None and environ.get("VESSEL_TOKEN_FILE"):
            token_file = Path(environ["VESSEL_TOKEN_FILE"])
    return Settings(
        url=normalize_url(url),
        data_dir=data_dir,
        token=token,
        token_file=token_file.expanduser() if token_file is not None else None,
        json=bool(args.json),
        timeout=args.timeout,
    )


def split_pattern(pattern: str) -> tuple[str, str]:
    """``"mod.name.*"`` -> ``("mod", "name.*")``: split at the first dot.

    A pattern without a dot matches every event of that module (``"example"`` ->
    ``("example", "*")``). Raises ValueError for an empty module or name part.
    """
    module, dot, name = pattern.partition(".")
    if not dot:
        name = "*"
    if not module or not name:
        raise ValueError(f"bad event pattern {pattern!r}: expected MODULE.NAME, e.g. 'vessel.*'")
    return module, name


def split_setting(setting: str) -> tuple[str, str | None]:
    """``"KEY=VALUE"`` -> ``("KEY", "VALUE")``; ``"KEY"`` -> ``("KEY", None)``.

    Splits at the first ``=``, so a value may contain ``=``. Raises ValueError for an
    empty key.
    """
    key, eq, value = setting.partition("=")
    if not key:
        raise ValueError(f"bad setting {setting!r}: expected KEY or KEY=VALUE")
    return key, (value if eq else None)
