"""The one-daemon lock under a real race: four processes call ``lock()`` at the same instant."""

from __future__ import annotations

import multiprocessing
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from daemon.errors import StoreLocked
from daemon.runs.store import LOCK_FILE, RunStore

PROCESSES = 4
TRIALS = 100


def _contender(roots: list[str], barrier: Any, results: Any) -> None:
    """One racing process: for each root, lock at the barrier, report, hold until all have tried."""
    for root in roots:
        barrier.wait()
        try:
            release = RunStore(Path(root)).lock()
        except StoreLocked:
            release = None
        results.put((root, release is not None))
        barrier.wait()  # everyone has tried while the owner still holds it
        if release is not None:
            release()


def _owners_per_trial(roots: list[Path]) -> dict[str, int]:
    ctx = multiprocessing.get_context("spawn")  # fork in a threaded pytest warns, and Windows has no fork
    barrier = ctx.Barrier(PROCESSES)
    results = ctx.Queue()
    names = [str(root) for root in roots]
    procs = [ctx.Process(target=_contender, args=(names, barrier, results)) for _ in range(PROCESSES)]
    for proc in procs:
        proc.start()
    owners = dict.fromkeys(names, 0)
    try:
        for _ in range(len(names) * PROCESSES):
            root, owned = results.get(timeout=60)
            owners[root] += owned
    finally:
        for proc in procs:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
                proc.join()
        results.close()
        results.join_thread()
    assert all(proc.exitcode == 0 for proc in procs)
    return owners


def _killed_owners_lock(root: Path) -> Path:
    """A lock file left by a daemon that held the lock and was killed with -9."""
    child = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from pathlib import Path; from daemon.runs.store import RunStore; "
         f"RunStore(Path({str(root)!r})).lock(); print('locked', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "locked"
        child.send_signal(signal.SIGKILL if sys.platform != "win32" else signal.SIGTERM)
        child.wait(10)
    finally:
        if child.stdout is not None:
            child.stdout.close()
        child.kill()
        child.wait()
    lock = root / LOCK_FILE
    assert lock.read_text(encoding="utf-8") == str(child.pid)
    return lock


@pytest.fixture(scope="module")
def owners(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, int]]:
    """Owners per trial: 100 on fresh state roots, 100 on roots holding a killed daemon's lock file (one race)."""
    base = tmp_path_factory.mktemp("race")
    stale = _killed_owners_lock(base / "killed")
    fresh_roots = [base / f"fresh{i:03d}" for i in range(TRIALS)]
    stale_roots = [base / f"stale{i:03d}" for i in range(TRIALS)]
    for root in stale_roots:
        root.mkdir()
        shutil.copyfile(stale, root / LOCK_FILE)
    counted = _owners_per_trial(fresh_roots + stale_roots)  # one set of processes: spawning is the slow part
    return {
        "fresh": {str(r): counted[str(r)] for r in fresh_roots},
        "stale": {str(r): counted[str(r)] for r in stale_roots},
    }


def test_four_processes_racing_for_a_fresh_lock_make_exactly_one_owner(owners: dict[str, dict[str, int]]) -> None:
    """In 100 trials of four processes calling lock() at once on a new state root, exactly one owns it."""
    assert len(owners["fresh"]) == TRIALS
    assert sorted(set(owners["fresh"].values())) == [1]


def test_four_processes_racing_for_a_killed_daemons_lock_make_exactly_one_owner(
    owners: dict[str, dict[str, int]],
) -> None:
    """With a lock file left by a killed daemon, 100 trials of four racing processes always give one owner."""
    assert len(owners["stale"]) == TRIALS
    assert sorted(set(owners["stale"].values())) == [1]
