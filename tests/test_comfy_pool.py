"""The ComfyUI pool and backends against the fake server: jobs, failures, restarts, VRAM, several servers."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from comfy_helpers import (
    FLUX,
    GB,
    WAN,
    FakeKeeper,
    clip_job,
    image_job,
    make_pool,
    models_for,
    server_for,
    wait_for,
)
from fakecomfy.server import FakeComfy
from PIL import Image
from structlog.testing import capture_logs

from daemon.backends.base import noop_progress
from daemon.backends.comfy.backend import ComfyImageBackend, ComfyVideoBackend, job_values
from daemon.backends.comfy.pool import Pool
from daemon.backends.comfy.vram import Admission, Ollama
from daemon.errors import TransientError, Unavailable, WorkflowError
from daemon.video import media

MODELS = models_for(FLUX, WAN)


@pytest.fixture
def fake(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A fake ComfyUI with every model the shipped workflows need."""
    with FakeComfy(tmp_path / "comfy", models=MODELS, job_seconds=0.05) as server:
        yield server


@pytest.fixture
def stop() -> threading.Event:
    return threading.Event()


def run_image(pool: Pool, tmp_path: Path, stop: threading.Event, n: int = 0) -> Path:
    backend = ComfyImageBackend(pool, FLUX)
    job = image_job(n, tmp_path)
    backend.submit(job)
    return backend.collect(job, progress=noop_progress, stop=stop)


def test_image_job_posts_our_prompt_id_and_downloads_the_png(fake: FakeComfy, tmp_path: Path,
                                                           stop: threading.Event) -> None:
    """A candidate goes out under our own prompt id and a unique prefix, and comes back as a PNG."""
    pool = make_pool(server_for(fake.url))
    try:
        out = run_image(pool, tmp_path, stop)
    finally:
        pool.stop()
    assert fake.posted == ["run-image-s000"]
    with Image.open(out) as image:
        assert image.size == (64, 48)
    saved = list((fake.output_dir / "tandava").glob("run-image-s000_*.png"))
    assert len(saved) == 1


def test_video_job_uploads_the_start_image_and_rounds_frames_for_wan(fake: FakeComfy, tmp_path: Path,
                                                                     stop: threading.Event) -> None:
    """A clip uploads its approved image, asks Wan for 4k+1 frames and downloads the video."""
    start = tmp_path / "approved.png"
    Image.new("RGB", (64, 48), (200, 120, 40)).save(start)
    pool = make_pool(server_for(fake.url))
    backend = ComfyVideoBackend(pool, WAN)
    job = clip_job(0, tmp_path, start, frames=18)
    try:
        backend.submit(job)
        out = backend.collect(job, progress=noop_progress, stop=stop)
    finally:
        pool.stop()
    assert job_values(job, WAN)["frames"] == WAN.frames_for(18) == 21
    assert media.probe(out).frames == 21
    assert (fake.input_dir / "tandava_run-clip-s000.png").is_file()


def test_a_queued_clip_keeps_its_start_image_when_the_run_folder_moves(fake: FakeComfy, tmp_path: Path,
                                                                      stop: threading.Event) -> None:
    """A clip queued behind other work (a head start) uploads the image it was queued with, even
    after the run folder it came from moved on (analyzed/ → approved/) before a server took it."""
    start = tmp_path / "analyzed" / "approved.png"
    start.parent.mkdir()
    Image.new("RGB", (64, 48), (200, 120, 40)).save(start)
    fake.job_seconds = 1.0
    pool = make_pool(server_for(fake.url, depth=1))
    images, clips = ComfyImageBackend(pool, FLUX), ComfyVideoBackend(pool, WAN)
    busy = image_job(0, tmp_path)
    clip = clip_job(0, tmp_path, start, frames=9)
    try:
        images.submit(busy)
        clips.submit(clip)  # waits behind the image: the server holds one job at a time here
        start.parent.rename(tmp_path / "approved")
        images.collect(busy, progress=noop_progress, stop=stop)
        out = clips.collect(clip, progress=noop_progress, stop=stop)
    finally:
        pool.stop()
    assert media.probe(out).frames >= 9
    assert (fake.input_dir / "tandava_run-clip-s000.png").is_file()


