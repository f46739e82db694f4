"""The Gemini prompt writer: Gemini listens to the song and proposes the plan's prompts.

How this works
--------------
1. The song goes with the request: inline bytes when it is at most
   ``gemini.inline_max_mb``, else through the Files API (a resumable upload,
   then ``files.get`` polled until the file is ACTIVE; FAILED is final). The
   MIME type is always given: the SDK would guess from the name, and a song
   named ``शिव तांडव 🔱.mp3`` must not travel in an HTTP header, so uploads
   send an open file, never a path.
2. With it goes ``brief_text``: the local analysis summarised (tempo, beat
   grid, sections, an energy curve of a few dozen numbers, not thousands of
   beat times), the theme, and the local plan, one line per segment.
3. The answer is asked for as JSON with ``PlanIdeas``' JSON schema
   (``response_json_schema``), and validated here with
   ``PlanIdeas.model_validate_json``: the SDK quietly leaves ``parsed`` empty
   when the model strays. An answer that does not validate is asked for again
   (``gemini.attempts`` in all) with what was wrong, then ``WriterFailed``.
4. Uploaded files are deleted afterwards, on failure too (Google would keep
   them for 48 hours), and the tokens a song used are logged once as
   ``gemini.usage``.

The SDK's defaults are no timeout and no retries; here each HTTP request gets
``gemini.timeout_seconds`` and 408/429/5xx answers, timeouts and refused
connections are retried by the SDK (``HttpRetryOptions``, exponential backoff
from 1 s) up to ``gemini.attempts`` times. The API version is pinned to
``v1beta``: google-genai 3.x defaults to ``v1``, and the Files API and
``responseJsonSchema`` have been served on ``v1beta`` all along.

Every failure leaves as ``WriterFailed`` (the run falls back to the next
writer) with a reason a person understands and a ``cause``:

    GeminiNoKey  GeminiKey  GeminiModel  GeminiQuota  GeminiServer  GeminiTimeout
    GeminiNetwork  GeminiRequest  GeminiFileFailed  GeminiBlocked  GeminiInvalidOutput  GeminiInput

The API key never reaches a message or a log: Google echoes a rejected key
in its error details, so every text taken from the SDK has the key replaced
and goes through ``logs.scrub``, and SDK exceptions are not chained (their
``response`` holds the request with the key header).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import structlog
from google import genai
from google.genai import errors as genai_errors
from google.genai import types
from pydantic import ValidationError

from daemon.checks import Check
from daemon.config import GeminiConfig, Settings
from daemon.logs import MASK, scrub
from daemon.writers.brief import Brief, PlanIdeas, WriterFailed, brief_text

log = structlog.get_logger(__name__)

# Files API and responseJsonSchema: both on v1beta (the SDK's own default is v1).
API_VERSION = "v1beta"
# Request timeout, too many requests, and the server errors worth a second try.
RETRY_STATUS_CODES = [408, 429, 500, 502, 503, 504]
# The MIME types Gemini documents for audio; an .m4a is AAC in an MP4
# container, and audio/aac is the type Gemini lists for it.
AUDIO_MIME_TYPES = {
    ".mp3": "audio/mpeg",
    ".wav": "audio/wav",
    ".flac": "audio/flac",
    ".ogg": "audio/ogg",
    ".oga": "audio/ogg",
    ".m4a": "audio/aac",
    ".aac": "audio/aac",
    ".aiff": "audio/aiff",
    ".aif": "audio/aiff",
}
# Where the key is looked for; GEMINI_API_KEY is the name Google's own docs now use.
KEY_NAMES = ("GOOGLE_API_KEY", "GEMINI_API_KEY")
KEY_HINT = ("put GOOGLE_API_KEY=<your key> in .env beside tandava.toml (a key from "
            "https://aistudio.google.com/apikey), or set it in the environment")
# The doctor only asks whether the key and model are known: a short wait, no retries.
DOCTOR_TIMEOUT_SECONDS = 20.0
# Words in Google's error answers that are about the key, not the request.
_KEY_MARKS = ("API key", "API_KEY", "unregistered callers", "SERVICE_DISABLED", "has not been used in project")
# An SDK message quoted in a reason is cut here.
_QUOTE_CHARS = 300

try:  # the SDK talks through httpx2 when it is installed, else httpx
    import httpx2

    _HTTPX2_ERRORS: tuple[type[Exception], ...] = (httpx2.HTTPError, httpx2.InvalidURL)
except ImportError:  # pragma: no cover - depends on the install
    _HTTPX2_ERRORS = ()

# What the SDK raises besides APIError: transport errors of either HTTP
# library, OSError from sockets, and ValueError/KeyError for an upload the
# server did not finalise, one without an upload URL, or an unreadable answer.
_SDK_FAILURES: tuple[type[Exception], ...] = (
    genai_errors.APIError, httpx.HTTPError, httpx.InvalidURL, *_HTTPX2_ERRORS, OSError, ValueError, KeyError)


class GeminiWriter:
    """Proposes a plan's prompts with Gemini, hearing the song; see the module docstring."""

    name = "gemini"

    def __init__(self, cfg: GeminiConfig, *, api_key: str, poll_seconds: float = 1.0) -> None:
        self.cfg = cfg
        self._api_key = api_key.strip()
        self.poll_seconds = poll_seconds

    def __repr__(self) -> str:  # never the key
        return f"GeminiWriter(model={self.cfg.model!r})"

    def propose(self, brief: Brief) -> PlanIdeas:
        """Gemini's ideas for ``brief``; raises ``WriterFailed`` with the reason when there are none."""
        if not self._api_key:
            raise WriterFailed(f"no Gemini API key: set GOOGLE_API_KEY ({KEY_HINT})",
                               KEY_HINT, cause="GeminiNoKey")
        mime = _audio_mime(brief.song)
        try:
            size = brief.song.stat().st_size
            upload = size > self.cfg.inline_max_mb * 1024 * 1024
            data = None if upload else brief.song.read_bytes()
        except OSError as exc:
            raise _unreadable(brief.song, exc) from None
        client = make_client(self.cfg, self._api_key, timeout_seconds=self.cfg.timeout_seconds,
                             attempts=self.cfg.attempts)
        usage = _Usage()
        uploaded: str | None = None
        try:
            if data is None:
                stored = self._upload(client, brief.song, mime)
                uploaded = stored.name
                stored = self._wait_until_active(client, stored)
                if not stored.uri:
                    raise WriterFailed("Gemini's Files API gave the uploaded song no URI",
                                       cause="GeminiFileFailed")
                audio = types.Part.from_uri(file_uri=stored.uri, mime_type=mime)
            else:
                audio = types.Part.from_bytes(data=data, mime_type=mime)
            return self._ask(client, brief, audio, usage)
        except WriterFailed:
            raise
        except _SDK_FAILURES as exc:
            # Not chained: an SDK error's response holds the request, key header included.
            raise sdk_failure(exc, self.cfg, self._api_key) from None
        finally:
            if uploaded is not None:
                self._delete(client, uploaded)
            client.close()
            if usage.calls:
                log.info("gemini.usage", song=brief.song.name, model=self.cfg.model, **usage.fields())

    # -- the song ---------------------------------------------------------------------------

    def _upload(self, client: genai.Client, song: Path, mime: str) -> types.File:
        try:
            fh = song.open("rb")
        except OSError as exc:
            raise _unreadable(song, exc) from None
        with fh:
            stored = client.files.upload(file=fh, config=types.UploadFileConfig(
                mime_type=mime, display_name=song.name))
        if not stored.name:
            raise WriterFailed("Gemini's Files API gave the uploaded song no name", cause="GeminiFileFailed")
        log.info("gemini.uploaded", song=song.name, file=stored.name, bytes=stored.size_bytes)
        return stored

    def _wait_until_active(self, client: genai.Client, stored: types.File) -> types.File:
        """Poll until Gemini has processed the upload; FAILED is final."""
        assert stored.name is not None
        deadline = time.monotonic() + self.cfg.timeout_seconds
        while stored.state != types.FileState.ACTIVE:
            if stored.state == types.FileState.FAILED:
                detail = stored.error.message if stored.error and stored.error.message else "no reason given"
                raise WriterFailed(f"Gemini could not process the uploaded song (file state FAILED: "
                                   f"{safe_text(detail, self._api_key)})",
                                   "check that the song plays; another format (mp3, wav) may go through",
                                   cause="GeminiFileFailed")
            if time.monotonic() > deadline:
                raise WriterFailed(f"Gemini was still processing the uploaded song after "
                                   f"{self.cfg.timeout_seconds:g} s",
                                   "try again later, or raise gemini.timeout_seconds", cause="GeminiTimeout")
            time.sleep(self.poll_seconds)
            stored = client.files.get(name=stored.name)
        return stored

    def _delete(self, client: genai.Client, name: str) -> None:
        try:
            client.files.delete(name=name)
        except _SDK_FAILURES as exc:
            # Google deletes it by itself after 48 hours; not worth failing a run over.
            log.warning("gemini.delete_failed", file=name, error=safe_text(exc, self._api_key))

    # -- the question -----------------------------------------------------------------------

    def _ask(self, client: genai.Client, brief: Brief, audio: types.Part, usage: _Usage) -> PlanIdeas:
        prompt = brief_text(brief, audio_attached=True)
        config = types.GenerateContentConfig(
            response_mime_type="application/json",
            response_json_schema=PlanIdeas.model_json_schema(),
            seed=brief.seed,
        )
        problem = ""
        for attempt in range(1, self.cfg.attempts + 1):
            text = prompt if not problem else (
                f"{prompt}\n\nYour previous answer was not usable: {problem}. "
                "Answer again with JSON that matches the schema exactly.")
            contents = types.Content(role="user", parts=[audio, types.Part.from_text(text=text)])
            response = client.models.generate_content(model=self.cfg.model, contents=contents, config=config)
            usage.add(response.usage_metadata)
            blocked = response.prompt_feedback.block_reason if response.prompt_feedback else None
            if blocked:
                raise WriterFailed(f"Gemini refused the request ({_name(blocked)})",
                                   "the theme's words may trip Gemini's safety filters; try another theme",
                                   cause="GeminiBlocked")
            ideas, problem = _validate(response, len(brief.segments))
            if ideas is not None:
                return ideas
            log.warning("gemini.invalid_output", song=brief.song.name, attempt=attempt,
                        attempts=self.cfg.attempts, problem=problem)
        raise WriterFailed(
            f"Gemini's answer did not match the plan schema in {_attempts(self.cfg.attempts)} "
            f"(last: {problem})",
            "raise gemini.attempts or try another gemini.model; the next writer takes over meanwhile",
            cause="GeminiInvalidOutput")


