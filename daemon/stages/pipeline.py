"""The pipeline: which stages exist and what each does to a run folder.

Each work function is written as steps that are recorded in the manifest the
moment they finish and skipped when already done, so a run resumes after a
crash from its last completed step. Outputs are written temp-then-rename, so a
step is either done (file present, step recorded) or redone from scratch.

Stages: ``analyze`` (incoming → analyzed), ``images`` (→ imaged), ``offer``
(→ pending_approval), ``approval`` (→ approved, once every segment has an
approved image) and ``render`` (→ rendered: clips, then the music video).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from daemon.config import Settings
from daemon.errors import BadInput
from daemon.music.segments_file import SEGMENTS_FILE, write_segments
from daemon.runs import fsutil
from daemon.runs.engine import Stage, StageRun
from daemon.runs.states import Event, State
from daemon.stages.song import song_of

if TYPE_CHECKING:
    from daemon.backends.base import ImageBackend, VideoBackend
    from daemon.backends.comfy.backend import ComfyBackends

ANALYSIS_FILE = "analysis.json"


def build_stages(settings: Settings, comfy: ComfyBackends | None = None) -> list[Stage]:
    """The stages this installation runs, in pipeline order.

    With ``comfy`` (see ``uses_comfy``), the stages that make images or clips
    on ComfyUI share its pool and run on the ``gpu`` resource.
    """
    from daemon.stages.candidates import MakeCandidates, Offer, image_backend_for
    from daemon.stages.gate import Gate
    from daemon.stages.render import Render, make_video_backend

    images_for: Callable[[Settings, StageRun], ImageBackend] = image_backend_for
    video_for: Callable[[Settings], VideoBackend] = make_video_backend
    images_on, render_on = "cpu", "cpu"
    if comfy is not None and settings.images.backend == "comfyui":
        images_for, images_on = (lambda _s, _j: comfy.image), "gpu"
    if comfy is not None and settings.clips.backend == "comfyui":
        video_for, render_on = (lambda _s: comfy.video), "gpu"
    return [
        Stage("analyze", State.INCOMING, Event.ANALYSIS_DONE, Analyze(settings)),
        Stage("images", State.ANALYZED, Event.IMAGES_DONE, MakeCandidates(settings, images_for), images_on),
        Stage("offer", State.IMAGED, Event.OFFERED, Offer(settings)),
        Stage("approval", State.PENDING_APPROVAL, Event.ALL_APPROVED, Gate(settings, images_for)),
        Stage("render", State.APPROVED, Event.RENDER_DONE, Render(settings, video_for), render_on),
    ]


class Analyze:
    """incoming → analyzed: hash check, music analysis, segment plan with prompts."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def __call__(self, job: StageRun) -> None:
        song = job.ref.path / job.manifest.song.file_name
        song_of(job)  # a song deleted from the run fails it with the way back
        if not job.is_done("hash") and not job.manifest.song.sha256:
            job.manifest.song.sha256 = _hash_or_explain(song, job.ref.run_id)
            job.done("hash")
        if not job.is_done("analysis") or not (job.ref.path / ANALYSIS_FILE).is_file():
            self._analyse(job, song)
        if not job.is_done("segments") or not (job.ref.path / SEGMENTS_FILE).is_file():
            self._plan(job)

    def _analyse(self, job: StageRun, song: Path) -> None:
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
            exc.hint = exc.hint or _default_hint(job.ref.run_id)
            raise
        fsutil.atomic_write_text(job.ref.path / ANALYSIS_FILE, result.model_dump_json(indent=2) + "\n")
        job.done("analysis", duration=round(result.duration, 3), tempo=round(result.tempo, 2))

    def _plan(self, job: StageRun) -> None:
        from daemon.music.analysis import Analysis
        from daemon.writers.chain import write_plan

        cfg = self.settings.analysis
        analysis = Analysis.model_validate_json((job.ref.path / ANALYSIS_FILE).read_bytes())
        song = job.ref.path / job.manifest.song.file_name
        segments, record = write_plan(self.settings, analysis, song, cfg.seed)
        write_segments(
            job.ref.path,
            segments,
            writer=record.writer,
            fell_through=record.fell_through,
            theme=cfg.theme,
            seed=cfg.seed,
            clip_seconds=self.settings.video.clip_seconds,
        )
        job.done("segments", segments=len(segments), writer=record.writer,
                 fell_through=len(record.fell_through))


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
