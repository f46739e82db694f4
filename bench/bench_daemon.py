"""The whole daemon as a person runs it: ingest latency, idle cost, and 1,000 runs on disk.

    python bench/bench_daemon.py [--quick] [--songs 20] [--idle 60] [--runs 1000]

Every figure comes from real ``python -m daemon --config X run`` subprocesses
(or ``tandava status``), each on its own temp root with a ``tandava.toml``
(defaults; ``[watch] stable_seconds = 2.0``, ``poll_seconds = 1.0``). A daemon
counts as up once ``logs/tandava.log`` holds its ``daemon.started`` event; it
is stopped with SIGINT (terminate on Windows), its warm stop.

1. Ingest latency, file closed -> run registered. N synthesized 3 s WAV songs,
   each with unique content (its own seed), are rendered to bytes before any
   timing. Each is written straight into the inbox through one open handle and
   closed (time.monotonic() at close), with irregular gaps of 0.2-0.6 s so
   polling phases are sampled evenly. A thread lists every state directory
   every 10 ms; a song is registered when a run folder whose id carries its
   slug (``bench-07.wav`` -> ``<time>_bench-07_<hash8>``) appears in any of
   them (the ``.ingest-`` staging folder does not count). Once with native
   events (``polling = "auto"`` on a local disk; the mode the daemon reports
   is printed) and once with ``polling = "always"``. Targets: native
   p95 <= 1 s; polling p95 <= stable_seconds + poll_seconds. Native latency
   is the 0.5 s settle after a close. (Intake moves a song out by link +
   unlink: a rename out of the inbox is an unpaired IN_MOVED_FROM, which
   watchdog holds for 0.5 s with every later event queued behind it.)
2. Idle daemon on an empty inbox: after ``daemon.started`` and a 2 s settle,
   psutil samples the daemon's process tree once a second for the idle window
   (60 s; 15 s with ``--quick``): peak RSS (sum over the tree) and CPU % (CPU
   time delta of the tree / wall time x 100, so 100 % is one core). Targets:
   RSS <= 150 MB, CPU <= 0.5 %.
3. 1,000 runs on disk. One real run is made through the library (``run
   --once`` in this process on a 20 s song, so ``run.json``, ``analysis.json``
   and ``segments.json`` are what the daemon writes); its audio is then cut
   to a 1 s stub so 1,000 copies stay small (neither status nor start-up opens
   audio). ``RunStore.move``/``RunStore.fail`` turn copies of it into one
   template per state, and the templates are copied to 1,000 run folders
   spread over analyzed/, imaged/, pending_approval/, approved/, rendered/ and
   failed/ (none in incoming/, so the daemon has no work), each with a fresh
   run id and its ``run.json``/``error.json`` rewritten to match. Measured:
   (a) ``tandava --config X status`` wall time as a cold subprocess (and
   ``status -v``, which reads every manifest, for information); (b) daemon
   start-up, spawn -> ``daemon.started``, which includes the start-up
   reconcile of every run. Target <= 2 s each. The start-up time of the empty
   daemon of (2) is printed beside it for comparison.

Prints one table, metric | measured | target | ratio (measured / target; below
1.00x meets the target). Bounded: about 85 s, 40 s with ``--quick``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import psutil
import structlog

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from daemon.errors import PermanentError  # noqa: E402
from daemon.music.synth import synth_song, write_long_silence, write_song  # noqa: E402
from daemon.runs.manifest import ERROR_FILE, MANIFEST, new_run_id  # noqa: E402
from daemon.runs.states import Event, State  # noqa: E402
from daemon.runs.store import RunRef, RunStore  # noqa: E402

STABLE_SECONDS = 2.0
POLL_SECONDS = 1.0
SONG_SECONDS = 3.0
SR = 22050
CHUNK_BYTES = 64 * 1024
DETECT_SECONDS = 0.01
START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0
# How the runs of part 3 spread over the state directories (fractions of --runs).
SPREAD = {
    State.ANALYZED: 0.40,
    State.IMAGED: 0.10,
    State.PENDING_APPROVAL: 0.10,
    State.APPROVED: 0.05,
    State.RENDERED: 0.25,
    State.FAILED: 0.10,
}
# The events that take an analyzed run to each state.
PATH_FROM_ANALYZED = {
    State.ANALYZED: (),
    State.IMAGED: (Event.IMAGES_DONE,),
    State.PENDING_APPROVAL: (Event.IMAGES_DONE, Event.OFFERED),
    State.APPROVED: (Event.IMAGES_DONE, Event.OFFERED, Event.ALL_APPROVED),
    State.RENDERED: (Event.IMAGES_DONE, Event.OFFERED, Event.ALL_APPROVED, Event.RENDER_DONE),
}


@dataclass
class Row:
    """One line of the final table; ``target`` None means for information only."""

    metric: str
    measured: float
    unit: str
    target: float | None = None

    def cells(self) -> tuple[str, str, str, str]:
        fmt = "{:.3f} {}" if self.unit == "s" else "{:.2f} {}"
        measured = fmt.format(self.measured, self.unit)
        if self.target is None:
            return self.metric, measured, "-", "-"
        target = f"<= {fmt.format(self.target, self.unit)}"
        return self.metric, measured, target, f"{self.measured / self.target:.2f}x"


# -- a daemon in a temp dir --------------------------------------------------------


def write_config(root: Path, *, polling: str = "auto") -> Path:
    """A ``tandava.toml`` in ``root``: defaults, the watch window spelled out."""
    config = root / "tandava.toml"
    config.write_text(
        "[paths]\n"
        'inbox = "inbox"\n'
        'state_root = "state"\n'
        'logs = "logs"\n'
        "\n[watch]\n"
        f"stable_seconds = {STABLE_SECONDS}\n"
        f"poll_seconds = {POLL_SECONDS}\n"
        f'polling = "{polling}"\n',
        encoding="utf-8",
    )
    return config


def clean_env() -> dict[str, str]:
    """This environment without TANDAVA_* overrides, so only the config file counts."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("TANDAVA_") and k != "JOURNAL_STREAM"
    }


