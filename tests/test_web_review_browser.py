"""Review mode in a real browser: keyboard only, swipes on a phone, undo, and axe-core on every page."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# The browser fixture (conftest.py) drives Debian's Chromium.
CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.is_file():
    pytest.skip(f"{CHROMIUM} is missing (.ci/run installs it)", allow_module_level=True)
pytest.importorskip("playwright.sync_api")
axe_module = pytest.importorskip("axe_playwright_python.sync_playwright")

from playwright.sync_api import Browser, Page  # noqa: E402
from test_approval import new_pending_run  # noqa: E402
from test_web import new_failed_run, new_rendered_run  # noqa: E402

from daemon.approval import decisions  # noqa: E402
from daemon.approval.store import ApprovalStore  # noqa: E402
from daemon.channels.web.server import WebPanel  # noqa: E402
from daemon.config import Settings  # noqa: E402
from daemon.runs.store import RunStore  # noqa: E402

WAIT_MS = 20_000
PHONE: dict[str, Any] = {"viewport": {"width": 375, "height": 812}, "device_scale_factor": 2,
                         "is_mobile": True, "has_touch": True}
DESKTOP: dict[str, Any] = {"viewport": {"width": 1280, "height": 800}}


@pytest.fixture
def panel(settings: Settings, store: RunStore) -> Iterator[WebPanel]:
    """A panel on 127.0.0.1, any free port, refreshing every half second."""
    settings.web.port = 0
    settings.images.candidates = 2
    with WebPanel(settings, store, poll_seconds=0.5) as running:
        yield running


def focused(page: Page) -> str:
    """The id of the element that has focus."""
    return str(page.evaluate("document.activeElement ? document.activeElement.id : ''"))


def wait_focus(page: Page, element_id: str) -> None:
    """Wait until the element with ``element_id`` has focus."""
    page.wait_for_function("(id) => document.activeElement && document.activeElement.id === id",
                           arg=element_id, timeout=WAIT_MS)


def test_a_keyboard_reviews_forty_segments_with_one_key_each(browser: Browser, panel: WebPanel,
                                                             store: RunStore, tmp_path: Path,
                                                             settings: Settings) -> None:
    """A per segment decides it; focus lands on the next segment's first candidate every time,
    and stays put when another channel decides in between."""
    ref, _ = new_pending_run(store, tmp_path, settings, segments=40)
    page = browser.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    keys = 0
    try:
        page.goto(f"{panel.url}runs/{ref.run_id}")
        wait_focus(page, "c-0-0")
        for seg in range(40):
            if seg == 20:
                decisions.decide(store, ref.run_id, "reject", 35, 1, by="cli", channel="cli")
                page.wait_for_selector("#announce:has-text('segment 35: candidate 1 rejected "
                                       "from the command line')", state="attached", timeout=WAIT_MS)
                assert focused(page) == "c-20-0"
            page.keyboard.press("a")
            keys += 1
            if seg < 39:
                wait_focus(page, f"c-{seg + 1}-0")
        page.wait_for_selector("text=Every segment is approved", timeout=WAIT_MS)
        assert problems == []
    finally:
        page.close()
    view = decisions.run_view(store, store.find(ref.run_id))
    assert [s.approved for s in view.segments] == [0] * 40
    assert keys / 40 <= 2


def test_swipes_decide_on_a_phone(browser: Browser, panel: WebPanel, store: RunStore,
                                  tmp_path: Path, settings: Settings) -> None:
    """At 375×812 with touch, a swipe right approves a candidate and a swipe left rejects one."""
    ref, _ = new_pending_run(store, tmp_path, settings, segments=2)
    context = browser.new_context(**PHONE)
    page = context.new_page()
    try:
        page.goto(f"{panel.url}runs/{ref.run_id}")
        wait_focus(page, "c-0-0")
        swipe(page, "#c-0-0 img", 120)
        wait_focus(page, "c-1-0")
        swipe(page, "#c-1-0 img", -120)
        page.wait_for_selector("#c-1-0[data-status=rejected]", timeout=WAIT_MS)
    finally:
        context.close()
    view = decisions.run_view(store, store.find(ref.run_id))
    assert view.segments[0].approved == 0
    assert view.segments[1].candidates[0].status == "rejected"


def swipe(page: Page, selector: str, dx: int) -> None:
    """A one-finger sideways swipe across an element, through the browser's touch input."""
    box = page.locator(selector).bounding_box()
    assert box is not None
    x, y = box["x"] + box["width"] / 2 - dx / 2, box["y"] + box["height"] / 2
    cdp = page.context.new_cdp_session(page)
    try:
        cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [{"x": x, "y": y}]})
        for step in range(1, 6):
            cdp.send("Input.dispatchTouchEvent",
                     {"type": "touchMove", "touchPoints": [{"x": x + dx * step / 5, "y": y}]})
        cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    finally:
        cdp.detach()


