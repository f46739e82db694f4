"""A fake Telegram Bot API server for tests and benchmarks: the real wire format, no Telegram.

How this works: ``FakeTelegram`` runs an aiohttp app on a private asyncio loop
in a daemon thread, on a real socket. Requests arrive as python-telegram-bot
sends them: ``POST /bot<TOKEN>/<method>`` with a form-encoded body, or a
multipart one when files travel (``media`` of ``sendMediaGroup`` names its
files with ``attach://``), non-string fields JSON-encoded. Answers are
``{"ok": true, "result": ...}`` with real object shapes, or Telegram's
errors: 401 for a wrong token, 400 "chat not found", 400 "message is not
modified" for an edit that changes nothing, 413 above the upload limit, 400
for a photo too big or too large in pixels, 429 with ``retry_after``.

Flood limit: per chat, send* calls must be at least ``1/rate`` seconds apart,
timed when the request arrives; a media group counts as one call (its photos
arrive in one request, and one call is the unit a sender can pace). Rejected
calls do not count; ``flood_hits`` counts the 429s.

``getUpdates`` long-polls for updates a test injects with ``tap``. Updates,
messages and records survive ``go_down``/``come_back`` (the port refuses
connections in between), as Telegram keeps them while a bot is offline.
Server state is only touched on the loop; tests read the records (lists
appended on the loop, read with the GIL's atomic list operations).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from fakehttp import ThreadedServer
from PIL import Image

TOKEN = "123456789:AAHfakeTokenForTandavaTests_0123456789"
CHAT_ID = 4242
UPLOAD_LIMIT = 50 * 1000 * 1000  # Bot API: files up to 50 MB
PHOTO_LIMIT = 10 * 1000 * 1000  # Bot API: photos up to 10 MB
PHOTO_SIDES = 10000  # Bot API: width + height at most 10000
_NOT_MODIFIED = ("Bad Request: message is not modified: specified new message content and reply "
                 "markup are exactly the same as a current content and reply markup of the message")
BOT_USER = {"id": 777000111, "is_bot": True, "first_name": "Tandava", "username": "tandava_test_bot",
            "can_join_groups": True, "can_read_all_group_messages": False, "supports_inline_queries": False}


@dataclass
class Sent:
    """One successful send* call (an album is one call with several messages)."""

    method: str
    chat_id: int
    message_ids: list[int]
    at: float
    text: str = ""
    captions: list[str] = field(default_factory=list)
    reply_markup: dict | None = None
    files: dict[str, int] = field(default_factory=dict)


@dataclass
class Edit:
    """One successful edit; ``text`` is the new text or caption."""

    method: str
    chat_id: int
    message_id: int
    at: float
    text: str
    reply_markup: dict | None


@dataclass
class Answer:
    """The bot's answer to one tap."""

    query_id: str
    text: str
    show_alert: bool
    at: float


class _ApiError(Exception):
    def __init__(self, code: int, description: str, retry_after: int | None = None) -> None:
        super().__init__(description)
        self.code, self.description, self.retry_after = code, description, retry_after