def test_missing_model_is_caught_by_preflight_before_any_gpu_time(tmp_path: Path, stop: threading.Event) -> None:
    """A server without the Flux model: the job fails with the model's folder named, and nothing is posted."""
    with FakeComfy(tmp_path / "comfy", models={}) as bare:
        pool = make_pool(server_for(bare.url))
        try:
            with pytest.raises(WorkflowError) as caught:
                run_image(pool, tmp_path, stop)
        finally:
            pool.stop()
        assert bare.posted == []
    assert "diffusion_models" in caught.value.reason
    assert "flux_t2i" in caught.value.reason


def test_missing_node_class_is_named_with_its_pack(tmp_path: Path, stop: threading.Event) -> None:
    """A server without a node the workflow uses: preflight names the class and refuses the job."""
    with FakeComfy(tmp_path / "comfy", models=MODELS, object_info={"FluxGuidance": None}) as server:
        pool = make_pool(server_for(server.url))
        try:
            with pytest.raises(WorkflowError) as caught:
                run_image(pool, tmp_path, stop)
        finally:
            pool.stop()
        assert server.posted == []
    assert "FluxGuidance" in caught.value.reason


def test_runtime_error_is_reported_with_node_and_exception(fake: FakeComfy, tmp_path: Path,
                                                            stop: threading.Event) -> None:
    """An execution_error becomes a retryable error naming the node and the exception."""
    fake.fail_next("VAEDecode", "RuntimeError", "CUDA error: device-side assert")
    pool = make_pool(server_for(fake.url))
    try:
        with pytest.raises(TransientError) as caught:
            run_image(pool, tmp_path, stop)
    finally:
        pool.stop()
    assert "VAEDecode" in caught.value.reason and "device-side assert" in caught.value.reason


def test_server_crash_mid_job_resubmits_the_job_once(fake: FakeComfy, tmp_path: Path,
                                                     stop: threading.Event) -> None:
    """ComfyUI dies while our job runs; after it is back, the lost job is posted again and finishes."""
    fake.job_seconds = 1.0
    pool = make_pool(server_for(fake.url))
    backend = ComfyImageBackend(pool, FLUX)
    job = image_job(0, tmp_path)
    try:
        backend.submit(job)
        wait_for(lambda: fake.posted == [job.id], what="the job to be posted")
        fake.die()
        fake.job_seconds = 0.05
        fake.start()
        out = backend.collect(job, progress=noop_progress, stop=stop)
    finally:
        pool.stop()
    assert out.is_file()
    assert fake.posted == [job.id, job.id]


@pytest.mark.parametrize("finished_meanwhile", [True, False])
def test_restarted_daemon_reattaches_instead_of_posting_again(fake: FakeComfy, tmp_path: Path,
                                                              stop: threading.Event, finished_meanwhile: bool) -> None:
    """A daemon gone mid-job finds its job after a restart (in /history, or still in /queue) and never reposts it."""
    fake.job_seconds = 0.6
    first = make_pool(server_for(fake.url))
    job = image_job(0, tmp_path)
    ComfyImageBackend(first, FLUX).submit(job)
    wait_for(lambda: fake.posted == [job.id], what="the job to be posted")
    first.stop()  # the daemon is gone; its memory with it
    if finished_meanwhile:
        fake.wait_idle()
    second = make_pool(server_for(fake.url))
    backend = ComfyImageBackend(second, FLUX)
    try:
        assert backend.can_resume(job)
        out = backend.collect(job, progress=noop_progress, stop=stop)
    finally:
        second.stop()
    assert out.is_file()
    assert fake.posted == [job.id]


def test_unknown_job_cannot_be_resumed(fake: FakeComfy, tmp_path: Path) -> None:
    """A job no server knows (it died with its server) is reported as not resumable, so it is redone."""
    pool = make_pool(server_for(fake.url))
    try:
        assert not ComfyImageBackend(pool, FLUX).can_resume(image_job(5, tmp_path))
    finally:
        pool.stop()


