"""The ComfyUI supervisor against real processes and real sockets (tests/comfystub/main.py)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import psutil
import pytest
from structlog.testing import capture_logs

from daemon.backends.comfy.supervisor import (
    ComfyProcess,
    Owner,
    PortTaken,
    RemoteComfy,
    health,
    is_our_comfyui,
    kill_tree,
    port_owner,
    wait_port_free,
)
from daemon.config import ManagedComfyConfig
from daemon.errors import Unavailable

STUB = Path(__file__).parent / "comfystub" / "main.py"
HEALTH_TIMEOUT = 0.5

Spawn = Callable[..., subprocess.Popen[bytes]]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_health(url: str, want: str = "ok", timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while health(url, HEALTH_TIMEOUT) != want:
        assert time.monotonic() < deadline, f"{url} never became {want}"
        time.sleep(0.1)


def wait_listening(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while port_owner(port) is None:
        assert time.monotonic() < deadline, f"nothing listens on {port}"
        time.sleep(0.05)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A fake ComfyUI folder holding the stub as main.py."""
    comfy = tmp_path / "ComfyUI"
    comfy.mkdir()
    shutil.copy(STUB, comfy / "main.py")
    return comfy


@pytest.fixture
def port() -> int:
    """A TCP port nobody listens on."""
    return free_port()


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Start processes for a test; every one (and its children) is killed and waited at the end."""
    started: list[subprocess.Popen[bytes]] = []

    def start(*args: str, cwd: Path | None = None) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([sys.executable, *args], cwd=cwd, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        kill_tree(proc.pid, timeout=5)
        proc.wait(timeout=5)


@pytest.fixture
def make_comfy(folder: Path, port: int, tmp_path: Path) -> Iterator[Callable[..., ComfyProcess]]:
    """Build ComfyProcess objects on the fake folder; each is stopped at the end."""
    made: list[ComfyProcess] = []

    def make(*args: str, launch_attempts: int = 2) -> ComfyProcess:
        cfg = ManagedComfyConfig(folder=folder, port=port, args=list(args), start_timeout_seconds=10.0)
        comfy = ComfyProcess(cfg, log_dir=tmp_path / "logs", health_timeout=HEALTH_TIMEOUT,
                             launch_attempts=launch_attempts, backoff_seconds=0.05)
        made.append(comfy)
        return comfy

    yield make
    for comfy in made:
        comfy.stop()


def test_launches_a_managed_server_and_stops_it(make_comfy: Callable[..., ComfyProcess], tmp_path: Path) -> None:
    """ensure_running starts ComfyUI, waits for health, logs its output to comfyui.log; stop() ends it."""
    comfy = make_comfy()
    with capture_logs() as logs:
        url = comfy.ensure_running(threading.Event())
    assert url == comfy.url
    assert health(url, HEALTH_TIMEOUT) == "ok"
    pid = comfy.pid
    assert pid is not None
    events = [e["event"] for e in logs]
    assert events[:1] == ["comfy.launching"] and "comfy.ready" in events
    log_text = (tmp_path / "logs" / "comfyui.log").read_text(encoding="utf-8")
    assert "comfystub starting: mode=ok" in log_text
    comfy.stop()
    assert not psutil.pid_exists(pid)
    assert health(url, HEALTH_TIMEOUT) == "refused"


def test_adopts_a_healthy_server_already_on_the_port(
    make_comfy: Callable[..., ComfyProcess], spawn: Spawn, folder: Path, port: int
) -> None:
    """A healthy server on the port is used as it is: nothing launched, and stop() leaves it running."""
    other = spawn(str(STUB), "--listen", "127.0.0.1", "--port", str(port))
    comfy = make_comfy()
    wait_health(comfy.url)
    with capture_logs() as logs:
        assert comfy.ensure_running(threading.Event()) == comfy.url
        comfy.ensure_running(threading.Event())
    assert [e["event"] for e in logs] == ["comfy.adopted"]
    assert comfy.pid is None
    comfy.stop()
    assert other.poll() is None


def test_kills_a_stale_server_of_ours_and_relaunches(
    make_comfy: Callable[..., ComfyProcess], spawn: Spawn, folder: Path, port: int
) -> None:
    """A hung ComfyUI from our folder (run as a relative main.py) is killed with its children, then relaunched."""
    stale = spawn("main.py", "--port", str(port), "--stub-mode", "hang", "--stub-child", cwd=folder)
    wait_listening(port)
    children = psutil.Process(stale.pid).children(recursive=True)
    assert children, "the stub should have started a child"
    owner = port_owner(port)
    assert owner is not None and owner.pid == stale.pid
    assert is_our_comfyui(owner, folder)
    comfy = make_comfy()
    with capture_logs() as logs:
        comfy.ensure_running(threading.Event())
    events = [e["event"] for e in logs]
    assert events.index("comfy.stale") < events.index("comfy.stale_killed") < events.index("comfy.launching")
    assert stale.wait(timeout=5) is not None
    assert not any(child.is_running() and child.status() != psutil.STATUS_ZOMBIE for child in children)
    assert health(comfy.url, HEALTH_TIMEOUT) == "ok"
    assert comfy.pid not in (None, stale.pid)


def test_a_foreign_program_on_the_port_is_named_and_left_alone(
    make_comfy: Callable[..., ComfyProcess], spawn: Spawn, port: int
) -> None:
    """PortTaken names the other program's pid and command line; that program keeps running."""
    code = f"import socket,time; s=socket.socket(); s.bind(('127.0.0.1', {port})); s.listen(); time.sleep(60)"
    foreign = spawn("-c", code)
    wait_listening(port)
    comfy = make_comfy()
    with pytest.raises(PortTaken) as caught:
        comfy.ensure_running(threading.Event())
    assert f"pid {foreign.pid}" in caught.value.reason
    assert "time.sleep(60)" in caught.value.reason
    assert "[comfy.managed] port" in caught.value.hint
    assert isinstance(caught.value, Unavailable)
    assert foreign.poll() is None


