"""The exception tree of :mod:`actors`.

Every error the runtime raises on purpose derives from :class:`ActorError`, so a caller
that wants "anything the actor layer can throw" catches one class. Foreign errors (trio,
OS, msgspec) are translated at the boundary where they happen.
"""

from __future__ import annotations

__all__ = [
    "ActorError",
    "ChannelBroken",
    "ChannelClosed",
    "FrameTooLarge",
    "MailboxClosed",
    "MailboxFull",
    "ProtocolError",
    "RemoteError",
    "SpawnError",
    "UnknownChild",
]


class ActorError(Exception):
    """Base class of every error raised on purpose by :mod:`actors`."""


class ChannelClosed(ActorError):
    """Raised when you use a :class:`~actors.Channel` that *this side* closed.

    Raised by ``request``/``notify``/``ping`` after :meth:`Channel.aclose`, and by
    requests that were still in flight when it was called. It is your own doing: do not
    retry on the same channel.
    """


class ChannelBroken(ActorError):
    """Raised when the *peer* went away or the underlying stream broke.

    In-flight requests fail with this as soon as the break is noticed (end of stream,
    write error, or the peer process exiting). The remote side may or may not have run the
    request. Recover at a higher level: the supervisor restarts the peer, then retry.
    """


class RemoteError(ActorError):
    """Raised by :meth:`Channel.request` when the peer's handler raised.

    The remote exception cannot cross the process boundary, so it arrives boxed: its type
    name, its message and the name of the actor it came from. Match on ``type_name`` if
    the caller has to tell failures apart.
    """

    def __init__(self, type_name: str, message: str, actor: str) -> None:
        super().__init__(type_name, message, actor)
        self.type_name = type_name
        self.message = message
        self.actor = actor

    def __str__(self) -> str:
        return f"{self.type_name} in {self.actor}: {self.message}"


class FrameTooLarge(ActorError):
    """Raised when a frame's length exceeds the configured ``max_frame_size``.

    On the sending side it is raised before anything is written, so the channel stays
    usable: send less, or raise ``max_frame_size`` on *both* ends. A peer that announces a
    too-large frame is broken; :meth:`Channel.run` reports that as :class:`ProtocolError`.
    """


class ProtocolError(ActorError):
    """Raised out of :meth:`Channel.run` when the peer sent a frame we cannot decode.

    The peer is broken or not speaking this protocol (a different version, or something
    writing garbage to the channel's file descriptors). Pending requests have been failed
    with :class:`ChannelBroken`; kill and restart the peer.
    """


class SpawnError(ActorError):
    """Raised by :func:`open_process_actor` when the child process cannot be started.

    The message names the command; the cause is the OS error (missing executable,
    permission denied, bad working directory).
    """


class UnknownChild(ActorError, KeyError):
    """Raised by :class:`Supervisor` methods given a child id it does not supervise."""

    def __str__(self) -> str:
        return f"no child with id {self.args[0]!r}" if self.args else "unknown child"


class MailboxFull(ActorError):
    """Raised by :meth:`Mailbox.send_nowait` when the mailbox is at capacity.

    Either wait with :meth:`Mailbox.send` (backpressure) or drop the message.
    """


class MailboxClosed(ActorError):
    """Raised when sending to a :class:`Mailbox` after :meth:`Mailbox.close`."""
