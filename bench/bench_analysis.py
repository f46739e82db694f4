"""Benchmark the analysis stage against the issue's speed targets.

Run: ``python bench/bench_analysis.py [--seconds 240] [--format mp3]``

Synthesizes a song (4 minutes by default) into a temporary folder, then in one
run measures:

a. a cold process (fresh interpreter: imports + decode + analysis), median of
   three after one untimed run that fills the OS file cache; this is every
   song the daemon analyses in a new process, including the first after an
   install;
b. warm in-process analysis (decode + analysis, median of five), the daemon's
   steady state;
c. peak RSS of the analysing process.

Targets from the issue: warm <= 1 s, cold <= 4 s, on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WARM_TARGET, COLD_TARGET = 1.0, 4.0


def _child(song: Path) -> None:
    """Runs in the spawned process: import, analyse, report timings and peak memory."""
    started = time.perf_counter()
    from daemon.music.analysis import analyze

    imported = time.perf_counter()
    result = analyze(song)
    done = time.perf_counter()
    print(
        json.dumps(
            {
                "import_s": imported - started,
                "analyse_s": done - imported,
                "peak_rss_mb": _peak_rss_mb(),
                "jit_modules": sorted(m for m in ("librosa", "numba") if m in sys.modules),
                "tempo": result.tempo,
                "sections": len(result.sections),
            }
        )
    )


def _peak_rss_mb() -> float:
    try:
        import resource
    except ImportError:  # Windows: psutil reports the peak working set instead
        import psutil

        return psutil.Process().memory_info().peak_wset / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kilobytes, macOS bytes.
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def _spawn(song: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(song)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    wall = time.perf_counter() - started
    report = json.loads(out.stdout.strip().splitlines()[-1])
    report["wall_s"] = wall
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=240.0)
    parser.add_argument("--format", default="mp3", choices=["mp3", "flac", "wav", "ogg", "m4a"])
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child)
        return

    sys.path.insert(0, str(ROOT))
    from daemon.music.analysis import analyze
    from daemon.music.synth import write_song

    with tempfile.TemporaryDirectory(prefix="tandava-bench-") as tmp:
        song = Path(tmp) / f"song.{args.format}"
        truth = write_song(song, args.seconds, 126.0, sr=44100, section_change_at=args.seconds / 2)
        _spawn(song)  # untimed: fills the OS file cache
        cold = [_spawn(song) for _ in range(3)]

        analyze(song)  # untimed: imports, FFT plans and the file cache are ready
        warm = []
        for _ in range(5):
            started = time.perf_counter()
            result = analyze(song)
            warm.append(time.perf_counter() - started)

    cold_wall = statistics.median(r["wall_s"] for r in cold)
    warm_s = statistics.median(warm)
    rows = [
        ("warm, in process (median of 5)", warm_s, WARM_TARGET),
        ("cold process (median of 3)", cold_wall, COLD_TARGET),
    ]
    print(
        f"{args.seconds:.0f} s synthetic song at {truth.bpm:g} BPM, {args.format}, {os.cpu_count()} CPUs"
    )
    print(
        f"found tempo {result.tempo:.2f} BPM, {len(result.beats)} beats, {len(result.sections)} sections"
    )
    print(f"{'case':<36}{'seconds':>9}{'target':>9}{'ratio':>8}")
    for name, seconds, target in rows:
        print(f"{name:<36}{seconds:>9.2f}{target:>9.1f}{seconds / target:>8.2f}")
    median_import = statistics.median(r["import_s"] for r in cold)
    median_analyse = statistics.median(r["analyse_s"] for r in cold)
    print(
        f"cold process split: imports {median_import:.2f} s, decode+analysis {median_analyse:.2f} s"
    )
    print(f"peak RSS of the analysing process: {max(r['peak_rss_mb'] for r in cold):.0f} MB")
    jit = sorted({m for r in cold for m in r["jit_modules"]})
    print(f"JIT modules imported (librosa, numba): {', '.join(jit) or 'none'}")


if __name__ == "__main__":
    main()
