"""The ComfyUI pool's scheduling against the fake server: makespan, idle gaps, model swaps.

    python bench/bench_comfy.py [--jobs 200] [--job-seconds 0.05] [--runs 4]
                                [--songs 5] [--swap-seconds 0.2] [--check-seconds 1.0]

Everything runs against ``tests/fakecomfy`` (ComfyUI's wire protocol on a real
socket, no GPU) through the daemon's own path: servers and ``Pool`` built as
``ComfyBackends.open`` builds them (default ``[comfy]`` settings, ``Pool``
defaults; ``check_seconds`` from the command line, 1.0 as the daemon runs),
jobs queued with ``ComfyImageBackend.submit`` / ``ComfyVideoBackend.submit``
and collected with ``collect`` (wait, then download through ``/view``), the
way stages do. A fake job takes ``job_seconds`` in one sleep of its
``KSampler`` (see ``make_fake``) plus the fake's own ~3 ms of work; PNGs are
64x48 and clips 5 frames of 64x48, so writing outputs is cheap. Times on the
servers are the fake's epoch-ms stamps of ``execution_start`` and of the end
message, read from the messages it sent (see ``executions``).

1. Scheduler efficiency, 1 and 2 servers (two ``FakeComfy``): N Flux image
   jobs (200) split over R runs (4 threads); each run submits all its jobs,
   then collects them in order. Warm-up jobs first make every server pass
   preflight (a one-off per server start), untimed. Ideal = sum of the job
   times the servers measured (first run of each job) / servers. Reported:
   server makespan (first execution_start -> last end) / ideal, and wall
   makespan (first submit -> last download, so our queueing, events and
   downloads count) / ideal; "reruns" counts jobs a server ran twice. Target
   <= 1.02 each.
2. Idle gap on each server between one job's end and the next one's start,
   from the same runs: median, p95, max. Target: median <= 5 ms (a real
   ComfyUI's own gap is 0-1 ms).
3. Model swaps on 1 server with ``swap_seconds`` (0.2 s standing in for the
   tens of seconds a 14B video model takes): 5 songs, each 6 Flux images,
   then 6 Wan clips (5 frames) from a small start image, in two arrival
   patterns. (a) All queued at once, song after song (6 images, 6 clips, 6
   images, ...), collected by R threads. (b) The daemon's shape: R concurrent
   runs, a song arriving every 5 job times; a run submits its images, collects
   them, then submits and collects its clips, and holds its slot until then.
   Each once grouped by model (``group_by_model=True``, ours) and once plain
   first in, first out. Reported: models loaded (``fake.swaps``, first load
   included), swaps (changes of model), the pool's own count and the makespan.
   Target: the minimum. (a) 1 swap. (b) 2*ceil(songs/R) - 1: a slot frees only
   when a song's clips are done, so at most R more songs can finish per Wan
   phase, and each Wan phase needs a Flux phase before it.

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

from daemon.backends.base import Job, noop_progress  # noqa: E402
from daemon.backends.comfy.backend import ComfyImageBackend, ComfyVideoBackend  # noqa: E402
from daemon.backends.comfy.client import ComfyClient  # noqa: E402
from daemon.backends.comfy.pool import Pool, Server  # noqa: E402
from daemon.backends.comfy.supervisor import RemoteComfy  # noqa: E402
from daemon.config import ComfyConfig  # noqa: E402

MODELS = models_for(FLUX, WAN)
TARGET_RATIO = 1.02
TARGET_GAP_MS = 5.0
IMAGES_PER_SONG = 6
CLIPS_PER_SONG = 6
ARRIVAL_JOBS = 5  # part 3 (b): a song arrives every this many job times
WARMUP_ROUNDS = 5
END_MESSAGES = frozenset({"execution_success", "execution_error", "execution_interrupted"})


def g3(value: float) -> str:
    """Three significant digits, trailing zeros kept (1.00, 0.0568, 11.4, 201)."""
    return f"{value:#.3g}".rstrip(".") if abs(value) < 1000 else f"{value:.0f}"


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def make_fake(root: Path, job_seconds: float, swap_seconds: float = 0.0) -> FakeComfy:
    """A started fake whose jobs take ``job_seconds``, spent in one sleep of the sampler.

    The fake shares ``job_seconds`` among the nodes it does not find cached,
    and a progress node sleeps once per step; each asyncio sleep overshoots by
    about 1 ms, so 20 sampler steps would add ~15 ms to a 50 ms job. Both
    workflows have one ``KSampler``: it gets all the time, in one sleep, and
    reports no steps (other nodes take none).
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
    # VRAM admission keeps its defaults (the default vram_margin_gb, no Ollama).
    pool = Pool(servers, silence_seconds=cfg.silence_seconds, check_seconds=check_seconds,
                group_by_model=group_by_model).start()
    deadline = time.monotonic() + 15.0
    while not all(s.up and s.listener is not None and s.listener.connected for s in servers):
        if time.monotonic() > deadline:
            pool.stop()
            raise RuntimeError("the pool did not see every fake server up and connected")
        time.sleep(0.01)
    return pool


