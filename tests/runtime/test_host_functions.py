"""Every host function: denied without its capability, working with it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio
import trio_websocket

from tests.fixture_types import MakeModuleDir

from ..servers import serve_http
from .harness import call, call_error, running_daemon

DENIED = "capability denied: "


@pytest.mark.parametrize(
    ("command", "params", "needle"),
    [
        ("subscribe", {"pattern": "beta.*"}, "subscribe"),
        ("call", {"module": "vessel", "name": "ping", "version": 1, "params": "{}"}, "call"),
        ("storage_set", {"key": "k", "value": "v"}, "storage"),
        ("storage_delete", {"key": "k"}, "storage"),
        (
            "http",
            {"method": "GET", "url": "http://127.0.0.1:9/", "headers": [], "body": None},
            "http",
        ),
        ("ws_connect", {"url": "ws://127.0.0.1:9/"}, "websocket"),
    ],
)
async def test_undeclared_capability_is_denied(
    tmp_path: Path,
    make_module_dir: MakeModuleDir,
    command: str,
    params: dict[str, Any],
    needle: str,
) -> None:
    """With an empty permission set every fallible host function returns
    `capability denied: ...` to the guest, is logged, and the module keeps running."""
    make_module_dir(tmp_path, "testkit", module_id="alpha", permissions={})
    async with running_daemon(tmp_path) as daemon:
        error = await call_error(daemon, "alpha", command, params)
        assert error.message.startswith(DENIED), error.message
        assert needle in error.message
        assert any(DENIED in line.message for line in daemon.manager.logs("alpha"))
        assert await call(daemon, "alpha", "echo", {"alive": True}) == {"alive": True}


async def test_undeclared_storage_get_and_timers_return_nothing(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """storage-get and set-timeout have no error channel in the WIT: without the
    capability they return none / handle 0, and the denial is logged."""
    make_module_dir(tmp_path, "testkit", module_id="alpha", permissions={})
    async with running_daemon(tmp_path) as daemon:
        assert await call(daemon, "alpha", "storage_get", {"key": "k"}) == {"value": None}
        assert await call(daemon, "alpha", "set_timeout", {"ms": 10}) == {"handle": 0}
        denials = [line.message for line in daemon.manager.logs("alpha") if DENIED in line.message]
        assert any("storage" in d for d in denials)
        assert any("timers" in d for d in denials)


async def test_subscribe_outside_declared_globs_is_denied(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """A declared glob covers narrower patterns, not wider or other ones."""
    make_module_dir(
        tmp_path, "testkit", module_id="alpha", permissions={"subscribe": ["beta.door.*"]}
    )
    async with running_daemon(tmp_path) as daemon:
        await call(daemon, "alpha", "subscribe", {"pattern": "beta.door.front"})
        for pattern in ("beta.*", "gamma.door.x"):
            error = await call_error(daemon, "alpha", "subscribe", {"pattern": pattern})
            assert error.message.startswith(DENIED)


async def test_guest_cannot_reach_host_files_env_or_sockets(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """WASI is linked with no preopens, no environment and no sockets: a guest cannot read
    a host file (even one next to its own module), see the daemon's environment, or open
    a socket."""
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    make_module_dir(tmp_path, "testkit", module_id="alpha", permissions={})
    async with running_daemon(tmp_path) as daemon:
        for path in (str(secret), "/etc/passwd", "manifest.json"):
            result = await call(daemon, "alpha", "read_file", {"path": path})
            assert result["ok"] is False, result
        assert await call(daemon, "alpha", "env") == {}
        result = await call(daemon, "alpha", "socket", {"host": "127.0.0.1", "port": 9})
        assert result["ok"] is False


async def test_timers_timeout_once_interval_repeats_cleared_never_again(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """A timeout fires once; an interval fires repeatedly; a cleared interval never fires
    again, while another one set with the same period goes on firing."""
    make_module_dir(tmp_path, "testkit", module_id="alpha", permissions={"timers": True})
    async with running_daemon(tmp_path) as daemon:
        once = (await call(daemon, "alpha", "set_timeout", {"ms": 20}))["handle"]
        every = (await call(daemon, "alpha", "set_interval", {"ms": 30}))["handle"]
        witness = (await call(daemon, "alpha", "set_interval", {"ms": 30}))["handle"]
        assert min(once, every, witness) > 0
        assert len({once, every, witness}) == 3

        async def fired() -> list[int]:
            handles: list[int] = (await call(daemon, "alpha", "timers"))["fired"]
            return handles

        with trio.fail_after(15):
            while (await fired()).count(every) < 3:
                await trio.sleep(0.03)
        await call(daemon, "alpha", "clear_timer", {"handle": every})
        after_clear = await fired()
        # Three more periods of the same clock, as the module's timers saw them (however
        # long that took here): a cleared interval that still fired would show up.
        with trio.fail_after(15):
            while (final := await fired()).count(witness) < after_clear.count(witness) + 3:
                await trio.sleep(0.03)
        assert final.count(once) == 1
        assert final.count(every) == after_clear.count(every)


async def test_call_between_modules_allowed_and_denied(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """A declared `module.name@version` call goes through and returns the target's answer;
    an undeclared one is denied."""
    make_module_dir(tmp_path, "testkit", module_id="alpha", permissions={"call": ["beta.echo@1"]})
    make_module_dir(tmp_path, "testkit", module_id="beta", permissions={})
    async with running_daemon(tmp_path) as daemon:
        params = json.dumps({"from": "alpha"})
        answer = await call(
            daemon,
            "alpha",
            "call",
            {"module": "beta", "name": "echo", "version": 1, "params": params},
        )
        assert answer == {"from": "alpha"}
        error = await call_error(
            daemon,
            "alpha",
            "call",
            {"module": "beta", "name": "fail", "version": 1, "params": "{}"},
        )
        assert error.message.startswith(DENIED)


async def test_call_cycle_fails_in_bounded_time(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """A → B → A is refused with a cycle error instead of deadlocking both modules."""
    make_module_dir(tmp_path, "testkit", module_id="alpha", permissions={"call": ["beta.call@1"]})
    make_module_dir(tmp_path, "testkit", module_id="beta", permissions={"call": ["alpha.echo@1"]})
    async with running_daemon(tmp_path) as daemon:
        inner = json.dumps({"module": "alpha", "name": "echo", "version": 1, "params": "{}"})
        with trio.fail_after(10):
            error = await call_error(
                daemon,
                "alpha",
                "call",
                {"module": "beta", "name": "call", "version": 1, "params": inner},
            )
        assert "call cycle detected: alpha → beta → alpha" in error.message
        assert await call(daemon, "alpha", "echo", {"still": "alive"}) == {"still": "alive"}


async def test_http_fetch_against_local_server(
    tmp_path: Path, make_module_dir: MakeModuleDir, nursery: trio.Nursery
) -> None:
    """With network.http a guest's request reaches a real local server with its method,
    headers and body, and the guest gets status, headers and body back."""
    url = await serve_http(nursery) + "/echo"
    make_module_dir(tmp_path, "testkit", module_id="alpha", permissions={"network": {"http": True}})
    async with running_daemon(tmp_path) as daemon:
        response = await call(
            daemon,
            "alpha",
            "http",
            {"method": "POST", "url": url, "headers": [["x-test", "yes"]], "body": "hello"},
        )
    assert response["status"] == 200
    echoed = json.loads(response["body"])
    assert echoed["method"] == "POST"
    assert ["x-test", "yes"] in echoed["headers"]
    assert echoed["body"] == "hello"
    assert ["x-reply", "yes"] in [list(h) for h in response["headers"]]


async def test_websocket_messages_both_ways(
    tmp_path: Path, make_module_dir: MakeModuleDir, nursery: trio.Nursery
) -> None:
    """With network.websocket a guest connects to a real local server, its frames arrive
    there, the server's frames arrive in on-websocket-message, and a server-side close
    reaches on-websocket-closed."""
    received: list[str] = []

    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        message = await ws.get_message()
        received.append(str(message))
        await ws.send_message(f"echo:{message!s}")
        await ws.aclose(code=1000, reason="bye")

    server = await nursery.start(trio_websocket.serve_websocket, handler, "127.0.0.1", 0, None)
    port = server.port
    make_module_dir(
        tmp_path, "testkit", module_id="alpha", permissions={"network": {"websocket": True}}
    )
    async with running_daemon(tmp_path) as daemon:
        handle = (await call(daemon, "alpha", "ws_connect", {"url": f"ws://127.0.0.1:{port}/"}))[
            "handle"
        ]
        assert handle > 0
        await call(daemon, "alpha", "ws_send", {"handle": handle, "message": "hi"})
        with trio.fail_after(15):
            while True:
                state = await call(daemon, "alpha", "ws_messages")
                if state["closed"]:
                    break
                await trio.sleep(0.02)
        assert received == ["hi"]
        assert state["messages"] == [[handle, "echo:hi"]]
        assert state["closed"][0][0] == handle
        assert "1000" in state["closed"][0][1]


async def test_a_flood_of_refused_emits_is_one_message_to_the_daemon(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """Past limits.max_event_rate the guest's emits fail at once; the daemon still
    counts every refusal, from one message per invocation, not one per event (a
    flooding guest must not cost the daemon a message each)."""
    make_module_dir(tmp_path, "testkit", module_id="alpha", permissions={},
                    limits={"max_event_rate": 20})  # fmt: skip
    async with running_daemon(tmp_path) as daemon:
        module = daemon.manager.get("alpha")
        assert module.proc is not None
        lane = module.proc.lanes[0]
        with trio.fail_after(30):
            before = lane.statistics().frames_received
            started = trio.current_time()
            answer = await call(daemon, "alpha", "emit", {"name": "burst", "count": 500})
            took = trio.current_time() - started
            refused = answer["refused"]
            # A full bucket of max_event_rate to start with, refilled at that rate for as
            # long as the burst lasted, which is no longer than the call took.
            assert 20 <= 500 - refused <= 20 + 20 * took + 1, (refused, took)
            assert refused > 0
            # The refusals travel one-way and may trail the answer: a bounded wait.
            while module.events_refused != refused:
                await trio.sleep(0.01)
            emitted = 500 - refused
            frames = lane.statistics().frames_received - before
            # The emitted events, the answer and one report of the refusals.
            assert frames == emitted + 2, (frames, emitted)
            assert module.events_emitted == emitted
