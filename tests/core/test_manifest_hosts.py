"""``permissions.network.hosts``: what an entry may be, what is refused at install (and
with what words), and which destinations an entry covers."""

from __future__ import annotations

import json
from typing import Any

import pytest

from vessel._capabilities import Capabilities
from vessel._errors import CapabilityDenied, ManifestError
from vessel._manifest import Manifest, origin_of, parse_manifest

SOURCE = "manifest.json of 'x'"
EXAMPLE = '(for example "https://*.spotify.com", "ws://127.0.0.1:*" or "{settings.url}")'


def _doc(hosts: Any, settings: dict[str, Any] | None = None) -> bytes:
    doc = {
        "id": "x",
        "name": "X",
        "version": "1",
        "api_version": 1,
        "permissions": {"network": {"http": True, "hosts": hosts}},
        "settings": settings or {},
    }
    return json.dumps(doc).encode()


def _parse(hosts: Any, settings: dict[str, Any] | None = None) -> Manifest:
    return parse_manifest(_doc(hosts, settings), source=SOURCE)


def _error(hosts: Any, settings: dict[str, Any] | None = None) -> str:
    with pytest.raises(ManifestError) as info:
        _parse(hosts, settings)
    return str(info.value)


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ("spotify.com", f"is not `scheme://host[:port]` or `{{settings.key}}` {EXAMPLE}"),
        ("ftp://files.example", "has scheme 'ftp': use http, https, ws or wss"),
        (
            "https://api.example/v1",
            f"may only name scheme://host[:port], without a path, query or user {EXAMPLE}",
        ),
        (
            "https://me@api.example",
            f"may only name scheme://host[:port], without a path, query or user {EXAMPLE}",
        ),
        ("https://", f"has no host {EXAMPLE}"),
        ("https://api.example:0", "has port '0': use 1 to 65535, or * for any port"),
        ("https://api.example:65536", "has port '65536': use 1 to 65535, or * for any port"),
        ("https://api.example:8x", "has port '8x': use 1 to 65535, or * for any port"),
        ("https://[nope]", "has host '[nope]', which is not an IPv6 address"),
        (
            "https://api*.example",
            "has host 'api*.example': use a DNS name (letters, digits, '-', and * for one "
            "whole label), an IPv4 address or an [IPv6] address",
        ),
        (
            "https://a..example",
            "has host 'a..example': use a DNS name (letters, digits, '-', and * for one "
            "whole label), an IPv4 address or an [IPv6] address",
        ),
        ("{settings.url", f"is not `{{settings.key}}` {EXAMPLE}"),
        ("{setting.url}", f"is not `{{settings.key}}` {EXAMPLE}"),
    ],
)
def test_a_malformed_entry_is_refused_naming_it_and_the_problem(entry: str, problem: str) -> None:
    assert _error(["https://ok.example", entry]) == (
        f"{SOURCE}: `$.permissions.network.hosts[1]` {entry!r} {problem}"
    )


def test_a_setting_entry_must_name_a_declared_setting() -> None:
    assert _error(["{settings.url}"], {"host": {}}) == (
        f"{SOURCE}: `$.permissions.network.hosts[0]` '{{settings.url}}' names setting "
        "'url', which `settings` does not declare"
    )


def test_hosts_must_be_a_list_of_strings() -> None:
    assert _error("https://x.example") == (
        f"{SOURCE}: `$.permissions.network.hosts` must be an array, got a string"
    )


def test_absent_hosts_means_any_host_and_an_empty_list_none() -> None:
    absent = parse_manifest(
        b'{"id":"x","name":"X","version":"1","api_version":1,"permissions":{"network":{}}}',
        source=SOURCE,
    )
    assert absent.permissions.network.hosts is None
    assert Capabilities.from_manifest(absent).destinations({}) is None
    nothing = Capabilities.from_manifest(_parse([])).destinations({})
    assert nothing is not None
    assert not nothing.allows("https", "example.com", 443)


@pytest.mark.parametrize(
    ("entry", "allowed", "denied"),
    [
        (
            "https://*.spotify.com",
            [("https", "api.spotify.com", 443), ("wss", "API.Spotify.COM", 443)],
            [
                ("https", "spotify.com", 443),
                ("https", "a.b.spotify.com", 443),
                ("http", "api.spotify.com", 80),
                ("https", "api.spotify.com", 8443),
                ("https", "api.spotify.com.evil.example", 443),
            ],
        ),
        (
            "ws://127.0.0.1:*",
            [("ws", "127.0.0.1", 1), ("http", "127.0.0.1", 65535)],
            [("ws", "localhost", 8123), ("wss", "127.0.0.1", 443), ("ws", "127.0.0.2", 80)],
        ),
        (
            "http://[::1]:8123",
            [("http", "::1", 8123), ("ws", "0:0:0:0:0:0:0:1", 8123)],
            [("http", "::1", 8124), ("http", "127.0.0.1", 8123)],
        ),
        (
            "https://example.com",
            [("https", "example.com", 443), ("https", "example.com.", 443)],
            [("https", "example.com", 80), ("https", "www.example.com", 443)],
        ),
    ],
)
def test_an_entry_covers_exactly_its_destinations(
    entry: str, allowed: list[tuple[str, str, int]], denied: list[tuple[str, str, int]]
) -> None:
    """``*`` is one whole DNS label or any port; ws is http and wss is https; a missing
    port is the scheme's default; hosts compare case-insensitively, IPs in one form."""
    dest = Capabilities.from_manifest(_parse([entry])).destinations({})
    assert dest is not None
    assert [d for d in allowed if dest.allows(*d)] == allowed
    assert [d for d in denied if dest.allows(*d)] == []


def test_a_setting_entry_allows_the_origin_of_its_current_value() -> None:
    caps = Capabilities.from_manifest(_parse(["{settings.url}"], {"url": {}}))
    unset = caps.destinations({"url": None})
    assert unset is not None
    assert not unset.allows("ws", "homeassistant.local", 8123)
    now = caps.destinations({"url": "http://homeassistant.local:8123/lovelace"})
    assert now is not None
    assert now.allows("ws", "homeassistant.local", 8123)
    assert not now.allows("ws", "homeassistant.local", 8124)
    assert not now.allows("wss", "homeassistant.local", 8123)
    assert not now.allows("ws", "other.local", 8123)
    bad = caps.destinations({"url": "homeassistant.local:8123"})
    assert bad is not None
    assert bad.patterns == ()


def test_a_denial_names_the_destination_and_the_field() -> None:
    dest = Capabilities.from_manifest(_parse(["https://a.example"])).destinations({})
    assert dest is not None
    with pytest.raises(CapabilityDenied) as info:
        dest.check("http-fetch to", "http", "b.example", 80)
    assert str(info.value) == (
        "capability denied: http-fetch to 'http://b.example:80' is not declared in "
        "permissions.network.hosts of module 'x'"
    )


def test_an_internationalised_host_is_compared_in_punycode() -> None:
    """Entries are ASCII; a URL's internationalised name is compared in the ASCII form the
    connection resolves, so the punycode entry covers it and no look-alike does."""
    dest = Capabilities.from_manifest(_parse(["https://xn--bcher-kva.example"])).destinations({})
    assert dest is not None
    assert dest.allows(*origin_of("wss", "bücher.example", None))
    assert dest.allows(*origin_of("https", "xn--bcher-kva.example", 443))
    assert not dest.allows(*origin_of("https", "bucher.example", 443))
