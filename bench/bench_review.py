"""Review mode: keystrokes and wall time to decide a 47-segment run, and what the gallery weighs.

How this works: a real panel on loopback serves a run in pending_approval with
47 segments × 4 candidates, each an 832×480 PNG of noise (about as heavy as a
real Flux candidate). Headless Chromium (Debian's, driven by Playwright):
1. opens the run and decides every segment by keyboard, one ``A`` each,
   waiting for focus to land on the next segment after each key; prints the
   keystrokes per segment and the wall time from the first page load to the
   last decision;
2. loads review mode and the every-segment grid cold and reports the bytes
   fetched before the first scroll and the time to interactive
   (``domInteractive`` of the navigation, and the load event), against the
   targets: ≤ 1 MB, ≤ 500 ms; and the same grid as it would weigh with
   full-size pictures, for the ratio.

    .venv/bin/python bench/bench_review.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from playwright.sync_api import Page, sync_playwright  # noqa: E402
from test_approval import new_pending_run  # noqa: E402

from daemon.approval import decisions  # noqa: E402
from daemon.channels.web.server import WebPanel  # noqa: E402
from daemon.config import load_settings  # noqa: E402
from daemon.runs.store import RunStore  # noqa: E402

SEGMENTS, CANDIDATES = 47, 4
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def heavy_candidates(store: RunStore, run_id: str) -> int:
    """Replace every candidate with an 832×480 noise PNG; returns their total size."""
    rng = np.random.default_rng(7)
    total = 0
    for seg in decisions.run_view(store, store.find(run_id)).segments:
        for cand in seg.candidates:
            pixels = rng.integers(0, 255, (480, 832, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(cand.image)
            total += cand.image.stat().st_size
    return total


def weight(page: Page, url: str) -> tuple[int, float, float]:
    """Bytes fetched by the first screen, domInteractive and load (ms) of a cold load."""
    page.goto(url)
    page.wait_for_load_state("load")
    page.wait_for_timeout(300)  # lazy pictures in the first screen start after load
    nav = page.evaluate("(() => { const n = performance.getEntriesByType('navigation')[0];"
                        " return [n.transferSize, n.domInteractive, n.loadEventEnd]; })()")
    resources = page.evaluate("performance.getEntriesByType('resource')"
                              ".reduce((s, r) => s + (r.transferSize || r.encodedBodySize || 0), 0)")
    return int(nav[0] + resources), float(nav[1]), float(nav[2])


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "tandava.toml").write_text(
            f'[paths]\ninbox = "{(root / "inbox").as_posix()}"\nstate_root = "{(root / "state").as_posix()}"\n'
            f'logs = "{(root / "logs").as_posix()}"\n[images]\ncandidates = {CANDIDATES}\n'
            '[web]\nport = 0\n', encoding="utf-8")
        settings = load_settings(root / "tandava.toml")
        store = RunStore(settings.paths.state_root)
        store.ensure_layout()
        ref, _ = new_pending_run(store, root, settings, segments=SEGMENTS)
        full_size = heavy_candidates(store, ref.run_id)
        with WebPanel(settings, store, poll_seconds=3.0) as panel, sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
            context = browser.new_context(viewport={"width": 1280, "height": 800})
            page = context.new_page()
            review_bytes, review_interactive, review_load = weight(page, f"{panel.url}runs/{ref.run_id}")
            grid_bytes, grid_interactive, grid_load = weight(page, f"{panel.url}runs/{ref.run_id}?view=all")
            context.close()
            context = browser.new_context(viewport={"width": 1280, "height": 800})
            page = context.new_page()
            started = time.perf_counter()
            page.goto(f"{panel.url}runs/{ref.run_id}")
            keys = 0
            for seg in range(SEGMENTS):
                page.wait_for_function("(id) => document.activeElement && document.activeElement.id === id",
                                       arg=f"c-{seg}-0", timeout=30_000)
                page.keyboard.press("a")
                keys += 1
            page.wait_for_selector("#done", timeout=30_000)
            wall = time.perf_counter() - started
            context.close()
            browser.close()
        left = decisions.run_view(store, store.find(ref.run_id)).open_segments
        assert not left, f"{len(left)} segments left open"
    per_screen = full_size / (SEGMENTS * CANDIDATES)
    print(f"review of {SEGMENTS} segments × {CANDIDATES} candidates by keyboard")
    print(f"  keystrokes: {keys} ({keys / SEGMENTS:.2f} per segment, target ≤ 2)")
    print(f"  wall time, first load → all decided: {wall:.1f} s ({wall / SEGMENTS * 1000:.0f} ms per segment)")
    print("first screen, cold, 1280×800 (target ≤ 1 MB, ≤ 500 ms to interactive)")
    print(f"  review mode: {review_bytes / 1e6:.3f} MB, interactive {review_interactive:.0f} ms, "
          f"load {review_load:.0f} ms")
    print(f"  every segment (?view=all): {grid_bytes / 1e6:.3f} MB, interactive {grid_interactive:.0f} ms, "
          f"load {grid_load:.0f} ms")
    print(f"  one full-size candidate: {per_screen / 1e6:.2f} MB; all {SEGMENTS * CANDIDATES}: "
          f"{full_size / 1e6:.0f} MB (what the old gallery linked, lazily)")


if __name__ == "__main__":
    main()
