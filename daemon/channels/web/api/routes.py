"""The ``/api/v1`` routes: submit, list, show, decide, retry, download, health and events.

How this works: ``Api`` is a Starlette app the panel mounts at ``/api/v1``, so
the panel's ``Guard`` (Host check, token, cross-site refusal) stands in front
of it unchanged. Handlers read runs through ``daemon.approval.decisions`` and
the run store, act only through ``decisions.decide`` and ``decisions.retry``
(like every channel), and take songs only through ``Intake.accept`` (like the
inbox). Every error, raised anywhere below, leaves as one JSON shape,
``{"error": {"code", "message", "hint"}}``, with the status a client expects.

``Api.start`` starts the watcher that turns store changes into events and the
webhook threads; ``Api.stop`` ends them.
"""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import structlog
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from daemon.approval import decisions
from daemon.approval.store import DECIDING_STATES, DecisionRefused
from daemon.channels.web.api import uploads
from daemon.channels.web.api.events import API_DIR, ChangeWatcher, EventLog
from daemon.channels.web.api.models import (
    DecisionsIn,
    DecisionsOut,
    Problem,
    RetryOut,
    error_body,
)
from daemon.channels.web.api.openapi import spec
from daemon.channels.web.api.runs import RunReader, decision_out
from daemon.channels.web.api.webhooks import Webhooks
from daemon.channels.web.bodies import BadLength, TooLarge, read_capped
from daemon.config import Settings, uses_comfy
from daemon.errors import RunNotFound, StoreError, TandavaError
from daemon.intake.intake import Intake
from daemon.runs.health import health_json
from daemon.runs.states import State
from daemon.runs.store import RunStore
from daemon.stages.options import RunOptions

log = structlog.get_logger("tandava.api")

PREFIX = "/api/v1"
_JSON_MAX_BYTES = 256 * 1024
# An idle SSE stream gets a comment this often, so proxies and clients know it is alive.
_KEEPALIVE_SECONDS = 15.0


