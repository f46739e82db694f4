"""The API's parts on their own: per-run options, scene fitting, the event log, SSE resume, doctor."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests
from api_helpers import follow, upload
from pydantic import SecretStr, ValidationError

from daemon.channels.web.api.events import ChangeWatcher, EventLog
from daemon.channels.web.api.uploads import sniff_audio, sniff_image
from daemon.channels.web.server import WebPanel, doctor_checks
from daemon.config import Settings
from daemon.music.analysis import analyze_signal
from daemon.music.plan import plan_segments
from daemon.music.synth import synth_song, write_song
from daemon.runs.store import RunStore
from daemon.stages.options import (
    PHOTOS_DIR,
    RunOptions,
    SceneOverride,
    effective_settings,
    fit_scenes,
)


def test_options_change_only_that_runs_settings(settings: Settings, tmp_path: Path) -> None:
    """effective_settings lays a run's options (and its photos) over a copy; the installation's stay."""
    options = RunOptions.model_validate({"theme": "neutral", "writer": "theme", "approval": {"mode": "auto"},
                                         "candidates": 2, "transition": "none", "fps": 12, "width": 320,
                                         "height": 180, "exports": ["vertical"]})
    (tmp_path / PHOTOS_DIR).mkdir()
    run = effective_settings(settings, options, tmp_path)
    assert (run.approval.mode, run.images.candidates, run.assembly.transition, run.video.fps) == ("auto", 2, "none", 12)
    assert (run.video.width, run.video.height, run.assembly.exports) == (320, 180, ["vertical"])
    assert run.images.backend == "folder" and run.images.folder == tmp_path / PHOTOS_DIR
    assert (settings.approval.mode, settings.images.backend, settings.video.fps) == ("manual", "storyboard", 16)
    assert effective_settings(settings, None, tmp_path / "nothing") is settings


def test_a_scene_needs_a_place() -> None:
    """A scene gives a start or a segment index, not both nor neither; duration needs start."""
    for bad in ({"prompt": "x"}, {"segment": 1, "start": 2.0}, {"segment": 1, "duration": 2.0}):
        with pytest.raises(ValidationError):
            SceneOverride.model_validate(bad)


def test_scenes_snap_to_beats_and_leave_the_rest_to_the_writer() -> None:
    """Scenes by time and by index are cut on beats; segments no scene covers keep the written words."""
    y, _ = synth_song(24.0, 120.0, section_change_at=12.0)
    analysis = analyze_signal(y, 22050)
    written = [s.model_copy(update={"visual_prompt": f"written {s.index}", "motion_prompt": "drift"})
               for s in plan_segments(analysis)]
    scenes = [SceneOverride(start=6.3, duration=4.0, prompt="lotus", motion="zoom out", transition="fade"),
              SceneOverride(segment=len(written) - 1, prompt="ember")]
    fitted, transitions = fit_scenes(analysis, written, scenes, clip_seconds=81 / 16)
    assert fitted[0].start == 0.0 and fitted[-1].end == analysis.duration
    assert all(a.end == b.start for a, b in zip(fitted, fitted[1:], strict=False))
    lotus = [s for s in fitted if s.visual_prompt == "lotus"]
    assert len(lotus) == 1 and lotus[0].start in analysis.beats and abs(lotus[0].start - 6.3) <= 0.5
    assert lotus[0].motion_prompt == "zoom out" and transitions == {lotus[0].index: "fade"}
    assert fitted[-1].visual_prompt == "ember" and fitted[-1].motion_prompt == "drift"
    assert fitted[0].visual_prompt.startswith("written")


def test_sniffing_tells_audio_from_the_rest() -> None:
    """The song's first bytes decide: audio containers pass, text and images do not."""
    assert sniff_audio(b"ID3\x04") == "mp3" and sniff_audio(b"RIFF\0\0\0\0WAVEfmt ") == "wav"
    assert sniff_audio(b"fLaC") == "flac" and sniff_audio(b"\0\0\0\x20ftypM4A ") == "m4a"
    assert sniff_audio(b"hello") is None and sniff_audio(b"\x89PNG\r\n\x1a\n") is None
    assert sniff_image(b"\xff\xd8\xff\xe0") == ".jpg" and sniff_image(b"GIF89a") is None


