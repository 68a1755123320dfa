"""A module's own word on its health: the retained event ``<module>.health``.

A module can be running and still not doing its job: Home Assistant unreachable, a token
refused, a required setting missing. Only the module knows, so it says so with an event
the guest SDK sets (``Module.set_health``): a convention over ``emit-retained``, so the
WIT contract ``vessel:host@1.0.0`` is unchanged and a module written without the SDK can
do the same. The daemon reads each one as it is emitted (``WasmModule``), keeps the
latest for the module's current process, and shows it in the API, ``vessel-ctl list`` /
``info``, the dashboard and ``/healthz``. An event of that name with another shape is
still delivered like any event, but is not taken as a health report (the module's log
says why).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

#: The event name a module reports its health with.
HEALTH_EVENT = "health"
#: ``ok``: doing its job; ``degraded``: working, not fully (reconnecting); ``error``: it
#: cannot do its job until someone acts (not configured, credentials refused).
STATUSES = ("ok", "degraded", "error")
#: The longest message taken, in characters: a line an operator reads, not a log.
MAX_MESSAGE = 500

__all__ = ["HEALTH_EVENT", "MAX_MESSAGE", "STATUSES", "Health", "parse_health"]


@dataclass(frozen=True)
class Health:
    status: str
    message: str
    #: When the module reported it (milliseconds since the Unix epoch).
    since: int

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "message": self.message, "since": self.since}


def parse_health(data: str, timestamp: int) -> Health | str:
    """The health report in an event's JSON ``data``, or why it is not one."""
    try:
        report = msgspec.json.decode(data)
    except msgspec.DecodeError:
        return "its data is not JSON"
    if not isinstance(report, dict):
        return 'its data must be an object {"status": ..., "message": ...}'
    status = report.get("status")
    if status not in STATUSES:
        return f"status must be one of {', '.join(STATUSES)}, not {status!r}"[:200]
    message = report.get("message", "")
    if not isinstance(message, str):
        return "message must be a string"
    if len(message) > MAX_MESSAGE:
        return f"message is {len(message)} characters, at most {MAX_MESSAGE} are taken"
    return Health(status=status, message=message, since=timestamp)
