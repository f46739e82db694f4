"""Configuration: one TOML file, ``TANDAVA_…`` environment variables, and a ``.env`` file.

Precedence, highest first: environment variables, then ``.env`` (beside the
config file; meant for secrets), then ``tandava.toml``, then the defaults in
``daemon.defaults``. Nested keys use ``__`` in the environment:
``TANDAVA_WATCH__POLLING=always`` sets ``[watch] polling``.

Relative paths resolve against the config file's folder (the working folder
when there is no file), so a service started in ``System32`` or ``/`` finds
the same inbox a person configured. Unknown keys are errors: a typo in a key
would otherwise be silently ignored.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from daemon import defaults
from daemon.errors import ConfigError

CONFIG_NAME = "tandava.toml"
WriterName = Literal["theme", "gemini", "ollama"]
ENV_CONFIG = "TANDAVA_CONFIG"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PathsConfig(_Section):
    inbox: Path = Path("inbox")
    state_root: Path = Path("state")
    logs: Path = Path("logs")
    themes: Path | None = None


class WatchConfig(_Section):
    stable_seconds: float = Field(defaults.STABLE_SECONDS, gt=0)
    rescan_seconds: float = Field(defaults.RESCAN_SECONDS, gt=0)
    poll_seconds: float = Field(defaults.POLL_SECONDS, gt=0)
    polling: Literal["auto", "always", "never"] = "auto"


class AnalysisConfig(_Section):
    max_song_seconds: float = Field(defaults.MAX_SONG_SECONDS, gt=0)
    min_song_seconds: float = Field(defaults.MIN_SONG_SECONDS, ge=0)
    sample_rate: int = Field(defaults.ANALYSIS_SAMPLE_RATE, ge=8000, le=48000)
    # Who writes the prompts; when it fails (network, quota, invalid output), the
    # next in ``fallback`` does, and the run records why.
    writer: WriterName = "theme"
    fallback: list[WriterName] = Field(default_factory=lambda: list[WriterName](["theme"]))
    theme: str = defaults.THEME
    seed: int = defaults.SEED
    segments: Literal["dynamic"] | int = "dynamic"


class VideoConfig(_Section):
    width: int = Field(defaults.VIDEO_WIDTH, ge=64, le=4096)
    height: int = Field(defaults.VIDEO_HEIGHT, ge=64, le=4096)
    fps: int = Field(defaults.CLIP_FPS, ge=1, le=120)
    clip_frames: int = Field(defaults.CLIP_FRAMES, ge=1)

    @property
    def clip_seconds(self) -> float:
        return self.clip_frames / self.fps


class ImagesConfig(_Section):
    backend: Literal["storyboard", "folder", "comfyui", "gemini"] = "storyboard"
    candidates: int = Field(defaults.CANDIDATES, ge=1, le=16)
    # Photos for the folder backend; default: a folder named like the song beside it in the inbox.
    folder: Path | None = None
    max_rounds: int = Field(defaults.MAX_ROUNDS, ge=1)
    # New seeds tried for a candidate that fails image QC (black, flat, duplicate) before the run fails.
    qc_attempts: int = Field(defaults.QC_ATTEMPTS, ge=1, le=10)


class ClipsConfig(_Section):
    backend: Literal["kenburns", "comfyui", "veo"] = "kenburns"
    # veo: "interpolate" ends each clip on the next segment's approved image; "chain" does not.
    veo_mode: Literal["chain", "interpolate"] = "chain"
    # A clip a backend refuses (Veo's safety filter, after one rewrite): a Ken Burns clip of the
    # approved image ("kenburns"), or the run fails ("none").
    fallback: Literal["kenburns", "none"] = "kenburns"
    # New seeds tried for a clip that fails clip QC (black, frozen, flashing) before the run fails.
    qc_attempts: int = Field(defaults.QC_ATTEMPTS, ge=1, le=10)
    # How far a clip may be slowed to fill its segment before a chain of clips is used.
    max_slowdown: float = Field(defaults.MAX_SLOWDOWN, ge=1.0, le=4.0)


class ManagedComfyConfig(_Section):
    """A ComfyUI that Tandava launches and owns (optional)."""

    # The ComfyUI folder (holding main.py).
    folder: Path
    # The Python that runs it; default: the one running Tandava.
    python: Path | None = None
    args: list[str] = Field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = Field(defaults.COMFY_PORT, ge=1, le=65535)
    # ComfyUI's own output goes here; default: <logs>/comfyui.log.
    log_file: Path | None = None
    start_timeout_seconds: float = Field(defaults.COMFY_START_TIMEOUT_SECONDS, gt=0)


class ComfyConfig(_Section):
    """ComfyUI servers, the workflows sent to them, and how they are watched."""

    # One URL per server (several GPUs or machines); a managed server is added to these.
    servers: list[str] = Field(default_factory=list)
    # Folder of API-format workflows with their mappings; default: the workflows shipped with Tandava.
    workflows: Path | None = None
    image_workflow: str = defaults.IMAGE_WORKFLOW
    video_workflow: str = defaults.VIDEO_WORKFLOW
    # Free VRAM kept in reserve above what a workflow needs.
    vram_margin_gb: float = Field(defaults.VRAM_MARGIN_GB, ge=0)
    request_timeout_seconds: float = Field(defaults.COMFY_REQUEST_TIMEOUT_SECONDS, gt=0)
    # A server whose /system_stats does not answer in this time is hung.
    health_timeout_seconds: float = Field(defaults.COMFY_HEALTH_TIMEOUT_SECONDS, gt=0)
    # No websocket event for this long while our job runs: the server is hung.
    silence_seconds: float = Field(defaults.COMFY_SILENCE_SECONDS, gt=0)
    # A local Ollama (e.g. "http://127.0.0.1:11434") whose models are unloaded when VRAM is short.
    ollama_url: str | None = None
    managed: ManagedComfyConfig | None = None


class GeminiConfig(_Section):
    """The Gemini prompt writer: it listens to the song and proposes the plan's prompts."""

    model: str = defaults.GEMINI_MODEL
    # From GOOGLE_API_KEY (environment or .env beside tandava.toml), or TANDAVA_GEMINI__API_KEY.
    api_key: SecretStr = SecretStr("")
    # Another endpoint (a proxy, or a test double); empty: Google's.
    base_url: str = ""
    timeout_seconds: float = Field(defaults.GEMINI_TIMEOUT_SECONDS, gt=0)
    attempts: int = Field(defaults.GEMINI_ATTEMPTS, ge=1, le=10)
    # Songs up to this size go inline with the request; larger ones through the Files API.
    inline_max_mb: float = Field(defaults.GEMINI_INLINE_MAX_MB, gt=0, le=20)


