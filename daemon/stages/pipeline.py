"""The pipeline: which stages exist and what each does to a run folder.

Each work function is written as steps that are recorded in the manifest the
moment they finish and skipped when already done, so a run resumes after a
crash from its last completed step. Outputs are written temp-then-rename, so a
step is either done (file present, step recorded) or redone from scratch.

A song that fails to decode while its file changed within the last minute is
still arriving, not broken: ``analyze`` waits and looks again (never a
permanent failure), and a song that grew after intake has its size and hash
recorded again.

Stages: ``analyze`` (incoming → analyzed), ``images`` (→ imaged), ``offer``
(→ pending_approval), ``approval`` (→ approved, once every segment has an
approved image) and ``render`` (→ rendered: clips, then the music video).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon import defaults
from daemon.config import Settings
from daemon.errors import BadInput
from daemon.music.segments_file import SEGMENTS_FILE, write_segments
from daemon.runs import fsutil
from daemon.runs.stage import Outcome, Stage, StageRun, Waiting
from daemon.runs.states import Event, State
from daemon.stages.song import song_of

if TYPE_CHECKING:
    from daemon.backends.base import ImageBackend, VideoBackend
    from daemon.backends.comfy.backend import ComfyBackends
    from daemon.stages.google import GoogleBackends

ANALYSIS_FILE = "analysis.json"


def build_stages(settings: Settings, comfy: ComfyBackends | None = None,
                 google: GoogleBackends | None = None) -> list[Stage]:
    """The stages this installation runs, in pipeline order.

    With ``comfy`` (see ``uses_comfy``), the stages that make images or clips
    on ComfyUI share its pool and run on the ``gpu`` resource. Google's
    backends (``gemini`` images, ``veo`` clips) are built once here and shared
    by every run, so the caps and the operation limit hold across runs.
    """
    from daemon.stages.candidates import MakeCandidates, image_backend_for
    from daemon.stages.gate import Gate, Offer
    from daemon.stages.google import GoogleBackends, prompt_rewriter, uses_google
    from daemon.stages.options import PerRun
    from daemon.stages.render import Render, head_start, make_video_backend

    images_for: Callable[[Settings, StageRun], ImageBackend] = image_backend_for
    video_for: Callable[[Settings], VideoBackend] = make_video_backend
    images_on, render_on = "cpu", "cpu"
    # The backend is asked for with each run's own settings (a run's options may choose another).
    if comfy is not None:
        images_for = _comfy_or(lambda s: s.images.backend, lambda: comfy.image, image_backend_for)
        video_for = _comfy_or(lambda s: s.clips.backend, lambda: comfy.video, make_video_backend)
        images_on = "gpu" if settings.images.backend == "comfyui" else "cpu"
        render_on = "gpu" if settings.clips.backend == "comfyui" else "cpu"
    if google is None and uses_google(settings):
        google = GoogleBackends.open(settings)
    if google is not None and google.image is not None:
        gemini = google.image
        images_for = lambda _s, _j: gemini  # noqa: E731
    if google is not None and google.video is not None:
        veo = google.video
        video_for = lambda _s: veo  # noqa: E731
    rewrite = prompt_rewriter(settings)

    def make_candidates(run_settings: Settings) -> MakeCandidates:
        return MakeCandidates(run_settings, images_for,
                              head_start=lambda job: head_start(run_settings, video_for, job))

    return [
        Stage("analyze", State.INCOMING, Event.ANALYSIS_DONE, PerRun(settings, Analyze)),
        Stage("images", State.ANALYZED, Event.IMAGES_DONE, PerRun(settings, make_candidates), images_on),
        Stage("offer", State.IMAGED, Event.OFFERED, PerRun(settings, Offer)),
        Stage("approval", State.PENDING_APPROVAL, Event.ALL_APPROVED,
              PerRun(settings, lambda s: Gate(s, images_for))),
        Stage("render", State.APPROVED, Event.RENDER_DONE,
              PerRun(settings, lambda s: Render(s, video_for, rewrite=rewrite)), render_on),
    ]


def _comfy_or(chosen: Callable[[Settings], str], comfy: Callable[[], Any], other: Callable[..., Any]) -> Any:
    """A backend factory that answers ComfyUI's backend when the run's settings choose it."""

    def backend(s: Settings, *rest: Any) -> Any:
        return comfy() if chosen(s) == "comfyui" else other(s, *rest)

    return backend


class Analyze:
    """incoming → analyzed: hash check, music analysis, segment plan with prompts."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def __call__(self, job: StageRun) -> Outcome:
        song = job.ref.path / job.manifest.song.file_name
        song_of(job)  # a song deleted from the run fails it with the way back
        if not job.is_done("hash") and not job.manifest.song.sha256:
            job.manifest.song.sha256 = _hash_or_explain(song, job.ref.run_id)
            job.done("hash")
        if not job.is_done("analysis") or not (job.ref.path / ANALYSIS_FILE).is_file():
            _record_growth(job, song)
            waiting = self._analyse(job, song)
            if waiting is not None:
                return waiting
        if not job.is_done("segments") or not (job.ref.path / SEGMENTS_FILE).is_file():
            self._plan(job)
        return None

    def _analyse(self, job: StageRun, song: Path) -> Waiting | None:
        from daemon.music.analysis import analyze

        cfg = self.settings.analysis
        try:
            result = analyze(
                song,
                max_seconds=cfg.max_song_seconds,
                min_seconds=cfg.min_song_seconds,
                sr=cfg.sample_rate,
            )
        except BadInput as exc:
            changed_ago = _changed_ago(song)
            if exc.cause in _MAYBE_ARRIVING and changed_ago < defaults.RECENT_CHANGE_SECONDS:
                return Waiting(
                    f"{song.name} changed {changed_ago:.0f} s ago and may still be arriving "
                    f"({exc.reason}); looking again until it has been still for "
                    f"{defaults.RECENT_CHANGE_SECONDS:.0f} s",
                    defaults.RECENT_CHANGE_RECHECK_SECONDS,
                )
            exc.hint = exc.hint or _default_hint(job.ref.run_id)
            raise
        fsutil.atomic_write_text(job.ref.path / ANALYSIS_FILE, result.model_dump_json(indent=2) + "\n")
        job.done("analysis", duration=round(result.duration, 3), tempo=round(result.tempo, 2))
        return None

    def _plan(self, job: StageRun) -> None:
        from daemon.music.analysis import Analysis
        from daemon.writers.chain import write_plan

        cfg = self.settings.analysis
        analysis = Analysis.model_validate_json((job.ref.path / ANALYSIS_FILE).read_bytes())
        song = job.ref.path / job.manifest.song.file_name
        from daemon.stages.options import fit_scenes, read_options

        segments, record = write_plan(self.settings, analysis, song, cfg.seed)
        # Scenes a caller fixed (HTTP API options) are fitted like a writer's answer.
        options = read_options(job.ref.path)
        scenes = options.scenes if options is not None else []
        segments, transitions = fit_scenes(analysis, segments, scenes,
                                           clip_seconds=self.settings.video.clip_seconds)
        write_segments(
            job.ref.path,
            segments,
            writer=record.writer,
            fell_through=record.fell_through,
            theme=cfg.theme,
            seed=cfg.seed,
            clip_seconds=self.settings.video.clip_seconds,
            **({"scenes": len(scenes), "scene_transitions": transitions} if scenes else {}),
        )
        job.done("segments", segments=len(segments), writer=record.writer,
                 fell_through=len(record.fell_through))


