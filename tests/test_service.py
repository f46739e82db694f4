"""Service definitions: the systemd unit, the WinSW file, and the pywin32 service class."""

from __future__ import annotations

import configparser
import importlib
import shutil
import subprocess
import sys
import threading
import types
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path, PurePath
from typing import Any

import pytest

from daemon.config import Settings
from daemon.errors import ConfigError
from daemon.host.service import (
    install_systemd,
    install_windows,
    mapped_drive_warnings,
    systemd_unit,
    winsw_xml,
)

REPO = Path(__file__).resolve().parent.parent
PYTHON = Path(sys.executable).absolute()


def parse_unit(text: str) -> configparser.ConfigParser:
    """A unit file read as INI (systemd allows repeated keys; the last wins here)."""
    parser = configparser.ConfigParser(strict=False, interpolation=None, comment_prefixes=("#", ";"))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    return parser


def test_unit_runs_this_installation(settings: Settings, tmp_path: Path) -> None:
    """The unit is Type=notify with a watchdog and starts this Python on this config, by absolute paths."""
    unit = parse_unit(systemd_unit(settings, python=PYTHON, user="tandava", user_mode=False))
    service = unit["Service"]
    assert service["Type"] == "notify"
    assert service["NotifyAccess"] == "main"
    assert service["WatchdogSec"] == "60"
    assert service["Restart"] == "on-failure"
    assert int(service["TimeoutStopSec"]) >= 120
    assert service["ExecStart"] == f"{PYTHON} -m daemon --config {tmp_path / 'tandava.toml'} run"
    assert service["WorkingDirectory"] == str(tmp_path)
    assert service["EnvironmentFile"] == f"-{tmp_path / '.env'}"
    assert service["Environment"] == "PYTHONUNBUFFERED=1 PYTHONUTF8=1"
    assert (service["User"], service["Group"]) == ("tandava", "tandava")
    assert service["ProtectSystem"] == "strict"
    assert service["NoNewPrivileges"] == "yes"
    writable = service["ReadWritePaths"].split()
    assert writable == [str(tmp_path / "inbox"), str(tmp_path / "state"), str(tmp_path / "logs")]
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_unit_hardening_follows_where_the_data_lives(settings: Settings) -> None:
    """Data under /home makes /home read-only, not hidden; data in /tmp drops PrivateTmp."""
    settings.paths.state_root = Path("/home/ana/tandava/state")
    settings.config_file = Path("/srv/tandava/tandava.toml")
    settings.paths.inbox = Path("/srv/tandava/inbox")
    settings.paths.logs = Path("/srv/tandava/logs")
    service = parse_unit(systemd_unit(settings, python=Path("/opt/tandava/bin/python"),
                                      user="tandava", user_mode=False))["Service"]
    assert service["ProtectHome"] == "read-only"
    assert service["PrivateTmp"] == "yes"
    settings.paths.state_root = Path("/srv/tandava/state")
    service = parse_unit(systemd_unit(settings, python=Path("/opt/tandava/bin/python"),
                                      user="tandava", user_mode=False))["Service"]
    assert service["ProtectHome"] == "yes"
    settings.paths.logs = Path("/tmp/tandava-logs")
    service = parse_unit(systemd_unit(settings, python=Path("/opt/tandava/bin/python"),
                                      user="tandava", user_mode=False))["Service"]
    assert "PrivateTmp" not in service


def test_unit_quotes_spaces_and_escapes_percent(settings: Settings) -> None:
    """A path with a space is quoted and a '%' doubled, as systemd reads them."""
    settings.config_file = Path("/srv/my songs/tandava.toml")
    settings.paths.inbox = Path("/srv/my songs/100%/inbox")
    service = parse_unit(systemd_unit(settings, python=PYTHON, user=None, user_mode=False))["Service"]
    assert service["ExecStart"].endswith('--config "/srv/my songs/tandava.toml" run')
    assert service["ReadWritePaths"].startswith('"/srv/my songs/100%%/inbox" ')
    assert "User" not in service


def test_user_unit_has_no_user_and_targets_default(settings: Settings, tmp_path: Path) -> None:
    """--user: no User=, WantedBy=default.target, no mount-namespace hardening; folders made."""
    dest = tmp_path / "units" / "tandava.service"
    path, commands = install_systemd(settings, user_mode=True, dest=dest, python=PYTHON)
    unit = parse_unit(path.read_text(encoding="utf-8"))
    assert "User" not in unit["Service"] and "ProtectSystem" not in unit["Service"]
    assert unit["Install"]["WantedBy"] == "default.target"
    assert "systemctl --user enable --now tandava.service" in commands
    assert commands[-1] == "journalctl --user -u tandava.service -f"
    assert settings.paths.inbox.is_dir() and settings.paths.logs.is_dir()