class Api:
    """The HTTP API over one store and intake; ``app`` is what the panel mounts."""

    def __init__(self, settings: Settings, store: RunStore, intake: Intake) -> None:
        self.settings, self.store, self.intake = settings, store, intake
        self.limit = int(settings.api.max_upload_mb * 1024 * 1024)
        self.reader = RunReader(store, PREFIX)
        self.events = EventLog(store.root / API_DIR)
        self.watcher = ChangeWatcher(store, self.events)
        cfg = settings.api
        secret = cfg.webhook_secret.get_secret_value()
        self.webhooks = Webhooks(cfg.webhooks if secret else [], secret, self.events,
                                 backoff_initial=cfg.webhook_backoff_initial_seconds,
                                 backoff_max=cfg.webhook_backoff_max_seconds)
        self.events.floor = self.webhooks.floor
        if cfg.webhooks and not secret:
            log.error("api.webhooks_unsigned", hint="set api.webhook_secret (TANDAVA_API__WEBHOOK_SECRET in .env); "
                      "webhooks are not sent without it")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        routes = [
            Route("/openapi.json", self.openapi),
            Route("/health", self.health),
            # One route per path, so a 405 names every method the path has (Allow).
            Route("/runs", self.runs, methods=["GET", "POST"]),
            Route("/runs/{run_id}", self.show_run),
            Route("/runs/{run_id}/decisions", self.decide, methods=["POST"]),
            Route("/runs/{run_id}/retry", self.retry, methods=["POST"]),
            Route("/runs/{run_id}/files/{name}", self.file),
            Route("/events", self.sse),
        ]
        handlers: dict[Any, Any] = {
            Problem: self._problem, uploads.UploadRefused: self._problem, RunNotFound: self._not_found,
            DecisionRefused: self._conflict, TandavaError: self._conflict, HTTPException: self._http,
            StoreError: self._unavailable, OSError: self._unavailable, ValidationError: self._invalid,
            TooLarge: self._too_large, BadLength: self._bad_length, Exception: self._crash,
        }
        self.app = Starlette(routes=routes, exception_handlers=handlers)

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        """Finish interrupted uploads, watch for changes and send webhooks (on threads: the panel
        starts at once, however many runs there are)."""
        self._thread = threading.Thread(target=self._watch, name="tandava-api-events", daemon=True)
        self._thread.start()
        self.webhooks.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
        self.webhooks.stop()

    def _watch(self) -> None:
        try:
            for action in uploads.recover(self.intake, self.store):
                log.info("api.recovered", action=action)
            self.reader.list(None, 50, None)  # the first page every client asks for, read once now
        except Exception as exc:  # noqa: BLE001 - the next start tries again; the API still serves
            log.error("api.recover_failed", error=str(exc), hint="the uploads stay in <state>/.api/uploads")
        while True:
            try:
                self.watcher.poll()
            except Exception as exc:  # noqa: BLE001 - the watcher must outlive one bad look
                log.warning("api.watch_failed", error=str(exc))
            if self._stop.wait(self.settings.api.watch_seconds):
                return

    # -- routes ---------------------------------------------------------------

    def openapi(self, request: Request) -> Response:
        return JSONResponse(spec(PREFIX))

    def health(self, request: Request) -> Response:
        return JSONResponse(health_json(self.store.root))

    async def runs(self, request: Request) -> Response:
        if request.method == "POST":
            return await self.create_run(request)
        # On the loop, not a thread: a page is a few stat calls from the caches, and 50 clients
        # hopping threads for it cost more than the work.
        return self.list_runs(request)

    def list_runs(self, request: Request) -> Response:
        q = request.query_params
        state = None
        if q.get("state"):
            try:
                state = State(q["state"])
            except ValueError:
                raise Problem(400, "bad_state", f"There is no state {q['state']!r}.",
                              "Use one of: " + ", ".join(s.value for s in State) + ".") from None
        try:
            limit = int(q.get("limit", "50"))
        except ValueError:
            limit = 0
        if not 1 <= limit <= 500:
            raise Problem(400, "bad_limit", "limit must be a whole number from 1 to 500.", "Leave it out for 50.")
        return Response(self.reader.page_bytes(state, limit, q.get("cursor") or None),
                        media_type="application/json")

    def show_run(self, request: Request) -> Response:
        ref = self.reader.ref(request.path_params["run_id"])
        return JSONResponse(self.reader.detail(ref).model_dump(mode="json", by_alias=True))

    async def create_run(self, request: Request) -> Response:
        upload = await uploads.receive(request, self.store.root, limit=self.limit)
        try:
            options = self._options(upload.options)
            raw = options.model_dump_json(exclude_unset=True).encode("utf-8") if options else None
            ref, duplicate = await run_in_threadpool(uploads.register, self.intake, self.store, upload, raw)
        except BaseException:
            await run_in_threadpool(_remove, upload.folder)
            raise
        body = self.reader.created(ref, duplicate=duplicate, photos=len(upload.photos))
        log.info("api.uploaded", run_id=ref.run_id, duplicate=duplicate, photos=len(upload.photos))
        return JSONResponse(body.model_dump(mode="json", by_alias=True), status_code=200 if duplicate else 201,
                            headers={"location": body.links.self_})

    def _options(self, raw: bytes | None) -> RunOptions | None:
        if raw is None or not raw.strip():
            return None
        try:
            options = RunOptions.model_validate_json(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "options"
            raise Problem(422, "invalid_options", f"options.{where}: {first['msg']}",
                          "See RunOptions in /api/v1/openapi.json for every field and its range.") from None
        from daemon.writers.chain import available_themes

        themes = available_themes([self.settings.paths.themes] if self.settings.paths.themes else [])
        if options.theme is not None and options.theme not in themes:
            raise Problem(422, "invalid_options", f"options.theme: there is no theme {options.theme!r}.",
                          "Use one of: " + ", ".join(themes) + ".")
        wants_comfy = "comfyui" in ((options.images and options.images.backend),
                                    (options.clips and options.clips.backend))
        if wants_comfy and not uses_comfy(self.settings):
            raise Problem(422, "invalid_options", "options.images.backend/clips.backend: this daemon has "
                          "no ComfyUI set up.", "Choose storyboard/folder and kenburns, or set up [comfy].")
        return options

    async def decide(self, request: Request) -> Response:
        wanted = DecisionsIn.model_validate(await self._json(request))
        run_id = self.reader.ref(request.path_params["run_id"]).run_id
        by = f"api:{request.client.host}" if request.client else "api"

        def work() -> DecisionsOut:
            ref = self.store.find(run_id)
            if ref.state not in DECIDING_STATES:
                raise Problem(409, "not_waiting", f"Run {run_id} is in {ref.state.value}, not waiting for a decision.",
                              "Decide while it is pending_approval, or on a segment already offered while "
                              "its images are made (GET the run to see it).")
            made = [decisions.decide(self.store, run_id, d.action, d.segment, d.candidate, by=by, channel="api")
                    for d in wanted.decisions]
            return DecisionsOut(applied=[decision_out(d) for d in made], state=self.store.find(run_id).state)

        return JSONResponse((await run_in_threadpool(work)).model_dump(mode="json"))

    async def retry(self, request: Request) -> Response:
        run_id = self.reader.ref(request.path_params["run_id"]).run_id

        def work() -> RetryOut:
            ref = self.store.find(run_id)
            if ref.state is not State.FAILED:
                raise Problem(409, "not_failed", f"Run {run_id} is in {ref.state.value}, not failed.",
                              "Only a failed run can be retried.")
            ref = decisions.retry(self.store, run_id)
            return RetryOut(id=ref.run_id, state=ref.state)

        return JSONResponse((await run_in_threadpool(work)).model_dump(mode="json"))

    def file(self, request: Request) -> Response:
        ref = self.reader.ref(request.path_params["run_id"])
        path, media = self.reader.file(ref, request.path_params["name"])
        return FileResponse(path, media_type=media, headers={"cache-control": "no-cache"})

    async def sse(self, request: Request) -> Response:
        raw = request.headers.get("last-event-id") or request.query_params.get("after") or "0"
        try:
            after = int(raw)
        except ValueError:
            raise Problem(400, "bad_event_id", f"Last-Event-ID must be a number, not {raw!r}.",
                          "Send the id of the last event you received, or leave it out.") from None
        run_filter = request.query_params.get("run") or None
        return StreamingResponse(self._stream(request, after, run_filter), media_type="text/event-stream",
                                 headers={"cache-control": "no-cache", "x-accel-buffering": "no"})

    async def _stream(self, request: Request, after: int, run_filter: str | None) -> Any:
        yield "retry: 2000\n\n"
        idle = 0.0
        while not self._stop.is_set():
            fresh = self.events.since(after, limit=500)
            for event in fresh:
                after = event.id
                if run_filter is None or event.run_id == run_filter:
                    yield f"id: {event.id}\nevent: {event.type}\ndata: {event.model_dump_json()}\n\n"
            if fresh:
                idle = 0.0
                continue
            if await request.is_disconnected():
                return
            await asyncio.sleep(0.2)
            idle += 0.2
            if idle >= _KEEPALIVE_SECONDS:
                idle = 0.0
                yield ": keepalive\n\n"

    async def _json(self, request: Request) -> Any:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise Problem(415, "not_json", "Send the body as application/json.", "curl -H 'Content-Type: application/json'")
        body = await read_capped(request, _JSON_MAX_BYTES)
        try:
            return json.loads(body)
        except ValueError as exc:
            raise Problem(400, "bad_json", f"The body is not JSON: {exc}.", "Check the quoting of your JSON.") from None

    # -- errors ---------------------------------------------------------------

    def _problem(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Problem | uploads.UploadRefused)
        return _error(exc.status, exc.code, exc.message, exc.hint)

    def _not_found(self, request: Request, exc: Exception) -> Response:
        return _error(404, "not_found", str(exc), "GET /api/v1/runs lists the runs there are.")

    def _conflict(self, request: Request, exc: Exception) -> Response:
        code = "decision_refused" if isinstance(exc, DecisionRefused) else "conflict"
        return _error(409, code, str(exc), "GET the run to see where it stands.")

    def _http(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = str(exc.detail)
        if exc.status_code in (404, 405):
            message = f"There is no call {request.method} {request.url.path}."
        response = _error(exc.status_code, code, message, "See /api/v1/openapi.json for the calls there are.")
        response.headers.update(exc.headers or {})  # a 405 names the methods there are (Allow)
        return response

    def _too_large(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, TooLarge)
        return _error(413, "too_large", f"The request is over {exc.limit // (1024 * 1024) or exc.limit} "
                      f"{'MB' if exc.limit >= 1024 * 1024 else 'bytes'}.",
                      "Send a smaller file, or raise api.max_upload_mb.")

    def _bad_length(self, request: Request, exc: Exception) -> Response:
        return _error(400, "bad_length", "Content-Length must be a number of bytes.", "")

    def _invalid(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ValidationError)
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        return _error(422, "invalid_body", f"{where}: {first['msg']}", "See /api/v1/openapi.json.")

    def _unavailable(self, request: Request, exc: Exception) -> Response:
        log.warning("api.store_unavailable", error=str(exc))
        return _error(503, "unavailable", f"The run store cannot be used right now: {exc}", "Try again soon.")

    def _crash(self, request: Request, exc: Exception) -> Response:
        log.error("api.crashed", error=repr(exc), exc_info=exc)
        return _error(500, "internal", "Something went wrong inside Tandava.", "The daemon's log says what.")


def _error(status: int, code: str, message: str, hint: str) -> Response:
    return JSONResponse(error_body(code, message, hint), status_code=status)


def _remove(folder: Path) -> None:
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
