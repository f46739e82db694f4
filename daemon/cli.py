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

import structlog

from daemon import __version__
from daemon.config import CONFIG_NAME, Settings, load_settings, masked
from daemon.errors import ConfigError, StoreError, TandavaError
from daemon.host.commands import COMMANDS, command
from daemon.logs import configure_logging, default_console, log_file_for


@command
def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    """Run the daemon in the foreground: watch the inbox and move every song through the pipeline.

    The first Ctrl-C (or SIGTERM) finishes the work in flight and stops; a
    second one aborts at once (nothing is lost: every write is atomic).

    On a terminal it shows each run's progress live, warnings above it; info
    events go to the log file only (-v shows them too). Piped, under journald
    or with --log-format json, the console gets JSON lines and no live view.
    --once ends with what was made, what waits for you and what failed.

    Example: tandava run            (serve until stopped)
             tandava run --once     (process what is waiting, then exit)
             tandava run --log-format json | jq .
    """
    from daemon.app import run
    from daemon.host.live import logging_for, view_for
    from daemon.runs.manifest import utcnow

    log_format = args.log_format or settings.log.console
    view = view_for(default_console(), log_format)
    configure_logging(
        log_file=log_file_for(settings.paths.logs, "daemon"),
        console=default_console(),
        console_mode=log_format,
        level=settings.log.level,
        max_bytes=settings.log.max_bytes,
        backups=settings.log.backups,
        max_age_days=settings.log.max_age_days or None,
        **logging_for(view, verbose=args.verbose),
    )
    stop_event = threading.Event()
    _install_stop_handlers(stop_event, on_abort=view.restore if view is not None else None)
    started = utcnow()
    code = run(settings, stop_event, once=args.once, view=view)
    if args.once:
        from daemon.host.summary import panel_url, report, summarize
        from daemon.runs.store import RunStore

        panel = panel_url(settings)
        report(summarize(RunStore(settings.paths.state_root), started, panel=panel),
               view.console if view is not None else None, structlog.get_logger("tandava.cli"), panel=panel)
    return code


