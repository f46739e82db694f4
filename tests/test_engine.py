"""The stage engine with fake stages on a real store: steps, retries, failures, stopping."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from daemon.errors import BadInput, TransientError, Unavailable
from daemon.runs.engine import Engine, Stage, StageRun
from daemon.runs.states import Event, State
from daemon.runs.store import RunRef, RunStore


def add_run(store: RunStore, tmp_path: Path, name: str = "a.mp3") -> RunRef:
    song = tmp_path / name
    song.write_bytes(name.encode())
    return store.create(song, (name.encode().hex() * 64)[:64])


def engine_for(store: RunStore, work, **kw) -> Engine:  # type: ignore[no-untyped-def]
    stage = Stage("analyze", State.INCOMING, Event.ANALYSIS_DONE, work)
    kw.setdefault("backoff_initial", 0.001)
    kw.setdefault("backoff_max", 0.002)
    kw.setdefault("tick_seconds", 0.01)
    return Engine(store, [stage], workers={"cpu": 2}, **kw)


def test_successful_stage_moves_run_and_records_steps(store: RunStore, tmp_path: Path) -> None:
    """A stage that finishes moves the run to its next state with its steps recorded."""

    def work(job: StageRun) -> None:
        (job.ref.path / "out.txt").write_text("x", encoding="utf-8")
        job.done("write", size=1)

    ref = add_run(store, tmp_path)
    engine_for(store, work).run(threading.Event(), once=True)
    moved = store.find(ref.run_id)
    assert moved.state is State.ANALYZED
    progress = store.load(moved).stages["analyze"]
    assert progress.steps_done == ["write"]
    assert progress.finished_at is not None


def test_finished_steps_are_not_redone(store: RunStore, tmp_path: Path) -> None:
    """A step recorded before a crash is skipped when the stage runs again."""
    calls: list[str] = []

    def work(job: StageRun) -> None:
        for step in ("one", "two"):
            if job.is_done(step):
                continue
            calls.append(step)
            job.done(step)

    ref = add_run(store, tmp_path)
    manifest = store.load(ref)
    manifest.progress("analyze").steps_done.append("one")  # as a killed daemon left it
    store.save(ref, manifest)
    engine_for(store, work).run(threading.Event(), once=True)
    assert calls == ["two"]


def test_transient_errors_retry_then_succeed(store: RunStore, tmp_path: Path) -> None:
    """Transient errors and OSError are retried with backoff until the stage succeeds."""
    failures = iter([TransientError("share gone"), OSError("EIO")])

    def work(job: StageRun) -> None:
        exc = next(failures, None)
        if exc is not None:
            raise exc

    ref = add_run(store, tmp_path)
    engine_for(store, work, attempts=5).run(threading.Event(), once=True)
    assert store.find(ref.run_id).state is State.ANALYZED


def test_transient_errors_exhaust_attempts_then_fail(store: RunStore, tmp_path: Path) -> None:
    """A transient error that never clears fails the run after the configured attempts."""
    calls = []

    def work(job: StageRun) -> None:
        calls.append(1)
        raise TransientError("server busy", "wait and retry")

    ref = add_run(store, tmp_path)
    engine_for(store, work, attempts=3).run(threading.Event(), once=True)
    failed = store.find(ref.run_id)
    assert failed.state is State.FAILED
    assert len(calls) == 3
    assert json.loads((failed.path / "error.json").read_text(encoding="utf-8"))["reason"] == "server busy"


def test_permanent_error_fails_at_once_and_others_continue(store: RunStore, tmp_path: Path) -> None:
    """A bad song fails alone; the other runs still complete."""

    def work(job: StageRun) -> None:
        if job.manifest.song.original_name == "bad.mp3":
            raise BadInput("the file is not audio", "drop a real song")

    bad = add_run(store, tmp_path, "bad.mp3")
    good = add_run(store, tmp_path, "good.mp3")
    engine_for(store, work).run(threading.Event(), once=True)
    assert store.find(bad.run_id).state is State.FAILED
    assert store.find(good.run_id).state is State.ANALYZED
    assert store.load(store.find(bad.run_id)).last_error.cause == "BadInput"  # type: ignore[union-attr]


def test_a_bug_in_a_stage_fails_the_run_not_the_daemon(store: RunStore, tmp_path: Path) -> None:
    """An unexpected exception becomes a failed run with an internal-error reason."""

    def work(job: StageRun) -> None:
        raise ZeroDivisionError("oops")

    ref = add_run(store, tmp_path)
    engine_for(store, work).run(threading.Event(), once=True)
    failed = store.find(ref.run_id)
    assert failed.state is State.FAILED
    assert "internal error" in store.load(failed).last_error.reason  # type: ignore[union-attr]


def test_stop_drains_work_in_flight_and_leaves_the_rest(store: RunStore, tmp_path: Path) -> None:
    """On stop, the run being worked on finishes; runs not started stay in their input state."""
    started = threading.Event()
    release = threading.Event()

    def work(job: StageRun) -> None:
        started.set()
        release.wait(5)
        job.done("slow")

    refs = [add_run(store, tmp_path, f"s{i}.mp3") for i in range(4)]
    stage = Stage("analyze", State.INCOMING, Event.ANALYSIS_DONE, work)
    engine = Engine(store, [stage], workers={"cpu": 1}, tick_seconds=0.01)
    stop = threading.Event()
    runner = threading.Thread(target=engine.run, args=(stop,))
    runner.start()
    assert started.wait(5)
    stop.set()
    release.set()
    runner.join(5)
    assert not runner.is_alive()
    states = sorted(store.find(r.run_id).state.value for r in refs)
    assert states == ["analyzed", "incoming", "incoming", "incoming"]


def test_transient_retry_is_cut_short_by_stop(store: RunStore, tmp_path: Path) -> None:
    """A run backing off after a transient error is left in place, not failed, when the daemon stops."""
    stop = threading.Event()

    def work(job: StageRun) -> None:
        stop.set()
        raise TransientError("share gone")

    ref = add_run(store, tmp_path)
    engine_for(store, work, backoff_initial=10, backoff_max=10).run(stop)
    assert store.find(ref.run_id).state is State.INCOMING


def test_waiting_runs_are_rechecked_without_counting_attempts(store: RunStore, tmp_path: Path) -> None:
    """A run that waits for a person is looked at again later, as one attempt, with its reason recorded."""
    from daemon.runs.engine import Waiting

    calls = []

    def work(job: StageRun) -> Waiting | None:
        calls.append(1)
        return Waiting("a person must approve", recheck_seconds=0.05) if len(calls) < 4 else None

    ref = add_run(store, tmp_path)
    stage = Stage("approval", State.INCOMING, Event.ANALYSIS_DONE, work)
    engine = Engine(store, [stage], tick_seconds=0.01)
    stop = threading.Event()
    runner = threading.Thread(target=engine.run, args=(stop,))
    runner.start()
    deadline = time.monotonic() + 5
    while store.find(ref.run_id).state is State.INCOMING and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    runner.join(5)
    moved = store.find(ref.run_id)
    assert moved.state is State.ANALYZED
    progress = store.load(moved).stages["approval"]
    assert len(calls) == 4 and progress.attempts == 1
    assert "waiting" not in progress.detail


def test_once_runs_chained_stages_to_the_end(store: RunStore, tmp_path: Path) -> None:
    """`once` never stops between two stages while a worker is moving the run on."""

    def quick(job: StageRun) -> None:
        return None

    stages = [
        Stage("analyze", State.INCOMING, Event.ANALYSIS_DONE, quick),
        Stage("images", State.ANALYZED, Event.IMAGES_DONE, quick),
        Stage("offer", State.IMAGED, Event.OFFERED, quick),
    ]
    for i in range(100):
        ref = add_run(store, tmp_path, f"song{i}.mp3")
        Engine(store, stages, workers={"cpu": 2}, tick_seconds=0.001).run(threading.Event(), once=True)
        assert store.find(ref.run_id).state is State.PENDING_APPROVAL, i


def test_unavailable_backend_parks_the_run_without_using_attempts(store: RunStore, tmp_path: Path) -> None:
    """A GPU server that is down makes the run wait (no attempt used, reason recorded), then carry on."""
    calls: list[int] = []

    def work(job: StageRun) -> None:
        calls.append(1)
        if len(calls) <= 6:  # more outages than the engine has attempts
            raise Unavailable("ComfyUI at http://gpu:8188 cannot be reached", recheck_seconds=0.0)

    ref = add_run(store, tmp_path)
    engine = engine_for(store, work, attempts=2)
    stop = threading.Event()
    thread = threading.Thread(target=engine.run, args=(stop,))
    thread.start()
    deadline = time.monotonic() + 10
    while store.find(ref.run_id).state is State.INCOMING and time.monotonic() < deadline:
        time.sleep(0.02)
    stop.set()
    thread.join()
    moved = store.find(ref.run_id)
    assert moved.state is State.ANALYZED
    assert len(calls) == 7


def test_a_run_someone_else_is_rewriting_waits_for_them(store: RunStore, tmp_path: Path) -> None:
    """A run whose work lock another holds (retry --tempo) is left alone until it is released, then processed."""
    from daemon.runs import worklock

    calls: list[str] = []

    def work(job: StageRun) -> None:
        calls.append(job.ref.run_id)
        job.done("write")

    ref = add_run(store, tmp_path)
    engine = engine_for(store, work)
    stop = threading.Event()
    with worklock.working_on(store.root, ref.run_id, "tandava retry --tempo (pid 1)") as mine:
        assert mine
        runner = threading.Thread(target=engine.run, args=(stop,))
        runner.start()
        time.sleep(0.3)
        assert calls == [] and store.find(ref.run_id).state is State.INCOMING
    deadline = time.monotonic() + 10
    while store.find(ref.run_id).state is not State.ANALYZED and time.monotonic() < deadline:
        time.sleep(0.02)
    stop.set()
    runner.join(10)
    assert calls == [ref.run_id] and store.find(ref.run_id).state is State.ANALYZED
