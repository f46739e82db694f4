"""The live view on a terminal: a real --once run recorded, narrow and dumb terminals, logs above it."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import structlog
from rich.console import Console

from daemon.app import run
from daemon.config import Settings
from daemon.host.live import (
    EtaClock,
    Footer,
    Frame,
    LiveView,
    footer_lines,
    format_eta,
    logging_for,
    render_frame,
    view_for,
)
from daemon.host.summary import report, summarize
from daemon.logs import configure_logging
from daemon.music.synth import write_song
from daemon.runs.manifest import utcnow
from daemon.runs.progress import RunProgress, StepCount
from daemon.runs.store import RunStore

SONG = "Shiva Tandava (live).wav"
LONG_SONG = "शिव तांडव स्तोत्रम् — a very long song name that no terminal row can hold 🔱.mp3"


def _drop_song(settings: Settings, seconds: float = 10.0, name: str = SONG) -> Path:
    """A synthesized song in the inbox, old enough for --once to take."""
    settings.paths.inbox.mkdir(parents=True, exist_ok=True)
    song = settings.paths.inbox / name
    write_song(song, seconds, 120.0, section_change_at=seconds / 2, seed=7)
    past = time.time() - 10
    os.utime(song, (past, past))
    return song


def _small(settings: Settings) -> Settings:
    settings.approval.mode = "auto"
    settings.video.width, settings.video.height = 160, 96
    return settings


def _recorded(width: int) -> Console:
    return Console(file=io.StringIO(), width=width, height=30, record=True, force_terminal=True,
                   color_system=None, highlight=False, soft_wrap=False)


def test_a_once_run_shows_counts_no_job_lines_and_a_summary(settings: Settings, tmp_path: Path) -> None:
    """A real --once run on a recorded console: counts reach the jobs done, no job.done line, the video listed."""
    _small(settings)
    _drop_song(settings, seconds=40.0)  # an assembly long enough (over a second) for the view to see it
    console = _recorded(100)
    view = LiveView(console, transient=False)
    configure_logging(log_file=tmp_path / "logs" / "daemon.log", console=None, **logging_for(view, verbose=False))
    started = utcnow()
    assert run(settings, threading.Event(), once=True, view=view) == 0
    store = RunStore(settings.paths.state_root)
    report(summarize(store, started), console, None)
    text = console.export_text()
    (ref,) = store.iter_runs()
    jobs = store.load(ref).jobs.values()
    images = sum(1 for j in jobs if j.kind == "image" and j.status == "done")
    clips = sum(1 for j in jobs if j.kind == "clip" and j.status == "done")
    # The view samples the board up to 4 times a second: a fast step may finish between two looks,
    # so what it showed must be true (totals exact, never ahead), and the slower clips seen to the end.
    shown = {step: [(int(d), int(t)) for d, t in re.findall(rf"{step} (\d+)/(\d+)", text)]
             for step in ("candidates", "clips")}
    assert shown["candidates"] and {t for _, t in shown["candidates"]} == {images}
    assert all(d <= images for d, _ in shown["candidates"])
    assert max(shown["clips"]) == (clips, clips)
    assert re.search(r"assembly \d+ %", text)
    assert "job.done" not in text and "stage.step_done" not in text
    assert f"video: {ref.path / 'final.mp4'}" in text
    assert view.refreshes <= 4 * 60  # at most four redraws a second, and only on change
    log_events = [json.loads(line)["event"] for line in
                  (tmp_path / "logs" / "daemon.log").read_text(encoding="utf-8").splitlines()]
    assert "job.done" in log_events  # info went to the file


def test_piped_output_is_json_lines_with_every_event(settings: Settings, tmp_path: Path) -> None:
    """`run --once` into a pipe: JSON lines only, every event of the log file present, no live area."""
    _small(settings)
    settings.config_file.write_text(  # type: ignore[union-attr]
        settings.config_file.read_text(encoding="utf-8")  # type: ignore[union-attr]
        + '\n[approval]\nmode = "auto"\n[video]\nwidth = 160\nheight = 96\n', encoding="utf-8")
    _drop_song(settings, seconds=6.0)
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    done = subprocess.run([sys.executable, "-m", "daemon", "--config", str(settings.config_file), "run", "--once"],
                          capture_output=True, text=True, encoding="utf-8", env=env, timeout=240, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "\x1b[" not in done.stderr + done.stdout
    console = [json.loads(line) for line in done.stderr.splitlines()]  # every line parses
    logged = [json.loads(line) for line in
              (settings.paths.logs / "tandava.log").read_text(encoding="utf-8").splitlines()]
    assert [e["event"] for e in console] == [e["event"] for e in logged]
    events = {e["event"] for e in console}
    assert {"daemon.once", "job.done", "run.moved", "render.done", "once.summary"} <= events


def _frame() -> Frame:
    return Frame(
        [RunProgress("20261204-100000_a_1", LONG_SONG, "analyzed", "images", StepCount("candidates", 23, 82)),
         RunProgress("20261204-100001_b_2", "b.mp3", "approved", "render", StepCount("assembly", 150, 240, "s")),
         RunProgress("20261204-100002_c_3", LONG_SONG, "pending_approval", "approval", None,
                     "waiting for a person", "41 of 41 segments to approve"),
         RunProgress("20261204-100003_d_4", "d.mp3", "approved", "render", None,
                     "ComfyUI at 127.0.0.1:8188 is down: not answering")],
        Footer(inbox="/srv/tandava/a/very/long/path/to/the/inbox/folder/of/this/installation",
               panel="http://127.0.0.1:8420/", backends=[{"name": "gpu0", "up": True}, {"name": "gpu1", "up": False}], spend="$1.20",
               counts={"analyzed": 1, "pending_approval": 1, "approved": 2}),
    )


@pytest.mark.parametrize("width", [60, 80, 132])
def test_lines_are_cut_to_the_width_never_wrapped(width: int) -> None:
    """At 60, 80 and 132 columns every line fits and each run is one line: nothing wraps."""
    console = _recorded(width)
    frame = _frame()
    console.print(render_frame(frame, console, EtaClock()))
    lines = console.export_text().rstrip("\n").split("\n")
    print("\n".join(lines))
    assert all(console.measure(line).maximum <= width for line in lines)
    assert len(lines) == len(frame.runs) + len(footer_lines(frame.footer))
    assert "waiting for you" in lines[2] and "ComfyUI 1/2 up" in lines[-2]


def test_wide_line_names_the_state_and_stage_the_bar_and_the_panel_url() -> None:
    """A wide terminal shows state › stage, counts, the assembly's percentage and the run's panel URL."""
    console = _recorded(200)
    console.print(render_frame(_frame(), console, EtaClock()))
    text = console.export_text()
    assert "analyzed › images" in text and "candidates 23/82" in text and "assembly 62 %" in text
    assert "waiting for you: 41 of 41 segments to approve — http://127.0.0.1:8420/runs/20261204-100002_c_3" in text
    narrow = _recorded(100)
    narrow.print(render_frame(_frame(), narrow, EtaClock()))
    assert "segments to approve — http://127.0.0.1:8420/\n" in narrow.export_text()  # the page would not fit
    assert "━" in text and "ComfyUI 1/2 up (down: gpu1)" in text


def test_a_gate_reason_becomes_a_short_ask() -> None:
    """The approval gate's reason, without its commands, is what the line asks of a person."""
    from daemon.host.live import person_ask

    reason = "waiting for a person to approve 3 of 5 segment(s): `tandava pending`, then `tandava approve r --all`"
    assert person_ask(RunProgress("r", "s", "pending_approval", "approval", None, reason)) == "approve 3 of 5 segment(s)"
    stuck = "every candidate of segment(s) 2 was rejected, 3 rounds each; approve one anyway (`tandava approve r 2:5`)"
    assert person_ask(RunProgress("r", "s", "pending_approval", "approval", None, stuck)) == (
        "every candidate of segment(s) 2 was rejected, 3 rounds each")


