"""The dashboard and rtis.js in a real browser (Debian's Chromium, driven by Playwright)
against a real ``rtis serve`` process."""

from __future__ import annotations

import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from .procs import Server

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install chromium; .ci/run does)"
)

WINDOWED_SQL = (
    "SELECT sensor, count(*) AS n, sum(v) AS total FROM readings"
    " GROUP BY sensor, TUMBLE(ts, INTERVAL '2' SECOND)"
)
CONFIG = f"""
[server]
database = "data.db"
durability = "normal"

[streams.events]

[streams.readings]
time_field = "ts"

[queries.per_window]
sql = "{WINDOWED_SQL}"
lateness = "0s"
"""
STATELESS_CONFIG = """
[server]
database = "data.db"
durability = "normal"

[streams.events]
"""


def windowed_queries_work() -> bool:
    from rtis.config import config_from_dict
    from rtis.errors import ConfigError
    from rtis.pipeline import compile_queries

    config = config_from_dict(
        {
            "server": {"database": "x.db"},
            "streams": {"readings": {"time_field": "ts"}},
            "queries": {"per_window": {"sql": WINDOWED_SQL, "lateness": "0s"}},
        }
    )
    try:
        compile_queries(config)
    except ConfigError:
        return False
    return True


WINDOWED = windowed_queries_work()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
            ],
        )
        yield b
        b.close()


class Page:
    """A browser page on the dashboard that records console errors."""

    def __init__(self, browser: Any, url: str, viewport: dict[str, int] | None = None) -> None:
        self.context = browser.new_context(viewport=viewport or {"width": 1280, "height": 900})
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))
        self.page.goto(url)

    def offsets(self) -> list[int]:
        values = self.page.eval_on_selector_all(
            "#tail-list li[data-offset]", "els => els.map(e => Number(e.dataset.offset))"
        )
        return [int(v) for v in values]

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def pages(browser: Any) -> Iterator[list[Page]]:
    opened: list[Page] = []
    yield opened
    for p in opened:
        p.close()


def start_server(tmp_path: Path, config: str = CONFIG, port: int = 0) -> Server:
    cfg = tmp_path / "config.toml"
    cfg.write_text(config)
    return Server(["--config", str(cfg), "--port", str(port)], tmp_path)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    s = start_server(tmp_path, CONFIG if WINDOWED else STATELESS_CONFIG)
    yield s
    s.stop()


