"""The messages between :func:`actors.open_forkserver` and its fork server process.

One msgpack message per SOCK_SEQPACKET datagram, so no framing is needed; file
descriptors travel beside a message as SCM_RIGHTS ancillary data. This module imports
only msgspec and the standard library: the server process runs it before any preload.
"""

from __future__ import annotations

import array
import socket

import msgspec

__all__ = [
    "MAX_FDS",
    "MAX_MESSAGE",
    "Exited",
    "Ready",
    "Refused",
    "ServerMessage",
    "SpawnFailed",
    "SpawnRequest",
    "Spawned",
    "fds_from_ancillary",
    "rights",
]

#: Largest message either side accepts (a spawn request carries a whole environment).
MAX_MESSAGE = 1 << 20
#: Most file descriptors one message carries (stdout, stderr and the passed fds).
MAX_FDS = 16


class SpawnRequest(msgspec.Struct, tag="spawn", forbid_unknown_fields=True):
    """Daemon → server: fork a child that runs ``python -m <module> <args...>``.

    The fds beside it are, in order: the child's stdout and stderr (write ends), then the
    ``pass_fds``, which the child finds at 3, 4, ... ; there are exactly ``nfds``.
    """

    id: int
    module: str
    args: list[str]
    #: The full command line the child would have had, for /proc/<pid>/cmdline.
    argv: list[str]
    env: dict[str, str]
    cwd: str
    title: str
    nfds: int


class Ready(msgspec.Struct, tag="ready", forbid_unknown_fields=True):
    """Server → daemon, once: the preloads are imported and requests are served."""

    pid: int
    preloaded: list[str]
    #: Preloads that failed to import, with the error; children import them themselves.
    failed: dict[str, str]
    seconds: float


class Refused(msgspec.Struct, tag="refused", forbid_unknown_fields=True):
    """Server → daemon, instead of Ready: forking is not safe here; the server exits."""

    reason: str


class Spawned(msgspec.Struct, tag="spawned", forbid_unknown_fields=True):
    """Server → daemon: the child of request ``id`` runs; its pidfd is attached."""

    id: int
    pid: int


class SpawnFailed(msgspec.Struct, tag="spawn_failed", forbid_unknown_fields=True):
    """Server → daemon: request ``id`` could not be forked (the error says why)."""

    id: int
    error: str


class Exited(msgspec.Struct, tag="exited", forbid_unknown_fields=True):
    """Server → daemon: a child was reaped. ``status`` is in ``returncode`` form: the
    exit code, or minus the signal that killed it."""

    pid: int
    status: int


ServerMessage = Ready | Refused | Spawned | SpawnFailed | Exited


def rights(fds: list[int]) -> list[tuple[int, int, bytes]]:
    """Ancillary data passing ``fds`` (empty when there are none)."""
    if not fds:
        return []
    return [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]


def fds_from_ancillary(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    """The file descriptors received in ``ancdata`` (the caller owns and closes them)."""
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(data) - len(data) % array.array("i").itemsize
            fds.extend(array.array("i", data[:usable]))
    return fds
