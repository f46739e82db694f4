"""Tandava as a native Windows service (pywin32), for hosts that do not use WinSW.

Windows only: it imports pywin32 (``pip install tandava[windows]``). Install,
pointing it at the config file once (kept in the service's registry key):

    python -m daemon.winservice --config C:\\Tandava\\tandava.toml --startup auto install
    python -m daemon.winservice start

``SvcDoRun`` runs the same ``daemon.app.run`` as ``tandava run``; ``SvcStop``
reports STOP_PENDING and sets the stop event, so the engine drains. Under
``pythonservice.exe`` there is no stdout or stderr: logs go to the log file
only, and start-up failures to the Windows event log.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar

import servicemanager
import win32service
import win32serviceutil

from daemon.config import Settings, load_settings
from daemon.errors import TandavaError
from daemon.host.service import SERVICE_NAME, STOP_TIMEOUT_SECONDS
from daemon.logs import configure_logging

RunDaemon = Callable[[Settings, threading.Event], int]
CONFIG_OPTION = "config"


def _run_app(settings: Settings, stop_event: threading.Event) -> int:
    from daemon.app import run

    return run(settings, stop_event)


class TandavaService(win32serviceutil.ServiceFramework):
    """The daemon under the Service Control Manager."""

    _svc_name_ = SERVICE_NAME
    _svc_display_name_ = "Tandava"
    _svc_description_ = "Songs dropped into an inbox become music videos."

    # What runs the daemon; tests put a fake here (in a subclass).
    run_daemon: ClassVar[RunDaemon] = staticmethod(_run_app)
    # The config file; None: the one recorded by `install --config`.
    config_file: ClassVar[Path | None] = None

    def __init__(self, args: Sequence[str]) -> None:
        super().__init__(args)
        self.stop_event = threading.Event()
        self.exit_code: int | None = None

    def SvcStop(self) -> None:  # noqa: N802 (pywin32's name)
        self.ReportServiceStatus(win32service.SERVICE_STOP_PENDING, waitHint=STOP_TIMEOUT_SECONDS * 1000)
        self.stop_event.set()

    def SvcDoRun(self) -> None:  # noqa: N802 (pywin32's name)
        try:
            settings = load_settings(self.find_config())
        except TandavaError as exc:
            servicemanager.LogErrorMsg(f"Tandava cannot start: {exc}")
            self.exit_code = 2
            return
        configure_logging(
            log_file=settings.paths.logs / "tandava.log",
            console=None,  # pythonservice.exe: sys.stdout and sys.stderr may be None
            console_mode=settings.log.console,
            level=settings.log.level,
            max_bytes=settings.log.max_bytes,
            backups=settings.log.backups,
        )
        servicemanager.LogInfoMsg(f"Tandava started with {settings.config_file}")
        try:
            self.exit_code = type(self).run_daemon(settings, self.stop_event)
        except TandavaError as exc:
            servicemanager.LogErrorMsg(f"Tandava stopped: {exc}")
            self.exit_code = 1
        else:
            servicemanager.LogInfoMsg("Tandava stopped")

    def find_config(self) -> Path | None:
        if self.config_file is not None:
            return self.config_file
        recorded = win32serviceutil.GetServiceCustomOption(self._svc_name_, CONFIG_OPTION, None)
        return Path(recorded) if recorded else None


def main(argv: Sequence[str] | None = None) -> None:
    """``install``/``start``/``stop``/``remove`` (pywin32's handler), plus ``--config FILE`` for install."""
    args = list(sys.argv if argv is None else argv)
    config: Path | None = None
    if "--config" in args:
        at = args.index("--config")
        config = Path(args[at + 1]).absolute()
        del args[at : at + 2]
    win32serviceutil.HandleCommandLine(TandavaService, argv=args)
    if config is not None and "install" in args:
        win32serviceutil.SetServiceCustomOption(TandavaService._svc_name_, CONFIG_OPTION, str(config))


if __name__ == "__main__":
    main()