# A rewritten motion prompt longer than this is not a prompt.
_REWRITE_MAX_CHARS = 600


def rewrite_prompt(cfg: GeminiConfig, api_key: str, prompt: str, reason: str) -> str:
    """Gemini rewrites a video prompt a safety filter refused (``reason``) into one that keeps the
    motion and mood; raises ``WriterFailed`` when there is no usable answer."""
    if not api_key:
        raise WriterFailed("no Gemini API key to rewrite the prompt", KEY_HINT, cause="GeminiNoKey")
    ask = ("A video model's safety filter refused this motion prompt for a music video.\n"
           f"Prompt: {prompt}\nFilter said: {reason[:400]}\n"
           "Rewrite it so it keeps the camera motion, the mood and the subject but nothing a safety filter "
           "could read as violence, harm or explicit content. Answer with the new prompt only, one line.")
    client = make_client(cfg, api_key, timeout_seconds=cfg.timeout_seconds, attempts=cfg.attempts)
    try:
        response = client.models.generate_content(model=cfg.model, contents=ask)
    except _SDK_FAILURES as exc:
        raise sdk_failure(exc, cfg, api_key) from None
    finally:
        client.close()
    text = " ".join((response.text or "").split())
    if not text or len(text) > _REWRITE_MAX_CHARS:
        raise WriterFailed("Gemini gave no usable rewrite of the prompt", "", cause="GeminiInvalidOutput")
    return text


