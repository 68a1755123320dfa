"""``vessel-ctl``: the admin CLI. It talks to a running daemon over its REST API (and its
WebSocket, for ``events``); ``new`` and ``build``, the module author's toolchain, need no
daemon.

Layout (private modules):

* ``_ctl_parser``    the argparse tree, global settings, pattern and KEY=VALUE splitting
* ``_ctl_client``    settings, the token, HTTP requests and their errors (``CtlError``)
* ``_ctl_format``    tables, durations, sizes, times: what a person reads
* ``_ctl_commands``  the request/answer commands (status, list, info, restart, call, logs…)
* ``_ctl_config``    ``config``: list, show, set and delete configuration keys
* ``_ctl_scaffold``  ``new``: a Python module folder from the template
* ``_ctl_build``     ``build``, and the one build path ``install`` shares with it
* ``_ctl_install``   finding, building and uploading a module
* ``_ctl_events``    the live event stream over ``/ws`` (trio + trio-websocket)

Exit status: 0 success; 1 an expected failure, explained in one line on stderr; 2 a usage
error (argparse). Ctrl-C ends ``events`` and ``logs -f`` with status 0.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from ._ctl_client import CtlError, Settings
from ._ctl_commands import (
    UsageError,
    cmd_call,
    cmd_disable,
    cmd_enable,
    cmd_info,
    cmd_list,
    cmd_remove,
    cmd_restart,
    cmd_status,
)
from ._ctl_config import cmd_config
from ._ctl_logs import cmd_logs
from ._ctl_parser import build_parser, resolve_settings, split_pattern, split_setting

__all__ = ["build_parser", "main", "split_pattern", "split_setting"]

Command = Callable[[Settings, argparse.Namespace], int]


def _new(settings: Settings, args: argparse.Namespace) -> int:
    # Imported on use, like the two below: they pull in the manifest schema and the
    # toolchain, which the daemon commands do not need.
    from ._ctl_scaffold import cmd_new

    return cmd_new(settings, args)


def _build(settings: Settings, args: argparse.Namespace) -> int:
    from ._ctl_build import cmd_build

    return cmd_build(settings, args)


def _install(settings: Settings, args: argparse.Namespace) -> int:
    from ._ctl_install import cmd_install

    return cmd_install(settings, args)


def _events(settings: Settings, args: argparse.Namespace) -> int:
    from ._ctl_events import cmd_events

    return cmd_events(settings, args)


COMMANDS: dict[str, Command] = {
    "status": cmd_status,
    "list": cmd_list,
    "info": cmd_info,
    "new": _new,
    "build": _build,
    "install": _install,
    "remove": cmd_remove,
    "enable": cmd_enable,
    "disable": cmd_disable,
    "restart": cmd_restart,
    "logs": cmd_logs,
    "call": cmd_call,
    "events": _events,
    "config": cmd_config,
}


def _is_stream(args: argparse.Namespace) -> bool:
    """Commands that run until Ctrl-C, for which Ctrl-C is the normal end."""
    return args.command == "events" or (args.command == "logs" and bool(args.follow))


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = resolve_settings(args, os.environ)
        status = COMMANDS[args.command](settings, args)
    except UsageError as exc:
        parser.error(f"{args.command}: {exc}")
    except CtlError as exc:
        print(f"vessel-ctl: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        if _is_stream(args):
            raise SystemExit(0) from None
        print("vessel-ctl: interrupted", file=sys.stderr, flush=True)
        raise SystemExit(130) from None
    except BrokenPipeError:
        # The reader went away (`vessel-ctl events | head`): stop quietly. Point stdout
        # at /dev/null so the interpreter's final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise SystemExit(0) from None
    raise SystemExit(status)


if __name__ == "__main__":
    main()
