"""``vessel-ctl events``: subscribe over ``/ws`` and print events until Ctrl-C.

Runs its own short trio loop: connect with the admin token, wait for ``ready``, send one
``subscribe`` per pattern, then print every ``event`` as it arrives. Each subscribe
carries a request id; once the daemon has acknowledged them all, one line on stderr says
``watching ...``: from then on no matching event is missed (scripts may wait for it).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    ConnectionTimeout,
    HandshakeError,
    WebSocketConnection,
    open_websocket_url,
)

from ._ctl_client import (
    DEFAULT_TIMEOUT,
    TOKEN_HINT,
    CtlError,
    Settings,
    not_running,
    read_token,
)
from ._ctl_commands import UsageError, note, out
from ._ctl_format import format_event
from ._ctl_parser import split_pattern

DEFAULT_PATTERN = "*.*"

#: The close code of a connection refused for its token.
CLOSE_UNAUTHORIZED = 4401

#: Largest message accepted from the daemon (an event's data can be large).
MAX_MESSAGE = 16 * 1024 * 1024


def subscriptions(patterns: Sequence[str]) -> list[tuple[str, str]]:
    """(module glob, name glob) per pattern; ``*.*`` when there is none."""
    try:
        return [split_pattern(p) for p in (patterns or [DEFAULT_PATTERN])]
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _os_reason(exc: BaseException) -> str:
    """``connection refused`` from trio's connect error (one OSError per address tried)."""
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop()
        if isinstance(current, ConnectionRefusedError):
            return "connection refused"
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        for linked in (current.__cause__, current.__context__):
            if linked is not None:
                pending.append(linked)
    return str(exc) or type(exc).__name__


def _decode(received: str | bytes) -> tuple[str, dict[str, Any]]:
    """A frame as (its text, its JSON object)."""
    message = received if isinstance(received, str) else received.decode()
    try:
        doc = json.loads(message)
    except ValueError:
        raise CtlError(f"the daemon sent something that is not JSON: {message!r:.200}") from None
    if not isinstance(doc, dict):
        raise CtlError(f"the daemon sent an unexpected message: {message!r:.200}")
    return message, doc


def _wrong_token(settings: Settings) -> CtlError:
    return CtlError(
        f"wrong token: the daemon at {settings.url} refused it (the token is in the "
        f"daemon's <data-dir>/token; {TOKEN_HINT})"
    )


def _error_text(doc: dict[str, Any]) -> str:
    error = doc.get("data") if doc.get("type") == "response" else doc
    if isinstance(error, dict) and "message" in error:
        return f"{error['message']} ({error.get('code')})"
    return json.dumps(error)


class _Watch:
    """The conversation after connecting: ready, subscribe (acknowledged), events."""

    def __init__(self, settings: Settings, subs: Sequence[tuple[str, str]]) -> None:
        self.settings = settings
        self.subs = subs
        #: request_id -> pattern of the subscriptions not acknowledged yet.
        self.pending: dict[str, str] = {}

    async def run(self, ws: WebSocketConnection, timeout: float) -> None:
        with trio.fail_after(timeout):
            _, ready = _decode(await ws.get_message())
        if ready.get("type") == "error" and ready.get("code") == "unauthorized":
            raise _wrong_token(self.settings)
        if ready.get("type") != "ready":
            raise CtlError(f"the daemon did not greet with 'ready': {_error_text(ready)}")
        for number, (module, name) in enumerate(self.subs, 1):
            request_id = f"subscribe-{number}"
            self.pending[request_id] = f"{module}.{name}"
            await ws.send_message(
                json.dumps(
                    {"type": "subscribe", "request_id": request_id, "module": module, "name": name}
                )
            )
        while True:
            message, doc = _decode(await ws.get_message())
            kind = doc.get("type")
            if kind == "event":
                out(message if self.settings.json else format_event(doc))
            elif kind == "response" and doc.get("request_id") in self.pending:
                self._acknowledged(doc)
            elif kind == "error" and doc.get("code") == "unauthorized":
                raise _wrong_token(self.settings)
            elif kind == "error" or (kind == "response" and doc.get("success") is False):
                note(f"vessel-ctl: the daemon says: {_error_text(doc)}")

    def _acknowledged(self, doc: dict[str, Any]) -> None:
        pattern = self.pending.pop(str(doc["request_id"]))
        if doc.get("success") is not True:
            raise CtlError(f"subscribing to {pattern} failed: {_error_text(doc)}")
        if not self.pending:
            # Only now is every subscription live: scripts may wait for this line.
            shown = ", ".join(f"{m}.{n}" for m, n in self.subs)
            note(f"vessel-ctl: watching {shown} on {self.settings.url} (Ctrl-C to stop)")


async def watch_events(settings: Settings, subs: Sequence[tuple[str, str]]) -> None:
    """Print events until cancelled; raises CtlError when the daemon is gone or says no."""
    token = read_token(settings)
    timeout = settings.timeout_or(DEFAULT_TIMEOUT)
    headers = [(b"Authorization", f"Bearer {token}".encode())]
    try:
        async with open_websocket_url(
            settings.ws_url,
            extra_headers=headers,
            connect_timeout=timeout,
            disconnect_timeout=2.0,
            max_message_size=MAX_MESSAGE,
        ) as ws:
            await _Watch(settings, subs).run(ws, timeout)
    except ConnectionRejected as exc:
        if exc.status_code == 401:
            raise _wrong_token(settings) from None
        raise CtlError(f"the daemon refused the WebSocket: HTTP {exc.status_code}") from None
    except (trio.TooSlowError, ConnectionTimeout):
        raise CtlError(
            f"the daemon at {settings.url} did not answer within {timeout:g} s (raise --timeout)"
        ) from None
    except HandshakeError as exc:
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, OSError):
            raise not_running(settings.url, _os_reason(cause)) from None
        raise CtlError(f"cannot open {settings.ws_url}: {cause or exc!r}") from None
    except ConnectionClosed as exc:
        reason = exc.reason
        if reason is not None and reason.code == CLOSE_UNAUTHORIZED:
            raise _wrong_token(settings) from None
        said = f": {reason.reason}" if reason is not None and reason.reason else ""
        code = f" (code {reason.code})" if reason is not None else ""
        raise CtlError(f"the daemon closed the event stream{code}{said}") from None
    except OSError as exc:
        raise not_running(settings.url, _os_reason(exc)) from None


def cmd_events(settings: Settings, args: argparse.Namespace) -> int:
    subs = subscriptions(args.patterns)
    trio.run(watch_events, settings, subs)
    return 0
