"""Each module's lifecycle history: started, crashed, restarting, failed, disabled, ...

What a dashboard's module page shows ("crashed at 14:03: killed by SIGKILL, restarted
0.5 s later"): the manager records each of its lifecycle events here as it publishes
it, and a few things only the manager knows (an admin asked for a restart, an enable).
It lives in the daemon's database, so it outlasts the module's process and the daemon
itself, and it is bounded: the newest ``KEEP_PER_MODULE`` entries of each module, the
newest ``KEEP_TOTAL`` of all, and ``MAX_REASON`` characters of any reason. Entries of a
module are deleted when it is uninstalled.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec

from ._errors import StorageError
from ._storage import Storage

log = logging.getLogger("vessel.history")

KEEP_PER_MODULE = 100
KEEP_TOTAL = 100 * 256
MAX_REASON = 2000

#: The lifecycle events (``vessel.module.<name>``) that change what a module is doing,
#: and the entries only the manager records. ``config_changed`` and ``refused`` are not
#: kept: a setting is not a state, and a refused folder is no module to show.
RECORDED = frozenset(
    {
        "installed",
        "install_failed",
        "compiling",
        "started",
        "restarted",
        "crashed",
        "restarting",
        "failed",
        "stopped",
        "disabled",
        "enabled",
        "restart_requested",
        "instance_replaced",
    }
)


class History:
    """The lifecycle history of every module, kept in ``storage``."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage

    def __repr__(self) -> str:
        return f"<History in {self._storage!r}>"

    def record(self, module_id: str, event: str, timestamp: int, fields: dict[str, Any]) -> None:
        """Keep one entry (an event not in ``RECORDED`` is ignored). A database that
        cannot take it (a full disk) costs the entry, never the event: logged, dropped."""
        if event not in RECORDED:
            return
        data = {k: v for k, v in fields.items() if k != "module" and v is not None}
        reason = data.get("reason")
        if isinstance(reason, str) and len(reason) > MAX_REASON:
            data["reason"] = f"{reason[:MAX_REASON]}... ({len(reason) - MAX_REASON} more cut)"
        try:
            self._storage.history_append(
                module_id,
                timestamp,
                event,
                msgspec.json.encode(data).decode(),
                keep=KEEP_PER_MODULE,
                total=KEEP_TOTAL,
            )
        except StorageError as exc:  # DiskWriteError too
            log.warning("module %s: its %s was not added to its history: %s", module_id, event, exc)

    def entries(self, module_id: str) -> list[dict[str, Any]]:
        """The module's entries, oldest first: ``{"timestamp", "event", ...fields}``."""
        entries = []
        for timestamp, event, data in self._storage.history(module_id):
            fields = msgspec.json.decode(data)
            entries.append({"timestamp": timestamp, "event": event, **fields})
        return entries

    def forget(self, module_id: str) -> None:
        self._storage.forget_history(module_id)
