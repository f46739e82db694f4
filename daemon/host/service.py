"""Service definitions for this installation: a systemd unit and a WinSW service file.

Both are rendered here, with the absolute paths of this installation (its
Python, its config file, its inbox, state root and logs), so a service started
in ``/`` or ``System32`` runs exactly what a person tested in a terminal. Both
start the same thing, ``python -m daemon --config <file> run``, which drains
on SIGTERM / Ctrl-C. ``service/`` in the repository holds commented examples
of what these functions write.

Nothing here starts or enables a service: the install functions write one file
and return the commands a person runs (as root, or in their own session).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path, PurePath, PureWindowsPath
from xml.sax.saxutils import escape

from daemon.config import Settings
from daemon.errors import ConfigError, TandavaError

SERVICE_NAME = "tandava"
SYSTEM_USER = "tandava"
SYSTEM_UNIT_DIR = Path("/etc/systemd/system")
# systemd kills a daemon that has not pinged for this long; the engine ticks every 0.5 s.
WATCHDOG_SECONDS = 60
# A warm stop lets stages in flight finish; past this, systemd (or WinSW) kills.
STOP_TIMEOUT_SECONDS = 120
RESTART_SECONDS = 5
# Start-up (reconcile, a managed ComfyUI coming up) must reach READY=1 within this.
START_TIMEOUT_SECONDS = 90
HOME_ROOTS = (PurePath("/home"), PurePath("/root"), PurePath("/run/user"))
TMP_ROOTS = (PurePath("/tmp"), PurePath("/var/tmp"))


def config_path(settings: Settings) -> Path:
    """The config file a service must be pointed at; a service has no working folder to find one in."""
    if settings.config_file is None:
        raise ConfigError("--config", None, "a tandava.toml for the service to read (write one with `tandava init`)")
    return settings.config_file


def writable_paths(settings: Settings) -> list[Path]:
    """Folders the daemon writes to: everything else can stay read-only."""
    paths = [settings.paths.inbox, settings.paths.state_root, settings.paths.logs]
    managed = settings.comfy.managed
    if managed is not None:
        paths.append(managed.folder)  # ComfyUI writes output/, temp/ and user/ inside its folder
        if managed.log_file is not None:
            paths.append(managed.log_file.parent)
    unique: list[Path] = []
    for path in paths:
        if path not in unique:
            unique.append(path)
    return unique


# -- systemd -------------------------------------------------------------------


def systemd_unit(settings: Settings, *, python: Path, user: str | None, user_mode: bool) -> str:
    """The text of ``tandava.service`` for this installation."""
    config = config_path(settings)
    workdir = config.parent
    writable = writable_paths(settings)
    start_timeout = START_TIMEOUT_SECONDS
    if settings.comfy.managed is not None:
        start_timeout += int(settings.comfy.managed.start_timeout_seconds)
    lines = [
        f"# Tandava, written by `tandava service install --systemd{' --user' if user_mode else ''}`",
        f"# for {config}. Edit the config, not this file: re-run the command after moving things.",
        "[Unit]",
        "Description=Tandava: songs dropped into an inbox become music videos",
        "Wants=network-online.target",
        "After=network-online.target",
        # Wait for the shares the inbox or state root live on.
        "RequiresMountsFor=" + _unit_words(writable),
        "",
        "[Service]",
        "Type=notify",
        "NotifyAccess=main",
        f"ExecStart={_unit_words([python])} -m daemon --config {_unit_words([config])} run",
        f"WorkingDirectory={_unit_escape(str(workdir))}",
        "Environment=PYTHONUNBUFFERED=1 PYTHONUTF8=1",
        # Secrets (GOOGLE_API_KEY, TANDAVA_TELEGRAM__TOKEN); '-': fine when absent.
        f"EnvironmentFile=-{_unit_escape(str(workdir / '.env'))}",
    ]
    if not user_mode and user:
        lines += [f"User={user}", f"Group={user}"]
    lines += [
        f"WatchdogSec={WATCHDOG_SECONDS}",
        "Restart=on-failure",
        f"RestartSec={RESTART_SECONDS}",
        f"TimeoutStartSec={start_timeout}",
        f"TimeoutStopSec={STOP_TIMEOUT_SECONDS}",
        # SIGTERM to the daemon only: it drains, then stops a managed ComfyUI itself.
        "KillMode=mixed",
        "NoNewPrivileges=yes",
    ]
    if not user_mode:
        # A user manager cannot set up these mount namespaces without user namespaces.
        if not _under(_used_paths(settings, python), TMP_ROOTS):
            lines.append("PrivateTmp=yes")  # not when the data itself lives in /tmp: it would vanish
        lines += [
            "ProtectSystem=strict",
            f"ProtectHome={_protect_home(settings, python)}",
            "ReadWritePaths=" + _unit_words(writable),
        ]
    lines += [
        "",
        "[Install]",
        f"WantedBy={'default.target' if user_mode else 'multi-user.target'}",
        "",
    ]
    return "\n".join(lines)


def install_systemd(
    settings: Settings,
    *,
    user_mode: bool,
    dest: Path | None = None,
    python: Path | None = None,
    user: str = SYSTEM_USER,
    force: bool = False,
) -> tuple[Path, list[str]]:
    """Write the unit; returns where, and the commands that (copy,) enable, start and follow it.

    ``dest`` must end in ``.service`` (systemd loads nothing else as a service); an
    existing file with other content is kept unless ``force``.
    """
    python = python or Path(sys.executable).absolute()  # not resolved: a venv's python is a symlink
    unit_dir = user_unit_dir() if user_mode else SYSTEM_UNIT_DIR
    if dest is None:
        dest = unit_dir / f"{SERVICE_NAME}.service"
    if dest.suffix != ".service":
        raise ConfigError("--dest", str(dest), f"a unit file name ending in .service, such as "
                          f"{unit_dir / (SERVICE_NAME + '.service')} (systemd loads only those as services)")
    text = systemd_unit(settings, python=python, user=None if user_mode else user, user_mode=user_mode)
    _write_definition(dest, text, force=force,
                      denied="run this as root (sudo), or use --user for a per-user service")
    unit = dest.name
    commands = _copy_into(dest, unit_dir)
    folders = " ".join(_shell(p) for p in writable_paths(settings))
    if user_mode:
        for path in writable_paths(settings):
            path.mkdir(parents=True, exist_ok=True)
        commands += [
            "systemctl --user daemon-reload",
            f"systemctl --user enable --now {unit}",
            "# keep it running while you are logged out:",
            "loginctl enable-linger \"$USER\"",
            f"systemctl --user status {unit}",
            f"journalctl --user -u {unit} -f",
        ]
    else:
        commands += [
            f"# once: a dedicated user that owns the daemon's folders and can read {config_path(settings)}",
            f"id {user} >/dev/null 2>&1 || useradd --system --user-group --home-dir "
            f"{_shell(settings.paths.state_root)} --shell /usr/sbin/nologin {user}",
            f"install -d -o {user} -g {user} {folders}",
            "systemctl daemon-reload",
            f"systemctl enable --now {unit}",
            f"systemctl status {unit}",
            f"journalctl -u {unit} -f",
        ]
    return dest, commands


def user_unit_dir() -> Path:
    """Where a user's systemd manager looks for the units a person writes."""
    return Path.home() / ".config/systemd/user"


