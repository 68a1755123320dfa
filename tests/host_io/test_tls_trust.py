"""https:// and wss:// to a server whose certificate the system does not trust (a Home
Assistant with a self-signed certificate): refused, with the reason, until the admin
trusts it (``vessel serve --ca-file``, passed to the services as PEM text)."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
import trustme
from trio_websocket import serve_websocket

from vessel.host._hosterrors import HostCallError
from vessel.host._http import HttpService

from ..servers import serve_http
from .conftest import WsPeer
from .test_websocket_service import running as running_websockets

DEADLINE = 10


@dataclass
class TlsPeers:
    """A wss:// echo server and an https:// server, with a certificate for 127.0.0.1
    issued by a CA of their own."""

    ws: WsPeer
    https_base: str
    ca_pem: str
    #: The server's own certificate alone, as an admin would save a self-signed one.
    leaf_pem: str

    @property
    def wss_url(self) -> str:
        return f"wss://127.0.0.1:{self.ws.port}/echo"


@pytest.fixture
async def tls_peers(nursery: trio.Nursery, tmp_path: Path) -> TlsPeers:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_context)
    ws = WsPeer()
    server = await nursery.start(serve_websocket, ws.handler, "127.0.0.1", 0, server_context)
    ws.port = server.port
    key_and_chain = tmp_path / "server.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(key_and_chain))
    https_base = await serve_http(nursery, tls_pem=key_and_chain)
    return TlsPeers(
        ws=ws,
        https_base=https_base.replace("http://", "https://"),
        ca_pem=ca.cert_pem.bytes().decode(),
        leaf_pem=cert.cert_chain_pems[0].bytes().decode(),
    )


async def test_wss_is_refused_until_its_certificate_is_trusted(tls_peers: TlsPeers) -> None:
    with trio.fail_after(DEADLINE):
        async with running_websockets() as (service, _):
            with pytest.raises(HostCallError) as refused:
                await service.connect(tls_peers.wss_url)
        assert "certificate verify failed" in str(refused.value)
        for trusted in (tls_peers.ca_pem, tls_peers.leaf_pem):
            async with running_websockets(trusted_ca=trusted) as (service, guest):
                handle = await service.connect(tls_peers.wss_url)
                await service.send(handle, "echo: over tls")
                assert await guest.wait_for(1) == [("message", handle, "echo: over tls")]


async def test_https_is_refused_until_its_certificate_is_trusted(tls_peers: TlsPeers) -> None:
    url = f"{tls_peers.https_base}/echo"
    with trio.fail_after(DEADLINE):
        http = HttpService()
        async with trio.open_nursery() as nursery:
            await nursery.start(http.run)
            with pytest.raises(HostCallError) as refused:
                await http.fetch("GET", url, [], None)
            nursery.cancel_scope.cancel()
        assert "certificate verify failed" in str(refused.value)
        for trusted in (tls_peers.ca_pem, tls_peers.leaf_pem):
            http = HttpService(trusted_ca=trusted)
            async with trio.open_nursery() as nursery:
                await nursery.start(http.run)
                status, _, _ = await http.fetch("GET", url, [], None)
                nursery.cancel_scope.cancel()
            assert status == 200
