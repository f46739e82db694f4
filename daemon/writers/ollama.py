"""The Ollama prompt writer: a local model, fed the song's analysis as text, proposes the prompts.

How this works: ``OllamaWriter.propose`` sends one non-streaming
``POST /api/chat`` with a system message (what to write), a user message
(``brief_text``: tempo, meter, sections, the local segment plan, the theme),
``format`` set to the ``PlanIdeas`` JSON schema (Ollama's structured output
constrains the model to it) and the run's seed. The answer's
``message.content`` is validated with pydantic; invalid output is asked for
again (the error is shown to the model and the seed moves on), and after
``ATTEMPTS`` the writer gives up with ``WriterFailed``, which the chain
(``writers.write_plan``) records before the next writer takes over.

Foreign errors are translated here: a refused connection is "not running:
start it with `ollama serve`", a 404 is a model that was never pulled (with
the ``ollama pull`` command), a read timeout is ``[ollama] timeout_seconds``.

Ollama keeps a model in VRAM for five minutes after a request. On the
machine ComfyUI runs on that memory is what the next image needs, so the
writer unloads its model when done (``unload``: ``keep_alive: 0``) and VRAM
admission is told about this Ollama too (``ollama_to_unload``), which unloads
whatever it holds when a GPU job is short of memory.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import requests
import structlog
from pydantic import ValidationError

from daemon.checks import Check
from daemon.config import OllamaConfig, Settings, comfy_urls, uses_comfy
from daemon.writers.brief import Brief, PlanIdeas, WriterFailed, brief_text, writer_chain

# Addresses that mean "this machine": an Ollama there shares the GPU with a local ComfyUI.
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})

log = structlog.get_logger("tandava.ollama")

# One call and two retries: a model that breaks the schema three times with the
# error shown to it will not get it right on a fourth.
ATTEMPTS = 3
# Some variety between songs, but little enough that an 8-12B model keeps to the schema.
TEMPERATURE = 0.7
# Ollama's default context (2048-4096 tokens by version) silently truncates a
# long song's brief; ask for what the prompt and the answer need, within bounds
# a 12B model's KV cache fits beside nothing else on a 24 GB card.
CONTEXT_MIN_TOKENS, CONTEXT_MAX_TOKENS = 8192, 32768
# A token is ~4 characters of English; 3 leaves room for numbers and the schema.
_CHARS_PER_TOKEN = 3
# What one segment's answer costs: two prompts, a mood, a title and the JSON around them.
_ANSWER_TOKENS_PER_SEGMENT = 160
# Probes (doctor, unload) need a quick answer or none.
_PROBE_TIMEOUT_SECONDS = 10.0

SYSTEM = """\
You are the director of a music video. You get a song's analysis (tempo, meter, \
sections with their loudness) and a plan that cuts the song into segments on its \
beats, each one short video clip. For every segment write:
- visual_prompt: one still image for a text-to-image model: subject, setting, light, \
colour and composition in concrete words, 20 to 60 words; no camera moves, no text in the picture.
- motion_prompt: how that image moves for an image-to-video model: the camera move and \
the subject's motion in one sentence, calm for quiet segments, bold for loud ones.
- mood: one of calm, steady, building, intense, euphoric, fading.
- theme: a title of a few words for what the segment shows.
Keep each segment's index, start and end as given, one entry per segment, in order. \
Follow the theme's description and subjects, let sections that share a label look \
alike, and never show what the theme says to avoid. Answer with JSON only."""


class OllamaWriter:
    """Prompts from a model on an Ollama server (``[ollama] url`` and ``model``)."""

    name = "ollama"

    def __init__(self, cfg: OllamaConfig, *, unload_after: bool = False) -> None:
        self.cfg = cfg
        self.url = cfg.url.rstrip("/")
        # Set when ComfyUI shares the GPU: the model leaves VRAM as soon as the plan is written.
        self.unload_after = unload_after

    def propose(self, brief: Brief) -> PlanIdeas:
        """The model's ideas for the song; raises ``WriterFailed`` when it gives none usable."""
        user = brief_text(brief)
        messages: list[dict[str, str]] = [{"role": "system", "content": SYSTEM},
                                          {"role": "user", "content": user}]
        started = time.monotonic()
        problem = ""
        try:
            for attempt in range(1, ATTEMPTS + 1):
                content = self._chat(messages, seed=brief.seed + attempt - 1,
                                     context=context_tokens(SYSTEM + user, len(brief.segments)))
                try:
                    ideas = PlanIdeas.model_validate_json(content)
                except ValidationError as exc:
                    problem = _first_problem(exc)
                    log.warning("ollama.invalid_output", model=self.cfg.model, attempt=attempt, problem=problem)
                    messages = [*messages[:2], {"role": "assistant", "content": content[:4000]},
                                {"role": "user", "content": f"That answer is not valid ({problem}). Answer "
                                 "again with JSON only, matching the schema, one entry per segment."}]
                    continue
                log.info("ollama.proposed", model=self.cfg.model, attempt=attempt, ideas=len(ideas.segments),
                         seconds=round(time.monotonic() - started, 1))
                return ideas
        finally:
            if self.unload_after:
                unload(self.cfg)
        raise WriterFailed(
            f"Ollama model '{self.cfg.model}' gave no valid plan in {ATTEMPTS} attempts (last: {problem})",
            "a larger model keeps to the schema better: set [ollama] model (see `ollama list`)",
            cause="InvalidOutput",
        )

    def _chat(self, messages: list[dict[str, str]], *, seed: int, context: int) -> str:
        body = {
            "model": self.cfg.model,
            "messages": messages,
            "format": PlanIdeas.model_json_schema(),
            "stream": False,
            "options": {"seed": seed, "temperature": TEMPERATURE, "num_ctx": context},
        }
        answer = _request(self.cfg, "POST", "/api/chat", body, timeout=self.cfg.timeout_seconds)
        try:
            content = json.loads(answer.text)["message"]["content"]
        except (ValueError, KeyError, TypeError):
            return answer.text  # not Ollama's envelope: validation reports it as invalid output
        return content if isinstance(content, str) else json.dumps(content)