def _write_definition(dest: Path, text: str, *, force: bool, denied: str) -> None:
    """Write a service definition; another one already there is replaced only when forced."""
    try:
        if dest.is_file() and not force and dest.read_text(encoding="utf-8", errors="replace") != text:
            raise TandavaError(f"{dest} already exists and holds another service definition: "
                               "add --force to replace it (it may run another installation; "
                               "`tandava doctor` says which)")
        if dest.is_dir():
            raise TandavaError(f"{dest} is a folder: give --dest a file name")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(text, encoding="utf-8")
    except PermissionError:
        raise TandavaError(f"cannot write {dest}: {denied}") from None


def _copy_into(dest: Path, unit_dir: Path) -> list[str]:
    """The commands that put a unit written elsewhere where systemd reads it (none when it is there)."""
    if dest.absolute().parent == unit_dir.absolute():
        return []
    return [f"# systemd reads units from {unit_dir}, not from {dest.absolute().parent}: copy it there",
            f"install -D -m 644 {_shell(dest.absolute())} {_shell(unit_dir / dest.name)}"]


def _protect_home(settings: Settings, python: Path) -> str:
    """``yes`` hides /home entirely; ``read-only`` when the venv, config or data live there."""
    return "read-only" if _under(_used_paths(settings, python), HOME_ROOTS) else "yes"


def _used_paths(settings: Settings, python: Path) -> list[Path]:
    used = [python, config_path(settings), *writable_paths(settings)]
    for extra in (settings.paths.themes, settings.images.folder, settings.comfy.workflows):
        if extra is not None:
            used.append(extra)
    return used


def _under(paths: Iterable[Path], roots: tuple[PurePath, ...]) -> bool:
    return any(path.is_relative_to(root) for path in paths for root in roots)


def _unit_escape(text: str) -> str:
    return text.replace("%", "%%")  # '%' starts a specifier in unit files


def _unit_words(paths: Iterable[Path]) -> str:
    """Paths as unit-file words: quoted when they hold a space, '%' and '\\' escaped."""
    words = []
    for path in paths:
        text = _unit_escape(str(path)).replace("\\", "\\\\")
        words.append(f'"{text}"' if re.search(r'[\s"]', text) else text)
    return " ".join(words)


def _shell(path: Path) -> str:
    import shlex

    return shlex.quote(str(path))


# -- Windows (WinSW) -----------------------------------------------------------


