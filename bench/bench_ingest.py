"""Ingest latency of the inbox watcher: from a song's file being closed to on_ready being called.

    python bench/bench_ingest.py [--files 50] [--stable 2.0] [--poll 1.0] [--idle 10]

Writes N songs one at a time (1 MiB each in 64 KiB writes, then close, a
realistic local copy) with irregular gaps so polling phases are sampled evenly,
once with native events and once with forced polling, and prints p50/p95/max
per mode against its target: native p95 <= stable window + 0.5 s (a close-write
is a hint, not proof of arrival: issue 11); polling p95 <= stable window + one
poll interval. Then measures idle CPU of a watcher on an empty inbox
(target <= 0.5 % of one core). Bounded: about 40 s with the defaults.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import structlog

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from daemon.intake.watcher import InboxWatcher  # noqa: E402

SONG_BYTES = 1024 * 1024
CHUNK_BYTES = 64 * 1024


def measure(polling: bool, files: int, stable: float, poll: float) -> list[float]:
    """Latencies in seconds, one per song, for one observer mode."""
    closed_at: dict[str, float] = {}
    ready_at: dict[str, float] = {}
    all_ready = threading.Event()

    def on_ready(path: Path) -> None:
        ready_at.setdefault(path.name, time.monotonic())
        path.unlink()  # as intake would move it out
        if len(ready_at) == files:
            all_ready.set()

    rng = random.Random(7)
    payload = os.urandom(SONG_BYTES)
    with tempfile.TemporaryDirectory() as tmp:
        inbox = Path(tmp)
        watcher = InboxWatcher(
            inbox, on_ready, stable_seconds=stable, poll_seconds=poll,
            polling="always" if polling else "never", log=structlog.get_logger("bench"),
        )  # fmt: skip
        watcher.start()
        try:
            for i in range(files):
                name = f"song {i:03d}.mp3"
                with (inbox / name).open("wb") as f:
                    for start in range(0, SONG_BYTES, CHUNK_BYTES):
                        f.write(payload[start : start + CHUNK_BYTES])
                closed_at[name] = time.monotonic()
                time.sleep(rng.uniform(0.05, 0.35))
            all_ready.wait(timeout=stable + poll + 10.0)
        finally:
            watcher.stop()
    missing = closed_at.keys() - ready_at.keys()
    if missing:
        print(f"  {len(missing)} song(s) never handed over: {sorted(missing)[:3]}")
    return [ready_at[n] - closed_at[n] for n in closed_at if n in ready_at]


def idle_cpu_percent(polling: bool, seconds: float, poll: float) -> float:
    """CPU used by this process while a started watcher sits on an empty inbox."""
    with tempfile.TemporaryDirectory() as tmp:
        watcher = InboxWatcher(
            Path(tmp), lambda _: None, poll_seconds=poll,
            polling="always" if polling else "never", log=structlog.get_logger("bench"),
        )  # fmt: skip
        watcher.start()
        try:
            time.sleep(1.0)  # past the start-up scan
            me = psutil.Process()
            before, t0 = me.cpu_times(), time.monotonic()
            time.sleep(seconds)
            after, t1 = me.cpu_times(), time.monotonic()
        finally:
            watcher.stop()
    used = (after.user - before.user) + (after.system - before.system)
    return 100.0 * used / (t1 - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=50)
    parser.add_argument("--stable", type=float, default=2.0)
    parser.add_argument("--poll", type=float, default=1.0)
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of idle CPU sampling per mode; 0 skips")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))  # errors only

    targets = {"native": args.stable + 0.5, "polling": args.stable + args.poll}
    print(f"{args.files} songs of {SONG_BYTES // 1024} KiB; stable={args.stable}s poll={args.poll}s")
    print(f"{'mode':8} {'p50':>7} {'p95':>7} {'max':>7} {'target p95':>11} {'p95/target':>11}")
    for mode, target in targets.items():
        lat = sorted(measure(mode == "polling", args.files, args.stable, args.poll))
        if not lat:
            print(f"{mode:8} no song was handed over")
            continue
        p50 = statistics.median(lat)
        p95 = lat[min(len(lat) - 1, round(0.95 * (len(lat) - 1)))]
        print(f"{mode:8} {p50:6.3f}s {p95:6.3f}s {lat[-1]:6.3f}s {target:10.2f}s {p95 / target:10.2f}x")
    if args.idle > 0:
        for mode in targets:
            cpu = idle_cpu_percent(mode == "polling", args.idle, args.poll)
            print(f"idle CPU {mode:8} {cpu:5.2f} % over {args.idle:.0f} s (target <= 0.5 %, {cpu / 0.5:.2f}x)")


if __name__ == "__main__":
    main()
