"""How the API reads runs: pages of summaries, one run in full, and the files a client may fetch.

How this works: a list is a directory listing per state (the run ids sort
by arrival), reread only when the state's folder changed, and a summary per
run on the page, cached (as JSON-ready data) by the ``run.json`` ``mtime``:
a page costs one ``stat`` per state folder and per run shown, not manifest reads. The cursor is the last run id of a page (the next page is the older
runs). A run in full is read from its manifest, ``segments.json`` and
``approvals.json``; candidate images come from the manifest's finished
image jobs. Files are served by a name the API lists, never by a path from
the request.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from daemon.approval.store import ApprovalStore, Decision, candidates_of, statuses
from daemon.channels.web.api.models import (
    CandidateOut,
    Created,
    DecisionOut,
    Links,
    Problem,
    RunDetail,
    RunError,
    RunSummary,
    SegmentOut,
    StageOut,
    StateChangeOut,
)
from daemon.errors import RunNotFound, StoreError
from daemon.music.segments_file import SEGMENTS_FILE, read_segments
from daemon.runs.manifest import MANIFEST
from daemon.runs.states import State
from daemon.runs.store import RunRef, RunStore
from daemon.stages.options import read_options
from daemon.video.assembly import EXPORT_NAMES, FINAL_NAME

# Files of a run a client may fetch by name (besides its candidates).
OUTPUTS: dict[str, str] = {
    FINAL_NAME: "video/mp4",
    "thumbnail.jpg": "image/jpeg",
    "contact_sheet.png": "image/png",
    EXPORT_NAMES["vertical"]: "video/mp4",
    EXPORT_NAMES["mov"]: "video/quicktime",
}
_IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}


def decision_out(d: Decision) -> DecisionOut:
    return DecisionOut(segment=d.segment, candidate=d.candidate, action=d.verdict, by=d.by, channel=d.channel,
                       at=d.at)


class RunReader:
    """Read-only views of runs for the API (see the module docstring)."""

    def __init__(self, store: RunStore, prefix: str) -> None:
        self.store = store
        self.prefix = prefix
        self._cache: dict[str, tuple[int, dict[str, Any]]] = {}
        self._listings: dict[State, tuple[int, list[str]]] = {}
        self._merged: tuple[tuple[Any, ...], list[tuple[str, State]]] | None = None
        self._pages: dict[tuple[Any, ...], tuple[tuple[Any, ...], bytes]] = {}
        self._lock = threading.Lock()

    def links(self, run_id: str, files: list[str] | None = None) -> Links:
        base = f"{self.prefix}/runs/{run_id}"
        return Links(self_=base, events=f"{self.prefix}/events?run={run_id}",
                     files={name: f"{base}/files/{name}" for name in files or []})

    def ref(self, run_id: str) -> RunRef:
        """The run with exactly this id (a URL names one run; no prefix matching)."""
        for state in State:
            path = self.store.dir_for(state) / run_id
            if not run_id.startswith(".") and "/" not in run_id and "\\" not in run_id and path.is_dir():
                return RunRef(run_id, state, path)
        raise RunNotFound(f"There is no run {run_id!r}.")

    # -- lists ----------------------------------------------------------------

    def _ids(self, state: State | None) -> list[tuple[str, State]]:
        """Run ids (newest first) with their state; a state's listing is reread only when its folder changed."""
        keys = []
        for st in [state] if state else list(State):
            folder = os.path.join(self.store.root, st.value)  # noqa: PTH116, PTH118 - hot path: pathlib costs 5x here
            try:
                mtime = os.stat(folder).st_mtime_ns  # noqa: PTH116, PTH118 - hot path: pathlib costs 5x here
            except OSError:
                continue
            with self._lock:
                cached = self._listings.get(st)
            if cached is None or cached[0] != mtime:
                names = [e.name for e in os.scandir(folder) if not e.name.startswith(".") and e.is_dir()]
                cached = (mtime, names)
                with self._lock:
                    self._listings[st] = cached
            keys.append((st, cached))
        key = tuple((st, mtime) for st, (mtime, _) in keys)
        with self._lock:
            if self._merged is not None and self._merged[0] == key:
                return self._merged[1]
        ids = [(name, st) for st, (_, names) in keys for name in names]
        ids.sort(reverse=True)
        with self._lock:
            self._merged = (key, ids)
        return ids

    def list(self, state: State | None, limit: int, cursor: str | None) -> dict[str, Any]:
        """A page of runs as JSON-ready data (the list answer is built without models: it is the hot path)."""
        ids = self._ids(state)
        if cursor is not None:
            ids = [(i, st) for i, st in ids if i < cursor]
        page = ids[:limit]
        runs = [s for s in (self.summary(i, st) for i, st in page) if s is not None]
        more = len(ids) > limit
        return {"runs": runs, "next_cursor": page[-1][0] if more and page else None}

    def page_bytes(self, state: State | None, limit: int, cursor: str | None) -> bytes:
        """``list`` encoded as the JSON answer, reused while no run on the page changed."""
        ids = self._ids(state)
        if cursor is not None:
            ids = [(i, st) for i, st in ids if i < cursor]
        signature = (len(ids) > limit, tuple(
            (i, st, _mtime(os.path.join(self.store.root, st.value, i, MANIFEST)))  # noqa: PTH118 - hot path
            for i, st in ids[:limit]))
        key = (state, limit, cursor)
        with self._lock:
            cached = self._pages.get(key)
        if cached is not None and cached[0] == signature:
            return cached[1]
        body = json.dumps(self.list(state, limit, cursor), ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        with self._lock:
            if len(self._pages) > 256:  # cursors are many; the first pages are what is asked for
                self._pages.clear()
            self._pages[key] = (signature, body)
        return body

    def summary(self, run_id: str, state: State) -> dict[str, Any] | None:
        """A run's summary as JSON-ready data, cached until its run.json changes."""
        try:
            mtime = os.stat(os.path.join(self.store.root, state.value, run_id, MANIFEST)).st_mtime_ns  # noqa: PTH116, PTH118 - hot path: pathlib costs 5x here
        except OSError:
            return None
        with self._lock:
            cached = self._cache.get(run_id)
        if cached is not None and cached[0] == mtime and cached[1]["state"] == state.value:
            return cached[1]
        ref = RunRef(run_id, state, self.store.dir_for(state) / run_id)
        try:
            manifest = self.store.load(ref)
        except StoreError:
            return None
        summary = RunSummary(id=ref.run_id, state=ref.state, song=manifest.song.original_name,
                             created_at=manifest.created_at, updated_at=manifest.updated_at,
                             links=self.links(ref.run_id)).model_dump(mode="json", by_alias=True)
        with self._lock:
            self._cache[ref.run_id] = (mtime, summary)
        return summary

    def created(self, ref: RunRef, *, duplicate: bool, photos: int) -> Created:
        manifest = self.store.load(self.store.refresh(ref))
        return Created(id=ref.run_id, state=self.store.refresh(ref).state, duplicate=duplicate,
                       song=manifest.song.original_name, photos=photos, links=self.links(ref.run_id))

    # -- one run --------------------------------------------------------------

    def detail(self, ref: RunRef) -> RunDetail:
        manifest = self.store.load(ref)
        approvals = ApprovalStore(self.store).load(ref)
        plan = read_segments(ref.path) if (ref.path / SEGMENTS_FILE).is_file() else []
        stages = {}
        for name, progress in manifest.stages.items():
            kind = {"images": "image", "approval": "image", "render": "clip"}.get(name)
            jobs = [j for j in manifest.jobs.values() if j.kind == kind] if kind else []
            stages[name] = StageOut(steps_done=list(progress.steps_done), attempts=progress.attempts,
                                    started_at=progress.started_at, finished_at=progress.finished_at,
                                    jobs_done=sum(1 for j in jobs if j.status == "done"), jobs_total=len(jobs))
        by_segment = {s.segment: s for s in statuses(manifest, approvals, len(plan))} if plan else {}
        candidates = []
        for segment, jobs in sorted(candidates_of(manifest).items()):
            status = by_segment.get(segment)
            for job in jobs:
                state = ("approved" if status and job.index == status.approved
                         else "rejected" if status and job.index in status.rejected else "open")
                candidates.append(CandidateOut(segment=segment, candidate=job.index, seed=job.seed, status=state,
                                               url=f"{self.prefix}/runs/{ref.run_id}/files/{Path(job.output).name}"))
        error = None
        if ref.state is State.FAILED and manifest.last_error is not None:
            last = manifest.last_error
            error = RunError(stage=last.stage, reason=last.reason, hint=last.hint.replace("<run>", ref.run_id))
        outputs = [name for name in OUTPUTS if (ref.path / name).is_file()]
        options = read_options(ref.path)
        return RunDetail(
            id=ref.run_id, state=ref.state, song=manifest.song.original_name, created_at=manifest.created_at,
            updated_at=manifest.updated_at,
            history=[StateChangeOut(state=h.state, at=h.at, note=h.note) for h in manifest.history],
            stages=stages,
            segments=[SegmentOut(index=s.index, start=s.start, end=s.end, mood=s.mood, prompt=s.visual_prompt,
                                 motion=s.motion_prompt) for s in plan],
            candidates=candidates, decisions=[decision_out(d) for d in approvals.decisions], error=error,
            options=options.model_dump(mode="json", exclude_unset=True) if options else {},
            outputs={name: f"{self.prefix}/runs/{ref.run_id}/files/{name}" for name in outputs},
            links=self.links(ref.run_id, outputs),
        )

    def file(self, ref: RunRef, name: str) -> tuple[Path, str]:
        """The file ``name`` of a run and its media type; Problem 404 for anything else."""
        path: Path | None = None
        media = OUTPUTS.get(name)
        if media is not None:
            path = ref.path / name
        else:
            manifest = self.store.load(ref)
            outputs = {Path(j.output).name: j.output for j in manifest.jobs.values() if j.kind == "image"}
            if name in outputs:
                path = ref.path / outputs[name]
                media = _IMAGE_TYPES.get(path.suffix.lower(), "application/octet-stream")
        if path is None or media is None:
            raise Problem(404, "no_such_file", f"Run {ref.run_id} has no file called {name!r} that the API serves.",
                          "GET the run: its outputs and candidates list the URLs there are.")
        try:
            resolved = path.resolve(strict=True)
        except OSError:
            raise Problem(404, "not_yet", f"Run {ref.run_id} has no {name} (yet).",
                          "Wait for the run to get there (follow /api/v1/events).") from None
        if not resolved.is_relative_to(ref.path.resolve()) or not resolved.is_file():
            raise Problem(404, "no_such_file", f"Run {ref.run_id} has no file {name!r}.", "")
        return resolved, media



def _mtime(path: str) -> int:
    try:
        return os.stat(path).st_mtime_ns  # noqa: PTH116 - hot path: pathlib costs 5x here
    except OSError:
        return 0