def context_tokens(prompt: str, segments: int) -> int:
    """The context window (``num_ctx``) a prompt and its answer need, a power of two within bounds."""
    need = len(prompt) // _CHARS_PER_TOKEN + 1024 + segments * _ANSWER_TOKENS_PER_SEGMENT
    size = CONTEXT_MIN_TOKENS
    while size < need and size < CONTEXT_MAX_TOKENS:
        size *= 2
    return size


def unload(cfg: OllamaConfig) -> bool:
    """Ask Ollama to drop ``cfg.model`` from memory now (``keep_alive: 0``); False when it cannot."""
    try:
        _request(cfg, "POST", "/api/generate", {"model": cfg.model, "keep_alive": 0},
                 timeout=_PROBE_TIMEOUT_SECONDS)
    except WriterFailed as exc:
        log.warning("ollama.unload_failed", model=cfg.model, reason=exc.reason)
        return False
    log.info("ollama.unloaded", model=cfg.model)
    return True


def list_models(cfg: OllamaConfig, *, timeout: float = _PROBE_TIMEOUT_SECONDS) -> list[str]:
    """The models Ollama has pulled (``GET /api/tags``); raises ``WriterFailed`` when it does not answer."""
    answer = _request(cfg, "GET", "/api/tags", None, timeout=timeout)
    try:
        models = answer.json()["models"]
        return [str(m.get("model") or m["name"]) for m in models]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise WriterFailed(f"{cfg.url} does not answer like Ollama (/api/tags: {exc})",
                           "set [ollama] url to the Ollama server") from exc


def has_model(models: list[str], wanted: str) -> bool:
    """Whether ``wanted`` is among ``models``; a name without a tag means ``:latest``, as in Ollama."""
    return _tagged(wanted) in {_tagged(m) for m in models}


