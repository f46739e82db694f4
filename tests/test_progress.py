"""Progress as the engine knows it: step counts, the board, and ffmpeg's out_time during a real assembly."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.config import AssemblyConfig
from daemon.music.synth import write_song
from daemon.runs.progress import ProgressBoard, StepCount
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
    board.moved("r1", "imaged")
    assert (board.runs()[0].state, board.runs()[0].stage, board.runs()[0].count) == ("imaged", "", None)
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
