"""A /ws connection's life: auth, origin check, subscriptions, slow clients, shutdown."""

from __future__ import annotations

import json
import re
from functools import partial
from pathlib import Path
from typing import Any

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from tests.fixture_types import MakeModuleDir
from vessel._ceilings import DEFAULT_CEILINGS
from vessel._events import Event

from .harness import Gateway, running_gateway
from .ws_client import (
    Message,
    call,
    closed_with,
    is_event,
    is_response,
    ready,
    receive,
    receive_until,
    send,
    ws_client,
)

EMITTER = {"subscribe": ["*"], "storage": True}


async def subscribe(conn: WebSocketConnection, module: str, name: str, rid: str) -> Message:
    """Subscribe and return the ack, after checking that only events came before it."""
    await send(conn, {"type": "subscribe", "module": module, "name": name, "request_id": rid})
    ack, before = await receive_until(conn, lambda m: is_response(m, rid))
    assert ack["success"] is True, ack
    assert all(m["type"] == "event" for m in before), before
    return ack


async def emit(conn: WebSocketConnection, name: str, data: Any, *, retained: bool = False) -> None:
    params = {"name": name, "data": data, "retained": retained}
    response = await call(conn, "kit", "emit", params, rid=f"emit-{name}")
    assert response["success"] is True, response


async def events_until(conn: WebSocketConnection, last: str) -> list[tuple[str, Any]]:
    """(name, data) of every event up to and including the one named ``last``."""
    end, before = await receive_until(conn, lambda m: is_event(m, "kit", last))
    return [(m["name"], m["data"]) for m in [*before, end] if m["type"] == "event"]


def install_chatty_kit(data_dir: Path, make_module_dir: MakeModuleDir) -> None:
    """The testkit guest as ``kit``, allowed to emit far beyond the default rate (as far
    as the daemon's default ceiling lets a manifest ask: vessel/_ceilings.py)."""
    make_module_dir(
        data_dir,
        "testkit",
        module_id="kit",
        permissions=EMITTER,
        limits={"max_event_rate": DEFAULT_CEILINGS["max_event_rate"]},
    )


# -- subscriptions -------------------------------------------------------------------