class GooglePrice(_Section):
    """What a model costs in USD: per image, or per second of video."""

    image: float = Field(0.0, ge=0)
    second: float = Field(0.0, ge=0)


class GoogleConfig(_Section):
    """Google's models as backends: Gemini image candidates and Veo clips, with prices and caps."""

    # "gemini-api" (an API key; images only with google-genai 3.x) or "vertex" (a project and
    # location with Application Default Credentials or credentials_file, or an express-mode key).
    route: Literal["gemini-api", "vertex"] = "gemini-api"
    # From GOOGLE_API_KEY (environment or .env beside tandava.toml), or TANDAVA_GOOGLE__API_KEY.
    api_key: SecretStr = SecretStr("")
    project: str = ""
    location: str = defaults.GOOGLE_LOCATION
    credentials_file: Path | None = None
    # Another endpoint (a proxy, or a test double); empty: Google's.
    base_url: str = ""
    image_model: str = defaults.GOOGLE_IMAGE_MODEL
    image_size: Literal["1K", "2K", "4K"] = "1K"
    # Images sent with every image request so a character looks the same in every segment.
    references: list[Path] = Field(default_factory=list)
    veo_model: str = defaults.GOOGLE_VEO_MODEL
    resolution: Literal["720p", "1080p"] = "720p"
    max_usd_per_run: float = Field(defaults.GOOGLE_MAX_USD_PER_RUN, ge=0)
    max_usd_per_day: float = Field(defaults.GOOGLE_MAX_USD_PER_DAY, ge=0)
    max_concurrent_operations: int = Field(defaults.GOOGLE_MAX_OPERATIONS, ge=1, le=100)
    max_concurrent_images: int = Field(defaults.GOOGLE_MAX_IMAGE_REQUESTS, ge=1, le=32)
    poll_first_seconds: float = Field(defaults.GOOGLE_POLL_FIRST_SECONDS, ge=0)
    poll_every_seconds: float = Field(defaults.GOOGLE_POLL_EVERY_SECONDS, gt=0)
    timeout_seconds: float = Field(defaults.GOOGLE_TIMEOUT_SECONDS, gt=0)
    attempts: int = Field(defaults.GOOGLE_ATTEMPTS, ge=1, le=20)
    keep_hours: float = Field(defaults.GOOGLE_KEEP_HOURS, gt=0)
    prices_date: str = defaults.GOOGLE_PRICES_DATE
    prices: dict[str, GooglePrice] = Field(
        default_factory=lambda: {m: GooglePrice(**p) for m, p in defaults.GOOGLE_PRICES.items()})


