"""Native modules: integrations written in Python that run inside the daemon.

To routing they are the same as WASM modules (``command(name, params, chain)``), but they
are trusted code, so they are kept to what the daemon itself must provide. The built-in
``vessel`` module answers questions about the daemon and is the source of lifecycle
events (``vessel.module.*``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import msgspec

from ._errors import CallError
from ._manifest import HOST_API_VERSION


class NativeModule(Protocol):
    """What routing needs of an in-process module."""

    id: str

    async def command(self, name: str, params: str, chain: list[str]) -> str:
        """Run command ``name``; ``params`` and the result are JSON text. Raise CallError."""
        ...


class BuiltinModule:
    """The ``vessel`` module: ``ping``, ``version`` and ``modules``."""

    id = "vessel"

    def __init__(self, list_modules: Callable[[], list[dict[str, Any]]]) -> None:
        self._list_modules = list_modules

    async def command(self, name: str, params: str, chain: list[str]) -> str:
        if name == "ping":
            result: Any = {"pong": True}
        elif name == "version":
            result = {"host_api_version": HOST_API_VERSION}
        elif name == "modules":
            result = self._list_modules()
        else:
            raise CallError(
                "unknown_command",
                f"module 'vessel' has no command {name!r} (it has: ping, version, modules)",
            )
        return msgspec.json.encode(result).decode()
