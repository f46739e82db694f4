"""Deciding while images are made: per-segment offers, early rounds, and no wait between phases."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from faketelegram import FakeTelegram
from PIL import Image
from test_web import csrf_of

from daemon.approval import decisions
from daemon.approval.store import ApprovalStore, DecisionRefused, offered_segments
from daemon.backends.base import Job, Progress
from daemon.channels.web.server import WebPanel
from daemon.config import Settings
from daemon.errors import TransientError
from daemon.music.plan import Segment
from daemon.music.segments_file import write_segments
from daemon.runs.engine import Engine, Stage
from daemon.runs.states import Event, State
from daemon.runs.store import RunRef, RunStore
from daemon.stages.candidates import MakeCandidates
from daemon.stages.gate import Gate, Offer

WAIT = 20.0


class PacedImages:
    """An image backend that makes each image only when the test lets it (one at a time, in order)."""

    name = "paced"
    resource = "gpu"

    def __init__(self, *, free: bool = False) -> None:
        self.submitted: list[str] = []
        self.made: list[str] = []
        self.allowed = threading.Semaphore(0)
        self.free = free

    def submit(self, job: Job) -> None:
        self.submitted.append(job.id)

    def collect(self, job: Job, *, progress: Progress, stop: threading.Event) -> Path:
        while not self.free and not self.allowed.acquire(timeout=0.05):
            if stop.is_set():
                raise TransientError("stopped before this image was made")
        colour = (job.seed % 256, (job.seed >> 8) % 256, (job.seed >> 16) % 256)
        Image.new("RGB", (64, 36), colour).save(job.output, format="PNG")
        self.made.append(job.id)
        return Path(job.output)

    def can_resume(self, job: Job) -> bool:
        return False

    def allow(self, count: int) -> None:
        for _ in range(count):
            self.allowed.release()


def analyzed_run(store: RunStore, tmp_path: Path, segments: int) -> RunRef:
    """A run in analyzed/ with a plan of ``segments`` five-second segments."""
    song = tmp_path / "song.wav"
    song.write_bytes(b"RIFF fake")
    ref = store.move(store.create(song, "cd" * 32), Event.ANALYSIS_DONE)
    write_segments(ref.path, [Segment(index=i, start=i * 5.0, end=(i + 1) * 5.0, beats=10, energy=0.5,
                                      mood="steady", section=0, visual_prompt=f"prompt {i}")
                              for i in range(segments)])
    return ref


def engine_for(store: RunStore, settings: Settings, backend: PacedImages, *, tick: float = 0.05) -> Engine:
    """Images, offer and the gate, on the given backend."""
    return Engine(store, [
        Stage("images", State.ANALYZED, Event.IMAGES_DONE, MakeCandidates(settings, lambda s, j: backend),
              resource="gpu"),
        Stage("offer", State.IMAGED, Event.OFFERED, Offer(settings)),
        Stage("approval", State.PENDING_APPROVAL, Event.ALL_APPROVED, Gate(settings, lambda s, j: backend)),
    ], tick_seconds=tick)


@contextlib.contextmanager
def engine_thread(engine: Engine) -> Iterator[None]:
    """The engine's loop in a thread for the block; stopped and joined however the block ends."""
    stop = threading.Event()
    worker = threading.Thread(target=engine.run, args=(stop,))
    worker.start()
    try:
        yield
    finally:
        stop.set()
        worker.join(WAIT)


def wait_until(check: object, what: str) -> None:
    """Poll ``check()`` until it is true, or fail naming ``what``."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def two(settings: Settings) -> Settings:
    """Manual approval, two candidates per segment, two rounds."""
    settings.approval.mode = "manual"
    settings.images.candidates = 2
    settings.images.max_rounds = 2
    return settings


def test_a_segment_is_decided_on_every_channel_before_the_last_image_exists(
        store: RunStore, tmp_path: Path, two: Settings) -> None:
    """Segment 0 is offered once its two images exist; the CLI, the panel and the shared store all
    decide on offered segments while the run's later images are still being made."""
    from daemon.cli import main

    ref = analyzed_run(store, tmp_path, segments=4)
    backend = PacedImages()
    engine = engine_for(store, two, backend)
    two.web.port = 0
    with engine_thread(engine), WebPanel(two, store) as panel:
        backend.allow(4)  # segments 0 and 1
        wait_until(lambda: offered_segments(store.load(store.find(ref.run_id))) == {0, 1},
                   "segments 0 and 1 to be offered")
        assert store.find(ref.run_id).state is State.ANALYZED
        assert main(["--config", str(two.config_file), "approve", ref.run_id, "0:1"]) == 0
        with requests.Session() as s:
            page = s.get(f"{panel.url}runs/{ref.run_id}", timeout=10).text
            assert "2 more on their way" in page
            answer = s.post(f"{panel.url}runs/{ref.run_id}/decide", timeout=10,
                            data={"csrf": csrf_of(page), "verdict": "approve", "segment": "1",
                                  "candidate": "0"}, allow_redirects=False)
            assert answer.status_code == 303
        with pytest.raises(DecisionRefused, match="segment 3 .* is not offered yet"):
            decisions.decide(store, ref.run_id, "approve", 3, 0, by="me", channel="cli")
        assert len(backend.made) == 4  # the last segments' images do not exist yet
        backend.allow(4)
        wait_until(lambda: store.find(ref.run_id).state is State.PENDING_APPROVAL, "pending_approval")
        decisions.approve_all(store, ref.run_id, by="me", channel="cli")
        wait_until(lambda: store.find(ref.run_id).state is State.APPROVED, "approved")
    log = ApprovalStore(store).load(store.find(ref.run_id)).decisions
    assert [(d.segment, d.candidate, d.channel) for d in log[:2]] == [(0, 1, "cli"), (1, 0, "web")]


