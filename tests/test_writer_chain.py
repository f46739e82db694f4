"""The writer chain (daemon.writers.chain.write_plan), plan fitting (daemon.music.plan.fit_ideas), and the Analyze stage."""

from __future__ import annotations

import functools
import json
import math
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fakeollama import FakeOllama
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from daemon.app import run
from daemon.config import Settings
from daemon.errors import Unavailable
from daemon.host.report import show_lines
from daemon.music.analysis import Analysis, analyze_signal
from daemon.music.plan import CLIP_SECONDS, MOODS, Segment, fit_ideas, plan_segments
from daemon.music.synth import synth_song, write_song
from daemon.runs.states import State
from daemon.runs.store import RunStore
from daemon.writers.brief import Brief, PlanIdeas, RemoteWriter, SegmentIdea, WriterFailed
from daemon.writers.chain import ThemeWriter, load_theme, write_plan, writer_chain

THEME = load_theme("shiva")
FLOOR = 0.5 * CLIP_SECONDS  # the shortest piece the local planner makes from a longer span


@functools.cache
def analyses() -> tuple[Analysis, ...]:
    """Three synthesized songs (4/4 and 3/4, 93-140 BPM, one with busy hats), analysed once per module."""
    songs = [(30.0, 120.0, 4, 15.0, 1), (47.0, 93.0, 3, 20.0, 1), (75.0, 140.0, 4, 40.0, 2)]
    return tuple(analyze_signal(synth_song(d, bpm, beats_per_bar=bpb, section_change_at=at,
                                           hats_per_beat=hats)[0], 22050)
                 for d, bpm, bpb, at, hats in songs)


@functools.cache
def planned(which: int, count: int | None = None) -> tuple[list[Segment], list[Segment]]:
    """The local plan of analysis ``which`` and the ThemeWriter's prompts for it."""
    analysis = analyses()[which]
    local = plan_segments(analysis, count=count)
    return local, ThemeWriter(THEME).write(analysis, local, seed=3)


# -- fake remote writers ------------------------------------------------------------------


class Fails:
    """A remote writer that raises ``error`` at every proposal."""

    def __init__(self, name: str, error: Exception) -> None:
        self.name, self.error = name, error

    def propose(self, brief: Brief) -> PlanIdeas:
        raise self.error


class Proposes:
    """A remote writer that answers with ``make(brief)`` and keeps the briefs it got."""

    def __init__(self, name: str, make: Callable[[Brief], PlanIdeas]) -> None:
        self.name, self.make = name, make
        self.briefs: list[Brief] = []

    def propose(self, brief: Brief) -> PlanIdeas:
        self.briefs.append(brief)
        return self.make(brief)


def one_idea_per_segment(brief: Brief) -> PlanIdeas:
    """What a model that follows the brief answers: the local spans, its own words."""
    return PlanIdeas(segments=[SegmentIdea(index=s.index, start=s.start, end=s.end, mood="euphoric",
                                           visual_prompt=f"remote picture {s.index}",
                                           motion_prompt=f"remote motion {s.index}")
                               for s in brief.segments])


def factory(*writers: RemoteWriter) -> Callable[[str, Settings], RemoteWriter]:
    by_name = {w.name: w for w in writers}
    return lambda name, _settings: by_name[name]


# -- the chain ----------------------------------------------------------------------------


def test_chain_is_writer_then_fallbacks_then_theme(settings: Settings) -> None:
    """Writer first, fallbacks without repeats, theme last even when not listed, nothing after theme."""
    settings.analysis.writer = "gemini"
    settings.analysis.fallback = ["ollama", "gemini"]
    assert writer_chain(settings) == ["gemini", "ollama", "theme"]
    settings.analysis.fallback = []
    assert writer_chain(settings) == ["gemini", "theme"]
    settings.analysis.writer = "theme"
    settings.analysis.fallback = ["ollama"]
    assert writer_chain(settings) == ["theme"]


