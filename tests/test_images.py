"""Image backends: storyboard frames and a person's own photos."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from daemon.backends import Job, noop_progress
from daemon.errors import PermanentError
from daemon.images import FolderBackend, StoryboardBackend, natural_key

W, H = 416, 240


def job(tmp_path: Path, segment: int = 0, index: int = 0, seed: int = 7, **detail: object) -> Job:
    base = {"start": segment * 5.0, "end": segment * 5.0 + 5.0, "mood": "intense", "energy": 0.8,
            "section": 0, "segments": 4, "candidates": 2}
    base.update(detail)  # type: ignore[arg-type]
    return Job(id=f"j{segment}-{index}", kind="image", backend="x", segment=segment, seed=seed, index=index,
               prompt="Nataraja dancing in a ring of fire, शिव तांडव", width=W, height=H,
               output=str(tmp_path / f"s{segment}_c{index}.png"), detail=base)  # type: ignore[arg-type]


def make(backend: FolderBackend | StoryboardBackend, j: Job) -> np.ndarray:
    path = backend.collect(j, progress=noop_progress, stop=threading.Event())
    with Image.open(path) as im:
        assert im.size == (W, H)
        return np.asarray(im.convert("RGB"), dtype=np.float32)


def test_storyboard_is_deterministic(tmp_path: Path) -> None:
    """The same job gives byte-identical images."""
    a = StoryboardBackend().collect(job(tmp_path), progress=noop_progress, stop=threading.Event()).read_bytes()
    b_job = job(tmp_path).model_copy(update={"output": str(tmp_path / "again.png")})
    b = StoryboardBackend().collect(b_job, progress=noop_progress, stop=threading.Event()).read_bytes()
    assert a == b


def test_storyboard_segments_look_clearly_different(tmp_path: Path) -> None:
    """Consecutive segments differ strongly, so a cut between them is visible in the video."""
    backend = StoryboardBackend()
    images = [make(backend, job(tmp_path, segment=s, seed=1000 + s, mood=m, energy=e))
              for s, (m, e) in enumerate([("calm", 0.2), ("calm", 0.25), ("intense", 0.9), ("intense", 0.9)])]
    # A Ken Burns move changes a frame by a few levels; a cut must stand far above that.
    for a, b in zip(images, images[1:], strict=False):
        assert np.abs(a - b).mean() > 15


def photo(path: Path, size: tuple[int, int], *, orientation: int | None = None, marker: bool = True) -> Path:
    """A JPEG with a red square at its centre and optional EXIF orientation."""
    im = Image.new("RGB", size, (20, 120, 20))
    if marker:
        w, h = size
        im.paste((230, 20, 20), (w // 2 - 20, h // 2 - 20, w // 2 + 20, h // 2 + 20))
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    im.save(path, "JPEG", exif=exif.tobytes(), quality=95)
    return path


def test_folder_photos_are_fitted_and_centre_cropped(tmp_path: Path) -> None:
    """Portrait and landscape photos come out at the video size with their centre kept."""
    folder = tmp_path / "My Song"
    folder.mkdir()
    photo(folder / "a.jpg", (1200, 1800))
    photo(folder / "b.jpg", (3000, 1000))
    backend = FolderBackend(folder)
    for segment in (0, 1):
        pixels = make(backend, job(tmp_path, segment=segment))
        centre = pixels[H // 2, W // 2]
        assert centre[0] > 180 and centre[1] < 80  # the red marker survived the crop


def test_exif_orientation_is_honoured(tmp_path: Path) -> None:
    """A photo stored sideways with EXIF orientation 6 is turned upright before fitting."""
    folder = tmp_path / "rot"
    folder.mkdir()
    im = Image.new("RGB", (400, 200), (0, 0, 255))
    im.paste((255, 255, 0), (0, 0, 200, 200))  # left half yellow as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90° clockwise: stored left becomes top
    im.save(folder / "p.jpg", "JPEG", exif=exif.tobytes(), quality=95)
    pixels = make(FolderBackend(folder), job(tmp_path))
    top, bottom = pixels[5, W // 2], pixels[H - 5, W // 2]
    assert top[0] > 180 and top[2] < 100  # yellow on top
    assert bottom[2] > 180 and bottom[0] < 100  # blue below


def test_photos_are_taken_in_natural_order(tmp_path: Path) -> None:
    """img2 comes before img10, whatever the case."""
    names = ["IMG10.jpg", "img2.jpg", "img1.JPG"]
    assert sorted(names, key=natural_key) == ["img1.JPG", "img2.jpg", "IMG10.jpg"]


def test_a_corrupt_photo_fails_naming_the_file(tmp_path: Path) -> None:
    """A truncated JPEG is a PermanentError that names the file and how to fix it."""
    folder = tmp_path / "bad"
    folder.mkdir()
    data = photo(tmp_path / "whole.jpg", (800, 600)).read_bytes()
    (folder / "IMG_0042.jpg").write_bytes(data[:200])
    with pytest.raises(PermanentError, match="IMG_0042.jpg") as info:
        make(FolderBackend(folder), job(tmp_path))
    assert "Replace or remove IMG_0042.jpg" in info.value.hint


def test_an_empty_or_missing_folder_says_where_photos_go(tmp_path: Path) -> None:
    """No photos is a clear error naming the folder that was searched."""
    with pytest.raises(PermanentError, match="does not exist"):
        make(FolderBackend(tmp_path / "nowhere"), job(tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(PermanentError, match="holds no photos"):
        make(FolderBackend(tmp_path / "empty"), job(tmp_path))
