"""The web panel in a real browser: headless Chromium (Debian's) driven by Playwright."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

# The browser fixture (conftest.py) drives Debian's Chromium.
CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.is_file():
    pytest.skip(f"{CHROMIUM} is missing (.ci/run installs it)", allow_module_level=True)
pytest.importorskip("playwright.sync_api")

from playwright.sync_api import Browser  # noqa: E402
from test_approval import gate_once, new_pending_run  # noqa: E402
from test_web import TOKEN, new_failed_run, new_rendered_run  # noqa: E402

from daemon.approval.store import ApprovalStore  # noqa: E402
from daemon.channels.web.server import WebPanel  # noqa: E402
from daemon.config import Settings  # noqa: E402
from daemon.runs.engine import Engine, Stage  # noqa: E402
from daemon.runs.states import Event, State  # noqa: E402
from daemon.runs.store import RunStore  # noqa: E402
from daemon.stages.gate import Gate  # noqa: E402

WAIT_MS = 15_000


@pytest.fixture
def panel(settings: Settings, store: RunStore) -> Iterator[WebPanel]:
    """A panel on 127.0.0.1, any free port, refreshing every half second."""
    settings.web.port = 0
    with WebPanel(settings, store, poll_seconds=0.5) as running:
        yield running


def test_approving_by_clicking_moves_the_run_on(browser: Browser, panel: WebPanel,
                                                store: RunStore, tmp_path: Path,
                                                settings: Settings) -> None:
    """A click on Approve is a web decision; the gate moves the run and the open page shows it."""
    settings.images.candidates = 2
    ref, backend = new_pending_run(store, tmp_path, settings, segments=1)
    engine = Engine(store, [Stage("approval", State.PENDING_APPROVAL, Event.ALL_APPROVED,
                                  Gate(settings, lambda s, j: backend))], tick_seconds=0.05)
    stop = threading.Event()
    worker = threading.Thread(target=engine.run, args=(stop,), name="engine")
    worker.start()
    page = browser.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
    try:
        page.goto(panel.url)
        page.click(f"#run-{ref.run_id} a.btn")
        page.click("#c-0-1 button[value=approve]")
        page.wait_for_selector("#flash:has-text('Approved segment 0 candidate 1.')", timeout=WAIT_MS)
        page.wait_for_selector("text=Every segment is approved: clips and the video are being made.",
                               timeout=WAIT_MS)
        assert page.inner_text("main .badge") == "Approved, rendering"
        assert problems == []  # no script error, no Content-Security-Policy violation
    finally:
        page.close()
        stop.set()
        worker.join(30)
    moved = store.find(ref.run_id)
    assert moved.state is State.APPROVED
    log = ApprovalStore(store).load(moved).decisions
    assert [(d.segment, d.candidate, d.channel) for d in log] == [(0, 1, "web")]


def test_beyond_loopback_the_token_is_required_and_foreign_posts_fail(
        browser: Browser, settings: Settings, store: RunStore, tmp_path: Path) -> None:
    """Without the token the browser gets 401; with it the panel works; another site cannot post."""
    settings.web.host, settings.web.port = "0.0.0.0", 0
    settings.web.token = type(settings.web.token)(TOKEN)
    ref, _ = new_pending_run(store, tmp_path, settings, segments=1)
    with WebPanel(settings, store) as panel:
        context = browser.new_context()
        page = context.new_page()
        try:
            refused = page.goto(panel.url)
            assert refused is not None and refused.status == 401
            assert "needs its token" in page.inner_text("main")
            allowed = page.goto(f"{panel.url}?token={TOKEN}")
            assert allowed is not None and allowed.status == 200 and page.url == panel.url
            assert ref.run_id in page.inner_text("main")
            csrf = page.get_attribute("meta[name=csrf-token]", "content")
            evil = (f'<form method="post" action="{panel.url}runs/{ref.run_id}/approve-all">'
                    f'<input type="hidden" name="csrf" value="{csrf}"><button>win</button></form>')
            page.route("http://evil.test/**", lambda route: route.fulfill(
                body=evil, content_type="text/html; charset=utf-8"))
            page.goto("http://evil.test/")
            with page.expect_response(lambda r: "/approve-all" in r.url) as answer:
                page.click("button")
            assert answer.value.status in (401, 403)
        finally:
            context.close()
    assert ApprovalStore(store).load(store.find(ref.run_id)).decisions == []


def test_every_page_fits_a_phone_without_horizontal_scroll(browser: Browser, panel: WebPanel,
                                                           store: RunStore, tmp_path: Path,
                                                           settings: Settings) -> None:
    """At 375×812 no page scrolls sideways, buttons are big enough to tap, and the video loads."""
    pending, backend = new_pending_run(store, tmp_path, settings, segments=2)
    gate_once(store, settings, backend)  # its waiting reason, with actions in the sentence
    failed = new_failed_run(store, tmp_path, "शिव तांडव 🔱 " * 4 + ".flac",
                            reason="ComfyUI at http://127.0.0.1:8188 has no model "
                                   "'flux1-dev-fp8-e4m3fn-with-a-very-long-name.safetensors'",
                            hint="Put the model in models/unet, then run `tandava retry <run>`.")
    rendered = new_rendered_run(store, tmp_path)
    context = browser.new_context(viewport={"width": 375, "height": 812}, device_scale_factor=2,
                                  is_mobile=True, has_touch=True)
    page = context.new_page()
    try:
        for path in ("", f"runs/{pending.run_id}", f"runs/{failed.run_id}", f"runs/{rendered.run_id}"):
            page.goto(panel.url + path)
            page.wait_for_load_state("load")
            widths = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
            assert widths[0] <= widths[1] == 375, (path, widths)
            smallest = page.evaluate(
                "Math.min(...[...document.querySelectorAll('button, a.btn, a.inline')]"
                ".map(b => b.getBoundingClientRect().height), 99)")
            assert smallest >= 44, (path, smallest)
        if page.evaluate("document.createElement('video').canPlayType('video/mp4; codecs=\"avc1.42E01E\"')"):
            page.wait_for_function("document.querySelector('video').readyState >= 1", timeout=WAIT_MS)
            assert 0.5 < page.evaluate("document.querySelector('video').duration") < 2
    finally:
        context.close()


def test_failed_runs_are_folded_and_forgotten_by_a_click(browser: Browser, panel: WebPanel,
                                                          store: RunStore, tmp_path: Path) -> None:
    """Failed runs come folded; unfolded, a click on Forget archives one and the page shows one less."""
    first = new_failed_run(store, tmp_path, "first broken.mp3")
    new_failed_run(store, tmp_path, "second broken.mp3")
    page = browser.new_page()
    try:
        page.goto(panel.url)
        assert page.locator("#failed details").get_attribute("open") is None
        forget = page.locator(f"#run-{first.run_id} button:has-text('Forget')")
        assert not forget.is_visible()
        page.locator("#failed summary").click()
        forget.click()
        page.wait_for_selector("#failed h2:has-text('(1)')", timeout=WAIT_MS)
        assert "archive/" in (page.locator("#flash").text_content() or "")
    finally:
        page.close()
    assert (store.root / "archive" / first.run_id / "first broken.mp3").is_file()
