"""The route adapter: one ``genai.Client`` for the configured route, and SDK errors made ours.

How this works: ``Route`` holds what a client needs (route, key, project,
location, credentials file) and ``client()`` builds one:

- ``gemini-api``: ``genai.Client(vertexai=False, api_key=...)`` on ``v1beta``.
  google-genai 3.x sends ``generate_content`` here but refuses
  ``generate_videos`` with a ``ValueError`` before any request.
- ``vertex``: ``genai.Client(vertexai=True, project, location, credentials)``
  with the service-account (or authorized-user) file, else Application
  Default Credentials; or, with no project, ``vertexai=True, api_key=...``
  (Vertex express mode). Veo goes ``:predictLongRunning`` and
  ``:fetchPredictOperation`` under ``publishers/google/models/<model>``.

``call`` runs one SDK call: a 429 is retried after the ``RetryInfo.retryDelay``
Google sends (the SDK's own retries ignore it), waiting on ``stop`` so a stop
request is never held up; everything else is translated once by
``translate``. The SDK's retries are off: a ``predictLongRunning`` sent twice
is billed twice, so only we decide what is sent again.

Errors (ours, for the engine):

    Unavailable      429 after every retry (quota): the run waits, no attempt used
    TransientError   5xx, timeouts, refused connections
    PermanentError   404 model (retired or unknown), 400/401/403 key or credentials,
                     400 request, a call the SDK refuses on this route

The key never reaches a message: Google echoes a rejected key, so every text
taken from the SDK has it replaced and goes through ``logs.scrub``, and SDK
exceptions are never chained (their ``response`` holds the request headers).
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from daemon.config import GoogleConfig
from daemon.errors import PermanentError, StageError, TransientError, Unavailable
from daemon.logs import MASK, scrub

T = TypeVar("T")
GEMINI_API_VERSION = "v1beta"
SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
# Without a RetryInfo, a 429 is retried after this long.
DEFAULT_RETRY_SECONDS = 30.0
# A quoted SDK message is cut here.
_QUOTE = 300
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)s$")
_VERTEX_ONLY = "only supported in Gemini Enterprise Agent Platform"

try:  # the SDK talks through httpx2 when it is installed
    import httpx2

    _HTTPX2: tuple[type[Exception], ...] = (httpx2.HTTPError,)
except ImportError:  # pragma: no cover - depends on the install
    _HTTPX2 = ()
try:
    from google.auth import exceptions as auth_errors

    _AUTH: tuple[type[Exception], ...] = (auth_errors.GoogleAuthError,)
except ImportError:  # pragma: no cover
    _AUTH = ()

SDK_FAILURES: tuple[type[Exception], ...] = (
    genai_errors.APIError, httpx.HTTPError, *_HTTPX2, *_AUTH, OSError, ValueError, KeyError, RuntimeError)


class Route:
    """How to reach Google: the route and its credentials (the key is never shown).

    ``shared()`` is the one client every job of a daemon uses (building one
    loads TLS contexts and takes a good fraction of a second); ``close()`` ends it.
    """

    def __init__(self, cfg: GoogleConfig, api_key: str) -> None:
        self.cfg = cfg
        self.api_key = api_key
        self._shared: genai.Client | None = None
        self._lock = threading.Lock()

    def shared(self) -> genai.Client:
        with self._lock:
            if self._shared is None:
                self._shared = self.client()
            return self._shared

    def close(self) -> None:
        with self._lock:
            if self._shared is not None:
                self._shared.close()
                self._shared = None

    def __repr__(self) -> str:
        return f"Route({self.describe()})"

    @property
    def vertex(self) -> bool:
        return self.cfg.route == "vertex"

    @property
    def express(self) -> bool:
        """Vertex express mode: a key instead of a project and credentials."""
        return self.vertex and not self.cfg.project and bool(self.api_key)

    def describe(self) -> str:
        """Which route and credentials, for doctor and logs."""
        if not self.vertex:
            return "Gemini API with an API key"
        if self.express:
            return "Vertex AI express mode with an API key"
        creds = f"credentials from {self.cfg.credentials_file}" if self.cfg.credentials_file \
            else "Application Default Credentials"
        return f"Vertex AI project {self.cfg.project} in {self.cfg.location}, {creds}"

    def missing(self) -> str:
        """What is missing to send anything on this route ("" when nothing)."""
        if not self.vertex:
            return "" if self.api_key else (
                "no Google API key: put GOOGLE_API_KEY=<key> in .env beside tandava.toml "
                "(a key from https://aistudio.google.com/apikey) or set [google] api_key")
        if self.cfg.project or self.api_key:
            if self.cfg.credentials_file is not None and not self.cfg.credentials_file.is_file():
                return (f"[google] credentials_file {self.cfg.credentials_file} does not exist: "
                        "download a service-account key or run `gcloud auth application-default login`")
            return ""
        return ("the Vertex route needs [google] project (with Application Default Credentials or "
                "[google] credentials_file) or an express-mode API key in GOOGLE_API_KEY")

    def require(self) -> None:
        """Raise ``PermanentError`` with the fix when nothing can be sent on this route."""
        missing = self.missing()
        if missing:
            raise PermanentError(f"Google cannot be used: {missing}",
                                 "Then run `tandava doctor` and `tandava retry <run>`.", cause="GoogleCredentials")

    def client(self, *, timeout_seconds: float | None = None) -> genai.Client:
        """A client on this route; no SDK retries (a resent submit is a second bill)."""
        timeout = max(1, math.ceil((timeout_seconds or self.cfg.timeout_seconds) * 1000))
        if not self.vertex:
            options = types.HttpOptions(base_url=self.cfg.base_url or None, api_version=GEMINI_API_VERSION,
                                        timeout=timeout)
            return genai.Client(vertexai=False, api_key=self.api_key, http_options=options)
        options = types.HttpOptions(base_url=self.cfg.base_url or None, timeout=timeout)
        if self.express:
            return genai.Client(vertexai=True, api_key=self.api_key, http_options=options)
        credentials = load_credentials(self.cfg.credentials_file) if self.cfg.credentials_file else None
        return genai.Client(vertexai=True, project=self.cfg.project, location=self.cfg.location,
                            credentials=credentials, http_options=options)


def load_credentials(path: Path) -> Any:
    """A service-account or authorized-user (``gcloud auth application-default login``) file,
    loaded by its own type's loader: nothing else is accepted from a file."""
    import json

    try:
        kind = json.loads(path.read_text(encoding="utf-8")).get("type")
    except (OSError, ValueError, AttributeError) as exc:
        raise PermanentError(f"[google] credentials_file {path} cannot be read as JSON ({exc})",
                             "Point it at a service-account key or an application-default credentials file.",
                             cause="GoogleCredentials") from None
    if kind == "service_account":
        from google.oauth2 import service_account

        return service_account.Credentials.from_service_account_file(str(path), scopes=SCOPES)
    if kind == "authorized_user":
        from google.oauth2 import credentials

        return credentials.Credentials.from_authorized_user_file(str(path), scopes=SCOPES)
    raise PermanentError(f"[google] credentials_file {path} is a {kind!r} file",
                         "Use a service-account key or an application-default credentials "
                         "(authorized_user) file.", cause="GoogleCredentials")


