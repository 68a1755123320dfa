"""A real daemon with its real gateway on 127.0.0.1 (port 0), for gateway tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import trio

from vessel._daemon import Daemon, DaemonConfig, open_daemon
from vessel._manager import SupervisionPolicy
from vessel._wasm_shape import COMPONENT_HEADER
from vessel.gateway import GatewayConfig, GatewayState, serve_gateway

FAST = SupervisionPolicy(max_restarts=2, period=30.0, backoff_initial=0.05, backoff_max=0.2)


@dataclass
class Gateway:
    daemon: Daemon
    state: GatewayState
    #: e.g. "http://127.0.0.1:43210"
    base_url: str

    @property
    def ws_url(self) -> str:
        return self.base_url.replace("http://", "ws://") + "/ws"

    @property
    def token(self) -> str:
        return self.daemon.token

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.daemon.token}"}


@asynccontextmanager
async def running_gateway(
    data_dir: Path,
    *,
    allowed_origins: frozenset[str] = frozenset(),
    allowed_hosts: frozenset[str] = frozenset(),
    policy: SupervisionPolicy = FAST,
) -> AsyncIterator[Gateway]:
    config = DaemonConfig(data_dir=data_dir, install_bundled=False, policy=policy)
    async with open_daemon(config) as daemon, trio.open_nursery() as nursery:
        shutdown = trio.Event()
        gateway = GatewayConfig(
            host="127.0.0.1",
            port=0,
            allowed_origins=allowed_origins,
            allowed_hosts=allowed_hosts,
        )
        state, binds = await nursery.start(
            lambda task_status: serve_gateway(
                daemon, gateway, shutdown=shutdown, task_status=task_status
            )
        )
        try:
            yield Gateway(daemon=daemon, state=state, base_url=binds[0])
        finally:
            shutdown.set()


@asynccontextmanager
async def open_api(data_dir: Path) -> AsyncIterator[tuple[Gateway, httpx.AsyncClient]]:
    """A real gateway and an httpx client that carries the admin token."""
    async with (
        running_gateway(data_dir) as gateway,
        httpx.AsyncClient(base_url=gateway.base_url, headers=gateway.auth, timeout=30) as client,
    ):
        yield gateway, client


def assert_error(response: httpx.Response, status: int, code: str) -> str:
    """Check a JSON error response ({code, message} only) and return its message."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"code", "message"}
    assert body["code"] == code
    message: str = body["message"]
    return message


#: A component's header and one custom section of sound size: past the daemon's framing
#: check, refused by the compiler (an install that fails in its compile, at once).
NOT_OUR_COMPONENT = COMPONENT_HEADER + bytes([0, 4, 3]) + b"abc"
