"""How ``vessel-ctl`` shows things to a person: tables, durations, sizes, times, events.

Pure functions of the API's JSON, so they are tested without a daemon.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

from .._ceilings import limit_ranges

#: Shown in a table cell that has no value (a stopped module has no pid).
EMPTY = "-"

#: Shown instead of a configuration value whose key looks like a credential.
MASK = "********"

#: A key containing one of these (case-insensitive) holds a credential.
SECRET_WORDS = ("token", "password", "secret", "key")

MODULE_COLUMNS = ("ID", "STATE", "HEALTH", "PID", "RESTARTS", "UPTIME", "MEMORY", "VERSION")


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns two spaces apart, no trailing blanks."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = []
    for row in (headers, *rows):
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def format_duration(seconds: float | None) -> str:
    """``42s``, ``5m07s``, ``3h04m``, ``2d03h``: two units at most, like ``ps``."""
    if seconds is None:
        return EMPTY
    total = max(0, int(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def format_bytes(size: object) -> str:
    """``512 B``, ``12.3 MiB``; anything that is not a number of bytes as it is."""
    if size is None:
        return EMPTY
    if isinstance(size, bool) or not isinstance(size, int | float):
        return str(size)
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_clock(timestamp_ms: int) -> str:
    """``14:03:07.250`` in local time (live output: the date is today)."""
    secs, ms = divmod(int(timestamp_ms), 1000)
    return time.strftime("%H:%M:%S", time.localtime(secs)) + f".{ms:03d}"


def format_timestamp(timestamp_ms: int) -> str:
    """``2025-01-31 14:03:07.250`` in local time."""
    secs, ms = divmod(int(timestamp_ms), 1000)
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(secs)) + f".{ms:03d}"


def _cell(value: object) -> str:
    return EMPTY if value is None else str(value)


def module_row(info: Mapping[str, Any]) -> list[str]:
    """One line of ``vessel-ctl list`` (MODULE_COLUMNS)."""
    return [
        _cell(info.get("id")),
        _cell(info.get("state")),
        _cell(_health(info).get("status")),
        _cell(info.get("pid")),
        _cell(info.get("restarts")),
        format_duration(info.get("uptime")),
        format_bytes(info.get("memory")),
        _cell(info.get("version")),
    ]


def _health(info: Mapping[str, Any]) -> Mapping[str, Any]:
    """The module's own health report (``{}``: none, or a daemon older than it)."""
    health = info.get("health")
    return health if isinstance(health, Mapping) else {}


def format_health(info: Mapping[str, Any]) -> str:
    """``error: Home Assistant refused the token ...`` / ``ok`` / ``-``."""
    health = _health(info)
    if not health:
        return EMPTY
    message = health.get("message")
    return f"{health.get('status')}: {message}" if message else str(health.get("status"))


def format_not_ok(problem: Mapping[str, Any]) -> str:
    """One entry of ``/healthz``'s ``not_ok``: ``ha: running, health error: ...`` or
    ``kit: crashed: killed by SIGKILL``."""
    state, health = problem.get("state"), problem.get("health")
    what = f"{state}, health {health}" if health else str(state)
    message = problem.get("message")
    return f"{problem.get('id')}: {what}" + (f": {message}" if message else "")


def format_module_list(doc: Mapping[str, Any]) -> str:
    """The answer of ``GET /api/modules`` as a table, refused modules below it."""
    modules = doc.get("modules") or []
    lines = [format_table(MODULE_COLUMNS, [module_row(m) for m in modules])]
    if not modules:
        lines = ["no modules installed"]
    unwell = [m for m in modules if _health(m).get("status") not in (None, "ok")]
    if unwell:
        lines.append("")
        for m in unwell:
            lines.append(f"{m.get('id')} reports {format_health(m)}")
    unconfigured = [m for m in modules if m.get("missing_settings")]
    if unconfigured:
        lines.append("")
        for m in unconfigured:
            missing = ", ".join(m["missing_settings"])
            # --stdin: a setting is often a secret, which must not go on a command line.
            lines.append(
                f"{m.get('id')} needs configuration: {missing} "
                f"(vessel-ctl config {m.get('id')} --stdin KEY, for each)"
            )
    installing = doc.get("installing") or []
    if installing:
        lines.append("")
        lines.append(f"installs under way or ended in the last minutes ({len(installing)}):")
        for i in installing:
            lines.append(f"  {i.get('id')} {i.get('version')}: {_install_state(i)}")
    refused = doc.get("refused") or []
    if refused:
        lines.append("")
        lines.append(f"refused ({len(refused)}): fix the module folder, then restart vessel")
        for r in refused:
            where = f" [{r['dir']}]" if r.get("dir") else ""
            lines.append(f"  {r.get('id')}: {r.get('reason')}{where}")
    return "\n".join(lines)


def _install_state(install: Mapping[str, Any]) -> str:
    state = str(install.get("state"))
    if state == "failed":
        return f"failed: {install.get('reason')}"
    if state == "installed":
        return "installed"
    return f"{state}, {install.get('elapsed', 0):.0f} s so far"


