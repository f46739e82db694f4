"""The storyboard frame: a landscape composed from a segment's mood and energy, and a small label.

How this works. A frame is a pure function of its job (``random.Random``
seeded from seed, segment and candidate; no timestamps in the PNG), so a
retry writes identical bytes. It is painted in numpy, back to front:

- a sky graded from the zenith to a glow on the horizon, in the mood's hue
  (cool for quiet moods, warm for loud ones), saturated by the energy;
- a light (sun or moon) on a rule-of-thirds point, with a halo that grows
  with the energy, and rays when the music is loud;
- stars in a dim sky;
- two to four ridges, far ones paler (aerial perspective), rolling for quiet
  music and jagged for loud; the nearest holds the tallest peak on the
  vertical third opposite the light; quiet moods get water in front that
  mirrors the sky and the light;
- a vignette.

The horizon sits on a third, the light on a power point, and which ones
differ per candidate, so a person choosing between candidates sees a
choice. Neighbouring segments must read as a cut to the assembly's scene
detection: even segments are lit, odd ones dim, so any candidate of one
segment differs strongly from any of the next.

The label (candidate ``segment:candidate`` as ``tandava approve`` takes it,
time range, mood, seed, the prompt's first words) is small and sits inside
``framing.safe_area``: the part of the frame no Ken Burns move and no
export crop ever cuts, so it reads whole in the video, also in 9:16.
"""

from __future__ import annotations

import colorsys
import random
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from daemon.backends.base import Job, job_detail, job_number
from daemon.backends.framing import Box, safe_area

# Base hue (degrees) per mood, from plan.MOODS: cool for quiet, warm for loud.
MOOD_HUES = {
    "calm": 205.0,
    "steady": 165.0,
    "building": 35.0,
    "intense": 355.0,
    "euphoric": 300.0,
    "fading": 255.0,
}
# Moods whose foreground is still water.
WATER_MOODS = frozenset({"calm", "fading"})
# How each mood shapes the land: the height of the main peak (times the usual),
# and how far the ridges climb towards it across the frame (a crescendo).
MOOD_SHAPES = {
    "calm": (0.6, 0.0),
    "steady": (1.0, 0.0),
    "building": (1.0, 0.22),
    "intense": (1.9, 0.05),
    "euphoric": (1.3, 0.0),
    "fading": (0.5, -0.08),
}
# The label's largest font (a share of the frame's shorter side) and smallest (pixels);
# it shrinks to fit the safe area's width.
LABEL_FONT_SHARE = 1 / 40
LABEL_FONT_MIN = 7
LABEL_PROMPT_LINES = 3
# The label is never wider than this share of the frame, however wide the safe area (portrait frames).
LABEL_MAX_WIDTH = 0.3
# The picture is painted at 1/PAINT_SCALE of the frame's size, then scaled up.
PAINT_SCALE = 2

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont
RGB = tuple[float, float, float]


@dataclass(frozen=True)
class Scene:
    """What a frame shows, decided before a pixel is painted (shares of the frame's size)."""

    hue: float
    energy: float
    lit: bool
    horizon: float
    light: tuple[float, float]
    water: bool
    variant: int
    peak: float = 1.0
    climb: float = 0.0


def render_storyboard(job: Job) -> Image.Image:
    """The storyboard frame for one candidate, a pure function of ``job``."""
    return draw_storyboard(job)[0]


