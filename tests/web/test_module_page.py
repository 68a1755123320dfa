"""A module's page, crash alerts and install by drop, in headless Chromium against a
real ``vessel serve`` whose module processes really crash (see harness.py)."""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import httpx
from playwright.sync_api import BrowserContext, Page, expect

from tests.gateway.harness import NOT_OUR_COMPONENT

from .harness import open_page, running_daemon, screenshot, sign_in

#: A crash loop of the daemon's default policy (5 restarts, backoff from 0.5 s) takes
#: some 16 s before `failed`, more on a loaded machine.
FAILED_TIMEOUT_MS = 90_000


def _pid(api: httpx.Client, module_id: str) -> int:
    info = api.get(f"/api/modules/{module_id}").raise_for_status().json()
    assert info["state"] == "running", info
    pid: int = info["pid"]
    return pid


def _posts(page: Page) -> list[str]:
    posts: list[str] = []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
    return posts


def test_module_page_shows_history_storage_and_calls_a_command(
    browser: BrowserContext, data_dir: Path
) -> None:
    """The module's page (its name on the card): its history (started, with the pid),
    its storage read only (the example's count: size, value on request, no Delete), and
    a command call whose params are checked as a JSON object before anything is sent;
    the answer, or the daemon's error, is shown."""
    with running_daemon(data_dir) as daemon, daemon.api() as api:
        page, script_errors = open_page(browser, daemon)
        sign_in(page, daemon.token)
        page.get_by_role("link", name="Modules").click()
        page.locator("[data-module=example]").get_by_role("link", name="Example counter").click()
        assert page.url.endswith("#/modules/example")
        card = page.locator("[data-module=example]")
        expect(card.get_by_role("heading", name="Example counter")).to_be_visible()
        pid = _pid(api, "example")
        history = card.locator("ol.history")
        started = history.locator("li[data-event=started]")
        expect(started).to_have_count(1)
        expect(started).to_contain_text(f"Started pid {pid}")
        # Its configuration: nothing declared, so nothing to set.
        expect(card.locator(".no-settings")).to_contain_text("example declares no settings")
        expect(card.get_by_role("button", name="Delete")).to_have_count(0)

        # Storage: behind its own section, read only.
        storage = card.locator("details.storage")
        expect(storage.locator("summary")).to_contain_text(re.compile(r"1 key · \d+ B of 1\.0 MiB"))
        storage.locator("summary").click()
        count = storage.locator("li[data-key=count]")
        expect(count).to_be_visible()
        count.get_by_role("button", name="Show value").click()
        expect(count.locator("output")).to_have_text(re.compile(r"^\d+$"))

        # A command: the params are checked here first.
        posts = _posts(page)
        call = card.locator("form.call")
        call.get_by_label("Command").fill("add")
        params = call.get_by_label("Params (a JSON object)")
        params.fill("[1, 2]")
        call.get_by_role("button", name="Call").click()
        expect(call.locator(".alert")).to_have_text(
            'The params must be a JSON object, like {"key": 1}; this is an array.'
        )
        params.fill('{"n": ')
        expect(params).to_have_attribute("aria-invalid", "")
        call.get_by_role("button", name="Call").click()
        expect(call.locator(".alert")).to_contain_text("The params are not valid JSON")
        assert posts == []
        api.post("/api/modules/example/call/reset").raise_for_status()
        params.fill('{"n": 1000}')
        call.get_by_role("button", name="Call").click()
        expect(call.locator(".note")).to_contain_text("add answered in")
        answer = json.loads(call.locator("pre.result").inner_text())
        assert answer["count"] >= 1000
        assert len(posts) == 1
        params.fill('{"n": "x"}')
        call.get_by_role("button", name="Call").click()
        expect(call.locator(".alert")).to_contain_text("add failed (module_error)")
        expect(call.locator(".alert")).to_contain_text("add needs an integer n")
        call.get_by_label("Command").fill("nope")
        call.get_by_role("button", name="Call").click()
        expect(call.locator(".alert")).to_contain_text("nope failed (unknown_command)")
        screenshot(page, "module-page", dark=True)

        page.get_by_role("link", name="← All modules").click()
        expect(page.locator("[data-module=testkit]")).to_be_visible()
        assert script_errors == []


