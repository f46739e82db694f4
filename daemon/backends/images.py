"""Local image backends: labelled storyboard frames, or a person's own photos.

Both do their work inside ``collect`` on the CPU and cannot resume, so a job
interrupted by a restart is simply made again. Everything a job needs travels
in the ``Job`` itself (the prompt, the size, and ``job.detail``), never in the
backend: a job read back from ``run.json`` after a restart renders the same
image as the first time.

``StoryboardBackend`` draws a preview frame per candidate: a two-colour
gradient and translucent shapes whose palette comes from the segment's mood
and energy, under a panel naming the segment, candidate, seed, time range,
mood and prompt. The picture is a pure function of the job (``random.Random``
seeded from it, no timestamps in the PNG), so a retry writes identical bytes.
Neighbouring segments must read as a cut to the assembly's scene detection,
so the gradient runs across the frame for even segments and down it for odd
ones: any candidate of one segment differs strongly from any of the next.

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

import colorsys
import random
import re
import threading
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from daemon.backends.base import ImageBackend, Job, Progress
from daemon.config import Settings
from daemon.errors import RUN_PLACEHOLDER, PermanentError
from daemon.runs import fsutil

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})

# Base hue (degrees) per mood, from plan.MOODS: cool for quiet, warm for loud.
MOOD_HUES = {
    "calm": 205.0,
    "steady": 165.0,
    "building": 35.0,
    "intense": 355.0,
    "euphoric": 300.0,
    "fading": 255.0,
}

GRADIENT_PROFILES = ("rise", "fall", "peak")

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


class StoryboardBackend:
    """Draws a labelled preview frame per candidate; needs no GPU and no network.

    Reads ``job.detail`` keys ``start`` and ``end`` (seconds), ``mood``,
    ``energy`` (0..1) and, when present, ``section``.
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


def render_storyboard(job: Job) -> Image.Image:
    """The preview frame for one candidate, a pure function of ``job``."""
    start, end = _number(job, "start"), _number(job, "end")
    energy = min(1.0, max(0.0, _number(job, "energy")))
    mood = str(_detail(job, "mood"))
    width, height = job.width, job.height
    # A string seed is hashed with SHA-512 by random.seed: stable across
    # processes and Python versions, unlike hash().
    rng = random.Random(f"storyboard/{job.seed}/{job.segment}/{job.index}")

    # Candidates of one segment share the mood's hue family but step around
    # it, so a person choosing between them sees a choice.
    hue = _mood_hue(mood) + (0.0, 40.0, -40.0)[job.index % 3] + rng.uniform(-10.0, 10.0)
    saturation = 0.35 + 0.55 * energy
    dark = _hls(hue, 0.07 + 0.05 * energy, saturation)
    light = _hls(hue + 35.0 + rng.uniform(-10.0, 10.0), 0.70 + 0.10 * energy, saturation)
    accent = _hls(hue + 180.0 + rng.uniform(-25.0, 25.0), 0.6, min(1.0, saturation + 0.2))

    # The gradient's axis alternates with the segment (the cut guarantee
    # above); its profile steps with the candidate so candidates differ too.
    vertical = job.segment % 2 == 1
    profile = GRADIENT_PROFILES[job.index % len(GRADIENT_PROFILES)]
    # Odd segments also lean dark and even ones light, for a margin over the
    # cut threshold that survives the shapes and the label panel.
    lean = 1.8 if vertical else 0.6
    image = _gradient(width, height, dark, light, vertical=vertical, profile=profile, lean=lean)

    overlay = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    unit = min(width, height)
    for _ in range(3 + round(5 * energy)):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        radius = rng.uniform(0.10, 0.35) * unit
        colour = (*rng.choice((accent, light, dark)), rng.randint(50, 120))
        # Quiet music gets soft discs, loud music sharp polygons.
        if rng.random() < energy:
            sides = rng.randint(3, 6)
            draw.regular_polygon((cx, cy, radius), sides, rotation=rng.uniform(0, 360), fill=colour)
        else:
            draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=colour)

    title = f"segment {job.segment} · candidate {job.index} · seed {job.seed}"
    # A hyphen, not an en dash: Pillow's built-in font has no en dash glyph.
    when = f"{format_time(start)} - {format_time(end)}"
    if "section" in job.detail:
        when += f" · section {int(_number(job, 'section'))}"
    _label(draw, width, height, [title, when, f"{mood} · energy {energy:.2f}"], job.prompt)
    return Image.alpha_composite(image.convert("RGBA"), overlay).convert("RGB")


def format_time(seconds: float) -> str:
    """``mm:ss.cc``, e.g. 5.0625 s -> ``00:05.06``; minutes run past 59 rather than wrap."""
    centis = max(0, round(seconds * 100))
    minutes, rest = divmod(centis, 6000)
    return f"{minutes:02d}:{rest // 100:02d}.{rest % 100:02d}"


