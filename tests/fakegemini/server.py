"""A fake Gemini API server for tests: the wire format google-genai speaks, no Google.

How this works: ``FakeGemini`` runs an aiohttp app on a private asyncio loop in
a daemon thread, on a real socket; point ``HttpOptions(base_url=...)`` at
``fake.base_url``. It answers only the routes and API version the SDK uses
(checked against google-genai 3.4's ``_api_client.py`` and ``files.py``):

    POST   /upload/v1beta/files                 resumable upload, ``X-Goog-Upload-Command: start``
                                                -> 200, ``X-Goog-Upload-URL`` header
    POST   <that URL>?upload_id=...             ``upload`` / ``upload, finalize`` with the bytes at
                                                ``X-Goog-Upload-Offset`` -> ``X-Goog-Upload-Status``
                                                ``active`` / ``final`` and ``{"file": {...}}``
    GET    /v1beta/files/{id}                   the File; PROCESSING until polled enough, then
                                                ACTIVE (or FAILED with an ``error``)
    DELETE /v1beta/files/{id}                   ``{}``
    GET    /v1beta/models/{model}               the Model, or 404 NOT_FOUND
    POST   /v1beta/models/{model}:generateContent

Every route but the upload URL (which its ``upload_id`` authorises, as at
Google) wants the ``x-goog-api-key`` header: none gives Google's 403
PERMISSION_DENIED, a wrong one its 400 INVALID_ARGUMENT ``API_KEY_INVALID``
(with the key echoed in a DebugInfo detail, as Google does, so tests can see
it never reaches our messages). ``bad_key_status=403`` answers a wrong key
as a blocked one instead.

generateContent is checked the way Google checks it: parts are text,
``inlineData`` (a supported MIME type, base64, the request under 20 MB) or
``fileData`` naming an ACTIVE file of ours; ``responseJsonSchema`` needs
``responseMimeType: application/json``. Fields are read by either proto3
JSON name, as Google does: the SDK sends ``inlineData`` with ``mime_type``
inside, the upload's ``{"file": {"display_name": ...}}``, and URL-safe
base64. Its answers come from a queue that tests fill with ``script(...)`` (``good_plan()``, ``wild_plan()``,
``text(...)``, ``error(...)``, ``slow(...)``); an empty queue answers a good
plan. Plans are built from the local plan in the prompt (lines like
``#3 12.34-17.50 s ...``, as ``daemon.writers.gemini.brief_text`` writes them).

Everything that arrives is recorded in ``calls``; the loop appends, tests read.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import itertools
import json
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from fakehttp import ThreadedServer

API_KEY = "AIzaFakeKeyForTandavaTests_0123456789abcd"
MODEL = "gemini-2.5-flash"
API_VERSION = "v1beta"
# Google's limit for a whole generateContent request with inline data.
REQUEST_LIMIT = 20 * 1024 * 1024
AUDIO_TYPES = frozenset({"audio/wav", "audio/mp3", "audio/mpeg", "audio/aiff", "audio/aac",
                         "audio/ogg", "audio/flac", "audio/mp4"})
_PLAN_LINE = re.compile(r"^#(\d+) (\d+(?:\.\d+)?)-(\d+(?:\.\d+)?) s", re.MULTILINE)


@dataclass(frozen=True)
class Call:
    """One request as it arrived."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass(frozen=True)
class Reply:
    """What one generateContent call answers (see the factories below)."""

    kind: str  # "plan", "wild", "text" or "error"
    text: str = ""
    status: int = 200
    error_status: str = ""
    delay: float = 0.0


def good_plan() -> Reply:
    """One idea per local segment, on the local times."""
    return Reply("plan")


def wild_plan() -> Reply:
    """One idea per segment with its own times: off the beats, the last one past the song's end."""
    return Reply("wild")


def text(body: str) -> Reply:
    """This text as the model's answer (e.g. JSON that does not match the schema)."""
    return Reply("text", text=body)


