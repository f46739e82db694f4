"""Settling the inbox for ``tandava run --once``: wait for songs still arriving, then say what was and was not taken.

How this works. The long-running watcher waits for each file as long as it
takes; a one-shot run cannot, so ``settle_once`` watches the inbox for at most
``max_wait`` (the stable window plus a margin). A song is ready once its
(size, mtime) has held still for the stable window; a file whose mtime is
already older than that counts from its mtime, after one re-check a settle
later (a writer may be at work on an old file). A song that appears during the
wait is watched too. Whatever still changes when time is up is skipped with a
reason, as is every song-like name that is never taken (a dotfile, a folder, a
symbolic link): ``tandava run --once`` right after a copy takes the song, or
says why not.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from daemon import defaults
from daemon.errors import StoreError
from daemon.intake.files import (
    Signature,
    StillChanging,
    can_open_exclusively,
    looks_like_song,
    refusal,
)
from daemon.intake.intake import Intake

log = structlog.get_logger("tandava.inbox")

# How often the one-shot wait looks again: quick enough that a settled song is
# taken within a tenth of its window, cheap (one stat per song).
_POLL_SECONDS = 0.1


@dataclass
class Settled:
    """What one look at the inbox found: songs to take, songs waited for, and names left with a reason."""

    ready: list[Path] = field(default_factory=list)
    waited: dict[str, float] = field(default_factory=dict)  # name -> seconds waited until it held still
    skipped: dict[str, str] = field(default_factory=dict)  # name -> why it is not taken


@dataclass
class _Watched:
    sig: Signature
    still_since: float  # clock time the current signature started holding
    changed: bool = False  # it changed while we watched: worth saying we waited


def settle_once(
    folder: Path,
    *,
    stable_seconds: float,
    max_wait: float,
    clock: Callable[[], float] = time.monotonic,
    wall: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> Settled:
    """Watch ``folder`` until every song in it has held still for ``stable_seconds``, or ``max_wait`` passed."""
    result = Settled()
    start = clock()
    watched: dict[str, _Watched] = {}
    done: set[str] = set()
    while True:
        now = clock()
        for path in _song_like(folder):
            name = path.name
            if name in done or name in result.skipped:
                continue
            try:
                st = path.lstat()
            except OSError:
                watched.pop(name, None)  # gone meanwhile: nothing to say
                continue
            reason = refusal(path, st)
            if reason is not None:
                result.skipped[name] = reason
                watched.pop(name, None)
                continue
            sig = (st.st_size, st.st_mtime_ns)
            seen = watched.get(name)
            if seen is None:
                age = wall() - sig[1] / 1e9
                # A future mtime (a share's clock ahead of ours) proves nothing: count from now.
                watched[name] = _Watched(sig, now - age if age >= 0 else now)
            elif seen.sig != sig:
                watched[name] = _Watched(sig, now, changed=True)
            elif (
                now - seen.still_since >= stable_seconds
                and now - start >= defaults.SETTLE_SECONDS
                and can_open_exclusively(path)
            ):
                result.ready.append(path)
                done.add(name)
                if seen.changed or now - start > defaults.SETTLE_SECONDS + _POLL_SECONDS:
                    result.waited[name] = round(now - start, 1)
        pending = {name: w for name, w in watched.items() if name not in done}
        if not pending:
            break
        if now - start >= max_wait:
            for name, w in pending.items():
                result.skipped[name] = _still_arriving(now - w.still_since, stable_seconds)
            break
        sleep(_POLL_SECONDS)
    return result


def take_settled(
    intake: Intake, folder: Path, *, stable_seconds: float, margin: float = defaults.ONCE_MARGIN_SECONDS
) -> Settled:
    """``--once``: wait for the inbox to settle, take the songs that did, and log what was waited for and skipped."""
    settled = settle_once(folder, stable_seconds=stable_seconds, max_wait=stable_seconds + margin)
    for name, seconds in settled.waited.items():
        log.info("inbox.waited", file=name, seconds=seconds, why="it was still arriving")
    for path in settled.ready:
        try:
            intake.accept(path)
        except StillChanging:
            settled.skipped[path.name] = _still_arriving(0.0, stable_seconds)
        except StoreError as exc:
            settled.skipped[path.name] = str(exc)
    for name, reason in settled.skipped.items():
        log.warning("inbox.skipped", file=name, reason=reason)
    return settled


def _song_like(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if looks_like_song(p.name))
    except OSError:
        return []


def _still_arriving(quiet_for: float, stable_seconds: float) -> str:
    if quiet_for >= stable_seconds:
        return "another program still holds it open: run `tandava run --once` again when it is closed"
    return (
        f"it is still being written (it last changed {quiet_for:.1f} s ago, and a song is taken only "
        f"after {stable_seconds:g} s without a change): run `tandava run --once` again when the copy "
        "has finished, or use `tandava run`, which waits as long as a copy takes"
    )
