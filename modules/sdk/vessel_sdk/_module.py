"""``Module``: handlers registered by decorators, dispatched from the guest exports.

Every export of ``vessel:host/guest`` is one method of the class ``Module.guest()``
returns; each looks up what the author registered and calls it. Host functions are
wrapped so a WIT error becomes ``HostError`` and every argument is type-checked before
it crosses (a mistyped argument to a host import would trap the instance, not raise).

An exception that escapes an author's handler never traps: it becomes the export's
``err`` result (the command's error, on-load's refusal, a logged failed event/timer/frame)
and, unless it is a ``CommandError`` or ``HostError`` escaping a command, its traceback
is written to the module log at level ``error``.
"""

from __future__ import annotations

import fnmatch
import json
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports import host, types

from ._errors import CommandError, HostError

__all__ = ["Event", "Log", "Module", "Reply", "Socket", "Storage"]

Params = dict[str, Any]
F = TypeVar("F", bound=Callable[..., Any])

#: The event a module's health is reported as (``Module.set_health``): retained, so the
#: daemon and late subscribers always have the latest; the daemon reads it
#: (vessel/_health.py) and shows it in ``vessel-ctl list``/``info``, the API, the dashboard
#: and ``/healthz``.
HEALTH_EVENT = "health"
HEALTH_STATUSES = ("ok", "degraded", "error")
#: The longest health message the daemon takes (characters).
MAX_HEALTH_MESSAGE = 500

_U32 = (1 << 32) - 1
_U64 = (1 << 64) - 1
_TIMERS_REFUSED = (
    '{function}({ms}) refused by the host: declare "timers": true in the manifest\'s '
    "permissions, and stay under limits.max_timers live timers"
)


def _host_call(function: Callable[..., Any], *args: Any) -> Any:
    """Call a host import; its WIT error becomes HostError."""
    try:
        return function(*args)
    except Err as e:
        raise HostError(str(e.value)) from None