def post(url: str, events: list[dict[str, Any]], stream: str = "events") -> dict[str, Any]:
    req = urllib.request.Request(
        f"{url}/events/{stream}",
        data=orjson.dumps(events),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 202
        result: dict[str, Any] = orjson.loads(resp.read())
        return result


def open_dashboard(browser: Any, pages: list[Page], url: str, **kw: Any) -> Page:
    page = Page(browser, url, **kw)
    pages.append(page)
    return page


def wait_live(page: Page, topic: str = "events") -> None:
    page.page.wait_for_selector('#conn[data-state="open"]', timeout=10_000)
    page.page.wait_for_selector(f'#tail[data-subscribed="{topic}"]', timeout=10_000)


def test_the_dashboard_loads_without_console_errors_also_on_a_phone(
    browser: Any, pages: list[Page], server: Server
) -> None:
    post(server.url, [{"n": i, "note": "hello"} for i in range(3)])
    if WINDOWED:
        base = (int(time.time()) // 2) * 2 - 60
        post(server.url, [{"sensor": s, "v": 1, "ts": base} for s in "ab"], "readings")
        post(server.url, [{"sensor": "a", "v": 2, "ts": base + 2}], "readings")
    ARTIFACTS.mkdir(exist_ok=True)
    for name, viewport in (
        ("dashboard", {"width": 1280, "height": 900}),
        ("dashboard-phone", {"width": 390, "height": 844}),
    ):
        page = open_dashboard(browser, pages, f"{server.url}/?tail=events", viewport=viewport)
        wait_live(page)
        page.page.wait_for_selector('#tail-list li[data-offset="3"]', timeout=5000)
        rows = page.page.locator("#topics-body tr")
        rows.first.wait_for(timeout=5000)
        assert rows.count() == (3 if WINDOWED else 1)
        page.page.wait_for_timeout(300)  # let the first polls and renders settle
        page.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
        assert page.errors == []
        # Nothing wider than the screen: readable without sideways scrolling.
        width = page.page.evaluate("document.documentElement.scrollWidth")
        assert width <= viewport["width"], f"{name}: page is {width}px wide"


def test_an_event_posted_appears_in_the_live_tail_within_a_second(
    browser: Any, pages: list[Page], server: Server
) -> None:
    page = open_dashboard(browser, pages, f"{server.url}/?tail=events")
    wait_live(page)
    t0 = time.monotonic()
    post(server.url, [{"greeting": "hello from the test"}])
    row = page.page.wait_for_selector('#tail-list li[data-offset="1"]', timeout=1000)
    elapsed = time.monotonic() - t0
    assert row is not None and "hello from the test" in row.inner_text()
    assert elapsed < 1.0
    assert page.errors == []


def test_filter_pause_and_resume_work_from_the_keyboard_exactly_once(
    browser: Any, pages: list[Page], server: Server
) -> None:
    page = open_dashboard(browser, pages, f"{server.url}/?tail=events")
    wait_live(page)
    p = page.page
    p.focus("#tail-where")
    p.keyboard.type("n % 2 = 0")
    p.keyboard.press("Enter")  # submits the form: resubscribes with where
    p.wait_for_selector("#tail-status:has-text('where n % 2 = 0')")
    post(server.url, [{"n": n} for n in range(6)])  # offsets 1..6; n even at 1, 3, 5
    p.wait_for_selector('#tail-list li[data-offset="5"]')
    assert page.offsets() == [5, 3, 1]

    p.focus("#tail-pause")
    p.keyboard.press("Space")
    p.wait_for_selector('#tail-pause[aria-pressed="true"]')
    post(server.url, [{"n": n} for n in range(6, 10)])  # offsets 7..10; even at 7, 9
    p.wait_for_timeout(300)
    assert page.offsets() == [5, 3, 1]  # paused: nothing new shown
    p.keyboard.press("Space")
    p.wait_for_selector('#tail-pause[aria-pressed="false"]')
    p.wait_for_selector('#tail-list li[data-offset="9"]')
    post(server.url, [{"n": 10}])
    p.wait_for_selector('#tail-list li[data-offset="11"]')
    assert page.offsets() == [11, 9, 7, 5, 3, 1]

    p.fill("#tail-where", "n = ")  # a bad condition is reported, not thrown
    p.keyboard.press("Enter")
    p.wait_for_selector('#tail-where[aria-invalid="true"]')
    assert "Cannot tail events" in p.inner_text("#tail-status")
    assert page.errors == []


@pytest.mark.skipif(not WINDOWED, reason="windowed queries (GROUP BY ... TUMBLE) are not built yet")
def test_the_chart_updates_when_a_window_closes(
    browser: Any, pages: list[Page], server: Server
) -> None:
    base = (int(time.time()) // 2) * 2 - 600  # event time, aligned to the 2 s windows
    post(
        server.url,
        [{"sensor": "a", "v": 1, "ts": base}, {"sensor": "b", "v": 2, "ts": base}],
        "readings",
    )
    page = open_dashboard(browser, pages, f"{server.url}/?chart=per_window&tail=readings")
    wait_live(page, "readings")
    p = page.page
    assert p.get_attribute("#chart-svg", "data-points") in (None, "0")
    # An event in the next window moves the watermark past the first one's end.
    post(server.url, [{"sensor": "a", "v": 5, "ts": base + 2.5}], "readings")
    p.wait_for_selector('#chart-svg[data-points="2"]', timeout=5000)
    assert p.locator("#chart-svg g.series").count() == 2  # one line per sensor
    assert p.locator("#chart-legend li").all_inner_texts() == ["a", "b"]
    post(server.url, [{"sensor": "b", "v": 7, "ts": base + 4.5}], "readings")
    p.wait_for_selector('#chart-svg[data-points="3"]', timeout=5000)
    assert p.get_attribute("#chart-svg", "data-windows") == "2"
    p.select_option("#chart-metric", "total")
    assert "total per window of per_window" in p.inner_text("#chart-title")
    ARTIFACTS.mkdir(exist_ok=True)
    p.locator("#chart").screenshot(path=str(ARTIFACTS / "chart.png"))
    assert page.errors == []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_after_a_server_restart_the_page_reconnects_and_shows_every_offset_once(
    browser: Any, pages: list[Page], tmp_path: Path
) -> None:
    port = free_port()
    server = start_server(tmp_path, STATELESS_CONFIG, port)
    try:
        page = open_dashboard(browser, pages, f"{server.url}/?tail=events")
        wait_live(page)
        for i in range(1, 6):
            post(server.url, [{"i": i}])
        page.page.wait_for_selector('#tail-list li[data-offset="5"]')
        server.stop()
        page.page.wait_for_selector('#conn[data-state="reconnecting"]', timeout=5000)
        server = start_server(tmp_path, STATELESS_CONFIG, port)
        # Posted before the page is back: it must catch up on these ...
        post(server.url, [{"i": i} for i in range(6, 11)])
        page.page.wait_for_selector('#conn[data-state="open"]', timeout=20_000)
        page.page.wait_for_selector('#tail-list li[data-offset="10"]', timeout=5000)
        # ... and then carry on live.
        post(server.url, [{"i": 11}])
        post(server.url, [{"i": 12}])
        page.page.wait_for_selector('#tail-list li[data-offset="12"]', timeout=5000)
        page.page.wait_for_timeout(300)  # a duplicate, if any, would have arrived by now
        assert page.offsets() == list(range(12, 0, -1))
    finally:
        server.stop()
