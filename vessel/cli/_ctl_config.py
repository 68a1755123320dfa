"""``vessel-ctl config``: a module's configuration, the user's side of its storage.

Listing shows keys only, unless ``--values``, which masks the values of keys that look
like credentials (token, password, secret, key) or that the manifest declares secret. A
module whose manifest declares ``settings`` is listed as a table of them: whether each
is set, uses its default or is missing, and what it is for. Several ``KEY=VALUE`` pairs are set in
one call, one request each, in order; every pair is checked before the first is sent.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable
from typing import Any

from ._ctl_client import ApiError, Client, CtlError, Settings, module_path
from ._ctl_commands import UsageError, about_module, note, out
from ._ctl_format import EMPTY, MASK, format_table, pretty_json, shown_value
from ._ctl_parser import split_setting


def _pairs(settings: list[str]) -> list[tuple[str, str]]:
    """``KEY=VALUE`` arguments as (key, value), all checked before any is sent."""
    pairs: list[tuple[str, str]] = []
    for setting in settings:
        try:
            key, value = split_setting(setting)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if value is None:
            raise UsageError(
                f"{setting!r} has no '=': give one KEY to read it, or KEY=VALUE pairs to set"
            )
        if any(key == seen for seen, _ in pairs):
            raise UsageError(f"key {key!r} is given twice")
        pairs.append((key, value))
    return pairs


def cmd_config(settings: Settings, args: argparse.Namespace) -> int:
    given = [args.setting, *args.more] if args.setting is not None else []
    if args.delete is not None and given:
        raise UsageError("give either KEY[=VALUE] or --delete KEY, not both")
    if args.values and (args.delete is not None or given):
        raise UsageError("--values lists every key; it takes no KEY")
    key: str | None = None
    pairs: list[tuple[str, str]] = []
    if args.stdin is not None:
        if given or args.delete is not None or args.values:
            raise UsageError(
                "--stdin KEY sets that one key: give no other KEY, --delete or --values"
            )
        pairs = [(args.stdin, _read_value(args.id, args.stdin))]
    elif given:
        try:
            key, value = split_setting(given[0])
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if value is not None or len(given) > 1:
            key = None
            pairs = _pairs(given)
    with Client(settings) as client, about_module(args.id):
        if args.delete is not None:
            _config_delete(client, args.id, args.delete)
            if not settings.json:
                out(f"deleted {args.id} config {args.delete}")
            return 0
        if key is not None:
            doc = _config_get(client, args.id, key)
            out(pretty_json(doc) if settings.json else str(doc.get("value")))
            return 0
        if not pairs:
            return _config_list(client, settings, args.id, with_values=args.values)
        for done, (name, value) in enumerate(pairs):
            try:
                client.request("PUT", module_path(args.id, "config", name), json={"value": value})
            except CtlError as exc:
                if done:
                    kept = ", ".join(k for k, _ in pairs[:done])
                    raise CtlError(f"{exc} (while setting {name!r}; already set: {kept})") from None
                raise
    if not settings.json:
        out(f"set {args.id} config {', '.join(k for k, _ in pairs)}")
    return 0


def _read_value(module_id: str, key: str) -> str:
    """The value for ``--stdin KEY``: typed without echo on a terminal, else all of
    standard input less one trailing newline (``echo`` and editors add one)."""
    try:
        checked, value = split_setting(key)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if value is not None:
        raise UsageError(f"--stdin takes a KEY, not KEY=VALUE: {key!r}")
    if sys.stdin.isatty():
        text = getpass.getpass(f"{checked} for {module_id} (not shown): ")
    else:
        text = sys.stdin.read()
        text = text[:-2] if text.endswith("\r\n") else text.removesuffix("\n")
    if not text:
        raise UsageError(f"standard input holds no value for {checked!r}; nothing was set")
    return text


def _no_key(module_id: str, key: str) -> CtlError:
    return CtlError(f"module {module_id!r} has no config key {key!r}")


def _config_get(client: Client, module_id: str, key: str) -> dict[str, Any]:
    try:
        doc: dict[str, Any] = client.json("GET", module_path(module_id, "config", key))
    except ApiError as exc:
        if exc.status == 404 and "declares the setting" in exc.message:
            # Set it without the value on the command line (secrets often are).
            raise CtlError(
                f"{exc.message}; set it with: vessel-ctl config {module_id} --stdin {key}"
            ) from None
        if exc.status == 404 and exc.code != "unknown_module":
            raise _no_key(module_id, key) from None
        raise
    return doc


def _config_delete(client: Client, module_id: str, key: str) -> None:
    try:
        client.request("DELETE", module_path(module_id, "config", key))
    except ApiError as exc:
        if exc.status == 404 and exc.code != "unknown_module":
            raise _no_key(module_id, key) from None
        raise


def _config_list(client: Client, settings: Settings, module_id: str, *, with_values: bool) -> int:
    doc = client.json("GET", module_path(module_id, "config"))
    keys = [str(k) for k in doc.get("keys", [])]
    declared: list[dict[str, Any]] = list(doc.get("settings", []))
    secret = {str(s["key"]) for s in declared if s.get("secret")}
    values: dict[str, str | None] = {}
    if with_values:
        for key in keys:
            try:
                values[key] = _config_get(client, module_id, key).get("value")
            except CtlError:
                values[key] = None  # deleted meanwhile

    def shown(key: str) -> str:
        return (
            MASK
            if key in secret and values.get(key) is not None
            else shown_value(key, values.get(key))
        )

    if settings.json:
        listed = {**doc, "values": {k: shown(k) for k in keys}} if with_values else doc
        out(pretty_json(listed))
    elif declared:
        _settings_table(declared, keys, shown if with_values else None)
    elif not keys:
        note(f"{module_id} has no configuration")
    else:
        # Without declared settings nothing tells an admin's keys from the module's own
        # data (the example's count): say so, on stderr, so the listing stays a list.
        note(f"{module_id} declares no settings; the keys of its storage:")
        for key in keys:
            out(f"{key}={shown_value(key, values.get(key))}" if with_values else key)
    return 0


def _settings_table(
    declared: list[dict[str, Any]], keys: list[str], shown: Callable[[str], str] | None
) -> None:
    """The declared settings (state, and value with ``--values``), then any other keys."""
    headers = ["KEY", "STATE", *(["VALUE"] if shown else []), "ABOUT"]
    rows = []
    for setting in declared:
        key = str(setting["key"])
        default = setting.get("default")
        if setting.get("set"):
            state, value = "set", shown(key) if shown else ""
        elif default is not None:
            state, value = "default", str(default)
        else:
            state, value = ("MISSING" if setting.get("required") else "unset"), EMPTY
        about = str(setting.get("label") or key)
        if setting.get("description"):
            about += f": {setting['description']}"
        rows.append([key, state, *([value] if shown else []), about])
    out(format_table(headers, rows))
    others = [key for key in keys if key not in {str(s["key"]) for s in declared}]
    if others:
        out(f"its own storage (not settings): {', '.join(others)}")
