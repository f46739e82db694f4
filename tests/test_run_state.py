"""Run state people can trust: every stage outcome closes the stage, broken runs are named once."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from daemon.errors import BadInput
from daemon.host.report import show_lines, status_lines
from daemon.runs.engine import Engine, Moved, Stage, StageRun, Waiting
from daemon.runs.manifest import Manifest
from daemon.runs.states import Event, State
from daemon.runs.store import MANIFEST_BACKUP, RunRef, RunStore


def add_run(store: RunStore, tmp_path: Path, name: str = "a.mp3") -> RunRef:
    song = tmp_path / name
    song.write_bytes(name.encode())
    return store.create(song, (name.encode().hex() * 64)[:64])


def run_until(engine: Engine, done, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    """Run ``engine`` in a thread until ``done()`` holds, then stop it."""
    stop = threading.Event()
    thread = threading.Thread(target=engine.run, args=(stop,))
    thread.start()
    deadline = time.monotonic() + timeout
    try:
        while not done() and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        thread.join(10)
    assert done()


def test_a_stage_that_moves_the_run_itself_is_finished_without_its_waiting_reason(
        store: RunStore, tmp_path: Path) -> None:
    """A stage answering Moved (the approval gate) gets finished_at and loses its waiting detail."""
    calls: list[int] = []

    def gate(job: StageRun) -> Waiting | Moved:
        calls.append(1)
        if len(calls) < 3:
            return Waiting("waiting for a person to approve 3 of 3 segment(s)", recheck_seconds=0.0)
        return Moved(job.store.move(job.ref, Event.ANALYSIS_DONE, note="all approved"))

    ref = add_run(store, tmp_path)
    engine = Engine(store, [Stage("approval", State.INCOMING, Event.ANALYSIS_DONE, gate)], tick_seconds=0.01)
    run_until(engine, lambda: store.find(ref.run_id).state is State.ANALYZED)
    moved = store.find(ref.run_id)
    manifest = store.load(moved)
    progress = manifest.stages["approval"]
    assert progress.finished_at is not None and progress.is_open is False
    assert "waiting" not in progress.detail
    assert manifest.history[-1].note == "all approved"
    assert any("approval: finished" in line for line in show_lines(store, ref.run_id))
    assert not any("waiting for a person" in line for line in status_lines(store.root))


def test_a_failed_stage_is_shown_failed_not_in_progress(store: RunStore, tmp_path: Path) -> None:
    """A run that failed shows its stage as failed in `show`, and retry opens it again."""

    def work(job: StageRun) -> None:
        job.done("hash")
        raise BadInput("the song is silent", "drop a song with sound")

    ref = add_run(store, tmp_path)
    Engine(store, [Stage("analyze", State.INCOMING, Event.ANALYSIS_DONE, work)],
           tick_seconds=0.01).run(threading.Event(), once=True)
    failed = store.find(ref.run_id)
    assert failed.state is State.FAILED
    lines = list(show_lines(store, ref.run_id))
    assert any(line.startswith("  analyze: failed; steps: hash") for line in lines), lines
    assert not any("in progress" in line for line in lines)
    status = list(status_lines(store.root))
    assert f"  {ref.run_id}  failed in analyze: the song is silent" in status
    back = store.retry(failed)
    assert store.load(back).stages["analyze"].is_open


def test_a_waiting_run_is_not_reported_as_being_worked_on(store: RunStore, tmp_path: Path) -> None:
    """A run only re-checked while it waits for a person is never in in_flight."""
    seen: list[list[str]] = []
    engine: Engine

    def gate(job: StageRun) -> Waiting:
        seen.append(engine.in_flight())
        return Waiting("waiting for a person", recheck_seconds=0.02)

    ref = add_run(store, tmp_path)
    engine = Engine(store, [Stage("approval", State.INCOMING, Event.ANALYSIS_DONE, gate)], tick_seconds=0.005)
    run_until(engine, lambda: len(seen) >= 5)
    assert seen[0] == [ref.run_id]  # the first look is work: the run was not waiting yet
    assert all(ids == [] for ids in seen[1:])
    assert engine.in_flight() == []


def test_pauses_of_runs_that_never_come_back_are_forgotten(store: RunStore, tmp_path: Path) -> None:
    """The engine drops its note of a paused run once no stage lists that run any more."""

    def gate(job: StageRun) -> Waiting:
        return Waiting("waiting for a person", recheck_seconds=60.0)

    refs = [add_run(store, tmp_path, f"s{i}.mp3") for i in range(3)]
    engine = Engine(store, [Stage("approval", State.INCOMING, Event.ANALYSIS_DONE, gate)], tick_seconds=0.005)
    run_until(engine, lambda: len(engine.waiting()) == 3)
    for ref in refs[:2]:  # a person archives two of them; they never come back to incoming/
        (store.root / "elsewhere").mkdir(exist_ok=True)
        ref.path.rename(store.root / "elsewhere" / ref.run_id)
    engine.tick()
    assert engine.waiting() == [refs[2].run_id]
    engine.shutdown()


def broken_engine(store: RunStore) -> tuple[Engine, list[str]]:
    calls: list[str] = []

    def work(job: StageRun) -> None:
        calls.append(job.ref.run_id)

    return Engine(store, [Stage("analyze", State.INCOMING, Event.ANALYSIS_DONE, work)], tick_seconds=0.005), calls


def test_a_folder_without_run_json_is_named_once_then_left_alone(store: RunStore) -> None:
    """A folder in a state directory that is not a run is logged once, with the fix, not every few seconds."""
    stray = store.dir_for(State.INCOMING) / "holiday photos"
    stray.mkdir()
    engine, calls = broken_engine(store)
    with capture_logs() as logs:
        for _ in range(20):
            engine.tick()
            engine.busy()
            time.sleep(0.01)
    engine.shutdown()
    broken = [e for e in logs if e["event"] == "run.broken"]
    assert len(broken) == 1, logs
    assert broken[0]["problem"].startswith(f"{stray} is not a Tandava run: no run.json.")
    assert "tandava forget holiday photos" in broken[0]["problem"]
    assert not [e for e in logs if e["event"] == "stage.store_error"]
    assert calls == []


def test_a_damaged_run_json_is_named_once_and_looked_at_again_when_it_changes(
        store: RunStore, tmp_path: Path) -> None:
    """A truncated run.json is named once (restore from run.json.bak); restoring it lets the run go on."""
    ref = add_run(store, tmp_path)
    manifest = store.load(ref)
    store.save(ref, manifest)  # a second write: the first is kept as run.json.bak
    good = ref.manifest_path.read_bytes()
    assert (ref.path / MANIFEST_BACKUP).read_bytes() != b""
    ref.manifest_path.write_bytes(good[: len(good) // 2])  # torn by a full disk or a hand edit
    engine, calls = broken_engine(store)
    with capture_logs() as logs:
        for _ in range(10):
            engine.tick()
            engine.busy()
            time.sleep(0.01)
    broken = [e for e in logs if e["event"] == "run.broken"]
    assert len(broken) == 1
    assert broken[0]["problem"] == (f"{ref.manifest_path} is damaged: restore it from run.json.bak "
                                    f"or `tandava forget {ref.run_id}`.")
    (ref.path / MANIFEST_BACKUP).replace(ref.manifest_path)  # the person restores it
    deadline = time.monotonic() + 5
    while not calls and time.monotonic() < deadline:
        engine.tick()
        time.sleep(0.01)
    engine.shutdown()
    assert calls == [ref.run_id]


def test_every_manifest_write_keeps_the_previous_one_whole(store: RunStore, tmp_path: Path) -> None:
    """run.json.bak is always the manifest before the last write, and reads back."""
    ref = add_run(store, tmp_path)
    for n in range(3):
        manifest = store.load(ref)
        manifest.progress("analyze").attempts = n + 1
        store.save(ref, manifest)
        backup = Manifest.model_validate_json((ref.path / MANIFEST_BACKUP).read_bytes())
        assert backup.stages.get("analyze", None) is None or backup.stages["analyze"].attempts == n
    assert [p.name for p in ref.path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("stage_name", ["analyze", "render"])
def test_a_run_whose_song_was_deleted_fails_with_a_path_that_exists(
        settings, store: RunStore, tmp_path: Path, stage_name: str) -> None:  # type: ignore[no-untyped-def]
    """A deleted song fails the run with a hint naming the failed/ folder the run rests in."""
    from daemon.stages.pipeline import Analyze
    from daemon.stages.render import Render

    ref = add_run(store, tmp_path)
    (ref.path / "a.mp3").unlink()
    work = Analyze(settings) if stage_name == "analyze" else Render(settings)
    Engine(store, [Stage(stage_name, State.INCOMING, Event.ANALYSIS_DONE, work)],
           tick_seconds=0.01).run(threading.Event(), once=True)
    failed = store.find(ref.run_id)
    assert failed.state is State.FAILED
    error = store.load(failed).last_error
    assert error is not None and error.cause == "Missing"
    assert f"Put the song back into {failed.path} as a.mp3" in error.hint
    assert failed.path.is_dir()
    assert f"tandava retry {ref.run_id}" in error.hint


class _LocalBackend:
    """A backend that works inside collect, like storyboard and kenburns (it cannot resume)."""

    name = "local"
    resource = "cpu"

    def __init__(self) -> None:
        self.submitted: list[str] = []

    def submit(self, job) -> None:  # type: ignore[no-untyped-def]
        self.submitted.append(job.id)

    def collect(self, job, *, progress, stop) -> Path:  # type: ignore[no-untyped-def]
        out = Path(job.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(b"image")
        return out

    def can_resume(self, job) -> bool:  # type: ignore[no-untyped-def]
        return False


def test_a_job_made_again_after_a_kill_shows_two_attempts(store: RunStore, tmp_path: Path) -> None:
    """The attempt is on disk when a job starts: a kill mid-job then a redo gives attempts 2 in `show`."""
    from daemon.runs.job import Job
    from daemon.stages.jobs import ensure_job, start_job

    ref = add_run(store, tmp_path)

    def make() -> Job:
        return Job(id="j1", kind="image", backend="local", segment=0, seed=7, width=64, height=48,
                   output="candidates/s000_c00.png")

    backend = _LocalBackend()
    first = StageRun("images", ref, store.load(ref), store, threading.Event())
    start_job(first, backend, "j1", make)  # … and the daemon is killed before the job ends
    assert store.load(ref).jobs["j1"].attempts == 1
    again = StageRun("images", ref, store.load(ref), store, threading.Event())  # after the restart
    record = ensure_job(again, backend, "j1", make)
    assert record.status == "done" and record.attempts == 2
    assert backend.submitted == ["j1", "j1"]
    lines = list(show_lines(store, ref.run_id))
    assert "jobs     1 done, 0 in flight, 0 failed; 2 attempt(s) for 1 job(s)" in lines
    assert "  image s000#0  done; attempts: 2  [j1]" in lines


def test_status_and_show_name_a_broken_run_with_its_fix(store: RunStore, tmp_path: Path) -> None:
    """status and show say what is wrong with a folder that is not a run, and how to fix it."""
    stray = store.dir_for(State.FAILED) / "notes"
    stray.mkdir()
    expected = (f"{stray} is not a Tandava run: no run.json. Move it out of failed/, "
                "or archive it with `tandava forget notes`.")
    assert f"  notes  BROKEN: {expected}" in list(status_lines(store.root))
    assert list(show_lines(store, "notes"))[-1] == f"BROKEN   {expected}"


def test_start_up_closes_stages_that_older_runs_left_open(store: RunStore, tmp_path: Path) -> None:
    """Runs rendered or failed before every outcome closed its stage are mended by reconcile at start-up."""
    from daemon.errors import PermanentError

    rendered = add_run(store, tmp_path, "done.wav")
    for event in (Event.ANALYSIS_DONE, Event.IMAGES_DONE, Event.OFFERED, Event.ALL_APPROVED, Event.RENDER_DONE):
        rendered = store.move(rendered, event)
    failed = store.fail(add_run(store, tmp_path, "bad.mp3"), "analyze", PermanentError("silent"))
    for ref, stage in ((rendered, "approval"), (failed, "analyze")):
        manifest = store.load(ref)
        progress = manifest.progress(stage)  # as an older Tandava left it
        progress.started_at, progress.finished_at, progress.failed_at = manifest.created_at, None, None
        progress.detail["waiting"] = "waiting for a person to approve 39 of 41 segment(s)"
        store.save(ref, manifest)
    actions = store.reconcile()
    assert f"closed the stages {rendered.run_id} left open" in actions
    assert store.load(rendered).stages["approval"].outcome == "finished"
    assert store.load(failed).stages["analyze"].outcome == "failed"
    assert not any("waiting for a person" in line for line in status_lines(store.root))


def test_a_readable_run_that_cannot_move_is_retried_and_its_reason_logged_once(
        store: RunStore, tmp_path: Path) -> None:
    """A folder of the run's name in the way is logged once as a store error, and the move succeeds once it goes."""
    ref = add_run(store, tmp_path)
    in_the_way = store.dir_for(State.ANALYZED) / ref.run_id
    in_the_way.mkdir()
    engine = Engine(store, [Stage("analyze", State.INCOMING, Event.ANALYSIS_DONE, lambda job: None)],
                    tick_seconds=0.005, store_error_pause=0.01)  # a short pause, to see several tries
    with capture_logs() as logs:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and len([e for e in logs if e["event"] == "stage.started"]) < 3:
            engine.tick()
            time.sleep(0.02)
        errors = [e for e in logs if e["event"] == "stage.store_error"]
        assert len(errors) == 1 and "a folder of that name exists" in errors[0]["error"]
        assert not [e for e in logs if e["event"] == "run.broken"]
    in_the_way.rmdir()
    run_until(engine, lambda: store.find(ref.run_id).state is State.ANALYZED)


