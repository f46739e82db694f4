"""The live view on a terminal: one line per run in the pipeline, a footer, warnings above it.

How this works: a ``Source`` is a callable that returns a ``Frame`` (the runs
and the footer). In the daemon it reads the engine's ``ProgressBoard`` and
what the health reporter last counted, so a refresh reads nothing from disk;
``status --watch`` passes one that reads the state root instead
(``daemon.host.watch``). ``LiveView`` asks its source at most
``refresh_per_second`` times a second on a thread of its own and redraws only
when the text changed: at once for a new run, stage, wait or a completed
step, at most twice a second for counts and ETAs (``bench/bench_live.py``
measures the cost). It draws with rich's ``Live``: no escape codes of our
own, and rich knows Windows consoles, ``NO_COLOR`` and encodings that cannot
show a bar (it falls back to ASCII).

Every line is cut to the terminal's width (ellipsis), never wrapped, so the
area keeps its height. Log lines at warning and above are printed above the
area through ``LiveView.log_sink`` (info stays in the log file unless ``-v``).
On a ``TERM=dumb`` terminal, or when the output is not a terminal at all,
there is no area to redraw: ``plain`` mode prints a run's line only when it
changed (a new stage, each quarter of a step, a new wait).

``view_for`` decides: piped output, journald (``JOURNAL_STREAM``) and
``--log-format json`` get no view at all, and JSON logs exactly as before.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.text import Text

from daemon.logs import console_wants_json
from daemon.runs.progress import RunProgress, StepCount

# A person reads a few changes a second; more costs CPU and shows nothing new.
REFRESH_PER_SECOND = 4.0
# Counts that move faster than this (fast backends) are drawn at this pace; it is CPU for nothing.
COUNT_REDRAW_SECONDS = 0.5
# Below this width the state is left out of a run's line and the bar shortened.
NARROW_COLUMNS = 80
ViewMode = Literal["live", "plain"]


@dataclass(frozen=True)
class Footer:
    """What the daemon as a whole is doing."""

    inbox: str = ""
    panel: str = ""  # the web panel's URL, when it is served
    backends: list[dict[str, Any]] = field(default_factory=list)
    spend: str = ""  # today's cloud spend, when a paid backend recorded one
    counts: dict[str, int] = field(default_factory=dict)
    daemon: str = ""  # the daemon itself: alive (status --watch), or stopping
    finished: int = 0  # runs that finished since the view started


@dataclass(frozen=True)
class Frame:
    """One refresh: the runs in the pipeline and the footer."""

    runs: list[RunProgress]
    footer: Footer


Source = Callable[[], Frame]


class EtaClock:
    """Estimates when a step ends from the rate measured since this view first saw it."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._first: dict[tuple[str, str], tuple[float, float]] = {}

    def eta(self, run: RunProgress) -> float | None:
        """Seconds left for the run's step, or None until it has moved since first seen."""
        count = run.count
        if count is None or count.fraction >= 1.0:
            return None  # nothing counted, or nothing left
        key, now = (run.run_id, count.step), self.clock()
        t0, done0 = self._first.setdefault(key, (now, count.done))
        if count.done <= done0 or now <= t0:
            return None
        rate = (count.done - done0) / (now - t0)
        return max(0.0, (count.total - count.done) / rate)

    def forget(self, keep: set[str]) -> None:
        """Drop runs no longer shown."""
        for key in [k for k in self._first if k[0] not in keep]:
            del self._first[key]


