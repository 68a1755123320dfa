"""The host I/O services check a fetch's or a connection's destination against the
module's ``permissions.network.hosts`` (a ``Destinations``) before any I/O, against real
servers on 127.0.0.1: ``websocket-open`` (``connect_nowait``), which the testkit guest
does not call, and the service's own answer for each kind."""

from __future__ import annotations

import pytest
import trio

from vessel._capabilities import Destinations
from vessel._errors import CapabilityDenied
from vessel._manifest import parse_host_pattern
from vessel.host._http import HttpService

from .conftest import WsPeer
from .test_websocket_service import DEADLINE, running

FIELD = "is not declared in permissions.network.hosts of module 'm'"


def _allow(*entries: str) -> Destinations:
    return Destinations("m", tuple(parse_host_pattern(e) for e in entries))


async def test_websocket_open_to_a_listed_host_opens_and_to_another_is_denied_at_once(
    ws_peer: WsPeer,
) -> None:
    allow = _allow(f"ws://127.0.0.1:{ws_peer.port}")
    with trio.fail_after(DEADLINE):
        async with running() as (service, guest):
            handle = service.connect_nowait(ws_peer.url("/echo"), allow)
            await service.send(handle, "echo: hi")
            assert await guest.wait_for(1) == [("message", handle, "echo: hi")]
            with pytest.raises(CapabilityDenied) as info:
                service.connect_nowait(f"ws://localhost:{ws_peer.port}/echo", allow)
            assert str(info.value) == (
                f"capability denied: websocket-open to 'ws://localhost:{ws_peer.port}' {FIELD}"
            )
            # Denied before a handle or a slot was taken.
            assert service.live == 1


async def test_http_fetch_is_denied_before_any_io(http_base: str) -> None:
    port = int(http_base.rsplit(":", 1)[1])
    service = HttpService()
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            await nursery.start(service.run)
            allow = _allow(f"http://localhost:{port}")
            with pytest.raises(CapabilityDenied) as info:
                await service.fetch("GET", f"{http_base}/echo", [], None, allow)
            assert str(info.value) == (
                f"capability denied: http-fetch to 'http://127.0.0.1:{port}' {FIELD}"
            )
            status, _, _ = await service.fetch(
                "GET", f"{http_base}/echo", [], None, _allow(f"http://127.0.0.1:{port}")
            )
            assert status == 200
            nursery.cancel_scope.cancel()
