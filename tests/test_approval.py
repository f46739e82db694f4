"""The approval gate: decisions from any channel, auto policy, regeneration rounds, the move to approved."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
from PIL import Image

from daemon.approval.store import ApprovalStore, DecisionRefused, statuses
from daemon.backends.base import Job, Progress
from daemon.config import Settings
from daemon.music.plan import Segment
from daemon.music.segments_file import write_segments
from daemon.runs.engine import Engine, Stage
from daemon.runs.states import Event, State
from daemon.runs.store import RunRef, RunStore
from daemon.stages.candidates import MakeCandidates
from daemon.stages.gate import Gate, Offer


class SolidColour:
    """A real image backend that paints each candidate one colour from its seed."""

    name = "solid"
    resource = "cpu"

    def __init__(self) -> None:
        self.made: list[str] = []

    def submit(self, job: Job) -> None:
        pass

    def collect(self, job: Job, *, progress: Progress, stop: threading.Event) -> Path:
        colour = (job.seed % 256, (job.seed >> 8) % 256, (job.seed >> 16) % 256)
        Image.new("RGB", (job.width, job.height), colour).save(job.output, format="PNG")
        self.made.append(job.id)
        return Path(job.output)

    def can_resume(self, job: Job) -> bool:
        return False


def new_pending_run(store: RunStore, tmp_path: Path, settings: Settings, segments: int = 3) -> tuple[RunRef, SolidColour]:
    song = tmp_path / "song.wav"
    song.write_bytes(b"RIFF fake")
    ref = store.create(song, "ab" * 32)
    ref = store.move(ref, Event.ANALYSIS_DONE)
    write_segments(ref.path, [Segment(index=i, start=i * 5.0, end=(i + 1) * 5.0, beats=10, energy=0.5,
                                      mood="steady", section=0, visual_prompt=f"prompt {i}")
                              for i in range(segments)])
    backend = SolidColour()
    engine = Engine(store, [
        Stage("images", State.ANALYZED, Event.IMAGES_DONE, MakeCandidates(settings, lambda s, j: backend)),
        Stage("offer", State.IMAGED, Event.OFFERED, Offer(settings)),
    ], tick_seconds=0.01)
    engine.run(threading.Event(), once=True)
    return store.find(ref.run_id), backend


def gate_once(store: RunStore, settings: Settings, backend: SolidColour) -> None:
    engine = Engine(store, [Stage("approval", State.PENDING_APPROVAL, Event.ALL_APPROVED,
                                  Gate(settings, lambda s, j: backend))], tick_seconds=0.01)
    engine.run(threading.Event(), once=True)


@pytest.fixture
def manual(settings: Settings) -> Settings:
    """Manual approval, two candidates per segment, two rounds."""
    settings.approval.mode = "manual"
    settings.images.candidates = 2
    settings.images.max_rounds = 2
    return settings


def test_candidates_are_recorded_with_seed_and_backend(store: RunStore, tmp_path: Path, manual: Settings) -> None:
    """Each candidate is a done job in run.json with its seed, backend and image on disk."""
    ref, backend = new_pending_run(store, tmp_path, manual)
    assert ref.state is State.PENDING_APPROVAL
    jobs = store.load(ref).jobs
    assert len(jobs) == 6 and len(backend.made) == 6
    for job in jobs.values():
        assert job.status == "done" and job.backend == "solid" and job.seed > 0
        assert (ref.path / job.output).is_file()
    assert len({j.seed for j in jobs.values()}) == 6


def test_manual_run_waits_until_every_segment_is_approved(store: RunStore, tmp_path: Path, manual: Settings) -> None:
    """The gate holds a run until all segments have an approved candidate, then moves it."""
    ref, backend = new_pending_run(store, tmp_path, manual)
    approvals = ApprovalStore(store)
    approvals.decide(ref.run_id, 0, 1, "approve", by="me", channel="cli")
    approvals.decide(ref.run_id, 1, 0, "approve", by="me", channel="cli")
    gate_once(store, manual, backend)
    assert store.find(ref.run_id).state is State.PENDING_APPROVAL
    waiting = store.load(store.find(ref.run_id)).stages["approval"].detail["waiting"]
    assert "1 of 3" in waiting and "tandava approve" in waiting
    approvals.decide(ref.run_id, 2, 0, "approve", by="me", channel="cli")
    gate_once(store, manual, backend)
    moved = store.find(ref.run_id)
    assert moved.state is State.APPROVED
    assert [s.approved for s in statuses(store.load(moved), approvals.load(moved), 3)] == [1, 0, 0]


def test_auto_policy_approves_first_unrejected_candidate(store: RunStore, tmp_path: Path, manual: Settings) -> None:
    """In auto mode the policy approves the first candidate nobody rejected, recorded as channel auto."""
    ref, backend = new_pending_run(store, tmp_path, manual)
    ApprovalStore(store).decide(ref.run_id, 1, 0, "reject", by="me", channel="cli")
    manual.approval.mode = "auto"
    gate_once(store, manual, backend)
    moved = store.find(ref.run_id)
    assert moved.state is State.APPROVED
    log = ApprovalStore(store).load(moved).decisions
    autos = {(d.segment, d.candidate) for d in log if d.channel == "auto"}
    assert autos == {(0, 0), (1, 1), (2, 0)}


def test_reject_all_brings_new_candidates_then_waits_for_a_person(store: RunStore, tmp_path: Path, manual: Settings) -> None:
    """Rejecting every candidate makes a new round with new seeds, up to max_rounds; then the run waits."""
    ref, backend = new_pending_run(store, tmp_path, manual)
    approvals = ApprovalStore(store)
    for cand in (0, 1):
        approvals.decide(ref.run_id, 2, cand, "reject", by="me", channel="cli")
    gate_once(store, manual, backend)
    current = statuses(store.load(store.find(ref.run_id)), approvals.load(ref), 3)
    assert current[2].candidates == [0, 1, 2, 3] and current[2].rounds == 2
    for cand in (2, 3):
        approvals.decide(ref.run_id, 2, cand, "reject", by="me", channel="cli")
    made_before = len(backend.made)
    gate_once(store, manual, backend)
    assert len(backend.made) == made_before  # max_rounds reached: no third round on its own
    waiting = store.load(store.find(ref.run_id)).stages["approval"].detail["waiting"]
    assert "segment(s) 2" in waiting and "tandava regenerate" in waiting
    approvals.decide(ref.run_id, 2, None, "regenerate", by="me", channel="cli")
    gate_once(store, manual, backend)
    assert statuses(store.load(store.find(ref.run_id)), approvals.load(ref), 3)[2].candidates[-1] == 5


def test_a_later_approval_replaces_an_earlier_one(store: RunStore, tmp_path: Path, manual: Settings) -> None:
    """Approving another candidate of a segment supersedes the first approval; a repeated tap is a no-op."""
    ref, _ = new_pending_run(store, tmp_path, manual)
    approvals = ApprovalStore(store)
    first = approvals.decide(ref.run_id, 0, 0, "approve", by="me", channel="cli")
    again = approvals.decide(ref.run_id, 0, 0, "approve", by="me", channel="telegram")
    assert again == first and len(approvals.load(ref).decisions) == 1
    approvals.decide(ref.run_id, 0, 1, "approve", by="me", channel="cli")
    assert statuses(store.load(ref), approvals.load(ref), 3)[0].approved == 1


def test_decisions_are_refused_with_reasons(store: RunStore, tmp_path: Path, manual: Settings) -> None:
    """Unknown segments or candidates, and runs not waiting for approval, are refused clearly."""
    ref, _ = new_pending_run(store, tmp_path, manual)
    approvals = ApprovalStore(store)
    with pytest.raises(DecisionRefused, match="no candidate 7"):
        approvals.decide(ref.run_id, 0, 7, "approve", by="me", channel="cli")
    with pytest.raises(DecisionRefused, match="no segment 9"):
        approvals.decide(ref.run_id, 9, 0, "approve", by="me", channel="cli")
    store.fail(ref, "approval", __import__("daemon.errors", fromlist=["BadInput"]).BadInput("x"))
    with pytest.raises(DecisionRefused, match="not waiting for approval"):
        approvals.decide(ref.run_id, 0, 0, "approve", by="me", channel="cli")


def test_two_processes_deciding_at_once_lose_nothing(store: RunStore, tmp_path: Path, manual: Settings) -> None:
    """Concurrent decisions from separate processes all land in the log."""
    ref, _ = new_pending_run(store, tmp_path, manual, segments=4)
    code = (
        "import sys\nfrom pathlib import Path\nfrom daemon.approval.store import ApprovalStore\n"
        "from daemon.runs.store import RunStore\n"
        "a = ApprovalStore(RunStore(Path(sys.argv[1])))\n"
        "for i in range(16):\n"
        "    verdict = 'approve' if (i // 2) % 2 == 0 else 'reject'\n"
        "    a.decide(sys.argv[2], int(sys.argv[3]), i % 2, verdict, by='p', channel='cli')\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(store.root), ref.run_id, str(seg)]) for seg in (0, 1, 2)]
    assert [p.wait(60) for p in procs] == [0, 0, 0]
    decisions = ApprovalStore(store).load(ref).decisions
    # every decision flips its candidate's verdict, so none is an idempotent repeat: 16 per process
    assert len(decisions) == 48
    for seg in (0, 1, 2):
        assert len([d for d in decisions if d.segment == seg]) == 16
