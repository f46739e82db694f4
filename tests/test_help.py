"""The command line's help: every command's one-line help is a whole sentence."""

from __future__ import annotations

import argparse
import re

import pytest

from daemon.cli import COMMANDS, build_parser, main, summary


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:  # type: ignore[type-arg]
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def test_every_command_help_is_its_whole_first_paragraph() -> None:
    """Each command's help line is the first paragraph of its docstring, whole, ending a sentence."""
    helps = {action.dest: action.help for action in _subparsers(build_parser())._choices_actions}
    assert set(helps) == set(COMMANDS)
    for name, fn in COMMANDS.items():
        first = " ".join((fn.__doc__ or "").strip().split("\n\n")[0].split())
        assert helps[name] == first, name
        assert re.search(r"[.)]$", first), f"{name}: {first!r} does not end a sentence"
        assert first[0].isupper(), f"{name}: {first!r} does not start a sentence"


def test_top_level_help_shows_every_help_line_whole(capsys: pytest.CaptureFixture[str]) -> None:
    """`tandava --help` prints each command's help in full (wrapped, never cut)."""
    with pytest.raises(SystemExit):
        main(["--help"])
    shown = " ".join(capsys.readouterr().out.split())
    for fn in COMMANDS.values():
        assert summary(fn.__doc__ or "") in shown


def test_summary_joins_a_first_paragraph_spread_over_lines() -> None:
    """A first paragraph written over two lines becomes one help line."""
    assert summary("Check this and\n    that, too.\n\n    More.") == "Check this and that, too."