def _check_str(what: str, value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, got {type(value).__name__}")
    return value


def _check_uint(what: str, value: object, limit: int) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= limit:
        raise ValueError(f"{what} must be an integer from 0 to {limit}, got {value!r}")
    return value


def _encode(what: str, value: Any) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{what} is not JSON-encodable: {exc}") from None


def _decode(text: str) -> Any:
    """JSON text from the host; text that is not JSON is passed on as the string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


@dataclass(frozen=True)
class Event:
    """A bus event delivered to an ``on_event`` handler; ``data`` is decoded JSON."""

    module: str
    name: str
    data: Any
    timestamp: int
    """Milliseconds since the Unix epoch, stamped by the host when it was emitted."""
    version: int = 1

    @property
    def key(self) -> str:
        """``module.name``, what subscription globs match."""
        return f"{self.module}.{self.name}"


class Reply:
    """The answer to a deferred command, to complete once from any later callback.

    ``ok(value)`` answers with ``value`` (JSON-encoded); ``err(message)`` fails the call
    with ``message``. Completing twice raises RuntimeError. After ``limits.reply_timeout_ms``
    the caller has been told ``timeout`` and completing raises HostError (unknown or
    expired reply token).
    """

    def __init__(self, command: str, token: int) -> None:
        self.command = command
        self._token = token
        self._done = False

    def __repr__(self) -> str:
        state = "done" if self._done else "pending"
        return f"<Reply {self.command!r} token={self._token} {state}>"

    @property
    def done(self) -> bool:
        """True once ``ok`` or ``err`` has been called."""
        return self._done

    def ok(self, value: Any = None) -> None:
        self._complete(Ok(_encode(f"the result of {self.command!r}", value)))

    def err(self, message: str) -> None:
        self._complete(Err(_check_str("Reply.err message", message)))

    def _complete(self, result: Ok[str] | Err[str]) -> None:
        if self._done:
            raise RuntimeError(f"{self!r} was already completed")
        self._done = True
        _host_call(host.complete_reply, self._token, result)


class Socket:
    """An open outbound WebSocket (text frames), from ``Module.websocket_connect``.

    ``on_message(text)`` is called for each frame; ``on_close(reason)`` once when the
    peer closes it or it fails, never after your own ``close()``.
    """

    def __init__(
        self,
        module: Module,
        handle: int,
        url: str,
        on_message: Callable[[str], Any],
        on_close: Callable[[str], Any] | None,
    ) -> None:
        self.handle = handle
        self.url = url
        self.on_message = on_message
        self.on_close = on_close
        self.closed = False
        self._module = module

    def __repr__(self) -> str:
        return f"<Socket {self.url!r} handle={self.handle} {'closed' if self.closed else 'open'}>"

    def send(self, text: str) -> None:
        """Send one text frame. Raises HostError if the socket is closed or the send fails
        (the host then drops the connection, and ``on_close`` follows)."""
        _check_str("Socket.send text", text)
        if self.closed:
            raise HostError(f"websocket {self.url}: the connection is closed")
        _host_call(host.websocket_send, self.handle, text)

    def close(self) -> None:
        """Close the connection (code 1000). Returns at once (the close handshake ends in
        the host, bounded); ``on_close`` is not called. Idempotent: closing a socket that
        is already closed, by you or by the peer, does nothing."""
        if self.closed:
            return
        self.closed = True
        self._module._sockets.pop(self.handle, None)
        try:
            _host_call(host.websocket_close, self.handle)
        except HostError as exc:
            # The peer closed it first and its on_close is still on its way: ignore.
            if "unknown websocket handle" not in exc.message:
                raise


class Storage:
    """The module's own key/value namespace (strings), persisted by the daemon.

    Needs ``"storage": true``; without it ``get`` returns the default and ``set`` /
    ``delete`` raise HostError. Users set configuration into the same namespace with
    ``vessel-ctl config <module> key=value``.
    """

    def get(self, key: str, default: str | None = None) -> str | None:
        value = host.storage_get(_check_str("storage key", key))
        return default if value is None else value

    def set(self, key: str, value: str) -> None:
        _host_call(
            host.storage_set, _check_str("storage key", key), _check_str("storage value", value)
        )

    def delete(self, key: str) -> None:
        _host_call(host.storage_delete, _check_str("storage key", key))


class Log:
    """Lines in the module's log (``vessel-ctl logs <module>``); no permission needed."""

    def debug(self, message: str) -> None:
        host.log("debug", str(message))

    def info(self, message: str) -> None:
        host.log("info", str(message))

    def warning(self, message: str) -> None:
        host.log("warning", str(message))

    def error(self, message: str) -> None:
        host.log("error", str(message))

    def exception(self, message: str) -> None:
        """``error`` with the traceback of the exception being handled appended."""
        host.log("error", f"{message}\n{traceback.format_exc().rstrip()}")


@dataclass(frozen=True)
class _Command:
    function: Callable[..., Any]
    deferred: bool


@dataclass(frozen=True)
class _Timer:
    function: Callable[[], Any]
    repeat: bool


class Module:
    """The app object: register handlers with its decorators, use the host through it,
    and end app.py with ``Guest = app.guest()``."""

    def __init__(self) -> None:
        self.storage = Storage()
        self.log = Log()
        self._load: list[Callable[[], Any]] = []
        self._unload: list[Callable[[], Any]] = []
        self._commands: dict[str, _Command] = {}
        self._events: list[tuple[str, Callable[[Event], Any]]] = []
        self._timers: dict[int, _Timer] = {}
        self._sockets: dict[int, Socket] = {}
        self._loaded = False
        self._health: tuple[str, str] | None = None

    def __repr__(self) -> str:
        return (
            f"<Module commands={sorted(self._commands)} timers={len(self._timers)} "
            f"sockets={len(self._sockets)} loaded={self._loaded}>"
        )

    # -- registration ------------------------------------------------------------------

    def on_load(self, function: F) -> F:
        """``function()`` runs in on-load, after the ``on_event`` subscriptions are made.
        An exception refuses the load: the module does not start."""
        self._load.append(function)
        return function

    def on_unload(self, function: F) -> F:
        """``function()`` runs when the module is stopped."""
        self._unload.append(function)
        return function

    def command(self, name: str, *, deferred: bool = False) -> Callable[[F], F]:
        """Register the handler of command ``name``.

        ``handler(params) -> value``: ``params`` is the decoded JSON object (``{}`` when
        the caller sent none), ``value`` is JSON-encoded as the answer. With
        ``deferred=True``, ``handler(params, reply)`` answers later through ``reply``
        (a ``Reply``), from any callback. Raising ``CommandError(message)`` fails the call
        with ``message``.
        """
        _check_str("command name", name)

        def register(function: F) -> F:
            if name in self._commands:
                raise ValueError(f"command {name!r} is registered twice")
            self._commands[name] = _Command(function, deferred)
            return function

        return register

    def on_event(self, pattern: str) -> Callable[[F], F]:
        """``handler(event)`` for bus events whose ``module.name`` matches the glob
        ``pattern``. The SDK subscribes in on-load; the manifest's
        ``permissions.subscribe`` must cover ``pattern``, or the module does not load."""
        _check_str("event pattern", pattern)

        def register(function: F) -> F:
            new = all(known != pattern for known, _ in self._events)
            self._events.append((pattern, function))
            if self._loaded and new:
                _host_call(host.subscribe, pattern)
            return function

        return register

    # -- using the host ----------------------------------------------------------------

    def emit(
        self, name: str, data: Any = None, *, retained: bool = False, version: int = 1
    ) -> None:
        """Publish ``module.name`` with ``data`` (JSON-encoded). With ``retained`` it is
        also kept as the current state of its key, replayed to later subscribers."""
        event = types.Event(
            module="",  # the host stamps the module's own id
            name=_check_str("event name", name),
            version=_check_uint("event version", version, _U32),
            data=_encode(f"data of event {name!r}", data),
            timestamp=0,
        )
        _host_call(host.emit_retained if retained else host.emit, event)

    def set_health(self, status: str, message: str = "") -> None:
        """Say how the module is doing, for the operator: ``"ok"``, ``"degraded"`` (it
        works, but not fully: reconnecting, a slow peer) or ``"error"`` (it cannot do its
        job until someone acts: not configured, credentials refused). ``message`` says
        why in plain words, and what to do (at most 500 characters).

        Published as the retained event ``<module>.health`` ``{"status", "message"}``
        (only when it changes); the daemon shows it in ``vessel-ctl list`` and ``info``,
        the API, the dashboard and ``/healthz``. A module that never calls it is shown
        without a health. Needs no permission."""
        if status not in HEALTH_STATUSES:
            raise ValueError(f"health status must be one of {HEALTH_STATUSES}, got {status!r}")
        _check_str("health message", message)
        if len(message) > MAX_HEALTH_MESSAGE:
            raise ValueError(
                f"health message is {len(message)} characters; at most {MAX_HEALTH_MESSAGE}"
            )
        if self._health == (status, message):
            return
        self.emit(HEALTH_EVENT, {"status": status, "message": message}, retained=True)
        self._health = (status, message)

    def call(self, module: str, name: str, params: Any = None, version: int = 1) -> Any:
        """Call command ``name`` of ``module`` and return its decoded answer. Needs
        ``"module.name@version"`` in ``permissions.call``; a failure raises HostError."""
        text = _host_call(
            host.call,
            _check_str("module", module),
            _check_str("command name", name),
            _check_uint("version", version, _U32),
            _encode("params", {} if params is None else params),
        )
        return _decode(text)

    def set_timeout(self, ms: int, function: Callable[[], Any]) -> int:
        """Call ``function()`` once, ``ms`` milliseconds from now; returns its handle."""
        return self._set_timer("set_timeout", ms, function, repeat=False)

    def set_interval(self, ms: int, function: Callable[[], Any]) -> int:
        """Call ``function()`` every ``ms`` milliseconds; returns its handle."""
        return self._set_timer("set_interval", ms, function, repeat=True)

    def clear_timer(self, handle: int) -> None:
        """Stop a timer; an unknown or already fired timeout is ignored."""
        handle = _check_uint("timer handle", handle, _U32)
        if self._timers.pop(handle, None) is not None:
            host.clear_timer(handle)

    def _set_timer(
        self, function: str, ms: int, callback: Callable[[], Any], *, repeat: bool
    ) -> int:
        ms = _check_uint(f"{function} ms", ms, _U64)
        if not callable(callback):
            raise TypeError(f"{function}: {callback!r} is not callable")
        handle = host.set_interval(ms) if repeat else host.set_timeout(ms)
        if handle == 0:
            raise HostError(_TIMERS_REFUSED.format(function=function, ms=ms))
        self._timers[handle] = _Timer(callback, repeat)
        return handle

    def websocket_connect(
        self,
        url: str,
        *,
        on_message: Callable[[str], Any],
        on_close: Callable[[str], Any] | None = None,
    ) -> Socket:
        """Open a WebSocket to ``url`` (``ws://`` or ``wss://``); returns once it is open.
        Needs ``permissions.network.websocket``; a refused or failed connect raises
        HostError. Blocks this module (not the host) during the handshake."""
        handle = _host_call(host.websocket_connect, _check_str("url", url))
        socket = Socket(self, handle, url, on_message, on_close)
        self._sockets[handle] = socket
        return socket

    def websocket_open(
        self,
        url: str,
        *,
        on_message: Callable[[str], Any],
        on_close: Callable[[str], Any] | None = None,
    ) -> Socket:
        """``websocket_connect`` without waiting: returns the Socket at once and connects
        in the background, so the module goes on answering its commands meanwhile (a
        server that accepts TCP and never answers would otherwise hold it for 10 s).
        Text sent before the connection is open is queued by the host (1 MiB at most)
        and sent in order once it is. A connection that cannot be opened calls
        ``on_close(reason)``, as any later end does. Raises HostError only for what is
        known at once: no permission, a bad url, ``limits.max_websockets``."""
        handle = _host_call(host.websocket_open, _check_str("url", url))
        socket = Socket(self, handle, url, on_message, on_close)
        self._sockets[handle] = socket
        return socket

    def guest(self) -> type[exports.Guest]:
        """The class componentize-py instantiates for the guest exports: end app.py with
        ``Guest = app.guest()``."""
        app = self

        class Guest(exports.Guest):
            def on_load(self) -> None:
                app._on_load()

            def on_unload(self) -> None:
                app._run_all("on_unload", app._unload)

            def on_event(self, event: types.Event) -> None:
                app._on_event(event)

            def on_command(self, action: str, params: str) -> str:
                return app._on_command(action, params)

            def on_timer(self, handle: int) -> None:
                app._on_timer(handle)

            def on_websocket_message(self, handle: int, message: str) -> None:
                socket = app._sockets.get(handle)
                if socket is not None:
                    app._guarded(f"websocket {socket.url} on_message", socket.on_message, message)

            def on_websocket_closed(self, handle: int, reason: str) -> None:
                socket = app._sockets.pop(handle, None)
                if socket is not None:
                    socket.closed = True
                    if socket.on_close is not None:
                        app._guarded(f"websocket {socket.url} on_close", socket.on_close, reason)

        return Guest

    # -- dispatch ----------------------------------------------------------------------

    def _on_load(self) -> None:
        self._loaded = True
        patterns = list(dict.fromkeys(pattern for pattern, _ in self._events))
        for pattern in patterns:
            try:
                _host_call(host.subscribe, pattern)
            except HostError as exc:
                message = f"on_load: cannot subscribe to {pattern!r}: {exc.message}"
                host.log("error", message)
                raise Err(message) from None
        self._run_all("on_load", self._load)

    def _run_all(self, where: str, functions: list[Callable[[], Any]]) -> None:
        for function in functions:
            self._guarded(where, function)

    def _on_event(self, record: types.Event) -> None:
        event = Event(
            module=record.module,
            name=record.name,
            data=_decode(record.data),
            timestamp=record.timestamp,
            version=record.version,
        )
        failure: Err[str] | None = None
        for pattern, function in list(self._events):
            if fnmatch.fnmatchcase(event.key, pattern):
                try:
                    self._guarded(f"on_event {event.key}", function, event)
                except Err as exc:
                    failure = failure or exc
        if failure is not None:
            raise failure

    def _on_timer(self, handle: int) -> None:
        timer = self._timers.get(handle)
        if timer is None:
            return  # cleared after it fired
        if not timer.repeat:
            del self._timers[handle]
        self._guarded("timer", timer.function)

    def _on_command(self, action: str, text: str) -> str:
        command = self._commands.get(action)
        if command is None:
            raise Err(f"unknown command: {action}")
        try:
            params = _params(action, text)
        except CommandError as exc:
            raise Err(exc.message) from None
        if not command.deferred:
            try:
                result = command.function(params)
                return _encode(f"the result of {action!r}", result)
            except Exception as exc:
                raise Err(self._command_failure(action, exc)) from None
        try:
            reply = Reply(action, _host_call(host.defer_reply))
        except HostError as exc:
            raise Err(f"{action}: {exc.message}") from None
        try:
            command.function(params, reply)
        except Exception as exc:
            message = self._command_failure(action, exc)
            if not reply.done:
                try:
                    reply.err(message)
                except HostError as late:
                    host.log("warning", f"command {action!r}: cannot fail the reply: {late}")
        return "null"  # ignored: the reply is deferred

    def _command_failure(self, action: str, exc: Exception) -> str:
        if isinstance(exc, CommandError | HostError):
            return exc.message
        self._log_traceback(f"command {action!r}", exc)
        return f"{action}: {type(exc).__name__}: {exc}"

    def _guarded(self, where: str, function: Callable[..., Any], *args: Any) -> None:
        """Run an author's callback; an exception is logged with its traceback and
        becomes the export's err result."""
        try:
            function(*args)
        except Exception as exc:
            self._log_traceback(where, exc)
            _fail(f"{where}: {type(exc).__name__}: {exc}")

    @staticmethod
    def _log_traceback(where: str, exc: Exception) -> None:
        # Skip the SDK's own frame (the dispatcher that called the handler). Paths read
        # /0/... for the module folder and /1/... for the SDK (componentize-py's mapping);
        # there are no source lines: the guest has no file system.
        tb = exc.__traceback__
        tb = tb.tb_next if tb is not None and tb.tb_next is not None else tb
        text = "".join(traceback.format_exception(type(exc), exc, tb)).rstrip()
        host.log("error", f"{where} failed:\n{text}")


def _fail(message: str) -> NoReturn:
    raise Err(message)


def _params(action: str, text: str) -> Params:
    if not text.strip():
        return {}
    try:
        params = json.loads(text)
    except ValueError:
        raise CommandError(f"{action}: params are not valid JSON") from None
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise CommandError(f"{action}: params must be a JSON object")
    return params
