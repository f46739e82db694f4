"""The Gemini writer against a fake Gemini API on a real socket, driven by the real SDK."""

from __future__ import annotations

import dataclasses
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakegemini import API_KEY, API_VERSION, FakeGemini, error, good_plan, slow, text, wild_plan
from pydantic import SecretStr
from structlog.testing import capture_logs

from daemon.config import GeminiConfig, Settings
from daemon.music.analysis import analyze
from daemon.music.plan import plan_segments
from daemon.music.synth import write_song
from daemon.writers.brief import Brief, PlanIdeas, WriterFailed
from daemon.writers.chain import load_theme
from daemon.writers.gemini import (
    AUDIO_MIME_TYPES,
    GeminiWriter,
    api_key_for,
    brief_text,
    doctor_checks,
    make_gemini_writer,
    read_dotenv,
)

# A wrong key that logs.scrub would not recognise: only the writer's own masking hides it.
WRONG_KEY = "tandava-wrong-key-0042"


@pytest.fixture(scope="module")
def brief(tmp_path_factory: pytest.TempPathFactory) -> Brief:
    """A brief from a real analysis of a 20 s synthesized song (two sections) and the shiva theme."""
    song = tmp_path_factory.mktemp("songs") / "शिव तांडव 🔱.wav"
    write_song(song, 20.0, 120.0, section_change_at=10.0)
    analysis = analyze(song)
    theme = load_theme("shiva")
    return Brief(analysis=analysis, segments=plan_segments(analysis), song=song, theme_name=theme.name,
                 theme_description=theme.description, subjects=theme.subjects, negative=theme.negative,
                 enhancements=theme.enhancements, seed=7)


@pytest.fixture
def fake() -> Iterator[FakeGemini]:
    """A fake Gemini that processes an upload in two polls."""
    with FakeGemini(processing_polls=2) as server:
        yield server


@pytest.fixture(autouse=True)
def no_key_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees a developer's real key."""
    for name in ("GOOGLE_API_KEY", "GEMINI_API_KEY", "TANDAVA_GEMINI__API_KEY", "GOOGLE_GENAI_API_VERSION",
                 "GOOGLE_GENAI_USE_VERTEXAI", "GOOGLE_GENAI_USE_ENTERPRISE"):
        monkeypatch.delenv(name, raising=False)


def writer_for(fake: FakeGemini, *, api_key: str = API_KEY, **cfg: object) -> GeminiWriter:
    options: dict[str, object] = {"base_url": fake.base_url, "timeout_seconds": 5.0, "attempts": 2, **cfg}
    return GeminiWriter(GeminiConfig.model_validate(options), api_key=api_key, poll_seconds=0.01)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- a plan ------------------------------------------------------------------------------


def test_good_plan_with_inline_audio(fake: FakeGemini, brief: Brief, monkeypatch: pytest.MonkeyPatch) -> None:
    """A small song travels inline with its MIME type, and the answer has one idea per local segment."""
    # Neither may move the writer off the Gemini API or its version.
    monkeypatch.setenv("GOOGLE_GENAI_USE_VERTEXAI", "true")
    monkeypatch.setenv("GOOGLE_GENAI_API_VERSION", "v1")
    ideas = writer_for(fake).propose(brief)

    assert [i.index for i in ideas.segments] == [s.index for s in brief.segments]
    assert all(i.visual_prompt and i.motion_prompt for i in ideas.segments)
    [call] = fake.generate_calls()
    assert call.path == f"/{API_VERSION}/models/gemini-2.5-flash:generateContent"
    assert fake.inline_parts(call) == [("audio/wav", brief.song.read_bytes())]
    config = call.json()["generationConfig"]
    assert config["responseMimeType"] == "application/json"
    assert config["responseJsonSchema"] == PlanIdeas.model_json_schema()
    assert config["seed"] == brief.seed
    for segment in brief.segments:
        assert f"#{segment.index} {segment.start:.2f}-{segment.end:.2f} s" in fake.prompt(call)
    assert not fake.requests("POST", "/upload/")


@pytest.mark.parametrize("suffix", [".mp3", ".flac", ".ogg", ".m4a"])
def test_mime_type_per_format(fake: FakeGemini, brief: Brief, tmp_path: Path, suffix: str) -> None:
    """Each song format goes with its own MIME type, never a guess."""
    song = tmp_path / f"song{suffix}"
    write_song(song, 3.0, 120.0)
    writer_for(fake).propose(dataclasses.replace(brief, song=song))

    [(mime, data)] = fake.inline_parts(fake.generate_calls()[0])
    assert mime == AUDIO_MIME_TYPES[suffix]
    assert data == song.read_bytes()


