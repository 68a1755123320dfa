"""The harness's own WebSocket to Vessel: lifecycle events and control calls (bursts,
hostile commands), kept apart from the measuring clients."""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
from trio_websocket import WebSocketConnection, open_websocket_url

from ._procs import BenchError, Vessel


class Control:
    def __init__(self, ws: WebSocketConnection) -> None:
        self._ws = ws
        self._ids = itertools.count()
        self._waiting: dict[str, trio.MemorySendChannel[dict[str, Any]]] = {}
        self.lifecycle_send, self.lifecycle = trio.open_memory_channel[dict[str, Any]](1000)
        #: Events of other modules received (what ``subscribe`` asked for), counted only.
        self.events = 0

    async def _read(self) -> None:
        async for raw in _messages(self._ws):
            doc = json.loads(raw)
            if doc.get("type") == "response" and doc.get("request_id") in self._waiting:
                self._waiting.pop(doc["request_id"]).send_nowait(doc)
            elif doc.get("type") == "event" and doc.get("module") == "vessel":
                self.lifecycle_send.send_nowait(doc)
            elif doc.get("type") == "event":
                self.events += 1

    async def request(self, frame: dict[str, Any], *, check: bool = True) -> dict[str, Any]:
        request_id = f"control-{next(self._ids)}"
        send, receive = trio.open_memory_channel[dict[str, Any]](1)
        self._waiting[request_id] = send
        await self._ws.send_message(json.dumps({**frame, "request_id": request_id}))
        doc = await receive.receive()
        if check and not doc.get("success"):
            raise BenchError(f"{frame} failed: {doc}")
        return doc

    async def call(self, module: str, name: str, params: Any, *, check: bool = True) -> Any:
        frame = {"type": "call", "module": module, "name": name, "params": params}
        return (await self.request(frame, check=check)).get("data")

    async def lifecycle_event(
        self, module: str, names: set[str], timeout: float = 60.0
    ) -> dict[str, Any]:
        """The next lifecycle event of ``module`` whose name is one of ``names``."""
        with trio.move_on_after(timeout):
            async for doc in self.lifecycle:
                name = doc["name"].rsplit(".", 1)[-1]
                if name in names and doc["data"].get("module") == module:
                    return doc
            raise BenchError("the control connection closed")
        raise BenchError(f"no {sorted(names)} event of {module!r} within {timeout:g} s")


async def _messages(ws: WebSocketConnection) -> AsyncIterator[str | bytes]:
    while True:
        yield await ws.get_message()


@asynccontextmanager
async def open_control(vessel: Vessel) -> AsyncIterator[Control]:
    headers = [(b"authorization", f"Bearer {vessel.token}".encode())]
    async with open_websocket_url(
        vessel.ws_url, extra_headers=headers, max_message_size=8 << 20
    ) as ws:
        if json.loads(await ws.get_message()).get("type") != "ready":
            raise BenchError("vessel did not say ready")
        control = Control(ws)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(control._read)
            await control.request({"type": "subscribe", "module": "vessel", "name": "module.*"})
            yield control
            nursery.cancel_scope.cancel()
