"""What the CLI shows a person: run status, one run in full, and what waits for approval.

Pure formatting over the store: it reads manifests and returns lines, so the
CLI prints them and tests compare them.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from daemon.errors import RunNotFound, StoreError
from daemon.runs.archive import ARCHIVE_DIR
from daemon.runs.manifest import Manifest
from daemon.runs.progress import StepCount
from daemon.runs.states import State
from daemon.runs.store import RunRef, RunStore


def status_lines(root: Path, *, verbose: bool = False) -> Iterator[str]:
    """Runs per state; with ``verbose`` (or when few), one line per run with its progress."""
    store = RunStore(root)
    refs = list(store.iter_runs())
    counts = {state: 0 for state in State}
    for ref in refs:
        counts[ref.state] += 1
    yield f"state root: {root}"
    from daemon.runs.health import health_lines

    yield from health_lines(root)
    yield _disk_line(root)
    yield "  ".join(f"{state.value}: {counts[state]}" for state in State)
    yield from _spend_today(root)
    if not refs:
        yield "no runs yet: drop a song into the inbox."
        return
    if not verbose and len(refs) > 50:
        yield f"({len(refs)} runs; `tandava status -v` lists them all)"
        refs = [ref for ref in refs if ref.state is not State.RENDERED][:50]
    for state in State:
        chosen = [ref for ref in refs if ref.state is state]
        if not chosen:
            continue
        yield ""
        yield f"{state.value}/"
        for ref in chosen:
            yield f"  {ref.run_id}  {_progress(store, ref)}"
            if state in (State.ANALYZED, State.IMAGED, State.PENDING_APPROVAL):
                yield from _doubt_lines(ref, indent="      ")
            if state in (State.ANALYZED, State.PENDING_APPROVAL, State.APPROVED):
                yield from _live_jobs(store, ref)
                yield from (f"      {line}" for line in _cost_lines(ref.path))


def _spend_today(root: Path) -> Iterator[str]:
    """Today's Google spend (UTC), when anything was spent."""
    from datetime import UTC, datetime

    from daemon.backends.google.costs import SPEND_DIR, day_total

    if not (root / SPEND_DIR).is_dir():
        return
    day = datetime.now(UTC).strftime("%Y-%m-%d")
    yield f"google spend today ({day} UTC): ${day_total(root, day):.2f}"


def _cost_lines(run_dir: Path) -> list[str]:
    """A run's Google estimate and spend (none for a run without paid backends)."""
    from daemon.backends.google.costs import estimate_lines

    return estimate_lines(run_dir)


def _disk_line(root: Path) -> str:
    """How much the state root holds: a running daemon's recent measurement, else measured now."""
    from daemon.runs.archive import human_bytes
    from daemon.runs.health import STALE_SECONDS, read_health
    from daemon.runs.manifest import utcnow
    from daemon.runs.retention import DiskUsage

    health = read_health(root)
    if (health is not None and health.disk and "state_root_bytes" in health.disk
            and health.stopped_at is None and health.age_seconds(utcnow()) <= STALE_SECONDS):
        size = health.disk["state_root_bytes"]
    else:  # no daemon keeps it current: one walk, for this command only
        size = DiskUsage(root).measure()
    return f"disk: the state root holds {human_bytes(size)}"


def _live_jobs(store: RunStore, ref: RunRef) -> Iterator[str]:
    """One line per backend job in flight: where it is (queued, running on which server) and how far."""
    try:
        jobs = [j for j in store.load(ref).jobs.values() if j.status == "submitted"]
    except StoreError:
        return
    for job in sorted(jobs, key=lambda j: (j.kind, j.segment, j.index)):
        where = str(job.detail.get("where", "waiting to start"))
        done = float(job.detail.get("progress", 0.0))
        yield f"      {job.kind} s{job.segment:03d}#{job.index}  {done:4.0%}  {where}  [{job.backend}]"


def _progress(store: RunStore, ref: RunRef) -> str:
    try:
        manifest = store.load(ref)
    except StoreError as exc:
        return f"BROKEN: {store.problem_of(ref, exc)}"
    if ref.state is State.FAILED and manifest.last_error is not None:
        err = manifest.last_error
        return f"failed in {err.stage}: {err.reason}"
    parts = [
        f"{stage}: " + (
            str(progress.detail["waiting"]) if "waiting" in progress.detail
            else f"{', '.join(progress.steps_done) or 'starting'} (attempt {progress.attempts})"
        ) + _count(progress.detail)
        for stage, progress in manifest.stages.items()
        if progress.is_open
    ]
    analyze = manifest.stages.get("analyze")
    if analyze is not None and analyze.finished_at is not None:
        info = analyze.detail
        if "tempo" in info:
            parts.append(f"{info.get('duration', 0):.0f}s at {info['tempo']:.0f} BPM")
        if "segments" in info:
            parts.append(f"{info['segments']} segments")
    return "; ".join(parts) or manifest.song.original_name


