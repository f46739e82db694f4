"""The real-music beat corpus: which recordings, where Debian puts them, how to hear them.

How this works: every song is a recording that a Debian package installs
(free music from games). ``install()`` runs ``apt-get`` for the packages whose
files are missing, so it is quick and silent when all are present. The Frets
on Fire songs ship as stems (``song.ogg`` plus ``guitar.ogg``); ``mixdown()``
sums them into one mono WAV in a cache folder beside this file, the way a
listener hears the song, and the other songs are used as they are. The
reference beats (``tests/data/beats/<id>.json``) are made from these files by
``bench/make_beat_references.py``; the audio itself is never committed.

Used by ``bench/bench_beats.py`` and ``tests/test_real_beats.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REFERENCES = ROOT / "tests" / "data" / "beats"
# Mixdowns are made once; TANDAVA_CORPUS_CACHE puts them outside the checkout (CI's clone is new each run).
CACHE = Path(os.environ.get("TANDAVA_CORPUS_CACHE") or Path(__file__).resolve().parent / ".corpus-cache")
# madmom reads WAV itself only at its models' rate (it resamples through ffmpeg).
SR = 44100
_FOF = Path("/usr/share/games/fretsonfire/data/songs")


@dataclass(frozen=True)
class Song:
    """One recording: an id, the package that installs it, its stems, and its chart if any."""

    id: str
    package: str
    stems: tuple[Path, ...]
    chart: Path | None = None

    def present(self) -> bool:
        """Whether every stem is on disk."""
        return all(p.is_file() for p in self.stems)


def _fof(package: str, folder: str) -> Song:
    base = _FOF / folder
    song_id = "fof-" + base.name.lower().replace(" ", "-")
    return Song(song_id, package, (base / "song.ogg", base / "guitar.ogg"), base / "notes.mid")


def _one(song_id: str, package: str, path: str) -> Song:
    return Song(song_id, package, (Path(path),))


SONGS: tuple[Song, ...] = (
    _fof("fretsonfire-songs-muldjord", "muldjord/armygeddon"),
    _fof("fretsonfire-songs-muldjord", "muldjord/chaos_god"),
    _fof("fretsonfire-songs-muldjord", "muldjord/internal_degeneration"),
    _fof("fretsonfire-songs-muldjord", "muldjord/mutilated_mime"),
    _fof("fretsonfire-songs-sectoid", "sectoid/Escape from chaosland"),
    _fof("fretsonfire-songs-sectoid", "sectoid/Feelings"),
    _fof("fretsonfire-songs-sectoid", "sectoid/Metal madness"),
    _fof("fretsonfire-songs-sectoid", "sectoid/War of freedom"),
    _one("asc-machine-wars", "asc-music", "/usr/share/games/asc/music/machine_wars.mp3"),
    _one("asc-time-to-strike", "asc-music", "/usr/share/games/asc/music/time_to_strike.mp3"),
    _one("asc-frontiers", "asc-music", "/usr/share/games/asc/music/frontiers.mp3"),
    _one("hr3-hell", "hyperrogue-music", "/usr/share/hyperrogue/music/hr3-hell.ogg"),
    _one("hr3-rlyeh", "hyperrogue-music", "/usr/share/hyperrogue/music/hr3-rlyeh.ogg"),
    _one("hr3-graveyard", "hyperrogue-music", "/usr/share/hyperrogue/music/hr3-graveyard.ogg"),
    _one("drascula-track2", "drascula-music", "/usr/share/scummvm/drascula/audio/track2.ogg"),
    _one("drascula-track1", "drascula-music", "/usr/share/scummvm/drascula/audio/track1.ogg"),
)
PACKAGES = tuple(sorted({s.package for s in SONGS}))
INSTALL_COMMAND = "apt-get update && apt-get install -y --no-install-recommends " + " ".join(
    PACKAGES
)


def install() -> None:
    """Install the packages whose songs are missing (root, Debian); no-op when all are present."""
    missing = sorted({s.package for s in SONGS if not s.present()})
    if not missing:
        return
    if shutil.which("apt-get") is None:
        raise SystemExit(f"apt-get not found: install {' '.join(missing)} by hand")
    subprocess.run(["apt-get", "update", "-q"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing], check=True)


def mixdown(song: Song) -> Path:
    """A mono WAV of the whole recording (stems summed) at SR Hz, cached beside this file."""
    out = CACHE / f"{song.id}.wav"
    if out.is_file():
        return out
    import soundfile as sf

    from daemon.music.audio import load_mono

    parts = [load_mono(p, SR) for p in song.stems]
    n = max(len(p) for p in parts)
    y = np.zeros(n, dtype=np.float32)
    for p in parts:
        y[: len(p)] += p
    y *= 0.9 / max(1e-9, float(np.max(np.abs(y))))
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.wav")
    sf.write(str(tmp), y, SR)
    tmp.replace(out)
    return out


def reference(song: Song) -> dict[str, object] | None:
    """The committed reference for ``song`` (madmom beats/downbeats, chart beats), if made."""
    path = REFERENCES / f"{song.id}.json"
    if not path.is_file():
        return None
    data: dict[str, object] = json.loads(path.read_text(encoding="utf-8"))
    return data
