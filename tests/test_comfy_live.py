"""Tandava's ComfyUI code against a live ComfyUI server (opt-in; skipped unless a URL is given).

Run it against your own server; it needs no model weights there, only ComfyUI's core nodes:

    TANDAVA_TEST_COMFYUI_URL=http://127.0.0.1:8188 python -m pytest tests/test_comfy_live.py -v

Every test goes through Tandava's own code: ``ComfyClient`` and ``Listener``, ``Pool`` with the
image and video backends, ``preflight.check_workflow``, ``supervisor.health`` and the QC checks.
The two workflows, ``tests/data/live_workflows/live_image`` (EmptyImage -> SaveImage) and
``live_video`` (LoadImage -> ImageScale -> RepeatImageBatch -> CreateVideo -> SaveVideo), use
model-free core nodes only; their ``.toml`` mappings explain where each slot goes and why.

Safe on a shared server (a GPU box with other people's jobs):

- It queues about eight tiny jobs. Each prompt id, file name prefix and upload name holds
  ``live-<uuid>`` of this run, so nothing collides with earlier runs or other users, and
  ComfyUI's cache of an identical prompt never hands back an old file.
- It never clears or deletes queue or history entries and never interrupts anything. It
  assumes nothing about the queue: our jobs may wait behind others.
- The pool's "free VRAM first" request (POST /free, which unloads everyone's models) is
  counted, not sent. Only ``test_free_request_is_accepted_and_the_server_keeps_working`` sends
  it, and that test is skipped unless ``TANDAVA_TEST_COMFYUI_FREE=1``.
- Each job may take ``TANDAVA_TEST_COMFYUI_TIMEOUT`` seconds (default 120), queueing included.
- It leaves files behind (ComfyUI has no route to delete them): ``output/tandava/live-<uuid>-*``
  (PNGs and mp4s of a few kB) and ``input/tandava_live-<uuid>-*.png``.

Against the stand-in server ``tests/fakecomfy`` the suite passes except the QC "frozen" test,
which skips itself: the fake draws a moving clip whatever the graph says, so there is no
repeated still to judge.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import av
import numpy as np
import pytest
import requests
from PIL import Image

from daemon.backends.base import Job, noop_progress
from daemon.backends.comfy.backend import ComfyImageBackend, ComfyVideoBackend, job_values
from daemon.backends.comfy.client import ComfyClient, Listener
from daemon.backends.comfy.events import (
    Event,
    Executed,
    Executing,
    ExecutionStart,
    ExecutionSuccess,
    OutputFile,
    Status,
)
from daemon.backends.comfy.pool import Pool, Server, Ticket
from daemon.backends.comfy.preflight import check_workflow, raise_for
from daemon.backends.comfy.supervisor import RemoteComfy, health
from daemon.backends.comfy.vram import Admission
from daemon.backends.comfy.workflows import load_workflow
from daemon.errors import QCFailed, TransientError, WorkflowError
from daemon.video import media
from daemon.video.qc import check_clip, check_image, clip_problems, clip_stats

URL = os.environ.get("TANDAVA_TEST_COMFYUI_URL", "").strip().rstrip("/")
ALLOW_FREE = os.environ.get("TANDAVA_TEST_COMFYUI_FREE", "") == "1"
JOB_TIMEOUT = float(os.environ.get("TANDAVA_TEST_COMFYUI_TIMEOUT", "") or 120.0)
RUN = f"live-{uuid.uuid4().hex[:12]}"

WORKFLOWS = Path(__file__).parent / "data" / "live_workflows"
IMAGE_WF = load_workflow(WORKFLOWS / "live_image.json")
VIDEO_WF = load_workflow(WORKFLOWS / "live_video.json")
# The SaveImage / SaveVideo / EmptyImage / LoadImage node ids in those graphs.
SAVE_IMAGE, SAVE_VIDEO, EMPTY_IMAGE, LOAD_IMAGE = "2", "5", "1", "1"

pytestmark = [
    pytest.mark.skipif(not URL, reason="set TANDAVA_TEST_COMFYUI_URL=http://host:port to test "
                                       "against a live ComfyUI"),
    # A test waits for at most three jobs; the ini's 300 s would cut a slow server short.
    pytest.mark.timeout(int(3 * JOB_TIMEOUT + 60)),
]

T = TypeVar("T")
_counter = itertools.count(1)


def new_id(kind: str) -> str:
    """A prompt id (and job id) unique to this run: ``live-<uuid>-<kind>-<n>``."""
    return f"{RUN}-{kind}-{next(_counter)}"


def rgb(seed: int) -> tuple[int, int, int]:
    """The colour EmptyImage makes of ``color = seed`` (0xRRGGBB)."""
    return (seed >> 16) & 0xFF, (seed >> 8) & 0xFF, seed & 0xFF


def image_job(tmp: Path, *, seed: int, width: int = 96, height: int = 64) -> Job:
    """An image job as a stage records it."""
    job_id = new_id("image")
    return Job(id=job_id, kind="image", backend="comfyui", segment=0, seed=seed,
               prompt=f"Tandava live test {job_id}", width=width, height=height,
               output=str(tmp / f"{job_id}.png"))


def clip_job(tmp: Path, source: Path, *, frames: int, fps: int = 8) -> Job:
    """A clip job as the render stage records it, 64x48 from the image at ``source``."""
    job_id = new_id("clip")
    return Job(id=job_id, kind="clip", backend="comfyui", segment=0, seed=7, prompt="stay still",
               width=64, height=48, frames=frames, fps=fps, source=str(source),
               output=str(tmp / f"{job_id}.mp4"))


def image_values(prompt_id: str, **changes: Any) -> dict[str, Any]:
    """Slot values for the image workflow, as ``job_values`` would give them."""
    values = {"prompt": f"Tandava live test {prompt_id}", "seed": 0x808080, "width": 64,
              "height": 64, "filename_prefix": f"tandava/{prompt_id}"}
    return values | changes


def make_start_image(path: Path) -> Path:
    """An 80x60 picture with smooth gradients and two blocks: texture QC can compare."""
    y, x = np.mgrid[0:60, 0:80].astype(np.float32)
    pixels = np.stack([40 + 180 * x / 79, 40 + 180 * y / 59, np.full_like(x, 120)], axis=-1)
    pixels[10:30, 10:35] = (230, 230, 60)
    pixels[35:55, 45:75] = (30, 60, 200)
    Image.fromarray(pixels.astype(np.uint8), "RGB").save(path)
    return path


def poll(what: str, probe: Callable[[], T | None], timeout: float = JOB_TIMEOUT) -> T:
    """``probe()`` once it is truthy; fails the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"waited {timeout:g} s for {what} on {URL}")
        time.sleep(0.1)


