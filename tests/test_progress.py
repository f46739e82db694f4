"""Progress as the engine knows it: step counts, the board, and ffmpeg's out_time during a real assembly."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.config import AssemblyConfig, Settings
from daemon.music.synth import write_song
from daemon.runs.progress import ProgressBoard, StepCount
from daemon.runs.states import Event
from daemon.runs.store import RunRef, RunStore
from daemon.video.assembly import assemble
from daemon.video.media import find_ffmpeg, parse_progress_line, run_ffmpeg
from daemon.video.timeline import build_timeline


def test_step_count_labels_counts_and_measured_steps() -> None:
    """Counted steps read as done/total; a step measured in seconds reads as a percentage."""
    assert StepCount("clips", 12, 41).label() == "clips 12/41"
    assert StepCount("assembly", 153.6, 240.0, unit="s").label() == "assembly 64 %"
    assert StepCount("candidates", 0, 0).fraction == 1.0


def test_step_count_round_trips_through_a_stage_detail() -> None:
    """What run.json keeps under detail["progress"] reads back as the same count; junk reads as None."""
    count = StepCount("assembly", 12.5, 40.0, unit="s")
    assert StepCount.from_detail({"progress": count.to_json()}) == count
    assert StepCount.from_detail({"progress": {"step": "x"}}) is None
    assert StepCount.from_detail({"progress": "half"}) is None
    assert StepCount.from_detail({}) is None


def test_board_follows_a_run_through_its_stages() -> None:
    """begin, report, wait and moved keep one row per run; a finished run leaves the rows and is listed."""
    board = ProgressBoard()
    board.begin("r1", "song.wav", "analyzed", "images")
    board.report("r1", StepCount("candidates", 3, 8))
    assert board.runs()[0].count == StepCount("candidates", 3, 8)
    board.moved("r1", "imaged")  # queued, still saying what is done
    assert (board.runs()[0].state, board.runs()[0].stage, board.runs()[0].count) == (
        "imaged", "", StepCount("candidates", 3, 8))
    board.begin("r1", "song.wav", "pending_approval", "approval")
    board.wait("r1", "waiting for a person", "2 of 4 segments to approve")
    board.begin("r1", "song.wav", "pending_approval", "approval")  # a re-check keeps what it waits for
    assert board.runs()[0].ask == "2 of 4 segments to approve"
    version = board.version
    board.wait("r1", "waiting for a person", "2 of 4 segments to approve")
    assert board.version == version  # nothing changed, nothing to redraw
    board.moved("r1", "rendered")
    assert board.runs() == [] and board.finished() == [("r1", "rendered")]


@pytest.mark.parametrize(
    ("line", "seconds"),
    [("out_time_us=1500000\n", 1.5), ("out_time=00:01:02.250000", 62.25), ("out_time_us=N/A", None),
     ("out_time=-577014:32:22.771807", None), ("progress=continue", None), ("frame=12", None)],
)
def test_progress_lines_parse_to_seconds(line: str, seconds: float | None) -> None:
    """ffmpeg's -progress lines give seconds of output; N/A and the negative start value give nothing."""
    assert parse_progress_line(line) == seconds