def safe_text(exc: BaseException | str, api_key: str) -> str:
    """Text from the SDK, safe for a message or a log: the key replaced, tokens scrubbed, cut short."""
    text = exc if isinstance(exc, str) else (str(exc) or type(exc).__name__)
    if api_key:
        text = text.replace(api_key, MASK)
    text = scrub(text)
    return text if len(text) <= _QUOTE_CHARS else text[: _QUOTE_CHARS - 1] + "…"


def sdk_failure(exc: Exception, cfg: GeminiConfig, api_key: str) -> WriterFailed:
    """Turn what the SDK raised into a WriterFailed a person can act on."""
    if isinstance(exc, genai_errors.APIError):
        return _api_failure(exc, cfg, safe_text(exc.message or str(exc.details), api_key))
    if _is_timeout(exc):
        return WriterFailed(
            f"Gemini did not answer within {cfg.timeout_seconds:g} s ({_attempts(cfg.attempts)})",
            "raise gemini.timeout_seconds, or try a faster gemini.model", cause="GeminiTimeout")
    detail = safe_text(f"{type(exc).__name__}: {exc}", api_key)
    if isinstance(exc, ValueError | KeyError):
        # An upload the server did not finalise, or an answer the SDK could not read.
        return WriterFailed(f"Gemini's answer broke off or could not be read ({detail})", "try again later",
                            cause="GeminiServer")
    where = scrub(cfg.base_url) or "generativelanguage.googleapis.com"
    return WriterFailed(f"cannot reach Gemini at {where} ({detail})",
                        "check the network, a proxy, or gemini.base_url", cause="GeminiNetwork")


