"""A fake Google for the image and video backends: the wire formats google-genai 3.6.1 speaks.

How this works: ``FakeGoogle`` runs on ``fakehttp.ThreadedServer`` (aiohttp, a
real socket on 127.0.0.1). Routes, as captured from the SDK (see
``tests/data/google/CAPTURE.md``):

    Gemini API (x-goog-api-key)
      POST /{v1,v1beta}/models/{m}:generateContent       image output
      GET  /{v1,v1beta}/models/{m}                        models.get
    Vertex AI (Authorization: Bearer <token>, or x-goog-api-key in express mode)
      POST /v1beta1/projects/{p}/locations/{l}/publishers/google/models/{m}:generateContent
      POST …/models/{m}:predictLongRunning                 -> {"name": "<…>/operations/<id>"}
      POST …/models/{m}:fetchPredictOperation              {"operationName": …} -> the operation
      POST /v1beta1/publishers/google/models/{m}:{method}  the same in express mode
      GET  /v1beta1/publishers/google/models/{m}           models.get
    POST /token                                            OAuth refresh for an authorized-user file

Answers are scripted per kind: ``image_replies`` ("ok", "blocked_prompt",
"blocked_image", "text_only") and ``video_replies`` ("ok", "filtered",
"error"); empty queues answer "ok". ``submit_delay`` holds a submit's answer back
(the operation exists; a client that times out never learns its name). ``rate_limit(n, "2s")`` answers the next
``n`` requests with 429 and a ``RetryInfo``; unknown models get 404.
An operation is done ``op_seconds`` after its submit. Images are billed when
returned, video seconds when an operation finishes with a video
(``billed_images``, ``billed_seconds``); blocked and filtered output is free,
as Google says. ``submits`` counts every ``predictLongRunning``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import itertools
import json
import random
import subprocess
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import imageio_ffmpeg
from aiohttp import web
from fakehttp import ThreadedServer
from PIL import Image, ImageDraw

API_KEY = "AIzaFakeGoogleKeyForTandava_0123456789xyz"
TOKEN = "ya29.fake-access-token-for-tandava"
REFRESH_TOKEN = "1//fake-refresh-token"
IMAGE_MODEL = "gemini-3-pro-image"
VEO_MODEL = "veo-3.1-fast-generate-001"
RAI_REASON = ("We encountered an issue with the audio/visual content of your prompt. "
              "You have not been charged for this request. Support codes: 29310472")


class _ApiError(Exception):
    def __init__(self, code: int, status: str, message: str, details: list[Any] | None = None) -> None:
        super().__init__(message)
        self.code, self.status, self.message, self.details = code, status, message, details


def _video(seconds: int) -> bytes:
    """A moving 24 fps test clip of ``seconds`` seconds, with an audio track Veo would add."""
    exe = imageio_ffmpeg.get_ffmpeg_exe()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "v.mp4"
        subprocess.run([exe, "-v", "error", "-f", "lavfi", "-i", f"testsrc2=size=320x180:rate=24:duration={seconds}",
                        "-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}",
                        "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac",
                        "-shortest", str(out)], check=True, capture_output=True)
        return out.read_bytes()


class FakeGoogle(ThreadedServer):
    """Google's Gemini API and Vertex AI on ``url``; ``with FakeGoogle() as fake:``."""

    name = "fakegoogle"

    def __init__(self, *, api_key: str = API_KEY, models: tuple[str, ...] = (IMAGE_MODEL, VEO_MODEL),
                 op_seconds: float = 0.3) -> None:
        super().__init__()
        self.api_key = api_key
        self.models = set(models)
        self.op_seconds = op_seconds
        self.calls: list[dict[str, Any]] = []
        self.image_replies: deque[str] = deque()
        self.video_replies: deque[str] = deque()
        self.operations: dict[str, dict[str, Any]] = {}
        self.submits = 0
        # Seconds a submit takes to answer (longer than a client's timeout: the answer is lost).
        self.submit_delay = 0.0
        # Seconds an image request takes.
        self.image_delay = 0.0
        self.billed_images = 0
        self.billed_seconds = 0
        self._limited: list[str] = []
        self._ids = itertools.count(1)
        self._videos: dict[int, bytes] = {}
        self._lock = threading.Lock()

    # -- test controls ------------------------------------------------------------------

    def rate_limit(self, count: int, delay: str = "1s") -> None:
        self._limited.extend([delay] * count)

    def requests(self, contains: str) -> list[dict[str, Any]]:
        return [c for c in self.calls if contains in c["path"]]

    def wait_for(self, condition: Any, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError("the fake Google did not see what was expected in time")
            time.sleep(0.02)

    def authorized_user_file(self, folder: Path) -> Path:
        """An authorized-user credentials file holding this fake's token, valid for years (google-auth
        always refreshes at Google's own token URI, so the file carries a token that needs none)."""
        path = folder / "adc.json"
        path.write_text(json.dumps({"type": "authorized_user", "client_id": "fake.apps.googleusercontent.com",
                                    "client_secret": "fake-secret", "refresh_token": REFRESH_TOKEN,
                                    "token": TOKEN, "expiry": "2099-01-01T00:00:00Z"}), encoding="utf-8")
        return path

    # -- routes ---------------------------------------------------------------------------

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        for v in ("v1", "v1beta"):
            app.router.add_get(f"/{v}/models/{{model}}", self._get_model)
            app.router.add_post(f"/{v}/models/{{model}}", self._method)
        vertex = "/v1beta1/projects/{project}/locations/{location}/publishers/google/models/{model}"
        app.router.add_post(vertex, self._method)
        app.router.add_post("/v1beta1/publishers/google/models/{model}", self._method)
        app.router.add_get("/v1beta1/publishers/google/models/{model}", self._get_model)
        app.router.add_post("/token", self._token)
        return app

    async def _token(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        self.calls.append({"path": "/token", "headers": {}, "body": {}})
        if form.get("refresh_token") != REFRESH_TOKEN:
            return web.json_response({"error": "invalid_grant"}, status=400)
        return web.json_response({"access_token": TOKEN, "expires_in": 3600, "token_type": "Bearer"})

    async def _guarded(self, request: web.Request, handler: Any) -> web.StreamResponse:
        raw = await request.read()
        call = {"path": request.path, "headers": {k.lower(): v for k, v in request.headers.items()},
                "body": json.loads(raw) if raw else {}, "at": time.monotonic()}
        self.calls.append(call)
        try:
            self._authorise(request, call)
            if self._limited:
                delay = self._limited.pop(0)
                raise _ApiError(429, "RESOURCE_EXHAUSTED", "You exceeded your current quota.", [
                    {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": []},
                    {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay}])
            return await handler(call)
        except _ApiError as exc:
            body: dict[str, Any] = {"code": exc.code, "message": exc.message, "status": exc.status}
            if exc.details:
                body["details"] = exc.details
            return web.json_response({"error": body}, status=exc.code)

    def _authorise(self, request: web.Request, call: dict[str, Any]) -> None:
        headers = call["headers"]
        vertex = request.path.startswith("/v1beta1/")
        if not vertex or "authorization" not in headers:  # the Gemini API, or Vertex express mode
            key = headers.get("x-goog-api-key")
            if not key:
                raise _ApiError(403, "PERMISSION_DENIED", "Method doesn't allow unregistered callers.")
            if key != self.api_key:
                raise _ApiError(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.", [
                    {"@type": "type.googleapis.com/google.rpc.DebugInfo", "detail": f"Invalid API key: {key}"}])
            return
        if headers.get("authorization") != f"Bearer {TOKEN}":
            raise _ApiError(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.")

    def _model(self, name: str) -> str:
        if name not in self.models:
            raise _ApiError(404, "NOT_FOUND", f"models/{name} is not found for API version v1beta1.")
        return name

    async def _get_model(self, request: web.Request) -> web.StreamResponse:
        async def handle(call: dict[str, Any]) -> web.StreamResponse:
            model = self._model(request.match_info["model"])
            return web.json_response({"name": f"publishers/google/models/{model}", "displayName": model})

        return await self._guarded(request, handle)

    async def _method(self, request: web.Request) -> web.StreamResponse:
        async def handle(call: dict[str, Any]) -> web.StreamResponse:
            model, _, method = request.match_info["model"].partition(":")
            self._model(model)
            prefix = request.path.rpartition("/models/")[0].removeprefix("/v1beta1/")
            if method == "generateContent":
                await asyncio.sleep(self.image_delay)
                return web.json_response(self._image(call["body"]))
            if method == "predictLongRunning" and request.path.startswith("/v1beta1/"):
                answer = self._submit(call["body"], f"{prefix}/models/{model}")
                await asyncio.sleep(self.submit_delay)
                return web.json_response(answer)
            if method == "fetchPredictOperation":
                return web.json_response(self._fetch(call["body"].get("operationName", "")))
            raise _ApiError(404, "NOT_FOUND", f"Method {method} not found.")

        return await self._guarded(request, handle)

    # -- images ------------------------------------------------------------------------------

    def _image(self, body: dict[str, Any]) -> dict[str, Any]:
        parts = (body.get("contents") or [{}])[0].get("parts") or []
        for part in parts:
            inline = part.get("inlineData") or part.get("inline_data")
            if inline is not None:
                if not (inline.get("mimeType") or inline.get("mime_type", "")).startswith("image/"):
                    raise _ApiError(400, "INVALID_ARGUMENT", "Unsupported MIME type.")
                data = str(inline["data"]).replace("-", "+").replace("_", "/")  # the SDK sends URL-safe
                base64.b64decode(data + "=" * (-len(data) % 4), validate=True)
        kind = self.image_replies.popleft() if self.image_replies else "ok"
        if kind == "blocked_prompt":
            return {"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}, "usageMetadata": {}}
        if kind == "blocked_image":
            return {"candidates": [{"finishReason": "IMAGE_SAFETY", "index": 0}]}
        if kind == "text_only":
            return {"candidates": [{"content": {"role": "model", "parts": [{"text": "I cannot draw that."}]},
                                    "finishReason": "STOP", "index": 0}]}
        ratio = ((body.get("generationConfig") or {}).get("imageConfig") or {}).get("aspectRatio", "1:1")
        a, b = (int(x) for x in ratio.split(":"))
        with self._lock:
            self.billed_images += 1
            number = next(self._ids)
        png = _picture(number, round(512 * a / b), 512)
        return {"candidates": [{"content": {"role": "model", "parts": [
                    {"inlineData": {"mimeType": "image/png", "data": base64.b64encode(png).decode()}}]},
                                "finishReason": "STOP", "index": 0}],
                "responseId": f"resp-{number}", "modelVersion": IMAGE_MODEL}

    # -- Veo -----------------------------------------------------------------------------------

    def _submit(self, body: dict[str, Any], resource: str) -> dict[str, Any]:
        instance = (body.get("instances") or [{}])[0]
        params = body.get("parameters") or {}
        if "image" not in instance or "bytesBase64Encoded" not in instance["image"]:
            raise _ApiError(400, "INVALID_ARGUMENT", "image-to-video needs an image.")
        seconds = params.get("durationSeconds", 8)
        if seconds not in (4, 6, 8):
            raise _ApiError(400, "INVALID_ARGUMENT", f"Unsupported duration {seconds}; use 4, 6 or 8.")
        if params.get("resolution", "720p") not in ("720p", "1080p") or \
                params.get("aspectRatio", "16:9") not in ("16:9", "9:16"):
            raise _ApiError(400, "INVALID_ARGUMENT", "Unsupported resolution or aspect ratio.")
        with self._lock:
            self.submits += 1
            name = f"{resource}/operations/{next(self._ids):08x}"
            self.operations[name] = {"at": time.monotonic(), "seconds": int(seconds), "polls": 0,
                                     "kind": self.video_replies.popleft() if self.video_replies else "ok",
                                     "last_frame": "lastFrame" in instance, "prompt": instance.get("prompt", ""),
                                     "audio": params.get("generateAudio")}
        return {"name": name}

    def _fetch(self, name: str) -> dict[str, Any]:
        with self._lock:
            op = self.operations.get(name)
            if op is None:
                raise _ApiError(404, "NOT_FOUND", f"Operation {name} not found.")
            op["polls"] += 1
            if time.monotonic() - op["at"] < self.op_seconds:
                return {"name": name}
            first_done = not op.get("done")
            op["done"] = True
            if op["kind"] == "error":
                return {"name": name, "done": True, "error": {"code": 13, "message": "Internal error."}}
            response: dict[str, Any] = {"@type": "type.googleapis.com/cloud.ai.large_models.vision.GenerateVideoResponse"}
            if op["kind"] == "filtered":
                response |= {"raiMediaFilteredCount": 1, "raiMediaFilteredReasons": [RAI_REASON]}
                return {"name": name, "done": True, "response": response}
            if first_done:
                self.billed_seconds += op["seconds"]
            if op["seconds"] not in self._videos:
                self._videos[op["seconds"]] = _video(op["seconds"])
            data = base64.b64encode(self._videos[op["seconds"]]).decode()
        response["videos"] = [{"bytesBase64Encoded": data, "mimeType": "video/mp4"}]
        return {"name": name, "done": True, "response": response}


def _picture(number: int, width: int, height: int) -> bytes:
    """A distinct, busy PNG per number (passes black/flat/duplicate image checks)."""
    rng = random.Random(hashlib.sha256(str(number).encode()).digest())
    image = Image.new("RGB", (width, height), tuple(rng.randrange(40, 200) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    for _ in range(40):
        x, y = rng.randrange(width), rng.randrange(height)
        draw.rectangle((x, y, x + rng.randrange(20, 200), y + rng.randrange(20, 200)),
                       fill=tuple(rng.randrange(256) for _ in range(3)))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