def raw_history(prompt_id: str) -> dict[str, Any]:
    """The history entry as ComfyUI sends it (``{}`` while unknown): what Tandava leaves unread."""
    response = requests.get(f"{URL}/history/{prompt_id}", timeout=30)
    response.raise_for_status()
    entry: dict[str, Any] = response.json().get(prompt_id) or {}
    return entry


class SharedServerClient(ComfyClient):
    """Tandava's client, except that the pool's request to unload models is counted, not sent.

    The pool asks /free before a job whose workflow needs more VRAM than is free; on a shared
    server that would unload other people's models, so here the job just waits instead.
    """

    def __init__(self, client_id: str) -> None:
        super().__init__(URL, client_id=client_id, timeout=30.0)
        self.free_requests = 0

    def free(self) -> None:
        self.free_requests += 1


def start_pool(client_id: str | None = None) -> Pool:
    """A started pool on the live server; ``client_id`` is the daemon's stable websocket id."""
    client = SharedServerClient(client_id or f"tandava-{RUN}-{next(_counter)}")
    server = Server(client, RemoteComfy(URL, health_timeout=10.0), name=URL)
    # No margin: the workflows' vram_gb (0.5) is all a job needs.
    admission = Admission(margin_gb=0.0, free_wait_seconds=1.0)
    return Pool([server], admission=admission, check_seconds=0.5).start()