def collect_jobs(backend_of: Callable[[Job], ComfyImageBackend], jobs: list[Job]) -> None:
    """Wait for each job in order and download its output."""
    stop = threading.Event()
    for job in jobs:
        backend_of(job).collect(job, progress=noop_progress, stop=stop)


def run_jobs(backend_of: Callable[[Job], ComfyImageBackend], jobs: list[Job]) -> None:
    """Submit all, then collect in order: what a stage does with one run's jobs."""
    for job in jobs:
        backend_of(job).submit(job)
    collect_jobs(backend_of, jobs)


def executions(fake: FakeComfy) -> list[tuple[str, int, int]]:
    """(prompt id, start, end) in epoch-ms of every job the fake ran, in order.

    Read from the messages the fake sent (``execution_start`` and the end
    message both carry its ``timestamp``), not from ``FakeComfy.timestamps``:
    that keeps one entry per prompt id, so a prompt run twice overwrites its
    first run's stamps and shows a false gap.
    """
    runs: list[tuple[str, int, int]] = []
    running: tuple[str, int] | None = None
    for event in fake.events:
        kind, data = event["type"], event["data"]
        if kind == "execution_start":
            running = (data["prompt_id"], data["timestamp"])
        elif kind in END_MESSAGES and running is not None and data.get("prompt_id") == running[0]:
            runs.append((*running, data["timestamp"]))
            running = None
    return runs


# -- 1 and 2: efficiency and idle gaps ---------------------------------------------------------


@dataclass
class Efficiency:
    """One run of part 1 in seconds; ``gaps`` in server ms."""

    job: float  # mean job time on the servers (first run of each job)
    ideal: float  # sum of job times / servers
    server: float  # first execution_start -> last end
    wall: float  # first submit -> last download
    lead: float  # first submit -> first execution_start
    tail: float  # last end -> last download
    split: list[int]  # jobs run per server
    reruns: int  # runs beyond one per job
    gaps: list[int]


def efficiency(backends: int, args: argparse.Namespace, tmp: Path) -> Efficiency:
    fakes = [make_fake(tmp / f"comfy{i}", args.job_seconds) for i in range(backends)]
    try:
        pool = open_pool(fakes, check_seconds=args.check_seconds)
        try:
            images = ComfyImageBackend(pool, FLUX)
            out = tmp / "out"
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
    spans = [[run for run in executions(f) if run[0] in ids] for f in fakes]
    first_runs: dict[str, int] = {}
    for prompt_id, start, end in sorted((r for per in spans for r in per), key=lambda r: r[1]):
        first_runs.setdefault(prompt_id, end - start)
    if first_runs.keys() != ids:
        raise RuntimeError(f"the servers ran {len(first_runs)} of {len(ids)} jobs")
    busy = sum(first_runs.values()) / 1000
    first = min(per[0][1] for per in spans if per) / 1000
    last = max(per[-1][2] for per in spans if per) / 1000
    return Efficiency(
        job=busy / len(ids), ideal=busy / backends, server=last - first, wall=t1 - t0,
        lead=first - t0, tail=t1 - last, split=[len(per) for per in spans],
        reruns=sum(len(per) for per in spans) - len(ids),
        gaps=[b[1] - a[2] for per in spans for a, b in zip(per, per[1:], strict=False)],
    )  # fmt: skip


# -- 3: model swaps ----------------------------------------------------------------------------


@dataclass
class Swaps:
    loads: int  # models loaded on the fake, the first load included
    pool: int  # the pool's own count of changes
    reruns: int  # posts beyond one per job
    makespan: float  # first submit -> last download, seconds


def song_jobs(song: int, tmp: Path, start: Path) -> tuple[list[Job], list[Job]]:
    base = song * IMAGES_PER_SONG
    images = [image_job(base + i, tmp) for i in range(IMAGES_PER_SONG)]
    clips = [clip_job(base + i, tmp, start, frames=5) for i in range(CLIPS_PER_SONG)]
    return images, clips


