"""A fake Ollama server for tests and benchmarks: the real REST wire format, no model.

How this works: ``FakeOllama`` runs an aiohttp app on a private asyncio loop in
a daemon thread, on a real socket, like ``faketelegram``. It answers:

* ``POST /api/chat`` (non-streaming) with Ollama's envelope ``{"model",
  "created_at", "message": {"role": "assistant", "content"}, "done": true,
  "done_reason": "stop", "total_duration", "eval_count", "prompt_eval_count"}``.
  What ``content`` holds is scripted per call (``script``), by default
  ``"good"``: a plan "read" from the request's user message, one idea per
  ``segment <i>: <start>-<end> s, <mood>`` line, as a model that follows the
  brief would write it. ``"offgrid"`` moves those times off the beats, before
  0 and past the end, shuffled, with a duplicate; ``"invalid"`` is prose, not
  JSON; ``"schema"`` is JSON that misses the schema. A callable gets the
  request body and returns the content.
* ``GET /api/tags`` (pulled models), ``GET /api/ps`` (loaded models).
* ``POST /api/generate`` with ``keep_alive: 0``: unloads the model, recorded
  in ``unloads``.
* 404 ``{"error": "model 'x' not found"}`` for a model that was not pulled.

A chat loads its model; with ``gpu`` (a ``FakeComfy``), a loaded model holds
``model_bytes`` of that fake GPU's free VRAM until it is unloaded, so VRAM
admission tests see Ollama in the way. ``down()`` stops listening (connection
refused), ``up()`` listens again on the same port.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from fakehttp import ThreadedServer

MODEL = "gemma3:12b"
GB = 1 << 30
_SEGMENT_LINE = re.compile(r"#(\d+) ([\d.]+)-([\d.]+) s, section S\d+, (\w+)")
Answer = str | Callable[[dict[str, Any]], str]


class FakeOllama(ThreadedServer):
    """Ollama's REST API on ``url``; ``with FakeOllama() as fake:`` starts and stops it."""

    name = "fakeollama"

    def __init__(self, models: tuple[str, ...] = (MODEL,), *, gpu: Any = None, model_bytes: int = 9 * GB,
                 delay: float = 0.0) -> None:
        super().__init__()
        self.models = list(models)
        self.gpu, self.model_bytes, self.delay = gpu, model_bytes, delay
        # What tests observe (appended on the loop, read with the GIL's atomic list operations).
        self.chats: list[dict[str, Any]] = []
        self.unloads: list[str] = []
        self.calls: list[tuple[str, str, float]] = []  # method, path, wall-clock seconds
        self.loaded: dict[str, int] = {}
        self._script: deque[Answer] = deque()

    def down(self) -> None:
        """Stop listening and cut every connection: clients see "connection refused"."""
        self.go_down()

    # -- test controls ----------------------------------------------------------------------

    def script(self, *answers: Answer) -> None:
        """The next chats' contents, in order: a mode name, a literal string or a callable; then "good"."""
        self._script.extend(answers)

    def load(self, model: str = MODEL) -> None:
        """Hold ``model`` in memory as a chat would (and its bytes of the fake GPU)."""
        self._on_loop(self._load(model))

    # -- the API ----------------------------------------------------------------------------

    async def _chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.chats.append(body)
        model = str(body.get("model", ""))
        if model not in self.models:
            return _missing(model)
        started = time.monotonic_ns()
        if self.delay:
            await asyncio.sleep(self.delay)
        await self._load(model)
        answer = self._script.popleft() if self._script else "good"
        content = answer(body) if callable(answer) else _content(answer, body)
        return web.json_response({
            "model": model, "created_at": _now(), "message": {"role": "assistant", "content": content},
            "done": True, "done_reason": "stop", "total_duration": time.monotonic_ns() - started,
            "load_duration": 0, "prompt_eval_count": sum(len(m.get("content", "")) for m in body["messages"]) // 4,
            "eval_count": len(content) // 4})

    async def _generate(self, request: web.Request) -> web.Response:
        body = await request.json()
        model = str(body.get("model", ""))
        if model not in self.models:
            return _missing(model)
        if body.get("keep_alive") in (0, "0", "0s"):
            self.unloads.append(model)
            held = self.loaded.pop(model, 0)
            if self.gpu is not None:
                self.gpu.vram_free += held
            return web.json_response({"model": model, "created_at": _now(), "response": "", "done": True,
                                      "done_reason": "unload"})
        await self._load(model)
        return web.json_response({"model": model, "created_at": _now(), "response": "ok", "done": True,
                                  "done_reason": "stop"})

    async def _tags(self, _request: web.Request) -> web.Response:
        return web.json_response({"models": [_model_entry(m, self.model_bytes) for m in self.models]})

    async def _ps(self, _request: web.Request) -> web.Response:
        return web.json_response({"models": [
            {**_model_entry(m, held), "expires_at": "2099-01-01T00:00:00Z", "size_vram": held}
            for m, held in self.loaded.items()]})

    async def _version(self, _request: web.Request) -> web.Response:
        return web.json_response({"version": "0.12.0"})

    async def _load(self, model: str) -> None:
        if model in self.loaded:
            return
        held = self.model_bytes if self.gpu is not None else 0
        self.loaded[model] = held
        if self.gpu is not None:
            self.gpu.vram_free -= held

    # -- plumbing ---------------------------------------------------------------------------

    @web.middleware
    async def _record(self, request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
        self.calls.append((request.method, request.path, time.time()))
        return await handler(request)

    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._record])
        app.router.add_post("/api/chat", self._chat)
        app.router.add_post("/api/generate", self._generate)
        app.router.add_get("/api/tags", self._tags)
        app.router.add_get("/api/ps", self._ps)
        app.router.add_get("/api/version", self._version)
        return app


def planned_segments(body: dict[str, Any]) -> list[tuple[int, float, float, str]]:
    """The local plan as the brief in a chat request lists it: (index, start, end, mood)."""
    user = next((m["content"] for m in body.get("messages", []) if m.get("role") == "user"), "")
    return [(int(i), float(a), float(b), mood) for i, a, b, mood in _SEGMENT_LINE.findall(user)]


def good_ideas(body: dict[str, Any]) -> list[dict[str, Any]]:
    """One idea per planned segment, times as given: what a model that follows the brief answers."""
    return [{"index": i, "start": a, "end": b, "mood": mood, "theme": f"scene {i}",
             "visual_prompt": f"a dancer of fire in scene {i}, temple at dusk, glowing embers",
             "motion_prompt": f"slow push in on the dancer, embers drifting (scene {i})"}
            for i, a, b, mood in planned_segments(body)] or [
        {"index": 0, "visual_prompt": "a dancer of fire", "motion_prompt": "slow push in"}]


def offgrid_ideas(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The good ideas with times off the beats, before 0 and past the end, shuffled, one duplicated."""
    rng = random.Random(len(json.dumps(body.get("messages", []))))
    ideas = good_ideas(body)
    for idea in ideas:
        if "start" in idea:
            idea["start"] = round(idea["start"] + rng.uniform(-0.4, 0.4), 3)
            idea["end"] = round(idea["end"] + rng.uniform(-0.4, 0.4), 3)
    ideas[0]["start"] = -1.5
    ideas[-1]["end"] = ideas[-1].get("end", 0.0) + 30.0
    ideas.append(dict(ideas[len(ideas) // 2]))
    rng.shuffle(ideas)
    return ideas


def _content(mode: str, body: dict[str, Any]) -> str:
    if mode == "good":
        return json.dumps({"segments": good_ideas(body)})
    if mode == "offgrid":
        return json.dumps({"segments": offgrid_ideas(body)})
    if mode == "invalid":
        return "Here is a beautiful plan for your video: first, Shiva dances in the cosmos..."
    if mode == "schema":
        return json.dumps({"scenes": [{"description": "a dancer"}], "segments": []})
    return mode


def _missing(model: str) -> web.Response:
    return web.json_response({"error": f"model '{model}' not found"}, status=404)


def _model_entry(name: str, size: int) -> dict[str, Any]:
    family = name.split(":", 1)[0]
    return {"name": name, "model": name, "modified_at": _now(), "size": size,
            "digest": f"{abs(hash(name)):064x}"[:64],
            "details": {"parent_model": "", "format": "gguf", "family": family, "families": [family],
                        "parameter_size": "12.2B", "quantization_level": "Q4_K_M"}}


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")
