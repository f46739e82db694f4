"""Status never goes stale: a waiting, a failed and a rendered run through status, show, the panel and /healthz.

One real pipeline (a synthesized song, storyboard candidates, Ken Burns clips)
and one file that is not audio, run with ``--once`` as a person would.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from structlog.testing import capture_logs

from daemon.app import run
from daemon.approval import decisions
from daemon.channels.web.server import WebPanel
from daemon.config import Settings
from daemon.host.report import show_lines, status_lines
from daemon.music.synth import write_song
from daemon.runs.health import health_json
from daemon.runs.states import State
from daemon.runs.store import RunStore


def once(settings: Settings) -> None:
    assert run(settings, threading.Event(), once=True) == 0


def lines_of(store: RunStore, run_id: str) -> list[str]:
    return list(show_lines(store, run_id))


def stage_line(lines: list[str], stage: str) -> str:
    return next(line for line in lines if line.startswith(f"  {stage}: "))


@pytest.fixture
def two_runs(settings: Settings) -> Iterator[tuple[Settings, RunStore, str, str]]:
    """A song waiting for approval and a file that failed, after one `run --once`."""
    settings.approval.mode = "manual"
    settings.images.candidates = 1
    settings.web.enabled = False
    inbox = settings.paths.inbox
    inbox.mkdir(parents=True, exist_ok=True)
    write_song(inbox / "dance.wav", 8.0, 120.0)
    (inbox / "notes.mp3").write_bytes(b"this is not audio " * 200)
    settled = time.time() - 60  # copied a minute ago: --once takes settled files only
    for song in inbox.iterdir():
        os.utime(song, (settled, settled))
    once(settings)
    store = RunStore(settings.paths.state_root)
    (waiting,) = [r.run_id for r in store.iter_runs([State.PENDING_APPROVAL])]
    (failed,) = [r.run_id for r in store.iter_runs([State.FAILED])]
    yield settings, store, waiting, failed


def test_status_and_show_tell_waiting_failed_and_rendered_runs_apart(
        two_runs: tuple[Settings, RunStore, str, str]) -> None:
    """status names what a waiting run waits for and why a run failed; once rendered, nothing is left open."""
    settings, store, waiting, failed = two_runs
    status = list(status_lines(store.root))
    assert not any("working on" in line for line in status), status
    assert any(line.startswith("daemon stopped") for line in status)
    assert any(line.startswith(f"  {waiting}  approval: waiting for a person to approve") for line in status)
    assert any(line.startswith(f"  {failed}  failed in analyze:") for line in status)
    assert any(line.startswith(f"last error: {failed} in analyze:") for line in status)
    assert stage_line(lines_of(store, waiting), "approval").startswith("  approval: waiting;")
    assert stage_line(lines_of(store, waiting), "analyze").startswith("  analyze: finished;")
    assert stage_line(lines_of(store, failed), "analyze").startswith("  analyze: failed;")

    decisions.approve_all(store, waiting, by="test", channel="cli")
    with capture_logs() as logs:
        once(settings)
    assert store.find(waiting).state is State.RENDERED
    (done,) = [e for e in logs if e["event"] == "render.done"]
    assert done["video"] == "final.mp4" and Path(done["path"]).is_file()  # where it stays, not approved/
    status = list(status_lines(store.root))
    rendered_line = next(line for line in status if line.startswith(f"  {waiting}  "))
    assert "approval" not in rendered_line and "BPM" in rendered_line, rendered_line
    assert not any("working on" in line for line in status)
    shown = lines_of(store, waiting)
    for stage in ("analyze", "images", "offer", "approval", "render"):
        assert stage_line(shown, stage).startswith(f"  {stage}: finished;"), shown
    assert not any("waiting=" in line or "in progress" in line for line in shown)


def test_panel_and_healthz_tell_the_same(two_runs: tuple[Settings, RunStore, str, str]) -> None:
    """The panel shows the waiting reason only on the waiting run's card; /healthz says no run is worked on."""
    settings, store, waiting, failed = two_runs
    settings.web.port = 0
    health = health_json(store.root)
    assert health["ok"] is False and health["in_flight"] == [] and health["stopped_at"]
    with WebPanel(settings, store, poll_seconds=0) as panel:
        base = panel.url.rstrip("/")
        with requests.Session() as http:
            failed_page = http.get(f"{base}/runs/{failed}", timeout=10).text
            index = http.get(f"{base}/", timeout=10).text
            healthz = http.get(f"{base}/healthz", timeout=10).json()
    assert "analyze:" not in failed_page and "What went wrong" in failed_page
    waiting_card = index[index.index(f'id="run-{waiting}"'):]
    waiting_card = waiting_card[:waiting_card.index("</article>")]
    assert "approval: waiting for a person to approve" in waiting_card
    failed_card = index[index.index(f'id="run-{failed}"'):]
    assert "analyze:" not in failed_card[:failed_card.index("</article>")]
    assert healthz["in_flight"] == [] and healthz["ok"] is False
