"""The exceptions a module author meets."""

from __future__ import annotations

__all__ = ["CommandError", "HostError"]


class HostError(Exception):
    """A host function refused or failed.

    Raised by every SDK call that crosses into the host (``emit``, ``call``,
    ``websocket_connect``, ``Socket.send``, ``storage.set``, timers, ...). ``message`` is
    the host's reason, unchanged: a missing permission reads ``capability denied: ... is
    not declared in permissions.<field> of module '<id>'``; add that permission to
    manifest.json, or catch the error and carry on without the feature.

    Escaping a command handler, it fails the command with ``message``.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class CommandError(Exception):
    """Raise in a command handler to fail the command with ``message``.

    The caller gets ``message`` as the error, exactly; nothing is logged (it is an
    expected failure, such as bad params). Any other exception also fails the command,
    but is logged with its traceback, since it is a bug.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