def test_eta_comes_from_the_measured_rate() -> None:
    """Ten candidates in ten seconds with forty left is forty seconds left."""
    now = [0.0]
    etas = EtaClock(clock=lambda: now[0])
    run = RunProgress("r", "s", "analyzed", "images", StepCount("candidates", 10, 60))
    assert etas.eta(run) is None  # nothing measured yet
    now[0] = 10.0
    assert etas.eta(RunProgress("r", "s", "analyzed", "images", StepCount("candidates", 20, 60))) == 40.0
    assert (format_eta(40.0), format_eta(62.0), format_eta(3725.0)) == ("ETA 0:40", "ETA 1:00", "ETA 1:02:00")


def test_a_cp1252_console_gets_ascii_bars_and_escaped_names() -> None:
    """A Windows console that cannot show Devanagari or the bar: no crash, an ASCII bar, the name escaped."""
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="cp1252", errors="backslashreplace")
    console = Console(file=stream, width=100, force_terminal=True, color_system=None, legacy_windows=False)
    console.print(render_frame(_frame(), console, EtaClock()))
    stream.flush()
    out = raw.getvalue().decode("cp1252")
    assert "candidates 23/82" in out and "━" not in out and "-" * 5 in out
    assert "\\u0936" in out  # श, escaped rather than a crash