def log_events(log_file: Path) -> Iterator[dict[str, object]]:
    """The JSON events of a daemon's log so far."""
    try:
        text = log_file.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if isinstance(event, dict):
                yield event


class Daemon:
    """``python -m daemon --config X run`` as a subprocess, up once it logs ``daemon.started``."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.root = config.parent
        self.log_file = self.root / "logs" / "tandava.log"
        self.console = self.root / "daemon-console.txt"
        self.proc: subprocess.Popen[bytes] | None = None
        self.started: dict[str, object] = {}
        self.startup_seconds = math.nan

    def start(self) -> float:
        """Spawn and wait for ``daemon.started``; returns the seconds from spawn to that event."""
        with self.console.open("wb") as console:
            t0 = time.monotonic()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "daemon", "--config", str(self.config), "run"],
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                env=clean_env(),
            )
        deadline = t0 + START_TIMEOUT
        while time.monotonic() < deadline:
            started = next(
                (e for e in log_events(self.log_file) if e.get("event") == "daemon.started"), None
            )
            if started is not None:
                self.startup_seconds = time.monotonic() - t0
                self.started = started
                return self.startup_seconds
            if self.proc.poll() is not None:
                break
            time.sleep(DETECT_SECONDS)
        self.stop()
        tail = self.console.read_text(encoding="utf-8", errors="replace")[-2000:]
        raise RuntimeError(f"the daemon in {self.root} did not start; its console said:\n{tail}")

    def stop(self) -> None:
        """Warm stop (SIGINT; terminate on Windows), then kill if it hangs."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        if os.name == "nt":
            proc.terminate()
        else:
            proc.send_signal(signal.SIGINT)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            print(
                f"  daemon {proc.pid} ignored the stop request for {STOP_TIMEOUT:.0f} s; killing it"
            )
            proc.kill()
            proc.wait()

    def __enter__(self) -> Daemon:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


# -- 1. ingest latency ---------------------------------------------------------------


def song_bytes(count: int) -> list[bytes]:
    """``count`` distinct 3 s WAV songs, rendered to bytes (different seeds and tempos)."""
    import soundfile as sf

    songs = []
    for i in range(count):
        y, _ = synth_song(SONG_SECONDS, 100.0 + 2 * i, sr=SR, seed=1000 + i)
        buf = io.BytesIO()
        sf.write(buf, y, SR, format="WAV")
        songs.append(buf.getvalue())
    return songs


