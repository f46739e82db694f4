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
c. peak RSS of the analysing process;
d. the previous tracker (``daemon/music/analysis.py`` as of commit
   ``PREVIOUS``, read from git) on the same samples, warm and in a cold
   process, and the ratio of the current one to it. The machine is shared,
   so absolute seconds vary from run to run; the ratio, measured in the same
   run under the same load, is the figure to compare.

Targets (issue 12): warm <= 1.5 s, cold <= 3 s, on a 2-core machine.
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
import types
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WARM_TARGET, COLD_TARGET = 1.5, 3.0
# The tracker before issue 12 (fixed-period Ellis DP, _choose_period).
PREVIOUS = "885b86d"


def previous_analysis() -> types.ModuleType:
    """``daemon.music.analysis`` as it was at ``PREVIOUS``, loaded from git as its own module."""
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{PREVIOUS}:daemon/music/analysis.py"],
        capture_output=True, text=True, check=True,
    ).stdout
    module = types.ModuleType("previous_analysis")
    sys.modules[module.__name__] = module  # pydantic resolves annotations through it
    exec(compile(source, "previous_analysis.py", "exec"), module.__dict__)
    return module


def _child(song: Path, previous: bool) -> None:
    """Runs in the spawned process: import, analyse, report timings and peak memory."""
    started = time.perf_counter()
    if previous:
        analyze = previous_analysis().analyze
    else:
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


def _spawn(song: Path, previous: bool = False) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(song), *(["--previous"] if previous else [])],
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
    parser.add_argument("--previous", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.previous)
        return

    sys.path.insert(0, str(ROOT))
    from daemon.music.analysis import analyze
    from daemon.music.synth import write_song

    with tempfile.TemporaryDirectory(prefix="tandava-bench-") as tmp:
        song = Path(tmp) / f"song.{args.format}"
        truth = write_song(song, args.seconds, 126.0, sr=44100, section_change_at=args.seconds / 2)
        _spawn(song)  # untimed: fills the OS file cache
        # Interleaved, so a change in the machine's load hits both alike.
        cold, cold_prev = [], []
        for _ in range(3):
            cold.append(_spawn(song))
            cold_prev.append(_spawn(song, previous=True))

        old_analyze = previous_analysis().analyze
        analyze(song)  # untimed: imports, FFT plans and the file cache are ready
        old_analyze(song)
        warm, warm_prev = [], []
        for _ in range(5):
            started = time.perf_counter()
            result = analyze(song)
            warm.append(time.perf_counter() - started)
            started = time.perf_counter()
            old_analyze(song)
            warm_prev.append(time.perf_counter() - started)

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
    prev_warm = statistics.median(warm_prev)
    prev_cold = statistics.median(r["wall_s"] for r in cold_prev)
    print(f"previous tracker ({PREVIOUS}): warm {prev_warm:.2f} s, cold {prev_cold:.2f} s; "
          f"ratio now/previous: warm {warm_s / prev_warm:.2f}, cold {cold_wall / prev_cold:.2f}")
    print(f"peak RSS of the analysing process: {max(r['peak_rss_mb'] for r in cold):.0f} MB")
    jit = sorted({m for r in cold for m in r["jit_modules"]})
    print(f"JIT modules imported (librosa, numba): {', '.join(jit) or 'none'}")


if __name__ == "__main__":
    main()
