"""The real daemon, a real browser and the fake Home Assistant, for the dashboard tests.

Why these tests are plain (sync) tests: Playwright's sync API is bound to the thread
that started it (it runs its own asyncio loop on a greenlet), so it cannot be driven
from trio's worker threads, which change from call to call. The daemon runs as a real
``vessel serve`` subprocess, so nothing in the test process needs trio except the fake
Home Assistant, which runs in its own ``trio.run`` on a helper thread (``FakeHAThread``)
and is driven from the test with ``trio.from_thread.run``. Every wait is bounded: the
daemon's start and stop, the browser's default timeout, and each call into the fake.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import trio
from playwright.sync_api import BrowserContext, Page, ViewportSize, expect

from ..ha.fake_ha import FakeHomeAssistant

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "test-artifacts" / "screenshots"

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DESKTOP: ViewportSize = {"width": 1280, "height": 800}
PHONE: ViewportSize = {"width": 390, "height": 844}
#: The narrowest phone the dashboard is laid out for.
NARROWEST = 360

HA = "home-assistant"
#: The token the fake Home Assistant accepts.
HA_TOKEN = "secret-token"

SERVE = [sys.executable, "-m", "vessel.cli.serve", "serve"]
RUNNING = re.compile(r"vessel running on (http://127\.0\.0\.1:\d+)")
#: What ``vessel serve`` logs once every module has started (or failed to).
MODULES_STARTED = "modules started: "

#: Bounds of the waits (seconds), generous for a loaded CI machine.
START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0
#: The browser's bound for any one wait (milliseconds).
BROWSER_TIMEOUT_MS = 15_000

T = TypeVar("T")
#: ``tests/ha/fake_ha.open_fake_ha``: runs a fake Home Assistant for the block.
OpenFakeHA = Callable[..., AbstractAsyncContextManager[FakeHomeAssistant]]


@dataclass
class Daemon:
    """A running ``vessel serve``; its stderr is drained by a thread into ``lines``."""

    process: subprocess.Popen[bytes]
    url: str
    data_dir: Path
    lines: list[str] = field(default_factory=list)
    reader: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    @property
    def token(self) -> str:
        return (self.data_dir / "token").read_text().strip()

    def api(self) -> httpx.Client:
        """A REST client with the admin token (close it, or use it in ``with``)."""
        return httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=30,
            trust_env=False,
        )

    def stop(self) -> None:
        """SIGTERM, then wait (bounded); SIGKILL only if that fails, and then fail."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
            raise AssertionError(
                f"vessel serve did not stop within {STOP_TIMEOUT:g} s of SIGTERM:\n  "
                + "\n  ".join(self.lines[-30:])
            ) from None
        finally:
            # The reader ends at EOF, once the daemon and its module processes are gone.
            if self.reader is not None:
                self.reader.join(STOP_TIMEOUT)
            if self.process.stderr is not None and not (self.reader and self.reader.is_alive()):
                self.process.stderr.close()


