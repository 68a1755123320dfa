"""``GET /metrics``: the daemon's state in the Prometheus text format (docs/api.md).

Made with ``prometheus-client``, not by hand: its exposition is what Prometheus parses.
Nothing is counted for Prometheus alone; a scrape reads what the daemon already knows
(the same figures as ``GET /api/modules``, the bus's counters, the gateway's clients),
so a scrape costs nothing between scrapes and the figures cannot disagree with the API.

Each scrape builds its own ``CollectorRegistry`` (never the process-wide default, which
a library imported by the daemon could fill): a collector holding a snapshot taken by
the handler, and ``ProcessCollector`` for the daemon's own RSS, CPU and open files. The
snapshot is taken first because a module's private memory is asked of its process
(asynchronously, bounded like the list), and a collector's ``collect`` cannot await.

The token protects it like ``/api`` (Prometheus sends ``Authorization: Bearer``), unless
the admin serves it openly (``vessel serve --metrics-open``): the figures name the
modules installed, which is for the admin to publish or not.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from quart import Blueprint, Response, request

from .._bus import BusStatistics
from .._errors import UnknownModule
from .._manager import ModuleState
from .._manifest import HOST_API_VERSION
from ._app import GatewayState, gateway_state
from ._auth import bearer_token, token_matches
from ._errors import error_response
from ._rest_support import memory_of

metrics = Blueprint("metrics", __name__)

#: Every module state, so a module's ``vessel_module_state`` has one series per state
#: (1 for the current one): an alert on ``{state="failed"} == 1`` needs the 0 before it.
STATES = tuple(state.value for state in ModuleState)
HEALTH_STATUSES = ("ok", "degraded", "error")


def _version() -> str:
    try:
        return importlib.metadata.version("vessel")
    except importlib.metadata.PackageNotFoundError:  # a checkout run without installing
        return "unknown"


#: The daemon's version, read once: it does not change while it runs.
VERSION = _version()


@dataclass(frozen=True)
class Snapshot:
    """What one scrape shows, read from the daemon before the collector runs."""

    modules: list[dict[str, Any]]
    refused: int
    installs_under_way: int
    websocket_clients: int
    websocket_unauthenticated: int
    bus: BusStatistics


async def take_snapshot(state: GatewayState) -> Snapshot:
    manager = state.daemon.manager
    ids = manager.ids()
    memory = await memory_of(manager, ids)
    modules = []
    for module_id in ids:
        try:
            info = manager.describe(module_id)
            info["enabled"] = manager.enabled(module_id)
        except UnknownModule:  # removed while the memory was asked
            continue
        info["memory"] = memory.get(module_id)
        modules.append(info)
    return Snapshot(
        modules=modules,
        refused=len(manager.refused),
        installs_under_way=sum(1 for i in manager.installs.all() if i.under_way),
        websocket_clients=state.websocket_clients,
        websocket_unauthenticated=state.unauthenticated,
        bus=state.daemon.bus.statistics(),
    )


class VesselCollector(Collector):
    """The families of one snapshot (names and meanings: docs/api.md, "Metrics")."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        yield from self._modules()
        yield from self._daemon()

    def _modules(self) -> Iterator[Metric]:
        labels = ["module"]
        info_family = GaugeMetricFamily(
            "vessel_module_info",
            "Always 1; the labels say which version of the module is installed",
            labels=["module", "version"],
        )
        state = GaugeMetricFamily(
            "vessel_module_state",
            "1 for the module's current state, 0 for the others",
            labels=["module", "state"],
        )
        up = GaugeMetricFamily(
            "vessel_module_up", "1 while the module's process runs, else 0", labels=labels
        )
        enabled = GaugeMetricFamily(
            "vessel_module_enabled", "1 unless an admin disabled the module", labels=labels
        )
        restarts = CounterMetricFamily(
            "vessel_module_restarts",
            "Restarts after a crash since the module was last started by hand (an admin's "
            "restart resets it, as the API shows it)",
            labels=labels,
        )
        memory = GaugeMetricFamily(
            "vessel_module_memory_private_bytes",
            "Private memory (USS) of the module's process; absent when it is not running "
            "or did not answer in time",
            labels=labels,
        )
        uptime = GaugeMetricFamily(
            "vessel_module_uptime_seconds",
            "Seconds since the module's process started; absent when it is not running",
            labels=labels,
        )
        health = GaugeMetricFamily(
            "vessel_module_health",
            "1 for the health the module reports of itself (ok, degraded, error), 0 for "
            "the others; absent for a module that reports none",
            labels=["module", "status"],
        )
        dropped = CounterMetricFamily(
            "vessel_module_log_lines_dropped",
            "Log lines of the module's current process dropped by its rate limit",
            labels=labels,
        )
        for info in self.snapshot.modules:
            module = [str(info["id"])]
            info_family.add_metric([*module, str(info["version"])], 1.0)
            for name in STATES:
                state.add_metric([*module, name], 1.0 if info["state"] == name else 0.0)
            up.add_metric(module, 1.0 if info["pid"] is not None else 0.0)
            enabled.add_metric(module, 1.0 if info["enabled"] else 0.0)
            restarts.add_metric(module, float(info["restarts"]))
            if info["memory"] is not None:
                memory.add_metric(module, float(info["memory"]))
            if info["uptime"] is not None:
                uptime.add_metric(module, float(info["uptime"]))
            if info["health"] is not None:
                for status in HEALTH_STATUSES:
                    reported = info["health"]["status"] == status
                    health.add_metric([*module, status], 1.0 if reported else 0.0)
            dropped.add_metric(module, float(info["log_lines_dropped"]))
        yield from (info_family, state, up, enabled, restarts, memory, uptime, health, dropped)

    def _daemon(self) -> Iterator[Metric]:
        s = self.snapshot
        daemon = GaugeMetricFamily(
            "vessel_info",
            "Always 1; the labels say which Vessel runs and the host API it offers modules",
            labels=["version", "host_api_version"],
        )
        daemon.add_metric([VERSION, str(HOST_API_VERSION)], 1.0)
        yield daemon
        yield GaugeMetricFamily(
            "vessel_modules_refused",
            "Module folders the daemon refused to load (GET /api/modules says why)",
            value=s.refused,
        )
        yield GaugeMetricFamily(
            "vessel_installs_under_way",
            "Module installs being compiled or placed",
            value=s.installs_under_way,
        )
        yield GaugeMetricFamily(
            "vessel_websocket_clients",
            "WebSocket clients connected with the token",
            value=s.websocket_clients,
        )
        yield GaugeMetricFamily(
            "vessel_websocket_clients_unauthenticated",
            "WebSocket connections waiting for their auth message",
            value=s.websocket_unauthenticated,
        )
        bus = s.bus
        yield GaugeMetricFamily(
            "vessel_bus_subscriptions", "Subscriptions to the event bus", value=bus.subscriptions
        )
        yield CounterMetricFamily(
            "vessel_bus_events_published", "Events published on the bus", value=bus.published
        )
        yield CounterMetricFamily(
            "vessel_bus_events_delivered",
            "Events handed to subscribers (one per subscriber)",
            value=bus.delivered,
        )
        yield CounterMetricFamily(
            "vessel_bus_events_dropped",
            "Events a subscriber's full queue could not take",
            value=bus.dropped,
        )
        yield GaugeMetricFamily(
            "vessel_bus_retained_events", "Retained events the bus keeps", value=bus.retained
        )
        yield GaugeMetricFamily(
            "vessel_bus_retained_bytes",
            "Size of the retained events the bus keeps",
            value=bus.retained_bytes,
        )


def exposition(snapshot: Snapshot) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)  # process_*: the daemon's own process
    registry.register(VesselCollector(snapshot))
    return generate_latest(registry)


@metrics.get("/metrics")
async def scrape() -> Response:
    state = gateway_state()
    if not state.metrics_open:
        presented = bearer_token(request.headers.get("Authorization"))
        if not token_matches(state.token, presented):
            response = error_response(
                401,
                "unauthorized",
                "missing or wrong bearer token (or serve /metrics openly: vessel serve "
                "--metrics-open)",
            )
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
    body = exposition(await take_snapshot(state))
    return Response(body, status=200, content_type=CONTENT_TYPE_LATEST)
