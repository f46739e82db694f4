"""Writer overhead beyond the remote call: validating a model's answer, fitting it to the beats, the fallback.

    python bench/bench_writers.py [--seconds 240] [--runs 50]

Synthesizes one song (240 s at 128 BPM by default) and analyses it once, then
times, as the median of N runs each: ``PlanIdeas.model_validate_json`` of a
realistic answer (one idea per local segment, 40-60 word prompts, times up to
0.3 s off the beats), ``fit_ideas``, the theme fill (``ThemeWriter.write``),
the local plan (``plan_segments``, which every writer needs, the theme too),
and the whole ``write_plan`` chain with a fake remote writer that answers
instantly (validation inside it, as a real writer does) and one that fails
instantly (fallback to the theme). The overhead is the chain's time minus the
local plan's. Target: overhead <= 50 ms for a 4-minute song.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import structlog

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from daemon.config import Settings  # noqa: E402
from daemon.music.analysis import analyze_signal  # noqa: E402
from daemon.music.plan import Segment, fit_ideas, plan_segments  # noqa: E402
from daemon.music.synth import synth_song  # noqa: E402
from daemon.writers.brief import Brief, PlanIdeas, WriterFailed  # noqa: E402
from daemon.writers.chain import ThemeWriter, load_theme, write_plan  # noqa: E402

TARGET_MS = 50.0
_WORDS = ("ash", "ember", "river", "temple", "drum", "moon", "trident", "smoke", "gold", "storm", "lotus",
          "serpent", "dawn", "mountain", "flame", "dust", "bronze", "eye", "cosmos", "rhythm")


def realistic_answer(local: list[Segment], duration: float) -> str:
    """What a model would send back: every segment, long prompts, times a little off the beats."""
    rng = random.Random(7)
    ideas = []
    for s in local:
        visual = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(40, 60)))
        motion = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(12, 20)))
        ideas.append({"index": s.index, "start": round(max(0.0, s.start + rng.uniform(-0.3, 0.3)), 2),
                      "end": round(min(duration + 1, s.end + rng.uniform(-0.3, 0.3)), 2),
                      "visual_prompt": visual, "motion_prompt": motion, "mood": s.mood,
                      "theme": f"scene {s.index}"})
    return json.dumps({"segments": ideas})


class Instant:
    """A remote writer with no network: validates a stored answer, as a real writer validates its reply."""

    name = "ollama"

    def __init__(self, answer: str) -> None:
        self.answer = answer

    def propose(self, brief: Brief) -> PlanIdeas:
        return PlanIdeas.model_validate_json(self.answer)


class Refuses:
    """A remote writer that fails at once, as Gemini does without a key."""

    name = "gemini"

    def propose(self, brief: Brief) -> PlanIdeas:
        raise WriterFailed("no Gemini API key", "set GOOGLE_API_KEY")


def median_ms(action: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        action()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=240.0)
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))  # errors only

    y, _truth = synth_song(args.seconds, 128.0, section_change_at=args.seconds / 2, hats_per_beat=2)
    analysis = analyze_signal(y, 22050)
    settings = Settings()
    settings.analysis.writer = "ollama"
    local = plan_segments(analysis, clip_seconds=settings.video.clip_seconds)
    theme = load_theme(settings.analysis.theme)
    fill = ThemeWriter(theme).write(analysis, local, seed=0)
    answer = realistic_answer(local, analysis.duration)
    ideas = PlanIdeas.model_validate_json(answer)
    song = Path("song.wav")
    instant, refuses = Instant(answer), Refuses()

    rows = [
        ("validate (model_validate_json)", lambda: PlanIdeas.model_validate_json(answer)),
        ("fit_ideas", lambda: fit_ideas(analysis, local, ideas, theme_fill=fill, enhancements=theme.enhancements,
                                        clip_seconds=settings.video.clip_seconds)),
        ("theme fill (ThemeWriter.write)", lambda: ThemeWriter(theme).write(analysis, local, seed=0)),
        ("local plan (plan_segments)", lambda: plan_segments(analysis, clip_seconds=settings.video.clip_seconds)),
        ("write_plan, remote answers", lambda: write_plan(settings, analysis, song, 0,
                                                          make_remote=lambda _n, _s: instant)),
    ]
    print(f"{analysis.duration:.0f} s song, {analysis.tempo:.1f} BPM, {len(analysis.beats)} beats, "
          f"{len(local)} segments; answer {len(answer) / 1024:.1f} KiB; median of {args.runs} runs")
    print(f"{'step':34} {'median':>9}")
    measured = {}
    for name, action in rows:
        measured[name] = median_ms(action, args.runs)
        print(f"{name:34} {measured[name]:7.2f}ms")
    settings.analysis.writer = "gemini"
    settings.analysis.fallback = ["theme"]
    name = "write_plan, remote fails -> theme"
    measured[name] = median_ms(lambda: write_plan(settings, analysis, song, 0, make_remote=lambda _n, _s: refuses),
                               args.runs)
    print(f"{name:34} {measured[name]:7.2f}ms")
    plan_ms = measured["local plan (plan_segments)"]
    for chain in ("write_plan, remote answers", "write_plan, remote fails -> theme"):
        overhead = measured[chain] - plan_ms
        print(f"overhead, {chain.removeprefix('write_plan, '):24} {overhead:7.2f}ms "
              f"(target <= {TARGET_MS:.0f} ms, {overhead / TARGET_MS:.2f}x)")


if __name__ == "__main__":
    main()
