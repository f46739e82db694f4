"""The commands that act on runs: retry, pending, approve, reject, regenerate, forget, clean, spend.

How this works: like every command, each is a function registered with
``command`` (its docstring is its ``--help``) and called by ``daemon.cli``
with the parsed arguments and the settings; the registry lives here, below
the CLI, so commands can be grouped by concern without importing the CLI
back. They go through the same library calls every channel uses
(``approval.decisions``, the run store), and word things for a person.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from daemon.config import Settings

if TYPE_CHECKING:
    from daemon.approval.store import Verdict
    from daemon.runs.store import RunStore

Command = Callable[[argparse.Namespace, Settings], int]
COMMANDS: dict[str, Command] = {}


def command(fn: Command) -> Command:
    """Register a subcommand; its docstring becomes its help."""
    COMMANDS[fn.__name__.removeprefix("cmd_").replace("_", "-")] = fn
    return fn


@command
def cmd_retry(args: argparse.Namespace, settings: Settings) -> int:
    """Move a failed run back to the state it failed in, so the daemon tries it again.

    Fix the cause named by `tandava show RUN` first (replace a corrupt file
    inside the run folder, free disk space, start ComfyUI…).

    Example: tandava retry 20261121-101500_shiva-tandav

    With --tempo BPM the run is re-planned at that tempo instead (the analysis
    chose half or double time, or flagged itself as unsure): segments that do
    not move keep their candidates and approvals, the others get new ones.
    Possible until the run is approved.

    Example: tandava retry 20261121-101500_shiva-tandav --tempo 90
    """
    from daemon.runs.store import RunStore

    store = RunStore(settings.paths.state_root)
    if args.tempo is not None:
        return _retempo(settings, store, args.run, args.tempo)
    ref = store.find(args.run)
    new_ref = store.retry(ref)
    print(f"{new_ref.run_id}: back in {new_ref.state.value}/; a running daemon picks it up now.")
    return 0


def _retempo(settings: Settings, store: RunStore, run: str, tempo: float) -> int:
    from daemon.music.beats import TEMPO_RANGE
    from daemon.stages.retempo import retempo

    low, high = TEMPO_RANGE
    if not low <= tempo <= high:
        print(f"--tempo {tempo:g} is outside {low:g}-{high:g} BPM; give the beat you would clap to",
              file=sys.stderr)
        return 2
    done = retempo(settings, store, run, tempo)
    print(f"{done.ref.run_id}: re-planned at {done.tempo:.1f} BPM, {done.beats_per_bar}/4, "
          f"{done.segments} segments; {len(done.kept)} kept their candidates and approvals "
          f"({', '.join(map(str, done.kept)) or 'none'}). A running daemon makes the missing candidates.")
    return 0


@command
def cmd_pending(args: argparse.Namespace, settings: Settings) -> int:
    """List what waits for a person: one line per segment of every run in pending_approval (or of RUN).

    Each segment is approved, or open with its number of candidates; -v adds
    each candidate's image path.

    Example: tandava pending
             tandava pending shiva -v
    """
    from daemon.host.report import pending_lines

    for line in pending_lines(settings.paths.state_root, args.run, verbose=args.verbose):
        print(line)
    return 0


@command
def cmd_approve(args: argparse.Namespace, settings: Settings) -> int:
    """Approve candidates: SEGMENT:CANDIDATE pairs, or --all (the first candidate nobody rejected, per open segment).

    A later approval of another candidate of the same segment replaces the
    earlier one. The daemon moves the run on once every segment is approved.

    Example: tandava approve 20261121-101500_shiva 0:1 3:0
             tandava approve shiva --all
    """
    return _decide(args, settings, "approve")


@command
def cmd_reject(args: argparse.Namespace, settings: Settings) -> int:
    """Reject candidates (SEGMENT:CANDIDATE…). A segment whose candidates are all rejected gets new ones.

    Example: tandava reject 20261121-101500_shiva 2:0 2:1
    """
    return _decide(args, settings, "reject")


@command
def cmd_regenerate(args: argparse.Namespace, settings: Settings) -> int:
    """Make new candidates for SEGMENT(s) now: their open candidates are rejected and a new round is made.

    The running daemon makes the round within seconds, with new seeds, and
    offers it on every channel (`tandava pending`, the panel, Telegram). A
    rejected candidate can still be approved later; an approved segment is
    refused (reject its choice first).

    Example: tandava regenerate 20261121-101500_shiva 2
    """
    return _decide(args, settings, "regenerate")


@command
def cmd_forget(args: argparse.Namespace, settings: Settings) -> int:
    """Archive runs you no longer want to see: failed or finished ones, or folders that are not runs.

    Each RUN moves whole (song included) into archive/ under the state root,
    out of status, the panel and the daemon's sight; moving its folder back
    into a state folder brings it back. --delete removes it for good, song
    included. Runs being worked on are refused.

    Example: tandava forget 20261121-101500_broken-song
             tandava forget 20261121-1015 20261122-0930 --delete
    """
    from daemon.host.cleanup import forget_runs

    return forget_runs(settings.paths.state_root, args.runs, delete=args.delete, out=sys.stdout, err=sys.stderr)


@command
def cmd_clean(args: argparse.Namespace, settings: Settings) -> int:
    """Free disk now: apply the [retention] policy, and with --failed archive failed runs.

    Retention removes the candidates and clips of runs rendered more than
    intermediates_days ago, and duplicates older than duplicates_days (the
    daemon does this hourly too). --failed archives failed runs (only those
    that failed longer ago than --older-than, e.g. 7d); --delete removes them
    instead, songs included. --dry-run prints what would go and what it would
    free, and changes nothing.

    Example: tandava clean --dry-run
             tandava clean --failed --older-than 7d
    """
    from daemon.host.cleanup import clean

    return clean(settings, failed=args.failed, older_than=args.older_than, delete=args.delete,
                 dry_run=args.dry_run, out=sys.stdout, err=sys.stderr)


def _decide(args: argparse.Namespace, settings: Settings, verdict: Verdict) -> int:
    import getpass
    import platform

    from daemon.approval import decisions
    from daemon.runs.store import RunStore

    store = RunStore(settings.paths.state_root)
    ref = store.find(args.run)
    by = f"{getpass.getuser()}@{platform.node()}"
    targets: list[tuple[int, int | None]] = []
    for item in args.items:
        try:
            if verdict == "regenerate":
                targets.append((int(item), None))
            else:
                seg, cand = item.split(":")
                targets.append((int(seg), int(cand)))
        except ValueError:
            expected = "SEGMENT" if verdict == "regenerate" else "SEGMENT:CANDIDATE, e.g. 3:1"
            print(f"tandava: {item!r} is not {expected}", file=sys.stderr)
            return 2
    every = getattr(args, "all", False)
    if not targets and not every:
        print("nothing to decide: give SEGMENT:CANDIDATE pairs" + (" or --all" if verdict == "approve" else ""),
              file=sys.stderr)
        return 2
    made = decisions.approve_all(store, ref.run_id, by=by, channel="cli") if every else []
    made += [decisions.decide(store, ref.run_id, verdict, seg, cand, by=by, channel="cli") for seg, cand in targets]
    if not made:
        print(f"{ref.run_id}: no open segment to approve")
    for decision in made:
        what = f"segment {decision.segment}" + (f" candidate {decision.candidate}"
                                                 if decision.candidate is not None else "")
        if decision.for_round is not None:
            what += (f": open candidates rejected; the daemon makes round {decision.for_round} now "
                     "(new seeds) and offers it on every channel")
        print(f"{decision.verdict}: {ref.run_id} {what}")
    return 0


@command
def cmd_spend(args: argparse.Namespace, settings: Settings) -> int:
    """Show Google spend: today's, and a run's estimate and ledger; --approve lets a run past the caps once.

    A run whose next paid job would pass [google] max_usd_per_run or
    max_usd_per_day waits; `--approve` allows it to spend up to its estimate
    (or USD), without raising the caps for every run.

    Example: tandava spend
             tandava spend 20261121-101500_shiva --approve
             tandava spend 20261121-101500_shiva --approve 45
    """
    from datetime import UTC, datetime

    from daemon.backends.google.costs import approve_spend, day_total, estimate_lines, read_cost
    from daemon.runs.store import RunStore

    day = datetime.now(UTC).strftime("%Y-%m-%d")
    print(f"google spend today ({day} UTC): ${day_total(settings.paths.state_root, day):.2f} "
          f"of ${settings.google.max_usd_per_day:.2f}; per run at most ${settings.google.max_usd_per_run:.2f}")
    if not args.run:
        return 0
    ref = RunStore(settings.paths.state_root).find(args.run)
    if args.approve is not None:
        usd = args.approve or float((read_cost(ref.path).get("estimate") or {}).get("usd", 0.0))
        approve_spend(ref.path, usd)
        print(f"{ref.run_id} may spend up to ${usd:.2f} whatever the caps say")
    for line in estimate_lines(ref.path) or ["no Google estimate or spend"]:
        print(f"{ref.run_id}  {line}")
    return 0
