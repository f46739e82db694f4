"""The whole daemon on a (fake) ComfyUI: a song becomes a video, bad clips are caught, restarts lose nothing."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from comfy_helpers import FLUX, WAN, models_for
from fakecomfy.server import FakeComfy, pan_zoom_frames, spoil_frames, write_video
from PIL import Image
from test_render import drop_song, only_run
from test_resilience import env

from daemon.app import run
from daemon.config import ManagedComfyConfig, Settings
from daemon.host.doctor import check_comfy
from daemon.music.synth import write_song
from daemon.runs.states import State
from daemon.video import media

MODELS = models_for(FLUX, WAN)


@pytest.fixture
def fake(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A fake ComfyUI with the shipped workflows' models."""
    with FakeComfy(tmp_path / "comfy", models=MODELS, job_seconds=0.02) as server:
        yield server


@pytest.fixture
def comfy(settings: Settings, fake: FakeComfy) -> Settings:
    """Settings that make images and clips on the fake server, approved automatically."""
    settings.images.backend = "comfyui"
    settings.clips.backend = "comfyui"
    settings.comfy.servers = [fake.url]
    settings.comfy.health_timeout_seconds = 1.0
    settings.approval.mode = "auto"
    settings.images.candidates = 1
    settings.assembly.transition = "none"
    settings.video.width, settings.video.height = 208, 128
    return settings


def test_song_becomes_a_video_on_comfyui(comfy: Settings, fake: FakeComfy) -> None:
    """Candidates from Flux and clips from Wan on the server; every job posted once; the video is complete."""
    drop_song(comfy, seconds=8.0)
    assert run(comfy, threading.Event(), once=True) == 0
    run_dir = only_run(comfy, State.RENDERED)
    manifest = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    jobs = manifest["jobs"]
    assert {j["backend"] for j in jobs.values()} == {"comfyui:flux_t2i", "comfyui:wan21_i2v"}
    assert sorted(fake.posted) == sorted(jobs)  # each job posted exactly once
    clip = next(j for j in jobs.values() if j["kind"] == "clip")
    assert clip["detail"]["motion"] > 0 and clip["detail"]["black_fraction"] == 0
    info = media.probe(run_dir / "final.mp4")
    assert info.has_audio and (info.width, info.height) == (208, 128)


@pytest.mark.parametrize(("mode", "word", "figure", "low", "high"), [
    ("black", "black", "black_fraction", 1.0, 1.0),
    ("frozen", "frozen", "motion", 0.0, 0.05),
    ("flash", "flash", "max_luma_jump", 60.0, 255.0),
])
def test_bad_clips_are_regenerated_then_fail_with_the_figures(comfy: Settings, fake: FakeComfy, mode: str,
                                                              word: str, figure: str, low: float, high: float) -> None:
    """Every clip comes back black, frozen or flashing: made again with new seeds, then the run fails with QC figures."""
    comfy.clips.qc_attempts = 2
    fake.video_mode = mode  # type: ignore[assignment]
    drop_song(comfy, seconds=6.0)
    run(comfy, threading.Event(), once=True)
    failed = only_run(comfy, State.FAILED)
    error = json.loads((failed / "error.json").read_text(encoding="utf-8"))
    assert error["cause"] == "QCFailed"
    assert word in error["reason"] and "2 different seeds" in error["reason"]
    assert low <= error["figures"][figure] <= high
    clips = [p for p in fake.posted if "-clip-" in p]
    assert len(clips) == 2 and len(set(clips)) == 2  # a new seed, a new job id


