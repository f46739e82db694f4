"""What ``tandava forget`` and ``tandava clean`` do and say: archiving runs, retention now, a dry run.

How this works: the work is ``daemon.runs.archive`` (moving runs into
``archive/``, or deleting them with ``--delete``) and
``daemon.runs.retention`` (the policy's plan and its application); this
module puts them together for the CLI and words every line a person reads:
what went or would go, and how many bytes that frees. A run moved to the
archive is not freed space (it is still under the state root), so the
summary counts it apart.
"""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

from daemon.config import Settings
from daemon.errors import StoreError
from daemon.runs import archive, retention
from daemon.runs.archive import human_bytes
from daemon.runs.store import RunStore


def forget_runs(root: Path, runs: list[str], *, delete: bool, out: TextIO, err: TextIO) -> int:
    """Archive (or delete) each named run; returns the exit code (1 when any was refused)."""
    store = RunStore(root)
    code = 0
    for run in runs:
        try:
            gone = archive.forget(store, store.find(run), delete=delete)
        except StoreError as exc:
            print(f"tandava: {exc}", file=err)
            code = 1
            continue
        where = f"archived in {gone.to}" if gone.to is not None else "deleted, song included"
        print(f"{gone.run_id} ({gone.state.value}, {human_bytes(gone.bytes)}): {where}", file=out)
    return code


def clean(settings: Settings, *, failed: bool, older_than: str, delete: bool, dry_run: bool,
          out: TextIO, err: TextIO) -> int:
    """Apply retention (and with ``failed``, archive failed runs), or with ``dry_run`` say what would go."""
    store = RunStore(settings.paths.state_root)
    try:
        older = archive.parse_age(older_than)
    except ValueError as exc:
        print(f"tandava: --older-than: {exc}", file=err)
        return 2
    removals = retention.plan(store, settings.retention, inbox=settings.paths.inbox)
    chosen = archive.failed_runs(store, older_than=older) if failed else []
    verb = "would remove" if dry_run else "removing"
    for removal in removals:
        print(f"{verb} {removal.path} ({human_bytes(removal.bytes)}): {removal.why}", file=out)
    freed = sum(r.bytes for r in removals) if dry_run else retention.apply(store, removals)
    moved = 0
    for ref in chosen:
        if dry_run:
            size = archive.tree_size(ref.path)
            print(f"would {'delete' if delete else 'archive'} failed run {ref.run_id} ({human_bytes(size)})",
                  file=out)
        else:
            try:
                gone = archive.forget(store, ref, delete=delete)
            except StoreError as exc:
                print(f"tandava: {exc}", file=err)
                continue
            size = gone.bytes
            print(f"{'deleted' if gone.to is None else 'archived'} failed run {ref.run_id} "
                  f"({human_bytes(size)})", file=out)
        if delete:
            freed += size
        else:
            moved += size
    print(_summary(freed, moved, dry_run=dry_run, nothing=not removals and not chosen, failed=failed), file=out)
    return 0


def _summary(freed: int, moved: int, *, dry_run: bool, nothing: bool, failed: bool) -> str:
    if nothing:
        return ("nothing to clean: no rendered run is older than the retention period and no duplicate "
                "is old enough" + ("; no failed run matches" if failed else ""))
    summary = f"{'would free' if dry_run else 'freed'} {human_bytes(freed)}"
    if moved:
        summary += f"; {human_bytes(moved)} {'would move' if dry_run else 'moved'} to archive/"
    return summary