def test_large_song_goes_through_the_files_api(fake: FakeGemini, brief: Brief) -> None:
    """Above inline_max_mb the song is uploaded (resumable), polled to ACTIVE, used by URI, then deleted."""
    ideas = writer_for(fake, inline_max_mb=0.5).propose(brief)

    assert len(ideas.segments) == len(brief.segments)
    start, upload = fake.requests("POST", "/upload/")
    assert start.path == f"/upload/{API_VERSION}/files"
    assert start.headers["x-goog-upload-protocol"] == "resumable"
    assert start.headers["x-goog-upload-command"] == "start"
    assert start.headers["x-goog-upload-header-content-type"] == "audio/wav"
    assert upload.headers["x-goog-upload-command"] == "upload, finalize"
    [stored] = fake.uploaded
    assert (stored.display_name, stored.mime_type) == (brief.song.name, "audio/wav")
    assert stored.data == brief.song.read_bytes()
    [name] = fake.deleted
    assert len(fake.requests("GET", name)) == 2  # PROCESSING, then ACTIVE
    [call] = fake.generate_calls()
    [(mime, uri)] = fake.file_parts(call)
    assert mime == "audio/wav" and uri.endswith(name)
    assert not fake.inline_parts(call)
    assert fake.calls[-1].method == "DELETE" and not fake.files


def test_uploaded_file_deleted_when_the_request_fails(fake: FakeGemini, brief: Brief) -> None:
    """An uploaded song is deleted even when generateContent fails."""
    fake.script(error(400, "INVALID_ARGUMENT", "Request contains an invalid argument."))
    with pytest.raises(WriterFailed) as failed:
        writer_for(fake, inline_max_mb=0.5).propose(brief)

    assert failed.value.cause == "GeminiRequest"
    assert len(fake.deleted) == 1 and not fake.files


def test_failed_file_is_final(brief: Brief) -> None:
    """A file Gemini could not process fails the writer at once, and is deleted."""
    with FakeGemini(file_outcome="FAILED") as fake:
        with pytest.raises(WriterFailed) as failed:
            writer_for(fake, inline_max_mb=0.5).propose(brief)

        assert failed.value.cause == "GeminiFileFailed"
        assert "FAILED" in failed.value.reason and "could not be decoded" in failed.value.reason
        assert not fake.generate_calls()
        assert len(fake.deleted) == 1


def test_times_off_the_grid_come_back_as_given(fake: FakeGemini, brief: Brief) -> None:
    """Times past the end and off the beats are returned untouched: fitting them is the caller's job."""
    fake.script(wild_plan())
    ideas = writer_for(fake).propose(brief)

    last = ideas.segments[-1]
    assert last.end is not None and last.end > brief.analysis.duration
    # The first segment starts at the song's start, not on a beat: 0.123 s after it may be near one.
    starts = [i.start for i in ideas.segments[1:]]
    assert all(s is not None and min(abs(s - b) for b in brief.analysis.beats) > 0.05 for s in starts)


# -- failures ----------------------------------------------------------------------------


def test_output_not_matching_the_schema_is_asked_again_then_fails(fake: FakeGemini, brief: Brief) -> None:
    """Answers that do not validate are asked for again with the problem, up to attempts, then WriterFailed."""
    fake.script(text("Here is your plan!"), text('{"segments": []}'), text('{"segments": [{"index": 0}]}'))
    with pytest.raises(WriterFailed) as failed:
        writer_for(fake, attempts=3).propose(brief)

    assert failed.value.cause == "GeminiInvalidOutput"
    assert "3 attempts" in failed.value.reason and "visual_prompt" in failed.value.reason
    first, second, third = fake.generate_calls()
    assert "not usable" not in fake.prompt(first)
    assert "Invalid JSON" in fake.prompt(second) and "segments" in fake.prompt(third)


def test_a_bad_answer_then_a_good_one_succeeds(fake: FakeGemini, brief: Brief) -> None:
    """One answer that does not parse costs one more call, not the plan."""
    fake.script(text('{"segments": [{"index": 0, "visual_prompt": "x"'), good_plan())
    ideas = writer_for(fake).propose(brief)

    assert len(ideas.segments) == len(brief.segments)
    assert len(fake.generate_calls()) == 2


def test_quota_error_then_success_is_retried_by_the_sdk(fake: FakeGemini, brief: Brief) -> None:
    """A 429 RESOURCE_EXHAUSTED is retried with backoff, and the next answer is used."""
    fake.script(error(429, "RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota)."), good_plan())
    ideas = writer_for(fake, attempts=3).propose(brief)

    assert len(ideas.segments) == len(brief.segments)
    assert len(fake.generate_calls()) == 2