def test_a_server_that_crashes_on_launch_is_retried_then_unavailable(
    make_comfy: Callable[..., ComfyProcess], tmp_path: Path
) -> None:
    """Every try is logged; the error carries the log tail and names the log file."""
    comfy = make_comfy("--stub-mode", "crash", launch_attempts=3)
    with capture_logs() as logs, pytest.raises(Unavailable) as caught:
        comfy.ensure_running(threading.Event())
    log_file = tmp_path / "logs" / "comfyui.log"
    assert "RuntimeError: comfystub crashed on purpose" in caught.value.reason
    assert "exited with code 1" in caught.value.reason
    assert str(log_file) in caught.value.hint
    assert [e["attempt"] for e in logs if e["event"] == "comfy.launch_failed"] == [1, 2, 3]
    assert log_file.read_text(encoding="utf-8").count("comfystub starting") == 3
    assert comfy.pid is None


def test_diagnose_tells_crashed_from_busy_from_hung(make_comfy: Callable[..., ComfyProcess]) -> None:
    """ok when idle, busy while events flow, hung after silence_seconds, crashed once the process is gone."""
    comfy = make_comfy()
    comfy.ensure_running(threading.Event())
    assert comfy.diagnose(False, None, 60.0) == "ok"
    assert comfy.diagnose(True, 1.0, 60.0) == "busy"
    assert comfy.diagnose(True, None, 60.0) == "busy"
    assert comfy.diagnose(True, 61.0, 60.0) == "hung"
    pid = comfy.pid
    assert pid is not None
    psutil.Process(pid).kill()
    wait_health(comfy.url, "refused")
    with capture_logs() as logs:
        assert comfy.diagnose(True, 1.0, 60.0) == "crashed"
    exited = [e for e in logs if e["event"] == "comfy.exited"]
    assert exited and exited[0]["code"] not in (None, 0)


def test_diagnose_calls_a_server_that_accepts_but_never_answers_hung(
    make_comfy: Callable[..., ComfyProcess], spawn: Spawn, folder: Path, port: int
) -> None:
    """A hung server times out on /system_stats; diagnose says hung, health says timeout."""
    spawn(str(folder / "main.py"), "--port", str(port), "--stub-mode", "hang")
    wait_listening(port)
    comfy = make_comfy()
    assert health(comfy.url, HEALTH_TIMEOUT) == "timeout"
    assert comfy.diagnose(True, 1.0, 60.0) == "hung"


