"""How long the daemon waits *actively* for a module's answer to a command.

Waiting for a module process costs a wake-up of the daemon when the answer arrives: the
daemon's event loop sleeps in the kernel, and the kernel has to wake it (and, on a VM,
its idle virtual CPU). For a command that a module answers in a few hundred
microseconds, that wake-up is a fair share of the whole round trip (docs/performance.md).
Waiting actively instead — the loop keeps turning, every other task still runs — sees
the answer at the next turn, at the price of a busy core while it waits.

So the daemon does it only where it pays off: for a module whose recent answers came
within the limit, for about twice its typical answer time, never longer than the
limit (``vessel serve --active-wait-us``; 0 turns it off). A module that is slow to
answer (an HTTP request, a deferred reply) is waited for the ordinary way.
"""

from __future__ import annotations

#: Default limit, seconds: about twice a fast command's round trip on a small machine.
DEFAULT_LIMIT = 0.0005
# Weight of the newest answer time in the running average.
_WEIGHT = 0.25


class ActiveWait:
    """One module's answer times, and the active wait they call for."""

    __slots__ = ("_typical", "limit")

    def __init__(self, limit: float = DEFAULT_LIMIT) -> None:
        if limit < 0:
            raise ValueError(f"the active wait limit cannot be negative (got {limit})")
        self.limit = limit
        # None until a first answer: a module is not assumed fast before it has been.
        self._typical: float | None = None

    @property
    def typical(self) -> float | None:
        """The running average of this module's answer times, seconds (None: no answer
        yet)."""
        return self._typical

    def budget(self) -> float:
        """How long to wait actively for the next answer, seconds (0: not at all)."""
        typical = self._typical
        if typical is None or typical > self.limit:
            return 0.0
        return min(self.limit, 2 * typical)

    def record(self, seconds: float) -> None:
        """An answer came ``seconds`` after its command was sent (or its wait ended)."""
        typical = self._typical
        self._typical = seconds if typical is None else typical + _WEIGHT * (seconds - typical)