async def test_each_client_gets_only_what_it_subscribed_to(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """Two clients with different patterns each receive exactly the events matching their
    own, in publication order, with the full envelope."""
    make_module_dir(tmp_path, "testkit", module_id="kit", permissions=EMITTER)
    async with (
        running_gateway(tmp_path) as gw,
        ws_client(gw) as ctl,
        ws_client(gw) as doors,
        ws_client(gw) as lights,
    ):
        await ready(ctl)
        await ready(doors)
        await ready(lights)
        await subscribe(doors, "kit", "door.*", "s1")
        await subscribe(doors, "kit", "end", "s2")
        await subscribe(lights, "kit", "light.*", "s1")
        await subscribe(lights, "kit", "end", "s2")
        for name in ("door.open", "light.on", "window.open", "door.closed", "light.off", "end"):
            await emit(ctl, name, {"n": name})
        got_doors = await events_until(doors, "end")
        got_lights = await events_until(lights, "end")
        assert got_doors == [(n, {"n": n}) for n in ("door.open", "door.closed", "end")]
        assert got_lights == [(n, {"n": n}) for n in ("light.on", "light.off", "end")]

        await emit(ctl, "door.full", [1, 2])
        event, _ = await receive_until(doors, lambda m: is_event(m, "kit", "door.full"))
        assert set(event) == {"type", "module", "name", "version", "data", "timestamp"}
        assert event["version"] == 1
        assert event["data"] == [1, 2]
        assert event["timestamp"] > 1_600_000_000_000  # milliseconds since the epoch


async def test_late_subscriber_gets_retained_state_before_the_ack(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """A client subscribing after retained state was emitted receives that state first (the
    latest value per key, marked ``"replayed": true``), and the subscribe's response only
    after it."""
    make_module_dir(tmp_path, "testkit", module_id="kit", permissions=EMITTER)
    async with running_gateway(tmp_path) as gw, ws_client(gw) as early:
        await ready(early)
        await emit(early, "light.kitchen", "on", retained=True)
        await emit(early, "light.hall", "off", retained=True)
        await emit(early, "light.kitchen", "dimmed", retained=True)
        await emit(early, "light.flash", "not retained")
        async with ws_client(gw) as late:
            await ready(late)
            await send(late, {"type": "subscribe", "module": "kit", "name": "light.*",
                              "request_id": "sub"})  # fmt: skip
            ack, before = await receive_until(late, lambda m: is_response(m, "sub"))
            assert [(m["name"], m["data"], m["replayed"]) for m in before] == [
                ("light.hall", "off", True),
                ("light.kitchen", "dimmed", True),
            ]
            assert ack["data"] == {"pattern": "kit.light.*", "replayed": 2}
            # Live events follow the state, and are news: no "replayed".
            await emit(early, "light.hall", "on", retained=True)
            live, _ = await receive_until(late, lambda m: m["type"] == "event")
            assert (live["name"], live["data"]) == ("light.hall", "on")
            assert "replayed" not in live


async def test_subscribe_is_idempotent_and_unsubscribe_stops_events(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """Subscribing twice (or to an overlapping pattern) delivers each event once and replays
    nothing twice; unsubscribing an unknown pattern is fine; after an unsubscribe's
    response no event of that pattern arrives, and subscribing again replays the state;
    subscribe/unsubscribe without a request_id are silent."""
    make_module_dir(tmp_path, "testkit", module_id="kit", permissions=EMITTER)
    async with running_gateway(tmp_path) as gw, ws_client(gw) as ctl, ws_client(gw) as conn:
        await ready(ctl)
        await ready(conn)
        await emit(ctl, "state", 1, retained=True)
        first = await subscribe(conn, "kit", "*", "a")
        second = await subscribe(conn, "kit", "*", "b")
        overlapping = await subscribe(conn, "kit", "st*", "b2")
        assert first["data"]["replayed"] == 1
        assert second["data"]["replayed"] == 0
        assert overlapping["data"]["replayed"] == 0
        await send(conn, {"type": "unsubscribe", "module": "kit", "name": "st*"})
        await emit(ctl, "once", None)
        assert await events_until(conn, "once") == [("once", None)]

        await send(conn, {"type": "unsubscribe", "module": "nope", "name": "*",
                          "request_id": "u0"})  # fmt: skip
        unknown, _ = await receive_until(conn, lambda m: is_response(m, "u0"))
        assert unknown["data"] == {"pattern": "nope.*", "removed": False}

        await send(conn, {"type": "subscribe", "module": "vessel", "name": "quiet.*"})
        await send(conn, {"type": "unsubscribe", "module": "vessel", "name": "quiet.*"})
        await send(conn, {"type": "unsubscribe", "module": "kit", "name": "*",
                          "request_id": "u1"})  # fmt: skip
        removed, before = await receive_until(conn, lambda m: is_response(m, "u1"))
        assert removed["data"] == {"pattern": "kit.*", "removed": True}
        assert before == []
        # Nothing of kit.* arrives any more, emitted by the module or published directly.
        await emit(ctl, "after", None)
        gw.daemon.bus.publish(Event(module="kit", name="direct", data="1"))
        for barrier in ("b1", "b2"):
            await send(conn, {"type": "call", "request_id": barrier, "module": "vessel",
                              "name": "ping"})  # fmt: skip
            _, before = await receive_until(conn, partial(is_response, rid=barrier))
            assert before == []

        # Subscribing again (a dashboard coming back to a page) replays the state again.
        await send(conn, {"type": "subscribe", "module": "kit", "name": "*", "request_id": "c"})
        back, before = await receive_until(conn, lambda m: is_response(m, "c"))
        assert [(m["name"], m["data"]) for m in before] == [("state", 1)]
        assert back["data"] == {"pattern": "kit.*", "replayed": 1}


async def test_a_burst_reaches_every_subscriber_whole_and_in_order(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """A module emits 2000 numbered events in one command to three subscribed clients,
    one of which keeps calling meanwhile: each client receives every event once, in the
    order emitted, and the caller every response. (What queues up for a client leaves
    in batched writes, vessel/gateway/_write_batch.py.)"""
    install_chatty_kit(tmp_path, make_module_dir)
    count, pings = 2000, 50
    async with (
        running_gateway(tmp_path) as gw,
        ws_client(gw) as ctl,
        ws_client(gw) as quiet,
        ws_client(gw) as other,
        ws_client(gw) as caller,
    ):
        clients = {"quiet": quiet, "other": other, "caller": caller}
        await ready(ctl)
        for conn in clients.values():
            await ready(conn)
            await subscribe(conn, "kit", "n", "s")
        numbers: dict[str, list[int]] = {name: [] for name in clients}
        answered: set[str] = set()

        async def collect(name: str, conn: WebSocketConnection) -> None:
            expected = pings if conn is caller else 0
            while len(numbers[name]) < count or (conn is caller and len(answered) < expected):
                message = await receive(conn)
                if is_event(message, "kit", "n"):
                    numbers[name].append(message["data"]["n"])
                elif conn is caller and message["type"] == "response":
                    assert message["success"] is True, message
                    answered.add(message["request_id"])

        async def keep_calling() -> None:
            for i in range(pings):
                await send(caller, {"type": "call", "request_id": f"p{i}", "module": "vessel",
                                    "name": "ping"})  # fmt: skip
                await trio.sleep(0.002)

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for name, conn in clients.items():
                    nursery.start_soon(collect, name, conn)
                nursery.start_soon(keep_calling)
                params = {"name": "n", "count": count, "numbered": True}
                response = await call(ctl, "kit", "emit", params, rid="burst")
                assert response["data"] == {"refused": 0}, response
        for name in clients:
            assert numbers[name] == list(range(count)), name
        assert answered == {f"p{i}" for i in range(pings)}


async def test_stalled_client_is_closed_and_others_keep_receiving(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """A client that subscribes to a chatty pattern and stops reading is closed with 4408
    once its send queue is full, while a client that reads keeps receiving every event."""
    install_chatty_kit(tmp_path, make_module_dir)
    async with running_gateway(tmp_path) as gw, ws_client(gw) as healthy:
        bus = gw.daemon.bus
        await ready(healthy)
        await subscribe(healthy, "kit", "tick", "s")
        received = 0
        emitted = 0

        async def keep_reading() -> None:
            nonlocal received
            while True:
                message = await receive(healthy)
                received += message["type"] == "event"

        async def flood(count: int) -> None:
            """Emit ``count`` events through the module and wait until `healthy` has
            received them all."""
            nonlocal emitted
            for _ in range(count):
                # Big events (near the 64 KiB an event may carry) fill the queue's 16 MiB
                # budget with few calls.
                params = {"name": "tick", "data": "x" * 60 * 1024}
                message = {"type": "call", "request_id": f"t{emitted}", "module": "kit",
                           "name": "emit", "params": params}  # fmt: skip
                await send(healthy, message)
                emitted += 1
            with trio.fail_after(10):
                while received < emitted:
                    await trio.sleep(0.005)

        async with ws_client(gw) as stalled:
            await ready(stalled)
            await subscribe(stalled, "kit", "tick", "s")
            # (Modules hold bus subscriptions too: count relative to now.)
            subscribed = bus.statistics().subscriptions
            async with trio.open_nursery() as nursery:
                nursery.start_soon(keep_reading)
                # From here on nothing reads `stalled`, until the gateway lets go of its
                # subscription.
                with trio.fail_after(30):
                    while bus.statistics().subscriptions == subscribed:
                        await flood(50)
                assert emitted > 200
                await flood(100)
                nursery.cancel_scope.cancel()
            # Reading now drains what the network buffered, then the close.
            code, reason = await closed_with(stalled, timeout=20)
            assert code == 4408
            assert re.fullmatch(r"too slow: \d+ messages queued", reason), reason
        response = await call(healthy, "vessel", "ping", rid="alive")
        assert response["success"] is True


async def test_disconnect_releases_everything_of_the_client(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """A client that goes away with a call in flight and subscriptions held leaves nothing
    behind: its bus subscription is gone and the module keeps serving other clients."""
    make_module_dir(tmp_path, "testkit", module_id="kit", permissions=EMITTER)
    async with running_gateway(tmp_path) as gw, ws_client(gw) as other:
        await ready(other)
        bus = gw.daemon.bus
        baseline = bus.statistics().subscriptions
        async with ws_client(gw) as leaving:
            await ready(leaving)
            await subscribe(leaving, "*", "*", "s")
            assert bus.statistics().subscriptions == baseline + 1
            await send(leaving, {"type": "call", "request_id": "spin", "module": "kit",
                                 "name": "spin", "params": {"ms": 300}})  # fmt: skip
        with trio.fail_after(10):
            while bus.statistics().subscriptions != baseline:
                await trio.sleep(0.01)
        response = await call(other, "kit", "echo", {"still": "here"}, rid="after")
        assert response["data"] == {"still": "here"}


# -- authentication and origin ------------------------------------------------------


async def refused(gw: Gateway, **kw: Any) -> tuple[int, str, list[Message]]:
    """Connect, send a call as the first message; the close (code, reason) and the
    messages received before it."""
    messages: list[Message] = []
    async with ws_client(gw, **kw) as conn:
        await send(conn, {"type": "call", "request_id": "1", "module": "vessel", "name": "ping"})
        with trio.fail_after(10):
            try:
                while True:
                    messages.append(json.loads(await conn.get_message()))
            except ConnectionClosed as exc:
                close = exc.reason
                assert close is not None
                return close.code, close.reason or "", messages


async def test_missing_or_wrong_token_closes_4401(tmp_path: Path) -> None:
    """Without a valid token (header or first auth message) the connection is closed with
    4401 and a reason, after an error frame saying why; nothing else is answered."""
    async with running_gateway(tmp_path) as gw:
        for token, says in ((None, "auth message first"), ("wrong", "wrong token")):
            code, reason, messages = await refused(gw, token=token)
            assert code == 4401
            assert reason.startswith("unauthorized: "), reason
            assert says in reason, reason
            assert messages == [{"type": "error", "code": "unauthorized", "message": reason}]

        async with ws_client(gw, token=None) as conn:
            await send(conn, {"type": "auth", "token": "wrong"})
            assert await closed_with(conn) == (4401, "unauthorized: missing or wrong token")
        async with ws_client(gw, token=None) as conn:
            await conn.send_message("{")
            code, reason = await closed_with(conn)
            assert code == 4401
            assert "invalid JSON" in reason


async def test_browser_authenticates_with_a_first_auth_message(tmp_path: Path) -> None:
    """A client that cannot send headers authenticates with {"type": "auth"} first, then
    gets ready and full service."""
    async with running_gateway(tmp_path) as gw, ws_client(gw, token=None) as conn:
        await send(conn, {"type": "auth", "token": gw.token})
        await ready(conn)
        response = await call(conn, "vessel", "ping", rid="1")
        assert response["data"] == {"pong": True}


async def test_origin_check(tmp_path: Path) -> None:
    """A browser page from another site is closed with 4403 naming its origin, whatever
    its token; the gateway's own origin and configured ones are let in."""
    allowed = frozenset({"https://dash.example"})
    async with running_gateway(tmp_path, allowed_origins=allowed) as gw:
        async with ws_client(gw, origin="https://evil.example") as conn:
            assert await closed_with(conn) == (4403, "origin not allowed: https://evil.example")
        for origin in (gw.base_url, "https://dash.example"):
            async with ws_client(gw, origin=origin, token=None) as conn:
                await send(conn, {"type": "auth", "token": gw.token})
                await ready(conn)


# -- shutdown -----------------------------------------------------------------------


async def test_shutdown_closes_clients_with_1001(tmp_path: Path) -> None:
    """When the daemon shuts down every client, authenticated or still authenticating, is
    closed with 1001; a client connecting after that is closed with 1001 at once."""
    async with running_gateway(tmp_path) as gw:
        # The daemon's own subscriptions (the module history's) are not the clients'.
        own = gw.daemon.bus.statistics().subscriptions
        async with (
            ws_client(gw) as authenticated,
            ws_client(gw, token=None) as authenticating,
        ):
            await ready(authenticated)
            await subscribe(authenticated, "*", "*", "s")
            assert gw.daemon.bus.statistics().subscriptions > own
            gw.state.shutting_down.set()
            assert await closed_with(authenticated) == (1001, "server shutting down")
            assert await closed_with(authenticating) == (1001, "server shutting down")
            async with ws_client(gw) as late:
                assert await closed_with(late) == (1001, "server shutting down")
            assert gw.daemon.bus.statistics().subscriptions == own


async def test_stopping_the_daemon_closes_clients_with_1001(tmp_path: Path) -> None:
    """The real shutdown path: leaving the gateway's context (the daemon stopping) tells a
    connected client 1001 before the server goes away, and the stop does not hang."""
    closes: list[tuple[int, str]] = []
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery, running_gateway(tmp_path) as gw:
            connected = trio.Event()

            async def client() -> None:
                async with ws_client(gw) as conn:
                    await ready(conn)
                    connected.set()
                    closes.append(await closed_with(conn))

            nursery.start_soon(client)
            await connected.wait()
    assert closes == [(1001, "server shutting down")]


async def test_subscription_patterns_per_client_are_capped(tmp_path: Path) -> None:
    """A client may hold 256 patterns; one more is refused with too_many_subscriptions
    (an error frame when it had no request_id), while re-subscribing a held one is fine."""
    async with running_gateway(tmp_path) as gw, ws_client(gw) as conn:
        await ready(conn)
        for i in range(256):
            await send(conn, {"type": "subscribe", "module": "m", "name": f"e{i}"})
        await send(conn, {"type": "subscribe", "module": "m", "name": "e0", "request_id": "again"})
        again, _ = await receive_until(conn, lambda m: is_response(m, "again"))
        assert again["success"] is True
        await send(conn, {"type": "subscribe", "module": "m", "name": "more", "request_id": "x"})
        refused, _ = await receive_until(conn, lambda m: is_response(m, "x"))
        assert refused["success"] is False
        assert refused["data"]["code"] == "too_many_subscriptions"
        await send(conn, {"type": "subscribe", "module": "m", "name": "more"})
        error = await receive(conn)
        assert error["type"] == "error"
        assert error["code"] == "too_many_subscriptions"
