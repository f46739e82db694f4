"""The ComfyUI pool's scheduling against the fake server: makespan, idle gaps, model swaps.

    python bench/bench_comfy.py [--jobs 200] [--job-seconds 0.05] [--runs 4]
                                [--songs 5] [--swap-seconds 0.2] [--check-seconds 1.0]

Everything runs against ``tests/fakecomfy`` (ComfyUI's wire protocol on a real
socket, no GPU) through the daemon's own path: ``Pool`` built as
``ComfyBackends.open`` builds it (default ``[comfy]`` settings, ``Pool``
defaults, ``check_seconds`` from the command line), jobs queued with
``ComfyImageBackend.submit`` / ``ComfyVideoBackend.submit`` and collected with
``collect`` (wait + download through ``/view``), the way stages do. A job on
the fake takes ``job_seconds``, shared by the nodes it does not find cached (no
per-node overrides); PNGs are 64x48 and clips 5 frames of 64x48, so writing
outputs is cheap. Times on the servers are the fake's own epoch-ms stamps of
``execution_start`` and the job's end message (``FakeComfy.timestamps``).

1. Scheduler efficiency, 1 and 2 servers (two ``FakeComfy``): N Flux image
   jobs (200) split over R runs (4 threads); each run submits all its jobs,
   then collects them in order. Before timing, warm-up jobs make every server
   pass preflight once (a one-off per server start). Ideal = sum of the job
   times the servers measured / servers. Reported: server makespan (first
   execution_start -> last end) / ideal, and wall makespan (first submit ->
   last job downloaded, so our queueing, events and downloads count) / ideal.
   Target <= 1.02 each.
2. Idle gap on each server between one job's end and the next one's start,
   from the same run: median, p95, max. Target: median <= 5 ms (a real
   ComfyUI's own gap is 0-1 ms).
3. Model swaps, 1 server with ``swap_seconds`` (0.2 s standing in for the tens
   of seconds a 14B video model takes): 5 songs, each 6 Flux images, then 6
   Wan clips (5 frames) from a small start image, in two arrival patterns:
   (a) all queued at once, song after song (images, clips, images, ...),
   collected by R threads; (b) the daemon's shape: R concurrent runs, songs
   arriving every 3 job times, each run submitting its images, collecting
   them, then submitting and collecting its clips. Once grouped by model
   (``group_by_model=True``, ours) and once plain first in, first out.
   Reported: models loaded (``fake.swaps``, the first load included), swaps
   (changes of model), the pool's own count, and the makespan. Target: the
   minimum: (a) 1 swap; (b) 2*ceil(songs/R) - 1 swaps (a run holds its slot
   until its clips are done, so songs past the first R start only after a Wan
   phase: at most R songs finish per Wan phase).

Prints compact tables with the ratios and targets, measured in one run (no
timing assertions). Bounded: about 40 s with the defaults.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import structlog
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from comfy_helpers import FLUX, WAN, clip_job, image_job, models_for  # noqa: E402
from fakecomfy.server import FakeComfy  # noqa: E402

from daemon.backends import Job, noop_progress  # noqa: E402
from daemon.comfy.backend import ComfyImageBackend, ComfyVideoBackend  # noqa: E402
from daemon.comfy.client import ComfyClient  # noqa: E402
from daemon.comfy.pool import Pool, Server  # noqa: E402
from daemon.comfy.supervisor import RemoteComfy  # noqa: E402
from daemon.config import ComfyConfig  # noqa: E402

MODELS = models_for(FLUX, WAN)
TARGET_RATIO = 1.02
TARGET_GAP_MS = 5.0
IMAGES_PER_SONG = 6
CLIPS_PER_SONG = 6
WARMUP_ROUNDS = 5


def g3(value: float) -> str:
    """Three significant digits."""
    return f"{value:.3g}"


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def make_fake(root: Path, job_seconds: float, swap_seconds: float = 0.0) -> FakeComfy:
    """A started fake whose jobs take ``job_seconds``, spent in one sleep of the sampler.

    The fake shares ``job_seconds`` among uncached nodes and a progress node
    sleeps once per step; each asyncio sleep overshoots by about 1 ms, so 20
    sampler steps would add ~15 ms to a 50 ms job. Both workflows have one
    ``KSampler``: it gets all the time, in one sleep, and reports no steps.
    """
    fake = FakeComfy(root, models=MODELS, job_seconds=0.0, node_seconds={"KSampler": job_seconds},
                     swap_seconds=swap_seconds)
    fake.progress_nodes = set()
    return fake.start()


def open_pool(fakes: list[FakeComfy], *, check_seconds: float, group_by_model: bool = True) -> Pool:
    """A started pool over the fakes, built as ``ComfyBackends.open`` builds the daemon's."""
    cfg = ComfyConfig()
    servers = [
        Server(ComfyClient(f.url, client_id="tandava-bench", timeout=cfg.request_timeout_seconds),
               RemoteComfy(f.url, health_timeout=cfg.health_timeout_seconds), name=f.url)
        for f in fakes
    ]  # fmt: skip
    # Admission keeps its defaults (the default [comfy] vram_margin_gb, no Ollama).
    pool = Pool(servers, silence_seconds=cfg.silence_seconds, check_seconds=check_seconds,
                group_by_model=group_by_model).start()
    deadline = time.monotonic() + 15.0
    while not all(s.up and s.listener is not None and s.listener.connected for s in servers):
        if time.monotonic() > deadline:
            pool.stop()
            raise RuntimeError("the pool did not see every fake server up and connected")
        time.sleep(0.01)
    return pool