def test_system_install_prints_the_commands(settings: Settings, tmp_path: Path) -> None:
    """A system install writes the unit and lists user creation, folders, reload, enable, status, logs."""
    path, commands = install_systemd(settings, user_mode=False, dest=tmp_path / "tandava.service")
    assert path.is_file()
    assert any(c.startswith("id tandava ") and "useradd --system" in c for c in commands)
    assert f"install -d -o tandava -g tandava {tmp_path / 'inbox'}" in " ".join(commands)
    assert commands[-4:] == [
        "systemctl daemon-reload",
        "systemctl enable --now tandava.service",
        "systemctl status tandava.service",
        "journalctl -u tandava.service -f",
    ]


def test_service_needs_a_config_file() -> None:
    """Without a config file there is nothing a service could be pointed at."""
    with pytest.raises(ConfigError, match="tandava init"):
        systemd_unit(Settings(), python=PYTHON, user=None, user_mode=True)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_analyze_accepts_the_unit(settings: Settings, tmp_path: Path) -> None:
    """systemd itself parses the unit without complaint (the user and folders need not exist)."""
    dest = tmp_path / "tandava.service"
    install_systemd(settings, user_mode=False, dest=dest, python=PYTHON)
    done = subprocess.run(["systemd-analyze", "verify", str(dest)], capture_output=True,
                          text=True, encoding="utf-8", timeout=60, check=False)
    problems = [line for line in done.stderr.splitlines()
                if "tandava.service" in line and "User" not in line and "Group" not in line]
    assert problems == [], done.stderr


def test_shipped_unit_example_has_the_generated_keys(settings: Settings) -> None:
    """service/tandava.service documents the same keys the generator writes."""
    generated = parse_unit(systemd_unit(settings, python=PYTHON, user="tandava", user_mode=False))
    example = parse_unit((REPO / "service" / "tandava.service").read_text(encoding="utf-8"))
    for section in ("Unit", "Service", "Install"):
        assert set(generated[section]) <= set(example[section]), section


def test_winsw_xml_is_well_formed_with_absolute_paths(settings: Settings, tmp_path: Path) -> None:
    """tandava.xml parses and names this Python, this config and the logs folder."""
    root = ET.fromstring(winsw_xml(settings, python=PYTHON).encode("utf-8"))
    assert root.tag == "service"
    assert root.findtext("id") == "tandava"
    assert root.findtext("executable") == str(PYTHON)
    assert root.findtext("arguments") == f'-m daemon --config "{tmp_path / "tandava.toml"}" run'
    assert root.findtext("workingdirectory") == str(tmp_path)
    assert root.findtext("stoptimeout") == "120 sec"
    assert root.findtext("logpath") == str(tmp_path / "logs")
    assert [(e.get("action"), e.get("delay")) for e in root.findall("onfailure")][0] == ("restart", "10 sec")
    env = {e.get("name"): e.get("value") for e in root.findall("env")}
    assert env == {"PYTHONUTF8": "1", "PYTHONUNBUFFERED": "1"}
    log = root.find("log")
    assert log is not None and log.get("mode") == "roll-by-size"


def test_winsw_xml_escapes_markup(settings: Settings) -> None:
    """A '&' in a path does not break the XML."""
    settings.config_file = Path("/srv/rock & roll/tandava.toml")
    root = ET.fromstring(winsw_xml(settings, python=PYTHON))
    assert root.findtext("workingdirectory") == "/srv/rock & roll"


def test_install_windows_writes_xml_and_commands(settings: Settings, tmp_path: Path) -> None:
    """install_windows writes tandava.xml and says to put WinSW beside it as tandava.exe."""
    path, commands = install_windows(settings, dest_dir=tmp_path / "winsw", python=PYTHON)
    assert path == tmp_path / "winsw" / "tandava.xml"
    ET.parse(path)
    exe = tmp_path / "winsw" / "tandava.exe"
    assert f"REM   {exe}" in commands
    assert commands[-3:] == [f'"{exe}" install', f'"{exe}" start', f'"{exe}" status']