def test_undo_takes_a_decision_back_everywhere(browser: Browser, panel: WebPanel, store: RunStore,
                                               tmp_path: Path, settings: Settings) -> None:
    """U right after a decision takes it back: the segment is open again in every channel's view."""
    ref, _ = new_pending_run(store, tmp_path, settings, segments=3)
    page = browser.new_page()
    try:
        page.goto(f"{panel.url}runs/{ref.run_id}")
        wait_focus(page, "c-0-0")
        page.keyboard.press("a")
        wait_focus(page, "c-1-0")
        assert page.is_visible("#undo")
        page.keyboard.press("u")
        wait_focus(page, "c-0-0")
        page.wait_for_selector("#c-0-0[data-status=open]", timeout=WAIT_MS)
    finally:
        page.close()
    moved = store.find(ref.run_id)
    assert decisions.run_view(store, moved).segments[0].approved is None
    assert [d.verdict for d in ApprovalStore(store).load(moved).decisions] == ["approve", "undo"]


def test_approve_all_asks_once_in_the_browser(browser: Browser, panel: WebPanel, store: RunStore,
                                              tmp_path: Path, settings: Settings) -> None:
    """The button asks the question it names; "no" decides nothing, "yes" approves every open segment."""
    ref, _ = new_pending_run(store, tmp_path, settings, segments=3)
    page = browser.new_page()
    asked: list[str] = []
    try:
        page.goto(f"{panel.url}runs/{ref.run_id}")
        page.once("dialog", lambda d: (asked.append(d.message), d.dismiss()))
        page.click("form[action$=approve-all] button")
        page.wait_for_timeout(300)
        assert asked == ["Approve the first candidate of 3 open segments?"]
        assert ApprovalStore(store).load(store.find(ref.run_id)).decisions == []
        page.once("dialog", lambda d: d.accept())
        page.click("form[action$=approve-all] button")
        page.wait_for_selector("#flash:has-text('Approved 3 segment(s).')", timeout=WAIT_MS)
    finally:
        page.close()
    assert [s.approved for s in decisions.run_view(store, store.find(ref.run_id)).segments] == [0, 0, 0]


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_every_page_passes_axe(browser: Browser, panel: WebPanel, store: RunStore, tmp_path: Path,
                               settings: Settings, scheme: str, size: str) -> None:
    """axe-core (WCAG 2.1 A/AA) finds nothing serious or critical on any page, in either scheme."""
    pending, _ = new_pending_run(store, tmp_path, settings, segments=3)
    decisions.decide(store, pending.run_id, "approve", 0, 1, by="cli", channel="cli")
    failed = new_failed_run(store, tmp_path, "शिव तांडव 🔱.flac")
    rendered = new_rendered_run(store, tmp_path)
    context = browser.new_context(color_scheme=scheme, **(PHONE if size == "phone" else DESKTOP))
    page = context.new_page()
    axe = axe_module.Axe()
    found = {}
    try:
        for path in ("", f"runs/{pending.run_id}", f"runs/{pending.run_id}?view=all",
                     f"runs/{pending.run_id}?segment=0", f"runs/{failed.run_id}",
                     f"runs/{rendered.run_id}"):
            page.goto(panel.url + path)
            page.wait_for_load_state("load")
            result = axe.run(page, options={"runOnly": {"type": "tag",
                                                        "values": ["wcag2a", "wcag2aa", "wcag21a",
                                                                   "wcag21aa"]}})
            bad = [f"{v['id']}: {v['help']} ({len(v['nodes'])}× e.g. {v['nodes'][0]['html'][:120]})"
                   for v in result.response["violations"] if v["impact"] in ("serious", "critical")]
            if bad:
                found[path or "/"] = bad
    finally:
        context.close()
    assert found == {}


def test_focus_is_visible_on_a_candidate_picture(browser: Browser, panel: WebPanel, store: RunStore,
                                                 tmp_path: Path, settings: Settings) -> None:
    """Tabbing onto a candidate's picture link draws a ring inside it (not clipped away)."""
    ref, _ = new_pending_run(store, tmp_path, settings, segments=1)
    page = browser.new_page()
    try:
        page.goto(f"{panel.url}runs/{ref.run_id}?view=all")
        page.focus("#c-0-0 a.full")
        page.keyboard.press("Shift+Tab")
        page.keyboard.press("Tab")
        style = page.evaluate("(() => { const s = getComputedStyle(document.activeElement);"
                              " return [document.activeElement.className, s.outlineStyle,"
                              " s.outlineWidth, s.outlineOffset]; })()")
    finally:
        page.close()
    assert style == ["full", "solid", "3px", "-4px"]