def _api_failure(exc: genai_errors.APIError, cfg: GeminiConfig, message: str) -> WriterFailed:
    said = f"{exc.code} {exc.status or ''}".strip() + f": {message}"
    if _is_key_problem(exc):
        return WriterFailed(f"Google rejected the Gemini API key ({said})", KEY_HINT, cause="GeminiKey")
    if exc.code == 404:
        return WriterFailed(f"Gemini has no model {cfg.model!r} ({said})",
                            "set [gemini] model to one your key can use, e.g. gemini-2.5-flash",
                            cause="GeminiModel")
    if exc.code == 429:
        return WriterFailed(f"Gemini quota exhausted, still after {_attempts(cfg.attempts)} ({said})",
                            "wait for the quota to refill, or enable billing on the key's project",
                            cause="GeminiQuota")
    if exc.code >= 500 or exc.code == 408:
        return WriterFailed(f"Gemini failed on its side, still after {_attempts(cfg.attempts)} ({said})",
                            "try again later", cause="GeminiServer")
    return WriterFailed(f"Gemini rejected the request ({said})",
                        "if it names a size limit, lower gemini.inline_max_mb so the song is uploaded",
                        cause="GeminiRequest")


def _is_key_problem(exc: genai_errors.APIError) -> bool:
    # Google answers a wrong key with 400 INVALID_ARGUMENT, reason API_KEY_INVALID;
    # a missing, leaked or restricted one, or a project without the API, with
    # 401/403. A 403 for a file we may not read is not about the key.
    if exc.code == 401:
        return True
    text = f"{exc.message} {exc.details}"
    return exc.code in (400, 403) and any(mark in text for mark in _KEY_MARKS)


def _is_timeout(exc: BaseException) -> bool:
    # httpx and httpx2 each have their own TimeoutException; both are transport errors.
    return isinstance(exc, TimeoutError) or any(
        cls.__name__ == "TimeoutException" for cls in type(exc).__mro__)


def _name(value: Any) -> str:
    return str(getattr(value, "value", value))


def _validate(response: types.GenerateContentResponse, count: int) -> tuple[PlanIdeas | None, str]:
    """The ideas in ``response``, or None and what is wrong with them."""
    candidate = response.candidates[0] if response.candidates else None
    finish = _name(candidate.finish_reason) if candidate and candidate.finish_reason else ""
    cut = f" (the answer stopped early: {finish})" if finish and finish != "STOP" else ""
    text = response.text
    if not text:
        return None, f"the answer held no text{cut}"
    try:
        ideas = PlanIdeas.model_validate_json(text)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        more = exc.error_count() - 1
        also = f" and {more} more problem{'s' if more > 1 else ''}" if more else ""
        return None, f"{where + ': ' if where else ''}{first['msg']}{also}{cut}"
    if not any(idea.index < count for idea in ideas.segments):
        return None, f"no idea's index names a local segment (0 to {count - 1})"
    return ideas, ""


@dataclass
class _Usage:
    """Tokens one song used, over every call."""

    calls: int = 0
    prompt: int = 0
    output: int = 0
    thoughts: int = 0
    total: int = 0

    def add(self, meta: types.GenerateContentResponseUsageMetadata | None) -> None:
        self.calls += 1
        if meta is not None:
            self.prompt += meta.prompt_token_count or 0
            self.output += meta.candidates_token_count or 0
            self.thoughts += meta.thoughts_token_count or 0
            self.total += meta.total_token_count or 0

    def fields(self) -> dict[str, int]:
        # Key names avoid "token": logs.redact masks any key containing it.
        return {"calls": self.calls, "prompt": self.prompt, "output": self.output,
                "thoughts": self.thoughts, "total": self.total}


