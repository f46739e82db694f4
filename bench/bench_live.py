"""The live view's CPU cost over a 4-minute song, against the daemon's own CPU.

Runs the daemon in this process (``app.run(once=True)``, storyboard candidates
approved automatically, Ken Burns clips, the real assembly) on a synthesized
song, with the live view drawing at its normal rate (at most 4 refreshes a
second, only on change) onto a terminal-like console writing to /dev/null.
The view's cost is the CPU time of its refresh thread (``time.thread_time``,
so rendering and writing the frames); the daemon's is this process's CPU
(user + system) over the run, and with it the ffmpeg children that do its
Ken Burns clips and the assembly; both ratios are printed. Target: the view
under 1 % of the daemon's CPU.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path

import psutil
from rich.console import Console

from daemon.app import run
from daemon.config import load_settings
from daemon.host.live import LiveView, logging_for
from daemon.logs import configure_logging
from daemon.music.synth import write_song

CONFIG = """\
[watch]
stable_seconds = 0.5
[images]
backend = "storyboard"
[approval]
mode = "auto"
[clips]
backend = "kenburns"
[web]
enabled = false
[video]
width = {width}
height = {height}
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=240.0, help="song length (default 4 minutes)")
    parser.add_argument("--size", default="416x240", help="video size (smaller: a faster bench, a harder ratio)")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "tandava.toml").write_text(CONFIG.format(width=width, height=height), encoding="utf-8")
        settings = load_settings(folder / "tandava.toml")
        settings.paths.inbox.mkdir(parents=True, exist_ok=True)
        song = settings.paths.inbox / "bench song.wav"
        write_song(song, args.seconds, 120.0, section_change_at=args.seconds / 2, seed=3)
        past = time.time() - 10
        os.utime(song, (past, past))
        with Path(os.devnull).open("w", encoding="utf-8") as sink:
            console = Console(file=sink, width=120, height=40, force_terminal=True, color_system="truecolor")
            view = LiveView(console)
            configure_logging(log_file=folder / "logs" / "tandava.log", console=None,
                              **logging_for(view, verbose=False))
            me = psutil.Process()
            before, wall = me.cpu_times(), time.perf_counter()
            code = run(settings, threading.Event(), once=True, view=view)
            after, wall = me.cpu_times(), time.perf_counter() - wall
        rendered = any((settings.paths.state_root / "rendered").iterdir())
    daemon_cpu = (after.user - before.user) + (after.system - before.system)
    children = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    share = 100 * view.cpu_seconds / daemon_cpu if daemon_cpu else float("nan")
    share_all = 100 * view.cpu_seconds / (daemon_cpu + children) if daemon_cpu + children else float("nan")
    print(f"{'metric':<44} {'measured':>12}")
    print(f"{'song':<44} {args.seconds:>10.0f} s")
    print(f"{'wall time of the run':<44} {wall:>10.1f} s")
    print(f"{'daemon CPU (this process, user+sys)':<44} {daemon_cpu:>10.2f} s")
    print(f"{'ffmpeg children CPU (apart)':<44} {children:>10.2f} s")
    print(f"{'live view CPU (refresh thread)':<44} {view.cpu_seconds * 1000:>9.0f} ms")
    print(f"{'redraws (on change, at most 4/s)':<44} {view.refreshes:>12}")
    print(f"{'per redraw':<44} {1000 * view.cpu_seconds / max(1, view.refreshes):>9.2f} ms")
    print(f"{'live view / daemon CPU with its ffmpeg':<44} {share_all:>10.2f} %  (target < 1 %)")
    print(f"{'live view / the Python process alone':<44} {share:>10.2f} %")
    print(f"rendered: {'yes' if rendered and code == 0 else 'NO'}")
    return 0 if rendered and code == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