def safe_text(exc: BaseException | str, api_key: str) -> str:
    """Text from the SDK with the key replaced and tokens scrubbed, cut to a readable length."""
    text = str(exc)
    if api_key:
        text = text.replace(api_key, MASK)
    text = scrub(text)
    return text if len(text) <= _QUOTE else text[:_QUOTE] + "…"


def retry_delay(exc: genai_errors.APIError) -> float | None:
    """The ``RetryInfo.retryDelay`` in a Google error body ("37s"), in seconds; None without one."""
    body = exc.details if isinstance(exc.details, dict) else {}
    details = (body.get("error") or {}).get("details") or []
    for item in details if isinstance(details, list) else []:
        if isinstance(item, dict) and str(item.get("@type", "")).endswith("google.rpc.RetryInfo"):
            found = _DURATION.match(str(item.get("retryDelay", "")))
            if found:
                return float(found.group(1))
    return None


def call(fn: Callable[[], T], *, route: Route, what: str, model: str, stop: threading.Event | None = None,
         attempts: int | None = None, sleep: Callable[[float], bool] | None = None) -> T:
    """Run ``fn`` (one SDK request); a 429 waits for ``retryDelay`` and goes again, up to ``attempts``.

    ``sleep(seconds)`` returns True when interrupted (default: waits on ``stop``).
    """
    attempts = attempts or route.cfg.attempts
    stop = stop or threading.Event()
    wait = sleep or stop.wait
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except genai_errors.APIError as exc:
            if exc.code != 429:
                raise translate(exc, route=route, what=what, model=model) from None
            delay = retry_delay(exc) or DEFAULT_RETRY_SECONDS
            if attempt == attempts or wait(delay):
                raise translate(exc, route=route, what=what, model=model) from None
        except SDK_FAILURES as exc:
            raise translate(exc, route=route, what=what, model=model) from None
    raise AssertionError("unreachable")


