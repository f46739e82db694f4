"""What the Telegram bot shows: message texts, keyboards and their digests, from a ``RunView``.

How this works: every function here is pure: a ``RunView`` (from
``daemon.approval.decisions``) and the run's ``TelegramRecord`` in, text and an inline
keyboard out. The bot compares ``digest(text, keyboard)`` with the digest it
recorded when it last sent or edited a message, and edits only when they
differ: that is how a decision made in the CLI or the web panel reaches the
chat, at the cost of one comparison per message.

Numbers are the CLI's: segment 3, candidate ``3:1`` here is what
``tandava pending`` lists and ``tandava approve RUN 3:1`` takes, so a person
moving between channels never translates.
"""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta

from telegram import InlineKeyboardButton, InlineKeyboardMarkup

from daemon.approval.decisions import CandidateView, RunView, SegmentView
from daemon.approval.notice import plain
from daemon.approval.store import DECIDING_STATES
from daemon.channels.telegram.state import Post, TelegramRecord
from daemon.runs.states import State

# Telegram: message text up to 4096 characters, captions 1024, callback answers 200.
_PROMPT_CHARS = 1500
_ANSWER_CHARS = 200
# Telegram shows at most 8 buttons in a row.
_ROW = 8
_MARK = {"approved": "✅", "rejected": "❌", "open": "⬜"}


def clock(seconds: float) -> str:
    """``mm:ss.ss``, as ``tandava pending`` prints segment times."""
    return f"{int(seconds // 60):02d}:{seconds % 60:05.2f}"


def digest(text: str, keyboard: InlineKeyboardMarkup | None) -> str:
    rows = [[(b.text, b.callback_data) for b in row] for row in keyboard.inline_keyboard] if keyboard else []
    return hashlib.sha256(json.dumps([text, rows], ensure_ascii=False).encode("utf-8")).hexdigest()[:16]


def album_caption(view: RunView, seg: SegmentView, cand: CandidateView) -> str:
    return f"{seg.index}:{cand.index} · segment {seg.index} · {clock(seg.start)}–{clock(seg.end)}"


def control_text(view: RunView, seg: SegmentView, post: Post) -> str:
    shown = [c for c in seg.candidates if c.index in post.candidates]
    if seg.approved is not None:
        status = f"✅ approved: {seg.index}:{seg.approved}"
    elif seg.all_rejected:
        status = "❌ every candidate rejected: new ones follow (🔁 asks for another round)"
    else:
        status = "⏳ waiting for your choice"
    prompt = seg.prompt if len(seg.prompt) <= _PROMPT_CHARS else seg.prompt[:_PROMPT_CHARS] + "…"
    lines = [
        f"🎵 {view.song} · segment {seg.index} of {view.planned or len(view.segments)}",
        f"⏱ {clock(seg.start)}–{clock(seg.end)} · {seg.mood}",
        f"🖼 {prompt}",
        "",
        "  ".join(f"{_MARK[c.status]} {seg.index}:{c.index}" for c in shown),
        status,
    ]
    return "\n".join(lines)


def control_keyboard(seg: SegmentView, post: Post) -> InlineKeyboardMarkup:
    status = {c.index: c.status for c in seg.candidates}
    approve = [_button(f"[✅{c}]" if status.get(c) == "approved" else f"✅{c}", post.keys[f"approve:{c}"])
               for c in post.candidates]
    reject = [_button(f"[❌{c}]" if status.get(c) == "rejected" else f"❌{c}", post.keys[f"reject:{c}"])
              for c in post.candidates]
    rows = [approve[i:i + _ROW] for i in range(0, len(approve), _ROW)]
    rows += [reject[i:i + _ROW] for i in range(0, len(reject), _ROW)]
    rows.append([_button("✅ approve all (segment)", post.keys["approve_all"]),
                 _button("🔁 regenerate", post.keys["regenerate"])])
    return InlineKeyboardMarkup(rows)


def song_text(view: RunView, record: TelegramRecord) -> str:
    head = f"🎵 {view.song}\n{view.run_id}\n"
    if view.state in DECIDING_STATES and view.segments:
        done = sum(1 for s in view.segments if s.approved is not None)
        per = max((len(s.candidates) for s in view.segments), default=0)
        cost = "".join(f"\n💰 {line}" for line in view.cost)
        if view.more_coming:
            return (head + f"⏳ first segments ready ({len(view.segments)} of {view.planned}), more coming: "
                    f"tap ✅ or ❌ under each segment as it arrives.\nApproved: {done} of {view.planned}{cost}")
        return (head + f"{len(view.segments)} segment(s), up to {per} candidate(s) each: tap ✅ or ❌ "
                f"under each segment.\nApproved: {done} of {len(view.segments)}{cost}")
    segments = len({p.segment for p in record.posts})
    if view.state is State.APPROVED:
        return head + f"✅ all {segments} segment(s) approved: making the video"
    if view.state is State.RENDERED:
        return head + "🎬 rendered: the video is below"
    if view.state is State.FAILED:
        return head + f"⚠️ failed: {view.error}\n{plain(view.hint)}".rstrip()
    return head + f"⏳ back in {view.state.value}/"


def song_keyboard(view: RunView, record: TelegramRecord) -> InlineKeyboardMarkup | None:
    if view.state not in DECIDING_STATES or not view.open_segments:
        return None
    return InlineKeyboardMarkup([[_button("✅ approve all (song)", record.song_keys()["approve_all"])]])


def reminder_text(view: RunView, waited: timedelta) -> str:
    hours = waited.total_seconds() / 3600
    return (f"⏰ {view.song} has waited {hours:.0f} h for a decision: "
            f"{len(view.open_segments)} of {len(view.segments)} segment(s) still open.")


def video_caption(view: RunView, *, preview: bool, full_size: int) -> str:
    if not preview:
        return f"🎬 {view.song}\n{view.run_id}"
    return (f"🎬 {view.song} (preview)\nThe full video is {full_size / 1e6:.0f} MB, above Telegram's upload "
            f"limit; it is at {view.video}")


def not_waiting(view: RunView) -> str:
    """The answer to a tap on a button of a run that moved on."""
    if view.state is State.RENDERED:
        return answer_text("🎬 This run is already rendered; its video was sent here.")
    if view.state is State.APPROVED:
        return answer_text("✅ This run is no longer waiting: every segment is approved and the video is "
                           "being made.")
    if view.state is State.FAILED:
        return answer_text(f"⚠️ This run failed and is no longer waiting: {view.error} "
                           f"(tandava retry {view.run_id})")
    return answer_text(f"This run is no longer waiting for approval (it is in {view.state.value}/).")


def answer_text(text: str) -> str:
    return text if len(text) <= _ANSWER_CHARS else text[:_ANSWER_CHARS - 1] + "…"


def _button(label: str, token: str) -> InlineKeyboardButton:
    return InlineKeyboardButton(label, callback_data=token)