def test_mapped_drive_warnings() -> None:
    """A path on a mapped network drive is flagged; the system drive and UNC shares are not."""
    paths = [PurePath("C:/Tandava/tandava.toml"), PurePath("//nas/songs/inbox"), PurePath("Z:/state")]
    kinds = {"Z:": "remote"}
    warnings = mapped_drive_warnings(paths, drive_type=lambda d: kinds.get(d, "local"),  # type: ignore[arg-type]
                                     system_drive="C:")
    assert len(warnings) == 1 and "Z:" in warnings[0] and "UNC" in warnings[0]
    assert mapped_drive_warnings([PurePath("D:/data")], system_drive="c:",  # type: ignore[list-item]
                                 drive_type=lambda d: "unknown")
    assert mapped_drive_warnings([PurePath("D:/data")], system_drive="C:",  # type: ignore[list-item]
                                 drive_type=lambda d: "local") == []


# -- the pywin32 service, with stand-ins for pywin32's modules --------------------------


class FakeFramework:
    """Just enough of win32serviceutil.ServiceFramework: it records reported statuses."""

    def __init__(self, args: Any) -> None:
        self.args = args
        self.statuses: list[tuple[int, int]] = []

    def ReportServiceStatus(self, status: int, waitHint: int = 0) -> None:  # noqa: N802, N803
        self.statuses.append((status, waitHint))


@pytest.fixture
def winservice(monkeypatch: pytest.MonkeyPatch) -> Iterator[types.ModuleType]:
    """daemon.winservice imported against stub pywin32 modules."""
    events: list[str] = []
    serviceutil = types.ModuleType("win32serviceutil")
    serviceutil.ServiceFramework = FakeFramework  # type: ignore[attr-defined]
    serviceutil.GetServiceCustomOption = lambda name, option, default=None: default  # type: ignore[attr-defined]
    service = types.ModuleType("win32service")
    service.SERVICE_STOP_PENDING = 3  # type: ignore[attr-defined]
    manager = types.ModuleType("servicemanager")
    manager.LogInfoMsg = events.append  # type: ignore[attr-defined]
    manager.LogErrorMsg = lambda text: events.append("error: " + text)  # type: ignore[attr-defined]
    manager.events = events  # type: ignore[attr-defined]
    for module in (serviceutil, service, manager, types.ModuleType("win32event")):
        monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.delitem(sys.modules, "daemon.winservice", raising=False)
    yield importlib.import_module("daemon.winservice")
    sys.modules.pop("daemon.winservice", None)


@pytest.fixture
def reset_logging() -> Iterator[None]:
    """The service configures logging; undo it afterwards."""
    import logging

    import structlog

    yield
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    structlog.reset_defaults()


@pytest.mark.usefixtures("reset_logging")
def test_windows_service_runs_until_stopped(winservice: types.ModuleType, settings: Settings) -> None:
    """SvcDoRun runs the daemon with the stop event; SvcStop reports STOP_PENDING and it returns cleanly."""
    import logging

    started = threading.Event()
    seen: list[Settings] = []

    def fake_run(loaded: Settings, stop_event: threading.Event) -> int:
        seen.append(loaded)
        started.set()
        stop_event.wait(10)
        return 0

    class Service(winservice.TandavaService):  # type: ignore[name-defined]
        run_daemon = staticmethod(fake_run)
        config_file = settings.config_file

    svc = Service(["tandava"])
    runner = threading.Thread(target=svc.SvcDoRun)
    runner.start()
    assert started.wait(5)
    svc.SvcStop()
    runner.join(5)
    assert not runner.is_alive()
    assert svc.exit_code == 0
    assert svc.statuses == [(3, 120_000)]
    assert seen[0].config_file == settings.config_file
    handlers = logging.getLogger().handlers
    assert handlers and all(isinstance(h, logging.FileHandler) for h in handlers)
    assert (settings.paths.logs / "tandava.log").is_file()
    assert sys.modules["servicemanager"].events[-1] == "Tandava stopped"


def test_windows_service_reports_a_bad_config(winservice: types.ModuleType, tmp_path: Path) -> None:
    """A config that does not load goes to the event log, and the daemon is not run."""
    calls: list[Settings] = []

    def fake_run(loaded: Settings, stop_event: threading.Event) -> int:
        calls.append(loaded)
        return 0

    class Service(winservice.TandavaService):  # type: ignore[name-defined]
        run_daemon = staticmethod(fake_run)
        config_file = tmp_path / "missing.toml"

    svc = Service(["tandava"])
    svc.SvcDoRun()
    assert svc.exit_code == 2 and calls == []
    assert sys.modules["servicemanager"].events[-1].startswith("error: Tandava cannot start")


