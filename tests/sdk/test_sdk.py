"""vessel_sdk, through a real daemon running the SDK-based guest tests/sdk/guest (sdkkit)."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import trio
from trio_websocket import WebSocketRequest, serve_websocket

from tests.fixture_types import MakeModuleDir
from vessel._daemon import Daemon
from vessel._manager import ModuleState
from vessel._paths import database_path
from vessel._storage import Storage

from ..runtime.harness import call, call_error, data, next_event, running_daemon, wait_until

FULL = {
    "subscribe": ["beta.*"],
    "call": ["beta.echo@1"],
    "network": {"websocket": True},
    "storage": True,
    "timers": True,
}


def _logs(daemon: Daemon, module: str) -> list[str]:
    return [line.message for line in daemon.manager.logs(module)]


async def test_commands_answer_and_every_failure_is_an_error_not_a_trap(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """A command's return value is its JSON answer; CommandError, HostError and any other
    exception become the call's error (the latter logged with its traceback); unknown
    commands map to unknown_command; none of it traps or replaces the instance."""
    make_module_dir(tmp_path, "sdkkit", permissions={**FULL, "storage": False})
    async with running_daemon(tmp_path) as daemon:
        assert await call(daemon, "sdkkit", "echo", {"a": [1, "x"]}) == {"a": [1, "x"]}
        result = await daemon.manager.call("sdkkit", "echo", 1, "")
        assert json.loads(result) == {}

        error = await call_error(daemon, "sdkkit", "fail", {"message": "bad input"})
        assert (error.code, error.message) == ("module_error", "bad input")

        error = await call_error(daemon, "sdkkit", "crash")
        assert (error.code, error.message) == ("module_error", "crash: ValueError: deliberate bug")
        logged = await wait_until(
            lambda: [m for m in _logs(daemon, "sdkkit") if m.startswith("command 'crash' failed")]
        )
        assert "Traceback (most recent call last)" in logged[0]
        assert 'File "/0/app.py", line' in logged[0]  # the guest's own frame, with its line
        assert "in crash\nValueError: deliberate bug" in logged[0]

        error = await call_error(daemon, "sdkkit", "store", {"key": "k", "value": "v"})
        assert error.message.startswith("capability denied: storage is not declared")

        error = await call_error(daemon, "sdkkit", "not_json")
        assert error.message.startswith("not_json: TypeError: the result of 'not_json' is not")

        error = await call_error(daemon, "sdkkit", "nope")
        assert error.code == "unknown_command"
        assert "unknown command: nope" in error.message

        error = await call_error(daemon, "sdkkit", "echo", [1, 2])
        assert error.message == "echo: params must be a JSON object"

        assert await call(daemon, "sdkkit", "loads") == 1  # the same instance throughout
        stats = await daemon.manager.stats("sdkkit")
        assert stats is not None
        assert stats.traps == 0


async def test_deferred_replies_answer_later_or_fail_cleanly(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """A deferred command is answered by reply.ok/err from a later callback (the module
    serves other calls meanwhile), or at once; an exception in a deferred handler fails
    the call with its description instead of leaving it hanging."""
    make_module_dir(tmp_path, "sdkkit", permissions=FULL)
    async with running_daemon(tmp_path) as daemon:
        answers: list[Any] = []

        async def slow() -> None:
            answers.append(await call(daemon, "sdkkit", "later", {"ms": 300, "reply": [1, 2]}))

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(slow)
                await trio.sleep(0.05)
                assert await call(daemon, "sdkkit", "echo", {"x": 1}) == {"x": 1}
                assert answers == []
        assert answers == [[1, 2]]

        error = await call_error(daemon, "sdkkit", "later", {"ms": 10, "reply": "no", "fail": 1})
        assert (error.code, error.message) == ("module_error", "no")
        assert await call(daemon, "sdkkit", "now", {"y": 2}) == {"now": {"y": 2}}

        with trio.fail_after(10):
            error = await call_error(daemon, "sdkkit", "deferred_crash")
        assert error.message == "deferred_crash: KeyError: 'missing'"
        assert await wait_until(
            lambda: any("Traceback" in m for m in _logs(daemon, "sdkkit") if "deferred_crash" in m)
        )


async def test_timers_fire_by_handle_and_a_failing_callback_is_logged(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """set_timeout fires its callback once, set_interval until clear_timer; an exception
    in a timer callback is logged with its traceback and the instance lives on."""
    make_module_dir(tmp_path, "sdkkit", permissions=FULL)
    async with running_daemon(tmp_path) as daemon:

        async def fired() -> list[str]:
            return list(await call(daemon, "sdkkit", "fired"))

        once = await call(daemon, "sdkkit", "timeout", {"ms": 20, "name": "once"})
        tick = await call(daemon, "sdkkit", "interval", {"ms": 30, "name": "tick"})
        assert isinstance(once, int)
        assert isinstance(tick, int)
        assert once != tick
        with trio.fail_after(10):
            while (await fired()).count("tick") < 3:
                await trio.sleep(0.02)
        await call(daemon, "sdkkit", "clear", {"handle": tick})
        stopped = (await fired()).count("tick")
        await trio.sleep(0.2)
        seen = await fired()
        assert seen.count("once") == 1
        assert seen.count("tick") <= stopped + 1  # one fire may have been queued already

        await call(daemon, "sdkkit", "bad_timer", {"ms": 0})
        logged = await wait_until(
            lambda: [m for m in _logs(daemon, "sdkkit") if m.startswith("timer failed")]
        )
        assert "ZeroDivisionError: deliberate bug in a timer" in logged[0]
        assert "Traceback" in logged[0]
        assert "bad" in await fired()
        assert await call(daemon, "sdkkit", "loads") == 1


async def test_timers_not_granted_is_a_clear_error(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """Without the timers permission the host refuses with handle 0, and the SDK raises a
    HostError that names the permission to declare."""
    make_module_dir(tmp_path, "sdkkit", permissions={**FULL, "timers": False})
    async with running_daemon(tmp_path) as daemon:
        error = await call_error(daemon, "sdkkit", "timeout", {"ms": 10, "name": "x"})
        assert error.message.startswith("set_timeout(10) refused by the host")
        assert '"timers": true' in error.message


async def test_events_are_dispatched_to_every_matching_glob(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """on_event handlers are subscribed in on-load and each event goes to every handler
    whose glob matches its module.name, in registration order, with decoded data."""
    make_module_dir(tmp_path, "sdkkit", permissions=FULL)
    make_module_dir(tmp_path, "testkit", module_id="beta", permissions={})
    async with running_daemon(tmp_path) as daemon:
        await call(daemon, "beta", "emit", {"name": "door.open", "data": {"door": "front"}})
        await call(daemon, "beta", "emit", {"name": "light.on", "data": [1]})
        with trio.fail_after(10):
            while len(events := await call(daemon, "sdkkit", "events")) < 3:
                await trio.sleep(0.02)
        assert [(pattern, key, value) for pattern, key, value, _ in events] == [
            ("beta.*", "beta.door.open", {"door": "front"}),
            ("beta.door.*", "beta.door.open", {"door": "front"}),
            ("beta.*", "beta.light.on", [1]),
        ]
        assert all(isinstance(ts, int) and ts > 0 for *_, ts in events)


async def test_emit_call_and_storage_go_through_the_host(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """app.emit publishes (retained when asked) under the module's own id, app.call
    returns the other module's decoded answer, app.storage round-trips."""
    make_module_dir(tmp_path, "sdkkit", permissions=FULL)
    make_module_dir(tmp_path, "testkit", module_id="beta", permissions={})
    async with running_daemon(tmp_path) as daemon:
        sub = daemon.bus.subscribe("sdkkit.*", name="test")
        await call(daemon, "sdkkit", "emit", {"name": "hello", "data": {"n": 1}})
        event = await next_event(sub, lambda e: e.name == "hello")
        assert (event.module, data(event)) == ("sdkkit", {"n": 1})
        await call(daemon, "sdkkit", "emit", {"name": "kept", "data": 7, "retained": True})
        late = daemon.bus.subscribe("sdkkit.kept", name="late")
        assert data(await next_event(late, lambda e: True)) == 7

        answer = await call(
            daemon, "sdkkit", "call", {"module": "beta", "name": "echo", "params": {"q": 1}}
        )
        assert answer == {"q": 1}
        assert await call(daemon, "sdkkit", "store", {"key": "k", "value": "v"}) == "v"


