"""Running backend jobs so that none is lost or run twice.

How this works: ``ensure_job`` is the one place a stage hands work to a
backend. A job that is done (status recorded and its output on disk) is
returned as it is. A new job is written into ``run.json`` *before* the backend
hears of it (invariant 4), so a crash after submitting leaves a record to
re-attach to. A job recorded but not done is re-attached with ``collect`` when
the backend can resume it, and submitted again otherwise (redone once). Paths
in the manifest are relative to the run folder, because the folder moves
between state directories; backends get them made absolute.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import structlog

from daemon.backends import ImageBackend, Job, VideoBackend, noop_progress
from daemon.engine import StageRun

log = structlog.get_logger("tandava.jobs")


def located(record: Job, run_dir: Path) -> Job:
    """The job as a backend sees it: paths made absolute for where the run is now."""
    update = {"output": str(run_dir / record.output)}
    if record.source:
        update["source"] = str(run_dir / record.source)
    return record.model_copy(update=update)


def ensure_job(
    job: StageRun,
    backend: ImageBackend | VideoBackend,
    job_id: str,
    make_record: Callable[[], Job],
    *,
    check: Callable[[Path, Job], None] | None = None,
) -> Job:
    """Return the finished job ``job_id``, running it (or re-attaching to it) if needed.

    ``check`` inspects the output before the job counts as done (a broken clip
    raises there, and the job is submitted again on the next attempt).
    """
    manifest = job.manifest
    record = manifest.jobs.get(job_id)
    if record is not None and record.status == "done" and (job.ref.path / record.output).is_file():
        return record
    if record is None:
        record = make_record()
        manifest.jobs[job_id] = record
        job.store.save(job.ref, manifest)  # the id is on disk before the backend hears of it
        backend.submit(located(record, job.ref.path))
    elif not backend.can_resume(located(record, job.ref.path)):
        backend.submit(located(record, job.ref.path))
    (job.ref.path / record.output).parent.mkdir(parents=True, exist_ok=True)
    with structlog.contextvars.bound_contextvars(segment=record.segment):
        record.attempts += 1
        output = backend.collect(located(record, job.ref.path), progress=noop_progress, stop=job.stop_event)
        if check is not None:
            check(output, record)
        record.status = "done"
        job.store.save(job.ref, manifest)
        log.info("job.done", job=record.id, kind=record.kind, backend=backend.name, seed=record.seed)
    return record
