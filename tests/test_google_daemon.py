"""The daemon with Google's backends on a fake Google: song to final.mp4, crash safety, caps, safety."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakegoogle import API_KEY, TOKEN, FakeGoogle
from google_helpers import google_settings

from daemon.app import run
from daemon.approval.decisions import run_view
from daemon.backends.google.costs import COST_FILE, SPEND_DIR
from daemon.cli import main
from daemon.host.report import show_lines, status_lines
from daemon.music.synth import write_song
from daemon.runs.states import State
from daemon.runs.store import RunStore
from daemon.video import media


@pytest.fixture
def fake() -> Iterator[FakeGoogle]:
    with FakeGoogle(op_seconds=0.3) as server:
        yield server


@pytest.fixture(autouse=True)
def no_key_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("GOOGLE_API_KEY", "GEMINI_API_KEY", "GOOGLE_CLOUD_PROJECT", "GOOGLE_GENAI_USE_VERTEXAI"):
        monkeypatch.delenv(name, raising=False)


def _drop(path: Path, seconds: float, bpm: float, **kwargs: float) -> None:
    """A synthesized song in the inbox that looks a minute old (complete for --once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_song(path, seconds, bpm, **kwargs)
    old = time.time() - 60
    os.utime(path, (old, old))


def _runs(settings_root: Path, state: State) -> list[Path]:
    return [ref.path for ref in RunStore(settings_root).iter_runs([state])]


def test_song_to_final_video_with_gemini_images_and_veo_interpolation(tmp_path: Path, fake: FakeGoogle) -> None:
    """A synthesized song becomes final.mp4 from Gemini candidates (with the reference) and Veo clips
    that end on the next segment's image; the ledger matches what the fake billed."""
    settings = google_settings(tmp_path, fake)
    _drop(settings.paths.inbox / "tandava.wav", 14.0, 120.0, section_change_at=7.0)
    assert run(settings, threading.Event(), once=True) == 0
    [run_dir] = _runs(settings.paths.state_root, State.RENDERED)
    info = media.probe(run_dir / "final.mp4")
    assert info.width == 320 and info.height == 180 and info.has_audio
    images = fake.requests(":generateContent")
    assert images and all(any("inlineData" in p for p in c["body"]["contents"][0]["parts"]) for c in images)
    ops = list(fake.operations.values())
    assert fake.submits == len(ops) >= 2
    assert [op["last_frame"] for op in ops][:-1] == [True] * (len(ops) - 1) and ops[-1]["last_frame"] is False
    assert all(op["audio"] is False for op in ops)
    cost = json.loads((run_dir / COST_FILE).read_text(encoding="utf-8"))
    entries = cost["entries"].values()
    assert sum(e["units"] for e in entries if e["kind"] == "clip" and e["status"] == "billed") == fake.billed_seconds
    assert sum(1 for e in entries if e["kind"] == "image" and e["status"] == "billed") == fake.billed_images
    assert cost["estimate"]["clips"]["count"] == len(ops)
    assert sum(cost["estimate"]["clips"]["seconds"]) == fake.billed_seconds
    assert list((settings.paths.state_root / SPEND_DIR).glob("*.json"))
    view = run_view(RunStore(settings.paths.state_root), RunStore(settings.paths.state_root).find(run_dir.name))
    assert any(line.startswith("clips: ") for line in view.cost) and any("spent $" in line for line in view.cost)
    for path in [*tmp_path.rglob("*.json"), *tmp_path.rglob("*.log*")]:
        text = path.read_text(encoding="utf-8", errors="replace")
        assert API_KEY not in text, path
        assert path.name == "adc.json" or TOKEN not in text, path  # the credentials file holds it, nothing else


def _conf_cmd(settings_file: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "daemon", "--config", str(settings_file), *args]


def _clean_env() -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items()
            if not k.startswith("TANDAVA_") and k not in ("GOOGLE_API_KEY", "GEMINI_API_KEY")}
    return keep | {"PYTHONUTF8": "1"}