def translate(exc: BaseException, *, route: Route, what: str, model: str) -> StageError:
    """One of our errors for an SDK failure, with the reason and the fix."""
    text = safe_text(exc, route.api_key)
    if isinstance(exc, genai_errors.APIError):
        message = safe_text(exc.message or exc.status or "", route.api_key)
        code = exc.code
        if code == 429:
            delay = retry_delay(exc) or DEFAULT_RETRY_SECONDS
            return Unavailable(
                f"Google's quota for {model} is used up ({what}: 429 {exc.status or ''} {message})".strip(),
                "Nothing to do: the run goes on when the quota refills. For more, raise the quota of "
                "your project in Google AI Studio or the Cloud console, or lower "
                "[google] max_concurrent_operations.",
                cause="GoogleQuota", recheck_seconds=max(delay, 5.0))
        if code == 404:
            field = "veo_model" if "veo" in model else "image_model"
            return PermanentError(
                f"Google does not know the model {model} on {route.describe()} ({what}: 404 {message}); "
                "it may have been retired",
                f"Set [google] {field} to a current model (see ai.google.dev/gemini-api/docs/models "
                "or the Vertex model garden) and its price in [google.prices], then `tandava retry <run>`.",
                cause="GoogleModel")
        if code in (401, 403) or (code == 400 and _is_key_problem(message)):
            return PermanentError(
                f"Google refused the credentials for {route.describe()} ({what}: {code} {message})",
                "Check GOOGLE_API_KEY (or [google] credentials_file / `gcloud auth application-default "
                "login`) and that the API is enabled for the project, then `tandava retry <run>`.",
                cause="GoogleCredentials")
        if code >= 500:
            return TransientError(f"Google had an error ({what}: {code} {message})",
                                  "It is retried; if it persists see status.cloud.google.com.",
                                  cause="GoogleServer")
        return PermanentError(f"Google refused the request ({what}: {code} {message})",
                              "Check [google] and [video] settings against the model's limits, "
                              "then `tandava retry <run>`.", cause="GoogleRequest")
    if isinstance(exc, ValueError) and _VERTEX_ONLY in str(exc):
        return PermanentError(
            f"google-genai sends {what} only on Vertex AI, and [google] route is {route.cfg.route!r}",
            "Set [google] route = \"vertex\" with [google] project (and Application Default Credentials "
            "or credentials_file), or a Vertex express-mode key; then `tandava retry <run>`.",
            cause="GoogleRoute")
    if _AUTH and isinstance(exc, _AUTH):
        return PermanentError(f"no usable Google credentials for {route.describe()} ({text})",
                              "Run `gcloud auth application-default login`, or set [google] "
                              "credentials_file to a service-account key; then `tandava retry <run>`.",
                              cause="GoogleCredentials")
    if is_timeout(exc):
        return TransientError(f"Google did not answer in time ({what}: {text})",
                              "It is retried; raise [google] timeout_seconds on a slow line.",
                              cause="GoogleTimeout")
    return TransientError(f"cannot reach Google ({what}: {text})",
                          "Check the network (and [google] base_url); it is retried.", cause="GoogleNetwork")


def is_timeout(exc: BaseException) -> bool:
    """Whether the request may have reached Google and its answer was lost (a timeout)."""
    names = {type(e).__name__ for e in (exc, exc.__cause__, exc.__context__) if e is not None}
    return any("Timeout" in name for name in names)


def _is_key_problem(message: str) -> bool:
    return any(mark in message for mark in ("API key", "API_KEY", "unregistered callers", "credentials"))


def read_image(path: Path) -> types.Part:
    """An image file as an inline part (reference images, the start and last frames)."""
    return types.Part.from_bytes(data=path.read_bytes(), mime_type=image_mime(path))


def image_mime(path: Path) -> str:
    suffix = path.suffix.lower()
    return {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}.get(suffix, "image/png")


def describe_error(value: Any) -> str:
    """An operation's ``error`` (a google.rpc.Status dict) in one line."""
    if isinstance(value, dict):
        return f"{value.get('code', '?')} {value.get('message', '')}".strip()
    return str(value)
