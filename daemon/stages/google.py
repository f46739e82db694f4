"""Google's backends for the stages: the key, the backends built once per daemon, the estimate.

How this works: ``GoogleBackends.open(settings)`` builds one route, one
ledger and (as configured) the ``gemini`` image backend and the ``veo`` video
backend, shared by every run, so the limit on concurrent Veo operations and
the caps hold across runs. The key is ``[google] api_key``, else
GOOGLE_API_KEY / GEMINI_API_KEY from the environment or the ``.env`` beside
``tandava.toml`` (the same places the Gemini writer looks).

``write_estimate`` gives a run its estimate before its first paid job: its
images when the image backend is ``gemini`` (segments × candidates) and its
clips when the video backend is ``veo`` (the timeline's clips, each at the
shortest Veo duration that covers it). It is written again if the plan
changes, never after a paid job of that kind has been sent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from daemon.backends.google.costs import (
    Ledger,
    Line,
    estimate_clips,
    estimate_images,
    read_cost,
    veo_seconds,
)
from daemon.backends.google.costs import (
    write_estimate as write_cost_estimate,
)
from daemon.config import Settings
from daemon.music.plan import Segment

log = structlog.get_logger("tandava.google")

if TYPE_CHECKING:
    from daemon.backends.google.client import Route
    from daemon.backends.google.images import GeminiImageBackend
    from daemon.backends.google.veo import VeoBackend

KEY_NAMES = ("GOOGLE_API_KEY", "GEMINI_API_KEY")


def google_key(settings: Settings) -> str:
    """The Google key from settings, the environment or ``.env``; "" when there is none."""
    import os

    from daemon.writers.gemini import read_dotenv

    configured = settings.google.api_key.get_secret_value().strip()
    if configured:
        return configured
    for name in KEY_NAMES:
        if os.environ.get(name, "").strip():
            return os.environ[name].strip()
    env_file = (settings.config_file.parent if settings.config_file else Path.cwd()) / ".env"
    values = read_dotenv(env_file)
    return next((values[n].strip() for n in KEY_NAMES if values.get(n, "").strip()), "")


def uses_google(settings: Settings) -> bool:
    return settings.images.backend == "gemini" or settings.clips.backend == "veo"


def google_route(settings: Settings) -> Route:
    from daemon.backends.google.client import Route

    return Route(settings.google, google_key(settings))


@dataclass
class GoogleBackends:
    """The route, the ledger and the two backends of one daemon."""

    route: Route
    ledger: Ledger
    image: GeminiImageBackend | None = None
    video: VeoBackend | None = None

    @classmethod
    def open(cls, settings: Settings) -> GoogleBackends:
        from daemon.backends.google.images import GeminiImageBackend
        from daemon.backends.google.veo import VeoBackend
        from daemon.video.media import find_ffmpeg

        route = google_route(settings)
        ledger = Ledger(settings.paths.state_root, settings.google)
        made = cls(route, ledger)
        if settings.images.backend == "gemini":
            made.image = GeminiImageBackend(route, ledger)
        if settings.clips.backend == "veo":
            made.video = VeoBackend(route, ledger, ffmpeg=find_ffmpeg(settings.assembly.ffmpeg),
                                    fps=settings.video.fps)
        return made

    def close(self) -> None:
        """Stop the image workers and end the shared HTTP client (the daemon is stopping)."""
        if self.image is not None:
            self.image.close()
        self.route.close()


def open_google(settings: Settings) -> GoogleBackends | None:
    """Google's backends when one is configured, else None."""
    return GoogleBackends.open(settings) if uses_google(settings) else None


def plan_lines(settings: Settings, segments: list[Segment]) -> list[Line]:
    """The estimate lines of a run with these segments under these settings."""
    lines: list[Line] = []
    cfg = settings.google
    if settings.images.backend == "gemini":
        lines.append(estimate_images(cfg, len(segments) * settings.images.candidates))
    if settings.clips.backend == "veo":
        from daemon.backends.google.veo import MAX_SECONDS
        from daemon.video.timeline import plan_timeline

        fps = settings.video.fps
        timeline = plan_timeline(settings, segments, MAX_SECONDS * fps, shortest=True)
        lines.append(estimate_clips(cfg, [veo_seconds(c.frames, fps) for c in timeline.clips]))
    return lines


def write_estimate(settings: Settings, run_dir: Path, segments: list[Segment]) -> None:
    """Record the run's estimate unless paid work of that kind has already been sent."""
    if not uses_google(settings):
        return
    sent = {str(e.get("kind")) for e in (read_cost(run_dir).get("entries") or {}).values()}
    lines = [line for line in plan_lines(settings, segments)
             if {"images": "image", "clips": "clip"}[line.what] not in sent]
    if lines:
        write_cost_estimate(run_dir, *lines)


# Words that Veo's filters often read as violence or harm in a mythological prompt.
_HARSH = ("blood", "bloody", "kill", "killing", "weapon", "trident", "destroy", "destruction", "burning",
          "fire", "flames", "rage", "wrath", "skull", "skulls", "war", "battle", "fight", "dead", "death")


def prompt_rewriter(settings: Settings) -> Callable[[str, str], str]:
    """How a refused clip's prompt is rewritten: by Gemini when it writes the prompts (a writer in
    ``[analysis]``), with ``gentle_prompt`` when Gemini cannot answer; else ``gentle_prompt``."""
    if "gemini" not in (settings.analysis.writer, *settings.analysis.fallback):
        return gentle_prompt
    from daemon.writers.brief import WriterFailed
    from daemon.writers.gemini import api_key_for, rewrite_prompt

    def rewrite(prompt: str, reason: str) -> str:
        try:
            return rewrite_prompt(settings.gemini, api_key_for(settings), prompt, reason)
        except WriterFailed as exc:
            log.warning("rewrite.fell_back", cause=exc.cause)
            return gentle_prompt(prompt, reason)

    return rewrite


def gentle_prompt(prompt: str, reason: str) -> str:
    """A motion prompt rewritten after a safety refusal: harsh words dropped, the scene made calm.

    The render stage takes any ``rewrite(prompt, reason)``; a writer that can
    rephrase (Gemini) may be passed instead. This one needs no network.
    """
    kept = [w for w in prompt.split() if w.strip(",.;:!").lower() not in _HARSH]
    return ("A calm, peaceful, non-violent artistic scene, gentle slow motion: " + " ".join(kept)).strip()
