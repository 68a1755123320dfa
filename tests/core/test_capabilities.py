"""Capabilities: deny by default, the seed's rules, messages that say what to declare."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vessel._capabilities import Capabilities, glob_covers, subscription_matches
from vessel._errors import CapabilityDenied
from vessel._manifest import Manifest, NetworkPermissions, Permissions


def caps(**perms: Any) -> Capabilities:
    manifest = Manifest(
        id="a", name="A", version="1", api_version=1, permissions=Permissions(**perms)
    )
    return Capabilities.from_manifest(manifest)


CHECKS: dict[str, Callable[[Capabilities], None]] = {
    "permissions.network.http": Capabilities.check_http,
    "permissions.network.websocket": Capabilities.check_websocket,
    "permissions.network.tcp": Capabilities.check_tcp,
    "permissions.storage": Capabilities.check_storage,
    "permissions.timers": Capabilities.check_timers,
}


@pytest.mark.parametrize("declare", list(CHECKS))
def test_nothing_is_granted_by_default(declare: str) -> None:
    """An empty manifest grants no capability; the denial names what to declare."""
    with pytest.raises(CapabilityDenied) as info:
        CHECKS[declare](caps())
    what = declare.rsplit(".", 1)[1]
    assert str(info.value) == (
        f"capability denied: {what} is not declared in {declare} of module 'a'"
    )


def test_each_flag_grants_only_itself() -> None:
    """Declaring one capability does not grant any other."""
    granted = {
        "permissions.network.http": caps(network=NetworkPermissions(http=True)),
        "permissions.network.websocket": caps(network=NetworkPermissions(websocket=True)),
        "permissions.network.tcp": caps(network=NetworkPermissions(tcp=True)),
        "permissions.storage": caps(storage=True),
        "permissions.timers": caps(timers=True),
    }
    for declared, capabilities in granted.items():
        for check_name, check in CHECKS.items():
            if check_name == declared:
                check(capabilities)
            else:
                with pytest.raises(CapabilityDenied):
                    check(capabilities)


def test_subscribe_and_call_denied_by_default() -> None:
    """No declared globs or calls: every subscription and call is denied."""
    c = caps()
    with pytest.raises(CapabilityDenied) as info:
        c.check_subscribe("system.window.focus")
    assert str(info.value) == (
        "capability denied: subscribe 'system.window.focus' is not declared in "
        "permissions.subscribe of module 'a'"
    )
    with pytest.raises(CapabilityDenied) as info:
        c.check_call("b", "ping", 1)
    assert str(info.value) == (
        "capability denied: call 'b.ping@1' is not declared in permissions.call of module 'a'"
    )


def test_call_must_be_declared_exactly() -> None:
    """`module.name@version` is matched exactly: another version or name is denied."""
    c = caps(call=["b.ping@1", "discord.voice.set_mute@1"])
    c.check_call("b", "ping", 1)
    c.check_call("discord", "voice.set_mute", 1)
    assert c.allows_call("b", "ping", 1)
    for module, name, version in [("b", "ping", 2), ("b", "pin", 1), ("c", "ping", 1)]:
        assert not c.allows_call(module, name, version)
        with pytest.raises(CapabilityDenied, match=r"^capability denied: call "):
            c.check_call(module, name, version)


@pytest.mark.parametrize(
    ("requested", "allowed"),
    [
        ("system.window.focus", True),
        ("system.window.*", True),
        ("system.window.a.b", True),
        ("system.window.[ab]", True),
        ("system.*", False),
        ("*", False),
        ("system.windowx", False),
        ("other.window.focus", False),
    ],
)
def test_declared_glob_must_cover_requested_pattern(requested: str, allowed: bool) -> None:
    """The seed's rule: a declared glob covers the requested pattern, including a
    requested glob no wider than the declared one."""
    c = caps(subscribe=["system.window.*"])
    assert c.allows_subscribe(requested) is allowed
    if allowed:
        c.check_subscribe(requested)
    else:
        with pytest.raises(CapabilityDenied, match=r"not declared in permissions\.subscribe"):
            c.check_subscribe(requested)


@pytest.mark.parametrize(
    ("declared", "requested"),
    [("a.?", "a.*"), ("a.[!x]", "a.*"), ("a.[!x]", "a.?"), ("a.?x", "a.*x")],
)
def test_a_narrow_wildcard_does_not_cover_a_wide_one(declared: str, requested: str) -> None:
    """Text matching alone would let `a.?` cover `a.*` (and so every a.<anything>);
    a requested wildcard is only covered by a declared `*`."""
    assert not glob_covers(declared, requested)
    assert not caps(subscribe=[declared]).allows_subscribe(requested)


def test_identical_glob_is_covered() -> None:
    """Declaring exactly the pattern you subscribe to always works."""
    for pattern in ["a.[xy]", "a.?", "a.[!x]*", "*", "a.["]:
        assert caps(subscribe=[pattern]).allows_subscribe(pattern)


def test_any_declared_glob_may_cover() -> None:
    """Several declared globs: each request needs one that covers it."""
    c = caps(subscribe=["a.*", "b.x"])
    assert c.allows_subscribe("a.y")
    assert c.allows_subscribe("b.x")
    assert not c.allows_subscribe("b.y")


def test_overlong_requested_pattern_is_denied_not_hung() -> None:
    """A huge request from a guest is refused quickly instead of consuming CPU."""
    assert not caps(subscribe=["*"]).allows_subscribe("a" * 100_000)


_alphabet = st.text(alphabet="ab.", max_size=5)
_glob = st.text(alphabet="ab.*?[]!", max_size=6)


@settings(deadline=None)
@given(declared=_glob, key=_alphabet)
def test_literal_request_is_plain_fnmatch(declared: str, key: str) -> None:
    """For a request without wildcards, coverage is exactly `fnmatchcase`."""
    assert glob_covers(declared, key) == fnmatch.fnmatchcase(key, declared)


@settings(deadline=None, max_examples=500)
@given(declared=_glob, requested=_glob, key=_alphabet)
def test_coverage_is_sound(declared: str, requested: str, key: str) -> None:
    """If `declared` covers `requested`, no key reaches the module through `requested`
    that `declared` would not have let through."""
    if glob_covers(declared, requested) and fnmatch.fnmatchcase(key, requested):
        assert fnmatch.fnmatchcase(key, declared)


def test_subscription_matches_is_case_sensitive_fnmatch() -> None:
    """Event keys match globs case-sensitively on every platform; `*` spans dots."""
    assert subscription_matches("system.*", "system.window.focus")
    assert not subscription_matches("system.*", "System.window")
    assert subscription_matches("*.focus", "a.b.focus")
    assert not subscription_matches("a.?", "a.bc")
