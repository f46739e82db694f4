"""The commented ``tandava.toml`` that ``tandava init`` writes, generated from the settings model.

How this works: ``sample_config`` walks ``daemon.config.Settings``: one TOML
table per section, one line per key with its default, then a comment from
``NOTES`` (or the field's ``description``). So a key added to the model is in
the sample the moment it exists, at its real default; only its one-line note
is written by hand, and a test fails, naming the key, until it has one. Keys
without a default value to show (secrets, optional paths and URLs, optional
sub-sections such as ``[comfy.managed]``) are written commented out, with an
example where ``EXAMPLES`` has one.
"""

from __future__ import annotations

import json
import types
from collections.abc import Iterator
from pathlib import Path, PurePath
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo

from daemon.config import Settings

HEADER = """\
# Tandava configuration. Every key is optional; the values shown are the defaults.
# Precedence (highest first): TANDAVA_* environment variables, .env beside this
# file (for secrets), this file, built-in defaults. Nested keys in the
# environment use "__", e.g. TANDAVA_WATCH__POLLING=always.
# Relative paths resolve against this file's folder.
"""

# A note above a section's table, for what its keys do not say.
SECTION_NOTES: dict[str, str] = {
    "gemini": "The Gemini prompt writer. Its key: GOOGLE_API_KEY in .env beside this file, or in the environment.",
    "ollama": "The Ollama prompt writer: a local model.",
    "comfy": "ComfyUI servers and the workflows sent to them.",
    "comfy.managed": "A ComfyUI that Tandava launches, watches and restarts (optional).",
    "telegram": "The Telegram approval bot. Its token: TANDAVA_TELEGRAM__TOKEN=… in .env beside this file.",
    "web": "The control panel, served while `tandava run` runs.",
    "retention": "What old runs keep; `tandava clean --dry-run` previews it.",
    "api": "The HTTP API, served by the panel under /api/v1 with its host, port and token rule.",
    "google": "Google's models as backends (gemini images, veo clips): prices, caps and the route. "
              "The key: GOOGLE_API_KEY in .env beside this file.",
}