def test_falls_through_gemini_then_ollama_to_theme(settings: Settings) -> None:
    """Gemini out of quota, Ollama's model talking prose: the theme writes, and both reasons are recorded."""
    from daemon.writers.ollama import OllamaWriter

    analysis = analyses()[0]
    settings.analysis.writer = "gemini"
    settings.analysis.fallback = ["ollama"]
    gemini = Fails("gemini", WriterFailed("Gemini refused the request: quota exhausted (429)",
                                          "wait for the quota to reset"))
    with FakeOllama() as server, capture_logs() as logs:
        settings.ollama.url = server.url
        server.script("invalid", "invalid", "invalid")
        segments, record = write_plan(settings, analysis, Path("song.wav"), 3,
                                      make_remote=factory(gemini, OllamaWriter(settings.ollama)))
    assert record.writer == "theme"
    assert record.fell_through == [
        {"writer": "gemini", "reason": "Gemini refused the request: quota exhausted (429)",
         "hint": "wait for the quota to reset"},
        {"writer": "ollama", "reason": record.fell_through[1]["reason"],
         "hint": record.fell_through[1]["hint"]}]
    assert "no valid plan in 3 attempts" in record.fell_through[1]["reason"]
    assert segments == planned(0)[1]
    fell = [e for e in logs if e["event"] == "writer.fell_through"]
    assert [(e["writer"], e["log_level"]) for e in fell] == [("gemini", "warning"), ("ollama", "warning")]


def test_gemini_fails_and_ollama_writes(settings: Settings) -> None:
    """When the first writer fails, the next one's ideas make the plan, fitted and filled from the theme."""
    analysis = analyses()[0]
    settings.analysis.writer = "gemini"
    settings.analysis.fallback = ["ollama", "theme"]
    ollama = Proposes("ollama", one_idea_per_segment)
    segments, record = write_plan(settings, analysis, Path("song.wav"), 3, make_remote=factory(
        Fails("gemini", Unavailable("Google is down")), ollama))
    assert (record.writer, [f["writer"] for f in record.fell_through]) == ("ollama", ["gemini"])
    local, _ = planned(0)
    assert [(s.start, s.end) for s in segments] == [(s.start, s.end) for s in local]
    assert all(s.visual_prompt.startswith(f"remote picture {s.index}, ") for s in segments)
    assert all(s.negative_prompt == THEME.negative and s.mood == "euphoric" for s in segments)
    (brief,) = ollama.briefs
    assert brief.segments == local and brief.theme_name == "shiva" and brief.seed == 3


def test_a_remote_writer_bug_still_falls_through(settings: Settings) -> None:
    """An error that is not ours (a bug, an SDK surprise) is recorded and the theme writes."""
    settings.analysis.writer = "ollama"
    analysis = analyses()[0]
    segments, record = write_plan(settings, analysis, Path("s.wav"), 3,
                                  make_remote=factory(Fails("ollama", KeyError("message"))))
    assert record.writer == "theme" and "KeyError" in record.fell_through[0]["reason"]
    assert segments[-1].end == analysis.duration


# -- plan fitting -------------------------------------------------------------------------


def test_off_grid_times_snap_back_to_the_local_beats() -> None:
    """Times 0.2 s off at 120 BPM (beats 0.5 s apart) land on the same beats as the local cuts."""
    analysis = analyses()[0]
    local, fill = planned(0)
    ideas = PlanIdeas(segments=[SegmentIdea(index=s.index, start=s.start + 0.2, end=s.end - 0.2,
                                            visual_prompt="v", motion_prompt="m") for s in local])
    fitted = fit_ideas(analysis, local, ideas, theme_fill=fill)
    assert [(s.start, s.end) for s in fitted] == [(s.start, s.end) for s in local]


def test_ideas_without_times_match_by_index_and_gaps_take_the_theme() -> None:
    """Untimed ideas sit on their local segment; a segment with no idea, or an empty prompt, gets the theme's."""
    analysis = analyses()[0]
    local, fill = planned(0)
    ideas = PlanIdeas.model_construct(segments=[
        SegmentIdea(index=0, visual_prompt="first", motion_prompt="still", mood="wistful"),
        SegmentIdea.model_construct(index=1, visual_prompt=" ", motion_prompt="drift", mood=None),
    ])
    fitted = fit_ideas(analysis, local, ideas, theme_fill=fill, enhancements=["8k", "cinematic"])
    assert [(s.start, s.end) for s in fitted] == [(s.start, s.end) for s in local]
    assert fitted[0].visual_prompt == "first, 8k, cinematic" and fitted[0].mood == local[0].mood
    assert fitted[1].visual_prompt.startswith(fill[1].visual_prompt) and fitted[1].motion_prompt == "drift"
    assert fitted[2].visual_prompt.startswith(fill[2].visual_prompt)
    assert fitted[2].motion_prompt == fill[2].motion_prompt