@command
def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    """Show every run by state, with how far its current stage got.

    --watch shows the running daemon's progress live (read from the state
    root and its health file; it changes nothing) until Ctrl-C.

    Example: tandava status
             tandava status --watch
    """
    from daemon.host.report import status_lines

    if args.watch:
        from daemon.host.summary import panel_url
        from daemon.host.watch import watch

        return watch(settings.paths.state_root, sys.stdout, panel=panel_url(settings))

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
def cmd_init(args: argparse.Namespace, settings: Settings) -> int:
    """Write a commented tandava.toml (every key, its default and what it does).

    Example: tandava init            (writes ./tandava.toml)
             tandava init --path /srv/tandava/tandava.toml
    """
    from daemon.host.sample import sample_config

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
    """Check this installation, one line per check, and say how to fix what is wrong.

    It checks the paths, ffmpeg, the decoders, the configuration, the theme,
    the ComfyUI servers and their workflows (nodes, inputs, models, VRAM), the
    web panel and the API, Telegram, Gemini and Ollama, and Google's backends
    (credentials, the route Veo uses, models reachable, prices, caps).

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
    is started until you run the printed commands. A definition already there
    is kept unless --force; a unit written elsewhere (--dest) comes with the
    command that copies it where systemd reads it.

    Example: tandava --config /srv/tandava/tandava.toml service install --systemd
             tandava service install --systemd --user
             tandava --config C:\\Tandava\\tandava.toml service install --windows
    """
    from daemon.host.service import install_systemd, install_windows

    if args.windows and args.user:
        print("tandava: --user goes with --systemd", file=sys.stderr)
        return 2
    if args.windows:
        path, commands = install_windows(settings, dest_dir=args.dest, force=args.force)
    else:
        path, commands = install_systemd(settings, user_mode=args.user, dest=args.dest, force=args.force)
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
    # The order a person reads --help in: running it, following runs, deciding, upkeep, setup.
    for name, fn in sorted(COMMANDS.items(), key=lambda item: _ORDER.index(item[0]) if item[0] in _ORDER else 99):
        doc = fn.__doc__ or ""
        p = sub.add_parser(
            name,
            help=summary(doc),
            description=doc,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if name == "run":
            p.add_argument("--once", action="store_true", help="process what is waiting, then exit")
            p.add_argument("-v", "--verbose", action="store_true",
                           help="show info events on the console too, above the live view")
            p.add_argument("--log-format", choices=["auto", "json", "pretty"], default=None,
                           help="console output: auto (live view on a terminal, JSON otherwise), json, pretty "
                                "(default: [log] console)")
        if name in {"show", "retry", "approve", "reject", "regenerate"}:
            p.add_argument("run", help="run id, its start, or a word of the song name")
        if name == "retry":
            p.add_argument("--tempo", type=float, default=None, metavar="BPM",
                           help="re-plan the run at this tempo (the beat you would clap to)")
        if name in {"approve", "reject"}:
            p.add_argument("items", nargs="*", metavar="SEGMENT:CANDIDATE")
        if name == "regenerate":
            p.add_argument("items", nargs="+", metavar="SEGMENT")
        if name == "forget":
            p.add_argument("runs", nargs="+", metavar="RUN", help="run ids, their starts, or a word of the song")
            p.add_argument("--delete", action="store_true", help="delete instead of archiving (songs included)")
        if name == "clean":
            p.add_argument("--failed", action="store_true", help="also archive failed runs")
            p.add_argument("--older-than", default="0d", metavar="AGE",
                           help="with --failed: only runs that failed this long ago (7d, 12h)")
            p.add_argument("--delete", action="store_true", help="with --failed: delete them, songs included")
            p.add_argument("--dry-run", action="store_true", help="print what would go; change nothing")
        if name == "pending":
            p.add_argument("run", nargs="?", default=None, help="only this run (its id, start, or a word)")
            p.add_argument("-v", "--verbose", action="store_true", help="also print each candidate's path")
        if name == "approve":
            p.add_argument("--all", action="store_true", help="approve every open segment's first candidate")
        if name == "status":
            p.add_argument("-v", "--verbose", action="store_true", help="list every run, not just counts")
            p.add_argument("-w", "--watch", action="store_true", help="show the daemon's progress live until Ctrl-C")
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
                           help="where to write (--systemd: the unit file, ending in .service; --windows: the folder)")
            p.add_argument("--force", action="store_true", help="replace a service definition already there")
        if name == "spend":
            p.add_argument("run", nargs="?", default="", help="run id, its start, or a word of the song name")
            p.add_argument("--approve", nargs="?", type=float, const=0.0, default=None, metavar="USD",
                           help="let this run spend up to its estimate (or USD) past the caps")
        if name == "init":
            p.add_argument("--path", type=Path, default=Path(CONFIG_NAME), help="where to write")
            p.add_argument("--force", action="store_true", help="overwrite an existing file")
    return parser


_ORDER = ["run", "status", "show", "pending", "approve", "reject", "regenerate", "retry", "forget", "clean",
          "spend", "logs", "init", "config", "doctor", "service", "demo"]


def summary(doc: str) -> str:
    """A command's one-line help: the docstring's first paragraph, joined, so it is never cut mid-sentence."""
    first = doc.strip().split("\n\n", 1)[0]
    return " ".join(first.split())


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


def _install_stop_handlers(stop_event: threading.Event, on_abort: Callable[[], None] | None = None) -> None:
    """First signal: warm stop (drain). Second: abort now (``on_abort`` first: give the terminal back)."""
    log = structlog.get_logger("tandava.cli")

    def handle(signum: int, _frame: FrameType | None) -> None:
        if stop_event.is_set():
            log.warning("daemon.aborting", signal=signum)
            logging_flush()
            if on_abort is not None:
                on_abort()
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
