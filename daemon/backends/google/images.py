"""The ``gemini`` image backend: candidates from a Gemini image model, with reference images.

How this works: one ``generate_content`` call per candidate, with
``response_modalities=["IMAGE"]`` and ``image_config.aspect_ratio`` the
supported ratio nearest the video's. The configured reference images
(``[google] references``) go inline before the prompt on every request, so
the deity or character looks the same in every segment. There is no seed on
this API: the job record keeps the model and Google's response id instead.

``submit`` starts the request on one of ``max_concurrent_images`` workers,
so the candidates of a run are asked for together, and ``collect`` waits for
it (a stop ends the wait). A request cut by a crash loses nothing but that one
request, made again once; one answered but not yet collected (a stage attempt
that ended early) is re-attached, never asked for twice. Before it is
sent the ledger reserves its price (and refuses it over a cap).

A blocked answer is HTTP 200 with no image: ``promptFeedback.blockReason``, or
a candidate whose finish reason is ``IMAGE_SAFETY`` and kin, or text only. It
is recorded as free in the ledger and raised as ``QCFailed`` with the reason,
so the candidate stage records it on the job and tries once more (up to
``[images] qc_attempts``). The image that comes back is decoded, cropped to
the video size and written temp-then-rename.
"""

from __future__ import annotations

import io
import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path

from google.genai import types
from PIL import Image, UnidentifiedImageError

from daemon.backends.base import Job, Progress
from daemon.backends.google.client import Route, call, read_image
from daemon.backends.google.costs import Ledger, price_of
from daemon.errors import PermanentError, QCFailed, StageError, TransientError
from daemon.runs import fsutil

# The ratios Gemini image models accept (Vertex ImageConfig docs).
ASPECT_RATIOS = ("1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9")


def aspect_ratio(width: int, height: int) -> str:
    """The supported aspect ratio nearest ``width:height``."""
    target = width / height

    def distance(ratio: str) -> float:
        a, b = ratio.split(":")
        return abs(int(a) / int(b) - target)

    return min(ASPECT_RATIOS, key=distance)


def blocked_reason(response: types.GenerateContentResponse) -> str:
    """Why an answer holds no image ("" when it holds one)."""
    feedback = response.prompt_feedback
    if feedback is not None and feedback.block_reason is not None:
        return f"prompt blocked ({_name(feedback.block_reason)})"
    candidates = response.candidates or []
    if not candidates:
        return "no candidate in the answer"
    first = candidates[0]
    parts = first.content.parts if first.content is not None and first.content.parts else []
    if any(p.inline_data is not None and p.inline_data.data for p in parts):
        return ""
    finish = _name(first.finish_reason) if first.finish_reason is not None else "STOP"
    if finish in ("STOP", "NO_IMAGE"):
        return f"the model answered without an image ({finish})"
    return f"image blocked ({finish})"


def _name(value: object) -> str:
    return str(getattr(value, "value", value))


