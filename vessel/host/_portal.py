"""How the guest's thread reaches the module process's trio loop."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

T = TypeVar("T")


class TrioPortal:
    """Runs a function on the trio loop from another thread and waits for its result.

    The guest thread is a plain thread, not one of trio's workers, so every call must
    name the loop; this keeps the token in one place.
    """

    def __init__(self, token: trio.lowlevel.TrioToken) -> None:
        self._token = token

    def run(self, afn: Callable[..., Awaitable[T]], *args: object) -> T:
        return trio.from_thread.run(afn, *args, trio_token=self._token)

    def run_sync(self, fn: Callable[..., T], *args: object) -> T:
        return trio.from_thread.run_sync(fn, *args, trio_token=self._token)

    def run_sync_soon(self, fn: Callable[..., object], *args: object) -> None:
        """Schedule ``fn`` on the loop without waiting for it (never blocks)."""
        self._token.run_sync_soon(fn, *args)