def winsw_xml(settings: Settings, *, python: Path) -> str:
    """The WinSW service definition (``tandava.xml``) for this installation."""
    config = config_path(settings)
    arguments = f'-m daemon --config "{config}" run'
    return "\n".join(
        [
            '<?xml version="1.0" encoding="UTF-8"?>',
            # '--' may not appear inside an XML comment.
            f"<!-- Tandava, written by 'tandava service install' for {str(config).replace('--', '- -')}. -->",
            "<service>",
            f"  <id>{SERVICE_NAME}</id>",
            "  <name>Tandava</name>",
            "  <description>Songs dropped into an inbox become music videos.</description>",
            f"  <executable>{escape(str(python))}</executable>",
            f"  <arguments>{escape(arguments)}</arguments>",
            f"  <workingdirectory>{escape(str(config.parent))}</workingdirectory>",
            "  <startmode>Automatic</startmode>",
            "  <delayedAutoStart>true</delayedAutoStart>",
            # Ctrl-C first (the daemon drains), killed after this.
            f"  <stoptimeout>{STOP_TIMEOUT_SECONDS} sec</stoptimeout>",
            '  <onfailure action="restart" delay="10 sec"/>',
            '  <onfailure action="restart" delay="60 sec"/>',
            "  <resetfailure>1 hour</resetfailure>",
            '  <env name="PYTHONUTF8" value="1"/>',
            '  <env name="PYTHONUNBUFFERED" value="1"/>',
            f"  <logpath>{escape(str(settings.paths.logs))}</logpath>",
            '  <log mode="roll-by-size">',
            "    <sizeThreshold>10240</sizeThreshold>",
            "    <keepFiles>8</keepFiles>",
            "  </log>",
            "</service>",
            "",
        ]
    )


def install_windows(
    settings: Settings,
    *,
    dest_dir: Path | None = None,
    python: Path | None = None,
    drive_type: Callable[[str], str] | None = None,
    force: bool = False,
) -> tuple[Path, list[str]]:
    """Write ``tandava.xml``; returns where, and the commands that install and start it.

    Another ``tandava.xml`` already in the folder is replaced only when ``force``.
    """
    python = python or Path(sys.executable).absolute()
    config = config_path(settings)
    folder = dest_dir or config.parent / "service"
    xml = folder / f"{SERVICE_NAME}.xml"
    _write_definition(xml, winsw_xml(settings, python=python), force=force,
                      denied="run this from an administrator's prompt, or choose another --dest folder")
    exe = folder / f"{SERVICE_NAME}.exe"
    commands = [
        f"REM {warning}"
        for warning in mapped_drive_warnings([python, config, *writable_paths(settings)], drive_type=drive_type)
    ]
    commands += [
        "REM download WinSW-x64.exe (https://github.com/winsw/winsw/releases) and save it as:",
        f"REM   {exe}",
        f'"{exe}" install',
        f'"{exe}" start',
        f'"{exe}" status',
    ]
    return xml, commands


def mapped_drive_warnings(
    paths: Iterable[Path], *, drive_type: Callable[[str], str] | None = None, system_drive: str | None = None
) -> list[str]:
    """Warnings for paths on drive letters a service may not see (drives are mapped per logon session).

    ``drive_type(letter)`` answers "remote", "local" or "unknown"; off Windows
    (or without it) any drive other than the system drive is suspect.
    """
    system = (system_drive or os.environ.get("SYSTEMDRIVE", "C:")).upper()
    if drive_type is None:
        drive_type = _windows_drive_type if sys.platform == "win32" else (lambda _drive: "unknown")
    warnings = []
    for path in paths:
        drive = PureWindowsPath(str(path)).drive.upper()
        if len(drive) != 2 or drive == system:  # "" or a UNC share: fine
            continue
        kind = drive_type(drive)
        if kind == "remote":
            warnings.append(f"warning: {path} is on the mapped network drive {drive}, which a service does not see; "
                            "use its UNC path (\\\\server\\share\\...) in tandava.toml")
        elif kind == "unknown":
            warnings.append(f"warning: {path} is on {drive}; if that is a mapped network drive, a service will "
                            "not see it: use its UNC path (\\\\server\\share\\...) in tandava.toml")
    return warnings


def _windows_drive_type(drive: str) -> str:
    import ctypes

    kind = ctypes.windll.kernel32.GetDriveTypeW(drive + "\\")  # type: ignore[attr-defined]
    return "remote" if kind == 4 else "local"  # DRIVE_REMOTE


def installed_definitions(settings: Settings) -> list[Path]:
    """Service definitions written by `tandava service install` for any installation, where they live."""
    found = [SYSTEM_UNIT_DIR / f"{SERVICE_NAME}.service", user_unit_dir() / f"{SERVICE_NAME}.service"]
    if settings.config_file is not None:
        found.append(settings.config_file.parent / "service" / f"{SERVICE_NAME}.xml")
    return [path for path in found if path.is_file()]


def definition_problem(path: Path, settings: Settings) -> str:
    """Why a written service definition does not run this installation ("" when it does)."""
    text = path.read_text(encoding="utf-8", errors="replace")
    config = str(config_path(settings)) if settings.config_file is not None else ""
    if config and config not in text and config.replace("%", "%%") not in text:
        return f"{path} runs another configuration than {config}"
    return ""
