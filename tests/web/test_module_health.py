"""A module's own health on its dashboard card, in headless Chromium against a real
``vessel serve`` (see harness.py)."""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import BrowserContext, expect

from tests.fixture_types import MakeModuleDir

from .harness import HA, open_page, running_daemon, screenshot, sign_in


def test_a_running_module_that_cannot_work_says_so_on_its_card(
    browser: BrowserContext, data_dir: Path, make_module_dir: MakeModuleDir
) -> None:
    """The Home Assistant module without a token runs, and reports health error: its card
    shows that line in the module's own words (how to configure it), marked as an error;
    a module that reports no health (example) shows no health line."""
    make_module_dir(data_dir, HA)
    with running_daemon(data_dir) as daemon:
        page, script_errors = open_page(browser, daemon)
        sign_in(page, daemon.token)
        page.get_by_role("link", name="Modules").click()

        card = page.locator(f"[data-module={HA}]")
        expect(card.locator(".badge")).to_have_text("running")
        health = card.locator(".health")
        expect(health).to_be_visible()
        expect(health).to_have_attribute("data-health", "error")
        expect(health).to_contain_text("Health: error — not configured: set its token with")
        # The command in the message is shown as code, not in backticks.
        expect(health.locator("code")).to_have_text(
            "vessel-ctl config home-assistant --stdin token"
        )
        expect(page.locator("[data-module=example] .health")).to_be_hidden()
        screenshot(page, "modules-health-error")
        assert script_errors == []