def test_a_few_timed_ideas_keep_the_local_cuts_elsewhere() -> None:
    """Two ideas for the first 8 s set their cuts there; the rest of the song keeps the local cuts."""
    analysis = analyses()[2]
    local, fill = planned(2)
    ideas = PlanIdeas(segments=[SegmentIdea(index=0, start=0.0, end=3.9, visual_prompt="a", motion_prompt="a"),
                                SegmentIdea(index=1, start=3.9, end=8.1, visual_prompt="b", motion_prompt="b")])
    fitted = fit_ideas(analysis, local, ideas, theme_fill=fill)
    assert [s.visual_prompt for s in fitted[:2]] == ["a", "b"]
    later = [s.start for s in local if s.start > 8.1 + FLOOR]
    assert set(later) <= {s.start for s in fitted}


def test_cuts_closer_than_half_a_clip_are_dropped() -> None:
    """Ideas that cut 1 s apart leave one cut, and no piece shorter than half a clip."""
    analysis = analyses()[0]
    local, fill = planned(0)
    ideas = PlanIdeas(segments=[
        SegmentIdea(index=0, start=0, end=10.0, visual_prompt="a", motion_prompt="a"),
        SegmentIdea(index=1, start=10.0, end=11.0, visual_prompt="b", motion_prompt="b"),
        SegmentIdea(index=2, start=11.0, end=analysis.duration, visual_prompt="c", motion_prompt="c")])
    fitted = fit_ideas(analysis, local, ideas, theme_fill=fill)
    assert len(fitted) == 2 and [s.visual_prompt for s in fitted] == ["a", "c"]


def test_fixed_count_keeps_the_local_cuts_and_takes_prompts_by_index() -> None:
    """With a fixed segment count the model's times are ignored; ideas go to their index."""
    analysis = analyses()[1]
    local, fill = planned(1, 5)
    ideas = PlanIdeas(segments=[SegmentIdea(index=4 - i, start=1.0, end=2.0, visual_prompt=f"idea {4 - i}",
                                            motion_prompt="m") for i in range(5)])
    fitted = fit_ideas(analysis, local, ideas, theme_fill=fill, fixed_count=True)
    assert [(s.start, s.end) for s in fitted] == [(s.start, s.end) for s in local]
    assert [s.visual_prompt for s in fitted] == [f"idea {i}" for i in range(5)]


# -- the property: whatever a writer says, the plan tiles the song on its beats --------------

_times = st.one_of(st.none(), st.floats(min_value=-60.0, max_value=400.0),
                   st.sampled_from([math.nan, math.inf, -math.inf, 1e12, 0.0]))
_prompts = st.one_of(st.just(""), st.just("  \n"), st.text(max_size=24))
_ideas = st.builds(
    SegmentIdea.model_construct, index=st.integers(min_value=-2, max_value=60), start=_times, end=_times,
    visual_prompt=_prompts, motion_prompt=_prompts,
    mood=st.one_of(st.none(), st.sampled_from(MOODS), st.text(max_size=10)), theme=st.none())


@st.composite
def answers(draw: st.DrawFn, local: list[Segment]) -> PlanIdeas:
    """A model's answer: random ideas, or the local plan jittered, thinned, duplicated and shuffled."""
    if draw(st.booleans()):
        return PlanIdeas.model_construct(segments=draw(st.lists(_ideas, max_size=40)))
    jitter = st.floats(min_value=-3.0, max_value=3.0)
    ideas = [SegmentIdea.model_construct(index=s.index, start=s.start + draw(jitter), end=s.end + draw(jitter),
                                         visual_prompt=draw(_prompts), motion_prompt="m", mood=None)
             for s in local if draw(st.integers(0, 4))]
    ideas += draw(st.lists(st.sampled_from(ideas), max_size=5)) if ideas else []
    return PlanIdeas.model_construct(segments=draw(st.permutations(ideas)))


