"""Home Assistant: mirror HA's entity states onto the Vessel bus and call its services.

Speaks HA's WebSocket API (https://developers.home-assistant.io/docs/api/websocket):
``auth_required`` -> ``auth {access_token}`` -> ``auth_ok`` | ``auth_invalid``; then
commands with per-connection increasing ``id``s, each answered by ``{"id", "type":
"result", "success", "result" | "error": {code, message}}``; ``subscribe_events`` streams
``{"id", "type": "event", "event": {"event_type": "state_changed", "data": {entity_id,
old_state, new_state}}}``; ``ping`` is answered by ``pong``.

Configuration (storage, set by the user with ``vessel-ctl config home-assistant ...``):
``url`` (default ws://homeassistant.local:8123/api/websocket; ``http://host:8123`` works
too), ``token`` (a long-lived access token), ``ping_interval_ms`` (default 30000). A
change reconnects at once.

Published (``home-assistant.<name>``):

* ``health`` (retained, the SDK's ``set_health``): ``error`` when not configured or the
  token is refused, ``degraded`` while connecting or reconnecting, ``ok`` when connected;
  the daemon shows it in ``vessel-ctl list``/``info``, the dashboard and ``/healthz``;
* ``status`` (retained): ``{"state": "unconfigured" | "connecting" | "authenticating" |
  "connected" | "disconnected" | "auth_invalid", "url", "message"?, "ha_version"?,
  "retry_in_ms"?}``;
* ``state.<entity_id>`` (retained): HA's state object of the entity (null once removed),
  so a new subscriber to ``home-assistant.state.*`` gets every entity at once;
* ``state_changed``: HA's event data ``{entity_id, old_state, new_state}``;
* ``error``: ``{"kind": "auth_invalid", "message"}`` when HA refuses the token.

Commands: ``call_service {domain, service, service_data?, target?, return_response?}``
and ``get_states`` answer with HA's own result (an HA error fails the call with
``"<code>: <message>"``); ``get_state {entity_id}`` answers from the cache; ``status``.

Never blocked by the connection: the socket is opened with ``websocket_open`` (returns at
once, connects in the background) and closed without waiting for the peer, so ``status``
and ``get_state`` answer at once from what the module knows, even while HA is frozen or
a server accepts TCP and never answers.

Reconnecting: after a connection that was up ends (HA restarting closes it with 1001),
retries come quickly: 0.5 s, then every 2 s for 2 minutes, as a restarting HA is back
soon; otherwise, and after those 2 minutes, they back off from 1 s, doubling up to 15 s.
Every delay gets +-20 % jitter, so modules (or Vessels) that lost HA together do not
retry in step. A connection attempt is one TCP connect: a dead host sees at most one
every 1.6 s, and an unresponsive one one every 10 s (the host's connect timeout).
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vessel_sdk import CommandError, Event, HostError, Module, Reply, Socket

MODULE_ID = "home-assistant"
DEFAULT_URL = "ws://homeassistant.local:8123/api/websocket"
DEFAULT_PING_MS = 30_000
MIN_PING_MS = 10
BACKOFF_INITIAL_MS = 1_000
BACKOFF_MAX_MS = 15_000
#: After a connection that was up ends: the first retry, then the pace, for how long.
QUICK_FIRST_MS = 500
QUICK_RETRY_MS = 2_000
QUICK_WINDOW_S = 120.0
#: Each delay is multiplied by a random factor in [1 - JITTER, 1 + JITTER].
JITTER = 0.2
#: A connection not logged in by then is given up (a server that completes the WebSocket
#: handshake and then says nothing); the host bounds the handshake itself at 10 s.
LOGIN_TIMEOUT_MS = 20_000
CONFIG_KEYS = frozenset({"url", "token", "ping_interval_ms"})
NOT_CONFIGURED = (
    "not configured: set its token with `vessel-ctl config home-assistant --stdin token` "
    "(and its url, unless HA is at ws://homeassistant.local:8123)"
)
CONNECTION_LOST = "Home Assistant connection lost"
TOKEN_HINT = "set a new one with `vessel-ctl config home-assistant --stdin token`"

app = Module()

Message = dict[str, Any]


@dataclass
class _Pending:
    """A command sent to HA whose ``result`` has not arrived yet."""

    on_result: Callable[[Message], None]
    reply: Reply | None = None


def websocket_url(raw: str) -> str:
    """The WebSocket API URL for what the user configured: ``http(s)://host:port`` (the
    address of HA's web UI) or a bare ``host:port`` gets ``ws(s)://`` and
    ``/api/websocket``; a full ``ws(s)://.../api/websocket`` URL is kept as it is."""
    url = raw.strip()
    for web, ws in (("http://", "ws://"), ("https://", "wss://")):
        if url.startswith(web):
            url = ws + url[len(web) :]
    if "://" not in url:
        url = "ws://" + url
    if "/" not in url.split("://", 1)[1].rstrip("/"):
        url = url.rstrip("/") + "/api/websocket"
    return url


