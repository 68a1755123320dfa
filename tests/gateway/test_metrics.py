"""``GET /metrics``: a real daemon with a real module, scraped over HTTP and read with
prometheus-client's own parser of the text format."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tests.cli._support import start_daemon, stop_daemon
from tests.fixture_types import MakeModuleDir
from vessel._daemon import DaemonConfig, open_daemon
from vessel._manifest import HOST_API_VERSION
from vessel.cli.serve import build_parser
from vessel.gateway import GatewayConfig, serve_gateway
from vessel.gateway._metrics import VERSION

from .harness import FAST, Gateway, assert_error
from .ws_client import ready, ws_client

STATES = {"compiling", "starting", "running", "restarting", "crashed", "stopped", "failed"}
STATES |= {"disabled"}


@asynccontextmanager
async def gateway(data_dir: Path, *, metrics_open: bool = False) -> AsyncIterator[Gateway]:
    config = DaemonConfig(data_dir=data_dir, install_bundled=False, policy=FAST)
    async with open_daemon(config) as daemon, trio.open_nursery() as nursery:
        shutdown = trio.Event()
        settings = GatewayConfig(host="127.0.0.1", port=0, metrics_open=metrics_open)
        state, binds = await nursery.start(
            lambda task_status: serve_gateway(
                daemon, settings, shutdown=shutdown, task_status=task_status
            )
        )
        try:
            yield Gateway(daemon=daemon, state=state, base_url=binds[0])
        finally:
            shutdown.set()


def parse(response: httpx.Response) -> dict[str, list[Sample]]:
    """Family name -> its samples, as Prometheus reads them."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    families = text_string_to_metric_families(response.text)
    return {family.name: list(family.samples) for family in families}


def types(response: httpx.Response) -> dict[str, str]:
    return {f.name: f.type for f in text_string_to_metric_families(response.text)}


def value(samples: list[Sample], name: str, **labels: str) -> float:
    [found] = [s for s in samples if s.name == name and s.labels == labels]
    return found.value


async def module_info(client: httpx.AsyncClient, module_id: str) -> dict[str, Any]:
    info: dict[str, Any] = (await client.get(f"/api/modules/{module_id}")).json()
    return info


