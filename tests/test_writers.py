"""Prompt writers and themes (daemon.writers.chain)."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.errors import ConfigError
from daemon.music.analysis import Analysis, Section
from daemon.music.plan import MOODS, Segment, plan_segments
from daemon.writers.chain import (
    BUILTIN_THEMES,
    PromptWriter,
    Theme,
    ThemeWriter,
    available_themes,
    energy_level,
    load_theme,
)


@pytest.fixture
def analysis() -> Analysis:
    """A 40 s, 120 BPM analysis with sections labelled A B A."""
    beats = [round(0.5 * i, 4) for i in range(1, 80)]
    return Analysis(
        duration=40.0,
        sample_rate=22050,
        tempo=120.0,
        beats=beats,
        downbeats=beats[::4],
        beats_per_bar=4,
        energy=[0.2] * 30 + [0.9] * 30 + [0.2] * 20,
        energy_hop=0.5,
        sections=[
            Section(start=0.0, end=14.0, label=0, energy=0.2),
            Section(start=14.0, end=30.0, label=1, energy=0.9),
            Section(start=30.0, end=40.0, label=0, energy=0.2),
        ],
    )


@pytest.fixture
def segments(analysis: Analysis) -> list[Segment]:
    """The analysis planned into segments."""
    return plan_segments(analysis)


def _write_theme(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("name", ["shiva", "neutral"])
def test_builtin_themes_load(name: str) -> None:
    """Each built-in theme validates and has vocabulary for every mood and energy level."""
    theme = load_theme(name)
    assert set(theme.moods) == set(MOODS)
    assert set(theme.camera) == {"low", "mid", "high"}
    assert theme.negative and theme.enhancements


def test_shiva_theme_carries_the_users_enhancements() -> None:
    """The shiva theme appends the user's phrases and depicts Shiva's attributes."""
    theme = load_theme("shiva")
    assert "powerful muscular god with divine purple eyes" in theme.enhancements
    assert "highly detailed, cinematic lighting, 8k" in theme.enhancements
    words = " ".join(theme.subjects).lower()
    for motif in (
        "kailash",
        "nataraja",
        "ganga",
        "third eye",
        "trishula",
        "damaru",
        "crescent moon",
    ):
        assert motif in words


def test_unknown_theme_names_the_available_ones() -> None:
    """Asking for a theme that does not exist is a ConfigError listing the ones that do."""
    with pytest.raises(ConfigError) as info:
        load_theme("vaporwave")
    assert (
        info.value.key == "theme"
        and "neutral" in info.value.expected
        and "shiva" in info.value.expected
    )


def test_theme_name_cannot_escape_the_folder() -> None:
    """A name with a path in it is refused before any file is opened."""
    with pytest.raises(ConfigError):
        load_theme("../secrets")


def test_user_theme_overrides_a_builtin(tmp_path: Path) -> None:
    """A user's file named like a built-in replaces it."""
    text = (BUILTIN_THEMES / "neutral.toml").read_text(encoding="utf-8")
    _write_theme(
        tmp_path, "shiva", text.replace("flowing ribbons of coloured light", "a quiet lake")
    )
    theme = load_theme("shiva", [tmp_path])
    assert "a quiet lake" in theme.subjects


def test_user_theme_extends_a_builtin(tmp_path: Path) -> None:
    """``extends`` starts from another theme; lists replace, mood tables merge key by key."""
    _write_theme(
        tmp_path,
        "shiva",
        'extends = "shiva"\nenhancements = ["oil painting"]\n[moods]\ncalm = ["dawn stillness"]\n',
    )
    theme = load_theme("shiva", [tmp_path])
    builtin = load_theme("shiva")
    assert theme.enhancements == ["oil painting"]
    assert theme.moods["calm"] == ["dawn stillness"]
    assert theme.moods["intense"] == builtin.moods["intense"]
    assert theme.subjects == builtin.subjects
    assert "shiva" in available_themes([tmp_path])


