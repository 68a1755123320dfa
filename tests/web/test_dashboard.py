"""The dashboard in headless Chromium against a real ``vessel serve`` (see harness.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import BrowserContext, expect

from tests.gateway.harness import NOT_OUR_COMPONENT

from .harness import HA, FakeHAThread, open_page, running_daemon, screenshot, sign_in


def _pid(daemon_api: httpx.Client, module_id: str) -> int:
    info = daemon_api.get(f"/api/modules/{module_id}").raise_for_status().json()
    assert info["state"] == "running", info
    pid: int = info["pid"]
    return pid


def test_sign_in_refuses_a_wrong_token_and_remembers_the_right_one(
    browser: BrowserContext, data_dir: Path
) -> None:
    """A wrong token is refused with the daemon's reason and the form stays for a retry;
    the right one connects, survives a reload (localStorage), and sign-out forgets it."""
    with running_daemon(data_dir) as daemon:
        page, script_errors = open_page(browser, daemon)
        expect(page.get_by_role("heading", name="Vessel")).to_be_visible()
        screenshot(page, "sign-in")

        page.get_by_label("Admin token").fill("not-the-token")
        page.get_by_role("button", name="Sign in").click()
        alert = page.locator("#signin-error")
        expect(alert).to_contain_text("refused this token")
        expect(alert).to_contain_text("unauthorized")
        assert page.evaluate("localStorage.getItem('vessel.token')") is None
        screenshot(page, "sign-in-refused")

        sign_in(page, daemon.token)
        expect(page.locator("#signin")).to_be_hidden()
        page.reload()
        expect(page.locator("#conn")).to_have_text("Connected")
        expect(page.locator("#signin")).to_be_hidden()

        page.get_by_role("button", name="Sign out").click()
        expect(page.get_by_label("Admin token")).to_be_visible()
        assert page.evaluate("localStorage.getItem('vessel.token')") is None
        assert script_errors == []


def test_home_shows_entities_and_a_click_toggles_the_light(
    browser: BrowserContext, data_dir: Path, fake_ha: FakeHAThread
) -> None:
    """Home shows every Home Assistant entity from retained state, grouped by domain,
    the HA connection status and example's retained tick; a click on a light calls
    call_service toggle at HA, the tile is pending, then shows the state HA pushed; a
    failed call shows its error on the tile."""
    fake = fake_ha.fake
    with running_daemon(data_dir) as daemon:
        page, script_errors = open_page(browser, daemon)
        sign_in(page, daemon.token)

        status = page.locator("[data-kind=ha-status]")
        expect(status).to_contain_text("Connected")
        kitchen = page.locator("[data-entity='light.kitchen']")
        expect(kitchen).to_contain_text("Kitchen")
        expect(kitchen).to_contain_text("Off")
        expect(kitchen).to_have_attribute("aria-pressed", "false")
        expect(page.locator("[data-domain=light] h2")).to_have_text("Lights")
        expect(page.locator("[data-entity='sensor.outside']")).to_contain_text("12.5 °C")
        tick = page.locator("[data-key='example.tick'] .tile-value")
        expect(tick).to_have_text(re.compile(r"count \d+"))
        expect(tick).not_to_have_text(tick.inner_text())  # live, not just the replay

        kitchen.click()
        frame = fake_ha.run(fake.wait_frame, lambda f: f.msg.get("type") == "call_service")
        assert frame.msg["domain"] == "light"
        assert frame.msg["service"] == "toggle"
        assert frame.msg["target"] == {"entity_id": "light.kitchen"}
        expect(kitchen).to_have_attribute("aria-pressed", "true")
        expect(kitchen).to_contain_text("On")
        assert fake_ha.run_sync(lambda: fake.states["light.kitchen"]["state"]) == "on"
        screenshot(page, "home", dark=True)

        # HA goes away: the status says so and a toggle fails with the reason on the tile.
        fake_ha.run(fake.stop)
        expect(status).not_to_contain_text("Connected")
        fan = page.locator("[data-entity='switch.fan']")
        fan.click()
        expect(fan.locator(".tile-error")).to_contain_text("Failed:")
        expect(fan).to_have_attribute("aria-busy", "false")
        screenshot(page, "home-failed-call")

        # The status tile links to the module's page and its settings: url, a masked token.
        status.get_by_role("link", name="Configure").click()
        card = page.locator(f"[data-module={HA}]")
        expect(card.locator("[data-setting=url]")).to_be_visible()
        expect(card.locator("[data-setting=token]")).to_be_visible()
        url_row = card.locator("[data-setting=url]")
        url_row.get_by_role("button", name="Show value").click()
        expect(url_row.locator("output")).to_have_text(fake.url)
        url_row.get_by_role("button", name="Hide").click()
        # The form is the manifest's settings: labels, what each is for, whether set.
        expect(card.get_by_label("Home Assistant URL")).to_have_attribute("type", "text")
        expect(card.locator("[data-setting=url]")).to_contain_text("(set)")
        expect(card.locator("[data-setting=ping_interval_ms]")).to_contain_text("(default: 30000)")
        expect(card).to_contain_text("Create one in Home Assistant under your profile")
        token = card.get_by_label("Long-lived access token")
        expect(token).to_have_attribute("type", "password")
        # Clear the token (confirmed: the question names the setting and the module);
        # without it the module cannot work: its card says what it needs.
        asked: list[str] = []

        def confirm(dialog: Any) -> None:
            asked.append(dialog.message)
            dialog.accept()

        page.once("dialog", confirm)
        card.locator("[data-setting=token]").get_by_role("button", name="Clear").click()
        expect(card.locator(".needs")).to_have_text("Needs configuration: token")
        assert asked == [
            f'Clear the setting "Long-lived access token" of {HA}? The module cannot work '
            "without it."
        ]
        expect(
            card.locator("[data-setting=token]").get_by_role("button", name="Clear")
        ).to_be_hidden()
        with daemon.api() as api:
            gone = api.get(f"/api/modules/{HA}/config/token")
        assert gone.status_code == 404
        # (The page's log says where the module connects; the settings show no value.)
        settings = card.locator("section.config")
        assert fake.url not in settings.inner_text()
        token.fill("new-token")
        card.get_by_role("button", name="Save settings").click()
        expect(card).to_contain_text("Saved token")
        with daemon.api() as api:
            saved = api.get(f"/api/modules/{HA}/config/token").raise_for_status().json()
        assert saved["value"] == "new-token"
        assert "new-token" not in card.inner_text()  # nor in the log
        expect(card.locator(".needs")).to_be_hidden()
        screenshot(page, "modules-home-assistant")

        # Without a token the Home tile says what to run, as code, not in backticks.
        with daemon.api() as api:
            api.delete(f"/api/modules/{HA}/config/token").raise_for_status()
        page.get_by_role("link", name="Home").click()
        command = status.locator(".tile-detail code")
        expect(command).to_have_text("vessel-ctl config home-assistant --stdin token")
        assert "`" not in status.inner_text()
        assert script_errors == []


def test_modules_view_shows_pids_restarts_configures_and_reads_logs(
    browser: BrowserContext, data_dir: Path, tmp_path: Path
) -> None:
    """Modules lists every module with the PID the daemon reports; Restart shows the new
    PID; Disable/Enable follow the lifecycle; a configuration value set from the page
    reaches the module's storage and is shown only on request; the log panel shows the
    module's lines; a refused upload explains why."""
    with running_daemon(data_dir) as daemon, daemon.api() as api:
        page, script_errors = open_page(browser, daemon)
        sign_in(page, daemon.token)
        page.get_by_role("link", name="Modules").click()

        card = page.locator("[data-module=example]")
        pid = _pid(api, "example")
        expect(card.locator("[data-field=pid]")).to_have_text(str(pid))
        expect(card.locator(".badge")).to_have_text("running")
        expect(card).to_contain_text("0.1.0")
        expect(page.locator("[data-module=testkit] [data-field=pid]")).to_have_text(
            str(_pid(api, "testkit"))
        )

        card.get_by_role("button", name="Restart").click()
        expect(card).to_contain_text(f"Restarted: pid {pid} →")
        new_pid = _pid(api, "example")
        assert new_pid != pid
        expect(card.locator("[data-field=pid]")).to_have_text(str(new_pid))

        testkit = page.locator("[data-module=testkit]")
        testkit.get_by_role("button", name="Disable").click()
        expect(testkit.locator(".badge")).to_have_text("disabled")
        expect(testkit).to_contain_text("Disabled: stopped, and kept stopped across restarts")
        expect(testkit.locator("[data-field=pid]")).to_have_text("\N{EN DASH}")
        testkit.get_by_role("button", name="Enable").click()
        expect(testkit.locator(".badge")).to_have_text("running")
        expect(testkit).to_contain_text("Enabled: running, pid")
        expect(testkit.locator("[data-field=pid]")).to_have_text(str(_pid(api, "testkit")))

        # A module that declares no settings has nothing to configure: its storage is
        # not offered as configuration (no key/value form, no Delete).
        api.put("/api/modules/testkit/config/api_token", json={"value": "s3cret"})
        testkit.get_by_role("button", name="Configure").click()
        expect(testkit.locator(".no-settings")).to_contain_text(
            "testkit declares no settings: there is nothing to configure"
        )
        expect(testkit.locator("form")).to_have_count(0)
        expect(testkit.get_by_role("button", name="Delete")).to_have_count(0)
        assert "api_token" not in testkit.inner_text()

        card.get_by_role("button", name="Logs").click()
        expect(card.locator("pre.log")).to_contain_text("example counter loaded")
        screenshot(page, "modules", dark=True)

        # An upload the daemon refuses says why. Both files come in one pick.
        manifest = tmp_path / "manifest.json"
        manifest.write_text(json.dumps({"id": "Bad Id", "version": "1"}))
        wasm = tmp_path / "module.wasm"
        wasm.write_bytes(b"\0asm")
        page.get_by_role("button", name="Install…").click()
        files = page.get_by_label("Module files: manifest.json and module.wasm")
        files.set_input_files(wasm)  # one of the two: said at once
        expect(page.locator("form.install .alert")).to_contain_text("manifest.json is missing")
        files.set_input_files([wasm, manifest])
        expect(page.locator("form.install .chosen")).to_contain_text(
            "module.wasm (4 B) + manifest.json"
        )
        page.get_by_role("button", name="Install", exact=True).click()
        expect(page.locator("form.install .alert")).to_contain_text(
            "Install failed (invalid_module)"
        )

        # An id that is installed is refused before anything is uploaded.
        posts: list[str] = []
        page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
        manifest.write_text(json.dumps({"id": "example", "version": "9"}))
        files.set_input_files([manifest, wasm])
        page.get_by_role("button", name="Install", exact=True).click()
        expect(page.locator("form.install .alert")).to_contain_text(
            'module example is already installed; tick "Replace"'
        )
        assert posts == []

        # Accepted, then its compile fails: the form and the list say so, with the reason.
        doc = json.loads((data_dir / "modules" / "testkit" / "manifest.json").read_text())
        manifest.write_text(json.dumps({**doc, "id": "broken"}))
        wasm.write_bytes(NOT_OUR_COMPONENT)
        files.set_input_files([manifest, wasm])
        page.get_by_role("button", name="Install", exact=True).click()
        expect(page.locator("form.install .alert")).to_contain_text(
            "Install failed (install_failed): module 'broken'", timeout=60_000
        )
        expect(page.locator("[data-install=broken]")).to_contain_text("failed: module 'broken'")
        assert script_errors == []


