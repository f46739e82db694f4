"""The ComfyUI pool keeps no ticket for a job that ended: failed jobs are forgotten, and made again on retry."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from comfy_helpers import FLUX, WAN, image_job, make_pool, models_for, server_for
from fakecomfy.server import FakeComfy

from daemon.backends.base import noop_progress
from daemon.backends.comfy.backend import ComfyImageBackend
from daemon.errors import TransientError


@pytest.fixture
def fake(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A fake ComfyUI with every model the shipped workflows need."""
    with FakeComfy(tmp_path / "comfy", models=models_for(FLUX, WAN), job_seconds=0.05) as server:
        yield server


def test_a_job_that_ended_in_an_error_leaves_no_ticket_and_is_made_again(fake: FakeComfy, tmp_path: Path) -> None:
    """After a job's error is raised its ticket is gone; resuming it posts it again rather than replaying the error."""
    stop = threading.Event()
    pool = make_pool(server_for(fake.url))
    backend = ComfyImageBackend(pool, FLUX)
    try:
        for n in range(3):  # three jobs that fail, as a run with a broken VAE would
            fake.fail_next("VAEDecode", "RuntimeError", "CUDA error: device-side assert")
            job = image_job(n, tmp_path)
            backend.submit(job)
            with pytest.raises(TransientError):
                backend.collect(job, progress=noop_progress, stop=stop)
        assert pool.tickets == {}
        assert not backend.can_resume(job)  # its server's history holds only the error
        out = backend.collect(job, progress=noop_progress, stop=stop)  # the stage's retry
        assert out.is_file()
        assert pool.tickets == {}
    finally:
        pool.stop()
    assert fake.posted.count(job.id) == 2
