"""A person's tempo correction: re-plan a run at a given tempo (``tandava retry RUN --tempo 90``).

How this works: when the analysis chose the wrong level (half or double
time, a cross-rhythm) or flags itself as unsure, a person who hears the song
gives its tempo. ``retempo`` then, under the run's decision lock:

1. analyses the song again with that tempo (beats, downbeats and sections
   follow it; ``analysis.json`` records ``tempo_given``);
2. plans the segments again through the same writer chain;
3. keeps every segment whose span *and* number did not change, with its
   prompts, its candidates and the decisions on them: an approved image
   stays approved;
4. for every other segment, drops the candidate records and decisions (the
   image files are moved to ``candidates/replaced/``, never deleted), so the
   images stage or the approval gate makes new candidates for it.

A run before approval (analyzed, imaged, pending approval, or failed in one
of those) can be re-planned; an approved or rendered run has its clips made
from the plan, so it is refused with how to start over instead. So is a run
a daemon's stage is working on this moment (it holds the run's work lock,
daemon.runs.worklock): the stage holds the run's records in memory and would
write the old plan's candidates back over the new plan. The re-plan holds the
same lock, so no stage starts on the run until it is done. Waiting for
approval is not working on it, so a run in pending_approval/ can be corrected
while the daemon runs.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from daemon.approval.store import ApprovalStore
from daemon.config import Settings
from daemon.errors import StoreError
from daemon.music.plan import Segment
from daemon.music.segments_file import SEGMENTS_FILE, read_segments, write_segments
from daemon.runs import fsutil, worklock
from daemon.runs.states import State
from daemon.runs.store import RunRef, RunStore
from daemon.stages.pipeline import ANALYSIS_FILE

REPLANNABLE = frozenset({State.ANALYZED, State.IMAGED, State.PENDING_APPROVAL})
REPLACED_DIR = "replaced"
# Cut times are rounded to 4 decimals in the analysis; this is "the same cut".
_SAME_CUT = 1e-3


@dataclass(frozen=True)
class Replanned:
    """What a tempo correction did to a run."""

    ref: RunRef
    tempo: float
    beats_per_bar: int
    segments: int
    kept: list[int]


def retempo(settings: Settings, store: RunStore, run_id: str, tempo: float) -> Replanned:
    """Re-plan ``run_id`` at ``tempo`` BPM, keeping the segments that did not move."""
    ref = store.find(run_id)
    with worklock.working_on(store.root, ref.run_id, f"tandava retry --tempo (pid {os.getpid()})") as mine:
        if not mine:
            who = worklock.holder(store.root, ref.run_id) or "another process"
            raise StoreError(
                f"{ref.run_id}: {who} is working on it now; run the retry again once "
                "`tandava status` shows it in pending_approval/, or stop the daemon first"
            )
        return _replan(settings, store, ref, tempo)


def _replan(settings: Settings, store: RunStore, ref: RunRef, tempo: float) -> Replanned:
    """The re-plan itself, under the run's work lock (see the module docstring)."""
    from daemon.music.analysis import analyze
    from daemon.writers.chain import write_plan

    ref = store.refresh(ref)
    if ref.state is State.FAILED:
        manifest = store.load(ref)
        if manifest.failed_from not in REPLANNABLE:
            raise StoreError(_refusal(ref, manifest.failed_from))
        ref = store.retry(ref)
    if ref.state not in REPLANNABLE:
        raise StoreError(_refusal(ref, ref.state))
    cfg = settings.analysis
    manifest = store.load(ref)
    song = ref.path / manifest.song.file_name
    analysis = analyze(song, max_seconds=cfg.max_song_seconds, min_seconds=cfg.min_song_seconds,
                       sr=cfg.sample_rate, tempo=tempo)
    fresh, record = write_plan(settings, analysis, song, cfg.seed)
    approvals = ApprovalStore(store)
    with approvals.locked(ref.run_id):
        ref = store.refresh(ref)
        old = read_segments(ref.path) if (ref.path / SEGMENTS_FILE).is_file() else []
        kept = [i for i, s in enumerate(fresh) if i < len(old) and _same_span(old[i], s)]
        segments = [old[i] if i in kept else s for i, s in enumerate(fresh)]
        fsutil.atomic_write_text(ref.path / ANALYSIS_FILE, analysis.model_dump_json(indent=2) + "\n")
        write_segments(ref.path, segments, writer=record.writer, fell_through=record.fell_through,
                       theme=cfg.theme, seed=cfg.seed, clip_seconds=settings.video.clip_seconds,
                       tempo_given=tempo)
        manifest = store.load(ref)
        for job_id, job in list(manifest.jobs.items()):
            if job.segment not in kept:
                _set_aside(ref.path, job.output)
                del manifest.jobs[job_id]
        progress = manifest.progress("analyze")
        progress.detail.update({"tempo": round(analysis.tempo, 2), "tempo_given": tempo,
                                "segments": len(segments)})
        store.save(ref, manifest)
        decisions = approvals.load(ref)
        decisions.decisions = [d for d in decisions.decisions if d.segment in kept]
        if (ref.path / "approvals.json").is_file():
            approvals.save(ref, decisions)
    return Replanned(ref, analysis.tempo, analysis.beats_per_bar, len(segments), kept)


def _same_span(a: Segment, b: Segment) -> bool:
    return abs(a.start - b.start) < _SAME_CUT and abs(a.end - b.end) < _SAME_CUT


def _set_aside(run_dir: Path, output: str) -> None:
    """Move a dropped candidate's file into ``replaced/`` beside it (a later one may reuse its name)."""
    path = run_dir / output
    if not path.is_file():
        return
    aside = path.parent / REPLACED_DIR
    aside.mkdir(exist_ok=True)
    target = aside / path.name
    n = 1
    while target.exists():
        target = aside / f"{path.stem}.{n}{path.suffix}"
        n += 1
    with contextlib.suppress(FileNotFoundError):
        path.replace(target)


def _refusal(ref: RunRef, state: State | None) -> str:
    where = state.value if state else ref.state.value
    return (
        f"{ref.run_id} is past approval ({where}/): its clips follow the approved plan, so its tempo "
        "cannot change any more; drop the song into the inbox again as a new run to start over"
    )
