"""A small, real Home Assistant WebSocket server for tests (trio-websocket, 127.0.0.1).

It speaks HA's WebSocket API as documented at
https://developers.home-assistant.io/docs/api/websocket:

* authentication phase: ``{"type": "auth_required", "ha_version"}``, then the client's
  ``{"type": "auth", "access_token"}`` is answered ``auth_ok`` (``ha_version``) or
  ``auth_invalid`` (``message``) followed by a disconnect;
* command phase: every message carries an ``id`` that must increase per connection
  (else ``id_reuse``), and is answered ``{"id", "type": "result", "success", "result" |
  "error": {"code", "message"}}``: ``get_states``; ``subscribe_events`` (optional
  ``event_type``), after which matching events arrive as ``{"id": <subscription id>,
  "type": "event", "event": {"event_type", "data", "origin", "time_fired", "context"}}``;
  ``call_service`` (``domain``, ``service``, optional ``service_data``, ``target``,
  ``return_response``): ``light``, ``switch`` and ``input_boolean`` ``turn_on`` /
  ``turn_off`` / ``toggle`` change the targeted entities, the ``result`` (``{"context",
  "response": null}``) is sent first, then a ``state_changed`` event to every subscriber
  on every connection; any other service fails with ``not_found``; ``ping`` is answered
  ``pong``; other types fail with ``unknown_command``.

Switches: ``answer_pings = False`` stops the pongs (a hung HA), ``answer_services =
False`` leaves call_service unanswered (a slow service).

Every frame the fake receives is recorded as a ``Frame`` (connection number, decoded
message). ``drop_all()`` closes every connection (code 1001, as HA does when it
restarts); ``stop()`` also closes the listener, and ``start()`` listens again on the same
port.
"""

from __future__ import annotations

import json
import ssl
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, serve_websocket

HA_VERSION = "2025.1.0"
TOGGLE_DOMAINS = frozenset({"light", "switch", "input_boolean"})
SERVICES = frozenset({"turn_on", "turn_off", "toggle"})
GOING_AWAY = 1001

Message = dict[str, Any]


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _context() -> Message:
    return {"id": uuid.uuid4().hex, "parent_id": None, "user_id": None}


def make_state(entity_id: str, state: str, **attributes: Any) -> Message:
    """An HA state object."""
    now = _now()
    return {
        "entity_id": entity_id,
        "state": state,
        "attributes": attributes,
        "last_changed": now,
        "last_reported": now,
        "last_updated": now,
        "context": _context(),
    }


def default_states() -> dict[str, Message]:
    return {
        "light.kitchen": make_state("light.kitchen", "off", friendly_name="Kitchen"),
        "switch.fan": make_state("switch.fan", "on", friendly_name="Fan"),
        "sensor.outside": make_state(
            "sensor.outside", "12.5", unit_of_measurement="°C", friendly_name="Outside"
        ),
    }


@dataclass(frozen=True)
class Frame:
    """A message the fake received: on which connection (0, 1, ...), and what."""

    conn: int
    msg: Message


@dataclass
class _Conn:
    number: int
    ws: WebSocketConnection
    drop: trio.Event = field(default_factory=trio.Event)
    last_id: int = 0
    #: subscription id -> event_type (None: every event)
    subscriptions: dict[int, str | None] = field(default_factory=dict)