def watch_state_dirs(state_root: Path, registered: dict[str, float], stop: threading.Event) -> None:
    """Record, per slug, when its run folder first shows up in any state directory."""
    folders = [state_root / state.value for state in State]
    while not stop.is_set():
        for folder in folders:
            try:
                with os.scandir(folder) as entries:
                    names = [e.name for e in entries if not e.name.startswith(".")]
            except FileNotFoundError:
                continue
            now = time.monotonic()
            for name in names:
                parts = name.split("_")
                if len(parts) >= 3:
                    registered.setdefault(parts[1], now)
        time.sleep(DETECT_SECONDS)


def ingest_latencies(root: Path, polling: str, songs: list[bytes]) -> tuple[list[float], str]:
    """Drop the songs into a live daemon's inbox; latencies (s) from close to run folder, and the mode."""
    root.mkdir(parents=True)
    daemon = Daemon(write_config(root, polling=polling))
    closed: dict[str, float] = {}
    registered: dict[str, float] = {}
    rng = random.Random(7)
    with daemon:
        inbox = root / "inbox"
        stop = threading.Event()
        watcher = threading.Thread(
            target=watch_state_dirs, args=(root / "state", registered, stop), daemon=True
        )
        watcher.start()
        try:
            for i, payload in enumerate(songs):
                slug = f"bench-{i:02d}"
                with (inbox / f"{slug}.wav").open("wb") as f:
                    for start in range(0, len(payload), CHUNK_BYTES):
                        f.write(payload[start : start + CHUNK_BYTES])
                closed[slug] = time.monotonic()
                time.sleep(rng.uniform(0.2, 0.6))
            deadline = time.monotonic() + STABLE_SECONDS + POLL_SECONDS + 15.0
            while time.monotonic() < deadline and not closed.keys() <= registered.keys():
                time.sleep(0.05)
        finally:
            stop.set()
            watcher.join()
    missing = sorted(closed.keys() - registered.keys())
    if missing:
        print(f"  {polling}: {len(missing)} song(s) never registered: {missing[:3]}")
    latencies = sorted(registered[s] - closed[s] for s in closed if s in registered)
    return latencies, str(daemon.started.get("watch_mode", "?"))


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


def measure_ingest(base: Path, count: int) -> list[Row]:
    songs = song_bytes(count)
    rows = []
    targets = {"auto": 1.0, "always": STABLE_SECONDS + POLL_SECONDS}
    for polling, target in targets.items():
        lat, mode = ingest_latencies(base / f"ingest-{polling}", polling, songs)
        label = f"ingest {mode} (polling={polling}, n={len(lat)})"
        print(f"  {label}: " + " ".join(f"{x:.2f}" for x in lat))
        if not lat:
            continue
        rows += [
            Row(f"{label} p50", percentile(lat, 0.50), "s"),
            Row(f"{label} p95", percentile(lat, 0.95), "s", target),
            Row(f"{label} max", lat[-1], "s"),
        ]
    return rows


# -- 2. idle daemon ------------------------------------------------------------------


def tree(proc: psutil.Process) -> list[psutil.Process]:
    """The process and its descendants alive now."""
    with contextlib.suppress(psutil.Error):
        return [proc, *proc.children(recursive=True)]
    return [proc]


def cpu_seconds(procs: list[psutil.Process]) -> dict[int, float]:
    """User + system CPU seconds per pid."""
    out = {}
    for p in procs:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            out[p.pid] = t.user + t.system
    return out


def measure_idle(base: Path, seconds: float) -> tuple[list[Row], float]:
    """Peak RSS and mean CPU of a daemon on an empty inbox; also returns its start-up seconds."""
    root = base / "idle"
    root.mkdir(parents=True)
    with Daemon(write_config(root)) as daemon:
        assert daemon.proc is not None
        time.sleep(2.0)  # past the start-up scan
        proc = psutil.Process(daemon.proc.pid)
        before, t0 = cpu_seconds(tree(proc)), time.monotonic()
        peak_rss = 0
        procs = tree(proc)
        while time.monotonic() - t0 < seconds:
            procs = tree(proc)
            rss = 0
            for p in procs:
                with contextlib.suppress(psutil.Error):
                    rss += p.memory_info().rss
            peak_rss = max(peak_rss, rss)
            time.sleep(min(1.0, max(0.0, seconds - (time.monotonic() - t0))))
        after, t1 = cpu_seconds(procs), time.monotonic()
        threads = proc.num_threads()
    used = sum(after[pid] - before.get(pid, 0.0) for pid in after)
    cpu = 100.0 * used / (t1 - t0)
    print(
        f"  idle: {len(procs)} process(es), {threads} threads, mode {daemon.started.get('watch_mode')}"
    )
    rows = [
        Row(f"idle RSS peak over {seconds:.0f} s", peak_rss / 1e6, "MB", 150.0),
        Row(f"idle CPU over {seconds:.0f} s", cpu, "%", 0.5),
    ]
    return rows, daemon.startup_seconds