def _ha_error(msg: Message) -> str:
    """``"<code>: <message>"`` from a failed HA result."""
    error = msg.get("error")
    if not isinstance(error, dict):
        return "unknown_error: Home Assistant reported a failure without an error"
    return f"{error.get('code', 'unknown_error')}: {error.get('message', '')}"


def _answer(reply: Reply) -> Callable[[Message], None]:
    """A result handler that answers ``reply`` with HA's result or error."""

    def answer(msg: Message) -> None:
        if msg.get("success") is True:
            reply.ok(msg.get("result"))
        else:
            reply.err(_ha_error(msg))

    return answer


def _emit(name: str, data: Any, *, retained: bool = False) -> None:
    try:
        app.emit(name, data, retained=retained)
    except HostError as exc:
        app.log.warning(f"cannot emit {name}: {exc.message}")


class HomeAssistant:
    """One connection to HA at a time, its pending commands, and the entity cache."""

    def __init__(self) -> None:
        self.state = "starting"
        self.reason = "starting"  # why we are not connected (the error callers see)
        self.message = ""  # the status event's message
        self.url = DEFAULT_URL
        self.token = ""
        self.ping_ms = DEFAULT_PING_MS
        self.socket: Socket | None = None
        self.generation = 0  # frames of an older socket are ignored
        self.next_id = 1
        self.pending: dict[int, _Pending] = {}
        self.ha_version: str | None = None
        self.entities: dict[str, Any] = {}
        self.failures = 0  # connection attempts failed since the last login
        self.warned: str | None = None  # the failure last logged at warning level
        self.quick_until: float | None = None  # monotonic end of the quick retries
        self.retry_timer: int | None = None
        self.retry_in_ms: int | None = None
        self.login_timer: int | None = None
        self.ping_timer: int | None = None
        self.awaiting_pong: int | None = None
        self.warned_unconfigured = False

    # -- lifecycle ---------------------------------------------------------------------

    def config(self) -> tuple[str, str, int]:
        """(url, token, ping interval) as stored now."""
        url = websocket_url(app.storage.get("url") or DEFAULT_URL)
        return url, app.storage.get("token") or "", self._ping_interval()

    def start(self) -> None:
        """(Re)read the configuration and connect, or wait to be configured."""
        self.teardown(CONNECTION_LOST)
        self.url, self.token, self.ping_ms = self.config()
        if not self.token:
            self._set_state("unconfigured", NOT_CONFIGURED)
            if not self.warned_unconfigured:
                app.log.warning(NOT_CONFIGURED)
                self.warned_unconfigured = True
            self.publish_status()
            return
        self.connect()

    def connect(self) -> None:
        self.retry_timer = self.retry_in_ms = None
        self.generation += 1
        generation = self.generation
        self._set_state("connecting", f"connecting to {self.url}")
        try:
            # Returns at once: the handshake goes on in the host, and HA speaks first
            # (auth_required), so nothing is sent before the connection is open.
            self.socket = app.websocket_open(
                self.url,
                on_message=lambda text: self._on_message(generation, text),
                on_close=lambda reason: self._on_close(generation, reason),
            )
        except HostError as exc:
            self._retry_later(exc.message)
            return
        self.next_id = 1
        try:
            self.login_timer = app.set_timeout(
                LOGIN_TIMEOUT_MS, lambda: self._login_timed_out(generation)
            )
        except HostError as exc:
            app.log.warning(f"cannot bound the login: {exc.message}")
        self.publish_status()

    def _login_timed_out(self, generation: int) -> None:
        self.login_timer = None
        if generation == self.generation and self.state in ("connecting", "authenticating"):
            self._lost(
                f"{self.url} did not complete Home Assistant's login within "
                f"{LOGIN_TIMEOUT_MS / 1000:g} s"
            )

    def teardown(self, failure: str) -> None:
        """Close the connection, stop its timers and fail every pending command."""
        self.generation += 1
        socket, self.socket = self.socket, None
        if socket is not None:
            try:
                socket.close()
            except HostError as exc:
                app.log.debug(f"closing the connection: {exc.message}")
        for timer in (self.ping_timer, self.retry_timer, self.login_timer):
            if timer is not None:
                app.clear_timer(timer)
        self.ping_timer = self.retry_timer = self.login_timer = None
        self.retry_in_ms = self.awaiting_pong = None
        pending, self.pending = self.pending, {}
        for entry in pending.values():
            if entry.reply is not None and not entry.reply.done:
                try:
                    entry.reply.err(failure)
                except HostError as exc:  # the caller already gave up (reply timeout)
                    app.log.debug(f"{entry.reply!r}: {exc.message}")

    def _lost(self, reason: str) -> None:
        if self.state == "connected":
            # It was up a moment ago: most likely HA is restarting, and back soon.
            self.quick_until = time.monotonic() + QUICK_WINDOW_S
            self.failures = 0
        self.teardown(CONNECTION_LOST)
        self._retry_later(reason)

    def reset_backoff(self) -> None:
        self.failures = 0
        self.quick_until = None

    def _next_delay(self) -> int:
        """Milliseconds until the next attempt (see the module docstring)."""
        quick = self.quick_until is not None and time.monotonic() < self.quick_until
        if quick:
            base = QUICK_FIRST_MS if self.failures == 0 else QUICK_RETRY_MS
        else:
            base = min(BACKOFF_INITIAL_MS << min(self.failures, 16), BACKOFF_MAX_MS)
        self.failures += 1
        return round(base * random.uniform(1 - JITTER, 1 + JITTER))

    def _retry_later(self, reason: str) -> None:
        delay = self._next_delay()
        self._set_state("disconnected", reason)
        try:
            self.retry_timer = app.set_timeout(delay, self.connect)
        except HostError as exc:
            app.log.error(f"{reason}; cannot schedule a reconnect: {exc.message}")
        else:
            self.retry_in_ms = delay
            line = f"{reason}; reconnecting in {delay / 1000:.1f} s"
            if reason != self.warned:
                app.log.warning(line)
                self.warned = reason
            else:
                # The same failure again (HA still restarting: every 2 s): the log said
                # it once, and the module's health says it now.
                app.log.debug(line)
        self.publish_status()

    def _set_state(self, state: str, reason: str, message: str | None = None) -> None:
        self.state = state
        self.reason = reason
        self.message = reason if message is None else message

    def _ping_interval(self) -> int:
        raw = app.storage.get("ping_interval_ms")
        if raw is None:
            return DEFAULT_PING_MS
        try:
            value = int(raw)
        except ValueError:
            value = 0
        if value < MIN_PING_MS:
            app.log.warning(
                f"ping_interval_ms {raw!r} is not an integer >= {MIN_PING_MS}; "
                f"using {DEFAULT_PING_MS}"
            )
            return DEFAULT_PING_MS
        return value

    # -- status ------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        data: dict[str, Any] = {"state": self.state, "url": self.url}
        if self.state == "connected":
            data["ha_version"] = self.ha_version
        else:
            data["message"] = self.message
        if self.retry_in_ms is not None:
            data["retry_in_ms"] = self.retry_in_ms
        return data

    def health(self) -> tuple[str, str]:
        """(status, message) for ``set_health``: what an operator reads and acts on."""
        if self.state == "connected":
            return "ok", f"connected to Home Assistant {self.ha_version or ''} at {self.url}"
        if self.state == "unconfigured":
            return "error", NOT_CONFIGURED
        if self.state == "auth_invalid":
            return "error", f"{self.reason}; {TOKEN_HINT}"
        if self.retry_in_ms is not None:
            retry = f"; retrying in {self.retry_in_ms / 1000:.1f} s"
            return "degraded", f"not connected: {self.reason}{retry}"
        return "degraded", f"{self.reason}"

    def publish_status(self) -> None:
        _emit("status", self.status(), retained=True)
        status, message = self.health()
        try:
            app.set_health(status, message[:500])
        except HostError as exc:
            app.log.warning(f"cannot report health: {exc.message}")

    # -- sending -----------------------------------------------------------------------

    def request(
        self, payload: Message, on_result: Callable[[Message], None], reply: Reply | None = None
    ) -> None:
        """Send a command with the next id; ``on_result`` gets HA's result message.
        Raises CommandError when not connected or the send fails."""
        if self.state != "connected" or self.socket is None:
            raise CommandError(f"not connected to Home Assistant: {self.reason}")
        msg_id = self.next_id
        self.next_id += 1
        self.pending[msg_id] = _Pending(on_result, reply)
        try:
            self.socket.send(json.dumps({"id": msg_id, **payload}))
        except HostError as exc:
            del self.pending[msg_id]
            raise CommandError(f"cannot send to Home Assistant: {exc.message}") from None

    def _ping(self) -> None:
        if self.state != "connected" or self.socket is None:
            return
        if self.awaiting_pong is not None:
            self._lost(f"no pong from Home Assistant within {self.ping_ms} ms")
            return
        self.awaiting_pong = self.next_id
        self.next_id += 1
        try:
            self.socket.send(json.dumps({"id": self.awaiting_pong, "type": "ping"}))
        except HostError as exc:
            app.log.warning(f"ping failed: {exc.message}")  # on_close follows

    # -- receiving ---------------------------------------------------------------------

    def _on_close(self, generation: int, reason: str) -> None:
        if generation != self.generation:
            return
        self.socket = None
        if self.state == "connecting":
            # "websocket-open <url> failed: connection refused": say it once, plainly.
            self._lost(f"cannot connect to {self.url}: {reason.split(' failed: ', 1)[-1]}")
        else:
            self._lost(f"connection to {self.url} closed: {reason}")

    def _on_message(self, generation: int, text: str) -> None:
        if generation != self.generation:
            return
        try:
            msg = json.loads(text)
        except ValueError:
            app.log.warning(f"ignoring a frame that is not JSON: {text[:200]!r}")
            return
        if not isinstance(msg, dict):
            return
        kind = msg.get("type")
        if kind == "auth_required":
            self._set_state("authenticating", "authenticating")
            self._send_auth()
        elif kind == "auth_ok":
            self._authenticated(msg)
        elif kind == "auth_invalid":
            self._auth_invalid(msg)
        elif kind == "result":
            self._result(msg)
        elif kind == "event":
            self._event(msg)
        elif kind == "pong" and msg.get("id") == self.awaiting_pong:
            self.awaiting_pong = None

    def _send_auth(self) -> None:
        assert self.socket is not None
        try:
            self.socket.send(json.dumps({"type": "auth", "access_token": self.token}))
        except HostError as exc:
            app.log.warning(f"cannot authenticate: {exc.message}")  # on_close follows

    def _authenticated(self, msg: Message) -> None:
        version = msg.get("ha_version")
        self.ha_version = version if isinstance(version, str) else None
        attempts = f" after {self.failures + 1} attempts" if self.failures else ""
        self.reset_backoff()
        self.warned = None
        if self.login_timer is not None:
            app.clear_timer(self.login_timer)
            self.login_timer = None
        self._set_state("connected", "connected")
        app.log.info(f"connected to Home Assistant {self.ha_version} at {self.url}{attempts}")
        try:
            self.request({"type": "subscribe_events", "event_type": "state_changed"}, _subscribed)
            self.request({"type": "get_states"}, self._states_loaded)
            self.ping_timer = app.set_interval(self.ping_ms, self._ping)
        except (CommandError, HostError) as exc:
            app.log.warning(f"setting up the connection: {exc}")  # on_close follows
        self.publish_status()

    def _auth_invalid(self, msg: Message) -> None:
        message = msg.get("message")
        if not isinstance(message, str) or not message:
            message = "invalid access token"
        self.teardown(CONNECTION_LOST)
        self._set_state("auth_invalid", f"Home Assistant refused the token: {message}", message)
        app.log.error(
            f"Home Assistant refused the access token ({message}); not retrying until the "
            "configuration changes: `vessel-ctl config home-assistant --stdin token`"
        )
        self.publish_status()
        _emit("error", {"kind": "auth_invalid", "message": message})

    def _result(self, msg: Message) -> None:
        msg_id = msg.get("id")
        entry = self.pending.pop(msg_id, None) if isinstance(msg_id, int) else None
        if entry is None:
            return
        try:
            entry.on_result(msg)
        except HostError as exc:  # e.g. the caller gave up (reply timeout)
            app.log.warning(f"result {msg_id}: {exc.message}")

    def _states_loaded(self, msg: Message) -> None:
        states = msg.get("result")
        if msg.get("success") is not True or not isinstance(states, list):
            app.log.error(f"get_states failed: {_ha_error(msg)}")
            return
        fresh = {
            s["entity_id"]: s
            for s in states
            if isinstance(s, dict) and isinstance(s.get("entity_id"), str)
        }
        for gone in self.entities.keys() - fresh.keys():
            _emit(f"state.{gone}", None, retained=True)
        self.entities = fresh
        for entity_id, state in fresh.items():
            _emit(f"state.{entity_id}", state, retained=True)

    def _event(self, msg: Message) -> None:
        event = msg.get("event")
        if not isinstance(event, dict) or event.get("event_type") != "state_changed":
            return
        data = event.get("data")
        if not isinstance(data, dict) or not isinstance(data.get("entity_id"), str):
            return
        entity_id = data["entity_id"]
        new_state = data.get("new_state")
        if isinstance(new_state, dict):
            self.entities[entity_id] = new_state
        else:
            self.entities.pop(entity_id, None)
            new_state = None
        _emit(f"state.{entity_id}", new_state, retained=True)
        _emit("state_changed", data)


