"""`tandava logs`: rendering, reading rolled files in order, filtering by run, following across a roll."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from datetime import UTC, timedelta, timezone
from pathlib import Path
from typing import Any

from daemon.host.logview import follow, last_events, log_files, render, show_logs

RUN = "20261121-101500_shiva-tandav_1a2b3c4d"
OTHER = "20261121-111500_other-song_9f9f9f9f"
IST = timezone(timedelta(hours=5, minutes=30))


def line(event: str, **fields: Any) -> str:
    return json.dumps({"event": event, "level": "info", "timestamp": "2026-11-21T10:15:00Z", **fields}) + "\n"


def write(path: Path, *lines: str) -> None:
    with path.open("a", encoding="utf-8") as fh:
        fh.writelines(lines)


def test_render_shows_local_time_level_event_run_stage_and_fields() -> None:
    """An info event is one line: local time, level, event, short run id, stage, then its fields."""
    event = {"timestamp": "2026-11-21T10:15:00.5Z", "level": "info", "event": "stage.step_done",
             "run_id": RUN, "stage": "analyze", "step": "tempo", "logger": "tandava.engine", "file": "शिव 🔱.mp3"}
    text = render(event, tz=IST)
    assert text == "2026-11-21 15:45:00 INFO    stage.step_done [shiva-tandav_1a2b] (analyze) step=tempo file=\"शिव 🔱.mp3\""


def test_render_puts_an_errors_reason_and_hint_on_their_own_lines() -> None:
    """An error's reason, hint and exception are shown below it, where they are hard to miss."""
    event = {"timestamp": "2026-11-21T10:15:00Z", "level": "error", "event": "run.failed", "run_id": RUN,
             "cause": "MissingModel", "reason": "ComfyUI has no model 'flux1-dev'", "hint": "put it in models/unet",
             "exception": [{"exc_type": "ValueError", "exc_value": "bad", "frames": []}]}
    lines = render(event, tz=UTC).splitlines()
    assert lines[0] == "2026-11-21 10:15:00 ERROR   run.failed [shiva-tandav_1a2b] cause=MissingModel"
    assert lines[1:] == ["    reason: ComfyUI has no model 'flux1-dev'", "    hint: put it in models/unet",
                         "    exception: ValueError: bad"]


def test_render_survives_odd_events() -> None:
    """A line that was not ours (no timestamp, no level) still renders."""
    assert "hello" in render({"event": "hello"})


def test_rolled_files_are_read_oldest_first_and_filtered_by_run(tmp_path: Path) -> None:
    """Backups .2, .1 then the current file, in that order; --run keeps one run's events by id prefix."""
    log_file = tmp_path / "tandava.log"
    write(tmp_path / "tandava.log.2", line("a", run_id=RUN), line("b", run_id=OTHER))
    write(tmp_path / "tandava.log.1", line("c", run_id=RUN), "not json at all\n")
    write(log_file, line("d", run_id=RUN), line("e"))
    assert [p.name for p in log_files(log_file)] == ["tandava.log.2", "tandava.log.1", "tandava.log"]
    assert [e["event"] for e in last_events(log_file)] == ["a", "b", "c", "not json at all", "d", "e"]
    assert [e["event"] for e in last_events(log_file, run="20261121-1015")] == ["a", "c", "d"]
    assert [e["event"] for e in last_events(log_file, run=RUN, lines=2)] == ["c", "d"]


def test_show_logs_without_a_log_says_so(tmp_path: Path) -> None:
    """No log file yet is a clear message, not a traceback."""
    out = io.StringIO()
    assert show_logs(tmp_path / "tandava.log", out) == 1
    assert "no log yet" in out.getvalue()


def collect(events: Iterator[dict[str, Any]], n: int) -> list[str]:
    got: list[str] = []
    for event in events:
        got.append(str(event["event"]))
        if len(got) == n:
            break
    return got


def test_follow_picks_up_appended_lines_and_survives_a_roll(tmp_path: Path) -> None:
    """Lines appended later are followed, including those written just before a roll and after it."""
    log_file = tmp_path / "tandava.log"
    write(log_file, line("old"))
    stop = threading.Event()
    steps = iter([
        lambda: write(log_file, line("one"), '{"event": "partial'),
        lambda: write(log_file, '", "level": "info"}\n'),
        # The daemon writes one more line, then rolls: it must come from tandava.log.1.
        lambda: (write(log_file, line("before roll")), log_file.rename(tmp_path / "tandava.log.1")),
        lambda: None,  # between the rename and the new file's first line
        lambda: write(log_file, line("after roll")),
        # A roll by truncation (size shrinks) is noticed too.
        lambda: log_file.write_text(line("fresh"), encoding="utf-8"),
    ])

    def sleep(_seconds: float) -> None:
        step = next(steps, None)
        if step is None:
            stop.set()
        else:
            step()

    events = follow(log_file, stop=stop, poll_seconds=0, sleep=sleep)
    assert collect(events, 5) == ["one", "partial", "before roll", "after roll", "fresh"]


def test_show_logs_follow_filters_by_run(tmp_path: Path) -> None:
    """--follow with --run prints only that run's new events, rendered."""
    log_file = tmp_path / "tandava.log"
    write(log_file, line("seen", run_id=RUN))
    out = io.StringIO()
    stop = threading.Event()

    def writer() -> None:
        write(log_file, line("mine", run_id=RUN), line("theirs", run_id=OTHER))
        threading.Timer(0.3, stop.set).start()

    threading.Timer(0.1, writer).start()
    assert show_logs(log_file, out, run=RUN[:15], lines=5, follow_=True, stop=stop, poll_seconds=0.02) == 0
    text = out.getvalue()
    assert "seen" in text and "mine" in text and "theirs" not in text