def collect(backend: ComfyImageBackend, job: Job) -> Path:
    """``backend.collect`` with a time limit: Tandava's own wait has none but a stop event."""
    stop = threading.Event()
    timer = threading.Timer(JOB_TIMEOUT, stop.set)
    timer.start()
    try:
        return backend.collect(job, progress=noop_progress, stop=stop)
    except TransientError as exc:
        if exc.cause != "Stopping":
            raise
        client = backend.pool.servers[0].client
        short = getattr(client, "free_requests", 0)
        pytest.fail(f"job {job.id} did not finish within {JOB_TIMEOUT:g} s on {URL} "
                    "(a busy server? set TANDAVA_TEST_COMFYUI_TIMEOUT)"
                    + (f"; the pool found too little free VRAM {short} time(s)" if short else ""))
    finally:
        timer.cancel()
        timer.join()


def posted(ticket: Ticket) -> bool:
    """True once the pool has posted the ticket; its error if it failed before that."""
    if ticket.error is not None:
        raise ticket.error
    return ticket.posted_at > 0


@pytest.fixture
def pool() -> Iterator[Pool]:
    """A started pool, stopped after the test."""
    started = start_pool()
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def client() -> Iterator[ComfyClient]:
    """A plain ComfyClient with a client id of its own, closed after the test."""
    plain = ComfyClient(URL, client_id=f"tandava-{RUN}-{next(_counter)}", timeout=30.0)
    try:
        yield plain
    finally:
        plain.close()


@dataclasses.dataclass(frozen=True)
class Clip:
    """A clip job and what came of it: its start image, the mp4, the uploaded copy, its files."""

    job: Job
    start: Path
    path: Path
    uploaded: Path
    files: tuple[OutputFile, ...]


@pytest.fixture(scope="module")
def live_clip(tmp_path_factory: pytest.TempPathFactory) -> Clip:
    """One clip made through ComfyVideoBackend, shared by the tests that look at it."""
    tmp = tmp_path_factory.mktemp("live_clip")
    start = make_start_image(tmp / "approved.png")
    job = clip_job(tmp, start, frames=10)
    pool = start_pool()
    try:
        out = collect(ComfyVideoBackend(pool, VIDEO_WF), job)
        client = pool.servers[0].client
        # The pool uploads the start image as tandava_<job id><suffix> (pool.py, _post).
        uploaded = client.download(OutputFile(f"tandava_{job.id}.png", "", "input"),
                                   tmp / "uploaded.png")
        outcome = client.history(job.id)
    finally:
        pool.stop()
    assert outcome is not None and outcome.outcome == "success"
    return Clip(job, start, out, uploaded, outcome.files)


def frames_of(path: Path) -> np.ndarray:
    """Every decoded frame of a clip as greyscale floats."""
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="gray").astype(np.float32)
                         for frame in container.decode(video=0)])


# -- 1. health ----------------------------------------------------------------------------------


def test_server_answers_system_stats_with_device_figures(client: ComfyClient) -> None:
    """system_stats names a device with memory figures, and the supervisor calls the server ok."""
    stats = client.system_stats()
    assert stats.device and stats.device_type
    assert stats.vram_total > 0
    assert 0 <= stats.vram_free <= stats.vram_total
    assert health(URL, 10.0) == "ok"
    remote = RemoteComfy(URL, health_timeout=10.0)
    assert remote.ensure_running(threading.Event()) == URL
    assert remote.diagnose(False, None, 900.0) == "ok"


# -- 2. preflight -------------------------------------------------------------------------------


