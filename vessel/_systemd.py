"""systemd's service notifications (``Type=notify``, ``WatchdogSec=``): sd_notify in a
few lines.

systemd gives a ``Type=notify`` service ``$NOTIFY_SOCKET``, an ``AF_UNIX`` datagram socket
(a path, or an abstract name when it starts with ``@``), and reads newline-separated
``KEY=VALUE`` lines from each datagram: ``READY=1`` (started: ``systemctl start`` returns),
``STATUS=...`` (shown by ``systemctl status``), ``WATCHDOG=1`` (alive), ``STOPPING=1``. With
``WatchdogSec=`` it also sets ``$WATCHDOG_USEC``, and restarts the service when no
``WATCHDOG=1`` comes within that time. ``$WATCHDOG_PID``, when set, names the process the
watchdog is meant for.

Why not a library: ``sdnotify`` (PyPI) was last released in 2017 and hides every send
error; ``systemd-python`` and ``cysystemd`` bind libsystemd in C, a build dependency for
one ``sendto``. The protocol is one datagram, documented in sd_notify(3).

The pings come from a task on the daemon's trio loop, never from a thread: a thread would
go on pinging while the loop is wedged (a blocking call, a busy loop), which is exactly
when systemd should restart the daemon. Sending never blocks the loop: the socket is
non-blocking, and a datagram that cannot be sent at once is dropped (the next ping is
half a watchdog interval away).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field

import trio

log = logging.getLogger("vessel.systemd")

#: The variables systemd sets for the notify protocol; removed from the environment once
#: read, so that module and compile processes never speak for the daemon.
ENV_VARS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")

#: Seconds between two checks of what the daemon is doing, for ``STATUS=``.
STATUS_EVERY = 1.0


def watchdog_interval(environ: MutableMapping[str, str], pid: int) -> float | None:
    """Seconds between two ``WATCHDOG=1`` pings: half of ``$WATCHDOG_USEC``, as
    sd_watchdog_enabled(3) advises; None when there is no watchdog, or it is meant for
    another process (``$WATCHDOG_PID``)."""
    usec = environ.get("WATCHDOG_USEC", "")
    meant_for = environ.get("WATCHDOG_PID", "")
    if meant_for and meant_for != str(pid):
        return None
    try:
        value = int(usec)
    except ValueError:
        if usec:
            log.warning("WATCHDOG_USEC=%r is not a number of microseconds: no watchdog", usec)
        return None
    return value / 2e6 if value > 0 else None


@dataclass
class Notifier:
    """Sends notifications to ``address`` (a path, or ``\\0``-prefixed: abstract)."""

    address: str
    #: Seconds between two ``WATCHDOG=1`` pings; None: no watchdog.
    watchdog: float | None = None
    _socket: socket.socket = field(init=False, repr=False)
    _failed: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._socket.setblocking(False)

    @classmethod
    def from_environ(
        cls, environ: MutableMapping[str, str] | None = None, pid: int | None = None
    ) -> Notifier | None:
        """The notifier systemd asked for (None when ``$NOTIFY_SOCKET`` is unset); the
        variables are removed from ``environ`` (``os.environ`` by default)."""
        env = os.environ if environ is None else environ
        interval = watchdog_interval(env, os.getpid() if pid is None else pid)
        path = env.get("NOTIFY_SOCKET", "")
        for name in ENV_VARS:
            env.pop(name, None)
        if not path:
            return None
        if path.startswith("@"):
            path = "\0" + path[1:]  # Linux's abstract socket namespace
        elif not path.startswith("/"):
            log.warning("NOTIFY_SOCKET=%r is neither a path nor @name: not notifying", path)
            return None
        return cls(path, interval)

    def send(self, *lines: str) -> None:
        """Send ``KEY=VALUE`` lines in one datagram; never blocks, never raises."""
        message = "\n".join(line.replace("\n", " ") for line in lines).encode()
        try:
            self._socket.sendto(message, self.address)
        except OSError as exc:
            # Once at WARNING: a socket that is gone or full does not fill the log.
            level = logging.DEBUG if self._failed else logging.WARNING
            self._failed = True
            log.log(level, "cannot notify systemd at %s: %s", self.address.lstrip("\0"), exc)

    def close(self) -> None:
        self._socket.close()

    async def serve_watchdog(self) -> None:
        """Ping the watchdog every :attr:`watchdog` seconds, from this trio loop, until
        cancelled (at once if there is no watchdog)."""
        if self.watchdog is None:
            return
        while True:
            self.send("WATCHDOG=1")
            await trio.sleep(self.watchdog)

    async def serve_status(self, status: Callable[[], str], every: float = STATUS_EVERY) -> None:
        """Send ``STATUS=`` whenever ``status()`` says something new (checked every
        ``every`` seconds), until cancelled."""
        said = None
        while True:
            now = status()
            if now != said:
                self.send(f"STATUS={now}")
                said = now
            await trio.sleep(every)
