"""VRAM admission: a GPU job is dispatched only when the memory it needs is free.

How this works: before a job whose models the server has not loaded, read
free memory (``/system_stats``: on a CPU server those figures are system RAM;
for a server on this machine also NVML, which sees every process on the GPU,
when nvidia-ml-py is installed). The need is the workflow's ``vram_gb`` or,
once seen, the peak this workflow really used on this server, plus a margin.
Short of it, make room: ask ComfyUI to ``/free`` (it only sets a flag, so
poll afterwards) and unload the models of a local Ollama if one is
configured. Still short: the job waits, with a backoff that doubles up to
five minutes, and the log says how much is needed, free and missing.
Never dispatch into a certain out-of-memory: it fails an hour-long job late.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests
import structlog

from daemon.backends.comfy.client import ComfyClient, Stats

log = structlog.get_logger("tandava.vram")

GB = 1 << 30
BACKOFF_FIRST_SECONDS = 2.0
BACKOFF_MAX_SECONDS = 300.0
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


@dataclass
class Ledger:
    """What one server's memory has told us: the model set it holds and what workflows really used."""

    resident: str | None = None  # the signature of the workflow it ran last
    learned: dict[str, int] = field(default_factory=dict)
    short_until: float = 0.0
    backoff: float = BACKOFF_FIRST_SECONDS

    def observe(self, signature: str, stats: Stats) -> None:
        """Record memory in use while ``signature`` runs: its peak is what it needs next time."""
        used = stats.vram_total - stats.vram_free
        self.learned[signature] = max(self.learned.get(signature, 0), used)

    def need(self, signature: str, configured_gb: float) -> int:
        return self.learned.get(signature) or int(configured_gb * GB)


class Ollama:
    """A local Ollama whose models are unloaded when the GPU is short (``keep_alive: 0``)."""

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def unload_all(self) -> list[str]:
        """Unload every model Ollama holds; returns their names (empty when it is not running)."""
        try:
            with requests.Session() as session:
                running = session.get(f"{self.url}/api/ps", timeout=self.timeout).json().get("models", [])
                names = [str(m.get("model") or m.get("name")) for m in running]
                for name in names:
                    session.post(f"{self.url}/api/generate", json={"model": name, "keep_alive": 0},
                                 timeout=self.timeout)
        except (requests.RequestException, ValueError, AttributeError) as exc:
            log.warning("vram.ollama_unreachable", url=self.url, error=str(exc))
            return []
        if names:
            log.info("vram.ollama_unloaded", models=names)
        return names


def nvml_free(index: int = 0) -> int | None:
    """Free bytes on local GPU ``index`` as NVML sees it, or None without nvidia-ml-py or a GPU."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        try:
            return int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(index)).free)
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - NVML raises its own error types for every missing piece
        return None


class Admission:
    """Decides whether a job may go to a server now, making room when it can."""

    def __init__(self, *, margin_gb: float = 1.0, free_wait_seconds: float = 5.0, ollama: Ollama | None = None,
                 clock: Callable[[], float] = time.monotonic, stop: threading.Event | None = None) -> None:
        self.margin = int(margin_gb * GB)
        self.free_wait_seconds = free_wait_seconds
        self.ollama = ollama
        self.clock = clock
        self.stop = stop or threading.Event()

    def admit(self, client: ComfyClient, ledger: Ledger, workflow: Any, *, name: str = "") -> bool:
        """True when ``workflow`` fits now; False (logged, with backoff) when it must wait."""
        signature = workflow.signature()
        stats = client.system_stats()
        if signature == ledger.resident:
            return True  # its models are loaded already: it needs what the last job had
        if self.clock() < ledger.short_until:
            return False
        need = ledger.need(signature, workflow.vram_gb) + self.margin
        free = self.free(client, stats)
        if free >= need:
            return True
        client.free()
        unloaded = self.ollama.unload_all() if self.ollama is not None else []
        deadline = self.clock() + self.free_wait_seconds
        while self.clock() < deadline and not self.stop.is_set():
            self.stop.wait(0.1)  # /free only sets a flag; ComfyUI's worker acts when it wakes
            free = self.free(client, client.system_stats())
            if free >= need:
                ledger.backoff = BACKOFF_FIRST_SECONDS
                log.info("vram.freed", server=name, free_gb=_gb(free), ollama_unloaded=unloaded)
                return True
        ledger.short_until = self.clock() + ledger.backoff
        log.warning("vram.short", server=name, workflow=workflow.name, need_gb=_gb(need), free_gb=_gb(free),
                    missing_gb=_gb(need - free), retry_in=ledger.backoff,
                    hint="another program holds GPU memory; Tandava waits rather than run out of memory")
        ledger.backoff = min(BACKOFF_MAX_SECONDS, ledger.backoff * 2)
        return False

    def free(self, client: ComfyClient, stats: Stats) -> int:
        """Free memory: the server's figure, or NVML's when the GPU is on this machine and it sees less."""
        if stats.device_type == "cuda" and urlsplit(client.url).hostname in LOOPBACK:
            seen = nvml_free()
            if seen is not None:
                return min(stats.vram_free, seen)
        return stats.vram_free


def _gb(value: int) -> float:
    return round(value / GB, 2)


def stats_line(stats: Stats) -> str:
    """A server's memory for a person: device, free and total."""
    return f"{stats.device} ({stats.device_type}): {_gb(stats.vram_free)} of {_gb(stats.vram_total)} GB free"