def run_jobs(backend_of: Callable[[Job], ComfyImageBackend], jobs: list[Job]) -> None:
    """Submit all, then collect in order (what one stage does for one run)."""
    stop = threading.Event()
    for job in jobs:
        backend_of(job).submit(job)
    for job in jobs:
        backend_of(job).collect(job, progress=noop_progress, stop=stop)


def server_times(fake: FakeComfy, ids: set[str]) -> list[tuple[int, int]]:
    """(start, end) epoch-ms of the given prompts on one fake, in start order."""
    spans = []
    for prompt_id, stamps in fake.timestamps.items():
        if prompt_id not in ids:
            continue
        ends = [v for k, v in stamps.items() if k != "execution_start"]
        if not ends:
            raise RuntimeError(f"{prompt_id} has no end stamp on {fake.url}")
        spans.append((stamps["execution_start"], ends[0]))
    return sorted(spans)


# -- 1 and 2: efficiency and idle gaps -------------------------------------------------------


@dataclass
class Efficiency:
    """One run of part 1, in seconds (``gaps`` in server ms)."""

    job: float  # mean job time on the servers
    ideal: float  # sum of job times / servers
    server: float  # first execution_start -> last end
    wall: float  # first submit -> last download
    lead: float  # first submit -> first execution_start
    tail: float  # last end -> last download
    split: list[int]  # jobs per server
    gaps: list[int]