def test_event_ids_increase_across_a_restart_and_state_passes_are_told(store: RunStore, tmp_path: Path) -> None:
    """A new log goes on from the last id; a run that went through states between looks is told each one."""
    from test_web import new_run

    from daemon.runs.states import Event

    log = EventLog(store.root / ".api")
    watcher = ChangeWatcher(store, log)
    watcher.poll()  # baseline
    ref = new_run(store, tmp_path, "a.wav")
    ref = store.move(store.move(ref, Event.ANALYSIS_DONE), Event.IMAGES_DONE)
    watcher.poll()
    kinds = [(e.type, e.data.get("state")) for e in log.since(0)]
    assert kinds == [("run.created", "incoming"), ("run.state", "analyzed"), ("run.state", "imaged")]
    again = EventLog(store.root / ".api")
    assert again.last_id == 3 and again.append("run.state", ref.run_id, {}).id == 4
    assert [e.id for e in again.since(2)] == [3, 4]


def test_sse_resumes_after_last_event_id(settings: Settings, store: RunStore, tmp_path: Path) -> None:
    """A client that sends Last-Event-ID gets only the events after it."""
    settings.web.port = 0
    settings.api.watch_seconds = 0.05
    song = tmp_path / "s.wav"
    write_song(song, 2.0, 120.0)
    with WebPanel(settings, store) as panel:
        base = panel.url + "api/v1"
        run_id = upload(base, song).json()["id"]
        first = follow(base, run_id, lambda e: e["type"] == "run.created", timeout=20)
        store.fail(store.find(run_id), "analyze", __import__("daemon.errors").errors.PermanentError("no", "fix"))
        later = follow(base, run_id, lambda e: e["type"] == "run.state", after=first[-1]["id"], timeout=20)
        assert later[0]["id"] > first[-1]["id"] and later[-1]["data"]["state"] == "failed"
        bad = requests.get(base + "/events", headers={"Last-Event-ID": "x"}, timeout=10)
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_event_id"
        detail = requests.get(f"{base}/runs/{run_id}", timeout=10).json()
        assert detail["error"] == {"stage": "analyze", "reason": "no", "hint": "fix"}
        retried = requests.post(f"{base}/runs/{run_id}/retry", timeout=10)
        assert retried.status_code == 200 and retried.json()["state"] == "incoming"


def test_doctor_names_the_api_address_and_its_token_rule(settings: Settings) -> None:
    """doctor reports where the API answers and whether a token is needed; webhooks without a secret fail."""
    settings.web.port = 8420
    checks = {c.name: c for c in doctor_checks(settings)}
    assert checks["http api"].ok and "http://127.0.0.1:8420/api/v1" in checks["http api"].detail
    assert "no token needed" in checks["http api"].detail
    settings.web.host, settings.web.token = "0.0.0.0", SecretStr("t" * 32)
    settings.api.webhooks = ["https://example.invalid/hook"]
    checks = {c.name: c for c in doctor_checks(settings)}
    assert "Authorization: Bearer" in checks["http api"].detail
    assert not checks["webhooks"].ok and "TANDAVA_API__WEBHOOK_SECRET" in checks["webhooks"].detail
    settings.api.webhook_secret = SecretStr("s" * 32)
    assert {c.name: c for c in doctor_checks(settings)}["webhooks"].ok
    assert "s" * 32 not in json.dumps([c.detail for c in doctor_checks(settings)])


def test_the_event_log_is_compacted_but_keeps_what_a_webhook_owes(tmp_path: Path) -> None:
    """Past its size the log keeps the last events and all a webhook has yet to deliver; ids go on."""
    log = EventLog(tmp_path, max_bytes=4000, keep=10)
    log.floor = lambda: 50
    for i in range(100):
        log.append("run.state", f"run{i}", {"state": "analyzed"})
    kept = [json.loads(line)["id"] for line in (tmp_path / "events.jsonl").read_text("utf-8").splitlines()]
    assert kept[0] == 51 and kept[-1] == 100
    assert EventLog(tmp_path).last_id == 100
