"""Installs the daemon runs: under way, and how each recent one ended.

An install (``POST /api/modules``, ``vessel-ctl install``) is checked and staged while its
client waits (a bad manifest, a duplicate id or bytes that are no component are answered
at once), then compiled (seconds to minutes on a small machine), put in place and started
by the daemon itself, in its own nursery. So it finishes whether its client waits for it
(the default) or not (``?wait=false``, answered ``202``), and a client that went away
does not leave half an install behind. Each install is a record here: its state, how
long it has been at it, and, once it ended, how (``installed`` or ``failed`` with the
reason) — kept for :data:`KEEP_ENDED` seconds, at most :data:`MAX_ENDED` of them, so a
client that did not wait can still learn the outcome and the records stay bounded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import trio

from ._errors import VesselError
from ._memory import trim

#: Seconds an ended install stays readable (``GET /api/modules/<id>/install``).
KEEP_ENDED = 600.0
#: Ended installs kept at most (the oldest go first).
MAX_ENDED = 32
#: Installs under way at most: each holds its staged files (up to 64 MiB) until its
#: compile, one or a few at a time, is done.
MAX_UNDER_WAY = 16

InstallState = Literal["compiling", "starting", "installed", "failed"]


class InstallInProgress(VesselError):
    """Another install of the same module id is under way."""


class TooManyInstalls(VesselError):
    """:data:`MAX_UNDER_WAY` installs are under way already."""


@dataclass(eq=False)
class Install:
    """One install: from its upload being staged to its module's first start."""

    module_id: str
    version: str
    replace: bool
    #: When its files were staged (trio time), and when it ended.
    received_at: float
    state: InstallState = "compiling"
    ended_at: float | None = None
    #: Why it failed (also raised to a client that waits for it).
    error: BaseException | None = None
    ended: trio.Event = field(default_factory=trio.Event)

    @property
    def under_way(self) -> bool:
        return self.ended_at is None

    def describe(self, compiling_for: float | None) -> dict[str, Any]:
        """The install as the API shows it (docs/api.md, "Install")."""
        end = self.ended_at if self.ended_at is not None else trio.current_time()
        return {
            "id": self.module_id,
            "version": self.version,
            "replace": self.replace,
            "state": self.state,
            "elapsed": round(end - self.received_at, 1),
            "compiling_for": None if compiling_for is None else round(compiling_for, 1),
            "reason": None if self.error is None else str(self.error),
        }


class Installs:
    """The install records: one per module id, bounded (module docstring)."""

    def __init__(self) -> None:
        self._by_id: dict[str, Install] = {}

    def begin(self, module_id: str, version: str, *, replace: bool) -> Install:
        """A new install of ``module_id``; InstallInProgress if one is under way."""
        current = self._by_id.get(module_id)
        if current is not None and current.under_way:
            raise InstallInProgress(
                f"module {module_id!r} is being installed already (for "
                f"{trio.current_time() - current.received_at:.0f} s); wait for that install "
                "to end (GET /api/modules/<id>/install, or the vessel.module.* events)"
            )
        under_way = sum(1 for i in self._by_id.values() if i.under_way)
        if under_way >= MAX_UNDER_WAY:
            raise TooManyInstalls(
                f"{under_way} installs are under way already; retry when some have ended "
                "(vessel-ctl list shows them)"
            )
        install = Install(module_id, version, replace, trio.current_time())
        self._by_id[module_id] = install
        self._prune()
        return install

    def drop(self, install: Install) -> None:
        """Forget an install whose client was answered with its error at once."""
        if self._by_id.get(install.module_id) is install:
            del self._by_id[install.module_id]
        install.ended.set()

    def end(self, install: Install, error: BaseException | None = None) -> None:
        install.state = "failed" if error is not None else "installed"
        install.error = error
        install.ended_at = trio.current_time()
        install.ended.set()
        self._prune()
        # One-off heavy work (an upload decoded, a compile followed) is over: what it
        # freed goes back to the machine now, not at the next minute's trim.
        trim()

    def get(self, module_id: str) -> Install | None:
        self._prune()
        return self._by_id.get(module_id)

    def all(self) -> list[Install]:
        """Every install under way or recently ended, by module id."""
        self._prune()
        return [self._by_id[k] for k in sorted(self._by_id)]

    def _prune(self) -> None:
        now = trio.current_time()
        ended = sorted(
            (i for i in self._by_id.values() if i.ended_at is not None),
            key=lambda i: i.ended_at or 0.0,
        )
        for index, install in enumerate(ended):
            too_many = len(ended) - index > MAX_ENDED
            if too_many or now - (install.ended_at or now) > KEEP_ENDED:
                del self._by_id[install.module_id]


__all__ = ["Install", "InstallInProgress", "InstallState", "Installs", "TooManyInstalls"]
