"""``telegram.json``: what the Telegram bot sent for one run, and what its buttons mean.

How this works: Telegram limits a button's ``callback_data`` to 64 bytes, so
each button carries a short random token and this file maps the token to
what it stands for (segment, candidate, action). The file lives in the run
folder, moves with it between state directories, and is rewritten atomically
after every message the bot sends or edits, so after a restart the bot knows
which albums and control messages exist (it carries on with them instead of
sending everything again), what each one shows (a digest, so a decision made
in another channel is noticed with one comparison), whether the rendered
video went out, and when the last reminder was sent.

Decisions themselves are never stored here: they go to ``approvals.json``
through ``daemon.approval.decisions``, the one decision store every channel shares.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

from daemon.errors import StoreError
from daemon.runs import fsutil
from daemon.runs.store import RunRef

TELEGRAM_FILE = "telegram.json"
Action = Literal["approve", "reject", "regenerate", "approve_all"]
# 12 URL-safe characters (72 random bits): unguessable, and far below the 64-byte limit.
_TOKEN_BYTES = 9
# Callback query ids remembered per run, so a tap Telegram delivers twice is applied once.
_ANSWERED_KEPT = 50


class Button(BaseModel):
    """What one button's token stands for; ``segment`` None is the whole song."""

    action: Action
    segment: int | None = None
    candidate: int | None = None


class Post(BaseModel):
    """One round of a segment's candidates: an album, then a control message with the buttons."""

    segment: int
    candidates: list[int]
    # button key ("approve:2", "reject:2", "approve_all", "regenerate") -> token
    keys: dict[str, str] = Field(default_factory=dict)
    album: list[int] = Field(default_factory=list)
    message_id: int | None = None
    shown: str = ""
    # Deleted in the chat (an edit found no message): never edited again.
    gone: bool = False


class SongPost(BaseModel):
    """The per-song message: what the run is, how far approval got, "approve all (song)"."""

    keys: dict[str, str] = Field(default_factory=dict)
    message_id: int | None = None
    shown: str = ""
    gone: bool = False


class VideoSent(BaseModel):
    message_id: int
    preview: bool
    size: int
    at: datetime


class TelegramRecord(BaseModel):
    """Everything the bot sent for one run."""

    schema_version: int = 1
    chat_id: int
    song: SongPost = Field(default_factory=SongPost)
    posts: list[Post] = Field(default_factory=list)
    tokens: dict[str, Button] = Field(default_factory=dict)
    offered_at: datetime | None = None
    reminded_at: datetime | None = None
    video: VideoSent | None = None
    answered: list[str] = Field(default_factory=list)
    # Rendered and its video sent (or nothing to send): the bot looks at it no more.
    finished: bool = False

    def new_token(self, button: Button) -> str:
        """A fresh token for ``button``, unique in this run."""
        while True:
            token = secrets.token_urlsafe(_TOKEN_BYTES)
            if token not in self.tokens:
                self.tokens[token] = button
                return token

    def new_post(self, segment: int, candidates: list[int]) -> Post:
        """A post for new candidates of ``segment``, its tokens made (and saved) before it is sent."""
        post = Post(segment=segment, candidates=candidates)
        for cand in candidates:
            for action in ("approve", "reject"):
                post.keys[f"{action}:{cand}"] = self.new_token(
                    Button(action=action, segment=segment, candidate=cand))
        post.keys["approve_all"] = self.new_token(Button(action="approve_all", segment=segment))
        post.keys["regenerate"] = self.new_token(Button(action="regenerate", segment=segment))
        self.posts.append(post)
        return post

    def song_keys(self) -> dict[str, str]:
        if not self.song.keys:
            self.song.keys["approve_all"] = self.new_token(Button(action="approve_all"))
        return self.song.keys

    def covered(self, segment: int) -> set[int]:
        """Candidates of ``segment`` that already have a post."""
        return {c for p in self.posts if p.segment == segment for c in p.candidates}

    def remember_answer(self, query_id: str) -> None:
        self.answered = [*self.answered, query_id][-_ANSWERED_KEPT:]


def load(ref: RunRef) -> TelegramRecord | None:
    """The run's record, or None when the bot never sent anything for it."""
    path = ref.path / TELEGRAM_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc}") from exc
    try:
        return TelegramRecord.model_validate_json(data)
    except (ValidationError, ValueError) as exc:
        raise StoreError(f"cannot read {path}: {exc}") from exc


def save(ref: RunRef, record: TelegramRecord) -> None:
    fsutil.atomic_write_text(ref.path / TELEGRAM_FILE, record.model_dump_json(indent=2) + "\n")
