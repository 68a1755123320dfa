"""The one error the I/O services of a module process raise on purpose.

Host functions (``vessel.host._hostfuncs``) catch it and hand its message to the guest as
the ``err`` of the WIT result, so the message is written for the module author: it names
the host function, the thing at fault and, for a limit, the setting that raises it.
"""

from __future__ import annotations

import os
import socket
import ssl

__all__ = ["HostCallError", "describe_failure"]


class HostCallError(Exception):
    """A host function failed; the message is returned to the guest as the err of its result.

    Raised by ``TimerService``, ``WebSocketService`` and ``HttpService`` for anything the
    guest asked for that cannot be done: a refused URL, an unknown handle, a limit
    reached, a peer that could not be reached. The module keeps running; it may retry
    or give up. Never raised for bugs in the host itself (those stay ordinary exceptions).
    """


def _chain(exc: BaseException) -> list[BaseException]:
    """Every exception reachable from ``exc`` through groups, causes, contexts and
    exception arguments, outermost first, each once.

    Suppressed contexts and arguments are followed too: httpcore, for one, re-raises
    ``ConnectError(os_error) from None``, which hides the OS error from the cause chain.
    """
    seen: list[BaseException] = []
    todo = [exc]
    while todo:
        current = todo.pop(0)
        if any(current is s for s in seen):
            continue
        seen.append(current)
        if isinstance(current, BaseExceptionGroup):
            todo.extend(current.exceptions)
        todo.extend(arg for arg in current.args if isinstance(arg, BaseException))
        todo.extend(e for e in (current.__cause__, current.__context__) if e is not None)
    return seen


def describe_failure(exc: BaseException) -> str:
    """A short, lower-case reason for a network failure, for an error message.

    Libraries wrap the OS error that says what really happened (trio's "all attempts to
    connect ... failed" hides "connection refused" two levels down, in an exception
    group), so this digs for errno-carrying errors first and falls back to the outermost
    message that is not empty.
    """
    chain = _chain(exc)
    reasons: list[str] = []
    for err in chain:
        if isinstance(err, ssl.SSLError):
            # An SSLError's errno is OpenSSL's, not the OS's: strerror would lie.
            verify = getattr(err, "verify_message", None)
            if verify:
                detail = f"certificate verify failed: {verify}"
            elif err.reason:
                detail = err.reason.lower().replace("_", " ")  # WRONG_VERSION_NUMBER
            else:
                detail = str(err)
            reasons.append(f"tls error: {detail}")
        elif isinstance(err, socket.gaierror):
            detail = err.strerror or str(err)
            reasons.append(f"cannot resolve host ({detail.lower()})")
        elif isinstance(err, OSError) and err.errno is not None and err.errno > 0:
            reasons.append(os.strerror(err.errno).lower())
    if reasons:
        # Several attempts (IPv4 and IPv6) often fail the same way: say it once.
        return "; ".join(dict.fromkeys(reasons))
    for err in chain:
        if str(err):
            return str(err)
    return type(exc).__name__