# What a song caught mid-copy looks like; an unreadable, missing or overlong file is not that.
_MAYBE_ARRIVING = frozenset({"truncated", "not_audio", "empty", "too_short", "silent"})


def _changed_ago(song: Path) -> float:
    """Seconds since the song's file last changed; infinite when it cannot be told."""
    try:
        age = time.time() - song.stat().st_mtime
    except OSError:
        return float("inf")
    return max(age, 0.0)


def _record_growth(job: StageRun, song: Path) -> None:
    """A writer's open handle follows the file into its run: record the size and hash it ended with."""
    try:
        size = song.stat().st_size
    except OSError:
        return  # the analysis explains a missing song
    if size != job.manifest.song.size and job.manifest.song.sha256:
        job.manifest.song.size = size
        job.manifest.song.sha256 = _hash_or_explain(song, job.ref.run_id)
        job.store.save(job.ref, job.manifest)


def _hash_or_explain(song: Path, run_id: str) -> str:
    try:
        return fsutil.sha256_file(song)
    except PermissionError as exc:
        raise BadInput(
            f"Tandava cannot read the song file {song.name}: permission denied.",
            f"Give the daemon's user read access to {song} (for example `chmod a+r`), "
            f"then run `tandava retry {run_id}`.",
            cause="Unreadable",
        ) from exc
    except FileNotFoundError as exc:
        raise BadInput(
            f"The song file {song.name} is missing from its run folder.",
            f"Put the song back into {song.parent} and run `tandava retry {run_id}`.",
            cause="Missing",
        ) from exc


def _default_hint(run_id: str) -> str:
    return (
        "Re-export or re-download the song and drop it into the inbox again, "
        f"or replace the file in the run folder and run `tandava retry {run_id}`."
    )