def test_theme_missing_a_mood_is_a_config_error(tmp_path: Path) -> None:
    """A theme without words for a mood is refused, naming the missing mood."""
    _write_theme(tmp_path, "partial", 'extends = "neutral"\n[moods]\ncalm = []\n')
    with pytest.raises(ConfigError) as info:
        load_theme("partial", [tmp_path])
    assert "moods" in info.value.key and "calm" in info.value.expected


def test_theme_with_a_typo_is_a_config_error(tmp_path: Path) -> None:
    """An unknown key (a typo) is refused rather than silently ignored."""
    _write_theme(tmp_path, "typo", 'extends = "neutral"\nsubjcts = ["x"]\n')
    with pytest.raises(ConfigError) as info:
        load_theme("typo", [tmp_path])
    assert "subjcts" in info.value.key


def test_invalid_toml_is_a_config_error(tmp_path: Path) -> None:
    """A theme file that is not TOML is a ConfigError naming the file."""
    path = _write_theme(tmp_path, "broken", "subjects = [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_theme("broken", [tmp_path])
    assert str(path) in info.value.key


def test_extends_cycle_is_a_config_error(tmp_path: Path) -> None:
    """Themes extending each other in a loop are refused instead of recursing forever."""
    _write_theme(tmp_path, "a", 'extends = "b"\n')
    _write_theme(tmp_path, "b", 'extends = "a"\n')
    with pytest.raises(ConfigError):
        load_theme("a", [tmp_path])


def test_theme_writer_is_a_prompt_writer() -> None:
    """ThemeWriter satisfies the PromptWriter protocol under the name 'theme'."""
    writer = ThemeWriter(load_theme("neutral"))
    assert isinstance(writer, PromptWriter) and writer.name == "theme"


def test_prompts_are_filled_from_the_theme(analysis: Analysis, segments: list[Segment]) -> None:
    """Every segment gets a visual, motion and negative prompt; spans and moods are unchanged."""
    theme = load_theme("shiva")
    written = ThemeWriter(theme).write(analysis, segments, seed=7)
    assert [(s.start, s.end, s.mood) for s in written] == [
        (s.start, s.end, s.mood) for s in segments
    ]
    for segment in written:
        assert segment.visual_prompt.endswith(", ".join(theme.enhancements))
        assert any(word in segment.visual_prompt for word in theme.moods[segment.mood])
        assert any(
            motion in segment.motion_prompt for motion in theme.camera[energy_level(segment.energy)]
        )
        assert segment.negative_prompt == theme.negative
    assert all(s.visual_prompt == "" for s in segments)


def test_writing_is_deterministic_per_seed(analysis: Analysis, segments: list[Segment]) -> None:
    """The same seed gives the same prompts; another seed gives different ones."""
    writer = ThemeWriter(load_theme("shiva"))
    first = writer.write(analysis, segments, seed=1)
    assert writer.write(analysis, segments, seed=1) == first
    assert writer.write(analysis, segments, seed=2) != first


def test_sections_that_sound_alike_share_a_subject(
    analysis: Analysis, segments: list[Segment]
) -> None:
    """Segments in sections with the same label show the same subject."""
    theme = load_theme("shiva")
    written = ThemeWriter(theme).write(analysis, segments, seed=3)

    def subject(segment: Segment) -> str:
        return next(s for s in theme.subjects if segment.visual_prompt.startswith(s))

    by_label: dict[int, set[str]] = {}
    for segment in written:
        by_label.setdefault(analysis.sections[segment.section].label, set()).add(subject(segment))
    assert all(len(subjects) == 1 for subjects in by_label.values())


def test_theme_model_rejects_an_empty_subject_list() -> None:
    """A Theme needs at least one subject."""
    neutral = load_theme("neutral")
    with pytest.raises(ValueError, match="subjects"):
        Theme(**{**neutral.model_dump(), "subjects": []})
