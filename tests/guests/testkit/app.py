"""testkit: a guest that does exactly what a runtime test asks, including misbehaving.

The tests rewrite this module's id and permissions per test, so the guest touches host
functions only when a command asks it to. The exceptions, all in ``on_load``:

* storage key ``on_load``: ``"trap"`` raises (a wasm trap), ``"fail"`` returns
  ``err("on_load refused")``, ``"loop"`` spins forever; otherwise it logs
  ``testkit loaded`` (info) and prints ``testkit stdout line``;
* storage key ``trap_in``: names an export (``on_event``, ``on_timer``, ``on_unload``,
  ``on_websocket_message``, ``on_websocket_closed``) that traps when called; the
  ``trap_in`` command changes it without a restart;
* storage key ``loop_in``: names one of the same exports, which then spins forever when
  called (until the invocation deadline traps it); the ``loop_in`` command changes it
  without a restart. Both settings made by command belong to the instance: a replaced
  instance starts again from the storage keys.

Commands take a JSON object and return JSON. A failing host call makes the command
return the host's error string unchanged (``capability denied: ...``). Everything is
imported at the top: a componentize-py guest can import only what was loaded at build time.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports import host, types

#: The exports ``trap_in`` and ``loop_in`` may name.
TRAPPABLE = ("on_event", "on_timer", "on_unload", "on_websocket_message", "on_websocket_closed")


class _State:
    """What the guest has seen; lives as long as the component instance."""

    def __init__(self) -> None:
        self.trap_in: str | None = None
        self.loop_in: str | None = None
        self.events: list[types.Event] = []
        self.fired: list[int] = []
        self.messages: list[list[Any]] = []
        self.closed: list[list[Any]] = []
        self.hog: list[bytearray] = []
        #: timer handle -> (reply token, reply, fail?) for deferred answers
        self.pending: dict[int, tuple[int, Any, bool]] = {}


STATE = _State()
Params = dict[str, Any]
Handler = Callable[[Params], Any]


def _spin_forever() -> None:
    while True:
        pass


def _maybe_misbehave(export: str) -> None:
    """Trap or spin in ``export`` if ``trap_in`` / ``loop_in`` names it."""
    if STATE.trap_in == export:
        raise RuntimeError(f"deliberate trap in {export}")
    if STATE.loop_in == export:
        _spin_forever()


def _str(p: Params, key: str, default: str | None = None) -> str:
    """A string param. Host imports trap (not raise) on a mistyped argument, so every
    argument is checked before it crosses."""
    value = p.get(key, default)
    if not isinstance(value, str):
        raise Err(f"param {key} must be a string")
    return value


def _uint(p: Params, key: str, bits: int, default: int | None = None) -> int:
    value = p.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << bits:
        raise Err(f"param {key} must be an integer in [0, 2**{bits})")
    return value


def _json_or_text(data: str) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return data


# -- commands --------------------------------------------------------------------------
# Each takes the decoded params and returns a JSON-encodable value. Host errors (Err)
# propagate unchanged, so the command's error is the host's message.


def _echo(p: Params) -> Any:
    return p


def _trap(p: Params) -> Any:
    raise RuntimeError("deliberate trap")


def _fail(p: Params) -> Any:
    raise Err("deliberate failure")


def _loop(p: Params) -> Any:
    _spin_forever()


def _spin(p: Params) -> Any:
    """Busy for ``ms`` milliseconds, then answer: a slow but well-behaved call."""
    deadline = time.monotonic() + _uint(p, "ms", 32) / 1000
    while time.monotonic() < deadline:
        pass
    return {}


def _alloc(p: Params) -> Any:
    while True:
        STATE.hog.append(bytearray(1 << 20))


def _subscribe(p: Params) -> Any:
    host.subscribe(_str(p, "pattern"))
    return {}


def _emit(p: Params) -> Any:
    """With "pad": N, the data is a string of N "x" (made here: big events without big
    params)."""
    name = _str(p, "name")
    pad = "x" * _uint(p, "pad", 32, 0)
    event = types.Event(
        module=_str(p, "module", "testkit"),
        name=name,
        version=_uint(p, "version", 32, 1),
        # "raw": JSON text sent as it is (a hostile module's malformed or deep data).
        data=raw if isinstance(raw := p.get("raw"), str) else json.dumps(pad or p.get("data")),
        timestamp=0,
    )
    emit = host.emit_retained if p.get("retained", False) else host.emit
    if "count" not in p:
        emit(event)
        return {}
    # A burst from one invocation: refusals (rate limit) are counted, not raised. With
    # "numbered", event i carries {"n": i} (and the padding) instead of the data; with
    # "distinct", it is named "<name>.<i>", a key of its own (retained state).
    refused = 0
    for i in range(_uint(p, "count", 32)):
        if p.get("numbered", False):
            event.data = json.dumps({"n": i, "pad": pad} if pad else {"n": i})
        if p.get("distinct", False):
            event.name = f"{name}.{i}"
        try:
            emit(event)
        except Err:
            refused += 1
    return {"refused": refused}


def _call(p: Params) -> Any:
    """``params`` is passed on as JSON: a string is taken as JSON text already, anything
    else is encoded."""
    params = p.get("params")
    result = host.call(
        _str(p, "module"),
        _str(p, "name"),
        _uint(p, "version", 32, 1),
        params if isinstance(params, str) else json.dumps(params),
    )
    return _json_or_text(result)


def _storage_get(p: Params) -> Any:
    return {"value": host.storage_get(_str(p, "key"))}


def _storage_set(p: Params) -> Any:
    value = p.get("value")
    host.storage_set(_str(p, "key"), value if isinstance(value, str) else json.dumps(value))
    return {}


def _storage_delete(p: Params) -> Any:
    host.storage_delete(_str(p, "key"))
    return {}


def _set_timeout(p: Params) -> Any:
    return {"handle": host.set_timeout(_uint(p, "ms", 64))}


def _set_interval(p: Params) -> Any:
    return {"handle": host.set_interval(_uint(p, "ms", 64))}


def _clear_timer(p: Params) -> Any:
    host.clear_timer(_uint(p, "handle", 32))
    return {}


def _timers(p: Params) -> Any:
    return {"fired": list(STATE.fired)}


def _http(p: Params) -> Any:
    headers = p.get("headers") or []
    pairs = list(headers.items()) if isinstance(headers, dict) else headers
    request = types.HttpRequest(
        method=_str(p, "method", "GET"),
        url=_str(p, "url"),
        headers=[(str(k), str(v)) for k, v in pairs],
        body=None if p.get("body") is None else _str(p, "body"),
    )
    response = host.http_fetch(request)
    return {
        "status": response.status,
        "headers": [[k, v] for k, v in response.headers],
        "body": response.body,
    }


def _ws_connect(p: Params) -> Any:
    return {"handle": host.websocket_connect(_str(p, "url"))}


def _ws_send(p: Params) -> Any:
    host.websocket_send(_uint(p, "handle", 32), _str(p, "message"))
    return {}


def _ws_close(p: Params) -> Any:
    host.websocket_close(_uint(p, "handle", 32))
    return {}


def _ws_messages(p: Params) -> Any:
    return {"messages": list(STATE.messages), "closed": list(STATE.closed)}


def _events(p: Params) -> Any:
    return {"events": [[e.module, e.name, _json_or_text(e.data)] for e in STATE.events]}


def _events_full(p: Params) -> Any:
    return {
        "events": [
            {
                "module": e.module,
                "name": e.name,
                "version": e.version,
                "data": _json_or_text(e.data),
                "timestamp": e.timestamp,
            }
            for e in STATE.events
        ]
    }


def _read_file(p: Params) -> Any:
    try:
        with open(p["path"]) as f:
            return {"ok": True, "data": f.read()}
    except Exception as e:
        return {"ok": False, "error": repr(e)}


def _env(p: Params) -> Any:
    return dict(os.environ)


def _socket(p: Params) -> Any:
    try:
        import socket  # not in the build-time snapshot: expected to fail

        with socket.create_connection((p.get("host", "127.0.0.1"), int(p.get("port", 80)))):
            return {"ok": True, "error": None}
    except Exception as e:
        return {"ok": False, "error": repr(e)}


def _log(p: Params) -> Any:
    for _ in range(_uint(p, "count", 32, 1)):
        host.log(_str(p, "level", "info"), _str(p, "message"))
    return {}


def _print(p: Params) -> Any:
    print(_str(p, "text"), file=sys.stderr if p.get("stderr") else sys.stdout, flush=True)
    return {}


def _defer(p: Params) -> Any:
    """Answer later: after `after_ms` (a timer) with `reply`, or an error if `fail`;
    with `never`, do not answer at all (the caller's reply timeout applies)."""
    token = host.defer_reply()
    if not p.get("never"):
        handle = host.set_timeout(_uint(p, "after_ms", 64))
        if handle == 0:
            raise Err("defer: timers are not granted")
        STATE.pending[handle] = (token, p.get("reply"), bool(p.get("fail")))
    return {"ignored": True}


def _complete(p: Params) -> Any:
    host.complete_reply(_uint(p, "token", 64), Ok(json.dumps(p.get("reply"))))
    return {}


def _export_param(action: str, p: Params) -> str | None:
    export = p.get("export")
    if export is not None and export not in TRAPPABLE:
        raise Err(f"{action}: export must be one of {', '.join(TRAPPABLE)} or null")
    return export


def _set_trap_in(p: Params) -> Any:
    STATE.trap_in = _export_param("trap_in", p)
    return {}


def _set_loop_in(p: Params) -> Any:
    STATE.loop_in = _export_param("loop_in", p)
    return {}


COMMANDS: dict[str, Handler] = {
    "echo": _echo,
    "trap": _trap,
    "fail": _fail,
    "loop": _loop,
    "spin": _spin,
    "alloc": _alloc,
    "subscribe": _subscribe,
    "emit": _emit,
    "call": _call,
    "storage_get": _storage_get,
    "storage_set": _storage_set,
    "storage_delete": _storage_delete,
    "set_timeout": _set_timeout,
    "set_interval": _set_interval,
    "clear_timer": _clear_timer,
    "timers": _timers,
    "http": _http,
    "ws_connect": _ws_connect,
    "ws_send": _ws_send,
    "ws_close": _ws_close,
    "ws_messages": _ws_messages,
    "events": _events,
    "events_full": _events_full,
    "read_file": _read_file,
    "env": _env,
    "socket": _socket,
    "log": _log,
    "print": _print,
    "trap_in": _set_trap_in,
    "loop_in": _set_loop_in,
    "defer": _defer,
    "complete": _complete,
}


class Guest(exports.Guest):
    """The ``vessel:host/guest`` exports."""

    def on_load(self) -> None:
        behaviour = host.storage_get("on_load")
        if behaviour == "trap":
            raise RuntimeError("deliberate trap in on_load")
        if behaviour == "fail":
            raise Err("on_load refused")
        if behaviour == "loop":
            _spin_forever()
        trap_in = host.storage_get("trap_in")
        STATE.trap_in = trap_in if trap_in in TRAPPABLE else None
        loop_in = host.storage_get("loop_in")
        STATE.loop_in = loop_in if loop_in in TRAPPABLE else None
        host.log("info", "testkit loaded")
        print("testkit stdout line", flush=True)

    def on_unload(self) -> None:
        _maybe_misbehave("on_unload")

    def on_event(self, event: types.Event) -> None:
        _maybe_misbehave("on_event")
        STATE.events.append(event)

    def on_command(self, action: str, params: str) -> str:
        handler = COMMANDS.get(action)
        if handler is None:
            raise Err(f"unknown command: {action}")
        try:
            decoded = json.loads(params) if params.strip() else {}
        except ValueError:
            raise Err(f"{action}: params are not valid JSON") from None
        if not isinstance(decoded, dict):
            raise Err(f"{action}: params must be a JSON object")
        try:
            result = handler(decoded)
        except KeyError as e:
            raise Err(f"{action}: missing param {e.args[0]}") from None
        except (TypeError, ValueError) as e:
            raise Err(f"{action}: bad params: {e}") from None
        return json.dumps(result)

    def on_timer(self, handle: int) -> None:
        _maybe_misbehave("on_timer")
        STATE.fired.append(handle)
        if handle in STATE.pending:
            token, reply, fail = STATE.pending.pop(handle)
            outcome = Err(str(reply)) if fail else Ok(json.dumps(reply))
            host.complete_reply(token, outcome)

    def on_websocket_message(self, handle: int, message: str) -> None:
        _maybe_misbehave("on_websocket_message")
        STATE.messages.append([handle, message])

    def on_websocket_closed(self, handle: int, reason: str) -> None:
        _maybe_misbehave("on_websocket_closed")
        STATE.closed.append([handle, reason])
