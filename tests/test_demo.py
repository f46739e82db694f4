"""What `tandava demo` tells a newcomer to type next: commands that work in a fresh shell."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.demo import activate_hint, next_steps, tandava_command

SCRIPT = "tandava.exe" if os.name == "nt" else "tandava"
BIN = "Scripts" if os.name == "nt" else "bin"


def make_venv(root: Path, *, script: bool = True) -> Path:
    """A venv's shape on disk: pyvenv.cfg, its python and (when installed) the tandava script."""
    bindir = root / ".venv" / BIN
    bindir.mkdir(parents=True)
    (root / ".venv" / "pyvenv.cfg").write_text("home = /usr/bin\n", encoding="utf-8")
    python = bindir / ("python.exe" if os.name == "nt" else "python")
    python.write_text("", encoding="utf-8")
    if script:
        (bindir / SCRIPT).write_text("", encoding="utf-8")
    return python


def test_a_venv_script_not_on_path_is_named_by_its_path(tmp_path: Path) -> None:
    """Outside an activated venv, the demo names the venv's script relative to the working folder."""
    python = make_venv(tmp_path)
    command = tandava_command(python, which=lambda _: None, cwd=tmp_path)
    assert command == str(Path(".venv") / BIN / SCRIPT)


def test_a_script_on_path_is_just_tandava(tmp_path: Path) -> None:
    """When PATH already finds this very script (an active venv, pipx), plain `tandava` works."""
    python = make_venv(tmp_path)
    found = str(python.parent / SCRIPT)
    assert tandava_command(python, which=lambda _: found, cwd=tmp_path) == "tandava"


def test_another_tandava_on_path_is_not_trusted(tmp_path: Path) -> None:
    """A different `tandava` earlier on PATH would run another installation: the path is named."""
    python = make_venv(tmp_path / "here")
    other = tmp_path / "elsewhere" / SCRIPT
    command = tandava_command(python, which=lambda _: str(other), cwd=tmp_path / "here")
    assert command == str(Path(".venv") / BIN / SCRIPT)


def test_without_a_script_the_module_runs(tmp_path: Path) -> None:
    """Without a console script (an unusual install), the demo suggests `python -m daemon`."""
    python = make_venv(tmp_path, script=False)
    command = tandava_command(python, which=lambda _: None, cwd=tmp_path / "elsewhere")
    assert command.endswith(" -m daemon") and str(python) in command


def test_activate_hint_names_the_venv(tmp_path: Path) -> None:
    """The activation hint points at this venv's activate script, and is empty outside a venv."""
    python = make_venv(tmp_path)
    hint = activate_hint(python, cwd=tmp_path)
    assert str(Path(".venv") / BIN / "activate") in hint
    assert activate_hint(tmp_path / "usr" / "bin" / "python", cwd=tmp_path) == ""


def test_next_steps_lead_to_a_real_installation(tmp_path: Path) -> None:
    """After the demo: status of the demo run, then init, run, the inbox and the panel's URL."""
    lines = "\n".join(next_steps(tmp_path / "tandava.toml", panel="http://127.0.0.1:8420",
                                 command=".venv/bin/tandava", activate="source .venv/bin/activate"))
    assert f".venv/bin/tandava --config {tmp_path / 'tandava.toml'} status" in lines
    assert ".venv/bin/tandava init" in lines and ".venv/bin/tandava run" in lines
    assert "http://127.0.0.1:8420" in lines and "./inbox" in lines
    assert "source .venv/bin/activate" in lines
    plain = "\n".join(next_steps(tmp_path / "t.toml", panel="http://x", command="tandava", activate=""))
    assert "not on PATH" not in plain


@pytest.mark.skipif(os.name == "nt", reason="a POSIX shell runs the printed command")
def test_the_printed_command_runs_in_a_fresh_shell(tmp_path: Path) -> None:
    """The command the demo prints for this installation works in a shell with a bare PATH."""
    # As in a fresh shell: whatever PATH this test runs with (CI's activated venv), the script is not on it.
    command = tandava_command(Path(sys.executable), which=lambda _name: None, cwd=Path.cwd())
    done = subprocess.run(["/bin/sh", "-c", f"{command} --version"], env={"PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0 and "tandava" in done.stdout