def test_event_stream_shows_emitted_events_filters_and_pauses(
    browser: BrowserContext, data_dir: Path
) -> None:
    """Events shows a module's emitted event with its payload pretty-printed; a glob
    filter hides the others (and only matching events arrive afterwards); pause holds
    new events until resume; clear empties the list."""
    with running_daemon(data_dir) as daemon, daemon.api() as api:

        def emit(name: str, data: Any) -> None:
            params = {"name": name, "data": data}
            api.post("/api/modules/testkit/call/emit", json=params).raise_for_status()

        page, script_errors = open_page(browser, daemon)
        sign_in(page, daemon.token)
        page.get_by_role("link", name="Events").click()
        stream = page.locator("ol.stream")
        expect(stream.locator("[data-key='example.tick']").first).to_be_visible()

        emit("hello", {"n": 1, "nested": {"ok": True}})
        hello = stream.locator("[data-key='testkit.hello']")
        expect(hello).to_have_count(1)
        expect(hello.locator("pre")).to_have_text(
            json.dumps({"n": 1, "nested": {"ok": True}}, indent=2)
        )
        # The same event never shows twice (a replay still in flight from the previous
        # view's subscription arrives on the new one too).
        times = page.eval_on_selector_all(
            "[data-key='example.tick'] time", "els => els.map(e => e.dateTime)"
        )
        assert len(times) == len(set(times)), times
        screenshot(page, "events", dark=True)

        page.get_by_label("Filter (module.name glob)").fill("testkit.*")
        expect(stream.locator("[data-key='example.tick']")).to_have_count(0)
        expect(hello).to_have_count(1)
        assert "filter=testkit.*" in page.url
        emit("again", 2)
        expect(stream.locator("[data-key='testkit.again']")).to_have_count(1)
        expect(stream.locator("[data-key='example.tick']")).to_have_count(0)

        page.get_by_role("button", name="Pause").click()
        emit("held", 3)
        expect(page.get_by_role("button", name="Resume (1 new)")).to_be_visible()
        expect(stream.locator("[data-key='testkit.held']")).to_have_count(0)
        page.get_by_role("button", name="Resume (1 new)").click()
        expect(stream.locator("li").first).to_have_attribute("data-key", "testkit.held")

        page.get_by_role("button", name="Clear").click()
        expect(stream.locator("li")).to_have_count(0)
        screenshot(page, "events-filtered")

        # A filter in the address (a link, or typed) applies on the same view.
        page.evaluate("location.hash = '#/events?filter=example.*'")
        expect(page.get_by_label("Filter (module.name glob)")).to_have_value("example.*")
        expect(stream.locator("[data-key='example.tick']").first).to_be_visible()
        assert script_errors == []