def efficiency(backends: int, args: argparse.Namespace, tmp: Path) -> Efficiency:
    fakes = [make_fake(tmp / f"comfy{i}", args.job_seconds) for i in range(backends)]
    try:
        pool = open_pool(fakes, check_seconds=args.check_seconds)
        try:
            images = ComfyImageBackend(pool, FLUX)
            out = tmp / "out"
            # Warm-up: every server passes preflight (fetches /object_info) once, not timed.
            for round_ in range(WARMUP_ROUNDS):
                warm = [image_job(900 + 10 * round_ + i, out) for i in range(2 * backends)]
                run_jobs(lambda _job: images, warm)
                if all(FLUX.name in s.checked for s in pool.servers):
                    break
            else:
                raise RuntimeError("warm-up did not reach every server")
            jobs = [image_job(n, out) for n in range(args.jobs)]
            per_run = [jobs[r :: args.runs] for r in range(args.runs)]
            t0 = time.time()
            with ThreadPoolExecutor(max_workers=args.runs) as ex:
                for future in [ex.submit(run_jobs, lambda _job: images, part) for part in per_run]:
                    future.result()
            t1 = time.time()
        finally:
            pool.stop()
    finally:
        for fake in fakes:
            fake.stop()
    ids = {job.id for job in jobs}
    spans = [server_times(f, ids) for f in fakes]
    counted = sum(len(s) for s in spans)
    if counted != len(jobs):
        raise RuntimeError(f"the servers ran {counted} of {len(jobs)} jobs")
    busy_ms = sum(end - start for per in spans for start, end in per)
    first = min(per[0][0] for per in spans if per)
    last = max(per[-1][1] for per in spans if per)
    gaps = [b[0] - a[1] for per in spans for a, b in zip(per, per[1:], strict=False)]
    return Efficiency(
        job=busy_ms / 1000 / len(jobs), ideal=busy_ms / 1000 / backends,
        server=(last - first) / 1000, wall=t1 - t0, lead=first / 1000 - t0, tail=t1 - last / 1000,
        split=[len(s) for s in spans], gaps=gaps,
    )  # fmt: skip


# -- 3: model swaps ----------------------------------------------------------------------------


def song_jobs(song: int, tmp: Path, start: Path) -> tuple[list[Job], list[Job]]:
    base = song * IMAGES_PER_SONG
    images = [image_job(base + i, tmp) for i in range(IMAGES_PER_SONG)]
    clips = [clip_job(base + i, tmp, start, frames=5) for i in range(CLIPS_PER_SONG)]
    return images, clips


def swaps(pattern: str, grouped: bool, args: argparse.Namespace, tmp: Path) -> dict[str, float]:
    tmp.mkdir(parents=True)
    start = tmp / "approved.png"
    Image.new("RGB", (64, 48), (200, 120, 40)).save(start)
    fake = make_fake(tmp / "comfy", args.job_seconds, args.swap_seconds)
    try:
        pool = open_pool([fake], check_seconds=args.check_seconds, group_by_model=grouped)
        try:
            image_backend, video_backend = ComfyImageBackend(pool, FLUX), ComfyVideoBackend(pool, WAN)

            def backend_of(job: Job) -> ComfyImageBackend:
                return video_backend if job.kind == "clip" else image_backend

            songs = [song_jobs(k, tmp / f"song{k}", start) for k in range(args.songs)]
            t0 = time.monotonic()
            if pattern == "queued":
                ordered = [job for images, clips in songs for job in (*images, *clips)]
                for job in ordered:
                    backend_of(job).submit(job)
                per_run = [[j for k in range(r, args.songs, args.runs) for j in (*songs[k][0], *songs[k][1])]
                           for r in range(args.runs)]
                with ThreadPoolExecutor(max_workers=args.runs) as ex:
                    for future in [ex.submit(run_jobs, backend_of, part) for part in per_run]:
                        future.result()
            else:
                slots = threading.Semaphore(args.runs)
                gap = 3 * args.job_seconds

                def song(k: int) -> None:
                    time.sleep(max(0.0, t0 + k * gap - time.monotonic()))
                    with slots:  # one of R concurrent runs, from its images to its last clip
                        run_jobs(backend_of, songs[k][0])
                        run_jobs(backend_of, songs[k][1])

                with ThreadPoolExecutor(max_workers=args.songs) as ex:
                    for future in [ex.submit(song, k) for k in range(args.songs)]:
                        future.result()
            makespan = time.monotonic() - t0
            pool_swaps = pool.swaps
        finally:
            pool.stop()
    finally:
        fake.stop()
    waves = 1 if pattern == "queued" else math.ceil(args.songs / args.runs)
    return {"loads": fake.swaps, "swaps": fake.swaps - 1, "pool": pool_swaps,
            "min": 2 * waves - 1, "makespan": makespan}


