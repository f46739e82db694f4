"""What a ``run --once`` or a demo leaves a person with: what was made, what waits for them, what failed.

How this works: ``summarize`` reads the state root once, after the engine has
stopped: runs that were rendered or failed since ``since`` (their last state
change), every run that waits for a person (whenever it arrived: it is still
theirs to decide), and runs left half-way. ``summary_lines`` words it, each
item with the path, command or URL that acts on it. The CLI prints the lines
on a terminal; piped, the same facts go to the log as one ``once.summary``
event, so a JSON stream stays JSON.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.text import Text

from daemon.config import Settings
from daemon.errors import StoreError
from daemon.runs.manifest import Manifest
from daemon.runs.states import WORKING, State
from daemon.runs.store import RunRef, RunStore

FINAL_VIDEO = "final.mp4"


@dataclass(frozen=True)
class Item:
    """One run in the summary."""

    run_id: str
    song: str
    # rendered: the video; waiting: what is asked; failed: the reason; working: the stage.
    what: str
    # rendered: the video's path; waiting: the command to decide; failed: the retry command.
    act: str = ""
    hint: str = ""  # failed: the fix; waiting: the panel's URL for the run
    extra: list[str] = field(default_factory=list)  # rendered: the exports beside the video


@dataclass(frozen=True)
class Summary:
    made: list[Item]
    waiting: list[Item]
    failed: list[Item]
    working: list[Item]

    def as_json(self) -> dict[str, Any]:
        """The summary as a log event's fields."""
        def items(xs: list[Item]) -> list[dict[str, str]]:
            return [{"run_id": x.run_id, "song": x.song, "what": x.what, "act": x.act} for x in xs]

        return {"made": items(self.made), "waiting": items(self.waiting), "failed": items(self.failed),
                "working": items(self.working)}


def summarize(store: RunStore, since: datetime, *, panel: str = "") -> Summary:
    """The runs this session finished, those waiting for a person, and those left half-way."""
    made, waiting, failed, working = [], [], [], []
    for ref in store.iter_runs():
        try:
            manifest = store.load(ref)
        except StoreError:
            continue
        touched = bool(manifest.history) and manifest.history[-1].at >= since
        song = manifest.song.original_name
        if ref.state is State.RENDERED and touched:
            exports = sorted(p.name for p in ref.path.glob("final_*") if p.is_file())
            made.append(Item(ref.run_id, song, "video", str(ref.path / FINAL_VIDEO),
                             extra=[str(ref.path / name) for name in exports]))
        elif ref.state is State.FAILED and touched:
            failed.append(_failed(ref, manifest))
        elif ref.state is State.PENDING_APPROVAL:
            waiting.append(_waiting(ref, manifest, panel))
        elif ref.state in WORKING and touched:
            stage = next((n for n, p in manifest.stages.items() if p.finished_at is None), "")
            working.append(Item(ref.run_id, song, f"{ref.state.value}" + (f" ({stage})" if stage else "")))
    return Summary(made, waiting, failed, working)


def _failed(ref: RunRef, manifest: Manifest) -> Item:
    err = manifest.last_error
    reason = f"{err.stage}: {err.reason}" if err is not None else "no error recorded"
    return Item(ref.run_id, manifest.song.original_name, reason, f"tandava retry {ref.run_id}",
                hint=err.hint if err is not None else "")


def _waiting(ref: RunRef, manifest: Manifest, panel: str) -> Item:
    gate = manifest.stages.get("approval")
    reason = str(gate.detail.get("waiting", "")) if gate is not None else ""
    what = reason.split(":", 1)[0] if reason else "waiting for a person to approve its segments"
    url = f"{panel.rstrip('/')}/runs/{ref.run_id}" if panel else ""
    return Item(ref.run_id, manifest.song.original_name, what,
                f"tandava pending; tandava approve {ref.run_id} --all", hint=url)


def summary_lines(summary: Summary, *, panel_note: str = "") -> Iterator[str]:
    """The summary in words; paths and commands stand on lines of their own, whole."""
    if summary.made:
        yield f"made {len(summary.made)} video(s):"
        for item in summary.made:
            yield f"  {item.song}"
            yield f"    video: {item.act}"
            for path in item.extra:
                yield f"    export: {path}"
    if summary.waiting:
        yield f"waiting for you ({len(summary.waiting)}):"
        for item in summary.waiting:
            yield f"  {item.song}: {item.what}"
            yield f"    {item.act}"
            if item.hint:
                yield f"    {item.hint}"
        if panel_note:
            yield f"  {panel_note}"
    if summary.failed:
        yield f"failed ({len(summary.failed)}):"
        for item in summary.failed:
            yield f"  {item.song}: {item.what}"
            if item.hint:
                yield f"    fix: {item.hint}"
            yield f"    {item.act}"
    if summary.working:
        yield f"left half-way ({len(summary.working)}; the next `tandava run` goes on with them):"
        for item in summary.working:
            yield f"  {item.song}: {item.what}"
    if not (summary.made or summary.waiting or summary.failed or summary.working):
        yield "nothing to do: the inbox had no new song."


def video_paths(summary: Summary) -> list[Path]:
    """The videos made."""
    return [Path(item.act) for item in summary.made]


def panel_url(settings: Settings) -> str:
    """Where the panel of this installation answers while ``tandava run`` serves it ("" when off)."""
    web = settings.web
    if not web.enabled or not web.port:
        return ""
    from daemon.channels.web.server import url_for

    return url_for(web.host, web.port)


def report(summary: Summary, console: Console | None, log: Any, *, panel: str = "") -> None:
    """Print the summary for a person on ``console``; without one, log it as one event."""
    if console is None:
        log.info("once.summary", **summary.as_json())
        return
    note = "(the panel answers while `tandava run` serves it)" if panel else ""
    for line in summary_lines(summary, panel_note=note):
        if line.startswith("    "):
            # A path, command or fix is useless cut: it stands whole on its own line.
            console.print(Text(line), soft_wrap=True, highlight=False, markup=False)
        else:
            console.print(Text(line, no_wrap=True, overflow="ellipsis"), highlight=False, markup=False)