def assert_fits(fitted: list[Segment], analysis: Analysis, local: list[Segment], *, fixed: bool) -> None:
    assert fitted[0].start == 0.0 and fitted[-1].end == analysis.duration
    assert all(a.end == b.start and a.start < a.end for a, b in zip(fitted, fitted[1:], strict=False))
    assert [s.index for s in fitted] == list(range(len(fitted)))
    beats = set(analysis.beats)
    assert all(s.start in beats for s in fitted[1:])
    for s in fitted:
        assert s.visual_prompt.strip() and s.motion_prompt.strip() and s.negative_prompt.strip()
        assert s.mood in MOODS and 0 <= s.section < len(analysis.sections)
        assert all(phrase in s.visual_prompt for phrase in THEME.enhancements)
    if fixed:
        assert [(s.start, s.end) for s in fitted] == [(s.start, s.end) for s in local]
    elif len(fitted) > 1:
        assert min(s.duration for s in fitted) >= FLOOR


@hypothesis_settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), which=st.integers(0, 2), count=st.sampled_from([None, None, 1, 4, 9]))
def test_any_answer_fits_the_song_on_its_beats(data: st.DataObject, which: int, count: int | None) -> None:
    """Whatever a writer returns, the plan covers the song exactly, cuts on beats, and has every prompt."""
    analysis = analyses()[which]
    local, fill = planned(which, count)
    ideas = data.draw(answers(local))
    fitted = fit_ideas(analysis, local, ideas, theme_fill=fill, enhancements=THEME.enhancements,
                       fixed_count=count is not None)
    assert_fits(fitted, analysis, local, fixed=count is not None)


# -- the Analyze stage --------------------------------------------------------------------


def drop_song(settings: Settings, seconds: float = 12.0) -> None:
    settings.paths.inbox.mkdir(parents=True, exist_ok=True)
    song = settings.paths.inbox / "tandav.wav"
    write_song(song, seconds, 120.0, section_change_at=seconds / 2)
    old = time.time() - 60
    os.utime(song, (old, old))


def pending_run(settings: Settings) -> Path:
    (run_dir,) = (settings.paths.state_root / State.PENDING_APPROVAL.value).iterdir()
    return run_dir


def test_the_run_records_the_ollama_writer(settings: Settings) -> None:
    """A run planned by Ollama says so in segments.json, the stage detail and `tandava show`."""
    settings.approval.mode = "manual"
    settings.analysis.writer = "ollama"
    with FakeOllama() as server:
        settings.ollama.url = server.url
        drop_song(settings)
        assert run(settings, threading.Event(), once=True) == 0
    run_dir = pending_run(settings)
    plan = json.loads((run_dir / "segments.json").read_text(encoding="utf-8"))
    assert (plan["writer"], plan["fell_through"]) == ("ollama", [])
    assert all("a dancer of fire" in s["visual_prompt"] for s in plan["segments"])
    manifest = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    detail = manifest["stages"]["analyze"]["detail"]
    assert (detail["writer"], detail["fell_through"]) == ("ollama", 0)
    assert "writer   ollama" in list(show_lines(RunStore(settings.paths.state_root), run_dir.name))


def test_remote_writers_failing_never_fail_the_run(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Gemini without a key and Ollama not running: the theme writes, the run goes on, both reasons recorded."""
    for key in ("GOOGLE_API_KEY", "GEMINI_API_KEY"):
        monkeypatch.delenv(key, raising=False)
    settings.approval.mode = "manual"
    settings.analysis.writer = "gemini"
    settings.analysis.fallback = ["ollama"]
    settings.gemini.base_url = "http://127.0.0.1:9"  # never Google's, whatever key the machine has
    settings.gemini.attempts = 1
    settings.gemini.timeout_seconds = 2.0
    with FakeOllama() as server:
        settings.ollama.url = server.url
        server.down()
        drop_song(settings)
        assert run(settings, threading.Event(), once=True) == 0
    run_dir = pending_run(settings)
    plan = json.loads((run_dir / "segments.json").read_text(encoding="utf-8"))
    assert plan["writer"] == "theme"
    assert [f["writer"] for f in plan["fell_through"]] == ["gemini", "ollama"]
    assert "`ollama serve`" in plan["fell_through"][1]["reason"]
    shown = "\n".join(show_lines(RunStore(settings.paths.state_root), run_dir.name))
    assert "writer   theme" in shown and "ollama fell through: Ollama at" in shown
