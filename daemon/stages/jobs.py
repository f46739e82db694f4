"""Running backend jobs so that none is lost or run twice.

How this works: ``start_job`` is the one place a stage hands work to a
backend. A job that is done (status recorded and its output on disk) is
returned as it is. A new job is written into ``run.json`` *before* the backend
hears of it (invariant 4), so a crash after submitting leaves a record to
re-attach to. A job recorded but not done is re-attached when the backend can
resume it, and submitted again otherwise (redone once). Each submission counts
an attempt, recorded before the backend starts it, so a job made again after
a kill shows ``attempts: 2``. ``finish_job`` waits
for it, checks the output and records it done. A stage starts all the jobs it
can before it finishes the first, so a GPU server always has the next job
queued. Paths in the manifest are relative to the run folder, because the
folder moves between state directories; backends get them made absolute.

``ensure_checked`` adds quality control: an output that fails its check is
recorded as failed with the figures, and the job is made again with the next
seed, up to a bound; then the run fails with the last figures.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import structlog

from daemon.backends.base import ImageBackend, Job, VideoBackend
from daemon.errors import QCFailed, QCGaveUp
from daemon.runs.stage import StageRun

log = structlog.get_logger("tandava.jobs")

Backend = ImageBackend | VideoBackend
Check = Callable[[Path, Job], None]
# Progress is written into run.json for `tandava status`, at most this often.
PROGRESS_WRITE_SECONDS = 1.0


def located(record: Job, run_dir: Path) -> Job:
    """The job as a backend sees it: paths made absolute for where the run is now.

    Its ``detail`` is a copy: what a backend writes there (a cloud operation's
    name, the model that answered) is taken back into the record by ``start_job``
    and ``finish_job``, and saved.
    """
    detail = dict(record.detail)
    if detail.get("last_frame"):
        detail["last_frame"] = str(run_dir / str(detail["last_frame"]))
    update: dict[str, object] = {"output": str(run_dir / record.output), "detail": detail}
    if record.source:
        update["source"] = str(run_dir / record.source)
    return record.model_copy(update=update)


def _take_back(record: Job, sent: Job) -> bool:
    """Copy what the backend wrote into ``sent.detail`` back to the record; True when it changed."""
    detail = {k: v for k, v in sent.detail.items() if k != "last_frame"}
    detail.setdefault("last_frame", record.detail.get("last_frame", ""))
    if not detail["last_frame"]:
        detail.pop("last_frame")
    if detail == record.detail:
        return False
    record.detail = detail
    return True


def _submit(job: StageRun, backend: Backend, record: Job) -> None:
    """Hand the job to the backend; whatever it recorded (an operation name) is on disk when this returns."""
    sent = located(record, job.ref.path)
    try:
        backend.submit(sent)
    finally:
        if _take_back(record, sent):
            job.store.save(job.ref, job.manifest)


def is_done(job: StageRun, record: Job | None) -> bool:
    return record is not None and record.status == "done" and (job.ref.path / record.output).is_file()


def start_job(job: StageRun, backend: Backend, job_id: str, make_record: Callable[[], Job]) -> Job:
    """Record and submit ``job_id`` unless it is done or can be re-attached; returns its record."""
    manifest = job.manifest
    record = manifest.jobs.get(job_id)
    if is_done(job, record):
        assert record is not None
        return record
    if record is not None and record.status == "submitted" and job_id in job.started:
        return record  # started a moment ago by this same attempt (a stage starts all, then waits)
    if record is None:
        record = make_record()
        record.attempts = 1
        manifest.jobs[job_id] = record
        job.store.save(job.ref, manifest)  # the id is on disk before the backend hears of it
        _submit(job, backend, record)
    elif record.status == "failed" or not _can_resume(job, backend, record):
        # Made again (after a kill, a lost server, a failure): the attempt is on
        # disk before the backend starts it, so `show` counts what kills cost.
        record.attempts += 1
        record.status = "submitted"
        # Made again, perhaps by another backend than the one that recorded it first.
        record.backend = backend.name
        job.store.save(job.ref, manifest)
        _submit(job, backend, record)
    job.started.add(job_id)
    return record


def start_jobs(job: StageRun, backend: Backend,
               wanted: list[tuple[str, Callable[[], Job]]]) -> list[Job]:
    """``start_job`` for many jobs with one manifest write: every new id is on disk before the
    backend hears of any (a stage's whole batch would otherwise cost a synced write per job
    before the first one even reaches the server)."""
    manifest = job.manifest
    new = [(jid, make()) for jid, make in wanted if jid not in manifest.jobs]
    for jid, record in new:
        record.attempts = 1
        manifest.jobs[jid] = record
    if new:
        job.store.save(job.ref, manifest)
    fresh = {jid for jid, _ in new}
    records = []
    for jid, make in wanted:
        if jid in fresh:
            record = manifest.jobs[jid]
            _submit(job, backend, record)
            job.started.add(jid)
        else:
            record = start_job(job, backend, jid, make)
        records.append(record)
    return records


def _can_resume(job: StageRun, backend: Backend, record: Job) -> bool:
    sent = located(record, job.ref.path)
    resumable = backend.can_resume(sent)
    _take_back(record, sent)  # e.g. an expired operation name dropped
    return resumable


def finish_job(job: StageRun, backend: Backend, record: Job, *, check: Check | None = None) -> Job:
    """Wait for a started job, check its output and record it done."""
    if is_done(job, record):
        return record
    (job.ref.path / record.output).parent.mkdir(parents=True, exist_ok=True)
    with structlog.contextvars.bound_contextvars(segment=record.segment):
        record.attempts = max(record.attempts, 1)  # a record written before attempts were counted at start
        sent = located(record, job.ref.path)
        try:
            try:
                output = backend.collect(sent, progress=_progress_writer(job, record), stop=job.stop_event)
            finally:
                # What the backend recorded while collecting; before the check, which adds its figures.
                if _take_back(record, sent):
                    job.store.save(job.ref, job.manifest)
            if check is not None:
                check(output, record)
        except BaseException:
            job.started.discard(record.id)  # a retry of the stage starts it again: a new attempt
            raise
        record.status = "done"
        for key in ("progress", "where"):
            record.detail.pop(key, None)
        job.store.save(job.ref, job.manifest)
        log.info("job.done", job=record.id, kind=record.kind, backend=backend.name, seed=record.seed)
    return record


def ensure_job(job: StageRun, backend: Backend, job_id: str, make_record: Callable[[], Job], *,
               check: Check | None = None) -> Job:
    """Return the finished job ``job_id``, running it (or re-attaching to it) if needed."""
    return finish_job(job, backend, start_job(job, backend, job_id, make_record), check=check)


Attempt = Callable[[int], tuple[str, Callable[[], Job]]]


def ensure_checked(job: StageRun, backend: Backend, attempt: Attempt, *, attempts: int, check: Check,
                   what: str) -> Job:
    """Run attempt 0, 1, … (each a new seed) until one passes ``check``; give up after ``attempts``."""
    last: QCFailed | None = None
    for n in range(attempts):
        job_id, make_record = attempt(n)
        record = job.manifest.jobs.get(job_id)
        if record is not None and record.status == "failed" and "qc" in record.detail:
            last = QCFailed(str(record.detail["qc"]), figures=_figures(record))
            continue  # this seed's output already failed QC before a restart
        try:
            return ensure_job(job, backend, job_id, make_record, check=check)
        except QCFailed as exc:
            record = job.manifest.jobs[job_id]
            record.status = "failed"
            record.detail.update({"qc": exc.reason, **{f"qc_{k}": v for k, v in exc.figures.items()}})
            job.store.save(job.ref, job.manifest)
            log.warning("qc.failed", job=job_id, what=what, reason=exc.reason, attempt=n + 1, of=attempts,
                        **exc.figures)
            last = exc
    assert last is not None
    raise QCGaveUp(
        f"{what} failed quality checks with {attempts} different seeds; the last one was {last.reason}",
        "Check the workflow's models and settings (a wrong VAE or model gives black or frozen output), "
        "raise qc_attempts in tandava.toml, then run `tandava retry <run>`.",
        figures=last.figures,
    )


def _figures(record: Job) -> dict[str, float]:
    return {k[3:]: float(v) for k, v in record.detail.items() if k.startswith("qc_") and isinstance(v, int | float)}


def _progress_writer(job: StageRun, record: Job) -> Callable[..., None]:
    """A progress callback that keeps ``run.json`` current for `tandava status`, throttled."""
    last = 0.0

    def progress(fraction: float, where: str = "") -> None:
        nonlocal last
        now = time.monotonic()
        # The end is recorded with the job itself; in between, once a second is plenty.
        if fraction >= 1.0 or now - last < PROGRESS_WRITE_SECONDS:
            return
        last = now
        if record.detail.get("progress") == round(fraction, 3) and record.detail.get("where") == where:
            return
        record.detail["progress"] = round(fraction, 3)
        if where:
            record.detail["where"] = where
        job.store.save(job.ref, job.manifest)

    return progress