def _count(detail: dict[str, object]) -> str:
    """``; clips 12/41`` or ``; assembly 64 %`` when the stage recorded how far it got."""
    count = StepCount.from_detail(detail)
    return f"; {count.label()}" if count is not None and "waiting" not in detail else ""


def show_lines(store: RunStore, run_id: str) -> Iterator[str]:
    """Everything about one run a person might ask."""
    try:
        ref = store.find(run_id)
    except RunNotFound:
        archived = sorted((store.root / ARCHIVE_DIR).glob(f"{glob.escape(run_id)}*"))
        if not archived:
            raise
        for path in archived:
            yield f"{path.name} was forgotten: it is in {path} (move it back into a state folder to bring it back)"
        return
    try:
        manifest: Manifest = store.load(ref)
    except StoreError as exc:
        yield f"run      {ref.run_id}"
        yield f"state    {ref.state.value}   ({ref.path})"
        yield f"BROKEN   {store.problem_of(ref, exc)}"
        return
    song = manifest.song
    yield f"run      {ref.run_id}"
    yield f"state    {ref.state.value}   ({ref.path})"
    yield f"song     {song.original_name}  ({song.size:,} bytes, sha256 {song.sha256[:16] or 'unknown'})"
    yield f"arrived  {manifest.created_at:%Y-%m-%d %H:%M:%S} UTC"
    yield "history"
    for change in manifest.history:
        yield f"  {change.at:%Y-%m-%d %H:%M:%S}  {change.state.value:<17} {change.note}"
    if manifest.stages:
        yield "stages"
        for name, progress in manifest.stages.items():
            done = progress.outcome
            steps = ", ".join(progress.steps_done) or "-"
            extra = " ".join(f"{k}={v}" for k, v in progress.detail.items() if k != "progress") + _count(
                progress.detail)
            yield f"  {name}: {done}; steps: {steps}; attempts: {progress.attempts}  {extra}".rstrip()
    yield from _job_lines(manifest)
    yield from _music_lines(ref)
    yield from _writing_lines(ref.path)
    cost = _cost_lines(ref.path)
    if cost:
        yield "cost"
        yield from (f"  {line}" for line in cost)
    fallbacks = [note for p in manifest.stages.values() for note in p.detail.get("fallbacks", [])]
    if fallbacks:
        yield "fallbacks"
        yield from (f"  {note}" for note in fallbacks)
    if manifest.errors:
        yield "errors"
        for err in manifest.errors:
            yield f"  {err.at:%Y-%m-%d %H:%M:%S}  {err.stage}: {err.reason}"
            if err.hint:
                yield f"      fix: {err.hint}"
    if manifest.intermediates_removed_at is not None:
        yield (f"retention removed its candidates and clips on "
               f"{manifest.intermediates_removed_at:%Y-%m-%d} (the video and decisions stay)")
    if ref.state is State.FAILED:
        yield f"retry with: tandava retry {ref.run_id}"
        yield f"or forget it (archived, song kept): tandava forget {ref.run_id}"


def _job_lines(manifest: Manifest) -> Iterator[str]:
    """Backend jobs by status, then each job that took more than one attempt (what kills
    and failures cost) or has not finished."""
    jobs = list(manifest.jobs.values())
    if not jobs:
        return
    counts = {status: sum(1 for j in jobs if j.status == status) for status in ("done", "submitted", "failed")}
    made = sum(j.attempts for j in jobs)
    yield (f"jobs     {counts['done']} done, {counts['submitted']} in flight, {counts['failed']} failed; "
           f"{made} attempt(s) for {len(jobs)} job(s)")
    for job in sorted(jobs, key=lambda j: (j.kind, j.segment, j.index, j.id)):
        if job.attempts > 1 or job.status != "done":
            yield f"  {job.kind} s{job.segment:03d}#{job.index}  {job.status}; attempts: {job.attempts}  [{job.id}]"