def test_hung_server_is_restarted_and_the_job_finishes(fake: FakeComfy, tmp_path: Path,
                                                       stop: threading.Event) -> None:
    """A server that accepts connections but answers nothing is replaced, and the lost job runs again."""
    fake.job_seconds = 0.8
    keeper = FakeKeeper(fake)
    pool = make_pool(server_for(fake.url, keeper))
    backend = ComfyImageBackend(pool, FLUX)
    job = image_job(0, tmp_path)
    try:
        backend.submit(job)
        wait_for(lambda: fake.posted == [job.id], what="the job to be posted")
        fake.hang()
        out = backend.collect(job, progress=noop_progress, stop=stop)
    finally:
        pool.stop()
    assert out.is_file()
    assert keeper.restarts >= 1
    assert fake.posted.count(job.id) == 2


def test_silent_job_counts_as_hung(fake: FakeComfy, tmp_path: Path, stop: threading.Event) -> None:
    """Health answers but no websocket event for longer than the silence limit: the server is restarted."""
    fake.node_seconds = {"KSampler": 3.0}
    fake.progress_nodes = set()  # a sampler that reports nothing while it runs
    keeper = FakeKeeper(fake)
    pool = make_pool(server_for(fake.url, keeper), silence_seconds=0.5)
    backend = ComfyImageBackend(pool, FLUX)
    job = image_job(0, tmp_path)
    try:
        backend.submit(job)
        wait_for(lambda: keeper.restarts >= 1, timeout=10, what="a restart")
        fake.node_seconds = {}
        out = backend.collect(job, progress=noop_progress, stop=stop)
    finally:
        pool.stop()
    assert out.is_file()


def test_job_over_its_time_limit_is_interrupted(fake: FakeComfy, tmp_path: Path, stop: threading.Event) -> None:
    """A job running past its workflow's timeout is interrupted on the server and reported."""
    from dataclasses import replace

    fake.node_seconds = {"KSampler": 2.0}
    slow = replace(FLUX, timeout_seconds=0.3)
    pool = make_pool(server_for(fake.url))
    backend = ComfyImageBackend(pool, slow)
    job = image_job(0, tmp_path)
    try:
        backend.submit(job)
        with pytest.raises(TransientError) as caught:
            backend.collect(job, progress=noop_progress, stop=stop)
    finally:
        pool.stop()
    assert caught.value.cause == "JobTimeout"


def test_short_vram_asks_the_server_to_free_then_dispatches(tmp_path: Path, stop: threading.Event) -> None:
    """Free VRAM below the video workflow's need: Tandava asks /free, sees memory come back, then posts."""
    start = tmp_path / "approved.png"
    Image.new("RGB", (64, 48), (10, 120, 200)).save(start)
    with FakeComfy(tmp_path / "comfy", models=MODELS, vram_total=24 * GB, vram_free=23 * GB,
                   model_vram=12 * GB) as server, capture_logs() as logs:
        pool = make_pool(server_for(server.url))
        try:
            run_image(pool, tmp_path, stop)  # Flux stays loaded: 11 GB free now
            assert server.vram_free < (WAN.vram_gb + 1) * GB
            backend = ComfyVideoBackend(pool, WAN)
            job = clip_job(0, tmp_path, start)
            backend.submit(job)
            out = backend.collect(job, progress=noop_progress, stop=stop)
        finally:
            pool.stop()
    assert out.is_file()
    assert [e["event"] for e in logs if e["event"].startswith("vram.")] == ["vram.freed"]


def test_vram_held_by_another_program_makes_the_job_wait(tmp_path: Path, stop: threading.Event) -> None:
    """Free VRAM stays short after /free: the job is not posted (no certain OOM) until memory is back."""
    with FakeComfy(tmp_path / "comfy", models=MODELS, vram_total=24 * GB, vram_free=4 * GB) as server:
        pool = make_pool(server_for(server.url))
        backend = ComfyImageBackend(pool, FLUX)
        job = image_job(0, tmp_path)
        try:
            backend.submit(job)
            threading.Event().wait(1.0)
            assert server.posted == []
            server.vram_free = 23 * GB  # the other program exits
            out = backend.collect(job, progress=noop_progress, stop=stop)
        finally:
            pool.stop()
        assert out.is_file()