# One line per key: what it does, and its choices.
NOTES: dict[str, str] = {
    "paths.inbox": "drop songs here (.mp3 .wav .flac .ogg .m4a); may be an SMB/NFS share",
    "paths.state_root": "run folders live here, one directory per state",
    "paths.logs": "JSON-lines log files, rotated",
    "paths.themes": "extra prompt themes (*.toml) beside the built-in shiva and neutral",
    "watch.stable_seconds": "a file has arrived when its size and mtime hold this long",
    "watch.rescan_seconds": "full rescan of the inbox, because events get lost",
    "watch.poll_seconds": "polling interval on network shares",
    "watch.polling": "auto (poll on SMB/CIFS/NFS), always or never",
    "analysis.max_song_seconds": "longer songs are refused before decoding",
    "analysis.min_song_seconds": "shorter songs are refused",
    "analysis.sample_rate": "the analysis rate (Hz)",
    "analysis.writer": "who writes the prompts: theme (offline), gemini (listens to the song) or ollama",
    "analysis.fallback": "tried in order when the writer fails (network, quota, invalid output)",
    "analysis.theme": "shiva or neutral, or a theme file of your own",
    "analysis.seed": "same seed, same prompts",
    "analysis.segments": '"dynamic" (from length and sections) or a fixed number',
    "video.width": "Wan 2.1 480p",
    "video.height": "Wan 2.1 480p",
    "video.fps": "Wan 2.1's native rate",
    "video.clip_frames": "Wan 2.1 makes 4k+1 frames; 81 at 16 fps is 5.06 s",
    "images.backend": "storyboard (labelled placeholder frames), folder (your photos) or comfyui (Flux)",
    "images.candidates": "candidate images per segment",
    "images.folder": "photos for the folder backend; default: a folder named like the song in the inbox",
    "images.max_rounds": "rounds of new candidates when every candidate of a segment is rejected",
    "images.qc_attempts": "new seeds for a black, flat or duplicate ComfyUI image before the run fails",
    "clips.backend": "kenburns (a slow camera move over each image) or comfyui (Wan 2.1 image-to-video)",
    "clips.qc_attempts": "new seeds for a black, frozen or flashing ComfyUI clip before the run fails",
    "clips.max_slowdown": "how far a clip may be slowed to fill its segment before a chain is used",
    "assembly.transition": "none, fade or crossfade, at section changes",
    "assembly.transition_seconds": "length of a transition",
    "assembly.crf": "H.264 quality (lower is better and bigger)",
    "assembly.preset": "lean (fast, tuned veryfast), or an x264 preset: ultrafast … slow",
    "assembly.audio_bitrate": "AAC bitrate of the song in the video",
    "assembly.exports": 'add "mov" (MJPEG for VJ tools) and/or "vertical" (9:16)',
    "assembly.ffmpeg": "a system ffmpeg instead of the bundled one",
    "approval.mode": "manual (a person decides) or auto (the first candidate nobody rejected)",
    "comfy.servers": 'ComfyUI URLs, one per GPU or machine, e.g. ["http://127.0.0.1:8188"]',
    "comfy.workflows": "your own API-format workflows + mappings; default: the shipped ones",
    "comfy.image_workflow": "the workflow that makes candidate images",
    "comfy.video_workflow": "the workflow that makes clips; or wan21_i2v_kijai (ComfyUI-WanVideoWrapper)",
    "comfy.vram_margin_gb": "free VRAM kept above a workflow's need before a job is sent",
    "comfy.request_timeout_seconds": "one HTTP request to a server",
    "comfy.health_timeout_seconds": "/system_stats slower than this: the server is hung",
    "comfy.silence_seconds": "no event this long while our job runs: the server is hung",
    "comfy.ollama_url": "unload this Ollama's models when VRAM is short",
    "comfy.managed.folder": "the ComfyUI folder, holding main.py",
    "comfy.managed.python": "the Python that runs it; default: the one running Tandava",
    "comfy.managed.args": "extra arguments for main.py",
    "comfy.managed.host": "the address it listens on",
    "comfy.managed.port": "its port",
    "comfy.managed.log_file": "ComfyUI's own output; default: <logs>/comfyui.log",
    "comfy.managed.start_timeout_seconds": "how long it may take to answer after a launch",
    "gemini.model": "the Gemini model that writes the prompts",
    "gemini.api_key": "better in .env as GOOGLE_API_KEY: never in a file you share",
    "gemini.base_url": "another endpoint (a proxy); empty: Google's",
    "gemini.timeout_seconds": "one request",
    "gemini.attempts": "tries on 408/429/5xx before the next writer takes over",
    "gemini.inline_max_mb": "larger songs go through the Files API",
    "ollama.url": "where Ollama answers",
    "ollama.model": "the model; `ollama pull` it first",
    "ollama.timeout_seconds": "one request",
    "telegram.enabled": "send candidates to Telegram and take decisions from it",
    "telegram.token": "from @BotFather; better in .env as TANDAVA_TELEGRAM__TOKEN",
    "telegram.chat_id": "the chat candidates go to: your user id (ask @userinfobot) for a private chat",
    "telegram.allowed_users": "user ids who may decide; anyone else's taps are refused and logged",
    "telegram.base_url": "the Bot API endpoint, ending in /bot; a self-hosted Bot API server goes here",
    "telegram.reminder_hours": "remind when a song has waited this long for a decision (0: never)",
    "telegram.messages_per_second": "Telegram allows about one message a second per chat",
    "web.enabled": "serve the panel while the daemon runs",
    "web.host": "127.0.0.1: this machine only; 0.0.0.0 needs a token",
    "web.port": "the panel is at http://<host>:<port>",
    "web.token": "required off loopback; better in .env as TANDAVA_WEB__TOKEN",
    "engine.cpu_workers": "stage jobs at once",
    "engine.gpu_runs": "runs with jobs in the ComfyUI queue at once",
    "engine.stall_minutes": "a stage without progress this long is reported as stalled",
    "engine.attempts": "tries of a stage on transient errors before the run fails",
    "engine.backoff_initial_seconds": "first wait before a retry; doubles, with jitter",
    "engine.backoff_max_seconds": "longest wait before a retry",
    "engine.tick_seconds": "how often the engine looks for work",
    "clips.veo_mode": "veo: chain (each clip from the last frame of the one before) or interpolate "
                      "(to the next segment's image)",
    "clips.fallback": "a clip a safety filter refuses twice becomes: kenburns (of its image) or none (the run fails)",
    "google.route": "gemini-api (an API key; images only) or vertex (a project; images and Veo)",
    "google.api_key": "GOOGLE_API_KEY in .env or the environment; never logged",
    "google.project": "the Google Cloud project (vertex route)",
    "google.location": "the Vertex AI region",
    "google.credentials_file": "a service-account JSON file; default: Application Default Credentials",
    "google.base_url": "another endpoint (a proxy); empty: Google's",
    "google.image_model": "the Gemini image model for candidates",
    "google.image_size": "1K, 2K or 4K",
    "google.references": "images sent with every request, so a character looks the same throughout",
    "google.veo_model": "the Veo model for clips (standard, fast or lite)",
    "google.resolution": "720p or 1080p",
    "google.max_usd_per_run": "a job that would pass this is not sent; the run waits (`tandava spend --approve`)",
    "google.max_usd_per_day": "the same, per day across runs",
    "google.max_concurrent_operations": "Veo operations running at once",
    "google.max_concurrent_images": "image requests at once",
    "google.poll_first_seconds": "first look at a Veo operation after this",
    "google.poll_every_seconds": "then every this often",
    "google.timeout_seconds": "one request's time limit",
    "google.attempts": "tries of a request (429s wait for Google's RetryInfo)",
    "google.keep_hours": "Google keeps outputs this long; an older operation is sent again only within the caps",
    "google.prices_date": "when the price table below was read from Google's pricing page",
    "google.prices": "USD per image and per second of video, per model (update from Google's pricing page)",
    "api.max_upload_mb": "uploads larger than this (song and photos together) are refused with 413",
    "api.webhooks": "URLs POSTed a signed JSON event on every state change of a run",
    "api.webhook_secret": "signs webhook bodies (HMAC-SHA256): TANDAVA_API__WEBHOOK_SECRET in .env; never logged",
    "api.webhook_backoff_initial_seconds": "a receiver that is down is tried again after this, doubling",
    "api.webhook_backoff_max_seconds": "up to this",
    "api.watch_seconds": "how often the store is looked at for events to tell (SSE and webhooks)",
    "retention.intermediates_days": "candidates and clips of runs rendered this long ago are removed (0: never)",
    "retention.duplicates_days": "files in <inbox>/duplicates/ older than this are removed (0: never)",
    "log.level": "DEBUG, INFO, WARNING or ERROR",
    "log.console": "auto (pretty on a terminal, JSON otherwise and under journald), json or pretty",
    "log.max_bytes": "roll the log at this size",
    "log.backups": "rolled logs kept",
    "log.max_age_days": "also roll a log this old (0: by size only)",
}

