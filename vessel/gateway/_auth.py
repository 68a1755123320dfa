"""The admin token and browser-origin checks."""

from __future__ import annotations

import hmac
from urllib.parse import urlsplit


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
