"""Which connections the gateway takes: bounded per address and in total, idle ones
closed, and the machine's own address always let in.

A device on the LAN needs no token to open connections, and each one is a file
descriptor of the daemon's. ~1,000 idle keep-alive connections used to exhaust systemd's
default limit of open files: ``/healthz``, every REST call and ``vessel-ctl`` timed out,
and the log filled with EMFILE. So:

* An HTTP connection with no request under way for :data:`KEEP_ALIVE_TIMEOUT` seconds is
  closed (a WebSocket is never idle in this sense; it has its own keep-alive).
* A remote address may hold :data:`PER_PEER` connections, and all remote addresses
  together :func:`remote_limit` (a quarter of the open-file limit, at most
  :data:`MAX_REMOTE`): a connection over either is answered ``503`` with a JSON error
  that says so, and closed.
* The machine's own address (``127.0.0.1``, ``::1``: :data:`LOCAL_ADDRESSES`) is exempt
  from both caps: whoever holds the remote caps, an admin on the machine still reaches
  ``/healthz``, the dashboard and ``vessel-ctl``. (Other loopback addresses, 127.0.0.2
  and up, count as remote: a test plays a LAN device from them. A reverse proxy on the
  same machine connects from 127.0.0.1, so it has to bound its own clients:
  docs/operations.md.)
  ``vessel serve`` raises its soft open-file limit to the hard one at start, so the
  remote caps sit far below what the process may open.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field

import msgspec

from .._open_files import open_file_limit

log = logging.getLogger("vessel.gateway")

#: Seconds an HTTP connection may stay open with no request under way.
KEEP_ALIVE_TIMEOUT = 15.0
#: Connections one remote address may hold at once (a dashboard uses a few).
PER_PEER = 32
#: Connections all remote addresses together may hold at most.
MAX_REMOTE = 512
#: Seconds between two log lines about refusing the same address.
LOG_EVERY = 60.0


def remote_limit(files: int | None = None) -> int:
    """Remote connections taken at once: a quarter of the open-file limit (the rest is
    the daemon's own: module pipes, loopback clients, the database), at most MAX_REMOTE."""
    files = open_file_limit() if files is None else files
    return max(16, min(MAX_REMOTE, files // 4))


#: The addresses a client on this machine connects from (to a loopback listener, or to
#: one on every interface through "localhost"): exempt from the caps.
LOCAL_ADDRESSES = frozenset({"127.0.0.1", "::1", "::ffff:127.0.0.1"})


def is_local_address(host: str) -> bool:
    return host.split("%", 1)[0] in LOCAL_ADDRESSES


@dataclass
class Admission:
    """The gateway's count of open remote connections, by address."""

    per_peer: int = PER_PEER
    total: int = field(default_factory=remote_limit)
    _open: Counter[str] = field(default_factory=Counter)
    _logged: dict[str, float] = field(default_factory=dict)

    def admit(self, host: str) -> str | None:
        """Take a connection from ``host``; None, or why it is refused (then it was not
        counted). The machine's own address is always taken."""
        if is_local_address(host):
            return None
        if self._open[host] >= self.per_peer:
            why = f"{host} has {self._open[host]} connections open, the most one address may"
        elif sum(self._open.values()) >= self.total:
            why = f"the gateway has {self.total} remote connections open, the most it takes"
        else:
            self._open[host] += 1
            return None
        self._log_refusal(host, why)
        return why

    def release(self, host: str) -> None:
        if is_local_address(host):
            return
        self._open[host] -= 1
        if self._open[host] <= 0:
            del self._open[host]

    def _log_refusal(self, host: str, why: str) -> None:
        now = time.monotonic()
        if now - self._logged.get(host, -LOG_EVERY) >= LOG_EVERY:
            self._logged[host] = now
            log.warning("refusing connections from %s: %s (logged once a minute)", host, why)
        if len(self._logged) > 4 * self.total:  # bounded: forget the oldest
            for old in sorted(self._logged, key=self._logged.__getitem__)[: self.total]:
                del self._logged[old]


def refusal_response(why: str) -> bytes:
    """An HTTP/1.1 ``503`` with the API's JSON error, for a connection refused at once."""
    body = msgspec.json.encode(
        {"code": "too_many_connections", "message": f"{why}; close some and retry"}
    )
    head = (
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\nretry-after: 5\r\n\r\n"
    )
    return head.encode() + body


__all__ = [
    "KEEP_ALIVE_TIMEOUT",
    "Admission",
    "refusal_response",
    "remote_limit",
]
