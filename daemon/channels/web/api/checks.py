"""``tandava doctor`` for the HTTP API: where it answers, its token rule, and its webhooks.

The API is served by the panel (same host, port and token), so its address
and token rule follow from ``[web]``; webhooks need a secret to be signed.
"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

from daemon.checks import Check
from daemon.config import Settings


def doctor_checks(settings: Settings, url_for: str, loopback: bool) -> Iterator[Check]:
    """The API's checks; ``url_for`` is the panel's URL and ``loopback`` whether it is bound there only."""
    if not settings.web.enabled:
        yield Check("http api", True, "off with the panel (web.enabled = false)")
        return
    token = bool(settings.web.token.get_secret_value())
    if loopback:
        rule = "no token needed on this machine" + (" (one is set, so send it: Authorization: Bearer)"
                                                     if token else "")
    else:
        rule = "every request needs Authorization: Bearer <web.token>"
    yield Check("http api", True, f"{url_for}api/v1 (spec: {url_for}api/v1/openapi.json); {rule}; "
                f"uploads up to {settings.api.max_upload_mb:g} MB")
    hooks = settings.api.webhooks
    if not hooks:
        return
    bad = [u for u in hooks if urlsplit(u).scheme not in ("http", "https") or not urlsplit(u).netloc]
    if bad:
        yield Check("webhooks", False, f"api.webhooks has {len(bad)} URL(s) that are not http(s)://host/…: "
                    "fix them in tandava.toml")
    elif not settings.api.webhook_secret.get_secret_value():
        yield Check("webhooks", False, f"{len(hooks)} webhook(s) but no api.webhook_secret: set "
                    "TANDAVA_API__WEBHOOK_SECRET in .env (python -c \"import secrets; print(secrets.token_hex(32))\"); "
                    "unsigned webhooks are not sent")
    else:
        yield Check("webhooks", True, f"{len(hooks)} webhook(s), signed with HMAC-SHA256 "
                    "(X-Tandava-Signature), retried until delivered")
