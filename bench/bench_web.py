"""Web panel first page load with many runs on disk.

    python bench/bench_web.py [--runs 500] [--repeat 20] [--segments 20] [--no-browser]

Writes N runs into a temp state root through ``RunStore.save`` (so each
``run.json`` is a real, validated manifest): 80 % rendered (thumbnail.jpg,
a placeholder final.mp4, one done image job per candidate plus a clip job
per segment, as a real rendered run records), 10 % waiting for approval
(segments.json, 3 small candidate PNGs per segment, a decision on segment 0)
and 10 % failed (error record, error.json). Then starts ``WebPanel`` on port
0 and measures over real sockets (``requests``):

- ``GET /`` first, on a fresh panel: "cold" means the panel's view cache is
  empty, so every summary the index shows is read from disk (the OS page
  cache is warm: the files were just written);
- ``GET /`` median of ``--repeat`` more (the view cache answers; each request
  still lists the state directories and stats two files per shown run);
- the poll a page makes every few seconds (``X-Tandava-Fetch``), median;
- a waiting run's gallery, first and median;
- ``GET /`` first with the index's per-state limit lifted, to show what the
  limit (``web_app.INDEX_PER_STATE`` newest runs per state; the rest are paged
  under /states/<state>) saves;
- in headless Chromium (/usr/bin/chromium, if present), navigation start to
  the page's load event, cold (fresh panel) and median warm;
- ``WebPanel.start()`` and ``stop()`` (with a keep-alive connection open).

Target: first page load (cold GET /, and the browser's cold load event)
<= 500 ms. Prints one table; bounded: about 15 s with the defaults.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import requests
import structlog
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from daemon.approval.store import Approvals, ApprovalStore, Decision  # noqa: E402
from daemon.backends.base import Job  # noqa: E402
from daemon.channels.web import app as web_app  # noqa: E402
from daemon.channels.web.server import WebPanel  # noqa: E402
from daemon.config import Settings  # noqa: E402
from daemon.music.plan import Segment  # noqa: E402
from daemon.music.segments_file import write_segments  # noqa: E402
from daemon.runs import fsutil  # noqa: E402
from daemon.runs.manifest import ErrorRecord, Manifest, Song, StageProgress, StateChange, new_run_id  # noqa: E402
from daemon.runs.states import PIPELINE, State  # noqa: E402
from daemon.runs.store import RunRef, RunStore  # noqa: E402

TARGET_MS = 500.0
CHROMIUM = Path("/usr/bin/chromium")
CANDIDATES = 3


def _image_bytes(size: tuple[int, int], colour: tuple[int, int, int], fmt: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format=fmt)
    return out.getvalue()


def _path_to(state: State) -> list[State]:
    """The states a run visited to get to ``state`` (a failed run failed while rendering)."""
    if state is State.FAILED:
        return [*PIPELINE[:5], State.FAILED]
    return list(PIPELINE[: PIPELINE.index(state) + 1])


def make_runs(root: Path, runs: int, segments: int) -> dict[State, list[RunRef]]:
    """Write ``runs`` run folders spread over rendered, pending_approval and failed."""
    store = RunStore(root)
    store.ensure_layout()
    thumb = _image_bytes((64, 36), (200, 90, 20), "JPEG")
    cand = _image_bytes((32, 18), (40, 120, 160), "PNG")
    start = datetime(2026, 1, 1, tzinfo=UTC)
    made: dict[State, list[RunRef]] = {s: [] for s in State}
    for i in range(runs):
        state = State.PENDING_APPROVAL if i % 10 == 0 else State.FAILED if i % 10 == 1 else State.RENDERED
        at = start + timedelta(minutes=i)
        name = f"शिव तांडव {i:04d} 🔱.flac"
        run_id = new_run_id(at, name, f"{i:08x}" + "0" * 56)
        ref = RunRef(run_id, state, store.dir_for(state) / run_id)
        ref.path.mkdir()
        manifest = Manifest(
            run_id=run_id, created_at=at, updated_at=at, state=state,
            song=Song(original_name=name, file_name=name, size=4_000_000, sha256="0" * 64),
            history=[StateChange(state=s, at=at, note=f"{s.value} reached") for s in _path_to(state)],
        )
        for stage in ("analyze", "images", "offer", "approval", "render"):
            manifest.stages[stage] = StageProgress(
                steps_done=["decode", "beats", "plan"], attempts=1, started_at=at, finished_at=at,
                detail={"tempo": 120.0, "duration": 200.0, "segments": segments})
        for seg in range(segments):
            for c in range(CANDIDATES):
                output = f"candidates/s{seg:03d}_c{c:02d}.png"
                manifest.jobs[f"{run_id}-image-s{seg:03d}-i{c:02d}"] = Job(
                    id=f"{run_id}-image-s{seg:03d}-i{c:02d}", kind="image", backend="comfyui",
                    segment=seg, seed=1000 + seg * 10 + c, index=c, prompt="a dancing figure " * 8,
                    width=1280, height=720, output=output, status="done", detail={"round": 1})
            if state is State.RENDERED:
                manifest.jobs[f"{run_id}-clip-s{seg:03d}"] = Job(
                    id=f"{run_id}-clip-s{seg:03d}", kind="clip", backend="comfyui", segment=seg,
                    seed=seg, width=1280, height=720, frames=81, fps=16,
                    source=f"candidates/s{seg:03d}_c00.png", output=f"clips/s{seg:03d}.mp4",
                    status="done")
        if state is State.PENDING_APPROVAL:
            manifest.stages["approval"] = StageProgress(
                attempts=1, started_at=at, detail={"waiting": "waiting for a person to approve"})
            (ref.path / "candidates").mkdir()
            for seg in range(segments):
                for c in range(CANDIDATES):
                    (ref.path / f"candidates/s{seg:03d}_c{c:02d}.png").write_bytes(cand)
            write_segments(ref.path, [
                Segment(index=s, start=s * 10.0, end=(s + 1) * 10.0, beats=20, energy=0.5,
                        mood="steady", section=0, visual_prompt="Shiva dances " * 10)
                for s in range(segments)])
            ApprovalStore(store).save(ref, Approvals(decisions=[Decision(
                segment=0, candidate=1, verdict="approve", by="bench", channel="cli", at=at)]))
        elif state is State.FAILED:
            manifest.failed_from = State.APPROVED
            manifest.errors.append(ErrorRecord(
                stage="render", cause="WorkflowError", at=at,
                reason="ComfyUI at 127.0.0.1:8188 has no model 'wan2.1_i2v_480p.safetensors'",
                hint="put the model in models/diffusion_models, then tandava retry <run>"))
            fsutil.atomic_write_json(ref.path / "error.json", {"reason": "see run.json"})
        else:
            (ref.path / "thumbnail.jpg").write_bytes(thumb)
            (ref.path / "final.mp4").write_bytes(b"placeholder: the bench never plays it")
        store.save(ref, manifest)
        made[state].append(ref)
    return made


def timed(fn: Callable[[], object]) -> float:
    """Milliseconds one call of ``fn`` takes."""
    began = time.perf_counter()
    fn()
    return (time.perf_counter() - began) * 1000


def get(url: str, **headers: str) -> Callable[[], object]:
    def fetch() -> object:
        response = requests.get(url, headers=headers, timeout=30)
        response.raise_for_status()
        return response

    return fetch


def browser_loads(settings: Settings, store: RunStore, repeat: int) -> tuple[float, float] | None:
    """(cold, median warm) milliseconds from navigation start to the load event, or None."""
    if not CHROMIUM.is_file():
        return None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"]
    script = "(() => { const t = performance.getEntriesByType('navigation')[0]; return t.loadEventEnd; })()"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=args)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto("about:blank")  # the browser's own start-up is not the panel's
            with WebPanel(settings, store) as panel:
                page.goto(panel.url, wait_until="load")
                cold = float(page.evaluate(script))
                warm = []
                for _ in range(repeat):
                    page.goto(panel.url, wait_until="load")
                    warm.append(float(page.evaluate(script)))
        finally:
            browser.close()
    return cold, statistics.median(warm)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--segments", type=int, default=20, help="segments per run")
    parser.add_argument("--no-browser", action="store_true", help="skip the Chromium measurement")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))  # errors only

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "state"
        began = time.perf_counter()
        made = make_runs(root, args.runs, args.segments)
        created = time.perf_counter() - began
        store = RunStore(root)
        settings = Settings()
        settings.web.port = 0
        sizes = [(r.path / "run.json").stat().st_size for refs in made.values() for r in refs]
        counts = ", ".join(f"{len(refs)} {s.value}" for s, refs in made.items() if refs)
        print(f"{args.runs} runs ({counts}; {args.segments} segments, {CANDIDATES} candidates each); "
              f"run.json mean {statistics.mean(sizes) / 1024:.0f} KiB; written in {created:.1f} s")
        rows: list[tuple[str, float, float | None]] = []
        panel = WebPanel(settings, store)
        rows.append(("WebPanel.start() (bind, thread, uvicorn up)", timed(panel.start), None))
        keep_alive = requests.Session()
        try:
            index = panel.url
            rows.append(("GET / first (cold view cache)", timed(get(index)), TARGET_MS))
            rows.append((f"GET / median of {args.repeat} (warm)",
                         statistics.median(timed(get(index)) for _ in range(args.repeat)), None))
            rows.append((f"poll of / median of {args.repeat}", statistics.median(
                timed(get(index, **{"X-Tandava-Fetch": "1"})) for _ in range(args.repeat)), None))
            pending = made[State.PENDING_APPROVAL][0].run_id
            gallery = f"{index}runs/{requests.utils.quote(pending, safe='')}"
            rows.append(("GET /runs/<waiting run> first", timed(get(gallery)), None))
            rows.append((f"GET /runs/<waiting run> median of {args.repeat}",
                         statistics.median(timed(get(gallery)) for _ in range(args.repeat)), None))
            size = len(requests.get(index, timeout=30).content)
            keep_alive.get(index, timeout=30)  # an open connection, as a browser leaves one
        finally:
            rows.append(("WebPanel.stop() with a keep-alive connection open", timed(panel.stop), None))
        keep_alive.close()
        limit = web_app.INDEX_PER_STATE
        web_app.INDEX_PER_STATE = 10**9
        try:
            with WebPanel(settings, store) as panel:
                full = timed(get(panel.url))
                full_size = len(requests.get(panel.url, timeout=30).content)
        finally:
            web_app.INDEX_PER_STATE = limit
        rows.append((f"GET / first, every run on the index ({full_size // 1024} KiB)", full, None))
        loads = None if args.no_browser else browser_loads(settings, store, args.repeat)
        if loads is not None:
            rows.append(("Chromium load event, first (cold)", loads[0], TARGET_MS))
            rows.append((f"Chromium load event, median of {args.repeat}", loads[1], None))
        else:
            print("(no Chromium measurement: --no-browser, or /usr/bin/chromium or playwright missing)")

    print(f"index shows the newest {limit} runs per state ({size // 1024} KiB of HTML)")
    print(f"{'measurement':52} {'ms':>8} {'target':>8} {'ratio':>7}")
    for what, ms, target in rows:
        tail = f"{target:8.0f} {ms / target:6.2f}x" if target else ""
        print(f"{what:52} {ms:8.1f} {tail}")


if __name__ == "__main__":
    main()
