"""``vessel-ctl logs``: a module's log (``logs ID``) or the daemon's own (``logs --daemon``),
the newest lines, then with ``-f`` the new ones until Ctrl-C; ``--level`` keeps the lines
at that level or above (the daemon filters).

What is printed comes from modules and their guests, which may write anything: every
control character is shown escaped (``\\x1b``), never sent to the terminal.
"""

from __future__ import annotations

import argparse
import json
from contextlib import nullcontext

from ._ctl_client import Client, CtlError, Settings, module_path
from ._ctl_commands import UsageError, about_module, out
from ._ctl_format import format_log_line

#: What ``--level`` takes (the daemon also knows ``warn`` and ``fatal``).
LEVELS = ("debug", "info", "warning", "error", "critical")
DAEMON_LOG = "api/daemon/logs"


def _params(args: argparse.Namespace) -> dict[str, str]:
    params = {"lines": str(args.lines)}
    if args.level:
        params["level"] = args.level
    return params


def cmd_logs(settings: Settings, args: argparse.Namespace) -> int:
    if args.daemon and args.id is not None:
        raise UsageError("give a module ID or --daemon, not both")
    if not args.daemon and args.id is None:
        raise UsageError("name a module ID (vessel-ctl list shows them), or --daemon for the "
                         "daemon's own log")  # fmt: skip
    path = DAEMON_LOG if args.daemon else module_path(args.id, "logs")
    what = "the daemon's log" if args.daemon else f"the log of {args.id}"
    named = nullcontext() if args.daemon else about_module(args.id)
    with Client(settings) as client, named:
        if args.follow:
            return _follow(client, settings, path, _params(args), what)
        doc = client.json("GET", path, params=_params(args))
    if settings.json:
        out(json.dumps(doc, indent=2))  # ASCII-only: every control character escaped
    else:
        for line in doc.get("lines", []):
            out(format_log_line(line))
    return 0


def _follow(
    client: Client, settings: Settings, path: str, params: dict[str, str], what: str
) -> int:
    """Stream until Ctrl-C (``main`` turns the KeyboardInterrupt into exit 0)."""
    with client.stream_lines(path, follow="true", **params) as stream:
        for raw in stream:
            if not raw.strip():
                continue
            try:
                line = json.loads(raw)
            except ValueError:
                out(json.dumps(raw))  # not JSON: shown quoted, escapes and all
                continue
            # ASCII-only JSON: a guest's escape sequences stay escaped.
            out(json.dumps(line) if settings.json else format_log_line(line))
    raise CtlError(f"the daemon ended {what} (it shut down, or the module was removed)")
