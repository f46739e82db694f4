"""Pictures at the size they are shown: candidate thumbnails for the panel, made once and cached.

How this works: a candidate from ComfyUI or Gemini is 1–3 MB at 832×480 or
more; a gallery of 47 segments × 4 candidates would be hundreds of MB if the
panel sent them whole. ``thumbnail`` scales one down to a width the pages ask
for (only ``WIDTHS``, so a request cannot make us render arbitrary sizes),
saves it as a JPEG in ``<state_root>/.cache/thumbs/`` and serves that file
from then on. The cache key holds the source's path, size and mtime, so a
regenerated candidate or a run that moved to another state gets a fresh
picture; the run folders themselves are never written by the panel. The cache
is bounded: past ``MAX_FILES`` the oldest half goes.
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path

from PIL import Image

from daemon.runs import fsutil

# The widths the pages use: grid, review, and their double for high-density screens.
WIDTHS = frozenset({320, 640, 1280})
# JPEG quality: at display size, 82 is indistinguishable from the PNG and ~10× smaller.
QUALITY = 82
MAX_FILES = 4000
CACHE_DIR = Path(".cache") / "thumbs"


def cache_dir(state_root: Path) -> Path:
    """Where the thumbnails of one state root live."""
    return state_root / CACHE_DIR


def thumbnail(source: Path, folder: Path, width: int) -> Path:
    """``source`` scaled to ``width`` (aspect kept; never enlarged), as a cached JPEG."""
    if width not in WIDTHS:
        raise ValueError(f"thumbnails are made at {sorted(WIDTHS)} pixels wide, not {width}")
    stat = source.stat()
    key = hashlib.sha1(f"{source.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{width}".encode()).hexdigest()
    target = folder / f"{key[:20]}.jpg"
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    with Image.open(source) as image:
        picture = image.convert("RGB")
        if picture.width > width:
            height = max(1, round(picture.height * width / picture.width))
            picture = picture.resize((width, height), Image.Resampling.LANCZOS)
        with fsutil.replacing(target) as out:
            picture.save(out, format="JPEG", quality=QUALITY, optimize=True, progressive=True)
    _bound(folder)
    return target


def _bound(folder: Path) -> None:
    """Drop the oldest half of the cache once it holds more than ``MAX_FILES``."""
    files = list(folder.glob("*.jpg"))
    if len(files) <= MAX_FILES:
        return
    files.sort(key=lambda p: p.stat().st_mtime)
    for old in files[: len(files) // 2]:
        with contextlib.suppress(OSError):
            old.unlink()