def _tagged(name: str) -> str:
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def _request(cfg: OllamaConfig, method: str, path: str, body: dict[str, Any] | None, *,
             timeout: float) -> requests.Response:
    """One call to Ollama, its errors translated into ``WriterFailed`` with the fix."""
    url = cfg.url.rstrip("/")
    try:
        answer = requests.request(method, url + path, json=body, timeout=timeout)
    except requests.ConnectionError as exc:
        raise WriterFailed(f"Ollama at {url} is not running: start it with `ollama serve`",
                           "start Ollama with `ollama serve`, or set [ollama] url to where it runs",
                           cause="OllamaDown") from exc
    except requests.Timeout as exc:
        raise WriterFailed(f"Ollama at {url} gave no answer within {timeout:.0f} s (model '{cfg.model}')",
                           "raise [ollama] timeout_seconds, or choose a smaller model",
                           cause="OllamaTimeout") from exc
    except requests.RequestException as exc:
        raise WriterFailed(f"Ollama at {url} could not be asked: {exc}", cause="OllamaError") from exc
    if answer.status_code == 200:
        return answer
    error = _error_text(answer)
    if answer.status_code == 404 and "not found" in error:
        raise WriterFailed(f"Ollama at {url} has no model '{cfg.model}': pull it with `ollama pull {cfg.model}`",
                           f"run `ollama pull {cfg.model}`, or set [ollama] model to one `ollama list` shows",
                           cause="ModelMissing")
    raise WriterFailed(f"Ollama at {url} answered HTTP {answer.status_code} to {path}: {error}",
                       cause="OllamaError")


def _error_text(answer: requests.Response) -> str:
    try:
        return str(answer.json().get("error") or answer.text)[:300]
    except (ValueError, AttributeError):
        return answer.text[:300]


def _first_problem(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "the answer"
    more = exc.error_count() - 1
    return f"{where}: {first['msg']}" + (f" (and {more} more)" if more else "")


def writes_for(settings: Settings) -> bool:
    """Whether the Ollama writer is in this installation's writer chain."""
    return "ollama" in writer_chain(settings)


def shares_gpu_with_comfy(settings: Settings) -> bool:
    """Whether Ollama runs on this machine or a ComfyUI server's, so its models hold memory ComfyUI needs."""
    if not uses_comfy(settings):
        return False
    host = urlsplit(settings.ollama.url).hostname
    return host in _LOOPBACK or host in {urlsplit(u).hostname for u in comfy_urls(settings)}


def ollama_to_unload(settings: Settings) -> str | None:
    """The writer's Ollama URL when VRAM admission should unload its models before a GPU job."""
    return settings.ollama.url if writes_for(settings) and shares_gpu_with_comfy(settings) else None


def doctor_checks(settings: Settings) -> Iterator[Check]:
    """When Ollama writes prompts: the server answers, and the model is pulled (else the pull command)."""
    chain = writer_chain(settings)
    if "ollama" not in chain:
        return
    cfg = settings.ollama
    url = cfg.url.rstrip("/")
    after = ", ".join(chain[chain.index("ollama") + 1:])
    try:
        models = list_models(cfg, timeout=min(cfg.timeout_seconds, _PROBE_TIMEOUT_SECONDS))
    except WriterFailed as exc:
        yield Check("ollama", False, f"{exc.reason} (until then plans come from: {after})")
        return
    yield Check("ollama", True, f"{url} answers ({len(models)} model{'s' if len(models) != 1 else ''} pulled)")
    if has_model(models, cfg.model):
        yield Check("ollama model", True, cfg.model)
    else:
        pulled = f" (it has: {', '.join(models[:8])})" if models else ""
        yield Check("ollama model", False, f"Ollama at {url} has no model '{cfg.model}': pull it with "
                    f"`ollama pull {cfg.model}`{pulled}")