def _subscribed(msg: Message) -> None:
    if msg.get("success") is not True:
        app.log.error(f"subscribe_events state_changed failed: {_ha_error(msg)}")


HA = HomeAssistant()


# -- lifecycle and configuration ---------------------------------------------------------


@app.on_load
def load() -> None:
    # Connect from a timer, not here: on-load stays quick even if HA is slow to answer.
    app.set_timeout(0, lambda: HA.start() if HA.state == "starting" else None)


@app.on_unload
def unload() -> None:
    HA.teardown("the Home Assistant module stopped")


@app.on_event("vessel.module.config_changed")
def config_changed(event: Event) -> None:
    data = event.data if isinstance(event.data, dict) else {}
    if data.get("module") != MODULE_ID or data.get("key") not in CONFIG_KEYS:
        return
    if HA.config() == (HA.url, HA.token, HA.ping_ms) and HA.state != "unconfigured":
        return  # e.g. the second of two keys set together: the first event applied both
    app.log.info(f"configuration {data['key']!r} changed; reconnecting")
    HA.reset_backoff()
    HA.start()


# -- commands ----------------------------------------------------------------------------


def _str_param(params: dict[str, Any], key: str) -> str:
    value = params.get(key)
    if not isinstance(value, str) or not value:
        raise CommandError(f"{key} must be a non-empty string")
    return value


@app.command("call_service", deferred=True)
def call_service(params: dict[str, Any], reply: Reply) -> None:
    payload: Message = {
        "type": "call_service",
        "domain": _str_param(params, "domain"),
        "service": _str_param(params, "service"),
    }
    for key in ("service_data", "target"):
        value = params.get(key)
        if value is not None:
            if not isinstance(value, dict):
                raise CommandError(f"{key} must be an object")
            payload[key] = value
    if "return_response" in params:
        if not isinstance(params["return_response"], bool):
            raise CommandError("return_response must be true or false")
        payload["return_response"] = params["return_response"]
    HA.request(payload, _answer(reply), reply)


@app.command("get_states", deferred=True)
def get_states(params: dict[str, Any], reply: Reply) -> None:
    HA.request({"type": "get_states"}, _answer(reply), reply)


@app.command("get_state")
def get_state(params: dict[str, Any]) -> Any:
    entity_id = _str_param(params, "entity_id")
    if entity_id not in HA.entities:
        raise CommandError(f"unknown entity: {entity_id}")
    return HA.entities[entity_id]


@app.command("status")
def status(params: dict[str, Any]) -> Any:
    return {**HA.status(), "entities": len(HA.entities)}


Guest = app.guest()