def test_one_black_clip_is_replaced_and_the_run_renders(comfy: Settings, fake: FakeComfy) -> None:
    """A single black clip is caught and made again with a new seed; the run still renders."""
    made: list[Path] = []

    def first_one_black(graph: dict, node: str, path: Path) -> None:
        made.append(path)
        start = next(n["inputs"]["image"] for n in graph.values() if n["class_type"] == "LoadImage")
        frames_in = next(n["inputs"]["length"] for n in graph.values() if n["class_type"] == "WanImageToVideo")
        with Image.open(fake.input_dir / start) as image:
            frames = pan_zoom_frames(image, frames_in, 208, 128)
        write_video(path, spoil_frames(frames, "black" if len(made) == 1 else "good"), 16)

    fake.video_maker = first_one_black
    drop_song(comfy, seconds=6.0)
    run(comfy, threading.Event(), once=True)
    run_dir = only_run(comfy, State.RENDERED)
    jobs = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))["jobs"]
    failed = [j for j in jobs.values() if j["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["kind"] == "clip"
    assert "black" in failed[0]["detail"]["qc"]
    assert len(made) == sum(1 for j in jobs.values() if j["kind"] == "clip")


def test_doctor_checks_servers_and_workflows(comfy: Settings, fake: FakeComfy) -> None:
    """doctor reports the server's memory and that both workflows fit it."""
    checks = list(check_comfy(comfy))
    assert [c.ok for c in checks] == [True, True, True]
    assert "GB free" in checks[0].detail
    assert "fits" in checks[1].detail


def test_doctor_names_a_missing_model_with_its_folder(comfy: Settings, tmp_path: Path) -> None:
    """doctor on a server without the Wan model names the file and the folder to put it in."""
    models = {k: [m for m in v if "wan2.1_i2v" not in m] for k, v in MODELS.items()}
    with FakeComfy(tmp_path / "other", models=models) as other:
        comfy.comfy.servers = [other.url]
        checks = list(check_comfy(comfy))
    bad = [c for c in checks if not c.ok]
    assert len(bad) == 1
    assert "wan2.1_i2v_480p_14B_fp8_e4m3fn.safetensors" in bad[0].detail
    assert "diffusion_models" in bad[0].detail


def test_doctor_reports_an_unreachable_server(comfy: Settings) -> None:
    """doctor says plainly when the configured ComfyUI cannot be reached."""
    comfy.comfy.servers = ["http://127.0.0.1:9"]
    checks = list(check_comfy(comfy))
    assert len(checks) == 1 and not checks[0].ok
    assert "cannot be reached" in checks[0].detail


def test_kill_9_mid_job_reattaches_and_posts_nothing_twice(tmp_path: Path, fake: FakeComfy) -> None:
    """A daemon killed while ComfyUI works finds the finished jobs after its restart: none is posted again."""
    from test_resilience import age, daemon_cmd, make_root

    conf = make_root(tmp_path)
    with conf.open("a", encoding="utf-8") as fh:
        fh.write(f'[comfy]\nservers = ["{fake.url}"]\nhealth_timeout_seconds = 1.0\n'
                 "[video]\nwidth = 208\nheight = 128\n[assembly]\ntransition = \"none\"\n")
    text = conf.read_text(encoding="utf-8").replace("[images]\n", "[images]\nbackend = \"comfyui\"\n")
    conf.write_text(text.replace("[approval]", "[clips]\nbackend = \"comfyui\"\n[approval]"), encoding="utf-8")
    write_song(tmp_path / "inbox" / "nataraja.wav", 6.0, 120.0)
    age(tmp_path / "inbox" / "nataraja.wav")
    fake.job_seconds = 1.0
    proc = subprocess.Popen(daemon_cmd(conf), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not fake.posted and time.monotonic() < deadline:
            time.sleep(0.02)
        assert fake.posted, "the daemon never posted a job"
    finally:
        proc.kill()
        proc.wait()
    fake.wait_idle(timeout=30)  # the jobs finish while no daemon is there
    fake.job_seconds = 0.02
    done = subprocess.run(daemon_cmd(conf, "--once"), env=env(), capture_output=True, text=True,
                          encoding="utf-8", timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    rendered = list((tmp_path / "state" / "rendered").iterdir())
    assert len(rendered) == 1
    assert len(fake.posted) == len(set(fake.posted))  # re-attached, never resubmitted


def comfyui_folder(tmp_path: Path) -> Path:
    """A "ComfyUI folder" whose main.py is the fake server, with the shipped workflows' models."""
    folder = tmp_path / "ComfyUI"
    folder.mkdir()
    shutil.copy(Path(__file__).parent / "fakecomfy" / "main.py", folder / "main.py")
    (folder / "models.json").write_text(json.dumps(MODELS), encoding="utf-8")
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def managed(settings: Settings, folder: Path, port: int) -> Settings:
    settings.comfy.servers = []
    settings.comfy.managed = ManagedComfyConfig(
        folder=folder, port=port, start_timeout_seconds=30,
        args=["--fake-models-json", str(folder / "models.json"), "--fake-job-seconds", "0.02"])
    return settings


def test_managed_comfyui_replaces_a_stale_one_and_renders(comfy: Settings, tmp_path: Path) -> None:
    """A hung ComfyUI of ours holds the port: it is killed, a new one launched, the song rendered, then stopped."""
    folder, port = comfyui_folder(tmp_path), free_port()
    stale = subprocess.Popen([sys.executable, str(folder / "main.py"), "--listen", "127.0.0.1", "--port",
                              str(port), "--fake-hang"], cwd=folder, env=env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        managed(comfy, folder, port)
        drop_song(comfy, seconds=6.0)
        assert run(comfy, threading.Event(), once=True) == 0
        assert stale.wait(timeout=10) is not None  # killed, not left behind
    finally:
        if stale.poll() is None:
            stale.kill()
            stale.wait()
    only_run(comfy, State.RENDERED)
    assert "To see the GUI" in (comfy.paths.logs / "comfyui.log").read_text(encoding="utf-8")
    with socket.socket() as s:  # the server we launched was stopped with the daemon
        assert s.connect_ex(("127.0.0.1", port)) != 0


def test_foreign_program_on_the_port_is_named_and_left_alone(comfy: Settings, tmp_path: Path) -> None:
    """Another program listens on ComfyUI's port: runs wait with a reason naming it, and it keeps running."""
    folder, port = comfyui_folder(tmp_path), free_port()
    code = (f"import socket, time; s = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen(); "
            "time.sleep(60)")
    foreign = subprocess.Popen([sys.executable, "-c", code], env=env())
    try:
        wait_for_port(port)
        managed(comfy, folder, port)
        drop_song(comfy, seconds=6.0)
        assert run(comfy, threading.Event(), once=True) == 0
        assert foreign.poll() is None
    finally:
        foreign.kill()
        foreign.wait()
    run_dir = only_run(comfy, State.ANALYZED)
    images = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))["stages"]["images"]
    assert f"pid {foreign.pid}" in images["detail"]["waiting"]


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


def test_status_shows_each_job_in_flight_with_its_server_and_progress(store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """`tandava status` lists a run's GPU jobs: how far each is and where (queued or running on which server)."""
    from daemon.backends.base import Job
    from daemon.host.report import status_lines
    from daemon.runs.states import Event

    song = tmp_path / "song.wav"
    write_song(song, 3.0, 120.0)
    ref = store.create(song, "ab" * 32)
    ref = store.move(ref, Event.ANALYSIS_DONE)
    manifest = store.load(ref)
    manifest.jobs["a"] = Job(id="a", kind="image", backend="comfyui:flux_t2i", segment=2, seed=1, width=8,
                             height=8, output="x.png", detail={"progress": 0.45, "where": "running on gpu-a"})
    manifest.jobs["b"] = Job(id="b", kind="image", backend="comfyui:flux_t2i", segment=3, seed=1, width=8,
                             height=8, output="y.png", detail={"where": "queued on gpu-a"})
    store.save(ref, manifest)
    lines = list(status_lines(store.root))
    assert any("s002" in line and "45%" in line and "running on gpu-a" in line for line in lines)
    assert any("s003" in line and "queued on gpu-a" in line for line in lines)


def test_doctor_on_a_managed_comfyui_that_is_not_running_yet(comfy: Settings, tmp_path: Path) -> None:
    """doctor accepts a managed ComfyUI that is down (the daemon launches it) but not a folder without main.py."""
    managed(comfy, comfyui_folder(tmp_path), free_port())
    checks = list(check_comfy(comfy))
    assert [c.ok for c in checks] == [True] and "launches it" in checks[0].detail
    comfy.comfy.managed = ManagedComfyConfig(folder=tmp_path / "nowhere", port=free_port())
    assert [c.ok for c in check_comfy(comfy)] == [False, True]
