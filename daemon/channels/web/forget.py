"""The panel's Forget actions: archive one failed run, or every failed run, songs kept.

How this works: both are POSTs behind the same guard and CSRF check as every
other action (``form`` is the app's checked form reader), and they call
``daemon.runs.archive`` and nothing else, as ``tandava forget`` and ``tandava
clean --failed`` do, so the panel and the CLI never disagree about what
forgetting means. A refusal (a run being worked on) is a ``StoreError``, which
the app answers with a 409 and its message. The run is gone from the page
afterwards, so the answer leads back to the index, not to the run.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import structlog
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from daemon.channels.web.pages import FORGET_FAILED_PATH
from daemon.errors import RunNotFound
from daemon.runs import archive
from daemon.runs.store import RunStore

log = structlog.get_logger("tandava.web")

Form = Callable[[Request], Awaitable[dict[str, str]]]


def forget_routes(store: RunStore, form: Form, *, fetch_header: str) -> list[Route]:
    """``POST /runs/{run_id}/forget`` and ``POST /failed/forget``."""

    async def forget(request: Request) -> Response:
        await form(request)
        run_id: str | None = request.path_params.get("run_id")

        def work() -> str:
            if run_id is None:
                gone = [archive.forget(store, ref) for ref in archive.failed_runs(store)]
                return f"Forgot {len(gone)} failed run(s): they are in archive/ with their songs."
            ref = store.find(run_id)
            if ref.run_id != run_id:  # find() also matches prefixes; a URL names one run exactly
                raise RunNotFound(f"no run {run_id!r}")
            return f"Forgot {archive.forget(store, ref).run_id}: it is in archive/ with its song."

        message = await run_in_threadpool(work)
        log.info("web.action", run_id=run_id, what=message)
        if request.headers.get(fetch_header):
            return JSONResponse({"message": message})
        return RedirectResponse("/", status_code=303)

    return [Route("/runs/{run_id}/forget", forget, methods=["POST"]),
            Route(FORGET_FAILED_PATH, forget, methods=["POST"])]
