"""`tandava demo`, cold: wall time and peak RSS, in one run.

Spawns ``python -m daemon demo --dir <fresh temp dir>`` (a new process: imports,
synthesis, analysis, candidates, clips, assembly, all of it) and samples the
process tree's RSS with psutil every 20 ms; ffmpeg children are counted in
the tree's total and the Python process's own peak is shown apart.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil


def run_demo(folder: Path) -> tuple[float, float, float, str]:
    """Wall seconds, peak tree RSS (MB), peak Python RSS (MB), the demo's output."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "daemon", "demo", "--dir", str(folder)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, encoding="utf-8",
    )
    parent = psutil.Process(proc.pid)
    peak_tree = peak_self = 0
    while proc.poll() is None:
        try:
            own = parent.memory_info().rss
            tree = own + sum(child.memory_info().rss for child in parent.children(recursive=True))
        except psutil.Error:
            own = tree = 0
        peak_self, peak_tree = max(peak_self, own), max(peak_tree, tree)
        time.sleep(0.02)
    out = proc.stdout.read() if proc.stdout else ""
    return time.perf_counter() - started, peak_tree / 2**20, peak_self / 2**20, out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        seconds, tree_mb, self_mb, out = run_demo(Path(tmp) / "demo")
    ok = "is in rendered/" in out
    print(out.rstrip())
    print()
    print(f"{'metric':<36} {'measured':>10}")
    print(f"{'tandava demo, cold, wall time':<36} {seconds:>9.1f}s")
    print(f"{'peak RSS, process tree (with ffmpeg)':<36} {tree_mb:>8.0f}MB")
    print(f"{'peak RSS, the Python process':<36} {self_mb:>8.0f}MB")
    print(f"rendered: {'yes' if ok else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