def test_preflight_passes_the_live_workflows_and_names_each_fault_of_a_broken_copy(
        client: ComfyClient) -> None:
    """check_workflow passes both live workflows and names each fault planted in a broken copy."""
    info = client.object_info()
    assert check_workflow(IMAGE_WF, info) == []
    assert check_workflow(VIDEO_WF, info) == []

    graph = copy.deepcopy(VIDEO_WF.graph)
    graph["2"]["inputs"]["upscale_method"] = "sideways"  # old-style combo: the server says 400
    graph[SAVE_VIDEO]["inputs"]["format"] = "mkv"  # V3 combo: the server takes it, fails at run
    graph["99"] = {"class_type": "TandavaNoSuchNode", "inputs": {}}
    broken = dataclasses.replace(VIDEO_WF, name="live_video_broken", graph=graph)
    values = {"prompt": "broken", "seed": 1, "width": 100_000, "height": 48, "frames": 9,
              "fps": 8.0, "start_image": "preflight.png", "filename_prefix": "tandava/preflight"}
    problems = check_workflow(broken, info, values)

    assert {(p.node, p.class_type, p.input) for p in problems} == {
        ("2", "ImageScale", "upscale_method"),
        ("2", "ImageScale", "width"),
        (SAVE_VIDEO, "SaveVideo", "format"),
        ("99", "TandavaNoSuchNode", None),
    }
    with pytest.raises(WorkflowError) as caught:
        raise_for(problems)
    for named in ("node 99 (TandavaNoSuchNode)", "upscale_method = 'sideways'", "width = 100000",
                  "format = 'mkv'", "live_video_broken"):
        assert named in caught.value.reason


# -- 3. an image job through the pool -----------------------------------------------------------


def test_image_jobs_come_back_at_the_asked_size_in_their_seed_colour(pool: Pool,
                                                                    tmp_path: Path) -> None:
    """Two image jobs through the pool: PNGs at the asked size in their seed colour, in /history."""
    backend = ComfyImageBackend(pool, IMAGE_WF)
    jobs = [image_job(tmp_path, seed=0x3366CC), image_job(tmp_path, seed=0xCC6633)]
    for job in jobs:
        backend.submit(job)
    outs = [collect(backend, job) for job in jobs]

    colours = []
    for job, out in zip(jobs, outs, strict=True):
        assert out == Path(job.output)
        with Image.open(out) as image:
            assert image.format == "PNG"
            assert image.size == (job.width, job.height)
            picture = image.convert("RGB")
        assert picture.getextrema() == tuple((c, c) for c in rgb(job.seed))  # one solid colour
        colours.append(picture.getpixel((0, 0)))
    assert colours == [rgb(job.seed) for job in jobs]

    client = pool.servers[0].client
    for job in jobs:
        outcome = client.history(job.id)  # Tandava's prompt id is ComfyUI's prompt id
        assert outcome is not None and outcome.outcome == "success"
        assert [(f.subfolder, f.filename[: len(job.id) + 1]) for f in outcome.files] == [
            ("tandava", f"{job.id}_")]
        graph = raw_history(job.id)["prompt"][2]
        assert graph["3"]["inputs"]["value"] == job.prompt  # the prompt travelled with the graph

    # A solid colour is what QC exists to refuse (a sampler that produced nothing looks so).
    for out in outs:
        with pytest.raises(QCFailed, match="flat"):
            check_image(out)


# -- 4. a video job through the pool ------------------------------------------------------------


def test_video_job_uploads_the_start_image_and_downloads_the_rounded_frame_count(
        live_clip: Clip) -> None:
    """A clip job uploads its start image and returns an H.264 mp4 of exactly the frames asked for."""
    job = live_clip.job
    assert live_clip.uploaded.read_bytes() == live_clip.start.read_bytes()
    [saved] = live_clip.files
    assert saved.animated and saved.subfolder == "tandava"
    assert saved.filename.startswith(f"{job.id}_") and saved.filename.endswith(".mp4")

    # This workflow has no frame_step (RepeatImageBatch takes any count), so 10 asked is 10 made.
    assert job_values(job, VIDEO_WF)["frames"] == job.frames == 10
    info = media.probe(live_clip.path)
    assert info.frames == 10
    assert (info.width, info.height) == (job.width, job.height)
    assert info.video_codec == "h264"
    assert info.fps == pytest.approx(job.fps)

    # Right length, starts from the approved image, no black or flash frames; whether it moves
    # is the next test's question.
    stats = clip_stats(live_clip.path, start_image=live_clip.start)
    problems = clip_problems(stats, expected_frames=10)
    assert [p for p in problems if not p.startswith("frozen")] == []


