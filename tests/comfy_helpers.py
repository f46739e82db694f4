"""Helpers for tests that run Tandava's ComfyUI pool against the fake server."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from daemon.backends.base import Job
from daemon.backends.comfy.client import ComfyClient
from daemon.backends.comfy.pool import Pool, Server
from daemon.backends.comfy.preflight import model_folder
from daemon.backends.comfy.supervisor import RemoteComfy
from daemon.backends.comfy.workflows import Workflow, find_workflow
from daemon.errors import Unavailable

FLUX = find_workflow("flux_t2i")
WAN = find_workflow("wan21_i2v")
GB = 1 << 30


def models_for(*workflows: Workflow) -> dict[str, list[str]]:
    """The model lists a server needs so the workflows pass preflight."""
    found: dict[str, list[str]] = {}
    for wf in workflows:
        for node, name, value in wf.models():
            folder = model_folder(wf.graph[node]["class_type"], name)
            assert folder is not None
            found.setdefault(folder, []).append(value)
    return found


def server_for(url: str, keeper: object | None = None, *, depth: int = 2) -> Server:
    """A pool server for ``url`` with short timeouts."""
    client = ComfyClient(url, client_id="tandava-test", timeout=2.0)
    return Server(client, keeper or RemoteComfy(url, health_timeout=0.5), depth=depth, name=url)  # type: ignore[arg-type]


def make_pool(*servers: Server, **kw: Any) -> Pool:
    """A started pool with fast checks; stop it when done."""
    kw.setdefault("check_seconds", 0.1)
    kw.setdefault("failover_seconds", 0.5)
    kw.setdefault("free_wait_seconds", 2.0)
    return Pool(list(servers), **kw).start()  # type: ignore[arg-type]


def image_job(n: int, tmp: Path, *, seed: int | None = None) -> Job:
    """An image job as a stage would record it."""
    return Job(id=f"run-image-s{n:03d}", kind="image", backend="comfyui", segment=n, seed=seed or 1000 + n,
               prompt=f"Shiva dancing {n}", negative_prompt="blurry", width=64, height=48,
               output=str(tmp / f"cand_{n:03d}.png"))


def clip_job(n: int, tmp: Path, source: Path, *, frames: int = 17) -> Job:
    """A clip job as the render stage would record it."""
    return Job(id=f"run-clip-s{n:03d}", kind="clip", backend="comfyui", segment=n, seed=2000 + n,
               prompt="slow push in", width=64, height=48, frames=frames, fps=16, source=str(source),
               output=str(tmp / f"clip_{n:03d}.mp4"))


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll until ``predicate`` holds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


class FakeKeeper:
    """A managed-server keeper for a FakeComfy: 'restarting' it kills and starts the fake again."""

    def __init__(self, fake: object) -> None:
        self.fake = fake
        self.restarts = 0
        self.lock = threading.Lock()

    def ensure_running(self, stop: threading.Event) -> str:
        remote = RemoteComfy(self.fake.url, health_timeout=0.5)  # type: ignore[attr-defined]
        try:
            return remote.ensure_running(stop)
        except Unavailable:
            # Ours and not answering: as ComfyProcess does, kill it and launch it again.
            return self.restart("not answering", stop)

    def diagnose(self, running_job: bool, last_event_age: float | None, silence_seconds: float) -> str:
        return RemoteComfy(self.fake.url, health_timeout=0.5).diagnose(  # type: ignore[attr-defined]
            running_job, last_event_age, silence_seconds)

    def restart(self, reason: str, stop: threading.Event) -> str:
        with self.lock:
            self.restarts += 1
            self.fake.unhang()  # type: ignore[attr-defined]
            self.fake.restart()  # type: ignore[attr-defined]
        return str(self.fake.url)  # type: ignore[attr-defined]

    def stop(self) -> None:
        """Nothing to stop here."""
