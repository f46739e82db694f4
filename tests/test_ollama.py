"""The Ollama prompt writer against a fake Ollama (daemon.writers.ollama)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from comfy_helpers import FLUX, WAN, image_job, models_for
from fakecomfy import FakeComfy
from fakeollama import GB, MODEL, FakeOllama

from daemon.app import open_comfy
from daemon.backends.base import noop_progress
from daemon.config import OllamaConfig, Settings
from daemon.host.doctor import check_writers
from daemon.music.analysis import Analysis, analyze_signal
from daemon.music.plan import plan_segments
from daemon.music.synth import synth_song
from daemon.writers.brief import Brief, PlanIdeas, WriterFailed, brief_text
from daemon.writers.chain import load_theme
from daemon.writers.ollama import OllamaWriter, context_tokens, doctor_checks, has_model, unload


@pytest.fixture(scope="module")
def analysis() -> Analysis:
    """A 20 s, 120 BPM synthesized song with a section change at 10 s, analysed once."""
    y, _truth = synth_song(20.0, 120.0, section_change_at=10.0)
    return analyze_signal(y, 22050)


@pytest.fixture
def brief(analysis: Analysis) -> Brief:
    """The brief a writer gets for that song with the shiva theme."""
    theme = load_theme("shiva")
    return Brief(analysis=analysis, segments=plan_segments(analysis), song=Path("tandav.wav"),
                 theme_name=theme.name, theme_description=theme.description, subjects=list(theme.subjects),
                 negative=theme.negative, enhancements=list(theme.enhancements), seed=7)


@pytest.fixture
def fake() -> Iterator[FakeOllama]:
    """A fake Ollama with the default model pulled."""
    with FakeOllama() as server:
        yield server


def test_good_plan_comes_back_as_plan_ideas(fake: FakeOllama, brief: Brief) -> None:
    """A chat with the schema as format, the seed and the brief as text gives one idea per segment."""
    ideas = OllamaWriter(OllamaConfig(url=fake.url)).propose(brief)
    assert [i.index for i in ideas.segments] == [s.index for s in brief.segments]
    assert ideas.segments[0].start == pytest.approx(brief.segments[0].start, abs=0.01)
    (body,) = fake.chats
    assert body["model"] == MODEL and body["stream"] is False
    assert body["format"] == PlanIdeas.model_json_schema()
    assert body["options"]["seed"] == 7 and 0 < body["options"]["temperature"] <= 1
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert body["messages"][1]["content"] == brief_text(brief)
    assert "120.0 BPM" in brief_text(brief) and "#0 0.00-" in brief_text(brief)


def test_missing_model_names_it_and_the_pull_command(brief: Brief) -> None:
    """A model that was never pulled fails with its name and `ollama pull`."""
    with FakeOllama(models=("llama3.2:3b",)) as server, pytest.raises(WriterFailed) as caught:
        OllamaWriter(OllamaConfig(url=server.url, model=MODEL)).propose(brief)
    assert f"'{MODEL}'" in caught.value.reason
    assert f"`ollama pull {MODEL}`" in caught.value.reason


def test_server_down_says_start_it(fake: FakeOllama, brief: Brief) -> None:
    """A refused connection tells to start Ollama with `ollama serve`."""
    fake.down()
    with pytest.raises(WriterFailed) as caught:
        OllamaWriter(OllamaConfig(url=fake.url)).propose(brief)
    assert f"Ollama at {fake.url} is not running" in caught.value.reason
    assert "`ollama serve`" in caught.value.reason
    assert caught.value.retryable


def test_invalid_output_is_retried_then_the_writer_fails(fake: FakeOllama, brief: Brief) -> None:
    """Prose, then JSON off the schema, then prose again: three chats with new seeds, then WriterFailed."""
    fake.script("invalid", "schema", "invalid")
    with pytest.raises(WriterFailed) as caught:
        OllamaWriter(OllamaConfig(url=fake.url)).propose(brief)
    assert "no valid plan in 3 attempts" in caught.value.reason
    assert [c["options"]["seed"] for c in fake.chats] == [7, 8, 9]
    retry = fake.chats[1]["messages"]
    assert [m["role"] for m in retry] == ["system", "user", "assistant", "user"]
    assert "not valid" in retry[-1]["content"]


def test_invalid_output_once_then_a_good_plan(fake: FakeOllama, brief: Brief) -> None:
    """One invalid answer is asked again and the second, valid one is used."""
    fake.script("invalid")
    ideas = OllamaWriter(OllamaConfig(url=fake.url)).propose(brief)
    assert len(fake.chats) == 2 and len(ideas.segments) == len(brief.segments)


def test_slow_model_times_out_with_the_setting_to_raise(brief: Brief) -> None:
    """No answer within [ollama] timeout_seconds fails, naming that setting."""
    with FakeOllama(delay=2.0) as server, pytest.raises(WriterFailed) as caught:
        OllamaWriter(OllamaConfig(url=server.url, timeout_seconds=0.3)).propose(brief)
    assert "timeout_seconds" in caught.value.hint


def test_unload_asks_for_keep_alive_zero(fake: FakeOllama) -> None:
    """unload posts keep_alive 0 for the model; on a stopped server it reports False without raising."""
    fake.load()
    assert unload(OllamaConfig(url=fake.url))
    assert fake.unloads == [MODEL] and fake.loaded == {}
    fake.down()
    assert not unload(OllamaConfig(url=fake.url))


def test_writer_unloads_its_model_when_it_shares_the_gpu(fake: FakeOllama, brief: Brief) -> None:
    """With unload_after, the model leaves memory as soon as the plan is written."""
    OllamaWriter(OllamaConfig(url=fake.url), unload_after=True).propose(brief)
    assert fake.unloads == [MODEL]
    assert [path for _m, path, _t in fake.calls] == ["/api/chat", "/api/generate"]


def test_short_vram_unloads_the_writer_model_before_a_gpu_job(tmp_path: Path, settings: Settings,
                                                               brief: Brief) -> None:
    """The Ollama writer's model holds the GPU; the ComfyUI pool unloads it, then the image job runs."""
    with FakeComfy(tmp_path / "comfy", models=models_for(FLUX, WAN), vram_total=24 * GB,
                   vram_free=22 * GB) as comfy, FakeOllama(gpu=comfy, model_bytes=15 * GB) as ollama:
        settings.comfy.servers = [comfy.url]
        settings.images.backend = "comfyui"
        settings.analysis.writer = "ollama"
        settings.ollama.url = ollama.url
        OllamaWriter(settings.ollama).propose(brief)
        assert comfy.vram_free == 7 * GB  # too little for Flux (14 GB + margin)
        backends = open_comfy(settings)
        try:
            job = image_job(0, tmp_path)
            backends.image.submit(job)
            out = backends.image.collect(job, progress=noop_progress, stop=threading.Event())
        finally:
            backends.close()
    assert out.is_file()
    assert ollama.unloads == [MODEL]
    unloaded_at = next(t for _m, path, t in ollama.calls if path == "/api/generate")
    assert unloaded_at * 1000 <= comfy.timestamps[job.id]["execution_start"]