def test_qc_calls_the_repeated_still_frozen(live_clip: Clip) -> None:
    """check_clip calls the clip frozen: it repeats one frame, as a stuck sampler would."""
    frames = frames_of(live_clip.path)
    drift = max(float(np.abs(frame - frames[0]).mean()) for frame in frames)
    if drift > 3.0:
        pytest.skip(f"the server did not repeat the start image (frames drift {drift:.1f} levels "
                    "from the first): a stand-in such as tests/fakecomfy draws its own motion")
    with pytest.raises(QCFailed) as caught:
        check_clip(live_clip.path, expected_frames=10, start_image=live_clip.start)
    reason = caught.value.reason
    assert "frozen" in reason
    assert "expected" not in reason and "first frame" not in reason


# -- 5. failures the server reports -------------------------------------------------------------


def test_refused_graph_becomes_a_workflow_error_naming_the_node(client: ComfyClient) -> None:
    """A 400 (EmptyImage width 0) becomes WorkflowError naming node and input; nothing queued."""
    prompt_id = new_id("refused")
    graph = IMAGE_WF.fill(**image_values(prompt_id, width=0))
    with pytest.raises(WorkflowError) as caught:
        client.post_prompt(graph, prompt_id, workflow=IMAGE_WF.name)
    reason = caught.value.reason
    assert f"refused workflow {IMAGE_WF.name}" in reason
    assert f"node {EMPTY_IMAGE} (EmptyImage)" in reason and "width" in reason
    assert client.history(prompt_id) is None
    assert prompt_id not in client.queue()


def test_v3_combo_value_fails_at_run_time_and_the_pool_names_node_and_exception(
        client: ComfyClient, tmp_path: Path) -> None:
    """SaveVideo format "mkv" is accepted and fails when run; the pool names node and error."""
    prompt_id = new_id("v3combo")
    name = client.upload_image(make_start_image(tmp_path / "start.png"), f"tandava_{prompt_id}.png")
    graph = VIDEO_WF.fill(prompt="mkv", seed=1, width=64, height=48, frames=5, fps=8.0,
                          start_image=name, filename_prefix=f"tandava/{prompt_id}")
    graph[SAVE_VIDEO]["inputs"]["format"] = "mkv"
    client.post_prompt(graph, prompt_id, workflow=VIDEO_WF.name)  # accepted: no WorkflowError
    outcome = poll("the mkv job to end", lambda: client.history(prompt_id))
    assert outcome.outcome == "error"

    # A daemon that posted this and restarted finds the failure; preflight would have refused
    # the graph before posting, which is why it is posted here by hand.
    pool = start_pool(client.client_id)
    try:
        assert pool.attach(prompt_id, VIDEO_WF, {})
        with pytest.raises(TransientError) as caught:
            pool.wait(prompt_id, stop=threading.Event(), progress=noop_progress)
    finally:
        pool.stop()
    assert caught.value.cause == "ComfyExecutionError"
    reason = caught.value.reason
    assert f"node {SAVE_VIDEO} (SaveVideo)" in reason
    assert "ValueError" in reason and "mkv" in reason


def test_start_image_that_is_no_picture_fails_in_load_image(pool: Pool, tmp_path: Path) -> None:
    """A start image that is no picture passes validation, then fails in LoadImage, named."""
    bogus = tmp_path / "not_a_picture.png"
    bogus.write_text("this is not a PNG\n", encoding="utf-8")
    backend = ComfyVideoBackend(pool, VIDEO_WF)
    job = clip_job(tmp_path, bogus, frames=5)
    backend.submit(job)
    with pytest.raises(TransientError) as caught:
        collect(backend, job)
    assert caught.value.cause == "ComfyExecutionError"
    assert f"node {LOAD_IMAGE} (LoadImage)" in caught.value.reason
    assert "UnidentifiedImageError" in caught.value.reason


# -- 6. re-attach after a daemon restart --------------------------------------------------------


