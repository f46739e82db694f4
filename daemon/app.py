"""The daemon: the inbox watcher, intake and the stage engine, wired and run until told to stop.

``run(settings, stop_event)`` is the one loop every host drives: the CLI in a
terminal, the systemd unit, the Windows service. It owns no signal handling
(the host turns its own stop request into ``stop_event``) and no POSIX-only
calls. Start-up order matters: lock the state root, reconcile what a crash
left, then start taking songs.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import structlog

from daemon.config import Settings, uses_comfy
from daemon.errors import TandavaError
from daemon.host.live import Footer, Frame, LiveView
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
    from daemon.stages.google import GoogleBackends

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


def run(settings: Settings, stop_event: threading.Event, *, once: bool = False,
        view: LiveView | None = None) -> int:
    """Serve the inbox until ``stop_event`` is set; with ``once``, until nothing is left to do.

    With ``view`` (a person at a terminal), the engine's progress is shown live
    while it runs. Returns a process exit code.
    """
    from daemon.host.doctor import refuse_to_start
    from daemon.intake.watcher import InboxWatcher

    # A bad theme or workflow (often from the environment) would fail every song: refuse now, as doctor would.
    refuse_to_start(settings)
    store = open_store(settings)
    release = store.lock()
    watcher: InboxWatcher | None = None
    comfy: ComfyBackends | None = None
    google: GoogleBackends | None = None
    channels: list[Channel] = []
    janitor: Janitor | None = None
    health: HealthReporter | None = None
    showing = contextlib.ExitStack()
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
        from daemon.stages.google import open_google  # google-genai is imported only when used

        google = open_google(settings)
        engine = Engine(
            store,
            build_stages(settings, comfy, google),
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
            progress=engine.board.as_json,
        )
        showing.enter_context(_showing(view, settings, engine, health, lambda: channels, stop_event))
        if once:
            from daemon.intake.settle import take_settled

            # Right after a copy, songs may still be settling: wait for them, or say why not.
            settled = take_settled(intake, settings.paths.inbox, stable_seconds=watch.stable_seconds)
            log.info("daemon.once", inbox=str(settings.paths.inbox), taken=len(settled.ready),
                     waited_for=sorted(settled.waited), skipped=sorted(settled.skipped))
            engine.run(stop_event, once=True, on_tick=health.tick)
            return 0
        watcher.start()
        channels = start_channels(settings, store, intake=intake)
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
        showing.close()
        for channel in reversed(channels):
            channel.stop()
        if watcher is not None:
            watcher.stop()
        if janitor is not None:
            janitor.stop()
        if comfy is not None:
            comfy.close()
        if google is not None:
            google.close()
        if health is not None:
            health.stop()
        release()
        log.info("daemon.stopped")



def _showing(view: LiveView | None, settings: Settings, engine: Engine, health: HealthReporter,
             channels: Callable[[], list[Channel]],
             stop_event: threading.Event) -> contextlib.AbstractContextManager[None]:
    """The live view of this daemon while it runs: all from memory, nothing read per refresh."""
    if view is None:
        return contextlib.nullcontext()

    spend = _spend_today(settings)

    def frame() -> Frame:
        last = health.last
        panel = next((str(getattr(c, "url", "")) for c in channels() if getattr(c, "url", "")), "")
        stopping = "stopping: finishing the work in flight (Ctrl-C again aborts)" if stop_event.is_set() else ""
        return Frame(engine.board.runs(), Footer(
            daemon=stopping, inbox=str(settings.paths.inbox), panel=panel,
            backends=health.backends() if health.backends is not None else [],
            counts=dict(last.counts) if last is not None else {}, finished=engine.board.finished_count,
            spend=spend(),
        ))

    return view.showing(frame)


def _spend_today(settings: Settings) -> Callable[[], str]:
    """Today's cloud spend for the footer ("" without a paid backend), read at most every 30 s."""
    from daemon.stages.google import uses_google

    if not uses_google(settings):
        return lambda: ""
    from datetime import UTC, datetime

    from daemon.backends.google.costs import day_total

    cached: list[tuple[float, str]] = []

    def read() -> str:
        now = time.monotonic()
        if not cached or now - cached[0][0] > 30.0:
            day = datetime.now(UTC).strftime("%Y-%m-%d")
            cached[:] = [(now, f"${day_total(settings.paths.state_root, day):.2f}")]
        return cached[0][1]

    return read


class Channel(Protocol):
    """An approval channel served by the daemon (web panel, Telegram bot)."""

    def stop(self) -> None: ...


def start_channels(settings: Settings, store: RunStore, *, intake: Intake | None = None) -> list[Channel]:
    """Start the approval channels that are enabled; one that cannot start is logged, not fatal.

    Only the long-running daemon serves them: ``--once`` processes and exits.
    """
    started: list[Channel] = []
    if settings.web.enabled:
        from daemon.channels.web.server import WebPanel

        panel = WebPanel(settings, store, intake=intake)
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