def test_assembly_progress_rises_monotonically_to_the_whole_song(tmp_path: Path) -> None:
    """A real assembly reports ffmpeg's out_time, never going back, ending at 100 % of the song."""
    ffmpeg = find_ffmpeg()
    seconds = 30.0
    song = tmp_path / "song.wav"
    write_song(song, seconds, 120.0)
    tl = build_timeline([0.0, 10.0, 20.0, seconds], fps=16, max_frames=None)
    clips = []
    for i, request in enumerate(tl.clips):
        clip = tmp_path / f"clip{i}.mp4"
        run_ffmpeg(ffmpeg, ["-f", "lavfi", "-i", "testsrc2=s=320x192:r=16", "-frames:v", str(request.frames),
                            "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(clip)],
                   what="make a test clip")
        clips.append(clip)
    seen: list[float] = []
    assemble(tl, clips, song, tmp_path, width=320, height=192, cfg=AssemblyConfig(transition="none"),
             ffmpeg=ffmpeg, progress=seen.append)
    fractions = [StepCount("assembly", s, tl.duration, unit="s").fraction for s in seen]
    assert fractions == sorted(fractions)
    assert fractions[-1] == 1.0
    assert len(fractions) >= 2 and fractions[0] < 1.0  # ffmpeg spoke before it ended


def test_run_ffmpeg_with_progress_still_names_a_failure(tmp_path: Path) -> None:
    """An ffmpeg that fails while reporting progress still raises with its own message."""
    from daemon.errors import PermanentError

    with pytest.raises(PermanentError, match="ffmpeg failed to read nothing"):
        run_ffmpeg(find_ffmpeg(), ["-i", str(tmp_path / "missing.wav"), str(tmp_path / "out.mp4")],
                   what="read nothing", progress=lambda _s: None)


def _run_with(store: RunStore, tmp_path: Path, name: str, digest: str) -> RunRef:
    song = tmp_path / name
    song.write_bytes(b"ID3" + name.encode())
    return store.create(song, digest)


def test_status_health_and_panel_show_the_recorded_count(store: RunStore, tmp_path: Path,
                                                         settings: Settings) -> None:
    """The assembly's percentage recorded in run.json reaches status; the board's count reaches the health file."""
    from daemon.channels.web.views import stage_lines
    from daemon.host.report import show_lines, status_lines
    from daemon.runs.health import HealthReporter, health_lines

    ref = _run_with(store, tmp_path, "song.mp3", "ab" * 32)
    for event in (Event.ANALYSIS_DONE, Event.IMAGES_DONE, Event.OFFERED, Event.ALL_APPROVED):
        ref = store.move(ref, event)
    manifest = store.load(ref)
    render = manifest.progress("render")
    render.started_at = store.clock()
    render.detail["progress"] = StepCount("assembly", 96.0, 150.0, unit="s").to_json()
    store.save(ref, manifest)
    assert "render: starting (attempt 0); assembly 64 %" in "\n".join(status_lines(store.root))
    assert stage_lines(store.load(ref)) == ["render: starting (attempt 0); assembly 64 %"]
    assert any(line.endswith("; assembly 64 %") for line in show_lines(store, ref.run_id))
    board = ProgressBoard()
    board.begin(ref.run_id, "song.mp3", "approved", "render")
    board.report(ref.run_id, StepCount("clips", 3, 8))
    reporter = HealthReporter(settings, store, in_flight=lambda: [ref.run_id], progress=board.as_json)
    reporter.tick()
    assert f"working on: {ref.run_id} (clips 3/8)" in list(health_lines(store.root))
    assert reporter.last is not None and reporter.last.progress[ref.run_id]["stage"] == "render"


def test_summary_names_videos_decisions_and_failures_with_what_to_do(store: RunStore, tmp_path: Path) -> None:
    """The summary lists the video's path, the approve command and panel URL, and the reason with retry."""
    from daemon.errors import PermanentError
    from daemon.host.summary import summarize, summary_lines
    from daemon.runs.manifest import utcnow

    since = utcnow()
    waiting = _run_with(store, tmp_path, "waits.mp3", "ab" * 32)
    for event in (Event.ANALYSIS_DONE, Event.IMAGES_DONE, Event.OFFERED):
        waiting = store.move(waiting, event)
    manifest = store.load(waiting)
    manifest.progress("approval").detail["waiting"] = "waiting for a person to approve 3 of 5 segment(s): `...`"
    store.save(waiting, manifest)
    broken = _run_with(store, tmp_path, "broken.mp3", "cd" * 32)
    store.fail(broken, "analyze", PermanentError("the song is not audio", "Re-export it.", cause="BadInput"))
    lines = list(summary_lines(summarize(store, since, panel="http://127.0.0.1:8420/")))
    text = "\n".join(lines)
    assert "waits.mp3: waiting for a person to approve 3 of 5 segment(s)" in text
    assert f"    tandava pending; tandava approve {waiting.run_id} --all" in lines
    assert f"    http://127.0.0.1:8420/runs/{waiting.run_id}" in lines
    assert "broken.mp3: analyze: the song is not audio" in text
    assert "    fix: Re-export it." in lines and f"    tandava retry {broken.run_id}" in lines
    assert "made" not in text
