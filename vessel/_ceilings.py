"""The daemon's ceilings on the limits a manifest gives its own module.

A manifest's ``limits`` are the module author's to set, within the schema's ranges
(``vessel._manifest.Limits``): without a ceiling, any module could give itself 4 GiB of
memory, 100,000 events a second or a 1 GiB storage quota, and nothing would say so. The
admin's ceilings (``vessel serve --limit-ceiling NAME=VALUE``, env
``VESSEL_LIMIT_CEILINGS``) bound what a manifest may ask; a module that asks for more is
refused, at install and at start, with a message that names the limit, what it asked,
the ceiling, and how to raise it (docs/security.md says why refused, not clamped).

Everything here is derived from the ``Limits`` struct itself (its integer fields, their
defaults and ranges), so a limit added to it is covered without a change here: its
ceiling is the schema's maximum until :data:`DEFAULT_CEILINGS` names a lower one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from types import MappingProxyType

import msgspec
import msgspec.inspect

from ._errors import LimitAboveCeiling
from ._manifest import Limits, Manifest

#: What a home server allows a module without the admin's word (docs/operations.md).
#: A few times each default: enough for a busy integration (Home Assistant's module asks
#: 5000 events a second), far from the schema's maxima, which are for machines that
#: were sized for the module.
DEFAULT_CEILINGS: Mapping[str, int] = MappingProxyType(
    {
        "memory_mb": 512,
        "invocation_timeout_ms": 60_000,
        "storage_quota_kb": 65_536,
        "max_timers": 256,
        "max_websockets": 32,
        "max_event_rate": 5_000,
        "reply_timeout_ms": 120_000,
    }
)

#: The environment variable of ``--limit-ceiling``: ``NAME=VALUE`` pairs, comma-separated.
ENV_VAR = "VESSEL_LIMIT_CEILINGS"


@dataclass(frozen=True)
class LimitRange:
    """One integer limit of the manifest schema."""

    name: str
    default: int
    low: int
    high: int


@cache
def limit_ranges() -> Mapping[str, LimitRange]:
    """Every integer field of ``Limits``, by name, in the struct's order."""
    ranges: dict[str, LimitRange] = {}
    info = msgspec.inspect.type_info(Limits)
    assert isinstance(info, msgspec.inspect.StructType)
    for f in info.fields:
        kind = f.type
        if not isinstance(kind, msgspec.inspect.IntType) or not isinstance(f.default, int):
            continue  # only whole-number limits have a ceiling
        low = kind.ge if kind.ge is not None else 0
        high = kind.le if kind.le is not None else 2**63 - 1
        ranges[f.name] = LimitRange(f.name, f.default, low, high)
    return MappingProxyType(ranges)


def raised_limits(limits: Limits) -> dict[str, int]:
    """The limits a manifest sets above their defaults, by name (``{}``: none)."""
    values = msgspec.structs.asdict(limits)
    return {
        name: values[name]
        for name, spec in limit_ranges().items()
        if isinstance(values.get(name), int) and values[name] > spec.default
    }


def parse_ceiling(text: str) -> tuple[str, int]:
    """``"memory_mb=512"`` -> ``("memory_mb", 512)``; ValueError says what is wrong.

    A ceiling may not be below the limit's default (every module gets the default
    without asking, so it would refuse modules that ask nothing) nor above the schema's
    maximum (no manifest can ask that much: a typo, most likely)."""
    name, sep, value = text.partition("=")
    name, value = name.strip(), value.strip()
    ranges = limit_ranges()
    if not sep or not name:
        raise ValueError(f"{text!r} is not NAME=VALUE (for example memory_mb=512)")
    if name not in ranges:
        raise ValueError(f"no limit {name!r}; the limits are: {', '.join(ranges)}")
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"{name}: not a whole number: {value!r}") from None
    spec = ranges[name]
    if not spec.default <= number <= spec.high:
        raise ValueError(
            f"{name}: the ceiling must be between the default {spec.default} (what every "
            f"module gets without asking) and {spec.high} (the most a manifest can ask), "
            f"got {number}"
        )
    return name, number


def parse_ceilings(entries: Iterable[str]) -> dict[str, int]:
    """``NAME=VALUE`` entries (empty ones skipped); a later entry for a name wins."""
    return dict(parse_ceiling(e) for e in entries if e.strip())


@dataclass(frozen=True)
class Ceilings:
    """The most each limit may be raised to. Built with the defaults, overridden by
    ``overrides`` (checked like :func:`parse_ceiling`)."""

    overrides: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, value in self.overrides.items():
            parse_ceiling(f"{name}={value}")  # raises ValueError for a bad one

    def of(self, name: str) -> int:
        """The ceiling of limit ``name``: the admin's, else the default, else the
        schema's maximum (a limit :data:`DEFAULT_CEILINGS` does not name yet)."""
        if name in self.overrides:
            return self.overrides[name]
        return DEFAULT_CEILINGS.get(name, limit_ranges()[name].high)

    def all(self) -> dict[str, int]:
        """Every limit's ceiling, by name."""
        return {name: self.of(name) for name in limit_ranges()}

    def above(self, limits: Limits) -> dict[str, tuple[int, int]]:
        """The limits over their ceiling: name -> (asked, ceiling)."""
        return {
            name: (asked, self.of(name))
            for name, asked in raised_limits(limits).items()
            if asked > self.of(name)
        }

    def check(self, manifest: Manifest) -> None:
        """Refuse a manifest that asks for more than a ceiling allows: LimitAboveCeiling
        names every such limit, what it asked, the ceiling, and how to raise it."""
        over = self.above(manifest.limits)
        if not over:
            return
        asked = ", ".join(
            f"limits.{name} {value} (ceiling {ceiling})" for name, (value, ceiling) in over.items()
        )
        flags = " ".join(f"--limit-ceiling {name}={value}" for name, (value, _) in over.items())
        raise LimitAboveCeiling(
            f"module {manifest.id!r} asks for more than this daemon allows: {asked}; lower "
            f"it in the manifest, or, if you trust the module with it, raise the ceiling: "
            f"vessel serve {flags} (env {ENV_VAR}), and restart the daemon"
        )


__all__ = [
    "DEFAULT_CEILINGS",
    "ENV_VAR",
    "Ceilings",
    "LimitRange",
    "limit_ranges",
    "parse_ceiling",
    "parse_ceilings",
    "raised_limits",
]