def format_module_info(info: Mapping[str, Any]) -> str:
    """``vessel-ctl info``: one ``field: value`` per line, permissions and limits as JSON."""
    fields: list[tuple[str, str]] = [
        ("id", _cell(info.get("id"))),
        ("name", _cell(info.get("name"))),
        ("version", _cell(info.get("version"))),
        ("api version", _cell(info.get("api_version"))),
        ("description", _cell(info.get("description"))),
        ("kind", _cell(info.get("kind"))),
        ("state", _cell(info.get("state"))),
        ("health", format_health(info)),
        ("enabled", "yes" if info.get("enabled", True) else "no"),
        ("pid", _cell(info.get("pid"))),
        ("restarts", _cell(info.get("restarts"))),
        ("uptime", format_duration(info.get("uptime"))),
        ("memory", format_bytes(info.get("memory"))),
        ("last reason", _cell(info.get("last_reason"))),
        ("missing settings", ", ".join(info.get("missing_settings") or []) or EMPTY),
        ("hash", _cell(info.get("hash"))),
    ]
    if "permissions" in info:
        fields.append(("network", format_network(info["permissions"])))
    if "raised_limits" in info:  # a daemon older than the field does not say
        fields.append(("raised limits", format_raised_limits(info["raised_limits"]) or EMPTY))
    for section in ("permissions", "limits"):
        if section in info:
            fields.append((section, json.dumps(info[section], sort_keys=True)))
    if "egress" in info:  # since the process started; the daemon's API says more
        egress = format_egress(info["egress"])
        fields.append(("egress", egress[0] if egress else "nothing sent since it started"))
        fields.extend(("", line) for line in egress[1:])
    width = max(len(name) for name, _ in fields)
    # A field of several lines (egress) continues under its first value.
    return "\n".join(f"{name + ':' if name else '':<{width + 1}} {value}" for name, value in fields)


def format_network(permissions: Mapping[str, Any] | None) -> str:
    """Where the module may connect, in words: ``websocket to {settings.url}``; ``http to
    any host`` with a warning when its manifest names no destinations; ``none``."""
    network = (permissions or {}).get("network") or {}
    kinds = " and ".join(kind for kind in ("http", "websocket") if network.get(kind))
    if not kinds:
        return "none"
    hosts = network.get("hosts")
    if hosts is None:
        return (
            f"{kinds} to any host (warning: its manifest lists no permissions.network.hosts, "
            "so it may connect anywhere)"
        )
    return f"{kinds} to {', '.join(hosts)}" if hosts else f"{kinds} to no host"


def format_egress(entries: Sequence[Mapping[str, Any]]) -> list[str]:
    """``vessel-ctl info``'s egress lines, one per destination: ``ws://ha.local:8123:
    1 connection, 5.0 KiB sent, 859.6 KiB received, last used 2025-01-31 14:03:07.250``,
    with the denied attempts when there were any."""
    lines = []
    for e in entries:
        parts = []
        if e.get("requests"):
            parts.append(_plural(e["requests"], "request"))
        if e.get("connections"):
            parts.append(_plural(e["connections"], "connection"))
        if e.get("last_used") is not None:
            parts.append(f"{format_bytes(e.get('bytes_sent', 0))} sent")
            parts.append(f"{format_bytes(e.get('bytes_received', 0))} received")
            parts.append(f"last used {format_timestamp(e['last_used'])}")
        if e.get("denied"):
            parts.append(
                f"{_plural(e['denied'], 'attempt')} denied, the last "
                f"{format_timestamp(e['last_denied'])}"
            )
        lines.append(f"{e.get('destination')}: {', '.join(parts)}")
    return lines


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def format_raised_limits(raised: Mapping[str, Any] | None) -> str:
    """``memory_mb 512 (default 128), max_event_rate 5000 (default 200)``: the limits a
    module gave itself above their defaults (``""``: none)."""
    raised = raised or {}
    ranges = limit_ranges()
    order = list(ranges)
    # In the manifest schema's order (the API's JSON object comes sorted by name); a
    # limit this vessel-ctl does not know, from a newer daemon, last.
    names = sorted(raised, key=lambda n: (order.index(n) if n in ranges else len(order), n))
    return ", ".join(
        f"{name} {raised[name]}" + (f" (default {ranges[name].default})" if name in ranges else "")
        for name in names
    )


def format_event(event: Mapping[str, Any]) -> str:
    """``14:03:07.250 vessel.module.started {"module":"kit","pid":4242}``; `` (retained)``
    at the end for the retained state a subscribe replayed."""
    timestamp = event.get("timestamp")
    clock = format_clock(timestamp) if isinstance(timestamp, int) else EMPTY
    data = json.dumps(event.get("data"), separators=(",", ":"), ensure_ascii=False)
    # A subscribe's replay is the current state, stamped when it was emitted: not news.
    replayed = " (retained)" if event.get("replayed") is True else ""
    return f"{clock} {event.get('module')}.{event.get('name')} {data}{replayed}"


def format_log_line(line: Mapping[str, Any]) -> str:
    """``2025-01-31 14:03:07.250 INFO  host: testkit loaded``, its control characters
    escaped (a guest's line may hold terminal escape sequences)."""
    timestamp = line.get("timestamp")
    when = format_timestamp(timestamp) if isinstance(timestamp, int) else EMPTY
    level = printable(str(line.get("level", "")).upper())
    # A message on several lines (a traceback) stays readable, its lines indented: no
    # line of it can pass for a line of the log.
    message = "\n    ".join(printable(part) for part in str(line.get("message")).split("\n"))
    return f"{when} {level:<5} {printable(str(line.get('source')))}: {message}"


#: What a terminal could act on: C0 and C1 controls (ESC, CSI, a newline that would
#: start a forged line) and the bidirectional overrides that reorder what is shown.
_UNPRINTABLE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """``text`` with each control character written as an escape (``\\x1b``, ``\\n``)."""
    return _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode(), text)


def is_secret_key(key: str) -> bool:
    lowered = key.lower()
    return any(word in lowered for word in SECRET_WORDS)


def shown_value(key: str, value: str | None) -> str:
    """A configuration value for a listing: credentials are masked."""
    if value is None:
        return EMPTY
    return MASK if is_secret_key(key) else value


def pretty_json(doc: object) -> str:
    return json.dumps(doc, indent=2, ensure_ascii=False)
