"""sdkkit: a guest on vessel_sdk that uses each SDK feature when a test asks it to.

It records what its callbacks saw (timer fires, events, socket frames) so tests can read
it back with commands. Storage key ``fail_load`` makes ``on_load`` raise.
"""

from __future__ import annotations

from typing import Any

from vessel_sdk import CommandError, Event, Module, Reply, Socket

app = Module()


class _State:
    def __init__(self) -> None:
        self.loads = 0
        self.fired: list[str] = []
        self.events: list[list[Any]] = []
        self.messages: list[str] = []
        self.closed: list[str] = []
        self.socket: Socket | None = None


STATE = _State()
Params = dict[str, Any]


@app.on_load
def load() -> None:
    if app.storage.get("fail_load"):
        raise RuntimeError("deliberate failure in on_load")
    STATE.loads += 1


@app.on_event("beta.*")
def any_beta(event: Event) -> None:
    STATE.events.append(["beta.*", event.key, event.data, event.timestamp])


@app.on_event("beta.door.*")
def beta_door(event: Event) -> None:
    STATE.events.append(["beta.door.*", event.key, event.data, event.timestamp])


# -- plain commands ------------------------------------------------------------------------


@app.command("echo")
def echo(params: Params) -> Any:
    return params


@app.command("loads")
def loads(params: Params) -> Any:
    return STATE.loads


@app.command("fail")
def fail(params: Params) -> Any:
    raise CommandError(params.get("message", "nope"))


@app.command("crash")
def crash(params: Params) -> Any:
    raise ValueError("deliberate bug")


@app.command("not_json")
def not_json(params: Params) -> Any:
    return {1, 2}


@app.command("store")
def store(params: Params) -> Any:
    app.storage.set(params["key"], params["value"])
    return app.storage.get(params["key"])


@app.command("emit")
def emit(params: Params) -> Any:
    app.emit(params["name"], params.get("data"), retained=params.get("retained", False))
    return None


@app.command("call")
def call(params: Params) -> Any:
    return app.call(params["module"], params["name"], params.get("params"))


@app.command("health")
def health(params: Params) -> Any:
    app.set_health(params["status"], params.get("message", ""))
    return None


# -- deferred commands -----------------------------------------------------------------------


@app.command("later", deferred=True)
def later(params: Params, reply: Reply) -> None:
    def answer() -> None:
        if params.get("fail"):
            reply.err(params["reply"])
        else:
            reply.ok(params["reply"])

    app.set_timeout(params.get("ms", 100), answer)


@app.command("now", deferred=True)
def now(params: Params, reply: Reply) -> None:
    reply.ok({"now": params})


@app.command("deferred_crash", deferred=True)
def deferred_crash(params: Params, reply: Reply) -> None:
    raise KeyError("missing")


# -- timers --------------------------------------------------------------------------------


@app.command("timeout")
def timeout(params: Params) -> Any:
    name = params["name"]
    return app.set_timeout(params["ms"], lambda: STATE.fired.append(name))


@app.command("interval")
def interval(params: Params) -> Any:
    name = params["name"]
    return app.set_interval(params["ms"], lambda: STATE.fired.append(name))


@app.command("clear")
def clear(params: Params) -> Any:
    app.clear_timer(params["handle"])
    return None


@app.command("bad_timer")
def bad_timer(params: Params) -> Any:
    def explode() -> None:
        STATE.fired.append("bad")
        raise ZeroDivisionError("deliberate bug in a timer")

    return app.set_timeout(params.get("ms", 0), explode)


@app.command("fired")
def fired(params: Params) -> Any:
    return STATE.fired


@app.command("events")
def events(params: Params) -> Any:
    return STATE.events


# -- websockets ----------------------------------------------------------------------------


@app.command("ws_connect")
def ws_connect(params: Params) -> Any:
    STATE.socket = app.websocket_connect(
        params["url"], on_message=STATE.messages.append, on_close=STATE.closed.append
    )
    return STATE.socket.handle


@app.command("ws_open")
def ws_open(params: Params) -> Any:
    STATE.socket = app.websocket_open(
        params["url"], on_message=STATE.messages.append, on_close=STATE.closed.append
    )
    for text in params.get("send", []):
        STATE.socket.send(text)  # queued by the host until the socket is open
    return STATE.socket.handle


@app.command("ws_send")
def ws_send(params: Params) -> Any:
    if STATE.socket is None:
        raise CommandError("no socket")
    STATE.socket.send(params["text"])
    return None


@app.command("ws_close")
def ws_close(params: Params) -> Any:
    if STATE.socket is not None:
        STATE.socket.close()
    return None


@app.command("ws_seen")
def ws_seen(params: Params) -> Any:
    return {"messages": STATE.messages, "closed": STATE.closed}


Guest = app.guest()