def draw_storyboard(job: Job) -> tuple[Image.Image, Box | None]:
    """The frame, and the box its label covers (None when the frame is too small for one)."""
    start, end = job_number(job, "start"), job_number(job, "end")
    energy = min(1.0, max(0.0, job_number(job, "energy")))
    mood = str(job_detail(job, "mood"))
    # A string seed is hashed with SHA-512 by random.seed: stable across
    # processes and Python versions, unlike hash().
    rng = random.Random(f"storyboard/{job.seed}/{job.segment}/{job.index}")
    scene = plan_scene(job.segment, job.index, mood, energy, rng)
    # The picture is all gradients and soft edges: painted at half size and
    # scaled up, it looks the same and costs a quarter (25 instead of 100 ms).
    small = (max(1, job.width // PAINT_SCALE), max(1, job.height // PAINT_SCALE))
    pixels = paint(scene, *small, rng)
    image = Image.fromarray(np.rint(np.clip(pixels, 0.0, 1.0) * 255).astype(np.uint8), "RGB")
    image = image.resize((job.width, job.height), Image.Resampling.BICUBIC)
    when = f"{_short_clock(start)} - {_short_clock(end)}"
    heads = [f"{job.segment}:{job.index}", when, f"{mood} {energy:.2f}", f"seed {job.seed}"]
    box = draw_label(image, safe_area(job.width, job.height), heads, job.prompt)
    return image, box


def plan_scene(segment: int, index: int, mood: str, energy: float, rng: random.Random) -> Scene:
    """Where the horizon and the light go, and the palette, for one candidate."""
    # Candidates of one segment share the mood's hue family but step around it.
    hue = mood_hue(mood) + (0.0, 40.0, -40.0)[index % 3] + rng.uniform(-8.0, 8.0)
    # Horizon on the lower or the upper third; the light on a power point above it.
    horizon = (2 / 3, 1 / 3 + 0.08, 2 / 3)[index % 3]
    # Candidates 0 and 1 differ in the horizon, 0 and 2 in the light's side, 1 and 2 in both.
    light_x = (1 / 3, 2 / 3)[(0, 0, 1)[index % 3] ^ (segment % 2)]
    light_y = 1 / 3
    peak, climb = MOOD_SHAPES.get(mood.casefold(), (1.0, 0.0))
    return Scene(hue, energy, lit=segment % 2 == 0, horizon=horizon, light=(light_x, light_y),
                 water=mood.casefold() in WATER_MOODS, variant=index % 3,
                 peak=peak, climb=climb)


def paint(scene: Scene, width: int, height: int, rng: random.Random) -> np.ndarray:
    """The picture as float RGB in 0..1, shape (height, width, 3)."""
    ys = (np.arange(height, dtype=np.float32)[:, None] + 0.5) / height
    xs = (np.arange(width, dtype=np.float32)[None, :] + 0.5) / width
    aspect = width / height
    e, hue, hy = scene.energy, scene.hue, scene.horizon
    sat = 0.30 + 0.55 * e
    if scene.lit:
        zenith = _hls(hue + 25, (0.40, 0.34, 0.52)[scene.variant] + 0.08 * e, sat)
        glow = _hls(hue - 20, 0.80, sat)
        ground_near, ground_far = _hls(hue + 150, 0.22, sat * 0.6), _hls(hue - 10, 0.62, sat * 0.7)
    else:
        # Night, a later night, blue hour: the candidates' skies differ in depth too.
        zenith = _hls(hue + 25, (0.04, 0.20, 0.11)[scene.variant], sat)
        glow = _hls(hue - 20, 0.40 + 0.08 * e, sat)
        ground_near, ground_far = _hls(hue + 150, 0.02, sat * 0.5), _hls(hue - 10, 0.16, sat * 0.6)
    light_colour = _hls(hue - 35 if e > 0.5 else hue + 10, 0.88, 0.85)

    lx, ly = scene.light
    # The horizon glows most on the light's side: the light's place shapes the whole sky.
    side = 0.25 + 0.75 * np.exp(-(((xs - lx) * aspect / 0.6) ** 2))
    sky = _mix(zenith, glow, np.clip(ys / hy, 0.0, 1.0) ** 1.6 * side)
    dist = np.sqrt(((xs - lx) * aspect) ** 2 + (ys - ly) ** 2)  # in frame heights
    halo = (0.18 + 0.30 * e) * np.exp(-((dist / (0.12 + 0.22 * e)) ** 2))
    sky += halo[..., None] * light_colour
    if e > 0.5:
        angle = np.arctan2(ys - ly, (xs - lx) * aspect)
        count = 7 + round(9 * e)
        rays = (0.5 + 0.5 * np.cos(count * angle + rng.uniform(0, np.pi))) ** 10
        sky += ((e - 0.5) * 0.5 * rays * np.exp(-dist / 0.6))[..., None] * light_colour
    if not scene.lit:
        _stars(sky, hy, rng, width, height)
    # Water mirrors the sky's glow but not the disc: a half disc cut by the
    # frame's bottom edge reads as a mistake, not a reflection.
    mirror = np.clip(2 * hy - ys, 0.0, 1.0)
    reflected = sky[np.minimum((mirror * height).astype(int), height - 1)[:, 0]] * 0.72
    radius = 0.045 + 0.025 * e
    rows = slice(max(0, int((ly - radius) * height) - 1), int((ly + radius) * height) + 2)
    disc = np.clip((radius - dist[rows]) * height + 0.5, 0.0, 1.0)
    sky[rows] = _over(sky[rows], _mix(light_colour, (1.0, 1.0, 0.96), 0.6), disc)

    picture = sky
    if scene.water:
        streak = np.exp(-(((xs - lx) * aspect / (0.03 + 0.05 * e)) ** 2))
        ripple = 0.5 + 0.5 * np.sin(ys * height * 0.9 + rng.uniform(0, np.pi))
        reflected = reflected + (0.35 * streak * ripple * (ys > hy))[..., None] * light_colour
        picture = np.where((ys > hy)[..., None], reflected, sky).astype(np.float32)

    layers = 2 + round(2 * e)
    subject = 1.0 - lx  # the tallest peak stands on the third opposite the light
    for i in range(layers):
        depth = (i + 1) / layers  # 1 is nearest
        colour = _mix(ground_far, ground_near, depth)
        base = hy + (0.0 if scene.water else (depth - 1 / layers) * (1 - hy) * 0.55)
        ridge = base - ridge_line(xs[0], e, rng, height=(0.05 + 0.10 * e) * (0.6 + 0.6 * depth))
        # The land climbs towards the subject's side (falls, for a negative climb).
        toward = xs[0] if subject > 0.5 else 1.0 - xs[0]
        ridge -= scene.climb * depth * toward
        if i == layers - 1:
            ridge -= scene.peak * (0.10 + 0.12 * e) * np.exp(-(((xs[0] - subject) * aspect / 0.16) ** 2))
        # Only the rows a ridge reaches are painted: most of the frame is sky.
        rows = slice(max(0, int(float(ridge.min()) * height) - 1), height)
        cover = np.clip((ys[rows] - ridge[None, :]) * height + 0.5, 0.0, 1.0)
        if scene.water:  # ridges stand on the far shore; the water stays clear below the horizon
            cover *= ys[rows] <= hy + 0.5 / height
        picture[rows] = _over(picture[rows], colour, cover)

    vignette = 1.0 - 0.35 * (((xs - 0.5) * 1.6) ** 2 + ((ys - 0.5) * 1.6) ** 2)
    return picture * np.clip(vignette, 0.0, 1.0)[..., None]


def ridge_line(xs: np.ndarray, energy: float, rng: random.Random, *, height: float) -> np.ndarray:
    """A ridge line's height over the horizon: rolling sines, folded into peaks as the energy rises."""
    total = np.zeros_like(xs)
    weight_sum = 0.0
    for octave in range(4):
        freq = (1.5 + rng.uniform(0, 1.5)) * 2.0**octave
        weight = 0.55**octave * (1.0 if octave < 2 else energy)
        wave = np.sin(2 * np.pi * freq * xs + rng.uniform(0, 2 * np.pi))
        # |sin| folded upside down has sharp crests: peaks for loud music.
        sharp = 1.0 - 2.0 * np.abs(wave)
        total += weight * ((1 - energy) * wave + energy * sharp)
        weight_sum += weight
    return height * (0.5 + 0.5 * total / max(weight_sum, 1e-6))


def _stars(sky: np.ndarray, horizon: float, rng: random.Random, width: int, height: int) -> None:
    count = max(4, width * height // 2500)
    for _ in range(count):
        x, y = rng.randrange(width), rng.randrange(max(1, int(height * horizon * 0.85)))
        sky[y, x] += 0.25 + 0.6 * rng.random() ** 3


def draw_label(image: Image.Image, safe: Box, heads: list[str], prompt: str) -> Box | None:
    """Draw the label at the bottom of ``safe``, as large as fits; returns the box it covers."""
    largest = max(LABEL_FONT_MIN, round(min(image.size) * LABEL_FONT_SHARE))
    for size in range(largest, LABEL_FONT_MIN - 1, -1):
        font = _font(size)
        pad = max(2, size // 3)
        inner = min(safe.width, round(image.width * LABEL_MAX_WIDTH)) - 2 * pad
        if inner <= 0 or max(font.getlength(word) for text in heads for word in text.split()) > inner:
            continue
        # A narrow frame breaks a heading between its words ("seed" / "1021").
        head_lines = [part for text in heads for part in wrap(text, font, inner, len(text))]
        line = _line_height(font)
        room = (safe.height - 2 * pad) // line - len(head_lines)
        if room < 0:
            continue
        lines = head_lines + wrap(_printable(prompt), font, inner, min(LABEL_PROMPT_LINES, room))
        width = int(max(font.getlength(text) for text in lines)) + 2 * pad
        box_h = len(lines) * line + 2 * pad
        left = safe.left + (safe.width - width) // 2
        box = Box(left, safe.bottom - box_h, left + width, safe.bottom)
        overlay = Image.new("RGBA", image.size, (0, 0, 0, 0))
        draw = ImageDraw.Draw(overlay)
        draw.rounded_rectangle((box.left, box.top, box.right - 1, box.bottom - 1), radius=pad,
                               fill=(0, 0, 0, 150))
        for k, text in enumerate(lines):
            colour = (255, 255, 255, 255) if k < len(head_lines) else (225, 225, 225, 255)
            draw.text((box.left + pad, box.top + pad + k * line), text, font=font, fill=colour)
        image.paste(Image.alpha_composite(image.convert("RGBA"), overlay).convert("RGB"))
        return box
    return None


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


def format_time(seconds: float) -> str:
    """``mm:ss.cc``, e.g. 5.0625 s -> ``00:05.06``; minutes run past 59 rather than wrap."""
    centis = max(0, round(seconds * 100))
    minutes, rest = divmod(centis, 6000)
    return f"{minutes:02d}:{rest // 100:02d}.{rest % 100:02d}"


def mood_hue(mood: str) -> float:
    """The mood's hue; a mood we do not know gets a stable hue from its name."""
    known = MOOD_HUES.get(mood.casefold())
    return known if known is not None else float(zlib.crc32(mood.encode("utf-8")) % 360)


def _short_clock(seconds: float) -> str:
    """``m:ss.s`` for the label, where every pixel of width counts."""
    tenths = max(0, round(seconds * 10))
    minutes, rest = divmod(tenths, 600)
    return f"{minutes}:{rest // 10:02d}.{rest % 10}"


def _mix(a: RGB | np.ndarray, b: RGB | np.ndarray, t: float | np.ndarray) -> np.ndarray:
    start, stop = np.asarray(a, np.float32), np.asarray(b, np.float32)
    weight = np.asarray(t, np.float32)
    if weight.ndim:
        weight = weight[..., None]
    return start + (stop - start) * weight


def _over(base: np.ndarray, colour: RGB | np.ndarray, cover: np.ndarray) -> np.ndarray:
    """``colour`` painted over ``base`` where ``cover`` (0..1, per pixel) says."""
    return base + (np.asarray(colour, np.float32) - base) * cover[..., None]


def _hls(hue: float, lightness: float, saturation: float) -> RGB:
    r, g, b = colorsys.hls_to_rgb((hue % 360.0) / 360.0, min(1.0, lightness), min(1.0, saturation))
    return r, g, b


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