def test_restarted_daemon_reattaches_and_downloads_without_posting_again(tmp_path: Path) -> None:
    """After a daemon restart, a new pool attaches and downloads the first run's file."""
    client_id = f"tandava-{RUN}-reattach"  # the daemon's id is stable across restarts
    job = image_job(tmp_path, seed=0x22AA44)
    first = start_pool(client_id)
    try:
        ComfyImageBackend(first, IMAGE_WF).submit(job)
        ticket = first.tickets[job.id]
        poll("the first pool to post the job", lambda: posted(ticket))
    finally:
        first.stop()

    with contextlib.closing(ComfyClient(URL, client_id=client_id)) as look:
        finished = poll("the job to finish while no pool watches", lambda: look.history(job.id))
    assert finished.outcome == "success"
    before = raw_history(job.id)

    second = start_pool(client_id)
    try:
        backend = ComfyImageBackend(second, IMAGE_WF)
        assert backend.can_resume(job)
        ticket = second.tickets[job.id]
        out = collect(backend, job)
    finally:
        second.stop()

    after = raw_history(job.id)
    # A second POST would have drawn a new queue number and run (or replayed) anew.
    assert after["prompt"][0] == before["prompt"][0]
    assert after["status"]["messages"] == before["status"]["messages"]
    assert ticket.result is not None and ticket.result.files == finished.files
    assert [f.filename[: len(job.id) + 1] for f in finished.files] == [f"{job.id}_"]
    with Image.open(out) as image:
        assert image.size == (job.width, job.height)
        assert image.convert("RGB").getpixel((0, 0)) == rgb(job.seed)


# -- 7. the websocket ---------------------------------------------------------------------------


def test_listener_hears_status_on_connect_and_our_job_to_its_end(client: ComfyClient) -> None:
    """A Listener gets the on-connect status, then our job's events to the final executing-null."""
    events: list[Event] = []
    lock = threading.Lock()

    def on_event(event: Event) -> None:
        with lock:
            events.append(event)

    def seen() -> list[Event]:
        with lock:
            return list(events)

    prompt_id = new_id("ws")
    end = Executing(prompt_id, None)
    listener = Listener(URL, client.client_id, on_event)
    listener.start()
    try:
        poll("the on-connect status", lambda: seen(), timeout=30)
        client.post_prompt(IMAGE_WF.fill(**image_values(prompt_id)), prompt_id,
                           workflow=IMAGE_WF.name)
        poll("the end of our job on the websocket", lambda: end in seen())
    finally:
        listener.stop()

    first = seen()[0]
    assert isinstance(first, Status) and first.sid == client.client_id
    ours = [e for e in seen() if getattr(e, "prompt_id", None) == prompt_id]
    assert ours[-1] == end
    kinds = [type(e) for e in ours]
    assert kinds.index(ExecutionStart) < kinds.index(Executed) < kinds.index(ExecutionSuccess)
    assert Executing(prompt_id, SAVE_IMAGE) in ours  # a new prefix: SaveImage ran, not cached
    [executed] = [e for e in ours if isinstance(e, Executed)]
    assert executed.node == SAVE_IMAGE
    assert [f.filename[: len(prompt_id) + 1] for f in executed.files] == [f"{prompt_id}_"]


# -- 8. /free (opt-in) --------------------------------------------------------------------------


@pytest.mark.skipif(not ALLOW_FREE, reason="POST /free unloads every user's models; set "
                                           "TANDAVA_TEST_COMFYUI_FREE=1 to run it")
def test_free_request_is_accepted_and_the_server_keeps_working(client: ComfyClient, pool: Pool,
                                                               tmp_path: Path) -> None:
    """ComfyClient.free is taken; the server stays healthy and runs the next job."""
    client.free()
    assert health(URL, 10.0) == "ok"
    assert client.system_stats().vram_free > 0
    job = image_job(tmp_path, seed=0x4488CC)
    backend = ComfyImageBackend(pool, IMAGE_WF)
    backend.submit(job)  # the worker applies the flags when it wakes for this job
    with Image.open(collect(backend, job)) as image:
        assert image.convert("RGB").getpixel((0, 0)) == rgb(job.seed)