# -- 3. 1,000 runs on disk -----------------------------------------------------------


def real_analyzed_run(root: Path) -> RunRef:
    """One run made by the library itself (intake, analysis, candidates), its audio then cut to a 1 s stub."""
    import daemon.app
    from daemon.config import load_settings

    inbox = root / "inbox"
    inbox.mkdir(parents=True)
    config = write_config(root)
    song = inbox / "template.wav"
    write_song(song, 20.0, 120.0, section_change_at=10.0, seed=1)
    an_hour_ago = time.time() - 3600
    os.utime(song, (an_hour_ago, an_hour_ago))  # `run --once` takes only songs that are still
    settings = load_settings(config)
    daemon.app.run(settings, threading.Event(), once=True)
    store = RunStore(settings.paths.state_root)
    # `--once` carries the run as far as it goes without a person (pending_approval,
    # candidates made): a fuller folder than analyzed/ alone, as most runs on disk are.
    refs = list(store.iter_runs())
    if len(refs) != 1 or refs[0].state is State.FAILED:
        raise RuntimeError(f"the template run did not get past analysis: {refs}")
    manifest = store.load(refs[0])
    write_long_silence(refs[0].path / manifest.song.file_name, 1.0)
    return refs[0]


def state_templates(analyzed: RunRef, store: RunStore) -> dict[State, RunRef]:
    """A run folder per state, moved there from a copy of ``analyzed`` through the store API."""
    store.ensure_layout()
    templates = {}
    for n, state in enumerate(SPREAD):
        ref = clone_run(analyzed, store.dir_for(State.ANALYZED), 9000 + n)
        if state is State.FAILED:
            ref = store.fail(
                ref,
                "images",
                PermanentError(
                    "ComfyUI rejected the workflow",
                    "Start ComfyUI, then retry.",
                    cause="BenchFailure",
                ),
            )
        else:
            for event in PATH_FROM_ANALYZED[state]:
                ref = store.move(ref, event)
        templates[state] = ref
    return templates