@pytest.mark.parametrize(("code", "status", "cause"), [
    (429, "RESOURCE_EXHAUSTED", "GeminiQuota"),
    (500, "INTERNAL", "GeminiServer"),
    (503, "UNAVAILABLE", "GeminiServer"),
])
def test_errors_after_retries_fail_with_their_cause(fake: FakeGemini, brief: Brief, code: int, status: str,
                                                     cause: str) -> None:
    """A quota or server error still there after the retries is a WriterFailed naming it."""
    fake.script(*[error(code, status, "The model is overloaded.")] * 2)
    with pytest.raises(WriterFailed) as failed:
        writer_for(fake, attempts=2).propose(brief)

    assert failed.value.cause == cause
    assert f"{code} {status}" in failed.value.reason and "after 2 attempts" in failed.value.reason
    assert len(fake.generate_calls()) == 2


def test_timeout_fails_quickly(fake: FakeGemini, brief: Brief) -> None:
    """A Gemini slower than timeout_seconds gives WriterFailed after the timeout, not after its answer."""
    fake.script(slow(5.0))
    started = time.monotonic()
    with pytest.raises(WriterFailed) as failed:
        writer_for(fake, timeout_seconds=0.3, attempts=1).propose(brief)

    assert time.monotonic() - started < 3.0
    assert failed.value.cause == "GeminiTimeout"
    assert "within 0.3 s (1 attempt)" in failed.value.reason


def test_unreachable_server_is_a_network_failure(brief: Brief) -> None:
    """Nobody listening at base_url gives WriterFailed naming the address."""
    cfg = GeminiConfig(base_url=f"http://127.0.0.1:{free_port()}", timeout_seconds=2, attempts=1)
    with pytest.raises(WriterFailed) as failed:
        GeminiWriter(cfg, api_key=API_KEY).propose(brief)

    assert failed.value.cause == "GeminiNetwork"
    assert "127.0.0.1" in failed.value.reason


@pytest.mark.parametrize("bad_key_status", [400, 403])
def test_bad_key_names_the_key_problem_without_the_key(brief: Brief, caplog: pytest.LogCaptureFixture,
                                                       bad_key_status: int) -> None:
    """A rejected key (Google echoes it back) gives WriterFailed about the key, the key itself nowhere."""
    caplog.set_level(logging.DEBUG)
    with (FakeGemini(bad_key_status=bad_key_status) as fake, capture_logs() as logs,
          pytest.raises(WriterFailed) as failed):
        writer_for(fake, api_key=WRONG_KEY).propose(brief)

    exc = failed.value
    assert exc.cause == "GeminiKey"
    assert "API key" in exc.reason and "GOOGLE_API_KEY" in exc.hint
    assert exc.__cause__ is None and exc.__suppress_context__
    for shown in (str(exc), exc.reason, exc.hint, repr(logs), caplog.text):
        assert WRONG_KEY not in shown
    assert len(fake.generate_calls()) == 1  # a 400/403 is not retried


def test_no_key_fails_without_a_request(fake: FakeGemini, brief: Brief) -> None:
    """Without a key the writer says how to set one and sends nothing."""
    with pytest.raises(WriterFailed) as failed:
        writer_for(fake, api_key="").propose(brief)

    assert failed.value.cause == "GeminiNoKey"
    assert failed.value.reason.startswith("no Gemini API key: set GOOGLE_API_KEY")
    assert fake.calls == []


def test_missing_song_fails_without_a_request(fake: FakeGemini, brief: Brief, tmp_path: Path) -> None:
    """A song that is gone is a local problem, not a network one, and nothing is sent."""
    with pytest.raises(WriterFailed) as failed:
        writer_for(fake).propose(dataclasses.replace(brief, song=tmp_path / "gone.mp3"))

    assert failed.value.cause == "GeminiInput" and "gone.mp3" in failed.value.reason
    assert fake.calls == []


def test_unknown_format_fails_without_a_request(fake: FakeGemini, brief: Brief, tmp_path: Path) -> None:
    """A song type Gemini does not take fails before any request."""
    song = tmp_path / "song.wma"
    song.write_bytes(b"\0" * 100)
    with pytest.raises(WriterFailed) as failed:
        writer_for(fake).propose(dataclasses.replace(brief, song=song))

    assert failed.value.cause == "GeminiInput" and ".wma" in failed.value.reason
    assert fake.calls == []