def test_two_servers_share_the_work_and_survive_one_dying(tmp_path: Path, stop: threading.Event) -> None:
    """Jobs spread over two servers; when one dies its jobs move to the other and all finish."""
    with FakeComfy(tmp_path / "a", models=MODELS, job_seconds=0.2) as a, \
            FakeComfy(tmp_path / "b", models=MODELS, job_seconds=0.2) as b:
        pool = make_pool(server_for(a.url), server_for(b.url))
        backend = ComfyImageBackend(pool, FLUX)
        jobs = [image_job(n, tmp_path) for n in range(10)]
        try:
            for job in jobs:
                backend.submit(job)
            wait_for(lambda: len(a.posted) >= 2 and len(b.posted) >= 2, what="both servers busy")
            a.die()
            outs = [backend.collect(job, progress=noop_progress, stop=stop) for job in jobs]
        finally:
            pool.stop()
    assert all(out.is_file() for out in outs)
    assert set(a.posted) | set(b.posted) == {job.id for job in jobs}


def test_jobs_of_one_model_are_grouped_across_runs(fake: FakeComfy, tmp_path: Path, stop: threading.Event) -> None:
    """Interleaved image and clip jobs are run grouped by model: one swap instead of one per job."""
    start = tmp_path / "approved.png"
    Image.new("RGB", (64, 48), (90, 60, 30)).save(start)
    fake.job_seconds = 0.02
    pool = make_pool(server_for(fake.url))
    images, clips = ComfyImageBackend(pool, FLUX), ComfyVideoBackend(pool, WAN)
    pairs = []
    for n in range(4):
        pairs += [(images, image_job(n, tmp_path)), (clips, clip_job(n, tmp_path, start, frames=5))]
    try:
        for backend, job in pairs:
            backend.submit(job)
        for backend, job in pairs:
            backend.collect(job, progress=noop_progress, stop=stop)
    finally:
        pool.stop()
    assert fake.swaps <= 2


class FakeOllama(ThreadingHTTPServer):
    """Ollama's /api/ps and /api/generate (keep_alive 0 unloads), holding VRAM on a fake ComfyUI's GPU."""

    def __init__(self, gpu: FakeComfy, held: int) -> None:
        self.gpu, self.held, self.unloaded = gpu, held, []
        super().__init__(("127.0.0.1", 0), _OllamaHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _OllamaHandler(BaseHTTPRequestHandler):
    server: FakeOllama

    def log_message(self, *args: object) -> None:
        """Quiet."""

    def _json(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        models = [{"name": "llama3.2:3b", "model": "llama3.2:3b", "size_vram": self.server.held}] \
            if self.server.held else []
        self._json({"models": models})

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if body.get("keep_alive") == 0 and self.server.held:
            self.server.unloaded.append(body["model"])
            self.server.gpu.vram_free += self.server.held
            self.server.held = 0
        self._json({"model": body["model"], "response": "", "done": True, "done_reason": "unload"})


def test_short_vram_unloads_a_local_ollama_model(tmp_path: Path, stop: threading.Event) -> None:
    """A local Ollama holding the GPU is asked to unload its model, then the job goes out."""
    with FakeComfy(tmp_path / "comfy", models=MODELS, vram_total=24 * GB, vram_free=8 * GB) as server:
        ollama = FakeOllama(server, held=15 * GB)
        pool = make_pool(server_for(server.url), admission=Admission(ollama=Ollama(ollama.url)))
        try:
            out = run_image(pool, tmp_path, stop)
        finally:
            pool.stop()
            ollama.shutdown()
            ollama.server_close()
    assert out.is_file()
    assert ollama.unloaded == ["llama3.2:3b"]


def test_resume_waits_for_a_silent_server_rather_than_post_twice(tmp_path: Path) -> None:
    """A server that does not answer may still hold the job: can_resume waits, until the server is long gone."""
    job = image_job(0, tmp_path)
    pool = make_pool(server_for("http://127.0.0.1:9"), failover_seconds=30.0)
    try:
        with pytest.raises(Unavailable) as caught:
            ComfyImageBackend(pool, FLUX).can_resume(job)
    finally:
        pool.stop()
    assert "http://127.0.0.1:9" in caught.value.reason
    gone = make_pool(server_for("http://127.0.0.1:9"), failover_seconds=0.0)
    try:
        assert not ComfyImageBackend(gone, FLUX).can_resume(job)
    finally:
        gone.stop()
