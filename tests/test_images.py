"""Image backends: labelled storyboard frames and a person's own photos, written atomically."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image, ImageFont

from daemon.backends.base import ImageBackend, Job, noop_progress
from daemon.backends.images import (
    FolderBackend,
    StoryboardBackend,
    make_image_backend,
    natural_key,
    photo_index,
)
from daemon.backends.storyboard import draw_storyboard, format_time, render_storyboard, wrap
from daemon.config import ImagesConfig, Settings
from daemon.errors import RUN_PLACEHOLDER, PermanentError

W, H = 832, 480
PROMPT = "Nataraja dancing in a ring of fire, cosmic dust, volumetric light, 35mm film"
RED = (230, 20, 20)


def image_job(out: Path, segment: int = 0, index: int = 0, *, size: tuple[int, int] = (W, H),
              prompt: str = PROMPT, **detail: Any) -> Job:
    """A job as the images stage records it: the keys it puts in ``detail``, overridable."""
    fields: dict[str, Any] = {
        "start": segment * 5.0625, "end": (segment + 1) * 5.0625, "mood": "steady", "energy": 0.5,
        "section": segment // 3, "segments": 4, "candidates": 2, "round": 1,
    }
    fields.update(detail)
    return Job(id=f"run-image-s{segment:03d}-i{index:02d}-{1000 + segment * 10 + index}",
               kind="image", backend="test", segment=segment, seed=1000 + segment * 10 + index,
               index=index, prompt=prompt, width=size[0], height=size[1],
               output=str(out / f"s{segment:03d}_c{index:02d}.png"), detail=fields)


def collect(backend: ImageBackend, job: Job) -> np.ndarray:
    """Run the job and read its image back as float RGB pixels, checking the size."""
    path = backend.collect(job, progress=noop_progress, stop=threading.Event())
    assert path == Path(job.output)
    with Image.open(path) as im:
        assert im.size == (job.width, job.height)
        return np.asarray(im.convert("RGB"), dtype=np.float32)


def pixels(im: Image.Image) -> np.ndarray:
    """An image as float RGB pixels."""
    return np.asarray(im.convert("RGB"), dtype=np.float32)


# --- storyboard -------------------------------------------------------------


def test_storyboard_is_byte_identical_for_the_same_job(tmp_path: Path) -> None:
    """The same job gives the same PNG bytes, from any backend instance, at any path."""
    job = image_job(tmp_path / "a", segment=2, index=1)
    first = StoryboardBackend().collect(job, progress=noop_progress, stop=threading.Event())
    again = job.model_copy(update={"output": str(tmp_path / "b" / "again.png")})
    second = StoryboardBackend().collect(again, progress=noop_progress, stop=threading.Event())
    assert first.read_bytes() == second.read_bytes()
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no temp file left


@pytest.mark.parametrize("size", [(832, 480), (480, 832), (417, 241), (64, 64)])
def test_storyboard_has_the_job_size(tmp_path: Path, size: tuple[int, int]) -> None:
    """Landscape, portrait, odd and tiny sizes all come out exactly as asked."""
    pixels = collect(StoryboardBackend(), image_job(tmp_path, size=size))
    assert pixels.shape == (size[1], size[0], 3)


@pytest.mark.parametrize(("mood", "energy"), [("calm", 0.0), ("steady", 0.5), ("euphoric", 1.0)])
def test_consecutive_segments_differ_strongly_for_any_candidates(mood: str, energy: float) -> None:
    """Any candidate of a segment differs from any of the next by ≥ 30/255 mean, even in the same mood."""
    frames = {(s, c): pixels(render_storyboard(image_job(Path("out"), s, c, mood=mood, energy=energy)))
              for s in range(4) for c in range(3)}
    for s in range(3):
        for a in range(3):
            for b in range(3):
                assert np.abs(frames[s, a] - frames[s + 1, b]).mean() >= 30, (s, a, b)


def test_candidates_of_one_segment_differ_clearly() -> None:
    """A person choosing between candidates sees different pictures, not one picture twice."""
    frames = [pixels(render_storyboard(image_job(Path("out"), 1, c, mood="calm", energy=0.1)))
              for c in range(3)]
    for a in range(3):
        for b in range(a + 1, 3):
            assert np.abs(frames[a] - frames[b]).mean() >= 20


def test_the_label_shows_what_the_segment_is() -> None:
    """The label is drawn where it says: near-white text on a dark panel, small beside the frame."""
    frame, box = draw_storyboard(image_job(Path("out"), 3, 1))
    assert box is not None
    panel = pixels(frame)[box.top:box.bottom, box.left:box.right]
    assert (panel.min(axis=2) > 200).sum() > 300  # white glyph pixels
    assert (panel.max(axis=2) < 90).sum() > 0.4 * panel.shape[0] * panel.shape[1]  # the dark panel
    assert box.width * box.height < 0.06 * W * H  # smaller than a sixteenth of the frame


@pytest.mark.parametrize("prompt", [
    "शिव तांडव नृत्य, कैलाश पर्वत " * 12,
    "",
    "line\nbreaks\tand\x00control\x1bcharacters",
    "https://example.com/" + "x" * 400,
    "word " * 500,
])
def test_any_prompt_renders(prompt: str) -> None:
    """Devanagari, empty, control characters, unbreakable and huge prompts all render."""
    assert render_storyboard(image_job(Path("out"), prompt=prompt)).size == (W, H)


def test_a_missing_detail_names_the_key() -> None:
    """A job without the segment's details is our bug, reported with the key that is missing."""
    job = image_job(Path("out")).model_copy(update={"detail": {"start": 0.0, "end": 5.0}})
    with pytest.raises(ValueError, match="'energy'"):
        render_storyboard(job)


