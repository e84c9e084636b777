"""The demo page in a real headless Chromium: two pages chat, one publishes, one watches.

Needs Playwright's Python package (the ``test`` extra) and the Debian ``chromium``
package at ``/usr/bin/chromium`` (``scripts/test`` installs it). No browser is
downloaded: Playwright drives the system's Chromium. Missing either is a failure, not a
skip.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, sync_playwright
from playwright.sync_api import expect as pw_expect

from spoc_sockets import Router
from spoc_sockets._connection import ServerConnection
from spoc_sockets.asyncio import Server, serve
from spoc_sockets.demo.app import demo_router, static_handler

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
    # a synthetic camera, granted without asking
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
]
TIMEOUT_MS = 20_000


CLIENT_MODULE = "/spoc-client.js"


def serving_the_client(router: Router) -> Router:
    """``router``, serving the browser client at ``/spoc-client.js`` (the demo page
    imports it) where the router does not serve it already."""
    if router.http_handler(CLIENT_MODULE) is None:
        handler = static_handler("spoc-client.js", "text/javascript; charset=utf-8")
        router.add_http(CLIENT_MODULE, handler)
    return router


class DemoServer:
    """A router (the demo's by default) served by the asyncio adapter in a background
    thread."""

    def __init__(self, router: Router | None = None) -> None:
        # the demo serves the client itself; a test's own router gets it added
        self.router = demo_router() if router is None else serving_the_client(router)
        self.port = 0
        self.server: Server | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="demo-server", daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported by start()
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with serve(self.router, "127.0.0.1", 0) as server:
            self.server = server
            self.port = server.port
            self._ready.set()
            await self._stop.wait()

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(timeout=20) or self._error is not None:
            raise RuntimeError(f"the demo server did not start: {self._error!r}")

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=30)
        assert not self._thread.is_alive(), "the demo server did not stop"

    def drop(self, which: Callable[[ServerConnection], bool]) -> int:
        """Drops (aborts, without a closing handshake) the transports of the upgraded
        connections ``which`` selects, as a crash or a network cut would; returns how many."""
        loop, server = self._loop, self.server
        assert loop is not None and server is not None
        future: Future[int] = Future()

        def abort() -> None:
            chosen = [c for c in server.hub.connections if c.connection and which(c)]
            for conn in chosen:
                conn.transport.close(loop.time())  # type: ignore[union-attr]
            future.set_result(len(chosen))

        loop.call_soon_threadsafe(abort)
        return future.result(timeout=10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"


@pytest.fixture(scope="module")
def server() -> Iterator[DemoServer]:
    demo = DemoServer()
    demo.start()
    try:
        yield demo
    finally:
        demo.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: install the Debian package 'chromium' "
            "(scripts/test does it: apt-get install -y --no-install-recommends chromium)"
        )
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def pages(browser: Browser, server: DemoServer) -> Iterator[tuple[Page, Page]]:
    """Two pages, each in its own context (like two people), on the demo page."""
    contexts = [browser.new_context(), browser.new_context()]
    opened: list[Page] = []
    errors: list[str] = []
    try:
        for context in contexts:
            page = context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(server.url)
            opened.append(page)
        yield opened[0], opened[1]
        assert errors == [], f"JavaScript errors on the page: {errors}"
    finally:
        for context in contexts:
            context.close()


def wait_for(page: Page, condition: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    """Poll ``condition`` (which evaluates something in the page) until it is truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what} (last: {value!r})")
        page.wait_for_timeout(200)  # lets the page's events run meanwhile


def user(name: str) -> re.Pattern[str]:
    """The user id the demo's token route gives to someone who asked for ``name``."""
    return re.compile(rf"^{name}-[0-9a-f]{{6}}$")


def join(page: Page, name: str) -> None:
    page.fill("#name", name)
    page.click("#join")
    pw_expect(page.locator("#chat-status")).to_have_text(re.compile(rf"^in lobby as {name}-"))


def test_page_is_served(pages: tuple[Page, Page]) -> None:
    page, _ = pages
    assert page.title() == "spoc_sockets demo"
    assert page.locator("#chat h2").inner_text().startswith("Chat")
    assert (
        page.evaluate("getComputedStyle(document.documentElement).backgroundColor")
        != "rgba(0, 0, 0, 0)"
    )


