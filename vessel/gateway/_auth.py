"""The admin token, and the checks that keep a web page elsewhere from using the
daemon through a browser: its ``Origin`` and the ``Host`` it was asked for."""

from __future__ import annotations

import hmac
import ipaddress
import socket
from urllib.parse import urlsplit

#: Names every gateway answers to, besides IP literals and the machine's own name.
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain"})


def _host_name(host: str) -> str | None:
    """The name (or address) in a ``Host`` header, without its port; None if malformed."""
    host = host.strip().lower()
    if host.startswith("["):  # [::1]:8080
        end = host.find("]")
        return host[1:end] if end > 0 else None
    name, _, port = host.rpartition(":") if host.count(":") == 1 else (host, "", "")
    if port and not port.isdigit():
        return None
    return name or None


def own_host_names() -> frozenset[str]:
    """The machine's own name, as a LAN client would write it (``nas``, ``nas.local``)."""
    name = socket.gethostname().lower()
    short = name.split(".", 1)[0]
    return frozenset({name, short, f"{short}.local"})


def host_allowed(host: str | None, allowed: frozenset[str]) -> bool:
    """Was this request addressed to us, by a name an attacker cannot point elsewhere?

    DNS rebinding: a page on ``evil.example`` makes that name resolve to this machine,
    and the browser, which only compares origins, lets it talk to the daemon (with an
    ``Origin`` that matches the ``Host``). Its requests carry ``Host: evil.example``. So
    only names the admin serves on are answered: an IP address (which no page's origin
    can rebind), ``localhost``, the machine's own name, and ``--allowed-host`` names.
    """
    if not host:
        return False
    name = _host_name(host)
    if name is None:
        return False
    if name in allowed or name in LOOPBACK_NAMES:
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def token_matches(expected: str, presented: str | None) -> bool:
    """Constant-time comparison, so the token cannot be guessed byte by byte."""
    if not presented:
        return False
    return hmac.compare_digest(expected.encode(), presented.encode())


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else None."""
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def origin_allowed(origin: str | None, host: str | None, allowed: frozenset[str]) -> bool:
    """May a WebSocket with this ``Origin`` header talk to us?

    No Origin: not a browser (a script, vessel-ctl) — the token is what protects us.
    A browser page may connect when it was served by this gateway (same host:port) or
    its origin is configured explicitly (``--allow-origin``); this stops another web
    site the user visits from driving the daemon through the user's browser.
    """
    if origin is None:
        return True
    if origin in allowed:
        return True
    parts = urlsplit(origin)
    return bool(host) and parts.netloc == host and parts.scheme in ("http", "https")
