"""The web panel's ASGI app (Starlette): pages, files and actions, behind one guard.

How this works: pages are built from ``ViewCache`` summaries by
``web_pages``; actions are POSTs that call ``decisions.decide``,
``approve_all`` and ``retry`` and nothing else, so the panel can never
disagree with the CLI or Telegram. ``DecisionRefused`` and ``StoreError``
become a 409 with their message (a page, or JSON for the page's script),
``RunNotFound`` a 404; a traceback never reaches the browser.

Files are served by run id and a name the panel knows (``final.mp4``,
``thumbnail.jpg``, the exports) or by candidate number (looked up in the run's
manifest), and the resolved path must lie inside the run folder: no path
from a request ever reaches the disk.

``Guard`` (plain ASGI middleware, so video streaming is untouched) enforces,
before any route runs:
- on a loopback bind, the ``Host`` header must name this machine (a web page
  on another site cannot reach the panel through DNS rebinding);
- with a token configured (always, when bound beyond loopback), every request
  carries it: ``Authorization: Bearer``, or the HttpOnly SameSite=Strict
  cookie that ``?token=`` sets once (then redirects the token out of the URL);
- a POST whose ``Origin`` (or ``Sec-Fetch-Site``) says it came from another
  site is refused; and every browser POST must carry the per-process CSRF
  value embedded in the page's forms (a Bearer request from a script is not
  a browser's ambient credential, so it needs none).
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import structlog
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from daemon.approval import decisions
from daemon.approval.store import DecisionRefused, Verdict, candidates_of
from daemon.channels.web import pages as web_pages
from daemon.channels.web.assets import CSS, ICON, JS
from daemon.channels.web.views import ViewCache
from daemon.errors import RunNotFound, TandavaError
from daemon.runs.health import health_json
from daemon.runs.states import State
from daemon.runs.store import RunRef, RunStore
from daemon.video.assembly import EXPORT_NAMES, FINAL_NAME

log = structlog.get_logger("tandava.web")

COOKIE = "tandava_token"
# A phone stays signed in this long; changing web.token signs every browser out at once.
COOKIE_DAYS = 30
FETCH_HEADER = "x-tandava-fetch"
# Newest runs of each state on the index; the rest are one click away, paginated.
INDEX_PER_STATE = 48
PAGE_SIZE = 96
_MAX_FORM_BYTES = 16 * 1024
# Files of a run the panel serves, by name (rendering writes them; see daemon.stages.render).
SERVED_FILES: dict[str, str] = {
    FINAL_NAME: "video/mp4",
    "thumbnail.jpg": "image/jpeg",
    "contact_sheet.png": "image/png",
    EXPORT_NAMES["vertical"]: "video/mp4",
    EXPORT_NAMES["mov"]: "video/quicktime",
}
_IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
_SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; img-src 'self'; media-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}


def cookie_value(token: str) -> str:
    """What the auth cookie holds: derived from the token, so the cookie never shows it."""
    return hmac.new(token.encode("utf-8"), b"tandava-web-cookie", hashlib.sha256).hexdigest()


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


def _refusal(status: int, title: str, text: str, scope: Scope) -> Response:
    if FETCH_HEADER.encode("latin-1") in dict(scope.get("headers", [])):
        return JSONResponse({"error": text}, status_code=status)
    page = web_pages.document(title, web_pages.message_main(title, text))
    return HTMLResponse(page, status_code=status, headers={"cache-control": "no-store"})


class Guard:
    """Host check, token, and cross-site POST refusal, before any route (see the module doc)."""

    def __init__(self, app: ASGIApp, *, token: str, hosts: frozenset[str] | None) -> None:
        self.app = app
        self.token = token
        # Host names a request may use (None: any; a wildcard bind is reached by many names).
        self.hosts = hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for key, value in _SECURITY_HEADERS.items():
                    headers.setdefault(key, value)
            await send(message)

        refusal = self.check(Request(scope))
        if refusal is not None:
            await refusal(scope, receive, send_secured)
            return
        await self.app(scope, receive, send_secured)

    def check(self, request: Request) -> Response | None:
        """The response refusing ``request``, or None to let it through."""
        scope = request.scope
        host = (request.url.hostname or "").strip("[]").lower()
        if self.hosts is not None and host not in self.hosts:
            return _refusal(403, "Wrong address", "This panel answers only at 127.0.0.1 or "
                            "localhost (it listens on this machine only).", scope)
        scope.setdefault("state", {})["bearer"] = False
        if self.token:
            given = request.query_params.get("token")
            bearer = request.headers.get("authorization", "")
            if bearer.lower().startswith("bearer ") and _same(bearer[7:].strip(), self.token):
                scope["state"]["bearer"] = True
            elif given is not None and _same(given, self.token) and request.method in ("GET", "HEAD"):
                return self._accept_token(request)
            elif not _same(request.cookies.get(COOKIE, ""), cookie_value(self.token)):
                response = _refusal(401, "Token needed", "This panel needs its token: open it once "
                                    "as …/?token=<web.token> (the value in your configuration or "
                                    "TANDAVA_WEB__TOKEN), or send Authorization: Bearer.", scope)
                response.headers["www-authenticate"] = 'Bearer realm="tandava"'
                return response
        if request.method == "POST" and not scope["state"]["bearer"]:
            origin = request.headers.get("origin")
            site = request.headers.get("sec-fetch-site", "same-origin")
            foreign = origin is not None and urlsplit(origin).netloc != request.headers.get("host")
            if foreign or site not in ("same-origin", "none"):
                return _refusal(403, "Refused", "A page from another site tried to act on "
                                "this panel; it was refused.", scope)
        return None

    def _accept_token(self, request: Request) -> Response:
        """Trade ``?token=`` for a cookie and take the token out of the address bar."""
        rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
        target = request.url.path + (f"?{urlencode(rest)}" if rest else "")
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(COOKIE, cookie_value(self.token), max_age=COOKIE_DAYS * 86400,
                            httponly=True, samesite="strict", secure=request.url.scheme == "https",
                            path="/")
        return response


class PanelApp:
    """Routes of the panel over one run store; ``app`` is the ASGI application."""

    def __init__(self, store: RunStore, *, token: str, hosts: frozenset[str] | None, csrf: str,
                 poll_seconds: float, inbox: Path | None = None) -> None:
        self.store = store
        from daemon.channels.web.forget import forget_routes
        self.views = ViewCache(store)
        self.csrf = csrf
        self.poll_ms = max(0, round(poll_seconds * 1000))
        self.inbox_hint = f" ({inbox})" if inbox is not None else ""
        routes = [
            Route("/", self.index),
            Route("/states/{state}", self.state_page),
            Route("/runs/{run_id}", self.run_page),
            Route("/runs/{run_id}/thumb", self.thumb),
            Route("/runs/{run_id}/files/{name}", self.file),
            Route("/runs/{run_id}/candidates/{segment:int}/{index:int}", self.candidate),
            Route("/runs/{run_id}/decide", self.decide, methods=["POST"]),
            Route("/runs/{run_id}/approve-all", self.approve_all, methods=["POST"]),
            Route("/runs/{run_id}/retry", self.retry, methods=["POST"]),
            *forget_routes(store, self._form, fetch_header=FETCH_HEADER),
            Route("/static/panel.css", lambda _: Response(CSS, media_type="text/css")),
            Route("/static/panel.js", lambda _: Response(JS, media_type="text/javascript")),
            Route("/static/icon.svg", lambda _: Response(ICON, media_type="image/svg+xml")),
            Route("/healthz", lambda _: JSONResponse(health_json(self.store.root))),
        ]
        handlers: dict[Any, Callable[[Request, Exception], Response]] = {
            RunNotFound: self._not_found,
            # DecisionRefused and StoreLocked are StoreErrors; IllegalTransition (a retry of a
            # run whose manifest lost where it failed) is the other TandavaError an action meets.
            TandavaError: self._refused,
            HTTPException: self._http_error,
        }
        self.app: ASGIApp = Starlette(
            routes=routes, exception_handlers=handlers,
            middleware=[Middleware(Guard, token=token, hosts=hosts)])

    # -- pages ----------------------------------------------------------------

    def _page(self, request: Request, title: str, main: str, *, poll: bool = True) -> Response:
        version = hashlib.sha1(main.encode("utf-8")).hexdigest()[:16]
        headers = {"cache-control": "no-store", "x-tandava-version": version}
        if request.headers.get(FETCH_HEADER):
            return HTMLResponse(main, headers=headers)
        page = web_pages.document(title, main, version=version, csrf=self.csrf,
                                  poll_ms=self.poll_ms if poll else 0)
        return HTMLResponse(page, headers=headers)

    def index(self, request: Request) -> Response:
        grouped = decisions.runs_by_state(self.store)
        groups = []
        for state in web_pages.INDEX_ORDER:
            refs = grouped.get(state, [])
            groups.append((state, [self.views.summary(r) for r in refs[:INDEX_PER_STATE]], len(refs)))
        self.views.prune({r.run_id for refs in grouped.values() for r in refs})
        main = web_pages.index_main(groups, self.csrf, inbox_hint=self.inbox_hint)
        return self._page(request, "Runs", main)

    def state_page(self, request: Request) -> Response:
        try:
            state = State(request.path_params["state"])
        except ValueError:
            raise HTTPException(404, "There is no such state.") from None
        refs = decisions.runs_by_state(self.store, [state])[state]
        pages = max(1, math.ceil(len(refs) / PAGE_SIZE))
        try:
            page = min(max(1, int(request.query_params.get("page", "1"))), pages)
        except ValueError:
            page = 1
        chosen = refs[(page - 1) * PAGE_SIZE: page * PAGE_SIZE]
        main = web_pages.state_main(state, [self.views.summary(r) for r in chosen], self.csrf,
                                    total=len(refs), page=page, pages=pages)
        return self._page(request, web_pages.LABELS[state], main)

    def run_page(self, request: Request) -> Response:
        ref = self._ref(request)
        summary = self.views.summary(ref)
        files = [name for name in SERVED_FILES if (ref.path / name).is_file()]
        main = web_pages.run_main(summary, self.csrf, files=files)
        # A finished run does not change, and swapping its page would stop the video.
        return self._page(request, summary.view.song, main, poll=ref.state is not State.RENDERED)

    # -- files ----------------------------------------------------------------

    def _ref(self, request: Request) -> RunRef:
        run_id = request.path_params["run_id"]
        ref = self.store.find(run_id)
        if ref.run_id != run_id:  # find() also matches prefixes; a URL names one run exactly
            raise RunNotFound(f"no run {run_id!r}")
        return ref

    def _send(self, ref: RunRef, path: Path | None, media_type: str | None = None) -> Response:
        if path is None:
            raise HTTPException(404, "This run has no such file (yet).")
        try:
            resolved = path.resolve(strict=True)
        except OSError:
            raise HTTPException(404, "This run has no such file (yet).") from None
        if not resolved.is_relative_to(ref.path.resolve()) or not resolved.is_file():
            raise HTTPException(404, "This run has no such file.")
        media = media_type or _IMAGE_TYPES.get(resolved.suffix.lower(), "application/octet-stream")
        # Pictures change only when a run moves on (a new URL state): a minute of caching
        # keeps the gallery from re-fetching them on every refresh.
        cache = "private, max-age=60" if media.startswith("image/") else "no-cache"
        return FileResponse(resolved, media_type=media, headers={"cache-control": cache})

    def file(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in SERVED_FILES:
            raise HTTPException(404, "The panel serves only a run's video, thumbnail and exports.")
        ref = self._ref(request)
        return self._send(ref, ref.path / name, SERVED_FILES[name])

    def thumb(self, request: Request) -> Response:
        ref = self._ref(request)
        return self._send(ref, self.views.summary(ref).thumb)

    def candidate(self, request: Request) -> Response:
        ref = self._ref(request)
        segment, index = request.path_params["segment"], request.path_params["index"]
        # A waiting run's view already lists its candidates; other runs' are in the manifest.
        found = [c.image for s in self.views.summary(ref).view.segments if s.index == segment
                 for c in s.candidates if c.index == index]
        if not found and ref.state is not State.PENDING_APPROVAL:
            jobs = candidates_of(self.store.load(ref)).get(segment, [])
            found = [ref.path / j.output for j in jobs if j.index == index]
        return self._send(ref, found[0] if found else None)

    # -- actions --------------------------------------------------------------

    async def _form(self, request: Request) -> dict[str, str]:
        body = await request.body()
        if len(body) > _MAX_FORM_BYTES:
            raise HTTPException(413, "That form is too large.")
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if body and ctype != "application/x-www-form-urlencoded":
            raise HTTPException(415, "Send the form as application/x-www-form-urlencoded.")
        form = {k: v[-1] for k, v in parse_qs(body.decode("utf-8", "replace"),
                                              keep_blank_values=True).items()}
        if not request.state.bearer and not _same(form.get("csrf", ""), self.csrf):
            raise HTTPException(403, "This page is older than the panel (it restarted): "
                                "reload the page and try again.")
        return form

    async def _act(self, request: Request, work: Callable[[], str]) -> Response:
        message = await run_in_threadpool(work)
        run_id = request.path_params["run_id"]
        log.info("web.action", run_id=run_id, what=message)
        if request.headers.get(FETCH_HEADER):
            return JSONResponse({"message": message})
        return RedirectResponse(web_pages.run_href(run_id), status_code=303)

    async def decide(self, request: Request) -> Response:
        form = await self._form(request)
        verdict = form.get("verdict", "")
        if verdict not in ("approve", "reject", "regenerate"):
            raise HTTPException(400, "verdict must be approve, reject or regenerate.")
        segment, candidate = _int(form.get("segment")), _int(form.get("candidate"))
        if segment is None or (candidate is None and verdict != "regenerate"):
            raise HTTPException(400, "Say which segment (and candidate) this is about.")
        run_id, by = request.path_params["run_id"], _who(request)
        checked: Verdict = verdict  # type: ignore[assignment]
        cand = None if verdict == "regenerate" else candidate

        def work() -> str:
            decisions.decide(self.store, run_id, checked, segment, cand, by=by, channel="web")
            what = f"segment {segment}" + (f" candidate {cand}" if cand is not None else "")
            return {"approve": "Approved", "reject": "Rejected",
                    "regenerate": "Asked for new candidates for"}[checked] + f" {what}."

        return await self._act(request, work)

    async def approve_all(self, request: Request) -> Response:
        await self._form(request)
        run_id, by = request.path_params["run_id"], _who(request)

        def work() -> str:
            made = decisions.approve_all(self.store, run_id, by=by, channel="web")
            return f"Approved {len(made)} segment(s)." if made else "Nothing left to approve."

        return await self._act(request, work)

    async def retry(self, request: Request) -> Response:
        await self._form(request)
        run_id = request.path_params["run_id"]

        def work() -> str:
            ref = decisions.retry(self.store, run_id)
            return f"Sent back to {ref.state.value}/; the daemon picks it up from there."

        return await self._act(request, work)

    # -- errors ---------------------------------------------------------------

    def _not_found(self, request: Request, exc: Exception) -> Response:
        return _refusal(404, "Not found", str(exc), request.scope)

    def _refused(self, request: Request, exc: Exception) -> Response:
        title = "Decision refused" if isinstance(exc, DecisionRefused) else "Cannot do that now"
        log.info("web.refused", error=str(exc))
        return _refusal(409, title, str(exc), request.scope)

    def _http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 405:
            return PlainTextResponse("Method not allowed", status_code=405)
        return _refusal(exc.status_code, "Cannot do that", str(exc.detail), request.scope)


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except ValueError:
        return None


def _who(request: Request) -> str:
    return f"web:{request.client.host}" if request.client else "web"

