"""What ``tandava doctor`` checks for Google's backends.

How this works: ``doctor_checks(route, settings)`` yields one ``Check`` per
question: credentials present, the route Veo will use (google-genai 3.x sends
Veo only on Vertex AI), each configured model reachable (one cheap
``models.get``, no retries, a short timeout), the price table covering those
models, and the caps with today's spend. The key is never in a detail.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

from daemon.backends.google.client import SDK_FAILURES, Route, translate
from daemon.backends.google.costs import day_total
from daemon.checks import Check
from daemon.config import Settings

DOCTOR_TIMEOUT_SECONDS = 20.0


def doctor_checks(route: Route, settings: Settings) -> Iterator[Check]:
    images = settings.images.backend == "gemini"
    clips = settings.clips.backend == "veo"
    if not (images or clips):
        return
    cfg = settings.google
    missing = route.missing()
    yield Check("google credentials", not missing, missing or route.describe())
    if clips:
        if route.vertex:
            yield Check("veo route", True, f"Veo {cfg.veo_model} through {route.describe()}")
        else:
            yield Check("veo route", False,
                        "google-genai 3.x sends Veo only on Vertex AI, and [google] route is \"gemini-api\": "
                        "set route = \"vertex\" with project (and Application Default Credentials or "
                        "credentials_file), or a Vertex express-mode key")
    models = [m for m, used in ((cfg.image_model, images), (cfg.veo_model, clips)) if used]
    if not missing:
        yield from _reachable(route, models)
    unpriced = [m for m in models if (p := cfg.prices.get(m)) is None or (p.image <= 0 and p.second <= 0)]
    if unpriced:
        yield Check("google prices", False,
                    f"[google.prices] has no price for {', '.join(unpriced)}: add e.g. "
                    f'[google.prices."{unpriced[0]}"] second = 0.12 (ai.google.dev/gemini-api/docs/pricing)')
    else:
        listed = ", ".join(f"{m} ${cfg.prices[m].image or cfg.prices[m].second:g}/"
                           f"{'image' if cfg.prices[m].image else 's'}" for m in models)
        yield Check("google prices", True, f"{listed} (prices of {cfg.prices_date})")
    day = datetime.now(UTC).strftime("%Y-%m-%d")
    spent = day_total(settings.paths.state_root, day)
    ok = cfg.max_usd_per_run > 0 and cfg.max_usd_per_day > 0
    yield Check("google caps", ok,
                f"at most ${cfg.max_usd_per_run:.2f} per run and ${cfg.max_usd_per_day:.2f} per day; "
                f"spent today ${spent:.2f}" + ("" if ok else ": a cap of 0 lets nothing through, raise it"))


def _reachable(route: Route, models: list[str]) -> Iterator[Check]:
    for model in models:
        client = route.client(timeout_seconds=DOCTOR_TIMEOUT_SECONDS)
        try:
            client.models.get(model=model)
        except SDK_FAILURES as exc:
            failed = translate(exc, route=route, what="models.get", model=model)
            yield Check(f"google model {model}", False, f"{failed.reason}; {failed.hint}")
            continue
        finally:
            client.close()
        yield Check(f"google model {model}", True, f"reachable on {route.describe()}")