class FakeTelegram(ThreadedServer):
    """The Bot API on ``base_url``; ``with FakeTelegram() as fake:`` starts and stops it."""

    name = "faketelegram"

    def __init__(self, token: str = TOKEN, *, chats: tuple[int, ...] = (CHAT_ID,), rate: float = 1.0,
                 upload_limit: int = UPLOAD_LIMIT, photo_limit: int = PHOTO_LIMIT) -> None:
        super().__init__()
        self.token, self.rate = token, rate
        self.upload_limit, self.photo_limit = upload_limit, photo_limit
        self.chats = {c: {"id": c, "type": "private", "first_name": "Person"} for c in chats}
        self.sends: list[Sent] = []
        self.edits: list[Edit] = []
        self.answers: list[Answer] = []
        self.calls: list[tuple[str, float]] = []
        self.flood_hits = 0
        self.messages: dict[tuple[int, int], dict[str, Any]] = {}
        self._updates: list[dict[str, Any]] = []
        self._queries: set[str] = set()
        self._ids = itertools.count(1)
        self._update_ids = itertools.count(1)
        self._last_send: dict[int, float] = {}
        self._changed: asyncio.Event | None = None

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/bot"

    @property
    def base_file_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/file/bot"

    def make_app(self) -> web.Application:
        self._changed = asyncio.Event()
        app = web.Application(client_max_size=4 * UPLOAD_LIMIT)
        app.router.add_post("/bot{token}/{method}", self._handle)
        app.router.add_get("/bot{token}/{method}", self._handle)
        return app

    # -- test controls ----------------------------------------------------------------------

    def tap(self, user_id: int, data: str, message_id: int, chat_id: int = CHAT_ID) -> str:
        """A person pressed an inline button: a callback_query update; returns its query id."""
        query_id = f"{next(self._ids)}{int(time.time() * 1000) % 100000:05d}"
        message = self.messages.get((chat_id, message_id)) or {
            "message_id": message_id, "date": int(time.time()), "chat": self._chat(chat_id)}
        update = {"update_id": next(self._update_ids), "callback_query": {
            "id": query_id, "from": {"id": user_id, "is_bot": False, "first_name": f"User{user_id}"},
            "message": message, "chat_instance": str(-chat_id), "data": data}}
        self._on_loop(self._add_update(update, query_id))
        return query_id

    async def _add_update(self, update: dict[str, Any], query_id: str) -> None:
        self._queries.add(query_id)
        self._updates.append(update)
        assert self._changed is not None
        self._changed.set()

    def answer(self, query_id: str, timeout: float = 10.0) -> Answer:
        """The bot's answer to a tap, waiting for it."""
        self.wait_for(lambda: any(a.query_id == query_id for a in self.answers), timeout)
        return next(a for a in self.answers if a.query_id == query_id)

    @staticmethod
    def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError("the fake Telegram did not see what was expected in time")
            time.sleep(0.02)

    def sent(self, method: str | None = None) -> list[Sent]:
        return [s for s in self.sends if method is None or s.method == method]

    # -- the API ----------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.Response:
        arrived = time.monotonic()
        method = request.match_info["method"]
        self.calls.append((method, arrived))
        try:
            if request.match_info["token"] != self.token:
                raise _ApiError(401, "Unauthorized")
            handler = getattr(self, f"_api_{method.lower()}", None)
            if handler is None:
                raise _ApiError(404, "Not Found")
            if request.content_length is not None and request.content_length > self.upload_limit:
                raise _ApiError(413, "Request Entity Too Large")
            fields, files = await _read_body(request)
            result = await handler(fields, files, arrived)
        except _ApiError as exc:
            body: dict[str, Any] = {"ok": False, "error_code": exc.code, "description": exc.description}
            if exc.retry_after is not None:
                body["parameters"] = {"retry_after": exc.retry_after}
            return web.json_response(body, status=exc.code)
        return web.json_response({"ok": True, "result": result})

    def _chat(self, chat_id: Any) -> dict[str, Any]:
        try:
            return self.chats[int(chat_id)]
        except (KeyError, TypeError, ValueError):
            raise _ApiError(400, "Bad Request: chat not found") from None

    def _flood(self, chat_id: int, arrived: float) -> None:
        last = self._last_send.get(chat_id)
        if last is not None and arrived < last + 1.0 / self.rate:
            self.flood_hits += 1
            wait = math.ceil(last + 1.0 / self.rate - arrived)
            raise _ApiError(429, f"Too Many Requests: retry after {wait}", retry_after=wait)
        self._last_send[chat_id] = arrived

    def _message(self, chat_id: int, **content: Any) -> dict[str, Any]:
        msg = {"message_id": next(self._ids), "from": BOT_USER, "chat": self._chat(chat_id),
               "date": int(time.time()), **{k: v for k, v in content.items() if v is not None}}
        self.messages[(chat_id, msg["message_id"])] = msg
        return msg

    async def _api_getme(self, fields: dict, files: dict, arrived: float) -> Any:
        return BOT_USER

    async def _api_deletewebhook(self, fields: dict, files: dict, arrived: float) -> Any:
        return True

    _api_setmycommands = _api_deletewebhook

    async def _api_getchat(self, fields: dict, files: dict, arrived: float) -> Any:
        return {**self._chat(fields.get("chat_id")), "accent_color_id": 0, "max_reaction_count": 11,
                "accepted_gift_types": {"unlimited_gifts": False, "limited_gifts": False,
                                        "unique_gifts": False, "premium_subscription": False,
                                        "gifts_from_channels": False}}

    async def _api_getupdates(self, fields: dict, files: dict, arrived: float) -> Any:
        offset = int(fields.get("offset") or 0)
        timeout = float(fields.get("timeout") or 0)
        assert self._changed is not None
        deadline = time.monotonic() + timeout
        while True:
            self._updates = [u for u in self._updates if u["update_id"] >= offset]
            if self._updates or time.monotonic() >= deadline:
                return self._updates[:100]
            self._changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), deadline - time.monotonic())

    async def _api_sendmessage(self, fields: dict, files: dict, arrived: float) -> Any:
        chat = int(self._chat(fields.get("chat_id"))["id"])
        self._flood(chat, arrived)
        msg = self._message(chat, text=fields["text"], reply_markup=fields.get("reply_markup"))
        self.sends.append(Sent("sendMessage", chat, [msg["message_id"]], arrived, text=fields["text"],
                               reply_markup=fields.get("reply_markup")))
        return msg

    async def _api_sendphoto(self, fields: dict, files: dict, arrived: float) -> Any:
        chat = int(self._chat(fields.get("chat_id"))["id"])
        photo = self._photo(fields.get("photo"), files)
        self._flood(chat, arrived)
        msg = self._message(chat, photo=photo, caption=fields.get("caption"), reply_markup=fields.get("reply_markup"))
        self.sends.append(Sent("sendPhoto", chat, [msg["message_id"]], arrived, captions=[fields.get("caption", "")],
                               reply_markup=fields.get("reply_markup"),
                               files={k: len(v[1]) for k, v in files.items()}))
        return msg

    async def _api_sendmediagroup(self, fields: dict, files: dict, arrived: float) -> Any:
        chat = int(self._chat(fields.get("chat_id"))["id"])
        media = fields.get("media") or []
        if not 2 <= len(media) <= 10:
            raise _ApiError(400, "Bad Request: wrong number of media specified")
        photos = [self._photo(item.get("media"), files) for item in media]
        self._flood(chat, arrived)
        group = str(next(self._ids))
        msgs = [self._message(chat, photo=p, caption=item.get("caption"), media_group_id=group)
                for p, item in zip(photos, media, strict=True)]
        self.sends.append(Sent("sendMediaGroup", chat, [m["message_id"] for m in msgs], arrived,
                               captions=[item.get("caption", "") for item in media],
                               files={k: len(v[1]) for k, v in files.items()}))
        return msgs

    async def _api_sendvideo(self, fields: dict, files: dict, arrived: float) -> Any:
        chat = int(self._chat(fields.get("chat_id"))["id"])
        data = _file(fields.get("video"), files)
        self._flood(chat, arrived)
        video = {"file_id": f"vid{next(self._ids)}", "file_unique_id": f"uv{len(self.sends)}",
                 "width": int(fields.get("width") or 0), "height": int(fields.get("height") or 0),
                 "duration": int(fields.get("duration") or 0), "mime_type": "video/mp4", "file_size": len(data)}
        thumb = (_file(fields["thumbnail"], files) if fields.get("thumbnail")
                 else files["thumbnail"][1] if "thumbnail" in files else None)
        if thumb is not None:
            with Image.open(io.BytesIO(thumb)) as img:
                video["thumbnail"] = {"file_id": "th", "file_unique_id": "th", "width": img.width,
                                      "height": img.height, "file_size": len(thumb)}
        msg = self._message(chat, video=video, caption=fields.get("caption"))
        self.sends.append(Sent("sendVideo", chat, [msg["message_id"]], arrived, captions=[fields.get("caption", "")],
                               files={k: len(v[1]) for k, v in files.items()}))
        return msg

    def _photo(self, ref: Any, files: dict[str, tuple[str, bytes]]) -> list[dict[str, Any]]:
        data = _file(ref, files)
        if len(data) > self.photo_limit:
            raise _ApiError(400, "Bad Request: file is too big")
        try:
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
        except OSError:
            raise _ApiError(400, "Bad Request: IMAGE_PROCESS_FAILED") from None
        if width + height > PHOTO_SIDES or max(width, height) > 20 * min(width, height):
            raise _ApiError(400, "Bad Request: PHOTO_INVALID_DIMENSIONS")
        sizes = []
        for side in (90, 320, 800, 1280):  # Telegram stores scaled copies up to 1280 px
            scale = min(1.0, side / max(width, height))
            sizes.append({"file_id": f"ph{next(self._ids)}", "file_unique_id": f"u{side}",
                          "width": round(width * scale), "height": round(height * scale)})
            if scale == 1.0:
                break
        return sizes

    async def _edit(self, method: str, fields: dict, arrived: float, key: str) -> Any:
        chat = int(self._chat(fields.get("chat_id"))["id"])
        msg = self.messages.get((chat, int(fields.get("message_id") or 0)))
        if msg is None:
            raise _ApiError(400, "Bad Request: message to edit not found")
        if key == "text" and "text" not in msg:
            raise _ApiError(400, "Bad Request: there is no text in the message to edit")
        new = fields.get(key, msg.get(key)) if key != "reply_markup" else None
        markup = fields.get("reply_markup")
        if new == msg.get(key) and markup == msg.get("reply_markup"):
            raise _ApiError(400, _NOT_MODIFIED)
        if key != "reply_markup":
            msg[key] = new
        if markup is None:
            msg.pop("reply_markup", None)  # an edit without a keyboard removes it, as in Telegram
        else:
            msg["reply_markup"] = markup
        msg["edit_date"] = int(time.time())
        self.edits.append(Edit(method, chat, msg["message_id"], arrived, str(new or ""), markup))
        return msg

    async def _api_editmessagetext(self, fields: dict, files: dict, arrived: float) -> Any:
        return await self._edit("editMessageText", fields, arrived, "text")

    async def _api_editmessagecaption(self, fields: dict, files: dict, arrived: float) -> Any:
        return await self._edit("editMessageCaption", fields, arrived, "caption")

    async def _api_editmessagereplymarkup(self, fields: dict, files: dict, arrived: float) -> Any:
        return await self._edit("editMessageReplyMarkup", fields, arrived, "reply_markup")

    async def _api_answercallbackquery(self, fields: dict, files: dict, arrived: float) -> Any:
        query_id = str(fields.get("callback_query_id"))
        if query_id not in self._queries:
            raise _ApiError(400, "Bad Request: query is too old and response timeout expired or query ID is invalid")
        self._queries.discard(query_id)
        self.answers.append(Answer(query_id, str(fields.get("text") or ""),
                                   str(fields.get("show_alert")).lower() == "true", arrived))
        return True


