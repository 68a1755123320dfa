"""The daemon's ceilings on manifest limits (vessel/_ceilings.py), and how vessel-ctl shows
the limits a module raised."""

from __future__ import annotations

import re

import msgspec
import pytest

from vessel._ceilings import (
    DEFAULT_CEILINGS,
    Ceilings,
    limit_ranges,
    parse_ceiling,
    parse_ceilings,
    raised_limits,
)
from vessel._errors import LimitAboveCeiling, ManifestError
from vessel._manifest import Limits, Manifest
from vessel.cli._ctl_format import format_module_info, format_raised_limits


def _manifest(**limits: int) -> Manifest:
    return Manifest(
        id="greedy", name="Greedy", version="1.0.0", api_version=1, limits=Limits(**limits)
    )


def test_every_limit_of_the_schema_has_a_ceiling_between_its_default_and_its_maximum() -> None:
    """Read from the Limits struct itself, so a limit added to it has a ceiling at once
    (its maximum, until DEFAULT_CEILINGS names a lower one)."""
    assert list(limit_ranges()) == list(Limits.__struct_fields__)
    defaults = msgspec.structs.asdict(Limits())
    ceilings = Ceilings()
    for name, spec in limit_ranges().items():
        assert spec.default == defaults[name]
        assert spec.default <= ceilings.of(name) <= spec.high, name
        assert ceilings.of(name) == DEFAULT_CEILINGS.get(name, spec.high)
    assert set(DEFAULT_CEILINGS) <= set(limit_ranges())


def test_raised_limits_are_those_above_their_defaults() -> None:
    assert raised_limits(Limits()) == {}
    assert raised_limits(Limits(memory_mb=64, max_timers=0)) == {}  # lowered: nothing to say
    assert raised_limits(Limits(memory_mb=512, max_event_rate=201)) == {
        "memory_mb": 512,
        "max_event_rate": 201,
    }


def test_a_manifest_over_a_ceiling_is_refused_naming_the_limit_the_value_and_the_flag() -> None:
    ceilings = Ceilings()
    ceilings.check(_manifest(memory_mb=512, max_event_rate=5000))  # at the ceilings: fine
    with pytest.raises(LimitAboveCeiling) as refused:
        ceilings.check(_manifest(memory_mb=4096, max_event_rate=5000, storage_quota_kb=65_537))
    message = str(refused.value)
    assert isinstance(refused.value, ManifestError)  # refused like any bad manifest
    assert message.startswith("module 'greedy' asks for more than this daemon allows: ")
    assert "limits.memory_mb 4096 (ceiling 512)" in message
    assert "limits.storage_quota_kb 65537 (ceiling 65536)" in message
    assert "max_event_rate" not in message
    assert (
        "vessel serve --limit-ceiling memory_mb=4096 --limit-ceiling storage_quota_kb=65537 "
        "(env VESSEL_LIMIT_CEILINGS)"
    ) in message
    # The admin's word raises (or keeps) each ceiling.
    Ceilings({"memory_mb": 4096, "storage_quota_kb": 65_537}).check(
        _manifest(memory_mb=4096, storage_quota_kb=65_537)
    )


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("memory_mb", "is not NAME=VALUE"),
        ("=512", "is not NAME=VALUE"),
        ("memory=512", "no limit 'memory'; the limits are: memory_mb, invocation_timeout_ms"),
        ("memory_mb=lots", "memory_mb: not a whole number: 'lots'"),
        ("memory_mb=64", "between the default 128 (what every module gets without asking)"),
        ("memory_mb=4097", "and 4096 (the most a manifest can ask), got 4097"),
    ],
)
def test_a_bad_ceiling_says_what_is_wrong(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)):
        parse_ceiling(text)


def test_ceilings_built_in_code_are_checked_too() -> None:
    with pytest.raises(ValueError, match="between the default 128"):
        Ceilings({"memory_mb": 64})


def test_ceilings_from_the_environment_and_flags_later_wins() -> None:
    assert parse_ceilings(["", " memory_mb=256 ", "memory_mb=1024", "max_timers=64"]) == {
        "memory_mb": 1024,
        "max_timers": 64,
    }


def test_ctl_shows_raised_limits_in_the_schema_order_with_their_defaults() -> None:
    # The API's JSON object comes sorted by name.
    raised = {"max_event_rate": 1000, "memory_mb": 256, "max_retained_x": 3}
    assert format_raised_limits(raised) == (
        "memory_mb 256 (default 128), max_event_rate 1000 (default 200), max_retained_x 3"
    )
    assert format_raised_limits({}) == ""
    info = {"id": "modest", "raised_limits": {"memory_mb": 256}}
    assert "raised limits:    memory_mb 256 (default 128)" in format_module_info(info)
    assert "raised limits:    -" in format_module_info({"id": "x", "raised_limits": {}})
    # A daemon from before the field: nothing is claimed either way.
    assert "raised limits" not in format_module_info({"id": "x"})