class GeminiImageBackend:
    """Candidate images from a Gemini image model; see the module docstring."""

    resource = "cpu"
    checks_output = True

    def __init__(self, route: Route, ledger: Ledger, *, references: list[Path] | None = None) -> None:
        self.route = route
        self.ledger = ledger
        self.model = route.cfg.image_model
        self.references = list(references if references is not None else route.cfg.references)
        self.name = f"gemini:{self.model}"
        self._pool = ThreadPoolExecutor(max_workers=route.cfg.max_concurrent_images,
                                        thread_name_prefix="tandava-gemini")
        self._started: dict[str, tuple[Future[Path], Job]] = {}
        self._lock = threading.Lock()
        self._closing = threading.Event()

    def submit(self, job: Job) -> None:
        """Start the request on a worker, so a run's candidates are asked for together."""
        mine = job.model_copy(update={"detail": dict(job.detail)})
        with self._lock:
            if job.id not in self._started:
                self._started[job.id] = (self._pool.submit(self._make, mine, self._closing), mine)

    def can_resume(self, job: Job) -> bool:
        """True while this process holds the request (running, or answered and not yet collected);
        a request cut by a crash left nothing to re-attach to."""
        with self._lock:
            return job.id in self._started

    def collect(self, job: Job, *, progress: Progress, stop: threading.Event) -> Path:
        with self._lock:
            started = self._started.get(job.id)
        if started is None:
            return self._make(job, stop)
        future, mine = started
        progress(0.1, f"asking {self.model}")
        while not wait([future], timeout=0.2).done:
            if stop.is_set():
                raise TransientError("stopped while Gemini made an image", cause="Stopped")
        self._forget(job.id)
        job.detail.update(mine.detail)
        return future.result()  # the worker's exception, if it raised one

    def close(self) -> None:
        """Stop waiting (a 429's delay) and drop requests not yet started."""
        self._closing.set()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _forget(self, job_id: str) -> None:
        with self._lock:
            self._started.pop(job_id, None)

    def _make(self, job: Job, stop: threading.Event) -> Path:
        """One request: the cost check, the call, the answer read and the image written."""
        self.route.require()
        output = Path(job.output)
        run_dir = output.parents[1]
        parts = [self._reference(p) for p in self.references]
        usd = price_of(self.route.cfg, self.model, "image")
        self.ledger.reserve(run_dir, job.id, kind="image", model=self.model, units=1, usd=usd)
        config = types.GenerateContentConfig(
            response_modalities=["IMAGE"],
            image_config=types.ImageConfig(aspect_ratio=aspect_ratio(job.width, job.height),
                                           **({"image_size": self.route.cfg.image_size}
                                              if "gemini-2.5" not in self.model else {})))
        contents: list[types.PartUnionDict] = [*parts, job.prompt]
        client = self.route.shared()
        try:
            response = call(lambda: client.models.generate_content(model=self.model, contents=contents,
                                                                   config=config),
                            route=self.route, what="generateContent", model=self.model, stop=stop)
        except StageError as exc:
            self.ledger.settle(run_dir, job.id, "free", reason=exc.cause)
            raise
        job.detail.update({"model": self.model, "request_id": response.response_id or "",
                           "references": len(parts)})
        reason = blocked_reason(response)
        if reason:
            self.ledger.settle(run_dir, job.id, "free", reason=reason)
            job.detail["blocked"] = reason
            raise QCFailed(f"Google returned no image for segment {job.segment}: {reason}")
        self._save(response, job, output)
        self.ledger.settle(run_dir, job.id, "billed")
        return output

    def _reference(self, path: Path) -> types.Part:
        try:
            return read_image(path)
        except OSError as exc:
            raise PermanentError(f"the reference image {path} cannot be read ({exc.strerror or exc})",
                                 "Fix or remove it in [google] references, then `tandava retry <run>`.",
                                 cause="GoogleReference") from None

    def _save(self, response: types.GenerateContentResponse, job: Job, output: Path) -> None:
        data = next(p.inline_data.data for p in response.parts or []
                    if p.inline_data is not None and p.inline_data.data)
        try:
            with Image.open(io.BytesIO(data)) as raw:
                image = raw.convert("RGB")
        except (UnidentifiedImageError, OSError) as exc:
            raise QCFailed(f"Google's image for segment {job.segment} cannot be decoded ({exc})") from None
        image = _cover(image, job.width, job.height)
        output.parent.mkdir(parents=True, exist_ok=True)
        with fsutil.replacing(output) as fh:
            image.save(fh, format="PNG")


def _cover(image: Image.Image, width: int, height: int) -> Image.Image:
    """Scaled to cover ``width``×``height`` and centre-cropped (a near ratio becomes exact)."""
    scale = max(width / image.width, height / image.height)
    size = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
    resized = image.resize(size, Image.Resampling.LANCZOS)
    left, top = (size[0] - width) // 2, (size[1] - height) // 2
    return resized.crop((left, top, left + width, top + height))
