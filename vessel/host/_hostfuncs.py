"""The ``vessel:host/host@1.0.0`` functions, as seen from inside a module process.

Each function runs on the guest's thread while the guest waits and checks the module's
capabilities. RPCs to the daemon and emitted events go over the lane, from this thread,
with blocking calls; timers, sockets and HTTP belong to the trio loop, reached through
the portal. None of them raises into wasm: a raised Python exception would trap
the guest, so every failure is returned as the WIT ``err`` value (or ``none`` / handle 0
where the WIT has no error channel) and, for denials, logged.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec
from wasmtime import component as wc

from .. import _ipc
from .._capabilities import Capabilities, Destinations
from .._emit_rules import RateLimit, emit_problem, rate_exceeded
from .._errors import CapabilityDenied
from .._log_rules import level_of
from ._hosterrors import HostCallError

if TYPE_CHECKING:
    from actors import BlockingChannel

    from ._http import HttpService
    from ._portal import TrioPortal
    from ._timers import TimerService
    from ._websockets import WebSocketService

#: Bound on each RPC to the daemon; the daemon applies its own, shorter, call timeouts.
RPC_TIMEOUT = 120.0


def _remote_message(exc: BaseException) -> str:
    message = getattr(exc, "message", None)
    return message if isinstance(message, str) else str(exc)


class HostFunctions:
    """Implements every host import for one module process."""

    def __init__(
        self,
        *,
        module_id: str,
        capabilities: Capabilities,
        lane: BlockingChannel,
        portal: TrioPortal,
        timers: TimerService,
        websockets: WebSocketService,
        http: HttpService,
        log: Callable[[str, str], None],
        current_chain: Callable[[], list[str]],
        defer_reply: Callable[[], int | str],
        complete_reply: Callable[[int, bool, str], str | None],
        max_event_rate: int,
    ) -> None:
        self._id = module_id
        self._max_event_rate = max_event_rate
        self._rate = RateLimit(max_event_rate)
        self._refused = 0
        self._refused_reason = ""
        self._caps = capabilities
        self._lane = lane
        self._portal = portal
        self._timers = timers
        self._websockets = websockets
        self._http = http
        self._log = log
        self._current_chain = current_chain
        self._defer_reply = defer_reply
        self._complete_reply = complete_reply
        #: Told when an emit is refused for the rate limit (the guest runtime's
        #: ``refused``: a flood is long work that gives the daemon nothing to do).
        self.on_rate_refused: Callable[[], None] = lambda: None

    def imports(self) -> dict[str, Callable[..., Any]]:
        return {
            "subscribe": self.subscribe,
            "emit": self.emit,
            "emit-retained": self.emit_retained,
            "call": self.call,
            "http-fetch": self.http_fetch,
            "websocket-connect": self.websocket_connect,
            "websocket-open": self.websocket_open,
            "websocket-send": self.websocket_send,
            "websocket-close": self.websocket_close,
            "storage-get": self.storage_get,
            "storage-set": self.storage_set,
            "storage-delete": self.storage_delete,
            "set-timeout": self.set_timeout,
            "set-interval": self.set_interval,
            "clear-timer": self.clear_timer,
            "log": self.log,
            "defer-reply": self.defer_reply,
            "complete-reply": self.complete_reply,
        }

    # -- helpers ---------------------------------------------------------------------

    def _denied(self, exc: CapabilityDenied) -> str:
        message = str(exc)
        self._log("warning", message)
        return message

    def _rpc(self, method: str, body: Any) -> msgspec.Raw:
        return self._lane.request(method, body, timeout=RPC_TIMEOUT)

    def _notify(self, method: str, body: Any) -> None:
        """A one-way message to the daemon, written with the invocation's other frames
        (at the latest when the guest thread next waits); blocks only while the pipe is
        full (backpressure, not loss)."""
        self._lane.notify(method, body)

    def _rpc_error(self, method: str, body: Any) -> str | None:
        """An RPC whose reply carries no value: ``None`` on success, else the reason."""
        try:
            self._rpc(method, body)
        except Exception as exc:
            return _remote_message(exc)
        return None

    def _destinations(self) -> Destinations | None:
        """Where the module may connect now: ``{settings.key}`` entries are read from the
        daemon at each call, so a changed setting applies to the next connection."""
        if self._caps.hosts is None:
            return None
        values: dict[str, str | None] = {}
        for key in self._caps.host_settings:
            try:
                raw = self._rpc(_ipc.SETTING_GET, _ipc.StorageKey(key=key))
                values[key] = _ipc.decode(raw, str | None)  # type: ignore[arg-type]
            except Exception as exc:
                # Unknown value: that entry allows nothing this time, and the log says why.
                self._log("error", f"reading setting {key!r} for network.hosts failed: {exc}")
        return self._caps.destinations(values)

    # -- event bus ---------------------------------------------------------------------

    def subscribe(self, pattern: str) -> str | None:
        try:
            self._caps.check_subscribe(pattern)
        except CapabilityDenied as exc:
            return self._denied(exc)
        return self._rpc_error(_ipc.BUS_SUBSCRIBE, _ipc.Subscribe(pattern=pattern))

    def _emit(self, event: Any, *, retained: bool) -> str | None:
        problem = emit_problem(event.name, event.data)
        if problem is None and not self._rate.take():
            problem = rate_exceeded(self._max_event_rate)
            self.on_rate_refused()
        try:
            if problem is not None:
                self._refused += 1
                self._refused_reason = problem
                return problem
            body = _ipc.Emit(
                name=event.name, data=event.data, version=event.version, retained=retained
            )
            self._notify(_ipc.BUS_EMIT, body)
        except Exception as exc:
            return _remote_message(exc)
        return None

    def report_refused(self) -> None:
        """Tell the daemon how many emits were refused since the last report (the guest
        thread calls this after every invocation): one message for a whole flood."""
        if self._refused:
            count, self._refused = self._refused, 0
            self._notify(_ipc.BUS_REFUSED, _ipc.Refused(reason=self._refused_reason, count=count))

    def emit(self, event: Any) -> str | None:
        return self._emit(event, retained=False)

    def emit_retained(self, event: Any) -> str | None:
        return self._emit(event, retained=True)

    # -- calls -------------------------------------------------------------------------

    def call(self, module: str, name: str, version: int, params: str) -> wc.Variant:
        try:
            self._caps.check_call(module, name, version)
        except CapabilityDenied as exc:
            return wc.Variant("err", self._denied(exc))
        body = _ipc.Call(
            module=module, name=name, version=version, params=params, chain=self._current_chain()
        )
        try:
            raw = self._rpc(_ipc.MODULE_CALL, body)
        except Exception as exc:
            return wc.Variant("err", _remote_message(exc))
        return wc.Variant("ok", _ipc.decode(raw, str))

    def defer_reply(self) -> int | str:
        return self._defer_reply()

    def complete_reply(self, token: int, reply: wc.Variant) -> str | None:
        if reply.tag not in ("ok", "err") or not isinstance(reply.payload, str):
            return "complete-reply: the reply must be ok(json) or err(message)"
        if reply.tag == "ok":
            try:
                json.loads(reply.payload)
            except ValueError as exc:
                return f"complete-reply: the result is not valid JSON: {exc}"
        return self._complete_reply(token, reply.tag == "ok", reply.payload)

    # -- network -----------------------------------------------------------------------

    def http_fetch(self, req: Any) -> Any:
        try:
            self._caps.check_http()
        except CapabilityDenied as exc:
            return self._denied(exc)
        headers = [(str(k), str(v)) for k, v in req.headers]
        try:
            status, resp_headers, body = self._portal.run(
                self._http.fetch, req.method, req.url, headers, req.body, self._destinations()
            )
        except CapabilityDenied as exc:
            return self._denied(exc)
        except HostCallError as exc:
            return str(exc)
        response = wc.Record()
        response.status = status  # type: ignore[attr-defined]
        response.headers = resp_headers  # type: ignore[attr-defined]
        response.body = body  # type: ignore[attr-defined]
        return response

    def websocket_connect(self, url: str) -> int | str:
        try:
            self._caps.check_websocket()
        except CapabilityDenied as exc:
            return self._denied(exc)
        try:
            handle: int = self._portal.run(self._websockets.connect, url, self._destinations())
        except CapabilityDenied as exc:
            return self._denied(exc)
        except HostCallError as exc:
            return str(exc)
        return handle

    def websocket_open(self, url: str) -> int | str:
        # Returns at once: the handshake goes on in the background (WebSocketService).
        try:
            self._caps.check_websocket()
        except CapabilityDenied as exc:
            return self._denied(exc)
        try:
            handle: int = self._portal.run_sync(
                self._websockets.connect_nowait, url, self._destinations()
            )
        except CapabilityDenied as exc:
            return self._denied(exc)
        except HostCallError as exc:
            return str(exc)
        return handle

    def websocket_send(self, handle: int, message: str) -> str | None:
        try:
            self._caps.check_websocket()
            self._portal.run(self._websockets.send, handle, message)
        except CapabilityDenied as exc:
            return self._denied(exc)
        except HostCallError as exc:
            return str(exc)
        return None

    def websocket_close(self, handle: int) -> str | None:
        try:
            self._caps.check_websocket()
            # Never waits for the peer: a frozen one would hold the guest for the close
            # timeout (WebSocketService.close_nowait).
            self._portal.run_sync(self._websockets.close_nowait, handle)
        except CapabilityDenied as exc:
            return self._denied(exc)
        except HostCallError as exc:
            return str(exc)
        return None

    # -- storage -----------------------------------------------------------------------

    def storage_get(self, key: str) -> str | None:
        try:
            self._caps.check_storage()
        except CapabilityDenied as exc:
            # The WIT gives storage-get no error channel: the guest sees `none`.
            self._denied(exc)
            return None
        try:
            raw = self._rpc(_ipc.STORAGE_GET, _ipc.StorageKey(key=key))
        except Exception as exc:
            self._log("error", f"storage-get {key!r} failed: {_remote_message(exc)}")
            return None
        return _ipc.decode(raw, str | None)  # type: ignore[arg-type]

    def storage_set(self, key: str, value: str) -> str | None:
        try:
            self._caps.check_storage()
        except CapabilityDenied as exc:
            return self._denied(exc)
        return self._rpc_error(_ipc.STORAGE_SET, _ipc.StorageSet(key=key, value=value))

    def storage_delete(self, key: str) -> str | None:
        try:
            self._caps.check_storage()
        except CapabilityDenied as exc:
            return self._denied(exc)
        return self._rpc_error(_ipc.STORAGE_DELETE, _ipc.StorageKey(key=key))

    # -- timers ------------------------------------------------------------------------

    def _set_timer(self, ms: int, *, repeat: bool) -> int:
        try:
            self._caps.check_timers()
        except CapabilityDenied as exc:
            self._denied(exc)
            return 0
        create = self._timers.set_interval if repeat else self._timers.set_timeout
        try:
            handle: int = self._portal.run_sync(create, ms)
        except HostCallError as exc:
            self._log("warning", str(exc))
            return 0
        return handle

    def set_timeout(self, ms: int) -> int:
        return self._set_timer(ms, repeat=False)

    def set_interval(self, ms: int) -> int:
        return self._set_timer(ms, repeat=True)

    def clear_timer(self, handle: int) -> None:
        try:
            self._caps.check_timers()
        except CapabilityDenied:
            return  # nothing of this module's can be live to clear
        self._portal.run_sync(self._timers.clear, handle)

    # -- logging -----------------------------------------------------------------------

    def log(self, level: str, message: str) -> None:
        # The WIT takes any string: a level Vessel does not know is kept as info.
        self._log(level_of(level), message)
