"""The gateway: how dashboards, scripts and vessel-ctl reach the daemon.

Layout (private modules; the names below are the public API):

* ``_app``      the Quart-Trio app factory and the state it shares with handlers
* ``_auth``     admin token and browser-origin checks
* ``_errors``   JSON error bodies and the error-code -> HTTP status map
* ``_protocol`` WebSocket protocol v1 messages (msgspec tagged unions)
* ``_ws``       the ``/ws`` endpoint: auth, per-client subscriptions, concurrent calls
* ``_rest``     the REST API under ``/api`` and ``/healthz``
* ``_metrics``  ``GET /metrics`` in the Prometheus text format
* ``_serve``    serving the app with Hypercorn's trio worker inside the daemon's nursery
"""

from __future__ import annotations

from ._app import GatewayState as GatewayState
from ._app import create_app as create_app
from ._serve import GatewayConfig as GatewayConfig
from ._serve import serve_gateway as serve_gateway
