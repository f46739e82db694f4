"""`tandava doctor`: each check failing in turn gives its own line, a fix, and a non-zero exit."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.cli import main

BASE = "[watch]\nstable_seconds = 0.3\n[web]\nport = 0\n"

# (what is broken, the tandava.toml lines that break it, the line doctor prints, a word of the fix)
CASES = [
    ("an unwritable state root", '[paths]\nstate_root = "{blocker}/state"\n', "FAIL state root", "write access"),
    ("a missing ffmpeg", '[assembly]\nffmpeg = "{tmp}/no-such-ffmpeg"\n', "FAIL ffmpeg", "ffmpeg"),
    ("an unknown theme", '[analysis]\ntheme = "no-such-theme"\n', "FAIL theme", "shiva"),
    ("an unreachable ComfyUI", '[images]\nbackend = "comfyui"\n[comfy]\nservers = ["http://127.0.0.1:9"]\n'
     'health_timeout_seconds = 1.0\n', "FAIL ComfyUI http://127.0.0.1:9", "Start ComfyUI"),
    ("Telegram without a token", "[telegram]\nenabled = true\nchat_id = 1\nallowed_users = [1]\n",
     "FAIL telegram", "TANDAVA_TELEGRAM__TOKEN"),
    ("Gemini without a key", '[analysis]\nwriter = "gemini"\n', "FAIL gemini", "GOOGLE_API_KEY"),
    ("a panel open to the network without a token", '[web]\nhost = "0.0.0.0"\n', "FAIL web panel token",
     "TANDAVA_WEB__TOKEN"),
]


@pytest.mark.parametrize(("what", "toml", "line", "fix"), CASES, ids=[c[0] for c in CASES])
def test_each_failing_check_is_named_with_its_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch, what: str, toml: str,
                                                  line: str, fix: str) -> None:
    """One broken thing at a time: doctor names it on its own line, says how to fix it, and exits 1."""
    for key in ("GOOGLE_API_KEY", "GEMINI_API_KEY", "TANDAVA_TELEGRAM__TOKEN", "TANDAVA_WEB__TOKEN"):
        monkeypatch.delenv(key, raising=False)
    blocker = tmp_path / "file"
    blocker.write_text("x", encoding="utf-8")
    body = toml.format(blocker=blocker.as_posix(), tmp=tmp_path.as_posix())
    base = BASE if "[web]" not in body else BASE.replace("[web]\nport = 0\n", "")
    conf = tmp_path / "tandava.toml"
    conf.write_text(base + body, encoding="utf-8")
    assert main(["--config", str(conf), "doctor"]) == 1
    out = capsys.readouterr().out
    failing = [row for row in out.splitlines() if row.startswith("FAIL")]
    assert len(failing) == 1 and failing[0].startswith(line), out
    assert fix in "\n".join(failing), out


def test_service_check_names_a_definition_for_another_configuration(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """A service definition written for this config passes; one for another config fails with the fix."""
    from daemon.config import load_settings
    from daemon.host.doctor import check_service
    from daemon.host.service import install_windows

    conf = tmp_path / "tandava.toml"
    conf.write_text(BASE, encoding="utf-8")
    settings = load_settings(conf)
    assert check_service(settings).ok and "not installed" in check_service(settings).detail
    install_windows(settings)
    assert check_service(settings).ok
    other = tmp_path / "other"
    other.mkdir()
    (other / "tandava.toml").write_text(BASE, encoding="utf-8")
    install_windows(load_settings(other / "tandava.toml"), dest_dir=tmp_path / "service", force=True)
    result = check_service(settings)
    assert not result.ok and "service install" in result.detail


def test_a_foreign_program_on_the_managed_port_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A program that is not our ComfyUI holding the managed port fails doctor, named as the daemon names it."""
    import socket
    import subprocess
    import sys
    import time

    from daemon.backends.comfy.supervisor import kill_tree, port_owner

    comfy = tmp_path / "ComfyUI"
    comfy.mkdir()
    (comfy / "main.py").write_text("# never run here\n", encoding="utf-8")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    conf = tmp_path / "tandava.toml"
    conf.write_text(BASE + '[images]\nbackend = "comfyui"\n[comfy]\nhealth_timeout_seconds = 1.0\n'
                    f'[comfy.managed]\nfolder = "{comfy.as_posix()}"\nport = {port}\n', encoding="utf-8")
    assert main(["--config", str(conf), "doctor"]) == 0  # nobody there: the daemon will launch it
    assert "not running now" in capsys.readouterr().out
    code = f"import socket,time; s=socket.socket(); s.bind(('127.0.0.1', {port})); s.listen(); time.sleep(60)"
    foreign = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while port_owner(port) is None:
            assert time.monotonic() < deadline, "the foreign listener never listened"
            time.sleep(0.05)
        assert main(["--config", str(conf), "doctor"]) == 1
        out = capsys.readouterr().out
        failing = [row for row in out.splitlines() if row.startswith("FAIL")]
        assert len(failing) == 1, out
        assert failing[0].startswith(f"FAIL ComfyUI http://127.0.0.1:{port}: port {port} on 127.0.0.1 is held by ")
        assert f"(pid {foreign.pid} " in failing[0] and f"not by the ComfyUI in {comfy}" in failing[0]
        assert "[comfy.managed] port" in failing[0]
        assert foreign.poll() is None  # named, never stopped
    finally:
        kill_tree(foreign.pid, timeout=5)
        foreign.wait(timeout=5)


@pytest.mark.parametrize(("env", "value", "line"), [
    ("TANDAVA_ANALYSIS__THEME", "nope", "FAIL theme"),
    ("TANDAVA_COMFY__IMAGE_WORKFLOW", "no_such_flow", "FAIL workflows"),
], ids=["theme", "workflow"])
def test_a_bad_value_from_the_environment_stops_the_start(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch, env: str, value: str,
                                                          line: str) -> None:
    """`run --once` with a bad theme or workflow from the environment refuses to start, with doctor's line."""
    conf = tmp_path / "tandava.toml"
    conf.write_text(BASE + '[images]\nbackend = "comfyui"\n[comfy]\nservers = ["http://127.0.0.1:9"]\n'
                    "health_timeout_seconds = 0.5\n", encoding="utf-8")
    monkeypatch.setenv(env, value)
    main(["--config", str(conf), "doctor"])
    doctor_line = next(row for row in capsys.readouterr().out.splitlines() if row.startswith(line))
    song = tmp_path / "inbox" / "song.mp3"
    song.parent.mkdir(exist_ok=True)  # doctor made it
    song.write_bytes(b"ID3" + bytes(4096))
    assert main(["--config", str(conf), "run", "--once"]) == 1
    err = capsys.readouterr().err
    assert "not started" in err and doctor_line in err, err
    assert f"the environment sets {env};" in err
    assert song.is_file()  # the song was not taken
    assert not (tmp_path / "state").exists() or not any((tmp_path / "state").rglob("run.json"))