class FakeHomeAssistant:
    """The fake server; use ``open_fake_ha()`` to run one."""

    def __init__(
        self,
        nursery: trio.Nursery,
        *,
        token: str,
        states: dict[str, Message],
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.token = token
        #: Serve wss:// with this context (None: ws://).
        self.ssl_context = ssl_context
        self.states = states
        self.answer_pings = True
        #: False: call_service frames are recorded but never answered (a slow service).
        self.answer_services = True
        self.port = 0
        #: Connections accepted so far (each WebSocket handshake counts).
        self.connections = 0
        self.frames: list[Frame] = []
        self._nursery = nursery
        self._live: dict[int, _Conn] = {}
        self._server_scope: trio.CancelScope | None = None
        self._server_done = trio.Event()
        self._changed = trio.Event()

    def __repr__(self) -> str:
        return (
            f"<FakeHomeAssistant port={self.port} connections={self.connections} "
            f"live={len(self._live)} frames={len(self.frames)}>"
        )

    @property
    def url(self) -> str:
        scheme = "ws" if self.ssl_context is None else "wss"
        return f"{scheme}://127.0.0.1:{self.port}/api/websocket"

    @property
    def live(self) -> int:
        """Connections open right now."""
        return len(self._live)

    def frames_of(self, kind: str) -> list[Frame]:
        return [f for f in self.frames if f.msg.get("type") == kind]

    async def wait_frame(self, predicate: Callable[[Frame], bool], *, timeout: float = 10) -> Frame:
        """The first recorded frame (past or future) that satisfies ``predicate``."""
        with trio.fail_after(timeout):
            seen = 0
            while True:
                for frame in self.frames[seen:]:
                    if predicate(frame):
                        return frame
                seen = len(self.frames)
                await self._wait_change()

    async def wait_connections(self, n: int, *, timeout: float = 10) -> None:
        """Until ``n`` connections have been accepted in total."""
        with trio.fail_after(timeout):
            while self.connections < n:
                await self._wait_change()

    async def _wait_change(self) -> None:
        await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    # -- running -----------------------------------------------------------------------

    async def start(self) -> None:
        """Listen (again) on 127.0.0.1: a new port the first time, then the same one."""
        assert self._server_scope is None, "already started"
        self._server_scope = trio.CancelScope()
        self._server_done = trio.Event()
        await self._nursery.start(self._serve, self._server_scope)

    async def _serve(self, scope: trio.CancelScope, *, task_status: trio.TaskStatus[None]) -> None:
        try:
            with scope:
                async with trio.open_nursery() as handlers:
                    server = await handlers.start(
                        lambda task_status: serve_websocket(
                            self._handle,
                            "127.0.0.1",
                            self.port,
                            ssl_context=self.ssl_context,
                            handler_nursery=handlers,
                            task_status=task_status,
                        )
                    )
                    self.port = server.port
                    task_status.started()
        finally:
            self._server_done.set()

    async def drop_all(self) -> None:
        """Close every open connection (code 1001), as HA does when it restarts."""
        conns = list(self._live.values())
        for conn in conns:
            conn.drop.set()
        with trio.fail_after(10):
            while any(c.number in self._live for c in conns):
                await self._wait_change()

    async def stop(self) -> None:
        """Close every connection, then the listener; ``start()`` listens again."""
        await self.drop_all()
        if self._server_scope is not None:
            self._server_scope.cancel()
            with trio.fail_after(10):
                await self._server_done.wait()
            self._server_scope = None

    async def set_state(self, entity_id: str, state: str, **attributes: Any) -> None:
        """Change an entity as if HA did (a device changed): subscribers get the event."""
        old = self.states.get(entity_id)
        new = make_state(entity_id, state, **attributes)
        self.states[entity_id] = new
        await self._broadcast(entity_id, old, new)

    # -- one connection ----------------------------------------------------------------

    async def _handle(self, request: WebSocketRequest) -> None:
        ws = await request.accept()
        conn = _Conn(self.connections, ws)
        self.connections += 1
        self._live[conn.number] = conn
        self._notify()
        try:
            async with trio.open_nursery() as nursery:

                async def drop_on_request() -> None:
                    await conn.drop.wait()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(drop_on_request)
                await self._session(conn)
                nursery.cancel_scope.cancel()
            if conn.drop.is_set():
                with trio.move_on_after(2):
                    await ws.aclose(GOING_AWAY, "Home Assistant is restarting")
        except ConnectionClosed:
            pass
        finally:
            del self._live[conn.number]
            self._notify()

    async def _receive(self, conn: _Conn) -> Message:
        msg = json.loads(await conn.ws.get_message())
        assert isinstance(msg, dict), msg
        self.frames.append(Frame(conn.number, msg))
        self._notify()
        return msg

    async def _send(self, conn: _Conn, msg: Message) -> None:
        await conn.ws.send_message(json.dumps(msg))

    async def _session(self, conn: _Conn) -> None:
        try:
            await self._send(conn, {"type": "auth_required", "ha_version": HA_VERSION})
            auth = await self._receive(conn)
            if auth.get("type") != "auth" or auth.get("access_token") != self.token:
                message = "Invalid access token or password"
                await self._send(conn, {"type": "auth_invalid", "message": message})
                await conn.ws.aclose()
                return
            await self._send(conn, {"type": "auth_ok", "ha_version": HA_VERSION})
            while True:
                await self._command(conn, await self._receive(conn))
        except ConnectionClosed:
            return

    async def _result(self, conn: _Conn, msg_id: Any, result: Any) -> None:
        await self._send(conn, {"id": msg_id, "type": "result", "success": True, "result": result})

    async def _error(self, conn: _Conn, msg_id: Any, code: str, message: str) -> None:
        await self._send(
            conn,
            {
                "id": msg_id,
                "type": "result",
                "success": False,
                "error": {"code": code, "message": message},
            },
        )

    async def _command(self, conn: _Conn, msg: Message) -> None:
        msg_id = msg.get("id")
        kind = msg.get("type")
        if not isinstance(msg_id, int) or not isinstance(kind, str):
            await self._error(conn, msg_id, "invalid_format", "Message incorrectly formatted.")
            return
        if msg_id <= conn.last_id:
            await self._error(conn, msg_id, "id_reuse", "Identifier values have to increase.")
            return
        conn.last_id = msg_id
        if kind == "ping":
            if self.answer_pings:
                await self._send(conn, {"id": msg_id, "type": "pong"})
        elif kind == "get_states":
            await self._result(conn, msg_id, list(self.states.values()))
        elif kind == "subscribe_events":
            event_type = msg.get("event_type")
            conn.subscriptions[msg_id] = event_type if isinstance(event_type, str) else None
            await self._result(conn, msg_id, None)
        elif kind == "call_service":
            if self.answer_services:
                await self._call_service(conn, msg_id, msg)
        else:
            await self._error(conn, msg_id, "unknown_command", "Unknown command.")

    async def _call_service(self, conn: _Conn, msg_id: int, msg: Message) -> None:
        domain, service = msg.get("domain"), msg.get("service")
        if domain not in TOGGLE_DOMAINS or service not in SERVICES:
            await self._error(conn, msg_id, "not_found", f"Service {domain}.{service} not found.")
            return
        data = dict(msg.get("service_data") or {})
        target = msg.get("target") or {}
        fallback: str | list[str] = data.pop("entity_id", [])
        wanted = target.get("entity_id", fallback)
        entity_ids = [wanted] if isinstance(wanted, str) else list(wanted)
        changes = []
        for entity_id in entity_ids:
            old = self.states.get(entity_id)
            if old is None or not entity_id.startswith(f"{domain}."):
                continue
            if service == "toggle":
                value = "off" if old["state"] == "on" else "on"
            else:
                value = "on" if service == "turn_on" else "off"
            attributes = {**old["attributes"], **(data if value == "on" else {})}
            new = make_state(entity_id, value, **attributes)
            self.states[entity_id] = new
            changes.append((entity_id, old, new))
        await self._result(conn, msg_id, {"context": _context(), "response": None})
        for entity_id, old, new in changes:
            await self._broadcast(entity_id, old, new)

    async def _broadcast(self, entity_id: str, old: Message | None, new: Message) -> None:
        event = {
            "event_type": "state_changed",
            "data": {"entity_id": entity_id, "old_state": old, "new_state": new},
            "origin": "LOCAL",
            "time_fired": new["last_updated"],
            "context": new["context"],
        }
        for conn in list(self._live.values()):
            for sub_id, event_type in conn.subscriptions.items():
                if event_type in (None, "state_changed"):
                    try:
                        await self._send(conn, {"id": sub_id, "type": "event", "event": event})
                    except ConnectionClosed:
                        break


@asynccontextmanager
async def open_fake_ha(
    *,
    token: str = "secret-token",
    states: dict[str, Message] | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[FakeHomeAssistant]:
    """A running fake on 127.0.0.1 (a free port), stopped on exit; with ``ssl_context``
    it serves wss://."""
    async with trio.open_nursery() as nursery:
        fake = FakeHomeAssistant(
            nursery,
            token=token,
            states=default_states() if states is None else states,
            ssl_context=ssl_context,
        )
        await fake.start()
        try:
            yield fake
        finally:
            with trio.CancelScope(shield=True):
                await fake.stop()
            nursery.cancel_scope.cancel()
