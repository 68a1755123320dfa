"""The home-assistant module in a real daemon against a real (fake) HA WebSocket server."""

from __future__ import annotations

import socket
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import trio
import trustme

from tests.fixture_types import MakeModuleDir
from vessel._bus import Subscription
from vessel._daemon import Daemon
from vessel._events import Event
from vessel._paths import database_path
from vessel._storage import Storage

from ..runtime.harness import call, call_error, data, next_event, running_daemon, wait_until
from .fake_ha import FakeHomeAssistant, Frame, open_fake_ha
from .frozen import FreezableProxy

HA = "home-assistant"
TOKEN = "secret-token"
LIGHT_ON = {
    "domain": "light",
    "service": "turn_on",
    "service_data": {"brightness": 180},
    "target": {"entity_id": "light.kitchen"},
}


def configure(data_dir: Path, **settings: object) -> None:
    """Set the module's configuration before the daemon starts (its real storage)."""
    with Storage.open(database_path(data_dir)) as storage:
        for key, value in settings.items():
            storage.set(HA, key, str(value), quota_bytes=1 << 20)


@asynccontextmanager
async def running_ha(
    data_dir: Path,
    make_module_dir: MakeModuleDir,
    fake: FakeHomeAssistant | None,
    **settings: object,
) -> AsyncIterator[Daemon]:
    make_module_dir(data_dir, HA)
    if fake is not None:
        configure(data_dir, url=fake.url, token=TOKEN, **settings)
    async with running_daemon(data_dir) as daemon:
        yield daemon


def status_is(state: str) -> Callable[[Event], bool]:
    return lambda e: e.name == "status" and data(e)["state"] == state


def entity(entity_id: str) -> Callable[[Event], bool]:
    return lambda e: e.name == "state_changed" and data(e)["entity_id"] == entity_id


def drain(sub: Subscription) -> list[Event]:
    """What is queued on ``sub`` right now."""
    queued: list[Event] = []
    while True:
        try:
            queued.append(sub.receive_nowait())
        except trio.WouldBlock:
            return queued


def ids_of(fake: FakeHomeAssistant, conn: int) -> list[int]:
    return [f.msg["id"] for f in fake.frames if f.conn == conn and "id" in f.msg]


