"""The daemon: the inbox watcher, intake and the stage engine, wired and run until told to stop.

``run(settings, stop_event)`` is the one loop every host drives: the CLI in a
terminal, the systemd unit, the Windows service. It owns no signal handling
(the host turns its own stop request into ``stop_event``) and no POSIX-only
calls. Start-up order matters: lock the state root, reconcile what a crash
left, then start taking songs.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Protocol

import structlog

from daemon.config import Settings, uses_comfy
from daemon.errors import TandavaError
from daemon.host.notify import Heartbeat, Notifier, announce_stop, run_counts, status_text
from daemon.host.service import STOP_TIMEOUT_SECONDS
from daemon.intake.intake import Intake
from daemon.runs.engine import Engine
from daemon.runs.health import HealthReporter, comfy_backends
from daemon.runs.retention import Janitor
from daemon.runs.store import RunStore
from daemon.stages.pipeline import build_stages

if TYPE_CHECKING:
    from daemon.backends.comfy.backend import ComfyBackends

log = structlog.get_logger("tandava.daemon")

def open_store(settings: Settings) -> RunStore:
    """The run store of this installation, its directories created."""
    store = RunStore(settings.paths.state_root)
    store.ensure_layout()
    return store


def open_comfy(settings: Settings) -> ComfyBackends:
    """The ComfyUI pool, told who else holds the GPU: a prompt-writing Ollama on the same
    machine gets its models unloaded before a GPU job (the backends never import a writer)."""
    from daemon.backends.comfy.backend import ComfyBackends
    from daemon.writers.ollama import ollama_to_unload

    return ComfyBackends.open(settings, ollama_url=ollama_to_unload(settings))


def run(settings: Settings, stop_event: threading.Event, *, once: bool = False) -> int:
    """Serve the inbox until ``stop_event`` is set; with ``once``, until nothing is left to do.

    Returns a process exit code.
    """
    from daemon.intake.watcher import InboxWatcher

    store = open_store(settings)
    release = store.lock()
    watcher: InboxWatcher | None = None
    comfy: ComfyBackends | None = None
    channels: list[Channel] = []
    janitor: Janitor | None = None
    health: HealthReporter | None = None
    try:
        for action in store.reconcile():
            log.info("store.reconciled", action=action)
        settings.paths.inbox.mkdir(parents=True, exist_ok=True)
        intake = Intake(store, settings.paths.inbox)
        watch = settings.watch
        watcher = InboxWatcher(
            settings.paths.inbox,
            intake.take,
            stable_seconds=watch.stable_seconds,
            rescan_seconds=watch.rescan_seconds,
            poll_seconds=watch.poll_seconds,
            polling=watch.polling,
        )
        if uses_comfy(settings):
            comfy = open_comfy(settings)
        engine = Engine(
            store,
            build_stages(settings, comfy),
            workers={"cpu": settings.engine.cpu_workers, "gpu": settings.engine.gpu_runs},
            attempts=settings.engine.attempts,
            backoff_initial=settings.engine.backoff_initial_seconds,
            backoff_max=settings.engine.backoff_max_seconds,
            tick_seconds=settings.engine.tick_seconds,
        )
        janitor = Janitor(store, settings.retention, inbox=settings.paths.inbox).start()
        health = HealthReporter(
            settings, store,
            backends=comfy_backends(comfy.pool) if comfy is not None else None,
            disk=janitor.disk,
            in_flight=engine.in_flight,
        )
        if once:
            for path in watcher.scan_once():
                intake.accept(path)
            log.info("daemon.once", inbox=str(settings.paths.inbox))
            engine.run(stop_event, once=True, on_tick=health.tick)
            return 0
        watcher.start()
        channels = start_channels(settings, store)
        log.info(
            "daemon.started",
            inbox=str(settings.paths.inbox),
            state_root=str(settings.paths.state_root),
            watch_mode=watcher.mode,
            pid=os.getpid(),
        )
        # systemd (Type=notify): READY=1 on the engine's first tick, then the
        # watchdog and STATUS= from its loop; STOPPING=1 once a stop is asked.
        notifier = Notifier()
        watching = watcher.mode
        heartbeat = Heartbeat(
            notifier,
            lambda: status_text(run_counts(store), f"{len(engine.in_flight())} working; inbox: {watching}"),
        )
        announce_stop(notifier, stop_event, drain_seconds=STOP_TIMEOUT_SECONDS)
        beat = health.tick

        def on_tick() -> None:
            beat()
            heartbeat()

        engine.run(stop_event, on_tick=on_tick)
        log.info("daemon.stopping")
        return 0
    finally:
        for channel in reversed(channels):
            channel.stop()
        if watcher is not None:
            watcher.stop()
        if janitor is not None:
            janitor.stop()
        if comfy is not None:
            comfy.close()
        if health is not None:
            health.stop()
        release()
        log.info("daemon.stopped")



class Channel(Protocol):
    """An approval channel served by the daemon (web panel, Telegram bot)."""

    def stop(self) -> None: ...


def start_channels(settings: Settings, store: RunStore) -> list[Channel]:
    """Start the approval channels that are enabled; one that cannot start is logged, not fatal.

    Only the long-running daemon serves them: ``--once`` processes and exits.
    """
    started: list[Channel] = []
    if settings.web.enabled:
        from daemon.channels.web.server import WebPanel

        panel = WebPanel(settings, store)
        try:
            url = panel.start()
        except (TandavaError, OSError) as exc:
            log.error("web.not_started", error=str(exc),
                      hint="free the port or set [web] port; with a host beyond 127.0.0.1 set [web] token")
        else:
            started.append(panel)
            log.info("web.started", url=url)
    if settings.telegram.enabled:
        from daemon.channels.telegram.bot import TelegramBot

        bot = TelegramBot(settings, store)
        bot.start()  # never raises for Telegram being away: it retries by itself
        started.append(bot)
    return started
