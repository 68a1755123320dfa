"""Fixtures of the dashboard tests: a data dir with modules, a browser, the fake HA.

``data_dir`` installs example and testkit; ``fake_ha`` runs tests/ha/fake_ha.py on a
helper thread, installs home-assistant
and configures its url and token in the data dir's storage before the daemon starts;
``browser`` is a fresh headless Debian Chromium (its own profile) driven by Playwright's
sync API, closed after the test.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, expect, sync_playwright

from tests.fixture_types import MakeModuleDir

from ..ha.fake_ha import open_fake_ha
from .harness import (
    BROWSER_TIMEOUT_MS,
    CHROMIUM,
    CHROMIUM_ARGS,
    DESKTOP,
    HA,
    HA_TOKEN,
    FakeHAThread,
)


@pytest.fixture
def data_dir(tmp_path: Path, make_module_dir: MakeModuleDir) -> Path:
    """A data dir with example and testkit installed (precompiled)."""
    path = tmp_path / "data"
    for name in ("example", "testkit"):
        make_module_dir(path, name)
    return path


@pytest.fixture
def fake_ha(data_dir: Path, make_module_dir: MakeModuleDir) -> Iterator[FakeHAThread]:
    """The fake Home Assistant, and the home-assistant module configured to use it."""
    from vessel._paths import database_path
    from vessel._storage import Storage

    ha = FakeHAThread(open_fake_ha, HA_TOKEN)
    ha.start()
    try:
        make_module_dir(data_dir, HA)
        with Storage.open(database_path(data_dir)) as storage:
            storage.set(HA, "url", ha.fake.url, quota_bytes=1 << 20)
            storage.set(HA, "token", HA_TOKEN, quota_bytes=1 << 20)
        yield ha
    finally:
        ha.stop()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[BrowserContext]:
    """A browser context (Chromium with a fresh profile) whose waits are bounded."""
    if not os.access(CHROMIUM, os.X_OK):
        # scripts/test installs it; a missing browser must fail, never pass by skipping.
        pytest.fail(f"{CHROMIUM} is missing: run scripts/_browser.sh (apt-get install chromium)")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            tmp_path / "chromium-profile",
            executable_path=CHROMIUM,
            args=CHROMIUM_ARGS,
            headless=True,
            viewport=DESKTOP,
        )
        context.set_default_timeout(BROWSER_TIMEOUT_MS)
        expect.set_options(timeout=BROWSER_TIMEOUT_MS)
        try:
            yield context
        finally:
            context.close()