def test_shipped_winsw_example_has_the_generated_elements(settings: Settings) -> None:
    """service/windows/tandava.xml is well-formed and holds every element the generator writes."""
    generated = ET.fromstring(winsw_xml(settings, python=PYTHON))
    example = ET.parse(REPO / "service" / "windows" / "tandava.xml").getroot()
    assert {e.tag for e in generated.iter()} <= {e.tag for e in example.iter()}


def test_cli_writes_the_unit_and_prints_the_systemctl_commands(settings: Settings, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """`tandava service install --systemd --dest F` writes the unit there and prints how to start it."""
    from daemon.cli import main

    unit = tmp_path / "tandava.service"
    assert main(["--config", str(settings.config_file), "service", "install", "--systemd",
                 "--dest", str(unit)]) == 0
    out = capsys.readouterr().out
    assert "Type=notify" in unit.read_text(encoding="utf-8")
    assert "systemctl" in out and "enable --now" in out


def test_dest_not_ending_in_service_is_refused(settings: Settings, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """`--dest` without .service is refused (systemd would not load it), naming the shape, and nothing is written."""
    from daemon.cli import main

    dest = tmp_path / "tandava.unit"
    assert main(["--config", str(settings.config_file), "service", "install", "--systemd",
                 "--dest", str(dest)]) == 1
    err = capsys.readouterr().err
    assert "--dest" in err and "ending in .service" in err and str(dest) in err
    assert not dest.exists()


def test_dest_elsewhere_says_how_to_copy_the_unit(settings: Settings, tmp_path: Path) -> None:
    """A unit written outside /etc/systemd/system comes with the command that installs it there."""
    dest = tmp_path / "out" / "tandava.service"
    _, commands = install_systemd(settings, user_mode=False, dest=dest, python=PYTHON)
    assert any("systemd reads units from /etc/systemd/system" in c for c in commands)
    assert f"install -D -m 644 {dest} /etc/systemd/system/tandava.service" in commands
    assert commands.index(f"install -D -m 644 {dest} /etc/systemd/system/tandava.service") < \
        commands.index("systemctl daemon-reload")


def test_user_dest_elsewhere_says_how_to_copy_the_unit(settings: Settings, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A --user unit written elsewhere is copied into ~/.config/systemd/user; one written there needs no copy."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    user_dir = tmp_path / "home" / ".config/systemd/user"
    _, commands = install_systemd(settings, user_mode=True, dest=tmp_path / "tandava.service", python=PYTHON)
    assert f"install -D -m 644 {tmp_path / 'tandava.service'} {user_dir / 'tandava.service'}" in commands
    _, commands = install_systemd(settings, user_mode=True, python=PYTHON)
    assert not any(c.startswith("install -D") for c in commands)
    assert (user_dir / "tandava.service").is_file()


def test_existing_definition_is_kept_without_force(settings: Settings, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Another unit at --dest is not overwritten unless --force; the same unit again is fine."""
    from daemon.cli import main

    dest = tmp_path / "tandava.service"
    dest.write_text("[Service]\nExecStart=/somebody/else\n", encoding="utf-8")
    argv = ["--config", str(settings.config_file), "service", "install", "--systemd", "--dest", str(dest)]
    assert main(argv) == 1
    assert "--force" in capsys.readouterr().err
    assert dest.read_text(encoding="utf-8") == "[Service]\nExecStart=/somebody/else\n"
    assert main([*argv, "--force"]) == 0
    assert "Type=notify" in dest.read_text(encoding="utf-8")
    assert main(argv) == 0  # the same definition again: nothing to lose


def test_existing_winsw_file_is_kept_without_force(settings: Settings, tmp_path: Path) -> None:
    """Another tandava.xml in the service folder is replaced only with force."""
    from daemon.errors import TandavaError

    folder = tmp_path / "winsw"
    folder.mkdir()
    (folder / "tandava.xml").write_text("<service/>", encoding="utf-8")
    with pytest.raises(TandavaError, match="--force"):
        install_windows(settings, dest_dir=folder, python=PYTHON)
    path, _ = install_windows(settings, dest_dir=folder, python=PYTHON, force=True)
    assert ET.parse(path).getroot().findtext("id") == "tandava"