def _analysis_facts(run_dir: Path) -> dict[str, Any] | None:
    """The few facts of ``analysis.json`` a report shows (None before analysis)."""
    try:
        doc = json.loads((run_dir / "analysis.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _music_lines(ref: RunRef) -> Iterator[str]:
    """Tempo, meter and how sure the analysis was."""
    facts = _analysis_facts(ref.path)
    if facts is None:
        return
    given = " (given by a person)" if facts.get("tempo_given") else ""
    yield (f"music    {facts.get('tempo', 0):.1f} BPM{given}, {facts.get('beats_per_bar', 4)}/4, "
           f"confidence {facts.get('confidence', 1.0):.2f}")
    yield from _doubt_lines(ref, indent="  ", facts=facts)


def _doubt_lines(ref: RunRef, *, indent: str, facts: dict[str, Any] | None = None) -> Iterator[str]:
    """A low-confidence analysis, flagged with how to correct it before GPU time is spent."""
    facts = facts if facts is not None else _analysis_facts(ref.path)
    if not facts or not facts.get("low_confidence") or facts.get("tempo_given"):
        return
    yield f"{indent}! tempo unsure: {facts['low_confidence']}"
    yield f"{indent}  if the beat is wrong: tandava retry {ref.run_id} --tempo BPM"


def _writing_lines(run_dir: Path) -> Iterator[str]:
    """Who wrote the plan, and why each writer tried before it fell through."""
    from daemon.music.segments_file import SEGMENTS_FILE, read_writing

    if not (run_dir / SEGMENTS_FILE).is_file():
        return
    try:
        writer, fell = read_writing(run_dir)
    except (OSError, ValueError):
        return
    yield f"writer   {writer or 'unknown'}"
    for entry in fell:
        yield f"  {entry.get('writer', '?')} fell through: {entry.get('reason', '')}"
        if entry.get("hint"):
            yield f"      fix: {entry['hint']}"


def pending_lines(root: Path, run: str | None = None, *, verbose: bool = False) -> Iterator[str]:
    """What waits for approval: one line per segment (decided, or open with its candidates),
    for every waiting run or just ``run``; ``verbose`` adds each candidate's image path."""
    from daemon.approval.store import (
        DECIDING_STATES,
        ApprovalStore,
        candidates_of,
        offered_segments,
        statuses,
    )
    from daemon.music.segments_file import read_segments

    store = RunStore(root)
    approvals = ApprovalStore(store)
    if run is not None:
        ref = store.find(run)
        if ref.state not in DECIDING_STATES:
            yield f"{ref.run_id} is in {ref.state.value}/: it does not wait for approval."
            return
        refs = [ref]
    else:
        # Runs whose images are still being made list the segments offered so far.
        refs = [r for r in store.iter_runs([State.PENDING_APPROVAL, State.IMAGED, State.ANALYZED])
                if r.state is State.PENDING_APPROVAL or _has_offers(store, r)]
    if not refs:
        yield "nothing waits for approval."
        return
    for ref in refs:
        try:
            manifest = store.load(ref)
            segments = read_segments(ref.path)
            current = statuses(manifest, approvals.load(ref), len(segments))
        except (StoreError, OSError, ValueError) as exc:
            yield f"{ref.run_id}: cannot read ({exc})"
            continue
        jobs = candidates_of(manifest)
        offered = offered_segments(manifest) if ref.state is not State.PENDING_APPROVAL else None
        if offered is not None:
            current = [s for s in current if s.segment in offered]
        coming = f", {len(segments) - len(current)} more being made" if offered is not None else ""
        open_count = sum(1 for s in current if s.approved is None)
        yield (f"{ref.run_id}  ({manifest.song.original_name}): {open_count} of {len(current)} "
               f"segment(s) open{coming}")
        for status in current:
            segment = segments[status.segment]
            made = jobs.get(segment.index, [])
            if status.approved is not None:
                state = f"approved {status.approved}"
            else:
                state = f"{'all rejected' if status.all_rejected else 'open'}, {len(made)} candidate(s)"
            yield f"  segment {segment.index}  {_clock(segment.start)}-{_clock(segment.end)}  {segment.mood}  [{state}]"
            if not verbose:
                continue
            for job in made:
                mark = "approved" if job.index == status.approved else (
                    "rejected" if job.index in status.rejected else "")
                yield f"    {segment.index}:{job.index}  {ref.path / job.output}  {mark}".rstrip()
        yield f"  approve with: tandava approve {ref.run_id} --all   (or SEGMENT:CANDIDATE …)"
    if not verbose:
        yield "(`tandava pending -v` adds each candidate's image path)"


def _has_offers(store: RunStore, ref: RunRef) -> bool:
    """Whether a run still making images has a segment offered already."""
    from daemon.approval.store import offered_segments

    try:
        return bool(offered_segments(store.load(ref)))
    except (StoreError, OSError, ValueError):
        return False


def _clock(seconds: float) -> str:
    return f"{int(seconds // 60):02d}:{seconds % 60:05.2f}"
