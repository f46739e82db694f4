"""Local image backends: storyboard frames (drawn by ``storyboard``), or a person's own photos.

Both do their work inside ``collect`` on the CPU and cannot resume, so a job
interrupted by a restart is simply made again. Everything a job needs travels
in the ``Job`` itself (the prompt, the size, and ``job.detail``), never in the
backend: a job read back from ``run.json`` after a restart renders the same
image as the first time.

``StoryboardBackend`` draws a placeholder frame per candidate: a landscape
composed from the segment's mood and energy, with a small label kept where
no camera move or export crop cuts it (see ``daemon.backends.storyboard``).

``FolderBackend`` takes photos from a folder, in natural name order (``img2``
before ``img10``). Segment ``i`` gets photo ``i``, so a person who drops one
photo per segment sees them in the order they named them. Further candidates
take further passes through the folder: candidate ``c`` of round ``r`` is
pass ``p = c + (r - 1) * candidates`` and gets photo ``i + p * segments``.
With enough photos every candidate of every round is a different photo;
with fewer, the order wraps around, so a short folder repeats rather than
fails.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

from PIL import Image, ImageOps

from daemon.backends.base import ImageBackend, Job, Progress, job_number
from daemon.backends.storyboard import render_storyboard
from daemon.config import Settings
from daemon.errors import RUN_PLACEHOLDER, PermanentError
from daemon.runs import fsutil

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})

class StoryboardBackend:
    """Draws a labelled placeholder frame per candidate; needs no GPU and no network.

    Reads ``job.detail`` keys ``start`` and ``end`` (seconds), ``mood`` and ``energy`` (0..1).
    """

    name = "storyboard"
    resource = "cpu"

    def submit(self, job: Job) -> None:
        """Nothing to queue: the frame is drawn in ``collect``."""

    def collect(self, job: Job, *, progress: Progress, stop: threading.Event) -> Path:
        """Draw the frame and write it to ``job.output``; a stop lets this short job finish."""
        output = Path(job.output)
        _save(render_storyboard(job), output)
        progress(1.0)
        return output

    def can_resume(self, job: Job) -> bool:
        """Drawing happens in-process; a job cut short is drawn again."""
        return False


class FolderBackend:
    """Uses a person's own photos, fitted to the video size; see the module docstring for the order.

    Reads ``job.detail`` keys ``segments`` (the run's segment count) and,
    when present, ``round`` and ``candidates`` (per segment and round).
    """

    name = "folder"
    resource = "cpu"

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def submit(self, job: Job) -> None:
        """Nothing to queue: the photo is fitted in ``collect``."""

    def collect(self, job: Job, *, progress: Progress, stop: threading.Event) -> Path:
        """Fit the job's photo to ``job.width``×``job.height`` and write it to ``job.output``."""
        photos = self.photos()
        segments = max(1, int(job_number(job, "segments")))
        turn = job.index
        if "round" in job.detail:
            turn += (int(job_number(job, "round")) - 1) * int(job_number(job, "candidates"))
        photo = photos[photo_index(job.segment, turn, segments, len(photos))]
        output = Path(job.output)
        _save(self._fit(photo, job.width, job.height), output)
        progress(1.0)
        return output

    def can_resume(self, job: Job) -> bool:
        """Fitting happens in-process; a job cut short is done again."""
        return False

    def photos(self) -> list[Path]:
        """The folder's photos in natural order; raises PermanentError when there are none."""
        if not self.folder.is_dir():
            raise self._no_photos("does not exist")
        try:
            found = [
                p
                for p in self.folder.iterdir()
                if not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
            ]
        except OSError as exc:
            raise self._no_photos(f"cannot be read ({exc})") from exc
        if not found:
            raise self._no_photos("holds no photos")
        return sorted(found, key=lambda p: natural_key(p.name))

    def _fit(self, photo: Path, width: int, height: int) -> Image.Image:
        """The photo upright, in RGB, scaled to cover and centre-cropped to the size."""
        try:
            with Image.open(photo) as im:
                # Decode a JPEG at 1/2, 1/4 or 1/8 scale when that still covers
                # the frame either way up: a 24 MP photo decodes ~8x faster.
                side = max(width, height)
                im.draft("RGB", (side, side))
                im.load()
                upright = ImageOps.exif_transpose(im)
            rgb = _flatten(upright)
        except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
            raise PermanentError(
                f"photo {photo.name} in {self.folder} cannot be read: {exc}",
                f"Replace or remove {photo.name} in {self.folder}, "
                f"then run `tandava retry {RUN_PLACEHOLDER}`.",
                cause="BadPhoto",
            ) from exc
        return ImageOps.fit(rgb, (width, height), method=Image.Resampling.LANCZOS)

    def _no_photos(self, why: str) -> PermanentError:
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
        return PermanentError(
            f"the folder backend found no photos: {self.folder} {why}",
            f"Put photos ({suffixes}) in {self.folder}: by default a folder named like the song "
            "beside it in the inbox, or the folder set as images.folder in tandava.toml; "
            f"then run `tandava retry {RUN_PLACEHOLDER}`.",
            cause="NoPhotos",
        )


def photo_index(segment: int, turn: int, segments: int, photos: int) -> int:
    """Which photo (0-based, in natural order) a segment gets on pass ``turn`` through the folder."""
    return (segment + max(0, turn) * segments) % photos


def natural_key(name: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key putting ``img2`` before ``img10``, ignoring case."""
    # Split on ASCII digit runs: odd parts are numbers, even parts text, so
    # any two keys compare number with number and text with text.
    parts = re.split(r"([0-9]+)", name.casefold())
    return tuple((1, int(p)) if i % 2 else (0, p) for i, p in enumerate(parts))


def make_image_backend(settings: Settings, *, song_name: str, inbox: Path) -> ImageBackend:
    """The image backend configured in ``images.backend`` for this song."""
    if settings.images.backend == "folder":
        folder = settings.images.folder or inbox / Path(song_name).stem
        return FolderBackend(folder)
    return StoryboardBackend()


def _save(image: Image.Image, output: Path) -> None:
    """Write atomically, as JPEG for a .jpg/.jpeg name and PNG otherwise."""
    output.parent.mkdir(parents=True, exist_ok=True)
    with fsutil.replacing(output) as fh:
        if output.suffix.lower() in (".jpg", ".jpeg"):
            image.save(fh, format="JPEG", quality=95, subsampling=0)
        else:
            image.save(fh, format="PNG")


def _flatten(image: Image.Image) -> Image.Image:
    """RGB; transparent areas become black, as they would on a video frame."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