# What a key without a default to show would look like, as TOML.
EXAMPLES: dict[str, str] = {
    "paths.themes": '"themes"',
    "images.folder": '"photos"',
    "assembly.ffmpeg": '"/usr/bin/ffmpeg"',
    "comfy.workflows": '"workflows"',
    "comfy.ollama_url": '"http://127.0.0.1:11434"',
    "comfy.managed.folder": '"C:/ComfyUI"',
    "comfy.managed.python": '"C:/ComfyUI/venv/Scripts/python.exe"',
    "comfy.managed.args": '["--disable-api-nodes"]',
    "comfy.managed.log_file": '"logs/comfyui.log"',
    "telegram.chat_id": "123456789",
    "telegram.token": '"123456:ABC…"',
    "web.token": '"a-long-random-string"',
    "gemini.api_key": '"…"',
    "google.api_key": '"…"',
    "api.webhook_secret": '"a-long-random-string"',
    "google.credentials_file": '"service-account.json"',
    "google.references": '["refs/shiva.png"]',
}

# Where the comment starts, so the notes line up.
_NOTE_COLUMN = 27


def sample_config(model: type[BaseModel] = Settings) -> str:
    """A commented ``tandava.toml`` with every key of the settings model at its default."""
    lines = HEADER.splitlines()
    for name, field in model.model_fields.items():
        if field.exclude:  # config_file: where the settings came from, not a setting
            continue
        section = _section_model(field)
        if section is None:
            lines += ["", _line(name, field, name, commented=False)]
        else:
            lines += _table(name, section, commented=False)
    return "\n".join(lines) + "\n"