class OllamaConfig(_Section):
    """The Ollama prompt writer: a local model fed with the analysis as text."""

    url: str = defaults.OLLAMA_URL
    model: str = defaults.OLLAMA_MODEL
    timeout_seconds: float = Field(defaults.OLLAMA_TIMEOUT_SECONDS, gt=0)


class TelegramConfig(_Section):
    """The Telegram approval bot (off until a token and a chat are set)."""

    enabled: bool = False
    # From the environment (TANDAVA_TELEGRAM__TOKEN) or .env; never written to a log.
    token: SecretStr = SecretStr("")
    # The chat candidates are sent to (your user id for a private chat with the bot).
    chat_id: int | None = None
    # Telegram user ids allowed to decide; anyone else's taps are refused and logged.
    allowed_users: list[int] = Field(default_factory=list)
    # The Bot API endpoint; a self-hosted Bot API server (or a test double) goes here.
    base_url: str = defaults.TELEGRAM_BASE_URL
    # A reminder when a run has waited this long for a decision (0: never).
    reminder_hours: float = Field(defaults.TELEGRAM_REMINDER_HOURS, ge=0)
    # Telegram allows about one message a second per chat.
    messages_per_second: float = Field(defaults.TELEGRAM_MESSAGES_PER_SECOND, gt=0)

    @field_validator("base_url")
    @classmethod
    def _ends_in_bot(cls, value: str) -> str:
        # The library appends the token to this URL as it is: without "/bot" the token
        # is glued onto the host or port ("…:8081123:ABC"), and every request fails.
        if not value.startswith(("http://", "https://")) or not value.endswith("/bot"):
            raise ValueError(f"an http(s) URL ending in /bot, such as {defaults.TELEGRAM_BASE_URL} "
                             "or http://127.0.0.1:8081/bot for a self-hosted Bot API server")
        return value