def _gradient(
    width: int,
    height: int,
    a: tuple[int, int, int],
    b: tuple[int, int, int],
    *,
    vertical: bool,
    profile: str,
    lean: float = 1.0,
) -> Image.Image:
    """A gradient from ``a`` to ``b`` across (or, ``vertical``, down) the frame.

    ``rise`` goes from ``a`` to ``b``, ``fall`` back, ``peak`` has ``b`` in the
    middle: any two differ by a third of the colour distance on average.
    ``lean`` is a gamma on the ramp: below 1 the frame leans to ``b``.
    """
    ramp = np.linspace(0.0, 1.0, height if vertical else width)
    if profile == "fall":
        ramp = 1.0 - ramp
    elif profile == "peak":
        ramp = 1.0 - np.abs(2.0 * ramp - 1.0)
    ramp = ramp**lean
    t = np.broadcast_to(ramp[:, None] if vertical else ramp[None, :], (height, width))
    start, stop = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    pixels = start + (stop - start) * t[..., None]
    return Image.fromarray(np.rint(pixels).astype(np.uint8), "RGB")


def _label(
    draw: ImageDraw.ImageDraw, width: int, height: int, heads: list[str], prompt: str
) -> None:
    """A translucent panel in the lower left holding the headings and the wrapped prompt."""
    margin = max(4, height // 24)
    pad = max(4, height // 40)
    head_font, body_font = _font(max(10, height // 20)), _font(max(9, height // 25))
    inner = int(width * 0.64) - 2 * pad
    lines: list[tuple[str, Font]] = [(text, head_font) for text in heads]
    budget = int(height * 0.62) - 2 * pad - sum(_line_height(f) for _, f in lines)
    max_body = max(0, budget // _line_height(body_font))
    lines += [(text, body_font) for text in wrap(_printable(prompt), body_font, inner, max_body)]
    panel_h = sum(_line_height(f) for _, f in lines) + 2 * pad
    panel_w = max(draw.textlength(t, font=f) for t, f in lines) + 2 * pad
    top = height - margin - panel_h
    draw.rounded_rectangle(
        (margin, top, margin + panel_w, height - margin), radius=pad, fill=(0, 0, 0, 165)
    )
    y = top + pad
    for text, font in lines:
        draw.text((margin + pad, y), text, font=font, fill=(255, 255, 255, 255))
        y += _line_height(font)


def wrap(text: str, font: Font, width: float, max_lines: int) -> list[str]:
    """Greedy word wrap to ``width`` pixels; over-long words are split; overflow ends in '…'."""
    lines: list[str] = []
    line = ""
    for word in text.split():
        candidate = f"{line} {word}" if line else word
        if font.getlength(candidate) <= width:
            line = candidate
            continue
        if line:
            lines.append(line)
        # A word wider than the panel (a URL, a long compound) is split anywhere.
        line = ""
        for ch in word:
            if line and font.getlength(line + ch) > width:
                lines.append(line)
                line = ""
            line += ch
    if line:
        lines.append(line)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        if lines:
            last = lines[-1]
            while last and font.getlength(last + "…") > width:
                last = last[:-1]
            lines[-1] = last.rstrip() + "…"
    return lines


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
        segments = max(1, int(_number(job, "segments")))
        turn = job.index
        if "round" in job.detail:
            turn += (int(_number(job, "round")) - 1) * int(_number(job, "candidates"))
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


def _detail(job: Job, key: str) -> str | int | float:
    try:
        return job.detail[key]
    except KeyError:
        # The stage that creates jobs always fills these; a miss is our bug.
        raise ValueError(f"job {job.id} lacks detail {key!r} (has {sorted(job.detail)})") from None


def _number(job: Job, key: str) -> float:
    value = _detail(job, key)
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"job {job.id} detail {key!r} is not a number: {value!r}") from None


def _mood_hue(mood: str) -> float:
    """The mood's hue; a mood we do not know gets a stable hue from its name."""
    known = MOOD_HUES.get(mood.casefold())
    return known if known is not None else float(zlib.crc32(mood.encode("utf-8")) % 360)


def _hls(hue: float, lightness: float, saturation: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hls_to_rgb((hue % 360.0) / 360.0, lightness, saturation)
    return round(r * 255), round(g * 255), round(b * 255)


def _font(size: int) -> Font:
    # Pillow's built-in font (Aileron), scalable since 10.1; it has no
    # Devanagari glyphs, so such prompts show boxes rather than fail.
    return ImageFont.load_default(size=size)


def _line_height(font: Font) -> int:
    # The bottom of a glyph with an accent and a descender, plus leading.
    bottom = int(font.getbbox("Ág")[3])
    return bottom + max(2, bottom // 5)


def _printable(text: str) -> str:
    """One line of visible characters: control characters dropped, whitespace collapsed."""
    return " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())