@pytest.mark.parametrize(("seconds", "text"), [
    (0.0, "00:00.00"), (5.0625, "00:05.06"), (10.125, "00:10.12"), (65.5, "01:05.50"),
    (59.999, "01:00.00"), (1199.99, "19:59.99"), (-0.001, "00:00.00"),
])
def test_format_time(seconds: float, text: str) -> None:
    """Times read mm:ss.cc and round without ever showing 60 seconds."""
    assert format_time(seconds) == text


def test_wrap_fits_width_and_marks_overflow() -> None:
    """Wrapped lines fit the width, a long word is split, and cut-off text ends in an ellipsis."""
    font = ImageFont.load_default(size=16)
    lines = wrap("a " + "y" * 200 + " tail words here " * 20, font, 200, 4)
    assert len(lines) == 4
    assert all(font.getlength(line) <= 200 for line in lines)
    assert lines[1].startswith("yyy") and lines[-1].endswith("…")
    assert wrap("short", font, 200, 3) == ["short"]


# --- folder -----------------------------------------------------------------


def photo(path: Path, size: tuple[int, int], colour: tuple[int, int, int] = (20, 120, 20),
          *, marker: bool = True, orientation: int | None = None) -> Path:
    """A JPEG of one colour with a red square at its centre, optionally with an EXIF orientation."""
    im = Image.new("RGB", size, colour)
    if marker:
        w, h = size
        side = min(w, h) // 8
        im.paste(RED, (w // 2 - side, h // 2 - side, w // 2 + side, h // 2 + side))
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    im.save(path, "JPEG", exif=exif.tobytes(), quality=95)
    return path


def near(pixel: np.ndarray, colour: tuple[int, int, int], tolerance: float = 40) -> bool:
    """Whether a pixel is within ``tolerance`` of ``colour`` in every channel."""
    return bool(np.all(np.abs(pixel - np.asarray(colour)) <= tolerance))


def test_portrait_and_landscape_photos_are_fitted_and_centre_cropped(tmp_path: Path) -> None:
    """Both come out exactly width×height, covering the frame, with their centre marker kept."""
    folder = tmp_path / "photos"
    folder.mkdir()
    photo(folder / "1 portrait.jpg", (900, 1600))
    photo(folder / "2 landscape.jpg", (2400, 800))
    photo(folder / "3 small.jpg", (200, 100))  # smaller than the frame: scaled up
    backend = FolderBackend(folder)
    for segment in range(3):
        frame = collect(backend, image_job(tmp_path / "out", segment, segments=3))
        assert near(frame[H // 2, W // 2], RED)
        assert near(frame[2, 2], (20, 120, 20))  # the photo fills the corners: no bars


def test_exif_orientation_is_honoured(tmp_path: Path) -> None:
    """A photo stored sideways with Orientation=6 is turned upright before fitting."""
    folder = tmp_path / "photos"
    folder.mkdir()
    stored = Image.new("RGB", (1600, 900), (0, 0, 255))
    stored.paste((255, 255, 0), (0, 0, 800, 900))  # stored left half yellow
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90° clockwise: the stored left half becomes the top
    stored.save(folder / "sideways.jpg", "JPEG", exif=exif.tobytes(), quality=95)
    frame = collect(FolderBackend(folder), image_job(tmp_path / "out"))
    assert near(frame[5, W // 2], (255, 255, 0))
    assert near(frame[H - 5, W // 2], (0, 0, 255))


def test_photos_go_to_segments_in_natural_order_then_wrap(tmp_path: Path) -> None:
    """img2 before img10; segment i gets photo i; candidates take later passes; dotfiles are skipped."""
    folder = tmp_path / "My Song"
    folder.mkdir()
    colours = {"img1.JPG": (200, 0, 0), "img2.jpeg": (0, 200, 0), "IMG10.png": (0, 0, 200),
               "img11.webp": (200, 200, 0)}
    for name, colour in colours.items():
        Image.new("RGB", (320, 200), colour).save(folder / name)
    Image.new("RGB", (320, 200), (255, 255, 255)).save(folder / ".hidden.jpg", "JPEG")
    (folder / "notes.txt").write_text("not a photo", encoding="utf-8")
    backend = FolderBackend(folder)
    assert [p.name for p in backend.photos()] == list(colours)
    order = list(colours.values())
    size = (160, 100)
    cases = [(0, 0, 1, 0), (1, 0, 1, 1), (2, 0, 1, 2), (0, 1, 1, 3), (1, 1, 1, 0), (0, 0, 2, 3), (2, 0, 2, 1)]
    for segment, index, round_, expected in cases:
        # Three segments, one candidate per round: round 2 takes the second pass.
        job = image_job(tmp_path / "out", segment, index, size=size, segments=3, candidates=1, round=round_)
        frame = collect(backend, job)
        assert near(frame[50, 80], order[expected], 10), (segment, index, round_)


def test_transparent_and_palette_photos_become_rgb(tmp_path: Path) -> None:
    """A PNG with alpha is flattened onto black; palette and greyscale images are converted."""
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.new("RGBA", (320, 200), (255, 0, 0, 0)).save(folder / "a.png")
    Image.new("RGB", (320, 200), (0, 90, 200)).convert("P").save(folder / "b.png")
    Image.new("L", (320, 200), 128).save(folder / "c.tif")
    backend = FolderBackend(folder)
    frames = [collect(backend, image_job(tmp_path / "out", s, size=(160, 100), segments=3)) for s in range(3)]
    assert near(frames[0][50, 80], (0, 0, 0), 2)
    assert near(frames[1][50, 80], (0, 90, 200), 12)
    assert near(frames[2][50, 80], (128, 128, 128), 2)


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_an_unreadable_photo_names_the_file_and_the_fix(tmp_path: Path, damage: str) -> None:
    """A truncated or garbage JPEG is a PermanentError naming the file, the folder and the fix."""
    folder = tmp_path / "photos"
    folder.mkdir()
    whole = photo(tmp_path / "whole.jpg", (800, 600)).read_bytes()
    data = whole[: len(whole) // 3] if damage == "truncated" else b"\x89 not an image at all" * 50
    (folder / "IMG_0042.jpg").write_bytes(data)
    out = tmp_path / "out"
    with pytest.raises(PermanentError) as info:
        collect(FolderBackend(folder), image_job(out))
    assert f"photo IMG_0042.jpg in {folder} cannot be read" in info.value.reason
    assert "Replace or remove IMG_0042.jpg" in info.value.hint
    assert f"tandava retry {RUN_PLACEHOLDER}" in info.value.hint
    assert not out.exists() or list(out.iterdir()) == []  # nothing half-written


def test_a_missing_or_empty_folder_says_where_photos_go(tmp_path: Path) -> None:
    """No photos is a PermanentError naming the folder and where photos are looked for."""
    with pytest.raises(PermanentError, match="does not exist") as missing:
        collect(FolderBackend(tmp_path / "nowhere"), image_job(tmp_path))
    assert str(tmp_path / "nowhere") in missing.value.reason
    assert "images.folder" in missing.value.hint and "inbox" in missing.value.hint
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / ".DS_Store").write_bytes(b"\0")
    with pytest.raises(PermanentError, match="holds no photos"):
        collect(FolderBackend(empty), image_job(tmp_path))


def test_photo_index_covers_every_photo_before_repeating() -> None:
    """With as many photos as segments × passes, every (segment, pass) gets its own photo."""
    segments, passes = 5, 3
    picks = {photo_index(s, p, segments, segments * passes) for s in range(segments) for p in range(passes)}
    assert picks == set(range(segments * passes))
    assert photo_index(7, 0, 10, 3) == 1  # fewer photos than segments: wraps around


@given(st.lists(st.text(), max_size=20))
def test_natural_key_sorts_any_names(names: list[str]) -> None:
    """Any file names (digits of any script included) sort without error."""
    ordered = sorted(names, key=natural_key)
    assert sorted(ordered, key=natural_key) == ordered


def test_natural_key_orders_numbers_by_value() -> None:
    """img2 sorts before img10, case aside."""
    names = ["IMG10.jpg", "img2.jpg", "img1.JPG", "img02b.jpg", "a.jpg"]
    assert sorted(names, key=natural_key) == ["a.jpg", "img1.JPG", "img2.jpg", "img02b.jpg", "IMG10.jpg"]


# --- factory ----------------------------------------------------------------


def test_factory_picks_the_configured_backend(settings: Settings, tmp_path: Path) -> None:
    """storyboard by default; folder from images.folder, else the song's name beside it in the inbox."""
    inbox = tmp_path / "inbox"
    assert isinstance(make_image_backend(settings, song_name="Song.mp3", inbox=inbox), StoryboardBackend)
    settings.images = ImagesConfig(backend="folder")
    beside = make_image_backend(settings, song_name="Om Namah.Shivaya.flac", inbox=inbox)
    assert isinstance(beside, FolderBackend) and beside.folder == inbox / "Om Namah.Shivaya"
    settings.images = ImagesConfig(backend="folder", folder=tmp_path / "pics")
    chosen = make_image_backend(settings, song_name="Song.mp3", inbox=inbox)
    assert isinstance(chosen, FolderBackend) and chosen.folder == tmp_path / "pics"
    assert isinstance(chosen, ImageBackend) and chosen.resource == "cpu" and not chosen.can_resume(image_job(tmp_path))