def model_fields(model: type[BaseModel] = Settings, prefix: str = "") -> Iterator[tuple[str, FieldInfo]]:
    """Every key of the settings model, dotted (``comfy.managed.port``), with its field."""
    for name, field in model.model_fields.items():
        if field.exclude:
            continue
        section = _section_model(field)
        if section is None:
            yield prefix + name, field
        else:
            yield from model_fields(section, f"{prefix}{name}.")


def model_keys(model: type[BaseModel] = Settings) -> list[str]:
    """Every key of the settings model, dotted."""
    return [key for key, _ in model_fields(model)]


def note_for(key: str, field: FieldInfo) -> str:
    """The comment on a key: from ``NOTES``, else the field's own description."""
    return NOTES.get(key) or field.description or ""


def _table(name: str, model: type[BaseModel], *, commented: bool) -> list[str]:
    mark = "# " if commented else ""
    lines = [""]
    if name in SECTION_NOTES:
        lines.append(f"# {SECTION_NOTES[name]}")
    lines.append(f"{mark}[{name}]")
    subsections = []
    for key, field in model.model_fields.items():
        section = _section_model(field)
        if section is not None:
            # An optional sub-section (default None) is an example to uncomment as a whole.
            subsections.append((f"{name}.{key}", section, commented or field.default is None))
        else:
            lines.append(_line(key, field, f"{name}.{key}", commented=commented))
    for sub, section, sub_commented in subsections:
        lines += _table(sub, section, commented=sub_commented)
    return lines


def _line(key: str, field: FieldInfo, dotted: str, *, commented: bool) -> str:
    value = None if field.is_required() else field.get_default(call_default_factory=True)
    shown = _toml(value)
    if shown is None:  # nothing to show as a default: an example, commented out
        shown, commented = EXAMPLES.get(dotted, '""'), True
    text = f"{'# ' if commented else ''}{key} = {shown}"
    note = note_for(dotted, field)
    return f"{text.ljust(_NOTE_COLUMN - 1)} # {note}" if note else text


def _toml(value: Any) -> str | None:
    """A default as TOML, or None when there is none to show (unset, a secret)."""
    if value is None or isinstance(value, SecretStr):
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, PurePath):
        return json.dumps(Path(value).as_posix(), ensure_ascii=False)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        items = [_toml(item) for item in value]
        return "[" + ", ".join(item for item in items if item is not None) + "]"
    if isinstance(value, BaseModel):
        return _toml(value.model_dump())
    if isinstance(value, dict):  # an inline table ({"veo-3.1-…" = {second = 0.4}, …})
        pairs = [(json.dumps(str(k), ensure_ascii=False), _toml(v)) for k, v in value.items()]
        return "{ " + ", ".join(f"{k} = {v}" for k, v in pairs if v is not None) + " }"
    raise TypeError(f"no TOML form for the default {value!r}: give it an example in daemon/host/sample.py")


def _section_model(field: FieldInfo) -> type[BaseModel] | None:
    """The model of a section (``PathsConfig``), also when optional (``ManagedComfyConfig | None``)."""
    annotation = field.annotation
    if get_origin(annotation) in (Union, types.UnionType):
        models = [a for a in get_args(annotation) if a is not type(None)]
        annotation = models[0] if len(models) == 1 else None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None
