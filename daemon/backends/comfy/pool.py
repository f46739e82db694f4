"""The ComfyUI servers as one pool: which job goes where and when, and what happens when a server fails.

How this works: a stage hands a job to ``Pool.submit``, which only queues a
``Ticket`` in memory; the job's record is already in ``run.json`` (see
``jobs.py``) under our own prompt id. One dispatcher thread posts tickets to
servers; one monitor thread per server watches its health and its jobs.

- **Fed, not flooded.** Each server holds at most ``depth`` of our prompts
  (one running, the next already queued), so the GPU never waits for us
  between jobs, and a server that dies takes at most ``depth`` jobs with it.
- **Grouped.** A server is given work for the models it has loaded first
  (``Workflow.signature``); switching models (tens of seconds for a 14B video
  model) happens only when no such work is left, or when the oldest ticket has
  waited ``max_wait_seconds``: no run starves.
- **Admitted.** Before a job that needs models the server has not loaded, its
  free VRAM (``/system_stats``; system RAM on a CPU server) must cover the
  workflow's need plus a margin. Short: ask the server to ``/free`` and poll;
  still short: the ticket waits, with backoff, and the log says why.
- **Watched.** Events from the websocket finish tickets; the monitor polls
  ``/queue`` and ``/history`` as well, because messages sent while the socket
  was down are lost. A prompt the server no longer knows (it restarted: queue
  and history are memory-only) is lost and is queued again, once. A server
  that stops answering is diagnosed by its keeper (``supervisor.py``): a
  managed one is restarted, a remote one waited for; after ``failover_seconds``
  its jobs go to another server.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from daemon.backends.comfy.client import Listener
from daemon.backends.comfy.events import (
    Event,
    Executing,
    ExecutionStart,
    HistoryOutcome,
    JobWatch,
    OutputFile,
)
from daemon.backends.comfy.preflight import check_workflow, raise_for
from daemon.backends.comfy.tickets import Server, Ticket, job_error
from daemon.backends.comfy.vram import Admission
from daemon.backends.comfy.workflows import Workflow
from daemon.errors import StageError, TransientError, Unavailable

log = structlog.get_logger("tandava.comfy")

class Pool:
    """Every configured ComfyUI server, fed from one queue of tickets."""

    def __init__(
        self, servers: list[Server], *, admission: Admission | None = None, silence_seconds: float = 900.0,
        max_wait_seconds: float = 600.0, failover_seconds: float = 60.0, check_seconds: float = 1.0,
        free_wait_seconds: float = 5.0, group_by_model: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.servers = servers
        self.admission = admission or Admission(free_wait_seconds=free_wait_seconds)
        self.silence_seconds = silence_seconds
        self.max_wait_seconds = max_wait_seconds
        self.failover_seconds = failover_seconds
        self.check_seconds = check_seconds
        # Off only to measure what grouping saves (bench/bench_comfy.py): plain first in, first out.
        self.group_by_model = group_by_model
        self.clock = clock
        self.queue: list[Ticket] = []
        self.tickets: dict[str, Ticket] = {}
        self.swaps = 0
        self._cond = threading.Condition()
        self._started = clock()
        self._changes = 0  # bumped on every notify, so the dispatcher never misses one
        self._stop = threading.Event()
        self.admission.stop = self._stop  # waits for memory end when the pool stops
        # How long a job may wait for a server to come up before its run is parked.
        self.down_grace_seconds = 10.0 * check_seconds
        self._threads: list[threading.Thread] = []

    # -- life cycle -------------------------------------------------------------

    def start(self) -> Pool:
        for server in self.servers:
            server.listener = Listener(server.client.url, server.client.client_id,
                                       functools.partial(self._on_event, server),
                                       lambda _connected: self._wake())
            server.listener.start()
            self._spawn(self._monitor, server, name=f"tandava-comfy-monitor-{server.name}")
        self._spawn(self._dispatch, name="tandava-comfy-dispatch")
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake()
        for server in self.servers:
            if server.listener is not None:
                server.listener.stop()
        # Every thread that may still send a request ends before the clients close (a busy
        # machine can take seconds); a request that outlives this closes its own connection.
        for thread in self._threads:
            thread.join(timeout=30)
        for server in self.servers:
            server.client.close()

    def _spawn(self, target: Callable[..., None], *args: Any, name: str) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _wake(self) -> None:
        with self._cond:
            self._notify()

    def _notify(self) -> None:
        """Tell the dispatcher something changed (call with ``_cond`` held)."""
        self._changes += 1
        self._cond.notify_all()

    # -- what stages call ------------------------------------------------------

    def submit(self, prompt_id: str, workflow: Workflow, values: dict[str, Any], *,
               start_image: Path | None = None) -> Ticket:
        """Queue a job; a ticket already live under this id is returned instead of doubled."""
        with self._cond:
            live = self.tickets.get(prompt_id)
            if live is not None and not (live.done.is_set() and live.error is not None):
                return live
            ticket = Ticket(prompt_id, workflow, values, start_image, self.clock(),
                            start_bytes=start_image.read_bytes() if start_image is not None else None)
            self.tickets[prompt_id] = ticket
            self.queue.append(ticket)
            self._notify()
        log.debug("comfy.queued", prompt_id=prompt_id, workflow=workflow.name)
        return ticket

    def attach(self, prompt_id: str, workflow: Workflow, values: dict[str, Any], *,
               start_image: Path | None = None) -> bool:
        """Re-attach to a job posted before a restart; False when no server knows it (redo it).

        The ticket keeps the job's values, so a server that loses it later gets the same job again.
        """
        live = self.tickets.get(prompt_id)
        if live is not None:
            return not (live.done.is_set() and live.error is not None)
        silent: list[Server] = []
        for server in self.servers:
            try:
                # The queue first: a job finishing between the two calls is then in history.
                queued = prompt_id in server.client.queue()
                outcome = None if queued else server.client.history(prompt_id)
            except StageError:
                silent.append(server)
                continue
            if outcome is None and not queued:
                continue
            if outcome is not None and outcome.outcome != "success":
                # It ended in an error there: attaching would only hand back that
                # error; the job is made again.
                log.info("comfy.ended_in_error_before", prompt_id=prompt_id, server=server.name)
                return False
            ticket = Ticket(prompt_id, workflow, values, start_image, self.clock(), server=server,
                            posted_at=self.clock())
            with self._cond:
                self.tickets[prompt_id] = ticket
                if outcome is not None:
                    self._settle(ticket, outcome)
                else:
                    server.held[prompt_id] = ticket
            log.info("comfy.reattached", prompt_id=prompt_id, server=server.name, finished=outcome is not None)
            return True
        # A server that does not answer may still hold the job (a network blip,
        # not a restart): posting it again could run it twice. Wait for an
        # answer, unless the server has been away longer than a failover.
        now = self.clock()
        away = [s for s in silent if now - (s.down_since or self._started) < self.failover_seconds]
        if away:
            raise Unavailable(
                f"cannot tell whether {', '.join(s.name for s in away)} still holds job {prompt_id} "
                "until it answers", "The run carries on by itself once the server is back.",
                cause="ComfyDown", recheck_seconds=10.0)
        return False

    def wait(self, prompt_id: str, *, stop: threading.Event, progress: Callable[..., None]) -> Ticket:
        """Block until the job ended; raises its error. Progress is reported about once a second."""
        ticket = self.tickets[prompt_id]
        while not ticket.done.wait(0.5):
            if stop.is_set():
                raise TransientError("stopping before the ComfyUI job finished", cause="Stopping")
            server = ticket.server
            if server is None and self.clock() - ticket.enqueued > self.down_grace_seconds \
                    and not any(s.up for s in self.servers):
                # Nothing can run it: park the run with the reason (its ticket stays queued here).
                problems = "; ".join(s.problem or f"{s.name} is not answering" for s in self.servers)
                raise Unavailable(f"no ComfyUI server can take work: {problems}",
                                  "The run carries on by itself once a server answers.",
                                  cause="NoServer", recheck_seconds=30.0)
            if server is None:
                place = 1 + next((i for i, t in enumerate(self.queue) if t is ticket), 0)
                progress(0.0, f"waiting for a ComfyUI server (#{place} in Tandava's queue)")
            elif not ticket.started_at:
                ahead = f" (#{ticket.position} in its queue)" if ticket.position else ""
                progress(0.0, f"queued on {server.name}{ahead}")
            else:
                progress(ticket.watch.progress, f"running on {server.name}")
        if ticket.error is not None:
            # The ticket has told its end; a retry submits the job afresh (a new
            # ticket, or a new id for a new seed), so keeping it would leak one
            # ticket per failed job for the life of the daemon.
            with self._cond:
                if self.tickets.get(prompt_id) is ticket:
                    del self.tickets[prompt_id]
            raise ticket.error
        return ticket

    def fetch(self, ticket: Ticket, dest: Path, *, animated: bool) -> Path:
        """Download the job's main output (the video for a clip) to ``dest``."""
        assert ticket.result is not None and ticket.server is not None
        files = [f for f in ticket.result.files if f.animated == animated] or list(ticket.result.files)
        if not files:
            raise TransientError(f"ComfyUI job {ticket.prompt_id} ended without an output file",
                                 "Check that the workflow ends in a Save node.", cause="NoOutput")
        path = ticket.server.client.download(_pick(files), dest)
        with self._cond:
            self.tickets.pop(ticket.prompt_id, None)
        return path

    # -- dispatch --------------------------------------------------------------

    def _dispatch(self) -> None:
        while not self._stop.is_set():
            posted = False
            with self._cond:
                seen = self._changes
            for server in self.servers:
                with self._cond:
                    ticket = self._pick(server) if server.up and len(server.held) < server.depth else None
                try:
                    if ticket is not None and self._admit(server, ticket):
                        posted = self._post(server, ticket) or posted
                except Unavailable:
                    self._mark_down(server)
                except Exception:  # the dispatcher must outlive any one bad answer
                    log.exception("comfy.dispatch_error", server=server.name)
            if not posted:
                with self._cond:
                    # A change notified while this pass ran must not wait out the timeout.
                    if self._changes == seen:
                        self._cond.wait(0.05 if self.queue else 0.5)

    def _pick(self, server: Server) -> Ticket | None:
        """The next ticket for ``server``: same models first, the oldest when it waited too long."""
        if not self.queue:
            return None
        loaded: set[str | None] = {t.workflow.signature() for t in server.held.values()} or {server.ledger.resident}
        oldest = self.queue[0]
        if not self.group_by_model:
            return oldest
        if self.clock() - oldest.enqueued < self.max_wait_seconds:
            for ticket in self.queue:
                if ticket.workflow.signature() in loaded:
                    return ticket
        if server.held:
            return None  # a model switch waits until the server's current work is done
        return oldest

    def _admit(self, server: Server, ticket: Ticket) -> bool:
        try:
            return self.admission.admit(server.client, server.ledger, ticket.workflow, name=server.name)
        except Unavailable:
            self._mark_down(server)
            return False

    def _preflight(self, server: Server, workflow: Workflow) -> None:
        """Check a workflow against the server's live node list before its first job there."""
        if workflow.name in server.checked:
            return
        problems = check_workflow(workflow, server.client.object_info(refresh=True))
        if problems:
            log.error("comfy.preflight_failed", server=server.name, workflow=workflow.name,
                      problems=[str(p) for p in problems])
        raise_for(problems)
        server.checked.add(workflow.name)

    def _post(self, server: Server, ticket: Ticket) -> bool:
        values = dict(ticket.values)
        try:
            self._preflight(server, ticket.workflow)
            if ticket.start_image is not None:
                values["start_image"] = server.client.upload_image(
                    ticket.start_image, f"tandava_{ticket.prompt_id}{ticket.start_image.suffix}",
                    data=ticket.start_bytes)
            graph = ticket.workflow.fill(**values)
            with self._cond:
                self.queue.remove(ticket)
                ticket.server, ticket.posted_at, ticket.started_at = server, 0.0, 0.0
                ticket.watch = JobWatch(ticket.prompt_id)
                server.held[ticket.prompt_id] = ticket  # before the POST: its events may come first
            server.client.post_prompt(graph, ticket.prompt_id, workflow=ticket.workflow.name)
            ticket.posted_at = self.clock()
        except Unavailable:
            self._requeue(server, ticket, lost=False)
            self._mark_down(server)
            return False
        except StageError as exc:
            server.checked.discard(ticket.workflow.name)  # a refusal may mean the server changed
            with self._cond:
                server.held.pop(ticket.prompt_id, None)
                if ticket in self.queue:
                    self.queue.remove(ticket)
            ticket.finish(error=exc)
            return False
        signature = ticket.workflow.signature()
        if server.ledger.resident != signature:
            if server.ledger.resident is not None:
                self.swaps += 1
            server.ledger.resident = signature
        log.info("comfy.posted", prompt_id=ticket.prompt_id, server=server.name, workflow=ticket.workflow.name)
        return True

    def _requeue(self, server: Server, ticket: Ticket, *, lost: bool) -> None:
        with self._cond:
            server.held.pop(ticket.prompt_id, None)
            if ticket.done.is_set():
                return
            if lost:
                ticket.losses += 1
                if ticket.losses > 1:
                    ticket.finish(error=TransientError(
                        f"ComfyUI job {ticket.prompt_id} was lost twice with its server ({server.name})",
                        "The server keeps dying under this job; look at ComfyUI's log.", cause="JobLost"))
                    return
            ticket.server = None
            self.queue.insert(0, ticket)  # it waited its turn already
            self._notify()
        log.warning("comfy.requeued", prompt_id=ticket.prompt_id, server=server.name, lost=lost)

    # -- events and monitoring ---------------------------------------------------

    def _on_event(self, server: Server, event: Event) -> None:
        prompt_id = getattr(event, "prompt_id", None)
        with self._cond:
            ticket = server.held.get(prompt_id) if prompt_id else None
            if ticket is None and isinstance(event, Executing) and prompt_id is None:
                ticket = server.running()  # a reconnect names only the node
            if ticket is None:
                return
            if isinstance(event, ExecutionStart) or (isinstance(event, Executing) and event.node):
                ticket.started_at = ticket.started_at or self.clock()
            ticket.watch.feed(event)
            if ticket.watch.done:
                self._settle_watch(server, ticket)

    def _settle_watch(self, server: Server, ticket: Ticket) -> None:
        watch = ticket.watch
        outcome = HistoryOutcome(watch.outcome or "error", tuple(watch.outputs), watch.error)
        if outcome.outcome == "success" and not outcome.files:
            return  # a cached or odd run: the monitor reads /history for the files
        self._settle(ticket, outcome)

    def _settle(self, ticket: Ticket, outcome: HistoryOutcome) -> None:
        server = ticket.server
        if server is not None:
            server.held.pop(ticket.prompt_id, None)
        if ticket.error is not None:
            ticket.done.set()
        elif outcome.outcome == "success":
            ticket.finish(outcome)
        else:
            ticket.finish(outcome, job_error(ticket, outcome))
        self._notify()

    def _monitor(self, server: Server) -> None:
        down_wait = self.check_seconds
        while not self._stop.is_set():
            try:
                self._check(server)
            except Unavailable as exc:
                server.problem = exc.reason
                self._mark_down(server)
            except Exception:  # a monitor must outlive any one bad answer
                log.exception("comfy.monitor_error", server=server.name)
            if server.up:
                down_wait = self.check_seconds
                self._stop.wait(self.check_seconds if server.held or self.queue else 5 * self.check_seconds)
            else:  # a server that is away is looked at less and less often, up to 10 checks' time
                self._stop.wait(down_wait)
                down_wait = min(10 * self.check_seconds, down_wait * 2)

    def _check(self, server: Server) -> None:
        if not server.up:
            # A managed keeper relaunches a crashed server and replaces a hung
            # one here; a remote keeper raises Unavailable until it is back.
            server.keeper.ensure_running(self._stop)
            self._mark_up(server)
        stats = server.client.system_stats()
        running = server.running()
        if running is not None:
            server.ledger.observe(running.workflow.signature(), stats)
        self._check_jobs(server)

    def _check_jobs(self, server: Server) -> None:
        if not server.held:
            return
        asked_at = self.clock()
        queue = server.client.queue()
        for ticket in list(server.held.values()):
            if not ticket.posted_at or ticket.posted_at > asked_at:
                continue  # posted while /queue was read: that answer may not show it yet
            if ticket.prompt_id in queue:
                if ticket.prompt_id in queue.running:
                    ticket.started_at = ticket.started_at or self.clock()
                    self._check_stuck(server, ticket)
                else:  # other users' jobs may be ahead of ours
                    ticket.position = 1 + len(queue.running) + queue.pending.index(ticket.prompt_id)
                continue
            # ComfyUI moves a job from the queue to history under one lock, so
            # a prompt in neither was lost with a restart of the server.
            outcome = server.client.history(ticket.prompt_id)
            if outcome is not None:
                with self._cond:
                    self._settle(ticket, outcome)
            else:
                self._requeue(server, ticket, lost=True)

    def _check_stuck(self, server: Server, ticket: Ticket) -> None:
        age = self.clock() - ticket.started_at
        if age > ticket.workflow.timeout_seconds:
            server.client.cancel(ticket.prompt_id)
            ticket.finish(error=TransientError(
                f"ComfyUI job {ticket.prompt_id} ({ticket.workflow.name}) ran {age:.0f} s, "
                f"over its limit of {ticket.workflow.timeout_seconds:.0f} s, and was interrupted",
                "It will be made again; raise timeout_seconds in the workflow's mapping if this job is just slow.",
                cause="JobTimeout"))
            return
        listener = server.listener
        silence = self.clock() - listener.last_event if listener is not None else None
        if server.keeper.diagnose(True, silence, self.silence_seconds) != "hung":
            ticket.interrupted_at = 0.0
            return
        # Escalate: interrupt the job first (cheap, keeps the loaded models);
        # if the server stays silent, kill and relaunch it.
        reason = f"no event for {silence or 0:.0f} s while {ticket.prompt_id} ran"
        if not ticket.interrupted_at:
            log.warning("comfy.interrupting", server=server.name, prompt_id=ticket.prompt_id, reason=reason)
            ticket.interrupted_at = self.clock()
            server.client.cancel(ticket.prompt_id)
        elif self.clock() - ticket.interrupted_at > 10 * self.check_seconds:
            self._recover(server, reason)

    def _recover(self, server: Server, reason: str) -> None:
        log.error("comfy.hung", server=server.name, reason=reason)
        try:
            server.keeper.restart(reason, self._stop)
        except StageError as exc:  # a remote server cannot be restarted from here: wait for it
            log.warning("comfy.cannot_restart", server=server.name, reason=exc.reason)
            return
        server.up = False
        self._mark_up(server)  # the restarted server knows none of our jobs: _check_jobs requeues them

    def _mark_up(self, server: Server) -> None:
        if not server.up:
            server.up, server.down_since, server.problem = True, None, None
            server.ledger.resident = None
            server.checked.clear()  # a restarted server may have other nodes and models
            log.info("comfy.server_up", server=server.name)
            self._wake()

    def _mark_down(self, server: Server) -> None:
        now = self.clock()
        if server.up:
            server.up, server.down_since = False, now
            log.warning("comfy.server_down", server=server.name, jobs=len(server.held))
        down_for = now - (server.down_since or now)
        others_up = any(s.up for s in self.servers if s is not server)
        if server.held and others_up and down_for >= self.failover_seconds:
            for ticket in list(server.held.values()):
                self._requeue(server, ticket, lost=True)


def _pick(files: list[OutputFile]) -> OutputFile:
    return files[-1]