def error(code: int, status: str, message: str) -> Reply:
    """A Google error: ``error(429, "RESOURCE_EXHAUSTED", "...")``."""
    return Reply("error", text=message, status=code, error_status=status)


def slow(seconds: float, then: Reply | None = None) -> Reply:
    """``then`` (a good plan) after ``seconds``, longer than a client's timeout."""
    base = then or good_plan()
    return Reply(base.kind, base.text, base.status, base.error_status, delay=seconds)


@dataclass
class StoredFile:
    """An uploaded file and how far its processing is."""

    name: str
    mime_type: str
    display_name: str
    data: bytes
    polls: int = 0
    state: str = "PROCESSING"


@dataclass
class _Upload:
    mime_type: str
    size: int
    display_name: str
    received: bytearray = field(default_factory=bytearray)


class _ApiError(Exception):
    def __init__(self, code: int, status: str, message: str, details: list[Any] | None = None) -> None:
        super().__init__(message)
        self.code, self.status, self.message, self.details = code, status, message, details


class FakeGemini(ThreadedServer):
    """The Gemini API on ``base_url``; ``with FakeGemini() as fake:`` starts and stops it."""

    name = "fakegemini"

    def __init__(self, api_key: str = API_KEY, *, models: tuple[str, ...] = (MODEL,),
                 processing_polls: int = 1, file_outcome: str = "ACTIVE", bad_key_status: int = 400) -> None:
        super().__init__()
        self.api_key = api_key
        self.models = set(models)
        self.processing_polls = processing_polls
        self.file_outcome = file_outcome
        self.bad_key_status = bad_key_status
        self.calls: list[Call] = []
        self.files: dict[str, StoredFile] = {}  # the files there now
        self.uploaded: list[StoredFile] = []  # every file ever uploaded
        self.deleted: list[str] = []
        self.usage: list[dict[str, int]] = []
        self._replies: deque[Reply] = deque()
        self._uploads: dict[str, _Upload] = {}
        self._ids = itertools.count(1)

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=4 * REQUEST_LIMIT)
        v = API_VERSION
        app.router.add_post(f"/upload/{v}/files", self._upload)
        app.router.add_get(f"/{v}/files/{{id}}", self._get_file)
        app.router.add_delete(f"/{v}/files/{{id}}", self._delete_file)
        # aiohttp's {name} matches ':' too, so "gemini-2.5-flash:generateContent" is one segment.
        app.router.add_get(f"/{v}/models/{{model}}", self._get_model)
        app.router.add_post(f"/{v}/models/{{model}}", self._model_method)
        return app

    # -- test controls ----------------------------------------------------------------------

    def script(self, *replies: Reply) -> None:
        """Queue the answers of the next generateContent calls, in order."""
        self._replies.extend(replies)

    def requests(self, method: str, path_contains: str = "") -> list[Call]:
        return [c for c in self.calls if c.method == method and path_contains in c.path]

    def generate_calls(self) -> list[Call]:
        """The generateContent requests that arrived, failed ones included."""
        return [c for c in self.calls if c.path.endswith(":generateContent")]

    @staticmethod
    def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError("the fake Gemini did not see what was expected in time")
            time.sleep(0.02)

    # -- the API ----------------------------------------------------------------------------

    async def _record(self, request: web.Request) -> Call:
        call = Call(request.method, request.path, dict(request.query),
                    {k.lower(): v for k, v in request.headers.items()}, await request.read(),
                    time.monotonic())
        self.calls.append(call)
        return call

    def _authorise(self, call: Call) -> None:
        key = call.headers.get("x-goog-api-key")
        if not key:
            raise _ApiError(403, "PERMISSION_DENIED",
                            "Method doesn't allow unregistered callers (callers without established identity). "
                            "Please use API Key or other form of API consumer identity to call this API.")
        if key != self.api_key:
            if self.bad_key_status == 403:
                raise _ApiError(403, "PERMISSION_DENIED", "Your API key was reported as leaked. "
                                "Please use another API key.")
            raise _ApiError(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.", [
                {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
                 "domain": "googleapis.com", "metadata": {"service": "generativelanguage.googleapis.com"}},
                {"@type": "type.googleapis.com/google.rpc.DebugInfo", "detail": f"Invalid API key: {key}"}])

    async def _guarded(self, request: web.Request, handler: Callable[[Call], Any]) -> web.StreamResponse:
        call = await self._record(request)
        try:
            return await handler(call)
        except _ApiError as exc:
            body: dict[str, Any] = {"code": exc.code, "message": exc.message, "status": exc.status}
            if exc.details:
                body["details"] = exc.details
            return web.json_response({"error": body}, status=exc.code)

    async def _upload(self, request: web.Request) -> web.StreamResponse:
        return await self._guarded(request, self._upload_call)

    async def _upload_call(self, call: Call) -> web.StreamResponse:
        upload_id = call.query.get("upload_id")
        if upload_id is None:
            return self._start_upload(call)
        upload = self._uploads.get(upload_id)
        if upload is None:
            raise _ApiError(404, "NOT_FOUND", "No such upload session.")
        command = [part.strip() for part in call.headers.get("x-goog-upload-command", "").split(",")]
        if "upload" not in command:
            raise _ApiError(400, "INVALID_ARGUMENT", f"Unexpected upload command {command}.")
        if int(call.headers.get("x-goog-upload-offset", "-1")) != len(upload.received):
            raise _ApiError(400, "INVALID_ARGUMENT", "Upload offset does not match the bytes received.")
        upload.received += call.body
        if "finalize" not in command:
            return web.Response(headers={"X-Goog-Upload-Status": "active"})
        if len(upload.received) != upload.size:
            raise _ApiError(400, "INVALID_ARGUMENT", "Upload size does not match the declared length.")
        del self._uploads[upload_id]
        name = f"files/fake{next(self._ids):04d}"
        self.files[name] = StoredFile(name, upload.mime_type, upload.display_name, bytes(upload.received))
        self.uploaded.append(self.files[name])
        return web.json_response({"file": self._file_json(self.files[name])},
                                 headers={"X-Goog-Upload-Status": "final"})

    def _start_upload(self, call: Call) -> web.StreamResponse:
        self._authorise(call)
        headers = call.headers
        if headers.get("x-goog-upload-protocol") != "resumable" or headers.get("x-goog-upload-command") != "start":
            raise _ApiError(400, "INVALID_ARGUMENT", "Expected a resumable upload start.")
        meta = (call.json() or {}).get("file", {})
        size = headers.get("x-goog-upload-header-content-length")
        mime = headers.get("x-goog-upload-header-content-type") or _field(meta, "mimeType")
        if size is None or not size.isdigit() or not mime:
            raise _ApiError(400, "INVALID_ARGUMENT", "Upload length and content type are required.")
        upload_id = f"up{next(self._ids):04d}"
        self._uploads[upload_id] = _Upload(mime, int(size), _field(meta, "displayName") or "")
        url = f"{self.base_url}/upload/{API_VERSION}/files?upload_id={upload_id}&upload_protocol=resumable"
        return web.Response(headers={"X-Goog-Upload-URL": url, "X-Goog-Upload-Status": "active",
                                     "X-Goog-Upload-Chunk-Granularity": "8388608"})

    def _file_json(self, stored: StoredFile) -> dict[str, Any]:
        body: dict[str, Any] = {
            "name": stored.name, "displayName": stored.display_name, "mimeType": stored.mime_type,
            "sizeBytes": str(len(stored.data)), "createTime": "2026-01-01T00:00:00.000000Z",
            "updateTime": "2026-01-01T00:00:00.000000Z", "expirationTime": "2026-01-03T00:00:00.000000Z",
            "sha256Hash": base64.b64encode(hashlib.sha256(stored.data).hexdigest().encode()).decode(),
            "uri": f"{self.base_url}/{API_VERSION}/{stored.name}", "state": stored.state,
            "source": "UPLOADED"}
        if stored.state == "FAILED":
            body["error"] = {"code": 400, "message": "The audio could not be decoded."}
        return body

    def _stored(self, file_id: str) -> StoredFile:
        stored = self.files.get(f"files/{file_id}")
        if stored is None:
            raise _ApiError(403, "PERMISSION_DENIED",
                            f"You do not have permission to access the File {file_id} or it may not exist.")
        return stored

    async def _get_file(self, request: web.Request) -> web.StreamResponse:
        async def handle(call: Call) -> web.StreamResponse:
            self._authorise(call)
            stored = self._stored(request.match_info["id"])
            stored.polls += 1
            if stored.state == "PROCESSING" and stored.polls >= self.processing_polls:
                stored.state = self.file_outcome
            return web.json_response(self._file_json(stored))

        return await self._guarded(request, handle)

    async def _delete_file(self, request: web.Request) -> web.StreamResponse:
        async def handle(call: Call) -> web.StreamResponse:
            self._authorise(call)
            stored = self._stored(request.match_info["id"])
            del self.files[stored.name]
            self.deleted.append(stored.name)
            return web.json_response({})

        return await self._guarded(request, handle)

    def _model(self, model: str) -> str:
        if model not in self.models:
            raise _ApiError(404, "NOT_FOUND", f"models/{model} is not found for API version {API_VERSION}, "
                            "or is not supported for generateContent.")
        return model

    async def _get_model(self, request: web.Request) -> web.StreamResponse:
        async def handle(call: Call) -> web.StreamResponse:
            self._authorise(call)
            model = self._model(request.match_info["model"])
            return web.json_response({
                "name": f"models/{model}", "baseModelId": model, "version": "001",
                "displayName": f"Fake {model}", "inputTokenLimit": 1048576, "outputTokenLimit": 65536,
                "supportedGenerationMethods": ["generateContent", "countTokens"]})

        return await self._guarded(request, handle)

    async def _model_method(self, request: web.Request) -> web.StreamResponse:
        async def handle(call: Call) -> web.StreamResponse:
            model, _, method = request.match_info["model"].partition(":")
            if method != "generateContent":
                raise _ApiError(404, "NOT_FOUND", f"Method {method or '(none)'} not found.")
            self._authorise(call)
            self._model(model)
            prompt = self._check_generate(call)
            reply = self._replies.popleft() if self._replies else good_plan()
            if reply.delay:
                await asyncio.sleep(reply.delay)
            if reply.kind == "error":
                raise _ApiError(reply.status, reply.error_status, reply.text)
            answer = reply.text if reply.kind == "text" else _plan_json(prompt, wild=reply.kind == "wild")
            usage = {"promptTokenCount": 1000 + len(prompt) // 4, "candidatesTokenCount": len(answer) // 4}
            usage["totalTokenCount"] = usage["promptTokenCount"] + usage["candidatesTokenCount"]
            self.usage.append(usage)
            return web.json_response({
                "candidates": [{"content": {"parts": [{"text": answer}], "role": "model"},
                                "finishReason": "STOP", "index": 0}],
                "usageMetadata": usage, "modelVersion": model, "responseId": f"fake{next(self._ids)}"})

        return await self._guarded(request, handle)

    def _check_generate(self, call: Call) -> str:
        """Reject what Google rejects; return the prompt's text."""
        if len(call.body) > REQUEST_LIMIT:
            raise _ApiError(400, "INVALID_ARGUMENT",
                            f"Request payload size exceeds the limit: {REQUEST_LIMIT} bytes.")
        body = call.json() or {}
        contents = body.get("contents")
        if not isinstance(contents, list) or not contents:
            raise _ApiError(400, "INVALID_ARGUMENT", "* GenerateContentRequest.contents: contents is not specified")
        texts = []
        for content in contents:
            for part in content.get("parts") or []:
                if "text" in part:
                    texts.append(part["text"])
                elif "inlineData" in part:
                    self._check_inline(part["inlineData"])
                elif "fileData" in part:
                    self._check_file(part["fileData"])
                else:
                    raise _ApiError(400, "INVALID_ARGUMENT", f"Unsupported part: {sorted(part)}")
        config = body.get("generationConfig") or {}
        if "responseJsonSchema" in config and config.get("responseMimeType") != "application/json":
            raise _ApiError(400, "INVALID_ARGUMENT",
                            "responseJsonSchema requires responseMimeType to be application/json.")
        return "\n".join(texts)

    @staticmethod
    def _check_inline(inline: dict[str, Any]) -> None:
        mime = _field(inline, "mimeType")
        if not mime:
            raise _ApiError(400, "INVALID_ARGUMENT", "Inline data needs a MIME type.")
        if mime.startswith("audio/") and mime not in AUDIO_TYPES:
            raise _ApiError(400, "INVALID_ARGUMENT", f"Unsupported MIME type: {mime}")
        try:
            _decode(inline.get("data", ""))
        except binascii.Error as exc:
            raise _ApiError(400, "INVALID_ARGUMENT", "Invalid value at 'contents[0].parts[0].inline_data.data' "
                            "(TYPE_BYTES), Base64 decoding failed.") from exc

    def _check_file(self, file_data: dict[str, Any]) -> None:
        file_id = str(_field(file_data, "fileUri") or "").rsplit("/", 1)[-1]
        stored = self._stored(file_id)
        if stored.state != "ACTIVE":
            raise _ApiError(400, "FAILED_PRECONDITION",
                            f"The File {file_id} is not in an ACTIVE state and usage is not allowed.")
        if _field(file_data, "mimeType") not in (None, stored.mime_type):
            raise _ApiError(400, "INVALID_ARGUMENT", "The file's MIME type does not match the part's.")

    @staticmethod
    def inline_parts(call: Call) -> list[tuple[str, bytes]]:
        """The ``inlineData`` parts of a generateContent request: MIME type and decoded bytes."""
        return [(_field(p["inlineData"], "mimeType"), _decode(p["inlineData"]["data"]))
                for c in call.json()["contents"] for p in c["parts"] if "inlineData" in p]

    @staticmethod
    def file_parts(call: Call) -> list[tuple[str, str]]:
        """The ``fileData`` parts of a generateContent request: MIME type and URI."""
        return [(_field(p["fileData"], "mimeType"), _field(p["fileData"], "fileUri")) for c in call.json()["contents"] for p in c["parts"] if "fileData" in p]

    @staticmethod
    def prompt(call: Call) -> str:
        """The text parts of a generateContent request."""
        return "\n".join(p["text"] for c in call.json()["contents"] for p in c["parts"] if "text" in p)


def _field(message: dict[str, Any], camel: str) -> Any:
    """A proto3 JSON field by either name: lowerCamelCase or the proto's own snake_case.

    Google accepts both, and the SDK sends both: ``inlineData`` outside,
    ``mime_type`` inside.
    """
    snake = re.sub(r"(?<!^)([A-Z])", lambda m: "_" + m.group(1).lower(), camel)
    return message.get(camel, message.get(snake))


def _decode(data: str) -> bytes:
    """Proto3 JSON bytes: standard or URL-safe base64 (the SDK sends URL-safe), padded."""
    return base64.b64decode(data.replace("-", "+").replace("_", "/"), validate=True)


def _plan_json(prompt: str, *, wild: bool) -> str:
    """A plan answering the local plan found in ``prompt``."""
    local = [(int(i), float(a), float(b)) for i, a, b in _PLAN_LINE.findall(prompt)]
    segments = []
    for index, start, end in local:
        idea: dict[str, Any] = {
            "index": index, "visual_prompt": f"fake vision {index}: a temple at dusk, lamps, mist",
            "motion_prompt": "slow push in, flames flicker", "mood": "steady", "theme": f"scene {index}"}
        if wild:
            # 0.123 s off every beat, and the last segment running a minute past the song.
            idea["start"] = round(start + 0.123, 3)
            idea["end"] = round(end + (60.0 if index == local[-1][0] else 0.123), 3)
        segments.append(idea)
    return json.dumps({"segments": segments})