def test_a_backup_that_cannot_be_written_never_stops_the_manifest_write(store: RunStore, tmp_path: Path) -> None:
    """With run.json.bak impossible to replace (a folder in its place), run.json is still written."""
    ref = add_run(store, tmp_path)
    (ref.path / MANIFEST_BACKUP).mkdir()
    manifest = store.load(ref)
    manifest.progress("analyze").attempts = 3
    store.save(ref, manifest)
    assert store.load(ref).stages["analyze"].attempts == 3
    assert [p.name for p in ref.path.iterdir() if p.name.startswith(".")] == []


def test_a_job_started_then_waited_for_is_one_attempt_and_a_retry_is_another(
        store: RunStore, tmp_path: Path) -> None:
    """Starting every job first, then finishing each, counts one attempt; a failed collect retried counts two."""
    from daemon.errors import TransientError
    from daemon.runs.job import Job
    from daemon.stages.jobs import ensure_job, start_job

    ref = add_run(store, tmp_path)

    def make(jid: str):  # type: ignore[no-untyped-def]
        return lambda: Job(id=jid, kind="clip", backend="local", segment=0, seed=1, width=64, height=48,
                           output=f"clips/{jid}.mp4")

    class Flaky(_LocalBackend):
        fails = 1

        def collect(self, job, *, progress, stop) -> Path:  # type: ignore[no-untyped-def]
            if job.id == "b" and self.fails:
                self.fails -= 1
                raise TransientError("the backend hiccuped")
            return super().collect(job, progress=progress, stop=stop)

    backend = Flaky()
    work = StageRun("render", ref, store.load(ref), store, threading.Event())
    for jid in ("a", "b"):
        start_job(work, backend, jid, make(jid))
    assert ensure_job(work, backend, "a", make("a")).attempts == 1
    with pytest.raises(TransientError):
        ensure_job(work, backend, "b", make("b"))
    assert ensure_job(work, backend, "b", make("b")).attempts == 2  # the engine's retry, same attempt object
    assert store.load(ref).jobs["a"].attempts == 1 and store.load(ref).jobs["b"].attempts == 2
