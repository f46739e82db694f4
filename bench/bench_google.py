"""Google backends: requests per Veo clip, daemon overhead per job, and the estimate against the billing.

    python bench/bench_google.py [--songs 3] [--jobs 5]

Everything runs against ``tests/fakegoogle`` (the wire formats google-genai
3.6.1 speaks, on a real socket):

1. **Requests per clip** for a 90 s operation with the default poll schedule
   (first poll at ``poll_first_seconds``, then every ``poll_every_seconds``):
   counted on the fake with the schedule and the operation scaled down 10×
   (9 s), which sends the same requests as the full-size one. A Vertex
   clip comes back inline in the last poll, so there is no download request.
2. **Daemon overhead per job** beyond the fake's time: a Veo clip's wall time
   from submit to a conformed clip on disk minus the operation's own time, and
   a Gemini image's wall time minus the fake's handling, medians of N jobs.
   The clip's overhead includes one poll interval at most, the base64 decode
   and the ffmpeg conform (fps, size, no audio).
3. **The estimate's error** against the fake's billing on N synthesized songs
   taken through the whole pipeline (gemini candidates, auto approval, veo
   clips in interpolate mode): the estimate written before the first paid job
   against the fake's billed images and seconds at the same prices. Target: 0.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import structlog

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from fakegoogle import FakeGoogle  # noqa: E402
from google_helpers import google_settings  # noqa: E402
from PIL import Image  # noqa: E402

from daemon import defaults  # noqa: E402
from daemon.backends.base import Job, noop_progress  # noqa: E402
from daemon.backends.google.client import Route  # noqa: E402
from daemon.backends.google.costs import Ledger, read_cost  # noqa: E402
from daemon.backends.google.images import GeminiImageBackend  # noqa: E402
from daemon.backends.google.operations import polls_for  # noqa: E402
from daemon.backends.google.veo import VeoBackend  # noqa: E402
from daemon.config import GoogleConfig  # noqa: E402
from daemon.video import media  # noqa: E402

SCALE = 10.0


def _clip_job(folder: Path, n: int) -> Job:
    run = folder / "run"
    (run / "candidates").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (832, 480), (90, 40, 160)).save(run / "candidates" / "a.png")
    return Job(id=f"run-clip-s{n:03d}-i00-7", kind="clip", backend="veo", segment=n, seed=7, prompt="zoom",
               width=832, height=480, frames=81, fps=16, source=str(run / "candidates" / "a.png"),
               output=str(run / "clips" / f"s{n:03d}_p00.mp4"))


def requests_per_clip(folder: Path) -> tuple[int, int]:
    """(requests counted on the fake, requests the schedule predicts) for a 90 s operation."""
    with FakeGoogle(op_seconds=90 / SCALE) as fake:
        cfg = GoogleConfig(route="vertex", project="bench", credentials_file=fake.authorized_user_file(folder),
                           base_url=fake.url, poll_first_seconds=defaults.GOOGLE_POLL_FIRST_SECONDS / SCALE,
                           poll_every_seconds=defaults.GOOGLE_POLL_EVERY_SECONDS / SCALE)
        backend = VeoBackend(Route(cfg, ""), Ledger(folder / "state", cfg), ffmpeg=media.find_ffmpeg(), fps=16)
        job = _clip_job(folder, 0)
        backend.submit(job)
        backend.collect(job, progress=noop_progress, stop=threading.Event())
        backend.route.close()
        counted = len([c for c in fake.calls if "/v1beta1/" in c["path"]])
    predicted = 1 + polls_for(90, defaults.GOOGLE_POLL_FIRST_SECONDS, defaults.GOOGLE_POLL_EVERY_SECONDS)
    return counted, predicted


def overhead(folder: Path, jobs: int) -> tuple[float, float, float]:
    """Median ms beyond the fake's time: per Veo clip, of which the ffmpeg conform; per Gemini image."""
    op = 0.5
    clips, images, conforms = [], [], []
    with FakeGoogle(op_seconds=op) as fake:
        cfg = GoogleConfig(route="vertex", project="bench", credentials_file=fake.authorized_user_file(folder),
                           base_url=fake.url, poll_first_seconds=op, poll_every_seconds=0.02)
        ledger = Ledger(folder / "state", cfg)
        veo = VeoBackend(Route(cfg, ""), ledger, ffmpeg=media.find_ffmpeg(), fps=16)
        gemini = GeminiImageBackend(Route(cfg, ""), ledger, references=[])
        conform = veo._conform

        def timed(raw: Path, job: Job, output: Path) -> None:
            started = time.perf_counter()
            conform(raw, job, output)
            conforms.append((time.perf_counter() - started) * 1000)

        veo._conform = timed  # type: ignore[method-assign]
        for n in range(jobs):
            job = _clip_job(folder, n)
            started = time.perf_counter()
            veo.submit(job)
            veo.collect(job, progress=noop_progress, stop=threading.Event())
            clips.append((time.perf_counter() - started - op) * 1000)
            image = Job(id=f"img{n}", kind="image", backend="gemini", segment=n, seed=0, prompt="Shiva",
                        width=832, height=480, output=str(folder / "run" / "candidates" / f"i{n}.png"))
            started = time.perf_counter()
            gemini.collect(image, progress=noop_progress, stop=threading.Event())
            images.append((time.perf_counter() - started) * 1000)
        veo.route.close()
    return statistics.median(clips), statistics.median(conforms), statistics.median(images)


