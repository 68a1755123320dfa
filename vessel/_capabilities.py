"""What a module may do: its manifest's permissions, checked on every host call.

Deny by default. Each ``check_*`` raises CapabilityDenied with a message that starts with
``capability denied:`` and names the manifest entry to add, because that string is what
the guest receives as the error of its host call (and what lands in the module's log).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache

from ._errors import CapabilityDenied
from ._manifest import (
    HostPattern,
    Manifest,
    parse_host_pattern,
    setting_destination,
    setting_reference,
)


def subscription_matches(pattern: str, key: str) -> bool:
    """True when the event key ``module.name`` matches the subscription glob ``pattern``.

    Case-sensitive on every platform (``fnmatchcase``): ids and event names are data, not
    file names.
    """
    return fnmatch.fnmatchcase(key, pattern)


# A glob token: a literal character, "*", "?", or a character class (its matcher).
_Token = str | Callable[[str], object]
_STAR, _ANY = "*", "?"


def _tokens(pattern: str) -> tuple[tuple[bool, _Token], ...]:
    """Split a glob into (is_literal, token) pairs, parsing classes the way fnmatch does."""
    out: list[tuple[bool, _Token]] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        i += 1
        if c in (_STAR, _ANY):
            out.append((False, c))
        elif c == "[":
            j = i + (i < n and pattern[i] == "!")
            j += j < n and pattern[j] == "]"
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:  # fnmatch treats an unclosed "[" as a literal
                out.append((True, c))
            else:
                out.append((False, re.compile(fnmatch.translate(pattern[i - 1 : j + 1])).match))
                i = j + 1
        else:
            out.append((True, c))
    return tuple(out)


#: Longer subscription patterns are refused outright (the check is quadratic in length).
MAX_PATTERN_LENGTH = 1024


@lru_cache(maxsize=4096)
def glob_covers(declared: str, requested: str) -> bool:
    """True when every key the glob ``requested`` can match is matched by ``declared``.

    This is ``fnmatchcase(requested, declared)`` made sound: a wildcard in the request may
    only be absorbed by a ``*`` of the declared glob. Plain text matching would let a
    declared ``a.?`` (one character) or ``a.[!x]`` (anything but x) cover a requested
    ``a.*``, which matches far more than was declared. Identical globs always cover.
    """
    if declared == requested:
        return True
    if len(requested) > MAX_PATTERN_LENGTH:
        return False
    d, r = _tokens(declared), _tokens(requested)
    # covers[j] == "d[i:] covers r[j:]", computed for i from the end (bottom-up, so long
    # patterns cannot exhaust the recursion limit).
    covers = [False] * len(r) + [True]
    for d_lit, d_tok in reversed(d):
        nxt = covers
        covers = [False] * (len(r) + 1)
        for j in range(len(r), -1, -1):
            if not d_lit and d_tok == _STAR:
                covers[j] = nxt[j] or (j < len(r) and covers[j + 1])
                continue
            if j == len(r) or not r[j][0]:
                continue
            char = r[j][1]
            if d_lit:
                ok = d_tok == char
            elif d_tok == _ANY:
                ok = True
            else:
                assert callable(d_tok)
                assert isinstance(char, str)
                ok = d_tok(char) is not None
            covers[j] = ok and nxt[j + 1]
    return covers[0]


def call_key(module: str, name: str, version: int) -> str:
    """The ``module.name@version`` form that ``permissions.call`` entries use."""
    return f"{module}.{name}@{version}"


@dataclass(frozen=True)
class Capabilities:
    """The permissions of one module, ready to check."""

    module_id: str
    subscribe: tuple[str, ...] = ()
    calls: frozenset[str] = frozenset()
    http: bool = False
    websocket: bool = False
    tcp: bool = False
    storage: bool = False
    timers: bool = False
    #: ``permissions.network.hosts`` parsed: None when absent (any host).
    hosts: tuple[HostPattern, ...] | None = None
    #: The settings whose current value is an allowed destination (``{settings.key}``).
    host_settings: tuple[str, ...] = ()

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> Capabilities:
        perms = manifest.permissions
        entries = perms.network.hosts
        refs = tuple(k for e in entries or () if (k := setting_reference(e)) is not None)
        return cls(
            hosts=None
            if entries is None
            else tuple(parse_host_pattern(e) for e in entries if setting_reference(e) is None),
            host_settings=refs,
            module_id=manifest.id,
            subscribe=tuple(perms.subscribe),
            calls=frozenset(perms.call),
            http=perms.network.http,
            websocket=perms.network.websocket,
            tcp=perms.network.tcp,
            storage=perms.storage,
            timers=perms.timers,
        )

    def _deny(self, what: str, declare: str) -> CapabilityDenied:
        return CapabilityDenied(
            f"capability denied: {what} is not declared in {declare} of module {self.module_id!r}"
        )

    # ── boolean twins, for callers that branch rather than raise ────────────
    def allows_subscribe(self, pattern: str) -> bool:
        """A declared glob covers ``pattern`` (see ``glob_covers``): "system.window.*"
        covers "system.window.focus" and "system.window.*", but not "system.*"."""
        return any(glob_covers(declared, pattern) for declared in self.subscribe)

    def allows_call(self, module: str, name: str, version: int) -> bool:
        return call_key(module, name, version) in self.calls

    # ── checks ──────────────────────────────────────────────────────────────
    def check_subscribe(self, pattern: str) -> None:
        if not self.allows_subscribe(pattern):
            raise self._deny(f"subscribe {pattern!r}", "permissions.subscribe")

    def check_call(self, module: str, name: str, version: int) -> None:
        if not self.allows_call(module, name, version):
            raise self._deny(f"call {call_key(module, name, version)!r}", "permissions.call")

    def check_http(self) -> None:
        if not self.http:
            raise self._deny("http", "permissions.network.http")

    def check_websocket(self) -> None:
        if not self.websocket:
            raise self._deny("websocket", "permissions.network.websocket")

    def check_tcp(self) -> None:
        if not self.tcp:
            raise self._deny("tcp", "permissions.network.tcp")

    def destinations(self, setting_values: Mapping[str, str | None]) -> Destinations | None:
        """The allowed destinations now, given the current values of ``host_settings``;
        None when the manifest names none (any host)."""
        if self.hosts is None:
            return None
        from_settings = tuple(
            p
            for key in self.host_settings
            if (p := setting_destination(setting_values.get(key))) is not None
        )
        return Destinations(self.module_id, self.hosts + from_settings)

    def check_storage(self) -> None:
        if not self.storage:
            raise self._deny("storage", "permissions.storage")

    def check_timers(self) -> None:
        if not self.timers:
            raise self._deny("timers", "permissions.timers")


@dataclass(frozen=True)
class Destinations:
    """Where a module's http-fetch and websockets may go, settings resolved."""

    module_id: str
    patterns: tuple[HostPattern, ...]

    def allows(self, scheme: str, host: str, port: int) -> bool:
        return any(p.matches(scheme, host, port) for p in self.patterns)

    def check(self, what: str, scheme: str, host: str, port: int) -> None:
        """Raise CapabilityDenied naming ``what`` (``http-fetch to``) and the destination
        (``http://localhost:8123``), the host as the URL wrote it."""
        if not self.allows(scheme, host, port):
            shown = f"[{host}]" if ":" in host else host
            raise CapabilityDenied(
                f"capability denied: {what} '{scheme}://{shown}:{port}' is not declared in "
                f"permissions.network.hosts of module {self.module_id!r}"
            )