def test_restart_brings_up_a_new_process(make_comfy: Callable[..., ComfyProcess]) -> None:
    """restart() kills the running server, launches a new one and counts it."""
    comfy = make_comfy()
    comfy.ensure_running(threading.Event())
    first = comfy.pid
    with capture_logs() as logs:
        assert comfy.restart("job silent for 900 s", threading.Event()) == comfy.url
    assert comfy.pid not in (None, first)
    assert first is not None and not psutil.pid_exists(first)
    assert health(comfy.url, HEALTH_TIMEOUT) == "ok"
    assert comfy.restarts == 1
    assert logs[0]["event"] == "comfy.restarting" and logs[0]["reason"] == "job silent for 900 s"


def test_stop_event_interrupts_a_slow_start(make_comfy: Callable[..., ComfyProcess]) -> None:
    """A set stop event ends the wait for a slow server and leaves no process behind."""
    comfy = make_comfy("--stub-startup-seconds", "30")
    stop = threading.Event()
    timer = threading.Timer(0.5, stop.set)
    timer.start()
    with pytest.raises(Unavailable, match="Tandava is stopping"):
        comfy.ensure_running(stop)
    timer.join()
    assert comfy.pid is None
    # No ComfyUI of this test's is left (other tests' helpers may be children of this process too).
    main_py = str(comfy.cfg.folder / "main.py")
    ours = [p for p in psutil.Process().children(recursive=True) if main_py in " ".join(_cmdline(p))]
    _, alive = psutil.wait_procs(ours, timeout=10)
    assert alive == []


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:
        return []


def test_remote_comfy_never_launches() -> None:
    """A dead remote URL raises Unavailable saying so, and no process is started."""
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    remote = RemoteComfy(f"http://127.0.0.1:{free_port()}", health_timeout=HEALTH_TIMEOUT)
    with pytest.raises(Unavailable, match="connection refused"):
        remote.ensure_running(threading.Event())
    assert remote.diagnose(True, 1.0, 60.0) == "crashed"
    assert {p.pid for p in psutil.Process().children(recursive=True)} == before


def test_health_says_error_for_a_server_that_is_not_comfyui() -> None:
    """200 with a body that is not ComfyUI's JSON, and a 500, are both "error"."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path.startswith("/ok") else 500)
            self.end_headers()
            self.wfile.write(b"<html>hello</html>")

        def log_message(self, *args: object) -> None:
            pass

    with HTTPServer(("127.0.0.1", 0), Handler) as server:
        thread = threading.Thread(target=server.serve_forever)
        thread.start()
        try:
            base = f"http://127.0.0.1:{server.server_address[1]}"
            assert health(f"{base}/ok", HEALTH_TIMEOUT) == "error"
            assert health(base, HEALTH_TIMEOUT) == "error"
        finally:
            server.shutdown()
            thread.join()


def test_ownership_is_proven_by_the_script_path(folder: Path, tmp_path: Path) -> None:
    """Only a command line running <folder>/main.py counts as ours; an unknown pid never does."""
    ours = Owner(pid=1, name="python", cmdline=["python", "-s", str(folder / "main.py"), "--port", "1"])
    other = Owner(pid=1, name="python", cmdline=["python", str(tmp_path / "elsewhere" / "main.py")])
    hidden = Owner(pid=None, name="unknown", cmdline=[])
    assert is_our_comfyui(ours, folder)
    assert not is_our_comfyui(other, folder)
    assert not is_our_comfyui(hidden, folder)
    assert str(ours).startswith("pid 1 python -s ")


def test_kill_tree_and_wait_port_free_tolerate_what_is_already_gone(port: int) -> None:
    """Killing a pid that does not exist is a no-op; a free port is free at once."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    kill_tree(proc.pid, timeout=1)
    assert wait_port_free(port, "127.0.0.1", timeout=1)
