"""The ``veo`` video backend: Veo 3.1 image-to-video, crash-safe and billed once.

How this works:

- ``submit`` asks the ledger for the clip's price (a cap refuses it: the run
  waits, nothing is sent), then sends ``generate_videos`` with the approved
  image as the first frame, ``last_frame`` (interpolate mode: the next
  segment's approved image), the shortest Veo duration covering the clip, the
  job's seed and no audio (the song is the soundtrack). The operation name
  goes into ``job.detail`` and the stage writes it into ``run.json`` the moment
  ``submit`` returns. With every slot taken it sends nothing; ``collect``
  sends it when a slot is free.
- ``can_resume`` is true while the job has an operation name younger than
  ``keep_hours`` (Google keeps outputs 2 days): after a restart the job polls
  that name again (``GenerateVideosOperation(name=…)``) and is never sent
  twice. Every send has its own ledger entry (``<job>#<n>``); a send whose
  answer was lost (a timeout, a crash mid-request) stays *pending* in the
  ledger, because it may be billed, and the clip is sent again only after the
  cost check counts it. Google offers no lookup of an operation by a key of
  ours, so this is the one case where a clip may be paid for twice.
- ``collect`` polls on the schedule of ``operations``, downloads (inline bytes
  on Vertex, ``files.download`` on the Gemini API) to a temp file, conforms
  it to the job's frames, fps and size without audio, probes it, and renames
  it into place. A filtered clip raises ``PermanentError`` with cause
  ``SafetyFiltered`` and the reasons, for the render stage's rewrite/fallback.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import structlog
from google.genai import types

from daemon.backends.base import SAFETY_FILTERED, Job, Progress
from daemon.backends.google.client import Route, call, describe_error, image_mime, translate
from daemon.backends.google.costs import Ledger, price_of, veo_seconds
from daemon.backends.google.operations import Outcome, Slots, outcome, wait_until_done
from daemon.errors import PermanentError, StageError, TransientError
from daemon.runs import fsutil
from daemon.video import media

log = structlog.get_logger("tandava.veo")

# Veo makes at most this many seconds per clip; longer segments are chained by the timeline.
MAX_SECONDS = 8
FILTERED = SAFETY_FILTERED


class VeoBackend:
    """Clips from Veo; see the module docstring."""

    resource = "cpu"
    # Veo bills by the second and makes 4, 6 or 8 s: the timeline asks for only the frames a clip
    # shows, and ``veo_seconds`` picks the shortest length that covers them.
    bills_by_second = True

    def __init__(self, route: Route, ledger: Ledger, *, ffmpeg: str, fps: int, slots: Slots | None = None
                 ) -> None:
        self.route = route
        self.ledger = ledger
        self.ffmpeg = ffmpeg
        self.model = route.cfg.veo_model
        self.name = f"veo:{self.model}"
        self.max_frames: int | None = MAX_SECONDS * fps
        self.slots = slots or Slots(route.cfg.max_concurrent_operations)

    # -- the interface ------------------------------------------------------------

    def submit(self, job: Job) -> None:
        """Send the job if a slot is free (else ``collect`` sends it); records the operation name."""
        if self.slots.try_take(job.id):
            self._send(job, threading.Event())

    def can_resume(self, job: Job) -> bool:
        """True while the job's operation can still be asked about at Google."""
        name = str(job.detail.get("operation", ""))
        if not name:
            return False
        age_hours = (time.time() - float(job.detail.get("submitted_at", 0))) / 3600
        if age_hours > self.route.cfg.keep_hours:
            log.warning("veo.expired", job=job.id, hours=round(age_hours, 1))
            job.detail.pop("operation", None)
            return False
        return True

    def collect(self, job: Job, *, progress: Progress, stop: threading.Event) -> Path:
        if not job.detail.get("operation"):
            progress(0.0, "waiting for a free Veo operation slot")
            if not self.slots.take(job.id, stop):
                raise TransientError("stopped before the clip was sent to Veo", cause="Stopped")
            self._send(job, stop)
        else:
            self.slots.take(job.id, stop)  # a re-attached operation counts against the limit
        try:
            return self._finish(job, progress, stop)
        finally:
            # Given back on every way out: a retry takes it again (a leaked slot would shrink the limit).
            self.slots.give(job.id)

    # -- steps ----------------------------------------------------------------------

    def _send(self, job: Job, stop: threading.Event) -> None:
        try:
            self.route.require()
        except StageError:
            self.slots.give(job.id)
            raise
        run_dir = Path(job.output).parents[1]
        seconds = veo_seconds(job.frames, job.fps)
        sends = int(job.detail.get("sends", 0)) + 1
        key = f"{job.id}#{sends}"
        try:
            first = _image(Path(job.source), job)
            last = _image(Path(str(job.detail["last_frame"])), job) if job.detail.get("last_frame") else None
            self.ledger.reserve(run_dir, key, kind="clip", model=self.model, units=seconds,
                                usd=seconds * price_of(self.route.cfg, self.model, "second"))
        except StageError:
            self.slots.give(job.id)
            raise
        config = types.GenerateVideosConfig(
            number_of_videos=1, duration_seconds=seconds, resolution=self.route.cfg.resolution,
            aspect_ratio="9:16" if job.height > job.width else "16:9",
            seed=job.seed & 0xFFFFFFFF, generate_audio=False,
            negative_prompt=job.negative_prompt or None, last_frame=last)
        job.detail.update({"sends": sends, "model": self.model, "veo_seconds": seconds})
        client = self.route.shared()
        try:
            operation = call(lambda: client.models.generate_videos(
                model=self.model, source=types.GenerateVideosSource(prompt=job.prompt, image=first),
                config=config), route=self.route, what="generate_videos", model=self.model, stop=stop)
        except StageError as exc:
            self.slots.give(job.id)
            if exc.cause == "GoogleTimeout":
                # It may have reached Google and be billed: the entry stays pending, counted by the caps.
                log.warning("veo.submit_lost", job=job.id, ledger=key)
            else:
                self.ledger.settle(run_dir, key, "free", reason=exc.cause)
            raise
        if not operation.name:
            raise TransientError("Veo answered the submit without an operation name", cause="GoogleServer")
        job.detail.update({"operation": operation.name, "submitted_at": round(time.time(), 3),
                           "ledger": key})
        log.info("veo.submitted", job=job.id, operation=operation.name, seconds=seconds)

    def _finish(self, job: Job, progress: Progress, stop: threading.Event) -> Path:
        name = str(job.detail["operation"])
        cfg = self.route.cfg
        client = self.route.shared()
        asked = types.GenerateVideosOperation.model_validate({"name": name})  # re-attach needs the name only

        def get() -> types.GenerateVideosOperation:
            return call(lambda: client.operations.get(asked), route=self.route, what="operations.get",
                        model=self.model, stop=stop)

        try:
            done = wait_until_done(get, submitted_at=float(job.detail.get("submitted_at", 0)),
                                   first=cfg.poll_first_seconds, every=cfg.poll_every_seconds,
                                   stop=stop, progress=progress)
        except PermanentError as exc:
            if exc.cause in ("GoogleModel", "GoogleRequest"):
                job.detail.pop("operation", None)  # gone at Google: sent again after the cost check
            raise
        if done is None:
            raise TransientError("stopped while Veo was rendering; the operation is re-attached on start",
                                 cause="Stopped")
        result = outcome(done)
        if result.kind != "video":
            self._refused(job, result)
        assert result.video is not None
        return self._download(client, job, result.video)

    def _refused(self, job: Job, result: Outcome) -> None:
        run_dir = Path(job.output).parents[1]
        key = str(job.detail.get("ledger", job.id))
        job.detail.pop("operation", None)
        if result.kind == "filtered":
            reasons = "; ".join(result.reasons)
            self.ledger.settle(run_dir, key, "free", reason="filtered")
            job.detail["filtered"] = reasons[:500]
            raise PermanentError(f"Veo's safety filter refused the clip for segment {job.segment}: {reasons}",
                                 "Rewrite the segment's motion prompt, then `tandava retry <run>`.",
                                 cause=FILTERED)
        error = describe_error(result.error)
        self.ledger.settle(run_dir, key, "free", reason=error)
        if result.error.get("code") == 3:
            raise PermanentError(f"Veo refused the clip for segment {job.segment}: {error}",
                                 "Check [google] veo_model, resolution and [video] size against Veo's "
                                 "limits, then `tandava retry <run>`.", cause="VeoRequest")
        raise TransientError(f"Veo failed the clip for segment {job.segment}: {error}", cause="VeoFailed")

    def _download(self, client: object, job: Job, video: types.Video) -> Path:
        output = Path(job.output)
        output.parent.mkdir(parents=True, exist_ok=True)
        raw = fsutil.temp_path_for(output.with_suffix(".veo.mp4"))
        data = video.video_bytes
        if not data:
            if self.route.vertex or not (video.uri or "").startswith("https://"):
                raise PermanentError(f"Veo put the clip at {video.uri}, which Tandava cannot download",
                                     "Leave output_gcs_uri unset so Vertex returns the video inline.",
                                     cause="VeoOutput")
            try:
                data = client.files.download(file=video)  # type: ignore[attr-defined]
            except Exception as exc:  # noqa: BLE001 - translated below, key scrubbed
                raise translate(exc, route=self.route, what="files.download", model=self.model) from None
        try:
            raw.write_bytes(data)
            self._conform(raw, job, output)
        finally:
            raw.unlink(missing_ok=True)
        self.ledger.settle(output.parents[1], str(job.detail.get("ledger", job.id)), "billed")
        job.detail.pop("operation", None)
        job.detail["downloaded_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        return output

    def _conform(self, raw: Path, job: Job, output: Path) -> None:
        """Veo's 24 fps clip as the job's frames, fps and size, no audio; temp → verify → rename."""
        tmp = fsutil.temp_path_for(output)
        w, h = job.width, job.height
        try:
            media.run_ffmpeg(self.ffmpeg, [
                "-i", str(raw), "-an",
                "-vf", f"fps={job.fps},scale={w}:{h}:force_original_aspect_ratio=increase,crop={w}:{h},"
                       "tpad=stop_mode=clone:stop=-1",
                "-frames:v", str(job.frames), "-c:v", "libx264", "-preset", "veryfast", "-crf", "18",
                "-pix_fmt", "yuv420p", "-f", "mp4", str(tmp),
            ], what=f"conform Veo's clip for segment {job.segment}")
            info = media.probe(tmp)
            if info.frames < job.frames:
                raise TransientError(f"Veo's clip for segment {job.segment} has {info.frames} frames, "
                                     f"{job.frames} were asked for", cause="BrokenClip")
            tmp.replace(output)
        finally:
            tmp.unlink(missing_ok=True)


def _image(path: Path, job: Job) -> types.Image:
    """An approved image as Veo takes it (bytes inline); a missing one names the file and the fix."""
    try:
        return types.Image(image_bytes=path.read_bytes(), mime_type=image_mime(path))
    except OSError as exc:
        raise PermanentError(
            f"the image for segment {job.segment}'s clip cannot be read: {path} ({exc.strerror or exc})",
            f"Restore {path.name}, or make and approve segment {job.segment}'s images again; then "
            "`tandava retry <run>`.", cause="MissingImage") from None