class WebConfig(_Section):
    """The local web control panel."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(defaults.WEB_PORT, ge=0, le=65535)
    # Required when host is not a loopback address: the panel refuses to start without it.
    token: SecretStr = SecretStr("")


class ApiConfig(_Section):
    """The HTTP API (served by the web panel under /api/v1, with its host, port and token)."""

    # Uploads larger than this (song and photos together) are refused with 413.
    max_upload_mb: float = Field(defaults.API_MAX_UPLOAD_MB, gt=0)
    # URLs POSTed a signed JSON event on every state change of a run.
    webhooks: list[str] = Field(default_factory=list)
    # Signs webhook bodies (HMAC-SHA256); from TANDAVA_API__WEBHOOK_SECRET or .env, never logged.
    webhook_secret: SecretStr = SecretStr("")
    # A receiver that is down is tried again after this, doubling up to the maximum.
    webhook_backoff_initial_seconds: float = Field(defaults.WEBHOOK_BACKOFF_INITIAL_SECONDS, gt=0)
    webhook_backoff_max_seconds: float = Field(defaults.WEBHOOK_BACKOFF_MAX_SECONDS, gt=0)
    # How often the store is looked at for changes to tell (SSE events and webhooks).
    watch_seconds: float = Field(defaults.API_WATCH_SECONDS, gt=0)


class AssemblyConfig(_Section):
    transition: Literal["none", "fade", "crossfade"] = "crossfade"
    transition_seconds: float = Field(defaults.TRANSITION_SECONDS, ge=0, le=5)
    crf: int = Field(defaults.CRF, ge=0, le=51)
    preset: Literal["lean", "ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow"] = "lean"
    audio_bitrate: str = "192k"
    exports: list[Literal["mov", "vertical"]] = Field(default_factory=list)
    # A system ffmpeg instead of the one installed with Tandava (imageio-ffmpeg).
    ffmpeg: Path | None = None


class ApprovalConfig(_Section):
    mode: Literal["auto", "manual"] = "manual"


class EngineConfig(_Section):
    cpu_workers: int = Field(defaults.CPU_WORKERS, ge=1, le=64)
    # Runs whose GPU jobs are in the ComfyUI pool at once: enough for every
    # server to have work and for jobs of one model to be grouped across runs.
    gpu_runs: int = Field(defaults.GPU_RUNS, ge=1, le=64)
    stall_minutes: float = Field(defaults.STALL_MINUTES, gt=0)
    attempts: int = Field(defaults.STAGE_ATTEMPTS, ge=1)
    backoff_initial_seconds: float = Field(defaults.BACKOFF_INITIAL_SECONDS, ge=0)
    backoff_max_seconds: float = Field(defaults.BACKOFF_MAX_SECONDS, ge=0)
    tick_seconds: float = Field(defaults.ENGINE_TICK_SECONDS, gt=0)


class RetentionConfig(_Section):
    """What old runs keep: 0 days keeps everything forever."""

    # Candidates and clips of runs rendered this long ago are removed; the video,
    # its exports, thumbnail, contact sheet, run.json, decisions and the song stay.
    intermediates_days: float = Field(defaults.INTERMEDIATES_DAYS, ge=0)
    # Files in <inbox>/duplicates/ older than this are removed (a run holds the same song).
    duplicates_days: float = Field(defaults.DUPLICATES_DAYS, ge=0)


class LogConfig(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    console: Literal["auto", "json", "pretty"] = "auto"
    max_bytes: int = Field(defaults.LOG_MAX_BYTES, ge=1024)
    backups: int = Field(defaults.LOG_BACKUPS, ge=0)
    # Also roll a log this many days old (0: by size only).
    max_age_days: int = Field(defaults.LOG_MAX_AGE_DAYS, ge=0)


class Settings(BaseSettings):
    """The effective configuration of one Tandava installation."""

    model_config = SettingsConfigDict(
        env_prefix="TANDAVA_",
        env_nested_delimiter="__",
        env_file_encoding="utf-8",
        extra="forbid",
    )

    paths: PathsConfig = Field(default_factory=PathsConfig)
    watch: WatchConfig = Field(default_factory=WatchConfig)
    analysis: AnalysisConfig = Field(default_factory=AnalysisConfig)
    video: VideoConfig = Field(default_factory=VideoConfig)
    images: ImagesConfig = Field(default_factory=ImagesConfig)
    clips: ClipsConfig = Field(default_factory=ClipsConfig)
    assembly: AssemblyConfig = Field(default_factory=AssemblyConfig)
    approval: ApprovalConfig = Field(default_factory=ApprovalConfig)
    comfy: ComfyConfig = Field(default_factory=ComfyConfig)
    gemini: GeminiConfig = Field(default_factory=GeminiConfig)
    ollama: OllamaConfig = Field(default_factory=OllamaConfig)
    google: GoogleConfig = Field(default_factory=GoogleConfig)
    telegram: TelegramConfig = Field(default_factory=TelegramConfig)
    web: WebConfig = Field(default_factory=WebConfig)
    api: ApiConfig = Field(default_factory=ApiConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    retention: RetentionConfig = Field(default_factory=RetentionConfig)

    # Where the configuration came from; set by load_settings, never by a user.
    config_file: Path | None = Field(default=None, exclude=True)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            _KnownKeysOnly(settings_cls, dotenv_settings),
            TomlConfigSettingsSource(settings_cls),
        )


class _KnownKeysOnly(PydanticBaseSettingsSource):
    """A ``.env`` also holds other programs' secrets (``GOOGLE_API_KEY``); only our keys count."""

    def __init__(self, settings_cls: type[BaseSettings], inner: PydanticBaseSettingsSource) -> None:
        super().__init__(settings_cls)
        self.inner = inner

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self.inner.get_field_value(field, field_name)

    def __call__(self) -> dict[str, Any]:
        return {k: v for k, v in self.inner().items() if k in self.settings_cls.model_fields}


# Where ComfyUI answers when nothing says otherwise: its own default port.
DEFAULT_COMFY_URL = "http://127.0.0.1:8188"


def uses_comfy(settings: Settings) -> bool:
    """Whether images or clips come from ComfyUI (then the daemon opens a server pool)."""
    return settings.images.backend == "comfyui" or settings.clips.backend == "comfyui"


def managed_comfy_url(cfg: ManagedComfyConfig) -> str:
    """Where a managed ComfyUI answers: a server on every address is reached through loopback
    (Windows cannot connect to 0.0.0.0)."""
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(cfg.host, cfg.host)
    return f"http://{f'[{host}]' if ':' in host else host}:{cfg.port}"