def test_a_decision_made_during_imaging_survives_a_crash(store: RunStore, tmp_path: Path,
                                                         two: Settings) -> None:
    """The engine is abandoned mid-run (a crash); a new one finds the early decision and goes on."""
    ref = analyzed_run(store, tmp_path, segments=3)
    backend = PacedImages()
    with engine_thread(engine_for(store, two, backend)):
        backend.allow(2)
        wait_until(lambda: 0 in offered_segments(store.load(store.find(ref.run_id))), "segment 0 offered")
        decisions.decide(store, ref.run_id, "approve", 0, 0, by="me", channel="telegram")
    with engine_thread(engine_for(store, two, PacedImages(free=True))):
        wait_until(lambda: store.find(ref.run_id).state is State.PENDING_APPROVAL, "pending_approval")
        view = decisions.run_view(store, store.find(ref.run_id))
        assert view.segments[0].approved == 0 and len(view.open_segments) == 2


def test_a_rejection_while_images_are_made_queues_a_new_round_in_the_same_batch(
        store: RunStore, tmp_path: Path, two: Settings) -> None:
    """Rejecting both candidates of segment 0 during imaging hands its next round to the backend
    before the images stage ends (behind the batch), not after the gate's next look."""
    ref = analyzed_run(store, tmp_path, segments=3)
    backend = PacedImages()
    engine = engine_for(store, two, backend)
    with engine_thread(engine):
        backend.allow(2)
        wait_until(lambda: 0 in offered_segments(store.load(store.find(ref.run_id))), "segment 0 offered")
        for cand in (0, 1):
            decisions.decide(store, ref.run_id, "reject", 0, cand, by="me", channel="web")
        backend.allow(2)  # segment 1: after it, the stage looks at the decisions
        wait_until(lambda: len(set(backend.submitted)) == 8, "the new round to be submitted")
        # Handed over while segment 2's images are still to be made: in the same batch.
        assert store.find(ref.run_id).state is State.ANALYZED and len(backend.made) == 4
        assert {j.split("-")[-2] for j in list(dict.fromkeys(backend.submitted))[6:]} == {"i02", "i03"}
        backend.allow(4)
        wait_until(lambda: store.find(ref.run_id).state is State.PENDING_APPROVAL, "pending_approval")
        view = decisions.run_view(store, store.find(ref.run_id))
        assert [c.index for c in view.segments[0].candidates] == [0, 1, 2, 3]
        assert view.segments[0].rounds == 2
    assert len(backend.made) == 8


def test_auto_mode_passes_from_images_to_approved_without_waiting_for_a_tick(
        store: RunStore, tmp_path: Path, settings: Settings) -> None:
    """With auto approval the run goes imaged → pending_approval → approved in the offer step,
    both moves in its history, long before the loop's (here 30 s) tick comes round."""
    settings.approval.mode = "auto"
    settings.images.candidates = 2
    ref = analyzed_run(store, tmp_path, segments=3)
    engine = engine_for(store, settings, PacedImages(free=True), tick=30.0)
    started = time.monotonic()
    with engine_thread(engine):
        wait_until(lambda: store.find(ref.run_id).state is State.APPROVED, "approved")
        took = time.monotonic() - started
    assert took < 5.0
    history = [h.state for h in store.load(store.find(ref.run_id)).history]
    assert history[-3:] == [State.IMAGED, State.PENDING_APPROVAL, State.APPROVED]


class Clips:
    """A video backend that records when each clip was handed to it (how many images existed then)."""

    name = "clips"
    resource = "gpu"
    max_frames = None

    def __init__(self, images: PacedImages) -> None:
        self.images = images
        self.submitted: dict[str, int] = {}

    def submit(self, job: Job) -> None:
        self.submitted.setdefault(job.id, len(self.images.made))

    def collect(self, job: Job, *, progress: Progress, stop: threading.Event) -> Path:
        raise AssertionError("not rendered in this test")

    def can_resume(self, job: Job) -> bool:
        return True