def test_page_reconnects_and_resubscribes_after_the_daemon_restarts(
    browser: BrowserContext, data_dir: Path
) -> None:
    """When the daemon stops, the page says it is reconnecting (with a countdown); when
    it is back on the same port, the page reconnects by itself, without a reload, and
    resubscribes what the current view needs: Home's example tick moves on again, and
    the Modules view then shows the new daemon's PIDs."""
    # The first start picks its own port (no window between choosing it and binding);
    # the restart takes it again.
    with running_daemon(data_dir) as daemon:
        port = daemon.port
        page, script_errors = open_page(browser, daemon)
        sign_in(page, daemon.token)
        tick = page.locator("[data-key='example.tick'] .tile-value")
        expect(tick).to_have_text(re.compile(r"count \d+"))
        with daemon.api() as api:
            old_pid = _pid(api, "example")
    # The daemon has stopped (SIGTERM, waited for): the page notices.
    conn = page.locator("#conn")
    expect(conn).to_have_text(re.compile(r"Reconnecting in \d+s"))
    page.evaluate("window.sameDocument = true")
    stopped_at = tick.inner_text()
    screenshot(page, "home-reconnecting")

    with running_daemon(data_dir, port=port) as daemon:
        expect(conn).to_have_text("Connected")
        # Live ticks again, on the subscription the page re-sent by itself.
        expect(tick).not_to_have_text(stopped_at)
        after = tick.inner_text()
        expect(tick).not_to_have_text(after)

        page.get_by_role("link", name="Modules").click()
        with daemon.api() as api:
            new_pid = _pid(api, "example")
        assert new_pid != old_pid
        expect(page.locator("[data-module=example] [data-field=pid]")).to_have_text(str(new_pid))
        assert page.evaluate("window.sameDocument") is True
        assert script_errors == []
