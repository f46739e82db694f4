"""The Telegram approval bot: candidates to a chat, taps to decisions, the finished video back.

How this works:

- Layout. Per song, one message first: the song, its run id, how many
  segments are approved, and "✅ approve all (song)". Then per segment an
  album of its candidates (captions ``3:0``, ``3:1``…: the CLI's numbers) and
  one control message under it with the time range, mood and prompt and the
  buttons ✅0 ✅1… / ❌0 ❌1… / "✅ approve all (segment)" / "🔁 regenerate".
  Albums cannot carry buttons, and one photo per candidate with its own
  buttons would cost a message per candidate under a flood limit of about
  one message a second per chat: 40 segments of 4 candidates take 81
  messages this way instead of 201. A regeneration round gets its own album
  and control message once its candidates are all there.
- Buttons carry a 12-character random token; ``telegram.json`` in the run
  folder (``daemon.channels.telegram.state``) maps tokens to (segment, candidate,
  action) and records every message sent and the digest of what it shows.
  After a restart the bot carries on from that file and resends nothing.
- A tap is checked against ``telegram.allowed_users`` inside the handler
  (CallbackQueryHandler has no filters), turned into ``decisions.decide`` or
  ``decisions.approve_all`` (the calls the CLI and the web panel make),
  always answered, and the message is edited to show the decision. Every
  ``sync_seconds`` a pass (``daemon.channels.telegram.sync``) compares each run's
  decisions with the digests recorded and edits what changed, so decisions
  from other channels show here too; it also sends new rounds of candidates,
  reminders, and the rendered video (a preview above 50 MB).
- It runs inside the daemon: ``start()`` starts a thread with its own asyncio
  loop, where python-telegram-bot's Application runs through
  ``initialize/start/updater.start_polling`` (long polling: no public
  endpoint). When Telegram cannot be reached the bot logs, waits with
  backoff and tries again; the daemon never notices. ``stop()`` lets a call
  in flight finish, stops the updater and the application, joins the thread.
- Flood limits: ``AIORateLimiter`` retries a 429 after ``retry_after``; our
  own ``Pacer`` spaces every send and edit in a chat at
  ``messages_per_second`` (AIORateLimiter only spaces group chats).
- The token never reaches a log: httpx and telegram loggers are held at
  WARNING, and every error text we log passes through ``safe_text`` (PTB
  puts the token into ``InvalidToken``'s message and into a Bot's repr).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine, Iterator
from datetime import datetime
from typing import Any

import structlog
from telegram import Bot, CallbackQuery, Update
from telegram.error import BadRequest, Forbidden, InvalidToken, NetworkError, TelegramError
from telegram.ext import AIORateLimiter, Application, ApplicationBuilder, CallbackQueryHandler
from telegram.request import HTTPXRequest

from daemon.approval import decisions
from daemon.approval.store import DECIDING_STATES, DecisionRefused
from daemon.channels.telegram import views
from daemon.channels.telegram.media import UPLOAD_LIMIT_BYTES
from daemon.channels.telegram.state import Button
from daemon.channels.telegram.sync import ChatSync, Stopping, safe_text
from daemon.checks import Check
from daemon.config import Settings, TelegramConfig
from daemon.logs import quiet, scrub
from daemon.runs.manifest import utcnow
from daemon.runs.store import RunRef, RunStore

log = structlog.get_logger("tandava.telegram")

CHANNEL = "telegram"
# How often runs are compared with what their messages show: a CLI decision
# appears in the chat within this, for a few small file reads per waiting run.
SYNC_SECONDS = 2.0
# Telegram unreachable: first retry after 1 s, doubling to at most a minute.
BACKOFF_INITIAL_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 60.0
# Long-polling wait per getUpdates call; stop() does not wait for it (the updater cancels it).
POLL_TIMEOUT_SECONDS = 20
# 429s AIORateLimiter absorbs (sleeping retry_after) before a send fails and waits for the next pass.
RATE_LIMIT_RETRIES = 3
# On stop, a call already in flight (an upload) gets this long to finish and be recorded.
STOP_GRACE_SECONDS = 3.0
_QUIET = ("httpx", "httpcore", "telegram")


def file_url(base_url: str) -> str:
    """The file endpoint beside a Bot API endpoint: ``…/bot`` → ``…/file/bot``."""
    return base_url[: -len("/bot")] + "/file/bot" if base_url.endswith("/bot") else base_url


def config_problem(cfg: TelegramConfig) -> str:
    """Why the bot cannot run with this configuration ("" when it can)."""
    if not cfg.enabled:
        return "telegram.enabled is false"
    if not cfg.token.get_secret_value():
        return "no bot token: set TANDAVA_TELEGRAM__TOKEN (in the environment or .env)"
    if cfg.chat_id is None:
        return "telegram.chat_id is not set"
    return ""


class TelegramBot:
    """The bot, run in its own thread beside the daemon's engine."""

    def __init__(self, settings: Settings, store: RunStore, *, clock: Callable[[], datetime] = utcnow,
                 sync_seconds: float = SYNC_SECONDS,
                 backoff: tuple[float, float] = (BACKOFF_INITIAL_SECONDS, BACKOFF_MAX_SECONDS),
                 video_limit: int = UPLOAD_LIMIT_BYTES, poll_timeout: int = POLL_TIMEOUT_SECONDS) -> None:
        self.settings, self.store, self.cfg = settings, store, settings.telegram
        self.clock, self.sync_seconds, self.backoff = clock, sync_seconds, backoff
        self.poll_timeout = poll_timeout
        self._token = self.cfg.token.get_secret_value()
        # Set while the Bot API answers; tests and the bench wait on it.
        self.connected = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._stop_flag = threading.Event()
        self.sync = ChatSync(settings, store, token=self._token, clock=clock, video_limit=video_limit,
                             stopping=self._stop_flag.is_set)

    # -- lifecycle (called from the daemon's thread) ------------------------------------------

    def start(self) -> None:
        """Start the bot's thread and return; network trouble is logged and retried there."""
        if self._thread is not None:
            return
        problem = config_problem(self.cfg)
        if problem:
            log.error("telegram.not_started", reason=problem)
            return
        if not self.cfg.allowed_users:
            log.warning("telegram.nobody_may_decide", hint="set telegram.allowed_users = [<your user id>]")
        quiet(_QUIET)  # httpx logs request URLs, and the token is in the path
        self.sync.started_at = self.clock()
        self._stop_flag.clear()
        self._thread = threading.Thread(target=self._run_thread, name="telegram-bot", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop polling and sending, shut the application down, join the thread."""
        thread = self._thread
        if thread is None:
            return
        self._stop_flag.set()
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(stopping.set)
        thread.join(timeout)
        if thread.is_alive():
            log.warning("telegram.stop_slow", waited_seconds=timeout)
        self._thread = None
        log.info("telegram.stopped")

    def _run_thread(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception as exc:  # the bot must never take the daemon down with it
            log.error("telegram.crashed", error=self.sync.safe(exc))

    # -- connection loop (bot thread) ---------------------------------------------------------

    async def _main(self) -> None:
        self._stopping = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        if self._stop_flag.is_set():  # stop() came before the loop existed
            self._stopping.set()
        delay = self.backoff[0]
        while not self._stopping.is_set():
            app = self._build()
            try:
                await self._connect(app)
                delay = self.backoff[0]
                await self._until_stopped(self._serve(app))
            except InvalidToken:
                log.error("telegram.token_rejected", hint="Telegram refused the bot token: set "
                          "TANDAVA_TELEGRAM__TOKEN to the token @BotFather gave you, then restart")
                delay = self.backoff[1]
            except (TelegramError, OSError) as exc:
                self.sync.warn("connect", "telegram.unreachable", error=self.sync.safe(exc), retry_seconds=delay)
            finally:
                self.connected.clear()
                await self._close(app)
            if await self._wait_stop(delay):
                break
            delay = min(delay * 2, self.backoff[1])

    def _build(self) -> Application:
        cfg = self.cfg
        app = (ApplicationBuilder().token(self._token).base_url(cfg.base_url).base_file_url(file_url(cfg.base_url))
               .rate_limiter(AIORateLimiter(max_retries=RATE_LIMIT_RETRIES))
               .connect_timeout(10).read_timeout(30).write_timeout(30).media_write_timeout(300)
               .pool_timeout(10).job_queue(None).build())
        app.add_handler(CallbackQueryHandler(self._on_tap))
        app.add_error_handler(self._on_error)
        return app

    async def _connect(self, app: Application) -> None:
        await app.initialize()  # getMe: checks the token
        await app.start()
        assert app.updater is not None
        await app.updater.start_polling(timeout=self.poll_timeout, allowed_updates=[Update.CALLBACK_QUERY],
                                        drop_pending_updates=False, error_callback=self._poll_error)
        self.connected.set()
        log.info("telegram.connected", bot=app.bot.username, chat_id=self.cfg.chat_id)

    async def _close(self, app: Application) -> None:
        try:
            if app.updater is not None and app.updater.running:
                await app.updater.stop()
            if app.running:
                await app.stop()
            await app.shutdown()
            await app.bot.shutdown()  # a half-initialised bot still holds its connection pools
        except Exception as exc:
            log.warning("telegram.close_failed", error=self.sync.safe(exc))

    async def _until_stopped(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` until it ends or a stop is asked; a call in flight may finish (and be recorded)."""
        task = asyncio.ensure_future(work)
        waiter = asyncio.ensure_future(self._stopping_event().wait())
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():  # the next call raises Stopping; an upload may take a moment
            await asyncio.wait({task}, timeout=STOP_GRACE_SECONDS)
        for pending in (task, waiter):
            pending.cancel()
        await asyncio.gather(task, waiter, return_exceptions=True)
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]

    async def _wait_stop(self, seconds: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping_event().wait(), seconds)
        return self._stopping_event().is_set()

    def _stopping_event(self) -> asyncio.Event:
        assert self._stopping is not None
        return self._stopping

    async def _serve(self, app: Application) -> None:
        failures = 0
        while not self._stopping_event().is_set():
            if app.updater is None or not app.updater.running:
                raise NetworkError("polling stopped")
            try:
                await self.sync.sync_all(app.bot)
                if failures:
                    log.info("telegram.reachable_again")
                failures, delay = 0, self.sync_seconds
            except Stopping:
                return
            except InvalidToken:
                raise
            except TelegramError as exc:
                failures += 1
                delay = min(self.backoff[0] * 2 ** (failures - 1), self.backoff[1])
                self.sync.warn("sync", "telegram.send_failed", error=self.sync.safe(exc), retry_seconds=delay)
            except Exception as exc:  # a bug in one pass must not end the bot
                failures += 1
                delay = self.backoff[1]
                log.error("telegram.pass_failed", error=self.sync.safe(exc))
            await self._wait_stop(delay)

    # -- taps (bot thread, from PTB's update processing) --------------------------------------

    async def _on_tap(self, update: Update, context: Any) -> None:
        query = update.callback_query
        if query is None:
            return
        try:
            text, alert, ref = await self._decide(query)
        except Exception as exc:  # whatever happened, the person gets an answer
            log.error("telegram.tap_failed", user_id=query.from_user.id, error=self.sync.safe(exc))
            text, alert, ref = f"Not recorded: {self.sync.safe(exc)}", True, None
        await self._answer(query, text, alert=alert)
        if ref is not None:  # show the decision now rather than at the next pass
            ref = self.store.refresh(ref)
            record = self.sync.record(ref)
            if record is not None:
                await self.sync.refresh(context.bot, ref, record, decisions.run_view(self.store, ref))

    async def _decide(self, query: CallbackQuery) -> tuple[str, bool, RunRef | None]:
        """The answer to a tap, and the run whose messages to refresh (None when nothing was decided)."""
        user = query.from_user
        if user.id not in self.cfg.allowed_users:
            log.warning("telegram.tap_refused", user_id=user.id, username=user.username or "",
                        reason="not in telegram.allowed_users")
            return "⛔ You are not allowed to decide here.", True, None
        found = self.sync.lookup(query.data or "")
        if found is None:
            log.warning("telegram.unknown_button", user_id=user.id)
            return ("This button is unknown or expired: use the buttons of the latest messages for this "
                    "song.", True, None)
        ref, record, button = found
        if ref.state not in DECIDING_STATES:
            return views.not_waiting(decisions.run_view(self.store, ref)), True, None
        if query.id in record.answered:  # Telegram delivered this tap again after a restart
            return "Already recorded.", False, None
        try:
            text = await asyncio.to_thread(self._apply, ref.run_id, button, f"tg:{user.id}")
        except DecisionRefused as exc:
            return f"Not recorded: {exc}", True, ref
        log.info("telegram.decided", run_id=ref.run_id, user_id=user.id, action=button.action,
                 segment=button.segment, candidate=button.candidate)
        record.remember_answer(query.id)
        self.sync.save(ref, record)
        return text, False, ref

    def _apply(self, run_id: str, button: Button, by: str) -> str:
        """One tap as decisions (in a worker thread: the decision lock may wait)."""
        if button.action == "approve_all":
            made = decisions.approve_all(self.store, run_id, by=by, channel=CHANNEL, segment=button.segment)
            if not made:
                return "Nothing left to approve here."
            return "✅ approved " + ", ".join(f"{d.segment}:{d.candidate}" for d in made)
        assert button.segment is not None
        seg = button.segment
        if button.action == "regenerate":
            status = decisions.run_view(self.store, self.store.find(run_id)).segment(seg)
            if status is None:
                return f"Segment {seg} is not offered yet: its candidates are still being made."
            if status.approved is not None:
                return (f"{seg}:{status.approved} is approved; tap ❌{status.approved} first if you want "
                        "new candidates.")
            # "Regenerate" means none of these: the open ones are rejected and a round is made now.
            decisions.decide(self.store, run_id, "regenerate", seg, None, by=by, channel=CHANNEL)
            return f"🔁 segment {seg}: new candidates are being made now; they arrive here."
        decision = decisions.decide(self.store, run_id, button.action, seg, button.candidate, by=by,
                                    channel=CHANNEL)
        said = "✅ approved" if decision.verdict == "approve" else "❌ rejected"
        return f"{said} {seg}:{button.candidate}"

    async def _answer(self, query: CallbackQuery, text: str, *, alert: bool = False) -> None:
        try:
            await query.answer(views.answer_text(text), show_alert=alert)
        except BadRequest as exc:  # a tap from before a restart is too old to answer; it still counts
            log.info("telegram.answer_late", error=self.sync.safe(exc))
        except TelegramError as exc:
            self.sync.warn("answer", "telegram.answer_failed", error=self.sync.safe(exc))

    async def _on_error(self, update: object, context: Any) -> None:
        if isinstance(context.error, Stopping):
            return  # a tap's edit left for the next start: its decision is already recorded
        log.error("telegram.handler_failed", error=self.sync.safe(context.error))

    def _poll_error(self, exc: TelegramError) -> None:
        self.sync.warn("poll", "telegram.poll_failed", error=self.sync.safe(exc))


