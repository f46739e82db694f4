"""Offering a song in Telegram under the flood limit: from candidates ready to all messages sent.

    python bench/bench_telegram.py [--segments 40] [--candidates 4] [--rate 1.0]

A run waiting for approval with S segments of C candidates (832x480 PNGs with
grain, about what a Flux candidate weighs) sits in a fresh state root, made
through the daemon's own images and offer stages. The fake Bot API
(``tests/faketelegram``, real sockets, python-telegram-bot's real requests)
emulates Telegram's per-chat flood limit at ``--rate`` messages a second and
answers 429 with ``retry_after`` above it; a send* call counts once, an album
included (the fake's rule). ``TelegramBot`` starts (getMe, deleteWebhook,
long polling) and the clock runs from ``start()`` to the fake's arrival time
of the last message.

Message design: one song message, then per segment an album (split every 10
photos) and a control message: 1 + S * (ceil(C/10) + 1) calls, 81 for the
default 40 x 4. The minimum the limit allows is (calls - 1) / rate: the first
call may go at once. Targets: measured / minimum <= 1.10, and zero 429s. For
reference the table also shows the minimum of one photo per candidate with
its own buttons (not measured).

Bounded by the limit itself: about 82 s with the defaults (81 messages at one
a second, plus ~10 s to make the candidates); ``--segments 5`` takes ~15 s.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import structlog
from PIL import Image
from pydantic import SecretStr

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from faketelegram import CHAT_ID, TOKEN, FakeTelegram  # noqa: E402

from daemon.backends.base import Job, Progress  # noqa: E402
from daemon.channels.telegram.bot import TelegramBot  # noqa: E402
from daemon.config import Settings, TelegramConfig, load_settings  # noqa: E402
from daemon.music.plan import Segment  # noqa: E402
from daemon.music.segments_file import write_segments  # noqa: E402
from daemon.runs.engine import Engine, Stage  # noqa: E402
from daemon.runs.states import Event, State  # noqa: E402
from daemon.runs.store import RunRef, RunStore  # noqa: E402
from daemon.stages.candidates import MakeCandidates  # noqa: E402
from daemon.stages.gate import Offer  # noqa: E402


class Grain:
    """An image backend painting a gradient with film grain: PNGs of realistic weight, made fast."""

    name = "grain"
    resource = "cpu"

    def submit(self, job: Job) -> None:
        pass

    def collect(self, job: Job, *, progress: Progress, stop: threading.Event) -> Path:
        rng = np.random.default_rng(job.seed)
        ramp = np.linspace(0, 200, job.width, dtype=np.float32)[None, :, None]
        tint = rng.uniform(0.3, 1.0, size=3).astype(np.float32)[None, None, :]
        grain = rng.normal(0, 10, size=(job.height, job.width, 3)).astype(np.float32)
        pixels = np.clip(ramp * tint + 30 + grain, 0, 255).astype(np.uint8)
        Image.fromarray(pixels, "RGB").save(job.output, format="PNG", compress_level=1)
        return Path(job.output)

    def can_resume(self, job: Job) -> bool:
        return False


def pending_run(store: RunStore, settings: Settings, folder: Path, segments: int) -> RunRef:
    """A run in pending_approval with ``settings.images.candidates`` candidates per segment."""
    song = folder / "song.wav"
    song.write_bytes(b"RIFF bench")
    ref = store.move(store.create(song, "cd" * 32), Event.ANALYSIS_DONE)
    write_segments(ref.path, [Segment(index=i, start=i * 5.0, end=(i + 1) * 5.0, beats=10, energy=0.5,
                                      mood="steady", section=0, visual_prompt=f"a dancer in the fire, shot {i}")
                              for i in range(segments)])
    backend = Grain()
    Engine(store, [
        Stage("images", State.ANALYZED, Event.IMAGES_DONE, MakeCandidates(settings, lambda s, j: backend)),
        Stage("offer", State.IMAGED, Event.OFFERED, Offer(settings)),
    ], tick_seconds=0.01).run(threading.Event(), once=True)
    return store.find(ref.run_id)


def measure(segments: int, candidates: int, rate: float) -> tuple[int, float, int, int]:
    """Messages sent, seconds from start() to the last one, 429s, mean candidate bytes."""
    with tempfile.TemporaryDirectory() as tmp, FakeTelegram(rate=rate) as fake:
        root = Path(tmp)
        settings = load_settings(None, cwd=root)
        settings.approval.mode = "manual"
        settings.images.candidates = candidates
        settings.telegram = TelegramConfig(enabled=True, token=SecretStr(TOKEN), chat_id=CHAT_ID,
                                           allowed_users=[1], base_url=fake.base_url,
                                           messages_per_second=rate, reminder_hours=0)
        store = RunStore(root / "state")
        store.ensure_layout()
        ref = pending_run(store, settings, root, segments)
        weight = sum(p.stat().st_size for p in (ref.path / "candidates").iterdir()) // (segments * candidates)
        expected = 1 + segments * (math.ceil(candidates / 10) + 1)
        bot = TelegramBot(settings, store)
        started = time.monotonic()
        bot.start()
        try:
            fake.wait_for(lambda: len(fake.sends) >= expected, timeout=2 * expected / rate + 60)
            time.sleep(min(2.0, 2 / rate))  # anything beyond the design would show here
        finally:
            bot.stop()
        return len(fake.sends), fake.sends[expected - 1].at - started, fake.flood_hits, weight


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--segments", type=int, default=40)
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument("--rate", type=float, default=1.0, help="flood limit: messages per second per chat")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))  # errors only

    calls, seconds, hits, weight = measure(args.segments, args.candidates, args.rate)
    minimum = (calls - 1) / args.rate
    per_photo = 1 + args.segments * (args.candidates + 1)
    print(f"song: {args.segments} segments x {args.candidates} candidates (832x480 PNG, "
          f"{weight / 1024:.0f} KiB each); flood limit {args.rate:g} message(s)/s per chat")
    print(f"{'design':32} {'messages':>8} {'minimum':>9} {'measured':>9} {'ratio':>6} {'target':>7} {'429s':>5}")
    print(f"{'album + control (ours)':32} {calls:8d} {minimum:8.2f}s {seconds:8.2f}s {seconds / minimum:6.3f} "
          f"{'<=1.10':>7} {hits:5d}")
    print(f"{'one photo per candidate (ref.)':32} {per_photo:8d} {(per_photo - 1) / args.rate:8.2f}s "
          f"{'-':>9} {'-':>6} {'-':>7} {'-':>5}")


if __name__ == "__main__":
    main()
