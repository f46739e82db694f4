"""Webhooks: every state change of a run POSTed, signed, to each configured URL, at least once, in order.

How this works: the outbox *is* the event log (``events.EventLog``, a file
written before anyone is told) plus one cursor per URL in
``<state root>/.api/webhooks/``: the id of the last event that URL answered
2xx to. One thread per URL sends the state events after its cursor, oldest
first, and moves the cursor only after a 2xx, so a restart resumes where it
stopped and a receiver that is down for an hour gets every event when it is
back, in order (an event is retried until delivered; the next waits behind
it). Retries back off from ``api.webhook_backoff_initial_seconds``, doubling
up to ``api.webhook_backoff_max_seconds``, with jitter. An event may arrive
twice (the receiver answered, the cursor was not yet saved): the body's
``id`` (also ``X-Tandava-Event-Id``) is for deduplication.

The body is the event's JSON; ``X-Tandava-Signature: sha256=<hex>`` is the
HMAC-SHA256 of those exact bytes with ``api.webhook_secret``. The secret and
the URL's path and query (which may hold a token) never reach the log.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import random
import threading
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import requests
import structlog

from daemon.channels.web.api.events import EventLog
from daemon.channels.web.api.models import Event
from daemon.runs import fsutil

log = structlog.get_logger("tandava.api")

WEBHOOKS_DIR = "webhooks"
SIGNATURE_HEADER = "X-Tandava-Signature"
# The events a webhook is told about: a run appeared, a run changed state.
TOLD = frozenset({"run.created", "run.state"})
_TIMEOUT_SECONDS = 10.0

# What sends one body: (url, body, headers) -> HTTP status; raises OSError/requests errors when down.
Poster = Callable[[str, bytes, dict[str, str]], int]


def sign(secret: str, body: bytes) -> str:
    """The signature header's value for ``body``."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, header: str) -> bool:
    """Whether ``header`` is the signature of ``body`` (what a receiver checks)."""
    return hmac.compare_digest(sign(secret, body), header)


def shown(url: str) -> str:
    """A URL as the log shows it: scheme, host and port only."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}"


def _post(session: requests.Session) -> Poster:
    def post(url: str, body: bytes, headers: dict[str, str]) -> int:
        with session.post(url, data=body, headers=headers, timeout=_TIMEOUT_SECONDS) as response:
            return response.status_code

    return post


class Webhook:
    """Delivers the event log's state events to one URL (see the module docstring)."""

    def __init__(self, url: str, secret: str, events: EventLog, folder: Path, *,
                 backoff_initial: float, backoff_max: float, poster: Poster | None = None) -> None:
        self.url, self.secret, self.events = url, secret, events
        self.cursor_path = folder / f"{hashlib.sha256(url.encode('utf-8')).hexdigest()[:16]}.json"
        self.backoff_initial, self.backoff_max = backoff_initial, backoff_max
        self._session = requests.Session() if poster is None else None
        self.poster = poster or _post(self._session)  # type: ignore[arg-type]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        folder.mkdir(parents=True, exist_ok=True)
        try:
            self.delivered = int(fsutil.read_json(self.cursor_path)["delivered"])
        except (OSError, ValueError, KeyError, TypeError):
            # A webhook added now is told what happens from now on.
            self.delivered = events.last_id
            self._save()

    def _save(self) -> None:
        fsutil.atomic_write_json(self.cursor_path, {"url": shown(self.url), "delivered": self.delivered})

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="tandava-webhook", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with self.events.changed:
            self.events.changed.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._session is not None:
            self._session.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            pending = self.events.since(self.delivered, limit=100)
            if not pending:
                with self.events.changed:
                    if self.events.last_id <= self.delivered and not self._stop.is_set():
                        self.events.changed.wait(1.0)
                continue
            for event in pending:
                if self._stop.is_set():
                    return
                if event.type in TOLD and not self._deliver(event):
                    return
                self.delivered = event.id
                self._save()

    def _deliver(self, event: Event) -> bool:
        """Send ``event`` until the receiver takes it; False when told to stop first."""
        body = event.model_dump_json().encode("utf-8")
        headers = {"Content-Type": "application/json", "User-Agent": "tandava-webhook",
                   "X-Tandava-Event": event.type, "X-Tandava-Event-Id": str(event.id),
                   SIGNATURE_HEADER: sign(self.secret, body)}
        attempt = 0
        while not self._stop.is_set():
            attempt += 1
            status, error = 0, ""
            try:
                status = self.poster(self.url, body, headers)
            except (OSError, requests.RequestException) as exc:
                error = type(exc).__name__
            if 200 <= status < 300:
                log.info("webhook.delivered", url=shown(self.url), event_id=event.id, attempt=attempt)
                return True
            wait = min(self.backoff_max, self.backoff_initial * 2 ** (attempt - 1))
            wait *= random.uniform(0.9, 1.1)
            log.warning("webhook.failed", url=shown(self.url), event_id=event.id, attempt=attempt,
                        status=status or None, error=error or None, retry_in=round(wait, 2),
                        hint="the receiver is down or refused it; it is sent again until it answers 2xx")
            self._stop.wait(wait)
        return False


class Webhooks:
    """Every configured webhook's delivery thread."""

    def __init__(self, urls: list[str], secret: str, events: EventLog, *, backoff_initial: float,
                 backoff_max: float, poster: Poster | None = None) -> None:
        folder = events.path.parent / WEBHOOKS_DIR
        self.hooks = [Webhook(url, secret, events, folder, backoff_initial=backoff_initial,
                              backoff_max=backoff_max, poster=poster) for url in urls]

    def floor(self) -> int:
        """The lowest event id a webhook has yet to be told (the event log keeps every one after it)."""
        return min((hook.delivered for hook in self.hooks), default=2**62)

    def start(self) -> None:
        for hook in self.hooks:
            hook.start()

    def stop(self) -> None:
        for hook in self.hooks:
            with contextlib.suppress(Exception):
                hook.stop()