def test_dumb_terminals_get_plain_lines_and_no_color_gets_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    """TERM=dumb: a plain view printing a run's line only when it changes; NO_COLOR: no colour codes."""

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    monkeypatch.setenv("TERM", "dumb")
    stream = Tty()
    view = view_for(stream, "auto")
    assert view is not None and view.mode == "plain"
    runs = [RunProgress("r", "song.mp3", "approved", "render", StepCount("clips", n, 40)) for n in (1, 2, 3, 11)]
    frames, served = iter([Frame([r], Footer()) for r in runs]), threading.Event()

    def source() -> Frame:
        frame = next(frames, None)
        if frame is None:
            served.set()
        return frame or Frame([runs[-1]], Footer())

    with view.showing(source):
        assert served.wait(30)
    lines = stream.getvalue().splitlines()
    assert lines == ["song.mp3  approved › render  clips 0 %", "song.mp3  approved › render  clips 25 %"]
    assert "\x1b" not in stream.getvalue()
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.setenv("NO_COLOR", "1")
    colourless = view_for(Tty(), "auto")
    assert colourless is not None and colourless.mode == "live" and colourless.console.no_color
    assert view_for(Tty(), "json") is None
    monkeypatch.setenv("JOURNAL_STREAM", "8:1234")
    assert view_for(Tty(), "auto") is None