def _unreadable(song: Path, exc: OSError) -> WriterFailed:
    return WriterFailed(f"cannot read the song {song} ({exc.strerror or exc})",
                        "check that the file is still there and readable", cause="GeminiInput")


def _attempts(count: int) -> str:
    return f"{count} attempt{'s' if count != 1 else ''}"


def _audio_mime(song: Path) -> str:
    mime = AUDIO_MIME_TYPES.get(song.suffix.lower())
    if mime is None:
        known = " ".join(sorted(AUDIO_MIME_TYPES))
        raise WriterFailed(f"Gemini takes no {song.suffix or 'extensionless'} audio ({song.name})",
                           f"convert the song to one of: {known}", cause="GeminiInput")
    return mime


def make_client(cfg: GeminiConfig, api_key: str, *, timeout_seconds: float, attempts: int) -> genai.Client:
    """A client with a timeout on every request and retries for 408/429/5xx (``attempts`` 1: none)."""
    retry = types.HttpRetryOptions(attempts=attempts, http_status_codes=RETRY_STATUS_CODES) \
        if attempts > 1 else None
    options = types.HttpOptions(
        base_url=cfg.base_url or None,
        api_version=API_VERSION,
        timeout=max(1, math.ceil(timeout_seconds * 1000)),  # milliseconds
        retry_options=retry,
    )
    # vertexai=False: GOOGLE_GENAI_USE_VERTEXAI/ENTERPRISE in the environment would
    # otherwise switch the client to Vertex AI, which has no Files API and no key.
    return genai.Client(vertexai=False, api_key=api_key, http_options=options)


# -- the key -----------------------------------------------------------------------------


def api_key_for(settings: Settings) -> str:
    """The Gemini API key: ``[gemini] api_key``, else GOOGLE_API_KEY from the environment, else from
    the ``.env`` beside the config file; "" when there is none."""
    return _find_key(settings)[0]


def _find_key(settings: Settings) -> tuple[str, str]:
    """The key and where it came from."""
    configured = settings.gemini.api_key.get_secret_value().strip()
    if configured:
        return configured, "[gemini] api_key (or TANDAVA_GEMINI__API_KEY)"
    for name in KEY_NAMES:
        value = os.environ.get(name, "").strip()
        if value:
            return value, f"${name}"
    # As load_settings: the .env beside the config file, or in the working folder without one.
    env_file = (settings.config_file.parent if settings.config_file else Path.cwd()) / ".env"
    values = read_dotenv(env_file)
    for name in KEY_NAMES:
        if values.get(name):
            return values[name], f"{name} in {env_file}"
    return "", ""


def read_dotenv(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines of a ``.env`` file (UTF-8; ``export``, quotes and ``#`` comments allowed)."""
    try:
        # utf-8-sig: Notepad puts a byte-order mark before the first key.
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError):
        return {}
    values: dict[str, str] = {}
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        key = key.removeprefix("export ").strip()
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        values[key] = value
    return values


def make_gemini_writer(settings: Settings) -> GeminiWriter:
    """The Gemini writer for these settings (a missing key fails at ``propose``, without a request)."""
    return GeminiWriter(settings.gemini, api_key=api_key_for(settings))


def doctor_checks(settings: Settings) -> Iterator[Check]:
    """When Gemini writes (or is a fallback): a key is there, Google accepts it, and knows the model."""
    if "gemini" not in (settings.analysis.writer, *settings.analysis.fallback):
        return
    cfg = settings.gemini
    key, source = _find_key(settings)
    if not key:
        yield Check("gemini", False, f"no API key: {KEY_HINT}")
        return
    client = make_client(cfg, key, timeout_seconds=min(cfg.timeout_seconds, DOCTOR_TIMEOUT_SECONDS),
                         attempts=1)
    try:
        model = client.models.get(model=cfg.model)
    except _SDK_FAILURES as exc:
        failed = sdk_failure(exc, cfg.model_copy(update={"attempts": 1}), key)
        yield Check("gemini", False, f"{failed.reason}; {failed.hint}" if failed.hint else failed.reason)
        return
    finally:
        client.close()
    yield Check("gemini", True, f"{cfg.model} ({model.display_name or model.name}), key from {source}")