def estimate_error(folder: Path, songs: int) -> list[tuple[float, float]]:
    """(estimate, billed) in USD per song taken through the whole pipeline."""
    from daemon.app import run
    from daemon.music.synth import write_song
    from daemon.runs.states import State
    from daemon.runs.store import RunStore

    results = []
    for n in range(songs):
        song_dir = folder / f"song{n}"
        song_dir.mkdir()
        with FakeGoogle(op_seconds=0.05) as fake:
            settings = google_settings(song_dir, fake, extra="[analysis]\nsegments = \"dynamic\"\n")
            settings.paths.inbox.mkdir(parents=True)
            song = settings.paths.inbox / f"song{n}.wav"
            write_song(song, 10.0 + 7 * n, 100.0 + 15 * n, section_change_at=5.0 + 3 * n)
            old = time.time() - 60
            os.utime(song, (old, old))
            run(settings, threading.Event(), once=True)
            [ref] = RunStore(settings.paths.state_root).iter_runs([State.RENDERED])
            estimate = float(read_cost(ref.path)["estimate"]["usd"])
            cfg = settings.google
            billed = fake.billed_images * cfg.prices[cfg.image_model].image + \
                fake.billed_seconds * cfg.prices[cfg.veo_model].second
            results.append((estimate, billed))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--songs", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=5)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    for name in ("GOOGLE_API_KEY", "GEMINI_API_KEY"):
        os.environ.pop(name, None)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        counted, predicted = requests_per_clip(folder)
        print(f"requests per clip, 90 s operation (first poll {defaults.GOOGLE_POLL_FIRST_SECONDS:g} s, then every "
              f"{defaults.GOOGLE_POLL_EVERY_SECONDS:g} s): {counted} on the fake (submit + polls, the video "
              f"inline in the last poll); schedule predicts {predicted}")
        (folder / "overhead").mkdir()
        clip_ms, conform_ms, image_ms = overhead(folder / "overhead", args.jobs)
        print(f"daemon overhead per job (median of {args.jobs}): veo clip {clip_ms:.0f} ms beyond the operation, "
              f"of which {conform_ms:.0f} ms the ffmpeg conform (81 frames, 832x480, no audio); the rest is "
              f"polling (20 ms steps), base64 and the ledger; gemini image {image_ms:.0f} ms including the "
              "fake's reply (decode, crop, PNG write, ledger)")
        print(f"load average while measuring: {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "")
        worst = 0.0
        for n, (estimate, billed) in enumerate(estimate_error(folder, args.songs)):
            error = estimate - billed
            worst = max(worst, abs(error))
            print(f"song {n}: estimate ${estimate:.4f}, billed by the fake ${billed:.4f}, error ${error:+.4f}")
        print(f"estimate error, worst of {args.songs} songs: ${worst:.4f} (target: exact)")


if __name__ == "__main__":
    main()
