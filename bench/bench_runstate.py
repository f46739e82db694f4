"""Benchmark what run-state bookkeeping costs: manifest writes with a backup, disk size, retention.

Run: ``python bench/bench_runstate.py [--runs 500]``

In a temporary folder it measures:

a. one ``run.json`` write (a manifest with 120 jobs, as a 40-segment song
   with three candidates each has), with the ``run.json.bak`` kept by a hard
   link and a rename, against the plain atomic write it replaced (median of
   200 each);
b. the state root's size (``DiskUsage``) over ``--runs`` rendered runs with
   candidates and clips: the first measurement walks every run, the next
   ones only runs whose folder changed (the daemon measures at most every
   5 minutes);
c. retention over those runs: ``plan`` (what to remove, with sizes), then
   ``apply``, and the bytes it frees.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from daemon.config import RetentionConfig  # noqa: E402
from daemon.runs import fsutil  # noqa: E402
from daemon.runs.archive import human_bytes  # noqa: E402
from daemon.runs.job import Job  # noqa: E402
from daemon.runs.retention import DiskUsage, apply, plan  # noqa: E402
from daemon.runs.states import Event  # noqa: E402
from daemon.runs.store import RunRef, RunStore  # noqa: E402


def _run(store: RunStore, tmp: Path, n: int) -> RunRef:
    song = tmp / f"song {n}.mp3"
    song.write_bytes(b"s" * 4096)
    return store.create(song, f"{n:064x}")


def bench_save(store: RunStore, tmp: Path) -> tuple[float, float]:
    ref = _run(store, tmp, 10**6)
    manifest = store.load(ref)
    for i in range(120):
        manifest.jobs[f"j{i}"] = Job(id=f"j{i}", kind="image", backend="comfyui", segment=i // 3, seed=i,
                                     index=i % 3, prompt="a dancer in firelight " * 8, width=832, height=480,
                                     output=f"candidates/s{i // 3:03d}_c{i % 3:02d}.png", status="done")
    with_backup, plain = [], []
    for _ in range(200):
        started = time.perf_counter()
        store.save(ref, manifest)
        with_backup.append(time.perf_counter() - started)
        started = time.perf_counter()
        fsutil.atomic_write_text(ref.manifest_path, manifest.model_dump_json(indent=2) + "\n")
        plain.append(time.perf_counter() - started)
    return statistics.median(with_backup), statistics.median(plain)


def make_rendered(store: RunStore, tmp: Path, runs: int) -> None:
    for n in range(runs):
        ref = _run(store, tmp, n)
        for event in (Event.ANALYSIS_DONE, Event.IMAGES_DONE, Event.OFFERED, Event.ALL_APPROVED):
            ref = store.move(ref, event)
        for seg in range(4):
            for cand in range(3):
                (ref.path / "candidates").mkdir(exist_ok=True)
                (ref.path / "candidates" / f"s{seg:03d}_c{cand:02d}.png").write_bytes(b"p" * 20_000)
            (ref.path / "clips").mkdir(exist_ok=True)
            (ref.path / "clips" / f"s{seg:03d}_p00.mp4").write_bytes(b"c" * 50_000)
        (ref.path / "final.mp4").write_bytes(b"f" * 100_000)
        ref = store.move(ref, Event.RENDER_DONE)
        manifest = store.load(ref)
        manifest.history[-1].at -= timedelta(days=30)
        store.save(ref, manifest)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tandava-bench-runstate-") as folder:
        tmp = Path(folder)
        store = RunStore(tmp / "state")
        store.ensure_layout()
        with_backup, plain = bench_save(store, tmp)
        print(f"a. run.json write (120 jobs): {with_backup * 1000:.2f} ms with run.json.bak, "
              f"{plain * 1000:.2f} ms without (x{with_backup / plain:.2f})")
        make_rendered(store, tmp, args.runs)
        usage = DiskUsage(store.root)
        started = time.perf_counter()
        size = usage.measure()
        cold = time.perf_counter() - started
        started = time.perf_counter()
        usage.measure()
        warm = time.perf_counter() - started
        print(f"b. state root size with {args.runs} rendered runs: {human_bytes(size)}; first measurement "
              f"{cold * 1000:.0f} ms, next ones {warm * 1000:.1f} ms ({usage.walks} run walks in all)")
        started = time.perf_counter()
        removals = plan(store, RetentionConfig(), inbox=None)
        planned = time.perf_counter() - started
        started = time.perf_counter()
        freed = apply(store, removals)
        applied = time.perf_counter() - started
        started = time.perf_counter()
        again = plan(store, RetentionConfig(), inbox=None)
        replanned = time.perf_counter() - started
        after = usage.measure()
        print(f"c. retention: plan {planned * 1000:.0f} ms ({len(removals)} folders), apply {applied * 1000:.0f} ms, "
              f"freed {human_bytes(freed)} ({100 * freed / size:.0f} % of the state root, now {human_bytes(after)}); "
              f"the next plan {replanned * 1000:.1f} ms ({len(again)} folders)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
