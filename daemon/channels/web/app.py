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

Every request passes ``guard.Guard`` first (host, token, cross-site POSTs).
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import structlog
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
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
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp

from daemon.approval import decisions
from daemon.approval.decisions import SegmentView
from daemon.approval.store import DECIDING_STATES, DecisionRefused, Verdict, candidates_of
from daemon.channels.web import pages as web_pages
from daemon.channels.web import review
from daemon.channels.web.assets import CSS, ICON
from daemon.channels.web.bodies import BadLength, TooLarge, read_capped
from daemon.channels.web.guard import FETCH_HEADER, Guard, refusal, same_secret
from daemon.channels.web.script import JS
from daemon.channels.web.thumbs import WIDTHS, cache_dir, thumbnail
from daemon.channels.web.views import ViewCache
from daemon.errors import RunNotFound, TandavaError
from daemon.runs.health import health_json
from daemon.runs.states import State
from daemon.runs.store import RunRef, RunStore
from daemon.video.assembly import EXPORT_NAMES, FINAL_NAME

log = structlog.get_logger("tandava.web")

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
_AUDIO_TYPES = {".mp3": "audio/mpeg", ".wav": "audio/wav", ".flac": "audio/flac", ".ogg": "audio/ogg",
                ".m4a": "audio/mp4"}
_VERDICTS = ("approve", "reject", "regenerate", "undo")



