"""How songs copied the ways people copy them become runs: one whole run each, and how long it takes.

Run: ``python bench/bench_arrivals.py [--seconds 249] [--stable 2.0] [--pause 10]``

Synthesizes a song (4:09 by default, as in issue 11) as a 44.1 kHz MP3, then,
with the real watcher, intake and store in a temporary folder and the default
stable window, copies it into the inbox three ways:

a. ``dd bs=512K`` one chunk per second, each chunk its own open/append/close
   (real ``dd`` where there is one);
b. one handle that stops for ``--pause`` seconds halfway (a stalled share);
c. a writer that closes the file, then reopens it a second later to rewrite
   its header and append a tag.

For each it prints the runs made, whether the run holds the whole song, and
the time from the writer's last byte to the run holding it (the time to take).
Target from issue 11: exactly one whole run per copy.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import structlog  # noqa: E402

from daemon.intake.intake import Intake  # noqa: E402
from daemon.intake.watcher import InboxWatcher  # noqa: E402
from daemon.music.synth import write_song  # noqa: E402
from daemon.runs.store import RunStore  # noqa: E402

CHUNK = 512 * 1024


def dd_chunks(src: Path, dst: Path, _pause: float) -> None:
    """One 512 KiB chunk a second, each its own open/append/close."""
    chunks = -(-src.stat().st_size // CHUNK)
    for i in range(chunks):
        if shutil.which("dd"):
            subprocess.run(
                ["dd", f"if={src}", f"of={dst}", "bs=512K", "count=1", f"skip={i}", f"seek={i}", "conv=notrunc"],
                check=True, capture_output=True,
            )  # fmt: skip
        else:
            with src.open("rb") as fin, dst.open("ab") as fout:
                fin.seek(i * CHUNK)
                fout.write(fin.read(CHUNK))
        if i < chunks - 1:
            time.sleep(1.0)


def paused_copy(src: Path, dst: Path, pause: float) -> None:
    """One handle: the first half, a long stall, the rest."""
    data = src.read_bytes()
    with dst.open("wb", buffering=0) as f:
        f.write(data[: len(data) // 2])
        time.sleep(pause)
        f.write(data[len(data) // 2 :])


def reopening_writer(src: Path, dst: Path, _pause: float) -> None:
    """Write it all and close; a second later reopen it to rewrite the header and append a tag."""
    data = src.read_bytes()
    dst.write_bytes(data)
    time.sleep(1.0)
    with dst.open("r+b") as f:
        f.write(data[:128])
        f.seek(0, os.SEEK_END)
        f.write(b"TAG" + b"\0" * 125)


def measure(song: Path, copy: Callable[[Path, Path, float], None], stable: float, pause: float) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        inbox, store = Path(tmp) / "inbox", RunStore(Path(tmp) / "state")
        inbox.mkdir()
        store.ensure_layout()
        watcher = InboxWatcher(inbox, Intake(store, inbox).take, stable_seconds=stable)
        watcher.start()
        try:
            dst = inbox / song.name
            writer_error = ""
            try:
                copy(song, dst, pause)
            except OSError as exc:  # the file was taken from under the writer
                writer_error = f" writer_failed={exc.strerror}"
            last_byte = time.monotonic()
            expected = _final_bytes(song, copy)
            took = None
            deadline = last_byte + stable + 15
            while time.monotonic() < deadline:
                songs = [next(ref.path.glob("*.mp3")).read_bytes() for ref in store.iter_runs()]
                if took is None and expected in songs:
                    took = time.monotonic() - last_byte
                    deadline = min(deadline, time.monotonic() + stable + 3)  # any stray run shows by now
                time.sleep(0.05)
            runs = list(store.iter_runs())
            whole = [ref for ref in runs if next(ref.path.glob("*.mp3")).read_bytes() == expected]
        finally:
            watcher.stop()
    taken = f"{took:5.2f} s" if took is not None else "never"
    return f"runs={len(runs)} whole={len(whole)} time_to_take={taken}{writer_error}"


def _final_bytes(song: Path, copy: Callable[[Path, Path, float], None]) -> bytes:
    data = song.read_bytes()
    return data[:128] + data[128:] + b"TAG" + b"\0" * 125 if copy is reopening_writer else data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=249.0)
    parser.add_argument("--stable", type=float, default=2.0)
    parser.add_argument("--pause", type=float, default=10.0)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))  # errors only
    with tempfile.TemporaryDirectory() as tmp:
        song = Path(tmp) / "song.mp3"
        write_song(song, args.seconds, 120.0, sr=44100)
        size = song.stat().st_size
        print(f"song: {args.seconds:.0f} s MP3, {size / 1e6:.1f} MB ({-(-size // CHUNK)} chunks of 512 KiB); "
              f"stable window {args.stable:g} s")
        for name, copy in [("dd 512K/s", dd_chunks), (f"pause {args.pause:g} s", paused_copy),
                           ("reopening", reopening_writer)]:
            print(f"{name:12} {measure(song, copy, args.stable, args.pause)}")


if __name__ == "__main__":
    main()