async def test_exception_in_on_load_refuses_the_module_with_its_traceback(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """An exception escaping an on_load handler is on-load's err (the module does not
    run) and its traceback is in the module log, not a bare trap."""
    make_module_dir(tmp_path, "sdkkit", permissions=FULL)
    with Storage.open(database_path(tmp_path)) as storage:
        storage.set("sdkkit", "fail_load", "1", quota_bytes=1 << 20)
    async with running_daemon(tmp_path) as daemon:
        assert daemon.manager.state("sdkkit") is not ModuleState.RUNNING
        logged = await wait_until(
            lambda: [m for m in _logs(daemon, "sdkkit") if m.startswith("on_load failed")]
        )
        assert "RuntimeError: deliberate failure in on_load" in logged[0]
        reason = daemon.manager.describe("sdkkit")["last_reason"]
        assert "on-load returned an error: on_load: RuntimeError: deliberate failure" in reason


async def test_websocket_messages_and_peer_close_reach_the_callbacks(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """websocket_connect returns a Socket whose frames arrive in on_message; a peer close
    calls on_close once, and close() after that is a no-op."""

    async def echo_then_close(request: WebSocketRequest) -> None:
        ws = await request.accept()
        text = await ws.get_message()
        await ws.send_message(f"echo: {text!s}")
        await ws.aclose(1000, "bye")

    make_module_dir(tmp_path, "sdkkit", permissions=FULL)
    async with running_daemon(tmp_path) as daemon, trio.open_nursery() as nursery:
        server = await nursery.start(serve_websocket, echo_then_close, "127.0.0.1", 0, None)
        url = f"ws://127.0.0.1:{server.port}/"
        assert await call(daemon, "sdkkit", "ws_connect", {"url": url}) >= 1
        await call(daemon, "sdkkit", "ws_send", {"text": "hi"})
        with trio.fail_after(10):
            while not (seen := await call(daemon, "sdkkit", "ws_seen"))["closed"]:
                await trio.sleep(0.02)
        assert seen["messages"] == ["echo: hi"]
        assert len(seen["closed"]) == 1
        assert await call(daemon, "sdkkit", "ws_close") is None
        error = await call_error(daemon, "sdkkit", "ws_send", {"text": "again"})
        assert "the connection is closed" in error.message
        nursery.cancel_scope.cancel()


async def test_websocket_open_never_holds_the_module(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """websocket_open returns before the server answers: against a server that accepts TCP
    and never answers, the module answers its next command while that handshake is still
    pending (the server still holds the connection), and close() ends it without an
    on_close. Against a real server, text sent before the socket opened arrives first, in
    order."""
    accepted = trio.Event()
    ended = trio.Event()

    async def mute(stream: trio.SocketStream) -> None:
        accepted.set()
        try:
            while await stream.receive_some():
                pass
        except trio.BrokenResourceError:
            pass
        ended.set()

    received: list[str] = []

    async def echo(request: WebSocketRequest) -> None:
        ws = await request.accept()
        while True:
            text = str(await ws.get_message())
            received.append(text)
            await ws.send_message(f"echo: {text}")

    make_module_dir(tmp_path, "sdkkit", permissions=FULL)
    async with running_daemon(tmp_path) as daemon, trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, mute, 0, host="127.0.0.1"))
        silent = f"ws://127.0.0.1:{listeners[0].socket.getsockname()[1]}/"
        with trio.fail_after(10):
            assert await call(daemon, "sdkkit", "ws_open", {"url": silent}) >= 1
            await accepted.wait()
            assert await call(daemon, "sdkkit", "ws_seen") == {"messages": [], "closed": []}
            assert not ended.is_set()  # answered while the handshake was still pending
            await call(daemon, "sdkkit", "ws_close")
            await ended.wait()
        assert (await call(daemon, "sdkkit", "ws_seen"))["closed"] == []

        server = await nursery.start(serve_websocket, echo, "127.0.0.1", 0, None)
        url = f"ws://127.0.0.1:{server.port}/"
        await call(daemon, "sdkkit", "ws_open", {"url": url, "send": ["a", "b"]})
        await call(daemon, "sdkkit", "ws_send", {"text": "c"})
        with trio.fail_after(10):
            while len((seen := await call(daemon, "sdkkit", "ws_seen"))["messages"]) < 3:
                await trio.sleep(0.02)
        assert seen["messages"] == ["echo: a", "echo: b", "echo: c"]
        assert received == ["a", "b", "c"]
        nursery.cancel_scope.cancel()


async def test_set_health_is_what_the_daemon_shows_and_a_bad_report_is_ignored(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """set_health publishes the retained event <id>.health and the daemon shows it as the
    module's health (with when it was reported); a bad status is the caller's error, not
    an event; a 'health' event of another shape is delivered but not taken as a report,
    and the module's log says why; a restarted module has said nothing yet, and the
    retained report of its former process is null."""
    make_module_dir(tmp_path, "sdkkit", permissions=FULL)
    async with running_daemon(tmp_path) as daemon:
        assert daemon.manager.describe("sdkkit")["health"] is None
        sub = daemon.bus.subscribe("sdkkit.health", name="test")
        await call(daemon, "sdkkit", "health", {"status": "degraded", "message": "reconnecting"})
        event = await next_event(sub, lambda e: True)
        assert data(event) == {"status": "degraded", "message": "reconnecting"}
        assert daemon.manager.describe("sdkkit")["health"] == {
            "status": "degraded",
            "message": "reconnecting",
            "since": event.timestamp,
        }
        late = daemon.bus.subscribe("sdkkit.health", name="late")
        assert data(await next_event(late, lambda e: True))["status"] == "degraded"

        error = await call_error(daemon, "sdkkit", "health", {"status": "fine"})
        assert error.message == (
            "health: ValueError: health status must be one of ('ok', 'degraded', 'error'), "
            "got 'fine'"
        )
        await call(daemon, "sdkkit", "emit", {"name": "health", "data": {"status": "great"}})
        await next_event(sub, lambda e: data(e) == {"status": "great"})
        logged = await wait_until(
            lambda: [m for m in _logs(daemon, "sdkkit") if "not a health report" in m]
        )
        assert logged[0].startswith(
            "its 'health' event is not a health report (status must be one of ok, degraded, "
            "error, not 'great'); ignored"
        )
        assert daemon.manager.describe("sdkkit")["health"]["status"] == "degraded"
        assert any(m == "health degraded: reconnecting" for m in _logs(daemon, "sdkkit"))

        await call(daemon, "sdkkit", "health", {"status": "ok"})
        await next_event(sub, lambda e: data(e)["status"] == "ok")
        assert daemon.manager.describe("sdkkit")["health"]["status"] == "ok"
        await daemon.manager.restart("sdkkit")
        assert daemon.manager.describe("sdkkit")["health"] is None
        # The report of the process that is gone no longer holds: replayed as null.
        after = daemon.bus.subscribe("sdkkit.health", name="after the restart")
        assert data(await next_event(after, lambda e: True)) is None
