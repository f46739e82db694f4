"""What the web panel knows about each run: ``decisions.run_view`` plus live progress, cached.

How this works: every page shows ``decisions.run_view`` (the view all
channels share) and, for a run still at work, the waiting reason or steps of
its unfinished stage from ``run.json``. Reading and validating a manifest
takes about a millisecond, and a panel that refreshes every few seconds over
hundreds of runs would spend its time re-reading what did not change. So
``ViewCache`` keeps one ``Summary`` per run, stamped with the run's state and
the (mtime, size, inode) of ``run.json`` and ``approvals.json``. Everything
that changes a run, in this process or another (the CLI, the Telegram bot),
is an atomic replace of one of those files or a move to another state
directory, and each of those changes the stamp; an unchanged stamp means the
summary is still true. Reads take no lock, as ``run_view`` takes none.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from daemon.approval import decisions
from daemon.approval.decisions import RunView
from daemon.approval.store import APPROVALS_FILE, candidates_of
from daemon.errors import StoreError
from daemon.runs.manifest import MANIFEST, Manifest
from daemon.runs.progress import StepCount
from daemon.runs.states import State
from daemon.runs.store import RunRef, RunStore

_Stamp = tuple[object, ...]


@dataclass(frozen=True)
class Summary:
    """One run as the panel shows it: the shared view, its live progress and its picture."""

    view: RunView
    # Unfinished stages (their waiting reason, or steps so far) and backend jobs in flight.
    progress: tuple[str, ...] = ()
    # The run's picture: thumbnail.jpg once rendered, else its first candidate image.
    thumb: Path | None = None
    # Why the run could not be read (a manifest being rewritten by hand, a damaged file).
    problem: str = ""


def summarize(store: RunStore, ref: RunRef) -> Summary:
    """Read one run's summary from disk (no cache)."""
    try:
        view = decisions.run_view(store, ref)
        if ref.state in (State.RENDERED, State.FAILED):
            return Summary(view, view.jobs, view.thumbnail)
        # Stage progress is not part of the shared view: one more read of run.json.
        manifest = store.load(ref)
    except (StoreError, OSError, ValueError) as exc:
        # ValueError covers a damaged segments.json (JSON and pydantic errors).
        problem = store.problem_of(ref, exc) if isinstance(exc, StoreError) else str(exc)
        return Summary(RunView(ref.run_id, ref.state, ref.run_id, ref.path), problem=problem)
    return Summary(view, (*stage_lines(manifest), *view.jobs), _first_image(view, manifest, ref))


def stage_lines(manifest: Manifest) -> list[str]:
    """One line per unfinished stage: what it waits for, or which steps it finished."""
    lines = []
    for name, progress in manifest.stages.items():
        if not progress.is_open:
            continue
        if "waiting" in progress.detail:
            lines.append(f"{name}: {progress.detail['waiting']}")
        else:
            steps = ", ".join(progress.steps_done) or "starting"
            count = StepCount.from_detail(progress.detail)
            lines.append(f"{name}: {steps} (attempt {progress.attempts})" + (f"; {count.label()}" if count else ""))
    return lines


def _first_image(view: RunView, manifest: Manifest, ref: RunRef) -> Path | None:
    for segment in view.segments:
        for cand in segment.candidates:
            return cand.image
    found = candidates_of(manifest)
    return ref.path / found[min(found)][0].output if found else None


def _stamp(ref: RunRef) -> _Stamp:
    parts: list[object] = [ref.state, ref.path]
    for name in (MANIFEST, APPROVALS_FILE):
        try:
            st = (ref.path / name).stat()
        except OSError:
            parts.append(None)
        else:
            parts.append((st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(parts)


class ViewCache:
    """Summaries of runs, re-read only when a run's files or state changed."""

    def __init__(self, store: RunStore) -> None:
        self.store = store
        self._entries: dict[str, tuple[_Stamp, Summary]] = {}
        self._lock = threading.Lock()
        self.misses = 0

    def summary(self, ref: RunRef) -> Summary:
        """The run's summary, from the cache when nothing changed since it was read."""
        stamp = _stamp(ref)
        with self._lock:
            hit = self._entries.get(ref.run_id)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        summary = summarize(self.store, ref)
        if not summary.problem:  # a half-read run is read again next time
            with self._lock:
                self._entries[ref.run_id] = (stamp, summary)
                self.misses += 1
        return summary

    def prune(self, keep: set[str]) -> None:
        """Forget runs that are gone (a person deleted or moved the folder)."""
        with self._lock:
            for run_id in [r for r in self._entries if r not in keep]:
                del self._entries[run_id]