async def _read_body(request: web.Request) -> tuple[dict[str, Any], dict[str, tuple[str, bytes]]]:
    """Form or multipart fields (JSON-decoded where Telegram expects JSON) and uploaded files."""
    fields: dict[str, Any] = {}
    files: dict[str, tuple[str, bytes]] = {}
    if request.content_type == "application/json":
        fields = await request.json()
    elif request.can_read_body:
        for name, value in (await request.post()).items():
            if isinstance(value, web.FileField):
                files[name] = (value.filename, value.file.read())
            else:
                fields[name] = str(value)
    for key in ("reply_markup", "media", "reply_parameters", "allowed_updates"):
        if isinstance(fields.get(key), str):
            fields[key] = json.loads(fields[key])
    return fields, files


def _file(ref: Any, files: dict[str, tuple[str, bytes]]) -> bytes:
    """The bytes an input file field refers to: ``attach://name``, a multipart field, or a file_id."""
    if isinstance(ref, str) and ref.startswith("attach://"):
        ref = ref[len("attach://"):]
    if isinstance(ref, str) and ref in files:
        return files[ref][1]
    for name, (_filename, data) in files.items():
        if ref is None and name in ("photo", "video"):
            return data
    raise _ApiError(400, "Bad Request: wrong file identifier/HTTP URL specified")