# -- doctor ---------------------------------------------------------------------------------------


def doctor_checks(settings: Settings) -> Iterator[Check]:
    """When the bot is enabled: the token works (getMe), the chat is reachable (getChat), someone may decide."""
    cfg = settings.telegram
    if not cfg.enabled:
        return
    if not cfg.token.get_secret_value():
        yield Check("telegram bot", False, "telegram.enabled is true but there is no token: put "
                    "TANDAVA_TELEGRAM__TOKEN=<the token @BotFather gave you> in .env beside tandava.toml")
        return
    quiet(_QUIET)
    yield from asyncio.run(_probe(cfg))
    if cfg.allowed_users:
        yield Check("telegram users", True, f"{len(cfg.allowed_users)} user(s) may decide")
    else:
        yield Check("telegram users", False, "nobody may decide: set telegram.allowed_users = [<your user id>] "
                    "(the id @userinfobot tells you)")


async def _probe(cfg: TelegramConfig) -> list[Check]:
    token = cfg.token.get_secret_value()
    bot = Bot(token, base_url=cfg.base_url, base_file_url=file_url(cfg.base_url),
              request=HTTPXRequest(connect_timeout=10, read_timeout=10))
    where = scrub(cfg.base_url)
    try:
        try:
            await bot.initialize()  # getMe
        except InvalidToken:
            return [Check("telegram bot", False, "Telegram rejected the bot token (401 Unauthorized): set "
                          "TANDAVA_TELEGRAM__TOKEN to the token @BotFather gave you")]
        except TelegramError as exc:
            return [Check("telegram bot", False, f"cannot reach the Bot API at {where} "
                          f"({safe_text(exc, token)}): check the network, a proxy, or telegram.base_url")]
        checks = [Check("telegram bot", True, f"@{bot.username} (id {bot.id})")]
        if cfg.chat_id is None:
            checks.append(Check("telegram chat", False, "telegram.chat_id is not set: your own user id for a "
                                f"private chat with @{bot.username}, or a group's id"))
            return checks
        try:
            chat = await bot.get_chat(cfg.chat_id)
        except BadRequest as exc:
            checks.append(Check("telegram chat", False, f"chat {cfg.chat_id}: {safe_text(exc, token)}; a bot can "
                                f"write to a person only after they open @{bot.username} and press Start, "
                                "and to a group once it was added"))
        except Forbidden as exc:
            checks.append(Check("telegram chat", False, f"the bot may not write to chat {cfg.chat_id} "
                                f"({safe_text(exc, token)}): unblock it or add it to the group again"))
        except TelegramError as exc:
            checks.append(Check("telegram chat", False, f"cannot reach the Bot API at {where} "
                                f"({safe_text(exc, token)})"))
        except Exception as exc:  # an answer python-telegram-bot cannot parse (a newer Bot API)
            checks.append(Check("telegram chat", False, f"unexpected answer from the Bot API at {where} "
                                f"({safe_text(exc, token)}); update python-telegram-bot"))
        else:
            name = chat.title or chat.username or chat.first_name or ""
            checks.append(Check("telegram chat", True, f"{chat.type} chat {chat.id} {name}".rstrip()))
        return checks
    finally:
        with contextlib.suppress(TelegramError, OSError):
            await bot.shutdown()
