"""Beats from essentia's multi-feature tracker, for the beat bench's comparison column.

Runs inside the separate virtual environment that ``bench/bench_beats.py
--essentia`` makes (``bench/.essentia-venv``); it never imports the daemon.
essentia is licensed AGPL-3.0, so like madmom it is a development yardstick
only, never a dependency, and nothing of it is committed.

Why essentia: the issue that set the corpus targets measured it on a held-out
set (median beat F 0.98 there) as the best signal-processing tracker, with no
trained model. ``BeatTrackerMultiFeature`` tracks five onset functions
(complex spectral difference, energy flux, mel flux, beat emphasis, infogain)
with Degara's probabilistic tracker and keeps the sequence the others agree
with most (Zapata et al., "Multi-feature beat tracking", 2014). Scoring it on
our own corpus with our own scorer tells how hard these songs are for a
tracker of that kind.

Input: a JSON list of ``{"id", "wav"}`` on stdin. Output: one JSON object on
stdout, ``{id: {"beats": [...], "seconds": time spent}}``.
"""

from __future__ import annotations

import json
import sys
import time


def main() -> None:
    import essentia.standard as es

    jobs = json.load(sys.stdin)
    out = {}
    for job in jobs:
        started = time.perf_counter()
        audio = es.MonoLoader(filename=job["wav"], sampleRate=44100)()
        beats, _confidence = es.BeatTrackerMultiFeature()(audio)
        out[job["id"]] = {
            "beats": [round(float(b), 4) for b in beats],
            "seconds": round(time.perf_counter() - started, 3),
        }
        print(f"essentia: {job['id']}", file=sys.stderr, flush=True)
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