async def test_metrics_need_the_token_and_match_the_api(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """Without the token: 401. With it: every family, with the module's labels and the
    API's figures; a SIGKILL of the module's process adds one restart on both."""
    make_module_dir(tmp_path, "testkit", module_id="alpha")
    with trio.fail_after(120):
        async with (
            gateway(tmp_path) as gw,
            httpx.AsyncClient(base_url=gw.base_url, timeout=30) as anonymous,
            httpx.AsyncClient(base_url=gw.base_url, headers=gw.auth, timeout=30) as client,
        ):
            assert_error(await anonymous.get("/metrics"), 401, "unauthorized")
            wrong = await anonymous.get("/metrics", headers={"Authorization": "Bearer nope"})
            assert_error(wrong, 401, "unauthorized")
            assert wrong.headers["WWW-Authenticate"] == "Bearer"

            info = await module_info(client, "alpha")
            assert info["state"] == "running"
            assert info["restarts"] == 0
            async with ws_client(gw) as conn:
                await ready(conn)  # authenticated, so counted
                scraped = await client.get("/metrics")
                metrics = parse(scraped)
                assert value(metrics["vessel_websocket_clients"], "vessel_websocket_clients") == 1
            kinds = types(scraped)
            for counter in (
                "vessel_module_restarts",
                "vessel_module_log_lines_dropped",
                "vessel_bus_events_published",
                "vessel_bus_events_delivered",
                "vessel_bus_events_dropped",
                "process_cpu_seconds",
            ):
                assert kinds[counter] == "counter", counter
            for gauge in (
                "vessel_module_state",
                "vessel_module_info",
                "vessel_info",
                "vessel_module_up",
                "vessel_module_enabled",
                "vessel_module_memory_private_bytes",
                "vessel_module_uptime_seconds",
                "vessel_module_health",
                "vessel_modules_refused",
                "vessel_installs_under_way",
                "vessel_bus_subscriptions",
                "vessel_bus_retained_events",
                "vessel_bus_retained_bytes",
                "process_resident_memory_bytes",
                "process_open_fds",
            ):
                assert kinds[gauge] == "gauge", gauge

            [module] = metrics["vessel_module_info"]
            assert module.labels == {"module": "alpha", "version": info["version"]}
            assert module.value == 1
            [daemon] = metrics["vessel_info"]
            assert daemon.labels == {"version": VERSION, "host_api_version": str(HOST_API_VERSION)}
            states = {
                s.labels["state"]: s.value
                for s in metrics["vessel_module_state"]
                if s.labels["module"] == "alpha"
            }
            assert set(states) == STATES
            assert states["running"] == 1
            assert sum(states.values()) == 1
            assert value(metrics["vessel_module_up"], "vessel_module_up", module="alpha") == 1
            assert value(metrics["vessel_module_enabled"], "vessel_module_enabled", module="alpha")
            restarts = metrics["vessel_module_restarts"]
            assert value(restarts, "vessel_module_restarts_total", module="alpha") == 0
            memory = value(
                metrics["vessel_module_memory_private_bytes"],
                "vessel_module_memory_private_bytes",
                module="alpha",
            )
            assert memory > 1024 * 1024  # a wasmtime process, asked like the API asks it
            dropped = metrics["vessel_module_log_lines_dropped"]
            assert (
                value(dropped, "vessel_module_log_lines_dropped_total", module="alpha")
                == (info["log_lines_dropped"])
            )
            bus = gw.daemon.bus.statistics()
            published = value(
                metrics["vessel_bus_events_published"], "vessel_bus_events_published_total"
            )
            assert 0 < published <= bus.published
            rss = value(metrics["process_resident_memory_bytes"], "process_resident_memory_bytes")
            assert rss > 10 * 1024 * 1024  # the daemon's own process, not a module's

            # The module's word on its health (a retained "health" event), as the API has it.
            report = {"status": "degraded", "message": "reconnecting"}
            params = {"module": "alpha", "name": "health", "retained": True, "data": report}
            emitted = await client.post("/api/modules/alpha/call/emit", json=params)
            assert emitted.status_code == 200, emitted.text
            assert (await module_info(client, "alpha"))["health"]["status"] == "degraded"
            metrics = parse(await client.get("/metrics"))
            health = {
                s.labels["status"]: s.value
                for s in metrics["vessel_module_health"]
                if s.labels["module"] == "alpha"
            }
            assert health == {"ok": 0, "degraded": 1, "error": 0}

            # A crash, and the supervisor's restart: one more on both sides.
            os.kill(info["pid"], signal.SIGKILL)
            while True:
                after = await module_info(client, "alpha")
                if after["state"] == "running" and after["restarts"] == 1:
                    break
                await trio.sleep(0.05)
            metrics = parse(await client.get("/metrics"))
            restarts = metrics["vessel_module_restarts"]
            assert value(restarts, "vessel_module_restarts_total", module="alpha") == 1
            assert value(metrics["vessel_module_up"], "vessel_module_up", module="alpha") == 1
            # A new process has said nothing of its health yet.
            assert metrics["vessel_module_health"] == []
            later = metrics["vessel_bus_events_published"]
            assert value(later, "vessel_bus_events_published_total") > published

            # A disabled module: its state, not up, no memory.
            assert (await client.post("/api/modules/alpha/disable")).status_code == 200
            metrics = parse(await client.get("/metrics"))
            states = {
                s.labels["state"]: s.value
                for s in metrics["vessel_module_state"]
                if s.labels["module"] == "alpha"
            }
            assert states["disabled"] == 1
            assert sum(states.values()) == 1
            assert value(metrics["vessel_module_up"], "vessel_module_up", module="alpha") == 0
            assert (
                value(metrics["vessel_module_enabled"], "vessel_module_enabled", module="alpha")
                == 0
            )
            assert metrics["vessel_module_memory_private_bytes"] == []
            assert metrics["vessel_module_uptime_seconds"] == []
            # The WebSocket client closed long ago; its connection's end is not awaitable
            # from here, so its count is read until it is gone (bounded by fail_after).
            while value(metrics["vessel_websocket_clients"], "vessel_websocket_clients"):
                await trio.sleep(0.05)
                metrics = parse(await client.get("/metrics"))


async def test_metrics_open_answers_without_the_token(
    tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """``--metrics-open``: /metrics without the token; /api still needs it."""
    make_module_dir(tmp_path, "testkit", module_id="alpha")
    with trio.fail_after(120):
        async with (
            gateway(tmp_path, metrics_open=True) as gw,
            httpx.AsyncClient(base_url=gw.base_url, timeout=30) as anonymous,
        ):
            metrics = parse(await anonymous.get("/metrics"))
            assert value(metrics["vessel_module_up"], "vessel_module_up", module="alpha") == 1
            assert_error(await anonymous.get("/api/modules"), 401, "unauthorized")


def test_metrics_open_flag_and_its_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Off by default; on with the flag or VESSEL_METRICS_OPEN=1 (0 or empty: off)."""
    monkeypatch.delenv("VESSEL_METRICS_OPEN", raising=False)
    assert build_parser().parse_args(["serve"]).metrics_open is False
    assert build_parser().parse_args(["serve", "--metrics-open"]).metrics_open is True
    for text, expected in (("1", True), ("0", False), ("", False)):
        monkeypatch.setenv("VESSEL_METRICS_OPEN", text)
        assert build_parser().parse_args(["serve"]).metrics_open is expected, text


async def test_vessel_serve_metrics_open(tmp_path: Path, nursery: trio.Nursery) -> None:
    """The real ``vessel serve --metrics-open``: /metrics answers a client without the
    token, /api does not; the same daemon without the flag answers /metrics 401."""
    with trio.fail_after(120):
        for args, status in ((["--metrics-open"], 200), ([], 401)):
            daemon = await start_daemon(nursery, tmp_path / "data", args)
            try:
                async with httpx.AsyncClient(base_url=daemon.url, timeout=30) as anonymous:
                    response = await anonymous.get("/metrics")
                    assert response.status_code == status, (args, response.text)
                    if status == 200:
                        metrics = parse(response)
                        assert (
                            value(metrics["vessel_modules_refused"], "vessel_modules_refused") == 0
                        )
                        assert metrics["vessel_module_up"] == []  # no module installed
                    assert_error(await anonymous.get("/api/modules"), 401, "unauthorized")
            finally:
                await stop_daemon(daemon)