def swaps(pattern: str, grouped: bool, args: argparse.Namespace, tmp: Path) -> Swaps:
    tmp.mkdir(parents=True)
    start = tmp / "approved.png"
    Image.new("RGB", (64, 48), (200, 120, 40)).save(start)
    songs = [song_jobs(k, tmp / f"song{k}", start) for k in range(args.songs)]
    fake = make_fake(tmp / "comfy", args.job_seconds, args.swap_seconds)
    try:
        pool = open_pool([fake], check_seconds=args.check_seconds, group_by_model=grouped)
        try:
            images, clips = ComfyImageBackend(pool, FLUX), ComfyVideoBackend(pool, WAN)

            def backend_of(job: Job) -> ComfyImageBackend:
                return clips if job.kind == "clip" else images

            t0 = time.monotonic()
            if pattern == "queued":
                for song_images, song_clips in songs:
                    for job in (*song_images, *song_clips):
                        backend_of(job).submit(job)
                per_run: list[list[Job]] = [[] for _ in range(args.runs)]
                for k, (song_images, song_clips) in enumerate(songs):
                    per_run[k % args.runs] += song_images + song_clips
                with ThreadPoolExecutor(max_workers=args.runs) as ex:
                    for future in [ex.submit(collect_jobs, backend_of, part) for part in per_run]:
                        future.result()
            else:
                slots = threading.Semaphore(args.runs)
                every = ARRIVAL_JOBS * args.job_seconds

                def song(k: int) -> None:
                    time.sleep(max(0.0, t0 + k * every - time.monotonic()))
                    with slots:  # one of R concurrent runs, from its images to its last clip
                        run_jobs(backend_of, songs[k][0])
                        run_jobs(backend_of, songs[k][1])

                with ThreadPoolExecutor(max_workers=args.songs) as ex:
                    for future in [ex.submit(song, k) for k in range(args.songs)]:
                        future.result()
            makespan = time.monotonic() - t0
        finally:
            pool.stop()
    finally:
        fake.stop()
    return Swaps(loads=fake.swaps, pool=pool.swaps, reruns=len(fake.posted) - len(set(fake.posted)),
                 makespan=makespan)


# -- main --------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200, help="image jobs for parts 1 and 2")
    parser.add_argument("--job-seconds", type=float, default=0.05, help="the fake's time per job")
    parser.add_argument("--runs", type=int, default=4, help="concurrent runs (collecting threads)")
    parser.add_argument("--songs", type=int, default=5, help="songs for part 3")
    parser.add_argument("--swap-seconds", type=float, default=0.2, help="the fake's model loads")
    parser.add_argument("--check-seconds", type=float, default=1.0,
                        help="the pool's monitor interval (1.0: Pool's default, the daemon's)")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))  # errors only

    with tempfile.TemporaryDirectory(prefix="tandava-bench-comfy-") as tmp_dir:
        tmp = Path(tmp_dir)
        print(f"1. Scheduler efficiency: {args.jobs} Flux jobs of {g3(args.job_seconds)} s, "
              f"{args.runs} runs each submit all then collect in order; "
              f"check_seconds={g3(args.check_seconds)}")
        print(f"{'servers':>7} {'split':>9} {'reruns':>6} {'job s':>7} {'ideal s':>8} "
              f"{'server s':>9} {'ratio':>6} {'wall s':>7} {'ratio':>6} {'lead ms':>8} "
              f"{'tail ms':>8} {'target':>7}")
        results: dict[int, Efficiency] = {}
        for backends in (1, 2):
            r = results[backends] = efficiency(backends, args, tmp / f"eff{backends}")
            split = "/".join(str(n) for n in r.split)
            print(f"{backends:>7} {split:>9} {r.reruns:>6} {g3(r.job):>7} {g3(r.ideal):>8} "
                  f"{g3(r.server):>9} {g3(r.server / r.ideal):>6} {g3(r.wall):>7} "
                  f"{g3(r.wall / r.ideal):>6} {g3(1000 * r.lead):>8} {g3(1000 * r.tail):>8} "
                  f"{'<= ' + g3(TARGET_RATIO):>7}")

        print(f"\n2. Idle gap between jobs on a server (server ms stamps), same runs; "
              f"target median <= {g3(TARGET_GAP_MS)} ms")
        print(f"{'servers':>7} {'gaps':>5} {'median':>7} {'p95':>5} {'max':>5} "
              f"{'median/target':>14}")
        for backends, r in results.items():
            median = statistics.median(r.gaps) if r.gaps else 0.0
            print(f"{backends:>7} {len(r.gaps):>5} {g3(median):>7} {g3(pct(r.gaps, 0.95)):>5} "
                  f"{g3(max(r.gaps, default=0)):>5} {g3(median / TARGET_GAP_MS):>14}")

        print(f"\n3. Model swaps: {args.songs} songs x ({IMAGES_PER_SONG} Flux images, then "
              f"{CLIPS_PER_SONG} Wan clips), 1 server, swap {g3(args.swap_seconds)} s, "
              f"job {g3(args.job_seconds)} s")
        print(f"{'arrival':<32} {'policy':<7} {'loads':>5} {'swaps':>5} {'min':>4} "
              f"{'swaps/min':>9} {'pool':>5} {'reruns':>6} {'makespan s':>10}")
        patterns = {
            "queued": ("(a) all queued at once", 1),
            "runs": (f"(b) {args.runs} runs, a song every {ARRIVAL_JOBS} jobs",
                     2 * math.ceil(args.songs / args.runs) - 1),
        }  # fmt: skip
        for pattern, (label, least) in patterns.items():
            for grouped in (True, False):
                s = swaps(pattern, grouped, args, tmp / f"swap-{pattern}-{grouped}")
                print(f"{label:<32} {'grouped' if grouped else 'FIFO':<7} {s.loads:>5} "
                      f"{s.loads - 1:>5} {least:>4} {g3((s.loads - 1) / least):>9} {s.pool:>5} "
                      f"{s.reruns:>6} {g3(s.makespan):>10}")


if __name__ == "__main__":
    main()