async def test_call_service_round_trip_and_state_events(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """call_service sends HA's exact call_service frame (with an id above every earlier
    one), answers with HA's own result, and the state change HA then pushes reaches a
    bus subscriber as state_changed; a later subscriber gets every entity's retained
    state first, the updated one included."""
    async with open_fake_ha(token=TOKEN) as fake, running_ha(tmp_path, make_module_dir, fake) as d:
        status = d.bus.subscribe(f"{HA}.status", name="status")
        connected = await next_event(status, status_is("connected"))
        assert data(connected)["ha_version"] == "2025.1.0"
        await fake.wait_frame(lambda f: f.msg.get("type") == "get_states")
        changes = d.bus.subscribe(f"{HA}.state_changed", name="dashboard")

        result = await call(d, HA, "call_service", LIGHT_ON)

        sent = fake.frames_of("call_service")
        assert len(sent) == 1
        assert sent[0].msg == {"id": sent[0].msg["id"], "type": "call_service", **LIGHT_ON}
        assert fake.frames[0].msg == {"type": "auth", "access_token": TOKEN}
        ids = ids_of(fake, 0)
        assert ids == sorted(set(ids))
        assert ids[0] == 1
        assert sent[0].msg["id"] == max(ids)
        assert result["response"] is None
        assert set(result["context"]) == {"id", "parent_id", "user_id"}

        change = data(await next_event(changes, entity("light.kitchen")))
        assert change["old_state"]["state"] == "off"
        assert change["new_state"]["state"] == "on"
        assert change["new_state"]["attributes"]["brightness"] == 180

        late = d.bus.subscribe(f"{HA}.state.*", name="late dashboard")
        replayed: dict[str, Any] = {}
        with trio.fail_after(10):
            async for event in late:
                replayed[event.name] = data(event)
                if len(replayed) == len(fake.states):
                    break
        assert set(replayed) == {f"state.{e}" for e in fake.states}
        assert replayed["state.light.kitchen"]["state"] == "on"
        assert replayed["state.switch.fan"] == fake.states["switch.fan"]
        assert (await call(d, HA, "get_state", {"entity_id": "light.kitchen"}))["state"] == "on"


async def test_ha_errors_and_queries(tmp_path: Path, make_module_dir: MakeModuleDir) -> None:
    """HA's failure result becomes the call's error "<code>: <message>"; get_states is
    HA's own list; get_state of an entity HA never reported is an error; bad params are
    refused before anything is sent."""
    async with open_fake_ha(token=TOKEN) as fake, running_ha(tmp_path, make_module_dir, fake) as d:
        await next_event(d.bus.subscribe(f"{HA}.status", name="s"), status_is("connected"))
        error = await call_error(d, HA, "call_service", {"domain": "light", "service": "launch"})
        assert (error.code, error.message) == (
            "module_error",
            "not_found: Service light.launch not found.",
        )
        states = await call(d, HA, "get_states")
        assert [s["entity_id"] for s in states] == list(fake.states)
        error = await call_error(d, HA, "get_state", {"entity_id": "light.garage"})
        assert error.message == "unknown entity: light.garage"
        error = await call_error(d, HA, "call_service", {"domain": "light", "target": "x"})
        assert error.message == "service must be a non-empty string"
        assert len(fake.frames_of("call_service")) == 1
        answer = await call(d, HA, "status")
        assert answer["state"] == "connected"
        assert answer["entities"] == len(fake.states)


async def test_unconfigured_module_waits_then_connects_once_configured(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """Without a token the module says so (retained status, one log line), makes no
    connection and fails calls at once; setting url (the web UI's http address is
    turned into the WebSocket API's) and token connects it, once."""
    async with open_fake_ha(token=TOKEN) as fake, running_ha(tmp_path, make_module_dir, None) as d:
        status = d.bus.subscribe(f"{HA}.status", name="status")
        unconfigured = data(await next_event(status, status_is("unconfigured")))
        assert "vessel-ctl config home-assistant --stdin token" in unconfigured["message"]
        with trio.fail_after(2):
            error = await call_error(d, HA, "call_service", LIGHT_ON)
        assert error.message.startswith("not connected to Home Assistant: not configured")

        web_ui = f"http://127.0.0.1:{fake.port}"  # what users copy from their browser
        d.manager.config_set(HA, "url", web_ui)
        d.manager.config_set(HA, "token", TOKEN)
        connected = data(await next_event(status, status_is("connected")))
        assert connected["url"] == fake.url
        assert fake.connections == 1
        assert (await call(d, HA, "call_service", LIGHT_ON))["response"] is None
        warnings = [m.message for m in d.manager.logs(HA) if m.message.startswith("not config")]
        assert len(warnings) == 1


async def test_wrong_token_reports_once_and_never_retries_until_reconfigured(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """auth_invalid gives exactly one auth_invalid status and one error event, then no
    further connection attempt (no reconnect storm) until the token changes."""
    async with open_fake_ha(token=TOKEN) as fake, running_ha(tmp_path, make_module_dir, None) as d:
        events = d.bus.subscribe(f"{HA}.*", name="dashboard")
        await next_event(events, status_is("unconfigured"))
        d.manager.config_set(HA, "url", fake.url)
        d.manager.config_set(HA, "token", "wrong-token")
        invalid = await next_event(events, status_is("auth_invalid"))
        assert data(invalid)["message"] == "Invalid access token or password"
        error = await next_event(events, lambda e: e.name == "error")
        assert data(error) == {
            "kind": "auth_invalid",
            "message": "Invalid access token or password",
        }

        await trio.sleep(2)  # a retrying module would have reconnected within this time
        assert fake.connections == 1
        seen = [e for e in drain(events) if e.name in ("status", "error")]
        assert seen == []
        with trio.fail_after(2):
            failure = await call_error(d, HA, "get_states")
        assert "refused the token" in failure.message

        d.manager.config_set(HA, "token", TOKEN)
        await next_event(events, status_is("connected"))
        assert fake.connections == 2


def jittered(ms: int) -> range:
    """The delays a retry of ``ms`` may get with the module's +-20 % jitter."""
    return range(round(ms * 0.8), round(ms * 1.2) + 1)


async def test_reconnects_and_resubscribes_after_ha_restarts(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """When HA goes away, pending calls fail with "connection lost", new calls fail at
    once (not after a timeout), and as HA was up a moment ago the retries come quickly
    (0.5 s, then every 2 s, jittered) rather than backing off; once HA is back the module
    reconnects, subscribes again and serves calls on the new connection (ids from 1); the
    next loss starts the quick schedule over.

    (Before issue 24 the retries backed off 1 s, 2 s, 4 s ... up to 60 s, so a restart of
    HA could leave the module disconnected for a minute after HA was back.)"""
    async with open_fake_ha(token=TOKEN) as fake, running_ha(tmp_path, make_module_dir, fake) as d:
        status = d.bus.subscribe(f"{HA}.status", name="status")
        await next_event(status, status_is("connected"))
        await fake.wait_frame(lambda f: f.msg.get("type") == "subscribe_events")

        fake.answer_services = False
        outcome: list[Any] = []

        async def pending_call() -> None:
            outcome.append(await call_error(d, HA, "call_service", LIGHT_ON))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(pending_call)
            await fake.wait_frame(lambda f: f.msg.get("type") == "call_service")
            await fake.stop()
        assert outcome[0].message == "Home Assistant connection lost"
        lost = data(await next_event(status, status_is("disconnected")))
        assert lost["retry_in_ms"] in jittered(500)
        assert lost["message"].startswith(f"connection to {fake.url} closed: ")

        with trio.fail_after(2):
            error = await call_error(d, HA, "call_service", LIGHT_ON)
        assert error.message.startswith("not connected to Home Assistant: ")

        refused = data(await next_event(status, status_is("disconnected")))
        assert refused["retry_in_ms"] in jittered(2000)  # quick, not doubling
        assert refused["message"] == f"cannot connect to {fake.url}: connection refused"
        again_refused = data(await next_event(status, status_is("disconnected")))
        assert again_refused["retry_in_ms"] in jittered(2000)

        fake.answer_services = True
        await fake.start()
        await next_event(status, status_is("connected"), timeout=10)
        logged = [(line.level, line.message) for line in d.manager.logs(HA)]
        warned = [m for level, m in logged if level == "warning" and "refused" in m]
        assert len(warned) == 1, logged  # once, not at every retry: the health says it
        assert any(
            level == "info"
            and m.startswith(f"connected to Home Assistant 2025.1.0 at {fake.url} after ")
            for level, m in logged
        ), logged
        again: Frame = await fake.wait_frame(
            lambda f: f.conn == 1 and f.msg.get("type") == "subscribe_events"
        )
        assert again.msg == {
            "id": again.msg["id"],
            "type": "subscribe_events",
            "event_type": "state_changed",
        }
        changes = d.bus.subscribe(f"{HA}.state_changed", name="dashboard")
        await call(d, HA, "call_service", LIGHT_ON)
        assert ids_of(fake, 1)[0] == 1
        changed = data(await next_event(changes, entity("light.kitchen")))
        assert changed["new_state"]["state"] == "on"

        await fake.drop_all()
        dropped = data(await next_event(status, status_is("disconnected")))
        assert dropped["retry_in_ms"] in jittered(500)  # the quick schedule starts over


async def test_a_host_that_never_answered_is_retried_with_a_growing_backoff(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """A Home Assistant that was never reached (nothing listens) is not hammered: the
    retries back off from 1 s, doubling (jittered), up to a cap of 15 s, and the module
    says it is degraded meanwhile, with the reason and when it retries."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"ws://127.0.0.1:{sock.getsockname()[1]}/api/websocket"
    make_module_dir(tmp_path, HA)
    configure(tmp_path, url=url, token=TOKEN)
    async with running_daemon(tmp_path) as d:
        status = d.bus.subscribe(f"{HA}.status", name="status")
        delays = []
        for _ in range(3):
            refused = data(await next_event(status, status_is("disconnected")))
            assert refused["message"] == f"cannot connect to {url}: connection refused"
            delays.append(refused["retry_in_ms"])
        assert delays[0] in jittered(1000)
        assert delays[1] in jittered(2000)
        assert delays[2] in jittered(4000)
        health = d.manager.describe(HA)["health"]
        assert health["status"] == "degraded"
        assert health["message"].startswith(
            f"not connected: cannot connect to {url}: connection refused; retrying in "
        )


async def test_status_answers_at_once_while_a_silent_server_holds_the_handshake(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """A server that accepts TCP and never answers (a frozen HA, a wrong port): the
    module's commands answer at once from what it knows while the handshake is still
    pending, status saying "connecting" and get_state answering from the cache; the
    module reports itself degraded. (Before issue 24 the handshake held the module: status
    waited up to 10 s, then said "disconnected".)"""
    accepted = trio.Event()
    ended = trio.Event()

    async def silent(stream: trio.SocketStream) -> None:
        accepted.set()
        try:
            while await stream.receive_some():
                pass
        except trio.BrokenResourceError:
            pass
        ended.set()

    make_module_dir(tmp_path, HA)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, silent, 0, host="127.0.0.1"))
        url = f"ws://127.0.0.1:{listeners[0].socket.getsockname()[1]}/api/websocket"
        configure(tmp_path, url=url, token=TOKEN)
        async with running_daemon(tmp_path) as d:
            with trio.fail_after(10):
                await accepted.wait()
            with trio.fail_after(3):  # far under the 10 s the handshake may take
                answer = await call(d, HA, "status")
                error = await call_error(d, HA, "get_state", {"entity_id": "light.kitchen"})
            assert not ended.is_set()  # answered while the server still held it
            assert answer["state"] == "connecting"
            assert answer["message"] == f"connecting to {url}"
            assert error.message == "unknown entity: light.kitchen"
            health = await wait_until(lambda: d.manager.describe(HA)["health"])
            assert health["status"] == "degraded"
            assert health["message"] == f"connecting to {url}"
        nursery.cancel_scope.cancel()


async def test_a_frozen_home_assistant_never_holds_the_module(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """HA frozen (nothing read or answered, connections still accepted): the missing pong
    drops the connection and the module reconnects; while the new handshake hangs on the
    frozen HA, status and get_state answer at once from what the module knows (the cached
    entity included). Once HA thaws, the module is connected again."""
    async with open_fake_ha(token=TOKEN) as fake, trio.open_nursery() as nursery:
        proxy = FreezableProxy(fake.port)
        await proxy.start(nursery)
        make_module_dir(tmp_path, HA)
        configure(tmp_path, url=proxy.url, token=TOKEN, ping_interval_ms=300)
        async with running_daemon(tmp_path) as d:
            status = d.bus.subscribe(f"{HA}.status", name="status")
            await next_event(status, status_is("connected"))
            await fake.wait_frame(lambda f: f.msg.get("type") == "get_states")
            # The entities are in the module's cache once it has published them (the
            # get_states frame reaching HA is not its answer reaching the module).
            with d.bus.subscribe(f"{HA}.state.light.kitchen", name="kitchen") as kitchen_state:
                await next_event(kitchen_state, lambda event: True)
            await wait_until(lambda: (d.manager.describe(HA)["health"] or {}).get("status") == "ok")

            proxy.freeze()
            lost = data(await next_event(status, status_is("disconnected")))
            assert lost["message"] == "no pong from Home Assistant within 300 ms"
            with trio.fail_after(10):
                await proxy.wait_accepted(2)  # the reconnect, which the frozen HA holds
            with trio.fail_after(3):
                answer = await call(d, HA, "status")
                kitchen = await call(d, HA, "get_state", {"entity_id": "light.kitchen"})
            assert answer["state"] == "connecting"
            assert proxy.accepted == 2  # still the same attempt: its handshake is pending
            assert kitchen == fake.states["light.kitchen"]
            assert d.manager.describe(HA)["health"]["status"] == "degraded"

            proxy.thaw()
            await next_event(status, status_is("connected"), timeout=30)
        nursery.cancel_scope.cancel()


async def test_health_follows_configuration_and_connection(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """The module's health, as the daemon shows it: error while not configured (saying
    how to configure it) and while HA refuses the token (saying how to set a new one), ok
    once connected, degraded while HA is away, ok again once it is back."""

    def health() -> dict[str, Any]:
        return d.manager.describe(HA)["health"] or {}

    async with open_fake_ha(token=TOKEN) as fake, running_ha(tmp_path, make_module_dir, None) as d:
        unconfigured = await wait_until(lambda: health().get("status") == "error" and health())
        assert unconfigured["message"].startswith(
            "not configured: set its token with `vessel-ctl config home-assistant --stdin token`"
        )
        d.manager.config_set(HA, "url", fake.url)
        d.manager.config_set(HA, "token", "wrong-token")
        refused = await wait_until(lambda: "refused" in health().get("message", "") and health())
        assert refused == {
            "status": "error",
            "message": "Home Assistant refused the token: Invalid access token or password; "
            "set a new one with `vessel-ctl config home-assistant --stdin token`",
            "since": refused["since"],
        }
        d.manager.config_set(HA, "token", TOKEN)
        ok = await wait_until(lambda: health().get("status") == "ok" and health())
        assert ok["message"] == f"connected to Home Assistant 2025.1.0 at {fake.url}"

        await fake.stop()
        degraded = await wait_until(lambda: health().get("status") == "degraded" and health())
        assert degraded["message"].startswith("not connected: ")
        await fake.start()
        await wait_until(lambda: health().get("status") == "ok")
        lines = [line.message for line in d.manager.logs(HA) if line.source == "daemon"]
        changes = [m.split(":")[0] for m in lines if m.startswith("health ")]
        # Connecting is degraded too, on the way to the refusal and to ok.
        assert changes == [
            "health error",
            "health degraded",
            "health error",
            "health degraded",
            "health ok",
            "health degraded",
            "health ok",
        ]


async def test_missing_pong_reconnects(tmp_path: Path, make_module_dir: MakeModuleDir) -> None:
    """The module pings HA every ping_interval_ms; when a pong does not come back before
    the next ping it drops the connection and connects again."""
    async with (
        open_fake_ha(token=TOKEN) as fake,
        running_ha(tmp_path, make_module_dir, fake, ping_interval_ms=200) as d,
    ):
        status = d.bus.subscribe(f"{HA}.status", name="status")
        await next_event(status, status_is("connected"))
        await fake.wait_frame(lambda f: f.msg.get("type") == "ping")
        await trio.sleep(0.5)
        assert fake.connections == 1  # answered pings keep the connection

        fake.answer_pings = False
        lost = data(await next_event(status, status_is("disconnected")))
        assert lost["message"] == "no pong from Home Assistant within 200 ms"
        fake.answer_pings = True
        await fake.wait_connections(2)
        await next_event(status, status_is("connected"))
        await wait_until(lambda: fake.live == 1)


async def test_a_self_signed_home_assistant_is_reached_once_trusted(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """HA over wss:// with a certificate no system trusts (self-signed): the module
    says why it cannot connect and keeps retrying; once the admin gives the daemon
    that certificate (``vessel serve --ca-file``) it connects, and the certificate's
    private key, in the same file, stays with the daemon."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_context)
    saved = tmp_path / "ha-certificate.pem"  # key and certificate, as HA keeps them
    saved.write_bytes(cert.private_key_pem.bytes() + cert.cert_chain_pems[0].bytes())
    data_dir = tmp_path / "data"
    async with open_fake_ha(token=TOKEN, ssl_context=server_context) as fake:
        assert fake.url.startswith("wss://")
        async with running_ha(data_dir, make_module_dir, fake) as d:
            status = d.bus.subscribe(f"{HA}.status", name="status")
            refused = data(await next_event(status, status_is("disconnected")))
            assert "certificate verify failed" in refused["message"], refused
        async with running_daemon(data_dir, trusted_ca=(saved,)) as d:
            status = d.bus.subscribe(f"{HA}.status", name="status")
            await next_event(status, status_is("connected"))
            await fake.wait_frame(lambda f: f.msg.get("type") == "get_states")