def start_daemon(data_dir: Path, *, port: int = 0) -> Daemon:
    """``vessel serve --data-dir data_dir --port port --no-bundled``, listening."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VESSEL_")}
    env["VESSEL_LOG_LEVEL"] = "INFO"
    process = subprocess.Popen(
        [*SERVE, "--data-dir", str(data_dir), "--port", str(port), "--no-bundled"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    lines: list[str] = []
    found: list[str] = []
    running = threading.Event()

    def drain() -> None:
        # A full pipe would block the daemon: read until it closes, whatever happens.
        assert process.stderr is not None
        for raw in process.stderr:
            line = raw.decode(errors="replace").rstrip("\n")
            lines.append(line)
            if not found and (match := RUNNING.search(line)):
                found.append(match.group(1))
            # The gateway answers at once; the modules start (and compile) after it.
            if found and MODULES_STARTED in line:
                running.set()
        running.set()

    reader = threading.Thread(target=drain, name="vessel-stderr", daemon=True)
    reader.start()
    daemon = Daemon(process=process, url="", data_dir=data_dir, lines=lines, reader=reader)
    if not running.wait(START_TIMEOUT) or not found:
        daemon.stop()
        raise AssertionError(
            f"vessel serve did not report 'vessel running on' and 'modules started' within "
            f"{START_TIMEOUT:g} s:\n  " + "\n  ".join(lines[-30:])
        )
    daemon.url = found[0]
    return daemon


@contextmanager
def running_daemon(data_dir: Path, *, port: int = 0) -> Iterator[Daemon]:
    daemon = start_daemon(data_dir, port=port)
    try:
        yield daemon
    finally:
        daemon.stop()


class FakeHAThread:
    """tests/ha/fake_ha.py's server, running in its own trio loop on a helper thread."""

    def __init__(self, open_fake_ha: OpenFakeHA, token: str) -> None:
        self._open = open_fake_ha
        self._token = token
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._trio_token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._fake: FakeHomeAssistant | None = None
        self._thread = threading.Thread(target=self._main, name="fake-ha", daemon=True)

    def _main(self) -> None:
        async def serve() -> None:
            self._stop = trio.Event()
            self._trio_token = trio.lowlevel.current_trio_token()
            async with self._open(token=self._token) as fake:
                self._fake = fake
                self._started.set()
                await self._stop.wait()

        try:
            trio.run(serve)
        except BaseException as exc:  # reported to the test by start()/stop()
            self._error = exc
        finally:
            self._started.set()

    def start(self) -> None:
        self._thread.start()
        if not self._started.wait(START_TIMEOUT) or self._fake is None:
            raise AssertionError(f"the fake Home Assistant did not start: {self._error!r}")

    @property
    def fake(self) -> FakeHomeAssistant:
        """The running fake (after :meth:`start`)."""
        if self._fake is None:
            raise AssertionError("the fake Home Assistant is not running: call start() first")
        return self._fake

    def run(self, afn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``await afn(*args)`` in the fake's trio loop and return its result."""
        return trio.from_thread.run(afn, *args, trio_token=self._trio_token)

    def run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` in the fake's trio loop (reads its state safely)."""
        return trio.from_thread.run_sync(fn, *args, trio_token=self._trio_token)

    def stop(self) -> None:
        if self._stop is not None and self._thread.is_alive():
            trio.from_thread.run_sync(self._stop.set, trio_token=self._trio_token)
        self._thread.join(STOP_TIMEOUT)
        if self._thread.is_alive():
            raise AssertionError("the fake Home Assistant did not stop")
        if self._error is not None:
            raise self._error


# -- the page ----------------------------------------------------------------------------


def open_page(context: BrowserContext, daemon: Daemon) -> tuple[Page, list[str]]:
    """A new tab on the dashboard, and the list its uncaught script errors are collected
    in (tests assert there are none)."""
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(daemon.url + "/")
    return page, errors


def sign_in(page: Page, token: str) -> None:
    """Fill the sign-in form and wait until the page says it is connected."""
    page.get_by_label("Admin token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#conn")).to_have_text("Connected")


def screenshot(page: Page, name: str, *, dark: bool = False) -> None:
    """Save the page at desktop and phone width into test-artifacts/screenshots/ (and
    in dark mode at phone width if ``dark``); fail if a 360 px wide screen would have
    to scroll sideways."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.evaluate("window.scrollTo(0, 0)")  # else the sticky header lands mid-page
    try:
        for label, size in (("desktop", DESKTOP), ("phone", PHONE)):
            page.set_viewport_size(size)
            page.screenshot(path=SCREENSHOTS / f"{name}-{label}.png", full_page=True)
        if dark:
            page.emulate_media(color_scheme="dark")
            page.screenshot(path=SCREENSHOTS / f"{name}-phone-dark.png", full_page=True)
            page.emulate_media(color_scheme="light")
        page.set_viewport_size({"width": NARROWEST, "height": PHONE["height"]})
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= NARROWEST, f"{name}: {width} px wide on a {NARROWEST} px screen"
    finally:
        page.set_viewport_size(DESKTOP)
