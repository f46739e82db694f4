"""Deciding while the GPU works: how soon a person sees candidates, and how busy the GPU stays.

    python bench/bench_pipeline.py [--segments 40] [--image-seconds 1.0] [--clip-seconds 3.0]
                                   [--decide-after 2.0] [--songs 3] [--scale 1.0]

How this works: the whole daemon (``daemon.app.run``, in this process) on the
fake ComfyUI (``tests/fakecomfy``, ComfyUI's wire protocol on a real socket),
with Flux image jobs taking ``image-seconds`` and Wan clip jobs
``clip-seconds`` on the server (``--scale`` multiplies both, for a quick look),
a synthesized song cut into ``segments`` segments with 2 candidates each.
1. **Manual approval with a simulated person** who approves candidate 0 of
   each segment ``decide-after`` seconds after it is offered (polling the
   shared view, as the panel does). Reported, from the moment the run exists:
   the first offer against analysis + 2 image jobs + 0.5 s; approved/ against
   analysis + every image job + 2 s (before this change: + segments ×
   decide-after, because nothing was offered until the last image).
2. **Auto approval**: the server's idle time between the last image job and
   the first clip job (from the fake's own timestamps). Target ≤ 0.2 s.
3. **Songs dropped together** (auto): server makespan (first job start → last
   job end) over the sum of job times. Target ≤ 1.05.
Measured in one run; no timing assertions.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from bench_comfy import executions  # noqa: E402
from comfy_helpers import FLUX, WAN, models_for  # noqa: E402
from fakecomfy.server import FakeComfy  # noqa: E402

from daemon.app import run  # noqa: E402
from daemon.approval import decisions  # noqa: E402
from daemon.approval.store import offered_segments  # noqa: E402
from daemon.config import Settings, load_settings  # noqa: E402
from daemon.music.synth import write_song  # noqa: E402
from daemon.runs.states import State  # noqa: E402
from daemon.runs.store import RunStore  # noqa: E402


def settings_for(root: Path, fake: FakeComfy, *, segments: int, mode: str) -> Settings:
    """A daemon on the fake: Flux candidates, Wan clips, ``segments`` segments of 2 candidates."""
    (root / "tandava.toml").write_text(
        f'[paths]\ninbox = "{(root / "inbox").as_posix()}"\nstate_root = "{(root / "state").as_posix()}"\n'
        f'logs = "{(root / "logs").as_posix()}"\n'
        "[watch]\nstable_seconds = 0.2\nrescan_seconds = 0.5\npoll_seconds = 0.1\n"
        "[engine]\ntick_seconds = 0.5\n[web]\nenabled = false\n"
        f'[analysis]\nsegments = {segments}\n[images]\nbackend = "comfyui"\ncandidates = 2\n'
        f'[clips]\nbackend = "comfyui"\n[approval]\nmode = "{mode}"\n'
        '[assembly]\ntransition = "none"\n[video]\nwidth = 208\nheight = 128\n'
        f'[comfy]\nservers = ["{fake.url}"]\n', encoding="utf-8")
    return load_settings(root / "tandava.toml")


def fake_for(root: Path, image_seconds: float, clip_seconds: float) -> FakeComfy:
    """A fake whose Flux jobs take ``image_seconds`` and Wan jobs ``clip_seconds``."""
    return FakeComfy(root, models=models_for(FLUX, WAN), job_seconds=0.0,
                     node_seconds={"SaveImage": image_seconds, "SaveVideo": clip_seconds})


def drop(settings: Settings, name: str, segments: int, *, seed: int) -> None:
    """A synthesized song of about 2.5 s per segment, written beside the inbox and moved in."""
    settings.paths.inbox.mkdir(parents=True, exist_ok=True)
    staged = settings.paths.inbox.parent / name
    write_song(staged, segments * 2.5, 120.0, seed=seed)
    staged.replace(settings.paths.inbox / name)


def person(store: RunStore, stop: threading.Event, after: float, seen: dict[str, float]) -> None:
    """Approve candidate 0 of each segment ``after`` seconds after it was first offered."""
    offered_at: dict[tuple[str, int], float] = {}
    while not stop.is_set():
        for ref in store.iter_runs([State.ANALYZED, State.IMAGED, State.PENDING_APPROVAL]):
            try:
                offered = offered_segments(store.load(ref))
            except Exception:  # the run moved while we looked
                continue
            now = time.monotonic()
            for seg in offered:
                offered_at.setdefault((ref.run_id, seg), now)
                seen.setdefault(ref.run_id, now)
            for (run_id, seg), at in list(offered_at.items()):
                if run_id == ref.run_id and now - at >= after:
                    try:
                        decisions.decide(store, run_id, "approve", seg, 0, by="bench", channel="cli")
                        offered_at[(run_id, seg)] = float("inf")
                    except Exception:
                        pass
        stop.wait(0.02)


def stage_seconds(store: RunStore, run_id: str, stage: str) -> float:
    """How long a stage of a run took, from its manifest."""
    progress = store.load(store.find(run_id)).progress(stage)
    if progress.started_at is None or progress.finished_at is None:
        return 0.0
    return (progress.finished_at - progress.started_at).total_seconds()


def daemon_until(settings: Settings, done: threading.Event) -> threading.Thread:
    """The daemon in a thread until ``done``."""
    thread = threading.Thread(target=run, args=(settings, done), name="daemon")
    thread.start()
    return thread


def manual(args: argparse.Namespace, tmp: Path) -> None:
    with fake_for(tmp / "comfy", args.image, args.clip) as fake:
        settings = settings_for(tmp, fake, segments=args.segments, mode="manual")
        store = RunStore(settings.paths.state_root)
        drop(settings, "song.wav", args.segments, seed=0)
        stop, seen = threading.Event(), {}
        daemon = daemon_until(settings, stop)
        who = threading.Thread(target=person, args=(store, stop, args.decide_after, seen))
        who.start()
        created = approved = None
        try:
            deadline = time.monotonic() + 60 + args.segments * 2 * (args.image + args.decide_after)
            while time.monotonic() < deadline:
                refs = list(store.iter_runs())
                if refs and created is None:
                    created = time.monotonic()
                if any(r.state in (State.APPROVED, State.RENDERED) for r in refs):
                    approved = time.monotonic()
                    break
                time.sleep(0.02)
        finally:
            stop.set()
            daemon.join(120)
            who.join(30)
        run_id = next(iter(store.iter_runs())).run_id
        analysis = stage_seconds(store, run_id, "analyze")
        images = [e for e in executions(fake) if "-image-" in e[0]]
        image_job = sum(end - start for _, start, end in images) / 1000 / max(1, len(images))
    assert created is not None and approved is not None
    first = seen[run_id] - created
    print(f"1. manual approval, {args.segments} segments × 2 candidates, a person deciding "
          f"{args.decide_after:g} s after each offer (image job {image_job:.2f} s on the server)")
    print(f"   run created → first segment offered: {first:.2f} s "
          f"(target ≤ analysis {analysis:.2f} + 2 image jobs + 0.5 = {analysis + 2 * image_job + 0.5:.2f} s)")
    all_images = len(images) * image_job
    print(f"   run created → approved: {approved - created:.2f} s (target ≤ analysis + all image jobs "
          f"+ 2 = {analysis + all_images + 2:.2f} s; offering only at the end would take "
          f"≥ {analysis + all_images + args.segments * args.decide_after:.2f} s)")


def auto(args: argparse.Namespace, tmp: Path, songs: int) -> tuple[float, float, float]:
    """Idle gap between images and clips of the first song, and makespan over busy time."""
    with fake_for(tmp / "comfy", args.image, args.clip) as fake:
        settings = settings_for(tmp, fake, segments=args.segments, mode="auto")
        for k in range(songs):
            drop(settings, f"song{k}.wav", args.segments, seed=k)
        stop = threading.Event()
        daemon = daemon_until(settings, stop)
        store = RunStore(settings.paths.state_root)
        deadline = time.monotonic() + 120 + songs * args.segments * (2 * args.image + args.clip) * 2
        try:
            while time.monotonic() < deadline:
                if len(list(store.iter_runs([State.RENDERED]))) == songs:
                    break
                time.sleep(0.1)
        finally:
            stop.set()
            daemon.join(120)
        runs = executions(fake)
    first_run = min({job.split("-image-")[0] for job, _, _ in runs if "-image-" in job})
    mine = [(job, start, end) for job, start, end in runs if job.startswith(first_run)]
    last_image = max(end for job, _, end in mine if "-image-" in job)
    first_clip = min(start for job, start, _ in mine if "-clip-" in job)
    busy = sum(end - start for _, start, end in runs) / 1000
    span = (max(end for *_, end in runs) - min(start for _, start, _ in runs)) / 1000
    return (first_clip - last_image) / 1000, span, busy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--segments", type=int, default=40)
    parser.add_argument("--image-seconds", dest="image", type=float, default=1.0)
    parser.add_argument("--clip-seconds", dest="clip", type=float, default=3.0)
    parser.add_argument("--decide-after", type=float, default=2.0)
    parser.add_argument("--songs", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every job time")
    args = parser.parse_args()
    args.image *= args.scale
    args.clip *= args.scale
    args.decide_after *= args.scale
    with tempfile.TemporaryDirectory() as tmp:
        manual(args, Path(tmp) / "manual")
    with tempfile.TemporaryDirectory() as tmp:
        gap, _, _ = auto(args, Path(tmp), 1)
    print(f"2. auto approval: server idle between the last image and the first clip: {gap:.3f} s "
          f"(target ≤ 0.2 s)")
    with tempfile.TemporaryDirectory() as tmp:
        _, span, busy = auto(args, Path(tmp), args.songs)
    print(f"3. {args.songs} songs dropped together (auto): server makespan {span:.1f} s over busy "
          f"{busy:.1f} s = {span / busy:.3f} (target ≤ 1.05)")


if __name__ == "__main__":
    main()