def format_eta(seconds: float | None) -> str:
    """``ETA 1:05``, ``ETA 1:02:03``, or "" when unknown.

    Rounded more the further it is (5 s under a minute, 15 s under ten, then
    the minute): an estimate is no better than that, and the line is redrawn
    only when its text changes.
    """
    if seconds is None:
        return ""
    step = 5 if seconds < 60 else 15 if seconds < 600 else 60
    s = round(seconds / step) * step
    return f"ETA {s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"ETA {s // 60}:{s % 60:02d}"


def person_ask(run: RunProgress) -> str:
    """What a waiting run asks of a person, in a few words: the stage's own, or the start of its reason.

    The approval gate's reasons begin with what is asked ("waiting for a person
    to approve 3 of 5 segment(s): `tandava pending`, …"); the commands after
    the colon are for ``status``, not for a line on a terminal.
    """
    if run.ask:
        return run.ask
    head = run.waiting.split(":", 1)[0].split(";", 1)[0].strip()
    return head.removeprefix("waiting for a person to ") or "a decision"


def run_url(panel: str, run_id: str) -> str:
    return f"{panel.rstrip('/')}/runs/{run_id}" if panel else ""


def line_parts(run: RunProgress, panel: str, *, narrow: bool, room: int = 1000) -> tuple[str, str, str]:
    """(where, what, detail) of a run's line; ``what`` is empty for a line without a bar.

    A run waiting for a person names the panel's page of the run, or the
    panel itself when the page's address would not fit in ``room`` columns.
    """
    if not run.stage:
        where = "queued" if narrow else f"queued in {run.state}"
    else:
        where = run.stage if narrow else f"{run.state} › {run.stage}"
    if run.waiting:
        if run.state == "pending_approval":
            ask = f"waiting for you: {person_ask(run)}"
            url = run_url(panel, run.run_id)
            if len(ask) + len(url) + 3 > room:
                url = panel
            return "", "", ask + (f" — {url}" if url else "")
        return where, "", f"waiting: {run.waiting}"
    return where, run.count.label() if run.count else "", ""


def render_frame(frame: Frame, console: Console, etas: EtaClock | None = None, *,
                 max_rows: int = 40) -> RenderableType:
    """The live area for ``frame`` at the console's width: every line cut to fit, none wrapped.

    Every run's line has the same column widths (song, where, then the bar and
    its label, or what it waits for), so the lines line up. Lines are plain
    ``Text`` (a table per refresh costs several times more CPU); the bar is
    rich's ``ProgressBar``, which falls back to ASCII where the console needs it.
    """
    width = console.size.width
    narrow = width < NARROW_COLUMNS
    song_w = max(8, min(28, width // 4))
    where_w = 9 if narrow else 27  # "approval"; "pending_approval › approval"
    rest = max(10, width - song_w - where_w - 2)
    bar_w = min(24, max(6, rest // 3))
    lines: list[RenderableType] = []
    shown = frame.runs[:max_rows]
    for run in shown:
        where, what, detail = line_parts(run, frame.footer.panel, narrow=narrow, room=width - song_w - 1)
        line = Text.assemble(_cell(run.song, song_w), " ", no_wrap=True, overflow="ellipsis", end="\n")
        if where:  # a run waiting for you has the whole line for what to do
            line.append_text(_cell(where, where_w))
            line.append(" ")
        if what and run.count is not None:
            bar = ProgressBar(total=100.0, completed=run.count.fraction * 100, width=bar_w)
            drawn = 0
            for segment in console.render(bar, console.options.update(width=bar_w)):
                line.append(segment.text, segment.style)
                drawn += segment.cell_length
            # Without colours rich draws only the done part: pad, so the labels line up.
            line.append(" " * max(0, bar_w - drawn))
            eta = format_eta(etas.eta(run)) if etas is not None else ""
            line.append(" " + f"{what}  {eta}".rstrip())
        else:
            line.append(detail)
        line.truncate(width, overflow="ellipsis")
        lines.append(line)
    if len(frame.runs) > len(shown):
        lines.append(_cut(f"… and {len(frame.runs) - len(shown)} more (tandava status)"))
    if not frame.runs:
        lines.append(_cut("nothing in the pipeline: drop a song into the inbox"))
    lines.extend(_cut(text) for text in footer_lines(frame.footer))
    return Group(*lines)


def _cell(text: str, width: int) -> Text:
    """``text`` cut (with an ellipsis) or padded to exactly ``width`` cells."""
    cell = Text(text)
    cell.truncate(width, overflow="ellipsis", pad=True)
    return cell


def footer_lines(footer: Footer) -> list[str]:
    """The footer: where songs go in, the panel, the servers and spend; the runs per state."""
    first = []
    if footer.daemon:
        first.append(footer.daemon)
    if footer.panel:
        first.append(f"panel {footer.panel}")
    if footer.backends:
        down = [str(b.get("name") or b.get("url") or "?") for b in footer.backends if not b.get("up")]
        first.append(f"ComfyUI {len(footer.backends) - len(down)}/{len(footer.backends)} up"
                     + (f" (down: {', '.join(down)})" if down else ""))
    if footer.spend:
        first.append(f"today {footer.spend}")
    if footer.inbox:  # last: a long path is what the width cuts
        first.append(f"inbox {footer.inbox}")
    counts = [f"{n} {state}" for state, n in footer.counts.items() if n]
    second = ("runs: " + ", ".join(counts)) if counts else ""
    if footer.finished:
        second += ("; " if second else "") + f"{footer.finished} finished since start"
    return [line for line in (" · ".join(first), second) if line]


def _cut(text: str) -> Text:
    return Text(text, no_wrap=True, overflow="ellipsis", end="\n")


def plain_line(run: RunProgress, panel: str) -> str:
    """A run's line in plain mode; it changes only at a new stage, wait or quarter of a step."""
    where, what, detail = line_parts(run, panel, narrow=False)
    if what and run.count is not None:
        quarter = StepCount(run.count.step, int(run.count.fraction * 4), 4, "s")
        what = run.count.label() if run.count.fraction >= 1.0 else quarter.label()
    return f"{run.song}  {where}  {what or detail}".rstrip()


class LiveView:
    """Shows a ``Source`` on a console until the ``showing`` block ends."""

    def __init__(self, console: Console, *, mode: ViewMode = "live",
                 refresh_per_second: float = REFRESH_PER_SECOND, transient: bool = True) -> None:
        self.console = console
        self.mode = mode
        # The daemon's area goes at the end (a summary follows); a watcher's last frame stays.
        self.transient = transient
        self.interval = 1.0 / min(REFRESH_PER_SECOND, max(0.1, refresh_per_second))
        self.etas = EtaClock()
        self.cpu_seconds = 0.0  # CPU time the refresh thread spent (bench_live reads it)
        self.refreshes = 0
        self._live: Live | None = None
        self._plain_seen: dict[str, str] = {}
        self._shape: list[tuple[str, str, str, str, bool]] = []
        self._drawn_at = 0.0

    def restore(self) -> None:
        """Give the terminal back as it was (the cursor shown) before an abort that skips ``showing``'s end."""
        self.console.show_cursor(True)

    def log_sink(self, line: str) -> None:
        """Print a log line above the live area (rich keeps the area below it)."""
        self.console.print(Text(line), soft_wrap=True, highlight=False, markup=False)

    @contextmanager
    def showing(self, source: Source) -> Iterator[None]:
        """Refresh from ``source`` on a thread while the block runs; draw the last frame at the end."""
        stop = threading.Event()
        if self.mode == "live":
            self._live = Live(console=self.console, auto_refresh=False, transient=self.transient,
                              redirect_stdout=False, redirect_stderr=False)
            self._live.start()
        thread = threading.Thread(target=self._loop, args=(source, stop), name="tandava-live", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            self._draw(source, force=True)
            if self._live is not None:
                self._live.stop()
                self._live = None

    def _loop(self, source: Source, stop: threading.Event) -> None:
        started = time.thread_time()
        last = None
        try:
            while not stop.wait(self.interval):
                last = self._draw(source, last)
        finally:
            self.cpu_seconds += time.thread_time() - started

    def _draw(self, source: Source, last: object = None, *, force: bool = False) -> object:
        """Redraw if the frame's text changed; returns what was drawn (to compare with next time)."""
        try:
            frame = source()
        except Exception as exc:  # a view must never take the daemon down
            frame = Frame([], Footer(daemon=f"(live view: cannot read progress: {exc!r})"))
        self.etas.forget({r.run_id for r in frame.runs})
        if self.mode == "plain":
            self._print_changes(frame)
            return None
        key = (frame, tuple(format_eta(self.etas.eta(r)) for r in frame.runs))
        if key == last or self._live is None:
            return key
        # A count that moved waits for the next half second; a new run, stage or wait, or a
        # step that completed, shows at once.
        shape = [(r.run_id, r.state, r.stage, r.waiting, r.count is not None and r.count.fraction >= 1.0)
                 for r in frame.runs]
        now = time.monotonic()
        if shape == self._shape and now - self._drawn_at < COUNT_REDRAW_SECONDS and not force:
            return last
        self._shape, self._drawn_at = shape, now
        self.refreshes += 1
        height = max(4, self.console.size.height - 4)
        self._live.update(render_frame(frame, self.console, self.etas, max_rows=height), refresh=True)
        return key

    def _print_changes(self, frame: Frame) -> None:
        for run in frame.runs:
            line = plain_line(run, frame.footer.panel)
            if self._plain_seen.get(run.run_id) != line:
                self._plain_seen[run.run_id] = line
                self.refreshes += 1
                self.console.print(_cut(line), highlight=False, markup=False)


def make_console(stream: TextIO, *, width: int | None = None) -> Console:
    """A rich console over ``stream``; rich reads ``NO_COLOR``, ``TERM`` and the encoding itself."""
    return Console(file=stream, width=width, highlight=False, soft_wrap=False, emoji=False)


def view_for(stream: TextIO | None, log_format: Literal["auto", "json", "pretty"]) -> LiveView | None:
    """The view a person on ``stream`` gets: none when piped, under journald or asked for JSON."""
    if stream is None or console_wants_json(stream, log_format):
        return None
    console = make_console(stream)
    if not console.is_terminal:
        return None  # log.console = "pretty" into a pipe: readable logs, no view
    return LiveView(console, mode="plain" if console.is_dumb_terminal else "live")


def logging_for(view: LiveView | None, *, verbose: bool) -> dict[str, Any]:
    """The console part of ``configure_logging`` under a view: warnings above it, info with ``-v``."""
    if view is None:
        return {}
    return {"console_sink": view.log_sink, "console_level": "INFO" if verbose else "WARNING"}
