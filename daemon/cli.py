"""The ``tandava`` command line: a thin layer over the library.

Each command's docstring is its ``--help`` text, with an example. This is the
only module (with a failed run's ``error.json``) that words things for a
person; everything below it raises typed errors.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import structlog

from daemon import __version__
from daemon.config import CONFIG_NAME, Settings, load_settings, masked
from daemon.errors import ConfigError, StoreError, TandavaError
from daemon.logs import configure_logging, default_console, log_file_for

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
def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    """Run the daemon in the foreground: watch the inbox and move every song through the pipeline.

    The first Ctrl-C (or SIGTERM) finishes the work in flight and stops; a
    second one aborts at once (nothing is lost: every write is atomic).

    Example: tandava run            (serve until stopped)
             tandava run --once     (process what is waiting, then exit)
    """
    from daemon.app import run

    configure_logging(
        log_file=log_file_for(settings.paths.logs, "daemon"),
        console=default_console(),
        console_mode=settings.log.console,
        level=settings.log.level,
        max_bytes=settings.log.max_bytes,
        backups=settings.log.backups,
        max_age_days=settings.log.max_age_days or None,
    )
    stop_event = threading.Event()
    _install_stop_handlers(stop_event)
    return run(settings, stop_event, once=args.once)


@command
def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    """Show every run by state, with how far its current stage got.

    Example: tandava status
    """
    from daemon.host.report import status_lines

    for line in status_lines(settings.paths.state_root, verbose=args.verbose):
        print(line)
    return 0


@command
def cmd_show(args: argparse.Namespace, settings: Settings) -> int:
    """Show one run in full: its song, state history, stage progress and errors.

    RUN is a run id or any unique prefix of it.

    Example: tandava show 20261121-101500_shiva-tandav
    """
    from daemon.host.report import show_lines
    from daemon.runs.store import RunStore

    for line in show_lines(RunStore(settings.paths.state_root), args.run):
        print(line)
    return 0


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
    """List what waits for a person: every run in pending_approval, its segments and candidate images.

    Example: tandava pending
    """
    from daemon.host.report import pending_lines

    for line in pending_lines(settings.paths.state_root):
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
    """Ask for a fresh round of candidates for SEGMENT(s) once all of theirs are rejected.

    Example: tandava regenerate 20261121-101500_shiva 2
    """
    return _decide(args, settings, "regenerate")


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
        print(f"{decision.verdict}: {ref.run_id} {what}")
    return 0


@command
def cmd_init(args: argparse.Namespace, settings: Settings) -> int:
    """Write a commented tandava.toml (every key, its default and what it does).

    Example: tandava init            (writes ./tandava.toml)
             tandava init --path /srv/tandava/tandava.toml
    """
    from daemon.host.report import sample_config

    target: Path = args.path
    if target.exists() and not args.force:
        print(f"{target} exists; use --force to overwrite it.", file=sys.stderr)
        return 1
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(sample_config(), encoding="utf-8")
    print(f"wrote {target}")
    return 0


@command
def cmd_config(args: argparse.Namespace, settings: Settings) -> int:
    """Print the effective configuration (file + .env + environment), secrets masked.

    Example: tandava config
    """
    source = settings.config_file or "(no config file: defaults and environment)"
    print(f"# from {source}")
    print(json.dumps(masked(settings), indent=2, ensure_ascii=False))
    return 0


@command
def cmd_doctor(args: argparse.Namespace, settings: Settings) -> int:
    """Check this installation: paths, ffmpeg, decoders, configuration, theme, ComfyUI servers and
    their workflows (nodes, inputs, models, VRAM), the web panel, Telegram, Gemini and Ollama.

    Prints one line per check, ok or what is wrong and how to fix it; exits
    non-zero when anything is wrong, so it can gate a deployment.

    Example: tandava doctor
    """
    from daemon.host.doctor import run_checks

    ok = True
    for check in run_checks(settings):
        ok = ok and check.ok
        mark = "ok  " if check.ok else "FAIL"
        print(f"{mark} {check.name}: {check.detail}")
    return 0 if ok else 1


@command
def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    """Synthesize a short song, drop it into a fresh inbox and run the pipeline on it.

    Needs no GPU, no ComfyUI, no API keys and no download: the song (drums at
    a known tempo, chords, a section change) is made on the spot. Prints where
    the run ended up and its segment plan.

    Example: tandava demo                 (works in ./tandava-demo)
             tandava demo --dir /tmp/td
    """
    from daemon.demo import run_demo

    return run_demo(args.dir, out=sys.stdout)


@command
def cmd_service(args: argparse.Namespace, settings: Settings) -> int:
    """Write a service definition for this installation and print the commands that start it.

    --systemd writes /etc/systemd/system/tandava.service (run it as root), or
    with --user ~/.config/systemd/user/tandava.service; --windows writes
    tandava.xml for WinSW into a service folder beside tandava.toml. The file
    names this Python, this config and these folders by absolute path; nothing
    is started until you run the printed commands.

    Example: tandava --config /srv/tandava/tandava.toml service install --systemd
             tandava service install --systemd --user
             tandava --config C:\\Tandava\\tandava.toml service install --windows
    """
    from daemon.host.service import install_systemd, install_windows

    if args.windows and args.user:
        print("tandava: --user goes with --systemd", file=sys.stderr)
        return 2
    if args.windows:
        path, commands = install_windows(settings, dest_dir=args.dest)
    else:
        path, commands = install_systemd(settings, user_mode=args.user, dest=args.dest)
    print(f"wrote {path}; now run:")
    for line in commands:
        print(f"  {line}")
    return 0


@command
def cmd_logs(args: argparse.Namespace, settings: Settings) -> int:
    """Show the daemon's log, readably: the last events, one run's, or new ones as they come.

    Example: tandava logs                        (the last 50 events)
             tandava logs --run 20261121-1015    (one run's events)
             tandava logs --follow               (new events until Ctrl-C)
    """
    from daemon.host.logview import show_logs

    try:
        return show_logs(log_file_for(settings.paths.logs, "daemon"), sys.stdout,
                         run=args.run, lines=args.lines, follow_=args.follow)
    except KeyboardInterrupt:
        return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tandava",
        description="Tandava turns songs dropped into an inbox folder into music videos.",
    )
    parser.add_argument("--version", action="version", version=f"tandava {__version__}")
    parser.add_argument(
        "--config", type=Path, default=None, help=f"config file (default: $TANDAVA_CONFIG or ./{CONFIG_NAME})"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, fn in COMMANDS.items():
        doc = fn.__doc__ or ""
        p = sub.add_parser(
            name,
            help=doc.strip().splitlines()[0],
            description=doc,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if name == "run":
            p.add_argument("--once", action="store_true", help="process what is waiting, then exit")
        if name in {"show", "retry", "approve", "reject", "regenerate"}:
            p.add_argument("run", help="run id, its start, or a word of the song name")
        if name == "retry":
            p.add_argument("--tempo", type=float, default=None, metavar="BPM",
                           help="re-plan the run at this tempo (the beat you would clap to)")
        if name in {"approve", "reject"}:
            p.add_argument("items", nargs="*", metavar="SEGMENT:CANDIDATE")
        if name == "regenerate":
            p.add_argument("items", nargs="+", metavar="SEGMENT")
        if name == "approve":
            p.add_argument("--all", action="store_true", help="approve every open segment's first candidate")
        if name == "status":
            p.add_argument("-v", "--verbose", action="store_true", help="list every run, not just counts")
        if name == "demo":
            p.add_argument("--dir", type=Path, default=Path("tandava-demo"), help="demo folder")
        if name == "logs":
            p.add_argument("--run", default=None, help="only this run's events (its id or the start of it)")
            p.add_argument("-f", "--follow", action="store_true", help="keep printing new events until Ctrl-C")
            p.add_argument("-n", "--lines", type=int, default=50, help="past events to show first")
        if name == "service":
            p.add_argument("action", choices=["install"])
            kind = p.add_mutually_exclusive_group(required=True)
            kind.add_argument("--systemd", action="store_true", help="a systemd unit (Linux)")
            kind.add_argument("--windows", action="store_true", help="a WinSW service definition (Windows)")
            p.add_argument("--user", action="store_true", help="with --systemd: a unit for your own user manager")
            p.add_argument("--dest", type=Path, default=None,
                           help="where to write (--systemd: the unit file; --windows: the folder)")
        if name == "init":
            p.add_argument("--path", type=Path, default=Path(CONFIG_NAME), help="where to write")
            p.add_argument("--force", action="store_true", help="overwrite an existing file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tandava`` script and ``python -m daemon``."""
    _make_streams_safe()
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(args.config) if args.command not in {"init", "demo"} else Settings()
    except ConfigError as exc:
        print(f"tandava: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command != "run":
        configure_logging(console=default_console(), console_mode="pretty", level="WARNING")
    try:
        return COMMANDS[args.command](args, settings)
    except BrokenPipeError:
        # `tandava status | head`: the reader left; that is not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except StoreError as exc:
        print(f"tandava: {exc}", file=sys.stderr)
        return 1
    except TandavaError as exc:
        structlog.get_logger("tandava.cli").error("cli.error", error=str(exc))
        print(f"tandava: {exc}", file=sys.stderr)
        return 1


def _make_streams_safe() -> None:
    """Never crash printing a song name to a console that cannot show it (cp1252)."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")


def _install_stop_handlers(stop_event: threading.Event) -> None:
    """First signal: warm stop (drain). Second: abort now."""
    log = structlog.get_logger("tandava.cli")

    def handle(signum: int, _frame: FrameType | None) -> None:
        if stop_event.is_set():
            log.warning("daemon.aborting", signal=signum)
            logging_flush()
            os._exit(130)
        log.info("daemon.stop_requested", signal=signum)
        stop_event.set()

    for name in ("SIGINT", "SIGTERM", "SIGBREAK"):
        sig = getattr(signal, name, None)
        if sig is not None:
            signal.signal(sig, handle)


def logging_flush() -> None:
    import logging

    for handler in logging.getLogger().handlers:
        handler.flush()
