"""A module's page says where it may connect, in headless Chromium against a real
``vessel serve``: the hosts its manifest lists, "none", or "any host" as a warning."""

from __future__ import annotations

import re
import socket
from pathlib import Path

from playwright.sync_api import BrowserContext, expect

from tests.fixture_types import MakeModuleDir

from .harness import open_page, running_daemon, sign_in


def test_the_module_page_shows_the_network_destinations_or_warns_of_any_host(
    browser: BrowserContext, tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    data = tmp_path / "data"
    make_module_dir(
        data, "testkit", module_id="roamer", permissions={"network": {"websocket": True}}
    )
    make_module_dir(
        data,
        "testkit",
        module_id="pinned",
        permissions={"network": {"http": True, "hosts": ["https://*.example.com"]}},
    )
    make_module_dir(data, "testkit", module_id="offline", permissions={})
    with running_daemon(data) as daemon:
        page, script_errors = open_page(browser, daemon)
        sign_in(page, daemon.token)
        expected = {
            "roamer": (
                "any-host",
                "Network: websocket to any host. Its manifest lists no "
                "permissions.network.hosts, so it may connect anywhere.",
            ),
            "pinned": ("hosts", "Network: http to https://*.example.com"),
            "offline": ("none", "Network: none"),
        }
        for module_id, (kind, text) in expected.items():
            page.goto(f"{daemon.url}/#/modules/{module_id}")
            network = page.locator(f"[data-module={module_id}] p.network")
            expect(network).to_have_text(text)
            expect(network).to_have_attribute("data-network", kind)
            if kind == "any-host":
                expect(network).to_have_class("network alert")
            else:
                expect(network).to_have_class("network")
        # Only on the page: the list's cards do not say it.
        page.goto(f"{daemon.url}/#/modules")
        expect(page.locator("[data-module=roamer]")).to_be_visible()
        expect(page.locator("[data-module=roamer] p.network")).to_be_hidden()
        assert script_errors == []


def test_the_module_page_shows_its_network_use_per_destination(
    browser: BrowserContext, tmp_path: Path, make_module_dir: MakeModuleDir
) -> None:
    """After a fetch that went (to the daemon's own gateway, listed) and one that was
    denied (the same gateway as localhost), the page's Network use lists both."""
    data = tmp_path / "data"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    make_module_dir(
        data,
        "testkit",
        module_id="pinned",
        permissions={"network": {"http": True, "hosts": [f"http://127.0.0.1:{port}"]}},
    )
    with running_daemon(data, port=port) as daemon, daemon.api() as api:
        went: dict[str, object] = {
            "method": "GET",
            "url": f"{daemon.url}/",
            "headers": [],
            "body": None,
        }
        answer = api.post("/api/modules/pinned/call/http", json=went)
        assert answer.status_code == 200, answer.text
        denied = {**went, "url": f"http://localhost:{port}/"}
        refused = api.post("/api/modules/pinned/call/http", json=denied)
        assert "capability denied: http-fetch to" in refused.text, refused.text

        page, script_errors = open_page(browser, daemon)
        sign_in(page, daemon.token)
        page.goto(f"{daemon.url}/#/modules/pinned")
        egress = page.locator("[data-module=pinned] details.egress")
        expect(egress.locator("summary")).to_contain_text("2 destinations · 1 denied")
        egress.locator("summary").click()
        used = egress.locator(f'li[data-destination="http://127.0.0.1:{port}"]')
        expect(used).to_contain_text(re.compile(r"1 request, 0 B sent, [\d.]+ [KM]?i?B received"))
        refused_row = egress.locator(f'li[data-destination="http://localhost:{port}"]')
        expect(refused_row).to_contain_text("1 attempt denied")
        expect(refused_row).to_have_class("denied")
        assert script_errors == []
