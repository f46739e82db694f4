"""Texts every channel shows, with the actions in them kept apart from the words.

How this works: a notice ("waiting for a person to approve 3 of 5
segments: review the candidates, then approve them all") names things a
person can do. Each channel offers them its own way: the CLI prints the
command, the panel a button or a link, Telegram plain words. So a notice
is made of parts, ``say("waiting …: ", Action("pending", run), ", then ",
Action("approve-all", run))``, and stored (in ``run.json``, in a log line)
as the CLI's form, where each action is its command in backticks:
readable as it is, in a log and in a reader older than this module. The
backticks are the markup: ``parse`` gives the parts back, and an action is
recognised by the grammar of the CLI's own commands, so error hints
written anywhere below (``then run `tandava retry <run>```) take part too.
A command that is not an action a channel can take (``tandava doctor``,
``ollama pull …``) stays ``Code``.

Renderers: ``cli`` (the stored form), ``plain`` (Telegram: an action's
words, other code without its backticks); the panel renders the parts in
``daemon.channels.web``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Verb = Literal["pending", "approve-all", "approve", "regenerate", "retry"]

# A code span: backticks around anything but a backtick.
_SPAN = re.compile(r"`([^`]+)`")
_RUN = r"(?P<run>[^\s`<>]+)"
_GRAMMAR: tuple[tuple[Verb, re.Pattern[str]], ...] = (
    ("pending", re.compile(rf"tandava pending(?: {_RUN})?")),
    ("approve-all", re.compile(rf"tandava approve {_RUN} --all")),
    ("approve", re.compile(rf"tandava approve {_RUN} (?P<segment>\d+):(?P<candidate>\d+)")),
    ("regenerate", re.compile(rf"tandava regenerate {_RUN} (?P<segment>\d+)")),
    ("retry", re.compile(rf"tandava retry {_RUN}")),
)


@dataclass(frozen=True)
class Action:
    """Something a person can do about a run, in any channel."""

    verb: Verb
    run_id: str = ""
    segment: int | None = None
    candidate: int | None = None

    @property
    def command(self) -> str:
        """The CLI command that does it."""
        run = f" {self.run_id}" if self.run_id else ""
        if self.verb == "pending":
            return f"tandava pending{run}"
        if self.verb == "approve-all":
            return f"tandava approve{run} --all"
        if self.verb == "approve":
            return f"tandava approve{run} {self.segment}:{self.candidate}"
        if self.verb == "regenerate":
            return f"tandava regenerate{run} {self.segment}"
        return f"tandava retry{run}"

    @property
    def words(self) -> str:
        """What it does, in plain words that fit a sentence ("…, then approve them all")."""
        return {
            "pending": "review the candidates",
            "approve-all": "approve them all",
            "approve": f"approve {self.segment}:{self.candidate}",
            "regenerate": f"ask for new candidates for segment {self.segment}",
            "retry": "retry the run",
        }[self.verb]


@dataclass(frozen=True)
class Code:
    """A command or name to show as code, not an action a channel takes (``tandava doctor``)."""

    text: str


Part = str | Action | Code


def say(*parts: Part) -> str:
    """A notice from words and actions, in its stored (CLI) form."""
    return "".join(f"`{p.command}`" if isinstance(p, Action) else f"`{p.text}`" if isinstance(p, Code)
                   else p for p in parts)


def parse(text: str) -> list[Part]:
    """The parts of a stored notice: words, actions, and other code spans."""
    parts: list[Part] = []
    at = 0
    for span in _SPAN.finditer(text):
        if span.start() > at:
            parts.append(text[at:span.start()])
        parts.append(parse_command(span.group(1)))
        at = span.end()
    if at < len(text):
        parts.append(text[at:])
    return parts


def parse_command(command: str) -> Action | Code:
    """The action a CLI command takes, or ``Code`` when it is not one a channel offers."""
    text = command.strip()
    for verb, pattern in _GRAMMAR:
        found = pattern.fullmatch(text)
        if found is None:
            continue
        fields = found.groupdict()
        segment, candidate = fields.get("segment"), fields.get("candidate")
        return Action(verb, fields.get("run") or "",
                      int(segment) if segment is not None else None,
                      int(candidate) if candidate is not None else None)
    return Code(command)


def actions(text: str) -> list[Action]:
    """The actions a stored notice offers, in order."""
    return [part for part in parse(text) if isinstance(part, Action)]


def cli(text: str) -> str:
    """The CLI's rendering: the stored form, commands in backticks."""
    return text


def plain(text: str) -> str:
    """Plain words (Telegram): an action becomes what it does; other code loses its backticks.

    Retry has no button outside the CLI and the panel: it stays the command to type.
    """
    return "".join(
        (part.command if part.verb == "retry" else part.words) if isinstance(part, Action)
        else part.text if isinstance(part, Code) else part
        for part in parse(text))
