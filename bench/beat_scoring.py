"""How well an analysis' beats agree with a reference, in the columns the beat bench prints.

How this works: ``mir_eval`` does the scoring (it trims the first 5 s, as the
MIREX beat task does). Per song:

* ``F``: beat F-measure at a 70 ms window against madmom; ``Fch`` the same
  against the song's chart, where it has one (a chart is the charter's
  metrical level, often twice madmom's, so both are shown);
* ``CMLt``/``AMLt``: continuity at the reference's level / at any of the
  allowed metrical levels (double, half, off-beat);
* ``tempo``: ours, the reference's (median beat interval), and their relation
  (ok, 2:1, 1:2, 3:2, 2:3, 4:3, 3:4 or ``?``); ``ok`` against either madmom
  or the chart counts as the right level;
* ``dbF``: downbeat F-measure at 70 ms (against madmom or the chart, whichever
  agrees more, when both are at our level: they may start the bar on
  different beats); ``bpb`` our beats per bar / the reference's;
* ``cuts``: the share of planned cuts within one video frame (1/24 s) of a
  reference beat: madmom's or the chart's, whichever holds more of the cuts
  (as for the downbeats: the two may sit 30-50 ms apart, a chart's
  calibration, which is more than a frame);
* ``conf``: the analysis' confidence, ``LOW`` when it flags itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import mir_eval
import numpy as np

FRAME = 1.0 / 24.0
_RELATIONS = {"ok": 1.0, "2:1": 2.0, "1:2": 0.5, "3:2": 1.5, "2:3": 2 / 3, "4:3": 4 / 3, "3:4": 0.75}


@dataclass
class Score:
    """One song's scores (see the module docstring for the columns)."""

    id: str
    f: float | None
    f_chart: float | None
    cmlt: float
    amlt: float
    tempo: float
    ref_tempo: float
    relation: str
    downbeat_f: float
    bpb: str
    cuts: float
    confidence: float
    low: bool

    @property
    def best_f(self) -> float:
        """Beat F against whichever reference (madmom, chart) agrees more."""
        return max(self.f or 0.0, self.f_chart or 0.0)

    @property
    def right_level(self) -> bool:
        """The tempo level matches the reference (or the song flags itself as unsure)."""
        return self.relation == "ok" or self.low

    @staticmethod
    def header() -> str:
        """The table's header line."""
        return (
            f"{'song':<28}{'F':>6}{'Fch':>6}{'CMLt':>6}{'AMLt':>6}{'tempo':>8}{'ref':>8}"
            f"{'rel':>5}{'dbF':>6}{'bpb':>6}{'cuts':>6}{'conf':>6}"
        )

    def line(self) -> str:
        """This song as a table row."""
        fch = f"{self.f_chart:6.3f}" if self.f_chart is not None else f"{'-':>6}"
        fmm = f"{self.f:6.3f}" if self.f is not None else f"{'-':>6}"
        conf = "LOW" if self.low else f"{self.confidence:.2f}"
        return (
            f"{self.id:<28}{fmm}{fch}{self.cmlt:6.3f}{self.amlt:6.3f}{self.tempo:8.1f}"
            f"{self.ref_tempo:8.1f}{self.relation:>5}{self.downbeat_f:6.3f}{self.bpb:>6}"
            f"{self.cuts:6.2f}{conf:>6}"
        )

    @staticmethod
    def summary(name: str, rows: Sequence[Score], pick: Callable[[list[float]], float]) -> str:
        """A median or worst row over ``rows``."""
        def col(values: list[float]) -> str:
            return f"{pick(values):6.3f}"

        charts = [r.f_chart for r in rows if r.f_chart is not None]
        mms = [r.f for r in rows if r.f is not None]
        right = sum(r.right_level for r in rows)
        return (
            f"{name:<28}{col(mms) if mms else '     -'}{col(charts) if charts else '     -'}"
            f"{col([r.cmlt for r in rows])}{col([r.amlt for r in rows])}{'':>16}"
            f"{right:>3}/{len(rows):<1}{col([r.downbeat_f for r in rows])}{'':>6}"
            f"{pick([r.cuts for r in rows]):6.2f}   best F {pick([r.best_f for r in rows]):.3f}"
        )


def relation(ours: float, reference: float) -> str:
    """How our tempo relates to the reference's: a named ratio within 4%, else ``?``."""
    ratio = ours / reference
    for name, r in _RELATIONS.items():
        if abs(ratio / r - 1.0) < 0.04:
            return name
    return "?"


def cut_share(cuts: Sequence[float], beats: np.ndarray) -> float:
    """Share of ``cuts`` within one video frame of a reference beat (1.0 when there are none)."""
    if not len(cuts) or not len(beats):
        return 1.0
    near = [np.min(np.abs(beats - c)) <= FRAME for c in cuts]
    return float(np.mean(near))


def best_beat_f(beats: Sequence[float], ref: dict) -> tuple[float, str]:
    """(beat F against madmom or the chart, whichever agrees more; tempo relation to it).

    For a tracker that gives beats only (the essentia yardstick in
    ``bench_beats.py --essentia``), scored as ``Score.best_f`` is.
    """
    est = mir_eval.beat.trim_beats(np.asarray(beats, dtype=float))
    tempo = 60.0 / float(np.median(np.diff(beats))) if len(beats) > 1 else 0.0
    scored = []
    for key in ("madmom", "chart"):
        if key in ref:
            ref_beats = np.asarray(ref[key]["beats"])
            f = mir_eval.beat.f_measure(mir_eval.beat.trim_beats(ref_beats), est)
            rel = relation(tempo, 60.0 / float(np.median(np.diff(ref_beats)))) if tempo else "?"
            scored.append((f, rel))
    best, rel = max(scored)
    # As in ``score``: "ok" against either reference is the right level.
    return best, "ok" if any(r == "ok" for _, r in scored) else rel


