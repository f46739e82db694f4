"""``tandava demo``: the whole pipeline on a song made on the spot, in a folder of its own.

The demo is a real installation in miniature: its own ``tandava.toml``, inbox
and state root, the same daemon loop (``run --once``), the same logs, the
same live view on a terminal and the same summary at the end. Nothing is
downloaded and nothing outside the demo folder is touched.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from daemon.config import load_settings
from daemon.host.live import logging_for, view_for
from daemon.host.summary import report, summarize, summary_lines
from daemon.logs import configure_logging
from daemon.music.synth import write_song
from daemon.runs.manifest import utcnow
from daemon.runs.states import State
from daemon.runs.store import RunStore

DEMO_SONG = "Shiva Tandava (demo).wav"
DEMO_SECONDS = 40.0
DEMO_BPM = 120.0
DEMO_CONFIG = """\
# Written by `tandava demo`: storyboard candidates, approved automatically,
# Ken Burns clips, no GPU. Short stability window: the demo writes its song
# itself, in one go.
[watch]
stable_seconds = 0.5

[images]
backend = "storyboard"

[approval]
mode = "auto"

[clips]
backend = "kenburns"

[engine]
tick_seconds = 0.1
"""


def run_demo(folder: Path, *, out: TextIO) -> int:
    """Make the demo folder and song, run the daemon until the song is done, report."""
    from daemon.app import run

    folder = folder.resolve()
    (folder / "inbox").mkdir(parents=True, exist_ok=True)
    config = folder / "tandava.toml"
    if not config.exists():
        config.write_text(DEMO_CONFIG, encoding="utf-8")
    settings = load_settings(config)
    # On a terminal: the live view, warnings above it; otherwise the log file only, as before.
    view = view_for(out, "auto")
    configure_logging(log_file=settings.paths.logs / "tandava.log", console=None, **logging_for(view, verbose=False))
    song = settings.paths.inbox / DEMO_SONG
    # A new seed each time: a second demo is a new song, not a duplicate of the first.
    truth = write_song(song, DEMO_SECONDS, DEMO_BPM, section_change_at=DEMO_SECONDS / 2,
                       seed=time.time_ns() % 2**31)
    # --once takes only files that have settled; this one is complete already.
    past = time.time() - 2 * settings.watch.stable_seconds
    os.utime(song, (past, past))
    print(f"synthesized {song.name}: {DEMO_SECONDS:.0f} s at {DEMO_BPM:.0f} BPM, "
          f"section change at {DEMO_SECONDS / 2:.0f} s", file=out)
    started, since = time.monotonic(), utcnow()
    run(settings, threading.Event(), once=True, view=view)
    elapsed = time.monotonic() - started
    store = RunStore(settings.paths.state_root)
    newest = max(store.iter_runs(), key=lambda ref: store.load(ref).created_at, default=None)
    if newest is None:
        print("the song did not become a run; see the log: " + str(settings.paths.logs), file=out)
        return 1
    print(f"run {newest.run_id} is in {newest.state.value}/ after {elapsed:.1f} s", file=out)
    print(f"  folder: {newest.path}", file=out)
    if newest.state is State.FAILED:
        print("  " + (newest.path / "error.json").read_text(encoding="utf-8"), file=out)
        return 1
    analysis = json.loads((newest.path / "analysis.json").read_text(encoding="utf-8"))
    plan = json.loads((newest.path / "segments.json").read_text(encoding="utf-8"))
    print(f"  tempo {analysis['tempo']:.1f} BPM (true {truth.bpm:.0f}), {len(analysis['beats'])} beats, "
          f"{len(analysis['sections'])} sections, {len(plan['segments'])} segments", file=out)
    states = " -> ".join(change["state"] for change in
                        json.loads((newest.path / "run.json").read_text(encoding="utf-8"))["history"])
    print(f"  states: {states}", file=out)
    if newest.state is State.RENDERED and (newest.path / "final.mp4").is_file():
        print(f"  thumbnail: {newest.path / 'thumbnail.jpg'}", file=out)
        print(f"  contact sheet: {newest.path / 'contact_sheet.png'}", file=out)
    summary = summarize(RunStore(settings.paths.state_root), since)
    if view is not None:
        report(summary, view.console, None)
    else:
        for line in summary_lines(summary):
            print(line, file=out)
    for line in next_steps(config, panel=f"http://{settings.web.host}:{settings.web.port}"):
        print(line, file=out)
    return 0 if newest.state is State.RENDERED else 1


def tandava_command(
    python: Path | None = None,
    *,
    which: Callable[[str], str | None] = shutil.which,
    cwd: Path | None = None,
) -> str:
    """The command that runs this installation's ``tandava`` from a fresh shell.

    A venv's script is not on PATH until the venv is activated, so a bare
    ``tandava`` would fail there: the script beside the running Python is named
    by its path (relative to here when it is below here), or, without one,
    ``python -m daemon``.
    """
    python = Path(sys.executable) if python is None else python
    script = python.parent / ("tandava.exe" if os.name == "nt" else "tandava")
    if not script.is_file():
        return f"{_shown(python, cwd)} -m daemon"
    found = which("tandava")
    if found is not None and Path(found).absolute() == script.absolute():
        return "tandava"
    return _shown(script, cwd)


def activate_hint(
    python: Path | None = None, *, cwd: Path | None = None
) -> str:
    """How to put ``tandava`` on PATH: activate its venv (empty when not in a venv)."""
    python = Path(sys.executable) if python is None else python
    venv = python.parent.parent
    if not (venv / "pyvenv.cfg").is_file():
        return ""
    if os.name == "nt":
        return _shown(venv / "Scripts" / "activate", cwd)
    return f"source {_shown(venv / 'bin' / 'activate', cwd)}"


def next_steps(config: Path, *, panel: str, command: str | None = None, activate: str | None = None) -> list[str]:
    """What the demo prints last: how to look at the demo run, then how to start for real."""
    tandava = tandava_command() if command is None else command
    activate = activate_hint() if activate is None else activate
    lines = [
        "",
        "next:",
        f"  look at the demo run:  {tandava} --config {_shown(config, None)} status",
        "  make your own videos, in this folder:",
        f"    {tandava} init   writes tandava.toml (every key, commented)",
        f"    {tandava} run    watches ./inbox and makes the videos; Ctrl-C stops it",
        f"    then drop songs into ./inbox, and approve their candidates at {panel}",
    ]
    if tandava != "tandava":
        how = f"activate the venv first: {activate}" if activate else "put its folder on PATH"
        lines.append(f"  (`tandava` alone is not on PATH in a new shell; to type it so, {how})")
    return lines


def _shown(path: Path, cwd: Path | None) -> str:
    """A path as a person types it here: relative when below the working folder, quoted if needed."""
    full = path.absolute()
    here = (cwd or Path.cwd()).absolute()
    if not full.is_relative_to(here):
        return _quote(str(full))
    rel = full.relative_to(here)
    # A bare name is looked up on PATH: a file right here needs its "./".
    return _quote(str(rel) if len(rel.parts) > 1 else f".{os.sep}{rel}")


def _quote(text: str) -> str:
    """Quoted only when a shell needs it (Windows: double quotes)."""
    if os.name == "nt":
        return f'"{text}"' if " " in text else text
    return shlex.quote(text)