def test_tokens_used_are_logged_per_song(fake: FakeGemini, brief: Brief) -> None:
    """One gemini.usage event per song adds up the tokens of every call."""
    fake.script(text("nope"), good_plan())
    with capture_logs() as logs:
        writer_for(fake).propose(brief)

    [usage] = [e for e in logs if e["event"] == "gemini.usage"]
    assert usage["calls"] == 2 and usage["song"] == brief.song.name
    assert usage["prompt"] == sum(u["promptTokenCount"] for u in fake.usage)
    assert usage["output"] == sum(u["candidatesTokenCount"] for u in fake.usage)
    assert usage["total"] == sum(u["totalTokenCount"] for u in fake.usage)


# -- the prompt --------------------------------------------------------------------------


def test_brief_text_is_compact_and_complete(brief: Brief) -> None:
    """The prompt has the tempo, sections, theme and every local segment, but no list of beat times."""
    prompt = brief_text(brief)

    assert f"{brief.analysis.tempo:.1f} BPM" in prompt
    assert all(f"S{i} " in prompt for i in range(len(brief.analysis.sections)))
    assert brief.negative in prompt and brief.subjects[0] in prompt
    assert all(f"#{s.index} " in prompt for s in brief.segments)
    assert f"{brief.analysis.beats[5]:.2f}" not in prompt
    assert "attached song" not in prompt
    assert "attached song" in brief_text(brief, audio_attached=True)


# -- the key -----------------------------------------------------------------------------


def test_api_key_lookup_order(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """The configured key wins over GOOGLE_API_KEY in the environment, which wins over .env."""
    assert settings.config_file is not None
    assert api_key_for(settings) == ""
    (settings.config_file.parent / ".env").write_text("GOOGLE_API_KEY=from-dotenv\n", encoding="utf-8")
    assert api_key_for(settings) == "from-dotenv"
    monkeypatch.setenv("GOOGLE_API_KEY", "from-environment")
    assert api_key_for(settings) == "from-environment"
    settings.gemini = GeminiConfig(api_key=SecretStr("from-config"))
    assert api_key_for(settings) == "from-config"
    assert make_gemini_writer(settings).propose  # built without a request


def test_read_dotenv_takes_what_people_write(tmp_path: Path) -> None:
    """A byte-order mark, export, quotes, comments and blank lines are all understood."""
    env = tmp_path / ".env"
    env.write_text('\ufeff# secrets\nexport GOOGLE_API_KEY="quoted key"\n\nOTHER = plain # note\nX=\'a=b\'\n',
                   encoding="utf-8")
    assert read_dotenv(env) == {"GOOGLE_API_KEY": "quoted key", "OTHER": "plain", "X": "a=b"}
    assert read_dotenv(tmp_path / "missing") == {}


# -- doctor ------------------------------------------------------------------------------


def test_doctor_ok(fake: FakeGemini, settings: Settings) -> None:
    """With a good key the doctor names the model and where the key came from."""
    settings.analysis.writer = "gemini"
    settings.gemini = GeminiConfig(base_url=fake.base_url, api_key=SecretStr(API_KEY))
    [check] = doctor_checks(settings)

    assert check.ok and "gemini-2.5-flash" in check.detail and "api_key" in check.detail
    assert fake.calls[0].path == f"/{API_VERSION}/models/gemini-2.5-flash"


def test_doctor_bad_key(fake: FakeGemini, settings: Settings) -> None:
    """A rejected key is reported as such, without the key."""
    settings.analysis.fallback = ["gemini", "theme"]
    settings.gemini = GeminiConfig(base_url=fake.base_url, api_key=SecretStr(WRONG_KEY))
    [check] = doctor_checks(settings)

    assert not check.ok and "API key" in check.detail and WRONG_KEY not in check.detail


def test_doctor_unknown_model(fake: FakeGemini, settings: Settings) -> None:
    """A model Google does not know is named."""
    settings.analysis.writer = "gemini"
    settings.gemini = GeminiConfig(base_url=fake.base_url, api_key=SecretStr(API_KEY), model="gemini-9-ultra")
    [check] = doctor_checks(settings)

    assert not check.ok and "gemini-9-ultra" in check.detail


def test_doctor_missing_key_and_unused(fake: FakeGemini, settings: Settings) -> None:
    """No key is reported without a request; a setup without Gemini has no Gemini check."""
    assert list(doctor_checks(settings)) == []
    settings.analysis.writer = "gemini"
    settings.gemini = GeminiConfig(base_url=fake.base_url)
    [check] = doctor_checks(settings)

    assert not check.ok and "no API key" in check.detail and "GOOGLE_API_KEY" in check.detail
    assert fake.calls == []