def clone_run(template: RunRef, dest_dir: Path, index: int) -> RunRef:
    """Copy ``template`` under a fresh run id, its manifest (and error.json) rewritten to match."""
    digest = hashlib.sha256(f"bench-run-{index}".encode()).hexdigest()
    arrived = datetime.strptime(template.run_id.split("_", 1)[0], "%Y%m%d-%H%M%S")
    run_id = new_run_id(arrived, f"song-{index:04d}.wav", digest)
    dest = dest_dir / run_id
    shutil.copytree(template.path, dest)
    manifest_path = dest / MANIFEST
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    manifest["run_id"] = run_id
    manifest["song"]["sha256"] = digest
    manifest_path.write_text(
        json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    error_path = dest / ERROR_FILE
    if error_path.is_file():
        error = json.loads(error_path.read_text(encoding="utf-8"))
        error["run_id"] = run_id
        error["retry"] = f"tandava retry {run_id}"
        error_path.write_text(
            json.dumps(error, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
    return RunRef(run_id, State(dest_dir.name), dest)


def build_runs(root: Path, count: int) -> dict[State, int]:
    """A state root under ``root`` holding ``count`` runs spread as SPREAD says."""
    analyzed = real_analyzed_run(root / "template")
    store = RunStore(root / "state")
    templates = state_templates(analyzed, store)
    # The template went further than analyzed/: let the store set each
    # template's manifest straight before it is copied a thousand times.
    for _ in store.reconcile():
        pass
    counts = {state: int(count * share) for state, share in SPREAD.items()}
    counts[State.ANALYZED] += count - sum(counts.values()) - len(templates)
    index = 0
    for state, n in counts.items():
        for _ in range(n):
            clone_run(templates[state], store.dir_for(state), index)
            index += 1
    shutil.rmtree(root / "template")
    return {state: sum(1 for _ in store.iter_runs([state])) for state in State}


def timed_cli(config: Path, *args: str) -> float:
    """Wall seconds of one cold ``tandava --config X ...`` process."""
    script = Path(sys.executable).with_name("tandava.exe" if os.name == "nt" else "tandava")
    cmd = [str(script)] if script.is_file() else [sys.executable, "-m", "daemon"]
    t0 = time.monotonic()
    done = subprocess.run(
        [*cmd, "--config", str(config), *args],
        cwd=config.parent,
        capture_output=True,
        env=clean_env(),
        check=False,
    )
    seconds = time.monotonic() - t0
    if done.returncode != 0:
        raise RuntimeError(
            f"tandava {' '.join(args)} failed: {done.stderr.decode(errors='replace')[-2000:]}"
        )
    return seconds


def measure_many_runs(base: Path, count: int) -> list[Row]:
    root = base / "many"
    root.mkdir(parents=True)
    t0 = time.monotonic()
    counts = build_runs(root, count)
    total = sum(counts.values())
    spread = ", ".join(f"{s.value} {n}" for s, n in counts.items() if n)
    print(f"  {total} runs built in {time.monotonic() - t0:.1f} s: {spread}")
    config = write_config(root)
    status = timed_cli(config, "status")
    status_all = timed_cli(config, "status", "-v")
    daemon = Daemon(config)
    with daemon:
        pass
    reconciled = sum(1 for e in log_events(daemon.log_file) if e.get("event") == "store.reconciled")
    if reconciled:
        print(
            f"  start-up reconcile changed {reconciled} thing(s): the runs were not as the daemon leaves them"
        )
    return [
        Row(f"`tandava status`, {total} runs", status, "s", 2.0),
        Row(f"`tandava status -v`, {total} runs", status_all, "s"),
        Row(f"daemon start-up, {total} runs", daemon.startup_seconds, "s", 2.0),
    ]


# -- the table -----------------------------------------------------------------------


def print_table(rows: list[Row]) -> None:
    header = ("metric", "measured", "target", "ratio")
    cells = [header, *(row.cells() for row in rows)]
    widths = [max(len(c[i]) for c in cells) for i in range(4)]
    for n, line in enumerate(cells):
        print(
            " | ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(line, widths, strict=True))
            )
        )
        if n == 0:
            print("-+-".join("-" * w for w in widths))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: 15 s idle window")
    parser.add_argument("--songs", type=int, default=20, help="songs per watch mode (default 20)")
    parser.add_argument(
        "--idle",
        type=float,
        default=None,
        help="idle window in seconds (default 60; 15 with --quick)",
    )
    parser.add_argument(
        "--runs", type=int, default=1000, help="runs on disk for status and start-up (default 1000)"
    )
    args = parser.parse_args()
    idle_seconds = args.idle if args.idle is not None else (15.0 if args.quick else 60.0)
    # This process builds one run through the library: keep its log quiet.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))

    t0 = time.monotonic()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="tandava-bench-") as tmp:
        base = Path(tmp)
        print(
            f"1. ingest: {args.songs} songs of {SONG_SECONDS:.0f} s per mode, "
            f"stable={STABLE_SECONDS}s poll={POLL_SECONDS}s"
        )
        rows += measure_ingest(base, args.songs)
        print(f"2. idle daemon, {idle_seconds:.0f} s window")
        idle_rows, empty_startup = measure_idle(base, idle_seconds)
        rows += idle_rows
        print(f"3. {args.runs} runs on disk")
        many_rows = measure_many_runs(base, args.runs)
        rows += many_rows[:-1]
        rows.append(Row("daemon start-up, empty state root", empty_startup, "s"))
        rows.append(many_rows[-1])
    print()
    print_table(rows)
    print(
        f"\n(one run, {time.monotonic() - t0:.0f} s in all; ratio = measured / target, <= 1.00x meets it)"
    )


if __name__ == "__main__":
    main()