def test_two_pages_chat(pages: tuple[Page, Page]) -> None:
    alice, bob = pages
    join(alice, "alice")
    join(bob, "bob")
    pw_expect(alice.locator("#members li")).to_have_text([user("alice"), user("bob")])

    alice.fill("#text", "hello from alice")
    alice.click("#post")
    pw_expect(bob.locator("#messages li.message").last).to_contain_text("hello from alice")
    pw_expect(bob.locator("#messages li.message").last.locator(".user")).to_have_text(user("alice"))

    bob.fill("#text", "hi alice, bob here")
    bob.press("#text", "Enter")
    pw_expect(alice.locator("#messages li.message").last).to_contain_text("hi alice, bob here")
    pw_expect(alice.locator("#messages li.message").last.locator(".user")).to_have_text(user("bob"))

    bob.click("#leave")
    pw_expect(alice.locator("#members li")).to_have_text([user("alice")])


def video_time(page: Page) -> float:
    return float(page.evaluate("document.getElementById('viewer').currentTime"))


def test_watch_a_published_animation(pages: tuple[Page, Page]) -> None:
    publisher, viewer = pages
    viewer.click("#watch")
    pw_expect(viewer.locator("#watch-status")).to_have_text("connected: waiting for a publisher")
    publisher.click("#publish-canvas")
    pw_expect(publisher.locator("#publish-status")).to_contain_text("publishing")

    wait_for(viewer, lambda: video_time(viewer) > 1.0, "the viewer's video to play past 1 s")
    assert viewer.evaluate("window.demo.view.error") is None
    assert publisher.evaluate("window.demo.pub.restarts") == 0

    publisher.click("#stop-publish")
    pw_expect(viewer.locator("#watch-status")).to_have_text(
        "the stream ended: waiting for the next publisher"
    )
    viewer.click("#stop-watch")


def test_late_viewer_gets_a_restarted_recording(pages: tuple[Page, Page]) -> None:
    """Joining after publishing started: the publisher restarts its recording, and both
    the new viewer and the existing one play the new one."""
    publisher, viewer = pages
    publisher.click("#publish-canvas")
    wait_for(publisher, lambda: publisher.evaluate("window.demo.pub.chunks") >= 5, "chunks")

    viewer.click("#watch")
    wait_for(publisher, lambda: publisher.evaluate("window.demo.pub.restarts") >= 1, "a restart")
    wait_for(viewer, lambda: video_time(viewer) > 1.0, "the late viewer's video to play")
    assert viewer.evaluate("window.demo.view.error") is None

    publisher.click("#stop-publish")
    viewer.click("#stop-watch")


def test_watch_the_camera(pages: tuple[Page, Page]) -> None:
    """The camera path (getUserMedia), with Chromium's synthetic camera."""
    publisher, viewer = pages
    viewer.click("#watch")
    pw_expect(viewer.locator("#watch-status")).to_have_text("connected: waiting for a publisher")
    publisher.click("#publish-camera")
    pw_expect(publisher.locator("#publish-status")).to_contain_text("publishing")
    pw_expect(publisher.locator("#preview")).to_be_visible()
    wait_for(viewer, lambda: video_time(viewer) > 1.0, "the viewer's video to play past 1 s")
    publisher.click("#stop-publish")
    viewer.click("#stop-watch")


def test_second_publisher_is_refused(pages: tuple[Page, Page]) -> None:
    first, second = pages
    first.click("#publish-canvas")
    pw_expect(first.locator("#publish-status")).to_contain_text("publishing")
    second.click("#publish-canvas")
    pw_expect(second.locator("#publish-status")).to_have_text(
        "the server refused to publish (is someone else publishing this stream?)"
    )
    pw_expect(second.locator("#publish-canvas")).to_be_enabled()
    first.click("#stop-publish")
    pw_expect(first.locator("#publish-status")).to_have_text("stopped")


def test_screenshot(pages: tuple[Page, Page], tmp_path: Path) -> None:
    """The page renders at a desktop size (the image is kept for a look by a human)."""
    page, _ = pages
    page.set_viewport_size({"width": 1280, "height": 860})
    join(page, "alice")
    page.fill("#text", "hello")
    page.click("#post")
    page.click("#publish-canvas")
    page.click("#watch")
    wait_for(page, lambda: video_time(page) > 1.0, "the page to show its own stream")
    shot = tmp_path / "demo.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    page.click("#stop-publish")
    page.click("#stop-watch")