def test_a_crash_and_a_failure_show_a_toast_a_badge_and_the_history(
    browser: BrowserContext, data_dir: Path
) -> None:
    """SIGKILL of a module process: a toast names the module and the reason, the
    Modules tab counts it and its card says so until its page is opened, where the
    history has the crash and the restart. A crash loop then ends `failed`: a toast that
    stays, the reason in the history. Uninstall asks first, naming the module."""
    with running_daemon(data_dir) as daemon, daemon.api() as api:
        page, script_errors = open_page(browser, daemon)
        sign_in(page, daemon.token)
        badge = page.locator(".tabs .count-badge")
        expect(badge).to_be_hidden()

        pid = _pid(api, "testkit")
        os.kill(pid, signal.SIGKILL)
        toast = page.locator(".toast[data-module=testkit]")
        expect(toast).to_contain_text("testkit crashed")
        expect(toast).to_contain_text("killed by SIGKILL")
        expect(toast).to_contain_text("The daemon restarts it.")
        expect(badge).to_have_text("1")
        screenshot(page, "crash-toast")

        page.get_by_role("link", name="Modules").click()
        card = page.locator("[data-module=testkit]")
        expect(card.locator(".problem")).to_contain_text("Crashed at")
        expect(card.locator(".problem")).to_contain_text("killed by SIGKILL")
        expect(card.locator(".badge")).to_have_text("running")  # restarted meanwhile
        screenshot(page, "modules-crashed")

        card.get_by_role("link", name="Test kit").click()
        expect(badge).to_be_hidden()  # seen
        history = card.locator("ol.history")
        crashed = history.locator("li[data-event=crashed]")
        expect(crashed).to_contain_text(f"Crashed pid {pid}, killed by SIGKILL")
        expect(history.locator("li[data-event=restarting]")).to_contain_text("Restarting in")
        expect(history.locator("li[data-event=restarted]")).to_contain_text(
            "Restarted by the daemon"
        )
        # Newest first: the restart, then the crash.
        events = history.locator("li").evaluate_all("els => els.map(e => e.dataset.event)")
        assert events[:4] == ["restarted", "restarting", "crashed", "started"], events

        # Every start now traps in on-load: restarts, then `failed`.
        api.put("/api/modules/testkit/config/on_load", json={"value": "trap"}).raise_for_status()
        page.get_by_role("link", name="← All modules").click()
        os.kill(_pid(api, "testkit"), signal.SIGKILL)
        expect(toast).to_contain_text("testkit failed", timeout=FAILED_TIMEOUT_MS)
        expect(toast).to_contain_text("It is not restarted again")
        expect(card.locator(".badge")).to_have_text("failed")
        expect(badge).to_have_text("1")
        card.locator(".problem").get_by_role("button", name="Dismiss").click()
        expect(card.locator(".problem")).to_be_hidden()
        expect(badge).to_be_hidden()
        expect(toast).to_be_hidden()

        card.get_by_role("link", name="Test kit").click()
        failed = card.locator("ol.history li[data-event=failed]")
        expect(failed).to_contain_text("not restarted again until you restart it")
        reason = api.get("/api/modules/testkit").raise_for_status().json()["last_reason"]
        expect(failed).to_contain_text(reason)
        screenshot(page, "module-page-failed")

        # Uninstall: asked first, naming the module; Cancel keeps it.
        card.get_by_role("button", name="Uninstall…").click()
        confirm = card.get_by_role("alertdialog")
        expect(confirm).to_contain_text("Uninstall Test kit (testkit)?")
        screenshot(page, "module-uninstall")
        confirm.get_by_role("button", name="Cancel").click()
        expect(confirm).to_have_count(0)
        assert api.get("/api/modules/testkit").status_code == 200
        card.get_by_role("button", name="Uninstall…").click()
        card.get_by_role("alertdialog").get_by_role("button", name="Uninstall testkit").click()
        expect(page.locator(".flash")).to_have_text("Uninstalled testkit.")
        assert page.url.endswith("#/modules")
        expect(page.locator("[data-module=example]")).to_be_visible()
        expect(page.locator("[data-module=testkit]")).to_have_count(0)
        assert api.get("/api/modules/testkit").status_code == 404
        assert script_errors == []


def test_module_files_dropped_on_the_page_are_installed(
    browser: BrowserContext, data_dir: Path
) -> None:
    """Dropping the folder's two files on the Modules view opens the install form with
    them: one file alone is refused with what is missing; the pair is checked (an id
    that is installed, before uploading) and uploaded (a component that does not
    compile: the daemon's reason)."""
    doc = json.loads((data_dir / "modules" / "testkit" / "manifest.json").read_text())
    with running_daemon(data_dir) as daemon:
        page, script_errors = open_page(browser, daemon)
        sign_in(page, daemon.token)
        page.get_by_role("link", name="Modules").click()
        form = page.locator("form.install")
        expect(form).to_be_hidden()

        def drop(files: dict[str, bytes]) -> None:
            transfer = page.evaluate_handle(
                """files => {
                    const t = new DataTransfer();
                    for (const [name, bytes] of Object.entries(files)) {
                        t.items.add(new File([new Uint8Array(bytes)], name));
                    }
                    return t;
                }""",
                {name: list(data) for name, data in files.items()},
            )
            page.dispatch_event("main", "dragenter", {"dataTransfer": transfer})
            expect(page.locator("main")).to_have_class(re.compile(r"\bdropping\b"))
            page.dispatch_event("main", "drop", {"dataTransfer": transfer})
            expect(page.locator("main")).not_to_have_class(re.compile(r"\bdropping\b"))

        drop({"manifest.json": json.dumps({**doc, "id": "dropped"}).encode()})
        expect(form).to_be_visible()
        expect(form.locator(".alert")).to_contain_text("module.wasm is missing")

        posts = _posts(page)
        drop({"manifest.json": json.dumps(doc).encode(), "module.wasm": b"\0asm"})
        expect(form.locator(".chosen")).to_contain_text("module.wasm (4 B)")
        form.get_by_role("button", name="Install", exact=True).click()
        expect(form.locator(".alert")).to_contain_text(
            'module testkit is already installed; tick "Replace"'
        )
        assert posts == []

        manifest = json.dumps({**doc, "id": "dropped"}).encode()
        drop({"manifest.json": manifest, "module.wasm": NOT_OUR_COMPONENT})
        form.get_by_role("button", name="Install", exact=True).click()
        expect(form.locator(".alert")).to_contain_text(
            "Install failed (install_failed): module 'dropped'", timeout=60_000
        )
        assert len(posts) == 1
        # A toast says so too, pointing at the list (there is no module page), and the
        # Modules tab counts no module in trouble: nothing was changed.
        toast = page.locator(".toast[data-module=dropped]")
        expect(toast).to_contain_text("dropped install failed at")
        expect(toast.get_by_role("link", name="Open")).to_have_attribute("href", "#/modules")
        expect(page.locator(".tabs .count-badge")).to_be_hidden()
        screenshot(page, "install-dropped")
        assert script_errors == []