def test_in_auto_mode_the_first_clips_are_queued_before_the_last_images_are_made(
        store: RunStore, tmp_path: Path, settings: Settings) -> None:
    """The images stage hands the render's first clips to the video backend before it waits for
    its last segment, so a GPU server has them queued at the stage change; each segment is
    approved by the policy the moment it is offered."""
    from daemon.stages.render import HEAD_START_CLIPS, head_start

    settings.approval.mode = "auto"
    settings.images.candidates = 2
    ref = analyzed_run(store, tmp_path, segments=4)
    images = PacedImages(free=True)
    clips = Clips(images)
    stage = MakeCandidates(settings, lambda s, j: images,
                           head_start=lambda job: head_start(settings, lambda s: clips, job))
    engine = Engine(store, [Stage("images", State.ANALYZED, Event.IMAGES_DONE, stage, resource="gpu")],
                    tick_seconds=0.05)
    engine.run(threading.Event(), once=True)
    assert len(clips.submitted) == HEAD_START_CLIPS
    assert all(made < 8 for made in clips.submitted.values())  # before the last images existed
    moved = store.find(ref.run_id)
    jobs = store.load(moved).jobs
    assert {j for j, rec in jobs.items() if rec.kind == "clip"} == set(clips.submitted)
    log = ApprovalStore(store).load(moved).decisions
    assert [(d.segment, d.channel) for d in log] == [(0, "auto"), (1, "auto"), (2, "auto"), (3, "auto")]


def test_telegram_offers_each_segment_as_it_is_ready_and_takes_a_tap_on_it(
        store: RunStore, tmp_path: Path, telegram_settings: Settings, telegram_api: FakeTelegram) -> None:
    """While images are made, Telegram sends each offered segment's album and controls, says how
    many are ready, and a tap on one decides it before the run's last image exists."""
    from test_telegram import USER, button, running

    tg, fake = telegram_settings, telegram_api
    ref = analyzed_run(store, tmp_path, segments=3)
    backend = PacedImages()
    engine = engine_for(store, tg, backend)
    with engine_thread(engine), running(tg, store):
        backend.allow(2)
        fake.wait_for(lambda: any("segment 0 of 3" in s.text for s in fake.sent("sendMessage")))
        song = fake.sent("sendMessage")[0]
        assert "first segments ready (1 of 3), more coming" in song.text
        control = next(s for s in fake.sent("sendMessage") if "segment 0 of 3" in s.text)
        fake.tap(USER, button(fake, control.message_ids[0], "✅1"), control.message_ids[0])
        wait_until(lambda: decisions.run_view(store, store.find(ref.run_id)).segments[0].approved == 1,
                   "the tap to be recorded")
        assert store.find(ref.run_id).state is State.ANALYZED and len(backend.made) == 2
        backend.allow(2)
        fake.wait_for(lambda: any(e.message_id == song.message_ids[0] and "(2 of 3)" in e.text
                                  for e in fake.edits))
        backend.allow(2)
        wait_until(lambda: store.find(ref.run_id).state is State.PENDING_APPROVAL, "pending_approval")
    log = ApprovalStore(store).load(store.find(ref.run_id)).decisions
    assert [(d.segment, d.candidate, d.channel) for d in log] == [(0, 1, "telegram")]


def test_the_api_tells_each_segment_offered(store: RunStore, tmp_path: Path, two: Settings) -> None:
    """The API's event stream has a segment.offered event per segment, as each is offered."""
    from daemon.channels.web.api.events import ChangeWatcher, EventLog

    ref = analyzed_run(store, tmp_path, segments=3)
    log = EventLog(store.root / ".api")
    watcher = ChangeWatcher(store, log)
    watcher.poll()  # the baseline: a store as it was is not news
    backend = PacedImages()
    engine = engine_for(store, two, backend)
    with engine_thread(engine):
        backend.allow(2)
        wait_until(lambda: 0 in offered_segments(store.load(store.find(ref.run_id))), "segment 0 offered")
        watcher.poll()
        backend.allow(4)
        wait_until(lambda: store.find(ref.run_id).state is State.PENDING_APPROVAL, "pending_approval")
        watcher.poll()
    offered = [e.data["segment"] for e in log.since(0) if e.type == "segment.offered"]
    assert offered == [0, 1, 2]
    first = next(e for e in log.since(0) if e.type == "segment.offered")
    assert first.data == {"segment": 0, "offered": 1}


def test_pending_lists_the_segments_offered_so_far(store: RunStore, tmp_path: Path, two: Settings) -> None:
    """`tandava pending` shows a run whose images are still being made, with its offered segments."""
    from daemon.host.report import pending_lines

    ref = analyzed_run(store, tmp_path, segments=3)
    backend = PacedImages()
    engine = engine_for(store, two, backend)
    with engine_thread(engine):
        try:
            backend.allow(2)
            wait_until(lambda: 0 in offered_segments(store.load(store.find(ref.run_id))), "segment 0 offered")
            lines = list(pending_lines(store.root))
        finally:
            backend.free = True  # lets the images stage end, so the engine can stop
    assert lines[0].endswith("1 of 1 segment(s) open, 2 more being made")
    assert [line for line in lines if line.startswith("  segment ")] == [
        "  segment 0  00:00.00-00:05.00  steady  [open, 2 candidate(s)]"]
