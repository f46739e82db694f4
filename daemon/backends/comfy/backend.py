"""ComfyUI as an image backend and a video backend, both fed by one ``Pool``.

How this works: ``ComfyBackends.open(settings)`` builds the pool once per
daemon: one ``Server`` per URL in ``[comfy] servers``, plus the managed one
(``[comfy.managed]``) whose keeper launches and restarts it. The two backends
are thin: ``submit`` queues a ticket under the job's own id (already in
``run.json``), ``collect`` waits for it and downloads the output through
``/view``, ``can_resume`` asks the servers whether they still know the id.

Every job gets ``filename_prefix = tandava/<job id>``: unique, so ComfyUI's
cache of an identical prompt never hands back an old file, and a person
browsing ComfyUI's output folder sees which run a file belongs to.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from daemon.backends.base import Job, Progress
from daemon.backends.comfy.client import ComfyClient, client_id_for
from daemon.backends.comfy.pool import Pool, Server
from daemon.backends.comfy.supervisor import ComfyProcess, RemoteComfy
from daemon.backends.comfy.vram import Admission, Ollama
from daemon.backends.comfy.workflows import Workflow, find_workflow
from daemon.config import Settings, comfy_urls


def job_values(job: Job, workflow: Workflow) -> dict[str, Any]:
    """The workflow slots a job fills; a clip asks for the frame count the model allows (cut at assembly)."""
    values: dict[str, Any] = {
        "prompt": job.prompt, "negative_prompt": job.negative_prompt, "seed": job.seed,
        "width": job.width, "height": job.height, "filename_prefix": f"tandava/{job.id}",
    }
    if job.kind == "clip":
        values |= {"frames": workflow.frames_for(job.frames), "fps": job.fps}
    return values


class ComfyImageBackend:
    """Candidate images from a text-to-image workflow (Flux by default)."""

    resource = "gpu"
    # Outputs of a model can come back black or flat: stages check them (qc.py).
    checks_output = True

    def __init__(self, pool: Pool, workflow: Workflow) -> None:
        self.pool = pool
        self.workflow = workflow
        self.name = f"comfyui:{workflow.name}"

    def submit(self, job: Job) -> None:
        """Queue the job in the pool; the dispatcher posts it when a server has room."""
        self.pool.submit(job.id, self.workflow, job_values(job, self.workflow), start_image=self._start(job))

    def collect(self, job: Job, *, progress: Progress, stop: threading.Event) -> Path:
        """Wait for the job, then download its output to ``job.output``."""
        if job.id not in self.pool.tickets:
            self.submit(job)
        ticket = self.pool.wait(job.id, stop=stop, progress=progress)
        return self.pool.fetch(ticket, Path(job.output), animated=job.kind == "clip")

    def can_resume(self, job: Job) -> bool:
        """True when a server still holds the job (queued, running or in its history)."""
        return self.pool.attach(job.id, self.workflow, job_values(job, self.workflow), start_image=self._start(job))

    def _start(self, job: Job) -> Path | None:
        return None


class ComfyVideoBackend(ComfyImageBackend):
    """Clips from an image-to-video workflow (Wan 2.1 by default), started from ``job.source``."""

    def __init__(self, pool: Pool, workflow: Workflow) -> None:
        super().__init__(pool, workflow)
        self.max_frames = workflow.max_frames

    def _start(self, job: Job) -> Path | None:
        return Path(job.source)


class ComfyBackends:
    """The pool and both backends for one daemon; ``close`` stops threads and an owned server."""

    def __init__(self, pool: Pool, image: Workflow, video: Workflow, keepers: list[Any]) -> None:
        self.pool = pool
        self.image = ComfyImageBackend(pool, image)
        self.video = ComfyVideoBackend(pool, video)
        self._keepers = keepers

    @classmethod
    def open(cls, settings: Settings, *, ollama_url: str | None = None) -> ComfyBackends:
        """The pool over every configured server. ``ollama_url``: an Ollama whose models VRAM
        admission unloads before a GPU job (``[comfy] ollama_url`` wins; the wiring in
        ``daemon.app`` passes the prompt writer's when it shares the GPU)."""
        cfg = settings.comfy
        folder = cfg.workflows
        image, video = find_workflow(cfg.image_workflow, folder), find_workflow(cfg.video_workflow, folder)
        client_id = client_id_for(settings.paths.state_root)
        servers: list[Server] = []
        keepers: list[Any] = []
        for url in comfy_urls(settings):
            client = ComfyClient(url, client_id=client_id, timeout=cfg.request_timeout_seconds)
            keeper: Any
            if cfg.managed is not None and not servers:
                keeper = ComfyProcess(cfg.managed, log_dir=settings.paths.logs,
                                      health_timeout=cfg.health_timeout_seconds)
                keepers.append(keeper)
            else:
                keeper = RemoteComfy(url, health_timeout=cfg.health_timeout_seconds)
            servers.append(Server(client, keeper, name=url))
        ollama_url = cfg.ollama_url or ollama_url
        ollama = Ollama(ollama_url) if ollama_url else None
        admission = Admission(margin_gb=cfg.vram_margin_gb, ollama=ollama)
        pool = Pool(servers, admission=admission, silence_seconds=cfg.silence_seconds)
        return cls(pool.start(), image, video, keepers)

    def close(self) -> None:
        self.pool.stop()
        for keeper in self._keepers:
            keeper.stop()