# -- main --------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200, help="image jobs for parts 1 and 2")
    parser.add_argument("--job-seconds", type=float, default=0.05, help="the fake's time per job")
    parser.add_argument("--runs", type=int, default=4, help="concurrent runs (collecting threads)")
    parser.add_argument("--songs", type=int, default=5, help="songs for part 3")
    parser.add_argument("--swap-seconds", type=float, default=0.2, help="the fake's model load time")
    parser.add_argument("--check-seconds", type=float, default=1.0,
                        help="the pool's monitor interval (Pool default 1.0, as the daemon runs)")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))  # errors only

    with tempfile.TemporaryDirectory(prefix="tandava-bench-comfy-") as tmp_dir:
        tmp = Path(tmp_dir)
        print(f"1. Scheduler efficiency: {args.jobs} Flux jobs of {g3(args.job_seconds)} s on the "
              f"fake (64x48), {args.runs} runs submit all then collect in order; "
              f"check_seconds={g3(args.check_seconds)}")
        print(f"{'servers':>7} {'split':>9} {'job s':>7} {'ideal s':>8} {'server s':>9} "
              f"{'ratio':>6} {'wall s':>7} {'ratio':>6} {'lead ms':>8} {'tail ms':>8} {'target':>7}")
        results: dict[int, Efficiency] = {}
        for backends in (1, 2):
            r = results[backends] = efficiency(backends, args, tmp / f"eff{backends}")
            split = "/".join(str(n) for n in r.split)
            print(f"{backends:>7} {split:>9} {g3(r.job):>7} {g3(r.ideal):>8} {g3(r.server):>9} "
                  f"{g3(r.server / r.ideal):>6} {g3(r.wall):>7} {g3(r.wall / r.ideal):>6} "
                  f"{g3(1000 * r.lead):>8} {g3(1000 * r.tail):>8} {'<= ' + g3(TARGET_RATIO):>7}")

        print(f"\n2. Idle gap between jobs on a server (server ms stamps), same runs; "
              f"target median <= {g3(TARGET_GAP_MS)} ms")
        print(f"{'servers':>7} {'gaps':>5} {'median':>7} {'p95':>5} {'max':>5} {'median/target':>14}")
        for backends, r in results.items():
            gaps = r.gaps
            median = statistics.median(gaps) if gaps else 0.0
            print(f"{backends:>7} {len(gaps):>5} {g3(median):>7} {g3(pct(gaps, 0.95)):>5} "
                  f"{g3(max(gaps, default=0)):>5} {g3(median / TARGET_GAP_MS):>14}")

        print(f"\n3. Model swaps: {args.songs} songs x ({IMAGES_PER_SONG} Flux images, then "
              f"{CLIPS_PER_SONG} Wan clips), 1 server, swap {g3(args.swap_seconds)} s, "
              f"job {g3(args.job_seconds)} s")
        print(f"{'arrival':<28} {'policy':<8} {'loads':>5} {'swaps':>5} {'min':>4} "
              f"{'swaps/min':>9} {'pool':>5} {'makespan s':>10}")
        patterns = {"queued": "all queued at once",
                    "runs": f"{args.runs} runs, staggered songs"}
        for pattern, label in patterns.items():
            for grouped in (True, False):
                s = swaps(pattern, grouped, args, tmp / f"swap-{pattern}-{grouped}")
                policy = "grouped" if grouped else "FIFO"
                print(f"{label:<28} {policy:<8} {s['loads']:>5} {s['swaps']:>5} {s['min']:>4} "
                      f"{g3(s['swaps'] / s['min']):>9} {s['pool']:>5} {g3(s['makespan']):>10}")


if __name__ == "__main__":
    main()