class PanelApp:
    """Routes of the panel over one run store; ``app`` is the ASGI application."""

    def __init__(self, store: RunStore, *, token: str, hosts: frozenset[str] | None, csrf: str,
                 poll_seconds: float, inbox: Path | None = None, api: ASGIApp | None = None) -> None:
        self.store = store
        from daemon.channels.web.forget import forget_routes
        self.views = ViewCache(store)
        self.csrf = csrf
        self.poll_ms = max(0, round(poll_seconds * 1000))
        self.inbox_hint = f" ({inbox})" if inbox is not None else ""
        routes: list[BaseRoute] = [
            Route("/", self.index),
            Route("/states/{state}", self.state_page),
            Route("/runs/{run_id}", self.run_page),
            Route("/runs/{run_id}/thumb", self.thumb),
            Route("/runs/{run_id}/song", self.song),
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
        if api is not None:
            routes.append(Mount("/api/v1", app=api))
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
        if ref.state in DECIDING_STATES and summary.view.segments:
            # A run waiting for a person opens in review mode; ?view=all shows every segment.
            if request.query_params.get("view") == "all":
                main = review.grid_main(summary, self.csrf)
            else:
                segment = _int(request.query_params.get("segment"))
                main = review.review_main(summary, self.csrf, segment=segment)
                # Scale the next open segment's pictures now, while the person looks at this one.
                upcoming = review.next_open(summary.view.segments, segment)
                following = review.next_open(summary.view.segments, upcoming)
                self._warm(ref, [s for s in summary.view.segments if s.index in (upcoming, following)])
            return self._page(request, summary.view.song, main)
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
        inside = resolved.is_relative_to(ref.path.resolve()) or \
            resolved.is_relative_to(cache_dir(self.store.root).resolve())
        if not inside or not resolved.is_file():
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

    def song(self, request: Request) -> Response:
        """The run's song, so review mode can play a segment's slice of it (Range requests)."""
        ref = self._ref(request)
        name = self.store.load(ref).song.file_name
        path = ref.path / name
        return self._send(ref, path, _AUDIO_TYPES.get(path.suffix.lower(), "application/octet-stream"))

    def candidate(self, request: Request) -> Response:
        ref = self._ref(request)
        segment, index = request.path_params["segment"], request.path_params["index"]
        # A waiting run's view already lists its candidates; other runs' are in the manifest.
        found = [c.image for s in self.views.summary(ref).view.segments if s.index == segment
                 for c in s.candidates if c.index == index]
        if not found and ref.state is not State.PENDING_APPROVAL:
            jobs = candidates_of(self.store.load(ref)).get(segment, [])
            found = [ref.path / j.output for j in jobs if j.index == index]
        width = _int(request.query_params.get("w"))
        if found and width is not None:
            if width not in WIDTHS:
                raise HTTPException(400, f"w must be one of {sorted(WIDTHS)}.")
            small = self._thumbnail(ref, found[0], width)
            return self._send(ref, small, "image/jpeg") if small else self._send(ref, None)
        return self._send(ref, found[0] if found else None)

    def _warm(self, ref: RunRef, segments: list[SegmentView]) -> None:
        """Make the review-size pictures of ``segments`` in the background (cached for the next page)."""
        sources = [c.image for s in segments for c in s.candidates]
        if sources:
            threading.Thread(target=lambda: [self._thumbnail(ref, source, review.REVIEW_WIDTH)
                                             for source in sources],
                             name="web-thumbs", daemon=True).start()

    def _thumbnail(self, ref: RunRef, source: Path, width: int) -> Path | None:
        try:
            resolved = source.resolve(strict=True)
        except OSError:
            return None
        if not resolved.is_relative_to(ref.path.resolve()):
            return None
        try:
            return thumbnail(resolved, cache_dir(self.store.root), width)
        except (OSError, ValueError) as exc:  # an unreadable picture: send the original instead
            log.warning("web.thumbnail_failed", run_id=ref.run_id, error=str(exc))
            return resolved

    # -- actions --------------------------------------------------------------

    async def _form(self, request: Request) -> dict[str, str]:
        # Refused on Content-Length before a byte is read, then read with a cap: a big
        # POST (with or without an Origin) never makes the daemon hold it in memory.
        try:
            body = await read_capped(request, _MAX_FORM_BYTES)
        except TooLarge:
            raise HTTPException(413, "That form is too large.") from None
        except BadLength:
            raise HTTPException(400, "Content-Length must be a number of bytes.") from None
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if body and ctype != "application/x-www-form-urlencoded":
            raise HTTPException(415, "Send the form as application/x-www-form-urlencoded.")
        form = {k: v[-1] for k, v in parse_qs(body.decode("utf-8", "replace"),
                                              keep_blank_values=True).items()}
        if not request.state.bearer and not same_secret(form.get("csrf", ""), self.csrf):
            raise HTTPException(403, "This page is older than the panel (it restarted): "
                                "reload the page and try again.")
        return form

    async def _act(self, request: Request, work: Callable[[], str], *,
                   segment: int | None = None) -> Response:
        message = await run_in_threadpool(work)
        run_id = request.path_params["run_id"]
        log.info("web.action", run_id=run_id, what=message)
        # Review mode moves on to the next open segment after a decision (and says how many are left).
        after = await run_in_threadpool(self._after, run_id, segment) if segment is not None else {}
        if request.headers.get(FETCH_HEADER):
            return JSONResponse({"message": message, **after})
        target = web_pages.run_href(run_id)
        if after.get("next") is not None:
            target += f"?segment={after['next']}"
        return RedirectResponse(target, status_code=303)

    def _after(self, run_id: str, segment: int | None) -> dict[str, Any]:
        try:
            view = self.views.summary(self.store.find(run_id)).view
        except TandavaError:
            return {}
        if view.state not in DECIDING_STATES or not view.segments:
            return {"next": None, "left": 0, "total": len(view.segments)}
        by_index = {s.index: s for s in view.segments}
        here = by_index.get(segment) if segment is not None else None
        # Stay on a segment that is still open (a reject, a regeneration); else the next open one.
        nxt = segment if here is not None and here.approved is None and not here.all_rejected \
            else review.next_open(view.segments, segment)
        return {"next": nxt, "left": len(view.open_segments), "total": len(view.segments)}

    async def decide(self, request: Request) -> Response:
        form = await self._form(request)
        verdict = form.get("verdict", "")
        if verdict not in _VERDICTS:
            raise HTTPException(400, "verdict must be approve, reject, regenerate or undo.")
        segment, candidate = _int(form.get("segment")), _int(form.get("candidate"))
        if segment is None or (candidate is None and verdict != "regenerate"):
            raise HTTPException(400, "Say which segment (and candidate) this is about.")
        run_id, by = request.path_params["run_id"], _who(request)
        checked: Verdict = verdict  # type: ignore[assignment]
        cand = None if verdict == "regenerate" else candidate

        def work() -> str:
            decisions.decide(self.store, run_id, checked, segment, cand, by=by, channel="web")
            what = f"segment {segment}" + (f" candidate {cand}" if cand is not None else "")
            return {"approve": "Approved", "reject": "Rejected", "undo": "Took back the decision on",
                    "regenerate": "Asked for new candidates for"}[checked] + f" {what}."

        return await self._act(request, work, segment=segment)

    async def approve_all(self, request: Request) -> Response:
        form = await self._form(request)
        run_id, by = request.path_params["run_id"], _who(request)
        if form.get("confirmed") != "yes" and not request.state.bearer:
            # "Approve all" skips the review: a browser asks once (the script with a dialog,
            # without a script this page) before anything is decided.
            view = self.views.summary(self._ref(request)).view
            return self._page(request, "Approve all?", review.confirm_main(view, self.csrf), poll=False)

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
        return refusal(404, "Not found", str(exc), request.scope)

    def _refused(self, request: Request, exc: Exception) -> Response:
        title = "Decision refused" if isinstance(exc, DecisionRefused) else "Cannot do that now"
        log.info("web.refused", error=str(exc))
        return refusal(409, title, str(exc), request.scope)

    def _http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 405:
            return PlainTextResponse("Method not allowed", status_code=405)
        return refusal(exc.status_code, "Cannot do that", str(exc.detail), request.scope)


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except ValueError:
        return None


def _who(request: Request) -> str:
    return f"web:{request.client.host}" if request.client else "web"