def score(song_id: str, analysis: object, ref: dict) -> Score:
    """Score an ``Analysis`` against a reference dict (``tests/data/beats`` format)."""
    from daemon.music.analysis import Analysis
    from daemon.music.plan import plan_segments

    assert isinstance(analysis, Analysis)
    est = mir_eval.beat.trim_beats(np.asarray(analysis.beats))
    est_db = mir_eval.beat.trim_beats(np.asarray(analysis.downbeats))
    # The primary reference is madmom's; a song with only a chart is scored on the chart.
    mm = ref.get("madmom") or ref["chart"]
    ref_beats = np.asarray(mm["beats"])
    trimmed = mir_eval.beat.trim_beats(ref_beats)
    f: float | None = mir_eval.beat.f_measure(trimmed, est)
    _, cmlt, _, amlt = mir_eval.beat.continuity(trimmed, est)
    ref_tempo = 60.0 / float(np.median(np.diff(ref_beats)))
    rel = relation(analysis.tempo, ref_tempo)
    f_chart = None
    downbeats = np.asarray(mm["downbeats"])
    db_source = mm
    ref_bpb = int(mm["beats_per_bar"])
    chart = ref.get("chart")
    if chart:
        chart_beats = np.asarray(chart["beats"])
        f_chart = mir_eval.beat.f_measure(mir_eval.beat.trim_beats(chart_beats), est)
        if "madmom" not in ref:
            f = None
        chart_tempo = 60.0 / float(np.median(np.diff(chart_beats)))
        if rel != "ok" and relation(analysis.tempo, chart_tempo) == "ok":
            rel, ref_tempo = "ok", chart_tempo
        if f is None or f_chart > f:
            # Our level is the chart's: its bars and beats are the fairer reference.
            downbeats, ref_bpb = np.asarray(chart["downbeats"]), int(chart["beats_per_bar"])
            db_source = chart
            _, cmlt, _, amlt = mir_eval.beat.continuity(mir_eval.beat.trim_beats(chart_beats), est)
    downbeat_f = mir_eval.beat.f_measure(mir_eval.beat.trim_beats(downbeats), est_db)
    if chart and "madmom" in ref:
        # madmom and the charter may start the bar on different beats (or at
        # different levels): as for the beats, the reference that agrees more counts.
        other = mm if db_source is chart else chart
        if relation(analysis.tempo, 60.0 / float(np.median(np.diff(other["beats"])))) == "ok":
            other_f = mir_eval.beat.f_measure(
                mir_eval.beat.trim_beats(np.asarray(other["downbeats"])), est_db
            )
            downbeat_f = max(downbeat_f, other_f)
    cuts = [s.start for s in plan_segments(analysis)[1:]]
    cut_shares = [cut_share(cuts, np.asarray(r["beats"])) for r in (ref.get("madmom"), chart) if r]
    return Score(
        id=song_id,
        f=f,
        f_chart=f_chart,
        cmlt=cmlt,
        amlt=amlt,
        tempo=analysis.tempo,
        ref_tempo=ref_tempo,
        relation=rel,
        downbeat_f=downbeat_f,
        bpb=f"{analysis.beats_per_bar}/{ref_bpb}",
        cuts=max(cut_shares),
        confidence=float(getattr(analysis, "confidence", 1.0)),
        low=bool(getattr(analysis, "low_confidence", None)),
    )


CLICKS = {
    # name: (bpm, bpm at the end, beats per bar, hats per beat)
    "click-90-eighths": (90.0, None, 4, 2),
    "click-120-eighths": (120.0, None, 4, 2),
    "click-ramp-100-130": (100.0, 130.0, 4, 1),
    "click-waltz-3/4-100": (100.0, None, 3, 1),
    "click-waltz-3/4-150": (150.0, None, 3, 1),
    "click-128": (128.0, None, 4, 1),
    "click-140-eighths": (140.0, None, 4, 2),
}


def click_tracks(seconds: float = 60.0, *, previous: bool = False) -> list[Score]:
    """Synthesized click tracks scored against their exact beats (``previous``: the old tracker)."""
    from daemon.music.analysis import Analysis, analyze_signal
    from daemon.music.synth import synth_song

    analyse = analyze_signal
    if previous:
        from bench_analysis import previous_analysis

        old = previous_analysis()

        def analyse(y: np.ndarray, sr: int) -> Analysis:  # type: ignore[misc]
            return Analysis.model_validate(old.analyze_signal(y, sr).model_dump())

    rows = []
    for seed, (name, (bpm, end, bpb, hats)) in enumerate(CLICKS.items()):
        y, truth = synth_song(
            seconds, bpm, bpm_end=end, beats_per_bar=bpb, hats_per_beat=hats, seed=seed
        )
        analysis = analyse(y, truth.sample_rate)
        ref = {
            "madmom": {
                "beats": truth.beats,
                "downbeats": truth.downbeats,
                "beats_per_bar": truth.beats_per_bar,
            }
        }
        rows.append(score(name, analysis, ref))
    return rows