def test_kill_9_with_three_operations_running_submits_nothing_twice(tmp_path: Path, fake: FakeGoogle) -> None:
    """A daemon killed while three Veo operations run re-attaches to them by name after its restart:
    the fake sees three submits in all, and all three clips are collected."""
    settings = google_settings(tmp_path, fake, extra="[analysis]\nsegments = 3\n")
    _drop(settings.paths.inbox / "nataraja.wav", 12.0, 120.0)
    fake.op_seconds = 3600.0  # nothing finishes while the first daemon lives
    conf = tmp_path / "tandava.toml"
    proc = subprocess.Popen(_conf_cmd(conf, "run"), env=_clean_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        def all_recorded() -> bool:
            runs = _runs(settings.paths.state_root, State.APPROVED)
            if fake.submits < 3 or not runs:
                return False
            jobs = json.loads((runs[0] / "run.json").read_text(encoding="utf-8"))["jobs"].values()
            return sum(1 for j in jobs if j["kind"] == "clip" and j["detail"].get("operation")) == 3

        fake.wait_for(all_recorded, timeout=120)
    finally:
        proc.kill()
        proc.wait()
    assert fake.submits == 3
    fake.op_seconds = 0.0
    done = subprocess.run(_conf_cmd(conf, "run", "--once"), env=_clean_env(), capture_output=True, text=True,
                          encoding="utf-8", timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert API_KEY not in done.stdout + done.stderr
    [run_dir] = _runs(settings.paths.state_root, State.RENDERED)
    assert fake.submits == 3  # re-attached by name, never sent again
    assert all(op["done"] for op in fake.operations.values())
    assert media.probe(run_dir / "final.mp4").frames > 0
    cost = json.loads((run_dir / COST_FILE).read_text(encoding="utf-8"))
    clips = [e for e in cost["entries"].values() if e["kind"] == "clip"]
    assert len(clips) == 3 and sum(e["units"] for e in clips) == fake.billed_seconds
    for path in [*tmp_path.rglob("*.json"), *tmp_path.rglob("*.log*")]:
        assert API_KEY not in path.read_text(encoding="utf-8", errors="replace"), path


def test_a_cap_below_the_estimate_holds_the_run_until_the_cap_is_raised(tmp_path: Path, fake: FakeGoogle,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Over max_usd_per_run the run waits with the figures and the way on, nothing is sent; a raised cap
    lets it finish, and the ledger adds up to what the fake billed."""
    settings = google_settings(tmp_path, fake, extra="max_usd_per_run = 0.5\n[analysis]\nsegments = 3\n")
    _drop(settings.paths.inbox / "budget.wav", 12.0, 120.0)
    assert run(settings, threading.Event(), once=True) == 0
    [run_dir] = _runs(settings.paths.state_root, State.APPROVED)
    assert fake.submits == 0  # images were within the cap, no clip was sent
    waiting = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))["stages"]["render"]["detail"]["waiting"]
    assert "max_usd_per_run = $0.50" in waiting and "estimate" in waiting
    status = "\n".join(status_lines(settings.paths.state_root))
    estimate = json.loads((run_dir / COST_FILE).read_text(encoding="utf-8"))["estimate"]
    assert estimate["clips"]["count"] == 3 and all(s in (4, 6) for s in estimate["clips"]["seconds"])
    assert "max_usd_per_run" in status and estimate["clips"]["text"] in status
    assert "google spend today" in status
    assert main(["--config", str(tmp_path / "tandava.toml"), "spend", run_dir.name]) == 0
    printed = capsys.readouterr().out
    assert "google spend today" in printed and estimate["clips"]["text"] in printed
    settings.google.max_usd_per_run = 5.0
    assert run(settings, threading.Event(), once=True) == 0
    [run_dir] = _runs(settings.paths.state_root, State.RENDERED)
    entries = json.loads((run_dir / COST_FILE).read_text(encoding="utf-8"))["entries"].values()
    assert sum(e["units"] for e in entries if e["kind"] == "clip" and e["status"] == "billed") \
        == fake.billed_seconds == sum(estimate["clips"]["seconds"])
    assert sum(1 for e in entries if e["kind"] == "image" and e["status"] == "billed") == fake.billed_images == 3


def test_a_filtered_clip_is_rewritten_once_then_falls_back_to_ken_burns(tmp_path: Path, fake: FakeGoogle) -> None:
    """Veo's safety filter on a clip and on its rewritten prompt: the segment gets a Ken Burns clip,
    the run renders, says so in `show`, and the filtered clips cost nothing."""
    settings = google_settings(tmp_path, fake, extra="[analysis]\nsegments = 3\n")
    _drop(settings.paths.inbox / "filtered.wav", 12.0, 120.0)
    fake.video_replies.extend(["filtered", "ok", "ok", "filtered"])
    assert run(settings, threading.Event(), once=True) == 0
    [run_dir] = _runs(settings.paths.state_root, State.RENDERED)
    prompts = [op["prompt"] for op in fake.operations.values()]
    assert len(prompts) == 4 and prompts[3].startswith("A calm") and prompts[3] != prompts[0]
    shown = "\n".join(show_lines(RunStore(settings.paths.state_root), run_dir.name))
    assert "fallbacks" in shown and "Ken Burns clip of the approved image" in shown
    manifest = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    assert any(j["backend"] == "kenburns" and j["status"] == "done" for j in manifest["jobs"].values())
    assert sum(1 for j in manifest["jobs"].values() if "filtered" in j["detail"]) == 2
    entries = json.loads((run_dir / COST_FILE).read_text(encoding="utf-8"))["entries"].values()
    assert sum(1 for e in entries if e["kind"] == "clip" and e["status"] == "free") == 2
    assert sum(e["units"] for e in entries if e["kind"] == "clip" and e["status"] == "billed") == fake.billed_seconds
    assert media.probe(run_dir / "final.mp4").frames > 0
