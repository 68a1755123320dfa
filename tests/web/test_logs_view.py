"""The dashboard's Logs view (web/logs.js) in Chromium against a real `vessel serve`: the
daemon's own log, its level filter, live follow, pause, and the follow taken up again
after the daemon restarts."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import httpx
from playwright.sync_api import BrowserContext, expect

from .harness import open_page, running_daemon, screenshot, sign_in


def _kill(api: httpx.Client, module_id: str) -> int:
    info = api.get(f"/api/modules/{module_id}").raise_for_status().json()
    assert info["state"] == "running", info
    pid: int = info["pid"]
    os.kill(pid, signal.SIGKILL)
    return pid


def test_logs_view_follows_the_daemon_log_with_a_level_filter(
    browser: BrowserContext, data_dir: Path
) -> None:
    """Logs shows the daemon's start line (not the modules' own lines); "warning and
    above" hides it and is kept in the address; a module killed meanwhile shows up live
    as a warning; Pause holds new lines until Resume; after a restart of the daemon the
    view follows again, the earlier run's lines still there."""
    with running_daemon(data_dir) as daemon, daemon.api() as api:
        port = daemon.port
        page, script_errors = open_page(browser, daemon)
        sign_in(page, daemon.token)
        page.get_by_role("link", name="Logs").click()
        lines = page.locator("ol.log-lines")
        running = lines.locator("li", has_text="vessel running on")
        expect(running.first).to_be_visible()
        expect(running.first.locator(".level")).to_have_text("INFO")
        expect(running.first.locator(".source")).to_have_text("vessel")
        expect(lines.locator("li", has_text="testkit loaded")).to_have_count(0)

        page.get_by_label("Least level shown").select_option("warning")
        expect(running).to_have_count(0)
        assert page.url.endswith("#/logs?level=warning")
        # The module's log says when its next process has loaded (after the kill).
        params = {"follow": "1", "lines": "0"}
        with api.stream("GET", "/api/modules/testkit/logs", params=params, timeout=30) as follow:
            first = _kill(api, "testkit")
            for text in follow.iter_lines():
                if '"testkit loaded"' in text:
                    break
        crashed = lines.locator("li", has_text=f"module testkit crashed (pid {first})")
        expect(crashed).to_have_count(1)
        expect(crashed).to_have_attribute("data-level", "warning")
        screenshot(page, "logs")

        page.get_by_role("button", name="Pause").click()
        expect(page.get_by_role("button", name="Resume")).to_be_visible()
        second = _kill(api, "testkit")
        assert second != first
        resume = page.get_by_role("button", name=re.compile(r"^Resume \(\d+ new\)$"))
        expect(resume).to_be_visible()
        again = lines.locator("li", has_text=f"module testkit crashed (pid {second})")
        expect(again).to_have_count(0)
        resume.click()
        expect(again).to_have_count(1)

    with running_daemon(data_dir, port=port):
        # The page's follow ended with the daemon; it follows again once reconnected,
        # and the daemon's log on disk carried the first run's lines.
        expect(page.locator("#conn")).to_have_text("Connected", timeout=30_000)
        expect(lines.locator("li", has_text=f"module testkit crashed (pid {first})")).to_have_count(
            1, timeout=30_000
        )
        expect(page.get_by_label("Least level shown")).to_have_value("warning")
    assert script_errors == []