@pytest.mark.parametrize("verbose", [False, True])
def test_warnings_print_above_the_view_and_info_only_with_verbose(tmp_path: Path, verbose: bool) -> None:
    """Under a view, warnings reach the console readably; info does only with -v; the file gets both."""
    console = _recorded(100)
    view = LiveView(console)
    configure_logging(log_file=tmp_path / "t.log", console=None, **logging_for(view, verbose=verbose))
    log = structlog.get_logger("tandava.test")
    log.info("job.done", job="x")
    log.warning("stage.retrying", error="ComfyUI went away")
    logging.getLogger().handlers[0].flush()
    text = console.export_text()
    assert "stage.retrying" in text and "ComfyUI went away" in text and not text.lstrip().startswith("{")
    assert ("job.done" in text) is verbose
    assert "job.done" in (tmp_path / "t.log").read_text(encoding="utf-8")


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="Ctrl-C is sent as SIGINT to the child")
def test_status_watch_shows_a_daemon_in_another_process_and_exits_on_ctrl_c(settings: Settings) -> None:
    """`status --watch` against a running daemon shows its waiting run, then exits 0 on Ctrl-C."""
    settings.video.width, settings.video.height = 160, 96
    conf = settings.config_file
    assert conf is not None
    conf.write_text(conf.read_text(encoding="utf-8") + '\n[approval]\nmode = "manual"\n', encoding="utf-8")
    _drop_song(settings, seconds=6.0)
    base = [sys.executable, "-m", "daemon", "--config", str(conf)]
    daemon = subprocess.Popen([*base, "run"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        pending = settings.paths.state_root / "pending_approval"
        while time.monotonic() < deadline and not (pending.is_dir() and any(pending.iterdir())):
            time.sleep(0.2)
        assert any(pending.iterdir()), "the song never reached pending_approval"
        time.sleep(3.0)  # the gate records what it waits for
        watcher = subprocess.Popen([*base, "status", "--watch"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True, encoding="utf-8")
        assert watcher.stdout is not None
        lines: list[str] = []
        shown = threading.Event()

        def read() -> None:
            assert watcher.stdout is not None
            for line in watcher.stdout:
                lines.append(line)
                if SONG in line:
                    shown.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        assert shown.wait(90), "status --watch never showed the run"  # a loaded machine starts slowly
        watcher.send_signal(signal.SIGINT)
        assert watcher.wait(timeout=30) == 0
        reader.join(timeout=10)
        err = watcher.stderr.read() if watcher.stderr else ""
        watcher.stdout.close()
        if watcher.stderr:
            watcher.stderr.close()
        out = "".join(lines)
        assert re.search(r"waiting for you: approve \d+ of \d+ segment\(s\)", out), out
        assert "Traceback" not in err
    finally:
        daemon.send_signal(signal.SIGINT)
        daemon.wait(timeout=60)


@pytest.mark.skipif(sys.platform == "win32", reason="a pseudo-terminal")
def test_run_once_on_a_terminal_shows_the_view_then_the_summary(settings: Settings) -> None:
    """`tandava run --once` on a terminal: a live area, no info lines, then what was made with its path."""
    import pty

    conf = settings.config_file
    assert conf is not None
    conf.write_text(conf.read_text(encoding="utf-8") + '\n[approval]\nmode = "auto"\n[video]\nwidth = 160\n'
                    'height = 96\n', encoding="utf-8")
    _drop_song(settings, seconds=6.0)
    env = {k: v for k, v in os.environ.items() if k not in {"JOURNAL_STREAM", "NO_COLOR"}}
    env.update(TERM="xterm-256color", COLUMNS="60", LINES="24")
    master, child = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "daemon", "--config", str(conf), "run", "--once"],
                            stdin=child, stdout=child, stderr=child, env=env)
    os.close(child)
    chunks = []
    try:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
        assert proc.wait(timeout=120) == 0
    raw = b"".join(chunks).decode("utf-8", "replace")
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw).replace("\r", "")
    (run_dir,) = (settings.paths.state_root / "rendered").iterdir()
    assert "\x1b[" in raw  # the area was drawn and redrawn in place
    assert "job.done" not in text and '"event"' not in text
    assert "made 1 video(s):" in text and f"video: {run_dir / 'final.mp4'}" in text
    # Cursor moves end a drawn line as a newline does; paths and commands stand whole on their own lines.
    drawn = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "\n", raw).replace("\r", "\n").splitlines()
    assert all(len(line) <= 60 for line in drawn if not line.startswith("    ")), max(drawn, key=len)


def test_watch_reads_a_state_root_and_changes_nothing(store: RunStore, tmp_path: Path) -> None:
    """status --watch shows a waiting run from disk, with its count, and leaves every file as it was."""
    from daemon.host.watch import watch
    from daemon.runs.states import Event

    song = tmp_path / "quiet.mp3"
    song.write_bytes(b"ID3 quiet")
    ref = store.move(store.create(song, "ef" * 32), Event.ANALYSIS_DONE)
    manifest = store.load(ref)
    images = manifest.progress("images")
    images.started_at = store.clock()
    images.detail["progress"] = StepCount("candidates", 5, 12).to_json()
    store.save(ref, manifest)

    def tree() -> dict[str, tuple[int, int]]:
        return {str(p): (p.stat().st_mtime_ns, p.stat().st_size) for p in store.root.rglob("*")}

    before = tree()
    out = io.StringIO()
    ends = time.monotonic() + 1.5
    assert watch(store.root, out, stop=lambda: time.monotonic() > ends) == 0
    assert tree() == before
    text = out.getvalue()
    assert "quiet.mp3  analyzed › images  candidates 25 %" in text  # plain: not a terminal
    assert "no daemon has written a heartbeat" not in text  # the footer is for the live area only