def test_a_remote_ollama_is_left_alone_by_vram_admission(settings: Settings) -> None:
    """Admission only unloads an Ollama on this machine (or a ComfyUI server's), and only when it writes."""
    from daemon.writers.ollama import ollama_to_unload

    settings.images.backend = "comfyui"
    settings.ollama.url = "http://127.0.0.1:11434"
    assert ollama_to_unload(settings) is None  # the writer is theme
    settings.analysis.fallback = ["ollama", "theme"]
    settings.analysis.writer = "gemini"
    assert ollama_to_unload(settings) == "http://127.0.0.1:11434"
    settings.ollama.url = "http://llm-box:11434"
    assert ollama_to_unload(settings) is None
    settings.comfy.servers = ["http://llm-box:8188"]
    assert ollama_to_unload(settings) == "http://llm-box:11434"


def test_doctor_ok_when_the_model_is_pulled(fake: FakeOllama, settings: Settings) -> None:
    """With Ollama as the writer, the doctor finds the server and the model."""
    settings.analysis.writer = "ollama"
    settings.ollama.url = fake.url
    checks = list(check_writers(settings))
    assert [(c.name, c.ok) for c in checks] == [("ollama", True), ("ollama model", True)]
    assert MODEL in checks[1].detail


def test_doctor_gives_the_pull_command_for_a_missing_model(settings: Settings) -> None:
    """A model that is not pulled fails the check with `ollama pull <model>`."""
    settings.analysis.writer = "ollama"
    with FakeOllama(models=("llama3.2:3b",)) as server:
        settings.ollama.url = server.url
        checks = list(doctor_checks(settings))
    assert [(c.name, c.ok) for c in checks] == [("ollama", True), ("ollama model", False)]
    assert f"`ollama pull {MODEL}`" in checks[1].detail and "llama3.2:3b" in checks[1].detail


def test_doctor_says_start_ollama_when_it_is_down(fake: FakeOllama, settings: Settings) -> None:
    """A fallback Ollama that is not running fails the check with `ollama serve` and what writes instead."""
    settings.analysis.writer = "gemini"
    settings.analysis.fallback = ["ollama"]
    settings.ollama.url = fake.url
    fake.down()
    (check,) = doctor_checks(settings)
    assert not check.ok and "`ollama serve`" in check.detail and "theme" in check.detail


def test_doctor_skips_ollama_when_it_is_not_in_the_chain(settings: Settings) -> None:
    """No Ollama check when the theme writes (or comes before Ollama in the chain)."""
    settings.analysis.fallback = ["theme", "ollama"]
    assert list(doctor_checks(settings)) == []


def test_model_names_without_a_tag_mean_latest() -> None:
    """`llama3` is `llama3:latest`, as Ollama resolves it; other tags do not match."""
    assert has_model(["llama3:latest"], "llama3")
    assert has_model(["gemma3:12b"], "gemma3:12b")
    assert not has_model(["gemma3:4b"], "gemma3:12b")


def test_context_grows_with_the_song_within_bounds() -> None:
    """A long plan asks for a larger context than Ollama's default, never past the maximum."""
    assert context_tokens("x" * 3000, 4) == 8192
    assert context_tokens("x" * 12000, 60) == 16384
    assert context_tokens("x" * 10**6, 500) == 32768
