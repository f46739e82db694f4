"""What the chat should show for each run, and the calls that make it so (the bot's passes).

How this works: ``ChatSync`` keeps, on the bot's event loop, each run's
``TelegramRecord`` (loaded from ``telegram.json`` once, saved after every
call that changed what the chat holds) and an index from button token to
run. A pass looks at runs waiting for approval and at runs that moved on:

- a waiting run gets its song message, then per segment an album and a
  control message, in segment order; a run whose images are still being made
  gets them segment by segment as each is offered, and its song message says
  how many are ready ("first segments ready (3 of 41), more coming"), edited
  as more arrive; a new round of candidates gets its own
  album and control message once the round is complete;
- every message whose digest differs from what the run's decisions would
  show now is edited (a decision made in the CLI or the web panel shows up
  this way); a message deleted in the chat is marked gone and left alone;
- a run waiting longer than ``reminder_hours`` since its last decision (or
  reminder) gets one reminder per period;
- a rendered run gets its video (or a preview) once; then it is settled.

Every call to Telegram first takes a slot from the chat's ``Pacer``; once a
stop is asked, ``Stopping`` ends the pass there, so a call in flight finishes
and is recorded and no new one starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import structlog
from telegram import Bot, InlineKeyboardMarkup, InputFile, InputMediaPhoto, ReplyParameters
from telegram.error import BadRequest

from daemon.approval import decisions
from daemon.approval.decisions import CandidateView, RunView
from daemon.approval.store import DECIDING_STATES, ApprovalStore
from daemon.channels.telegram import state as tgstate
from daemon.channels.telegram import views
from daemon.channels.telegram.media import PREVIEW_NAME, make_preview, photo_payload, thumbnail_jpeg
from daemon.channels.telegram.state import Button, Post, TelegramRecord
from daemon.config import Settings
from daemon.errors import PermanentError, TandavaError
from daemon.logs import MASK, scrub
from daemon.runs.states import State
from daemon.runs.store import RunRef, RunStore
from daemon.video import media

# Bytes of a sendVideo request that are not the video: caption, fields, multipart boundaries.
UPLOAD_OVERHEAD = 16 * 1024

log = structlog.get_logger("tandava.telegram")

# Our pacing runs 2 % slower than the limit: request arrival jitters by milliseconds.
PACING_MARGIN = 1.02
# A round smaller than images.candidates (made before the setting changed) is sent after this.
ROUND_SETTLE_SECONDS = 60.0
# An album holds 2 to 10 photos.
ALBUM_MAX = 10
# The same warning at most this often (an outage of an hour is one line, not thousands).
WARN_EVERY_SECONDS = 300.0


class Stopping(Exception):
    """A stop was asked: no new call to Telegram starts."""


class Pacer:
    """Spaces calls in one chat at ``rate`` a second, first come first served (asyncio.Lock is fair)."""

    def __init__(self, rate: float) -> None:
        self.interval = PACING_MARGIN / rate
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def slot(self) -> None:
        async with self._lock:
            now = time.monotonic()
            if self._next > now:
                await asyncio.sleep(self._next - now)
            self._next = max(now, self._next) + self.interval


def safe_text(exc: BaseException | None, token: str) -> str:
    """An exception as text for a log, with the bot token taken out (PTB puts it in some messages)."""
    text = f"{type(exc).__name__}: {exc}" if exc is not None else "unknown error"
    if token:
        text = text.replace(token, MASK)
    return scrub(text)


class ChatSync:
    """Runs and their messages, made to agree; used only from the bot's event loop."""

    def __init__(self, settings: Settings, store: RunStore, *, token: str, clock: Callable[[], datetime],
                 video_limit: int, stopping: Callable[[], bool]) -> None:
        self.settings, self.store, self.cfg = settings, store, settings.telegram
        self.token, self.clock, self.video_limit, self.stopping = token, clock, video_limit, stopping
        # Rendered runs the bot never offered get their video only if rendered after this.
        self.started_at = clock()
        self._records: dict[str, TelegramRecord] = {}
        self._index: dict[str, str] = {}  # button token -> run id
        self._settled: set[tuple[str, State]] = set()  # (run, state) needing no more work
        self._locks: dict[str, asyncio.Lock] = {}
        self._pacers: dict[int, Pacer] = {}
        self._warned: dict[str, float] = {}

    async def sync_all(self, bot: Bot) -> None:
        """One pass: waiting runs first (oldest song first), then runs that moved on and are not settled."""
        grouped = decisions.runs_by_state(self.store, [State.ANALYZED, State.IMAGED, State.PENDING_APPROVAL,
                                                       State.APPROVED, State.FAILED, State.RENDERED])
        # Runs a person can decide on, oldest song first: also those whose images are still being
        # made, segment by segment as they are offered.
        deciding = sorted((ref for state in DECIDING_STATES for ref in grouped[state]), key=lambda r: r.run_id)
        for ref in deciding:
            await self._sync_run(bot, ref)
        for state in (State.APPROVED, State.FAILED, State.RENDERED):
            for ref in reversed(grouped[state]):
                if (ref.run_id, state) not in self._settled:
                    await self._sync_run(bot, ref)

    async def _sync_run(self, bot: Bot, ref: RunRef) -> None:
        try:
            record = self.record(ref)
            if ref.state in DECIDING_STATES:
                if self.settings.approval.mode == "manual":
                    await self._offer(bot, ref, record)
                return
            view = decisions.run_view(self.store, ref)
            if record is None:
                if ref.state is State.RENDERED and self._rendered_since_start(ref):
                    await self._deliver(bot, ref, self._new_record(ref), view)
            else:
                await self.refresh(bot, ref, record, view)
                if ref.state is State.RENDERED and not record.finished:
                    await self._deliver(bot, ref, record, view)
            self._settled.add((ref.run_id, ref.state))
        except (TandavaError, OSError, ValueError) as exc:
            # A run moved, or a file was unreadable, while we looked: the next pass looks again.
            self.warn(f"run:{ref.run_id}", "telegram.run_skipped", run_id=ref.run_id, error=self.safe(exc))

    async def _offer(self, bot: Bot, ref: RunRef, record: TelegramRecord | None) -> None:
        view = decisions.run_view(self.store, ref)
        if not view.segments:
            return  # nothing offered yet: its first segment's candidates are still being made
        if record is None:
            record = self._new_record(ref)
        await self.refresh(bot, ref, record, view)
        if record.song.message_id is None:
            text, keyboard = views.song_text(view, record), views.song_keyboard(view, record)
            await self._pace(record.chat_id)
            msg = await bot.send_message(record.chat_id, text, reply_markup=keyboard)
            record.song.message_id, record.song.shown = msg.message_id, views.digest(text, keyboard)
            record.offered_at = record.offered_at or self.clock()
            self.save(ref, record)
        fresh = False
        for seg in view.segments:
            new = [c for c in seg.candidates if c.index not in record.covered(seg.index)]
            if new and self._round_complete(new):
                record.new_post(seg.index, [c.index for c in new])
                fresh = True
        if fresh:
            self.save(ref, record)  # tokens exist on disk before any button carrying them does
        for post in record.posts:
            if post.message_id is None and not post.gone:
                if not ref.path.is_dir():
                    return  # the run moved on (approved elsewhere) while we were sending
                await self._send_post(bot, ref, record, view, post)
        await self._remind(bot, ref, record, view)

    async def _send_post(self, bot: Bot, ref: RunRef, record: TelegramRecord, view: RunView, post: Post) -> None:
        seg = view.segment(post.segment)
        if seg is None:
            return
        cands = [c for c in seg.candidates if c.index in post.candidates]
        remaining = cands[len(post.album):]  # photos already sent are not sent again
        if remaining:
            photos = await asyncio.to_thread(lambda: [photo_payload(c.image) for c in remaining])
            for start in range(0, len(remaining), ALBUM_MAX):
                chunk = list(zip(remaining, photos, strict=True))[start:start + ALBUM_MAX]
                await self._pace(record.chat_id)
                if len(chunk) == 1:
                    cand, photo = chunk[0]
                    msg = await bot.send_photo(record.chat_id, InputFile(photo.data, filename=photo.filename),
                                               caption=views.album_caption(view, seg, cand))
                    post.album.append(msg.message_id)
                else:
                    msgs = await bot.send_media_group(record.chat_id, [
                        InputMediaPhoto(p.data, caption=views.album_caption(view, seg, c), filename=p.filename)
                        for c, p in chunk])
                    post.album.extend(m.message_id for m in msgs)
                self.save(ref, record)
        text, keyboard = views.control_text(view, seg, post), views.control_keyboard(seg, post)
        await self._pace(record.chat_id)
        msg = await bot.send_message(record.chat_id, text, reply_markup=keyboard)
        post.message_id, post.shown = msg.message_id, views.digest(text, keyboard)
        self.save(ref, record)

    async def refresh(self, bot: Bot, ref: RunRef, record: TelegramRecord, view: RunView) -> None:
        """Edit every message whose content no longer matches the run's decisions."""
        async with self._locks.setdefault(ref.run_id, asyncio.Lock()):
            song = record.song
            if song.message_id is not None and not song.gone:
                text, keyboard = views.song_text(view, record), views.song_keyboard(view, record)
                if views.digest(text, keyboard) != song.shown:
                    song.gone = not await self._edit(bot, record.chat_id, song.message_id, text, keyboard)
                    song.shown = views.digest(text, keyboard)
                    self.save(ref, record)
            if view.state not in DECIDING_STATES:
                return  # old control messages keep their buttons: a tap is answered "moved on"
            for post in record.posts:
                seg = view.segment(post.segment)
                if post.message_id is None or post.gone or seg is None:
                    continue
                text, keyboard = views.control_text(view, seg, post), views.control_keyboard(seg, post)
                if views.digest(text, keyboard) != post.shown:
                    post.gone = not await self._edit(bot, record.chat_id, post.message_id, text, keyboard)
                    post.shown = views.digest(text, keyboard)
                    self.save(ref, record)

    async def _edit(self, bot: Bot, chat_id: int, message_id: int, text: str,
                    keyboard: InlineKeyboardMarkup | None) -> bool:
        """Edit a text message; False when it no longer exists in the chat."""
        await self._pace(chat_id)
        try:
            await bot.edit_message_text(text, chat_id=chat_id, message_id=message_id, reply_markup=keyboard)
        except BadRequest as exc:
            reason = str(exc).lower()
            if "not modified" in reason:  # it already shows this (an edit raced another)
                return True
            if "message to edit not found" in reason or "can't be edited" in reason:
                log.info("telegram.message_gone", message_id=message_id)
                return False
            raise
        return True

    async def _remind(self, bot: Bot, ref: RunRef, record: TelegramRecord, view: RunView) -> None:
        hours = self.cfg.reminder_hours
        if hours <= 0 or record.offered_at is None or not view.open_segments:
            return
        active = max([record.offered_at, *(d.at for d in ApprovalStore(self.store).load(ref).decisions)])
        now = self.clock()
        if now - max(active, record.reminded_at or active) < timedelta(hours=hours):
            return
        await self._pace(record.chat_id)
        reply = (ReplyParameters(record.song.message_id, allow_sending_without_reply=True)
                 if record.song.message_id is not None else None)
        await bot.send_message(record.chat_id, views.reminder_text(view, now - active), reply_parameters=reply)
        record.reminded_at = now
        self.save(ref, record)
        log.info("telegram.reminded", run_id=ref.run_id, open_segments=len(view.open_segments))

    async def _deliver(self, bot: Bot, ref: RunRef, record: TelegramRecord, view: RunView) -> None:
        """Send a rendered run's video once (a preview when it is above the upload limit)."""
        if record.video is None and view.video is not None:
            thumb = await asyncio.to_thread(thumbnail_jpeg, view.thumbnail) if view.thumbnail else None
            # The limit is on the whole request: leave room for the caption and the multipart framing.
            room = self.video_limit - len(thumb or b"") - UPLOAD_OVERHEAD
            path, size = view.video, view.video.stat().st_size
            preview = size > room
            try:
                if preview:
                    path = await self._preview(ref, view.video, room)
            except PermanentError as exc:
                log.warning("telegram.preview_failed", run_id=ref.run_id, error=self.safe(exc))
                await self._pace(record.chat_id)
                msg = await bot.send_message(record.chat_id, f"🎬 {view.song} is rendered: {view.video} "
                                             f"({size / 1e6:.0f} MB, too large for Telegram)")
                sent = 0
            else:
                info = await asyncio.to_thread(media.probe, path, count_frames=False)
                data = await asyncio.to_thread(path.read_bytes)
                await self._pace(record.chat_id)
                msg = await bot.send_video(
                    record.chat_id, InputFile(data, filename=f"{ref.run_id}.mp4"),
                    thumbnail=InputFile(thumb, filename="thumbnail.jpg") if thumb else None,
                    caption=views.video_caption(view, preview=preview, full_size=size),
                    duration=round(info.duration), width=info.width, height=info.height,
                    supports_streaming=True)
                sent = len(data)
            record.video = tgstate.VideoSent(message_id=msg.message_id, preview=preview, size=sent,
                                             at=self.clock())
            log.info("telegram.video_sent", run_id=ref.run_id, preview=preview, size=sent)
        elif record.video is None:
            log.warning("telegram.no_video", run_id=ref.run_id, reason="rendered/ holds no final.mp4")
        record.finished = True
        self.save(ref, record)

    async def _preview(self, ref: RunRef, video: Path, limit: int) -> Path:
        out = ref.path / PREVIEW_NAME
        if out.is_file() and out.stat().st_size <= limit:
            return out  # made before a restart
        ffmpeg = media.find_ffmpeg(self.settings.assembly.ffmpeg)
        info = await asyncio.to_thread(media.probe, video, count_frames=False)
        return await make_preview(ffmpeg, video, out, duration=info.duration, limit=limit)

    # -- tokens and records -------------------------------------------------------------------

    def lookup(self, token: str) -> tuple[RunRef, TelegramRecord, Button] | None:
        """The run, record and meaning of a button's token; None for a token no run knows."""
        if token not in self._index:
            self._scan()  # a run this process has not looked at yet (rendered, failed)
        run_id = self._index.get(token)
        if run_id is None:
            return None
        try:
            ref = self.store.find(run_id)
        except TandavaError:
            return None
        record = self._records.get(run_id)
        return (ref, record, record.tokens[token]) if record is not None else None

    def _scan(self) -> None:
        for ref in self.store.iter_runs():
            if ref.run_id not in self._records:
                with contextlib.suppress(TandavaError):
                    self.record(ref)

    def record(self, ref: RunRef) -> TelegramRecord | None:
        """The run's record (read from disk once), or None when nothing was sent for it."""
        record = self._records.get(ref.run_id)
        if record is None:
            record = tgstate.load(ref)
            if record is not None:
                self._records[ref.run_id] = record
                self._index.update(dict.fromkeys(record.tokens, ref.run_id))
        return record

    def _new_record(self, ref: RunRef) -> TelegramRecord:
        assert self.cfg.chat_id is not None
        record = TelegramRecord(chat_id=self.cfg.chat_id)
        record.song_keys()
        self._records[ref.run_id] = record
        return record

    def save(self, ref: RunRef, record: TelegramRecord) -> None:
        """Write the record atomically into the run's folder, wherever the run is now."""
        self._index.update(dict.fromkeys(record.tokens, ref.run_id))
        for attempt in range(2):
            try:
                tgstate.save(self.store.refresh(ref), record)
                return
            except FileNotFoundError:  # the folder moved to another state between the look and the write
                if attempt:
                    raise

    # -- helpers ------------------------------------------------------------------------------

    def _round_complete(self, new: list[CandidateView]) -> bool:
        """Whether a round's candidates are all there: they appear one by one as images finish."""
        if len(new) >= self.settings.images.candidates:
            return True
        newest = max(c.image.stat().st_mtime for c in new)
        return time.time() - newest >= ROUND_SETTLE_SECONDS  # a round made with another setting

    def _rendered_since_start(self, ref: RunRef) -> bool:
        entered = [h.at for h in self.store.load(ref).history if h.state is State.RENDERED]
        return bool(entered) and entered[-1] >= self.started_at

    async def _pace(self, chat_id: int) -> None:
        """Wait for this chat's next slot; once a stop is asked, no new call starts."""
        pacer = self._pacers.get(chat_id)
        if pacer is None:
            pacer = self._pacers[chat_id] = Pacer(self.cfg.messages_per_second)
        if self.stopping():
            raise Stopping
        await pacer.slot()
        if self.stopping():
            raise Stopping

    def warn(self, key: str, event: str, **fields: Any) -> None:
        """Log a warning, the same ``key`` at most once per WARN_EVERY_SECONDS."""
        now = time.monotonic()
        if now - self._warned.get(key, -WARN_EVERY_SECONDS) >= WARN_EVERY_SECONDS:
            self._warned[key] = now
            log.warning(event, **fields)

    def safe(self, exc: BaseException | None) -> str:
        return safe_text(exc, self.token)