def comfy_urls(settings: Settings) -> list[str]:
    """Every ComfyUI URL in use: the managed server first, then ``[comfy] servers``, without repeats."""
    cfg = settings.comfy
    # The same URL the keeper watches: a managed ComfyUI bound to 0.0.0.0 is reached on loopback.
    urls = [managed_comfy_url(cfg.managed)] if cfg.managed is not None else []
    for url in cfg.servers or ([] if urls else [DEFAULT_COMFY_URL]):
        if url.rstrip("/") not in urls:
            urls.append(url.rstrip("/"))
    return urls


def find_config_file(explicit: Path | None = None, *, cwd: Path | None = None) -> Path | None:
    """The config file to use: ``--config``, then ``$TANDAVA_CONFIG``, then ``./tandava.toml``."""
    if explicit is not None:
        return explicit
    from_env = os.environ.get(ENV_CONFIG)
    if from_env:
        return Path(from_env)
    candidate = (cwd or Path.cwd()) / CONFIG_NAME
    return candidate if candidate.is_file() else None


def load_settings(config_file: Path | None = None, *, cwd: Path | None = None) -> Settings:
    """Load, validate and resolve the configuration; raises ConfigError naming the bad key."""
    path = find_config_file(config_file, cwd=cwd)
    if path is not None and not path.is_file():
        raise ConfigError("--config", str(path), "an existing TOML file")
    base = (path.parent if path is not None else (cwd or Path.cwd())).resolve()
    env_file = base / ".env"

    class _Bound(Settings):
        model_config = SettingsConfigDict(toml_file=path, env_file=env_file if env_file.is_file() else None)

    try:
        loaded = _Bound()
    except ValidationError as exc:
        raise _config_error(exc) from None
    except ValueError as exc:  # a TOML syntax error surfaces as tomllib's ValueError
        raise ConfigError(str(path), "(file)", f"valid TOML ({exc})") from None
    settings = Settings.model_construct(**{name: getattr(loaded, name) for name in Settings.model_fields})
    settings.config_file = path.resolve() if path is not None else None
    settings.paths = _resolve_paths(settings.paths, base)
    if settings.images.folder is not None:
        settings.images.folder = _resolve(settings.images.folder, base)
    if settings.comfy.workflows is not None:
        settings.comfy.workflows = _resolve(settings.comfy.workflows, base)
    managed = settings.comfy.managed
    if managed is not None:
        managed.folder = _resolve(managed.folder, base)
        if managed.log_file is not None:
            managed.log_file = _resolve(managed.log_file, base)
    google = settings.google
    google.references = [_resolve(ref, base) for ref in google.references]
    if google.credentials_file is not None:
        google.credentials_file = _resolve(google.credentials_file, base)
    if settings.assembly.ffmpeg is not None and len(settings.assembly.ffmpeg.parts) > 1:
        settings.assembly.ffmpeg = _resolve(settings.assembly.ffmpeg, base)
    return settings


def _resolve(value: Path, base: Path) -> Path:
    value = value.expanduser()
    return value if value.is_absolute() else base / value


def _resolve_paths(paths: PathsConfig, base: Path) -> PathsConfig:
    resolved: dict[str, Any] = {}
    for name in PathsConfig.model_fields:
        value = getattr(paths, name)
        resolved[name] = _resolve(value, base) if isinstance(value, Path) else value
    return PathsConfig(**resolved)


def _config_error(exc: ValidationError) -> ConfigError:
    first = exc.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "(root)"
    # Our own validators word the expectation themselves; pydantic prefixes "Value error, ".
    ours = first.get("ctx", {}).get("error") if first["type"] == "value_error" else None
    expected = str(ours) if ours is not None else first["msg"]
    more = exc.error_count() - 1
    if more:
        expected += f" (and {more} more problem{'s' if more > 1 else ''})"
    return ConfigError(key, first.get("input"), expected)


def masked(settings: Settings) -> dict[str, Any]:
    """The effective configuration as plain data, with every secret replaced by ``***``."""

    def walk(value: Any) -> Any:
        if isinstance(value, SecretStr):
            return "***" if value.get_secret_value() else ""
        if isinstance(value, BaseModel):
            return {name: walk(getattr(value, name)) for name in type(value).model_fields}
        if isinstance(value, Path):
            return str(value)
        return value

    data = walk(settings)
    data.pop("config_file", None)
    return data
