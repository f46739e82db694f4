"""A fake ComfyUI server for tests: ComfyUI's wire protocol, no models, no GPU.

How this works: ``FakeComfy`` runs an aiohttp app (ComfyUI's own stack) on a
private asyncio loop in a daemon thread, on a real socket. Routes, validation,
websocket messages and history entries follow PROTOCOL.md (ComfyUI v0.3.64 as
captured in tests/data/comfyui/, see PROTOCOL.md there), quirks included. A job computes nothing:
the worker walks the graph in dependency order, sleeps each node's share of
``job_seconds``, sends the messages a real node would send, and output nodes
write real PNG and video files.

Everything a killed ComfyUI loses (queue, history, cache, sockets, the prompt
counter) lives in ``_Process``, one per start; ``die()`` throws it away with its
connections, ``restart()`` makes a fresh one on the same port. Settings and the
counters tests read (``posted``, ``swaps``, ``timestamps``...) live on
``FakeComfy`` and survive restarts. Server state is only touched on the loop;
test controls hand work to it with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import heapq
import io
import json
import math
import mimetypes
import os
import random
import re
import socket
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from pathlib import Path, PurePath, PurePosixPath
from typing import Any, Literal

import aiohttp
import av
import numpy as np
from aiohttp import WSCloseCode, WSMsgType, web
from PIL import Image, PngImagePlugin

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "comfyui"
OBJECT_INFO_FILE = SAMPLES / "object_info_full_disable_api_nodes.json"

COMFYUI_VERSION = "0.3.64"
FEATURES = {"supports_preview_metadata": True, "max_upload_size": 104857600}
MODEL_FOLDERS = (
    "checkpoints", "configs", "loras", "vae", "text_encoders", "diffusion_models", "clip_vision",
    "style_models", "embeddings", "diffusers", "vae_approx", "controlnet", "gligen",
    "upscale_models", "custom_nodes", "hypernetworks", "photomaker", "classifiers",
    "model_patches", "audio_encoders",
)
SENSITIVE_EXTRA_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")  # never stored in history
MAX_HISTORY = 10_000  # ComfyUI's MAXIMUM_HISTORY_SIZE

# What a 24 GB card reports (4090: 24564 MiB) and, for --cpu, the captured RAM figures.
GPU_NAME = "cuda:0 NVIDIA GeForce RTX 4090 : cudaMallocAsync"
GPU_VRAM = (25_757_220_864, 25_262_292_992)
CPU_RAM = (25_276_510_208, 24_161_685_504)

# Inputs whose literal values name the model a job needs (for swap accounting).
LOADER_INPUTS = frozenset({
    "ckpt_name", "unet_name", "model", "model_name", "vae_name", "clip_name", "clip_name1",
    "clip_name2",
})
# Nodes that report a progress bar; every other node only has progress_state start/finish.
PROGRESS_NODES = frozenset({
    "KSampler", "KSamplerAdvanced", "SamplerCustom", "SamplerCustomAdvanced", "WanVideoSampler",
    "ImageUpscaleWithModel",
})
IMAGE_NODES = {"SaveImage": "output", "PreviewImage": "temp"}
VIDEO_NODES = {
    "SaveVideo": "mp4", "SaveWEBM": "webm", "VHS_VideoCombine": "mp4",
    "SaveAnimatedWEBP": "webp", "SaveAnimatedPNG": "png",
}
# (class, input) -> models folder whose names fill that combo in /object_info.
MODEL_COMBOS = {
    ("CheckpointLoaderSimple", "ckpt_name"): "checkpoints",
    ("CheckpointLoader", "ckpt_name"): "checkpoints",
    ("ImageOnlyCheckpointLoader", "ckpt_name"): "checkpoints",
    ("unCLIPCheckpointLoader", "ckpt_name"): "checkpoints",
    ("UNETLoader", "unet_name"): "diffusion_models",
    ("VAELoader", "vae_name"): "vae",
    ("CLIPLoader", "clip_name"): "text_encoders",
    ("DualCLIPLoader", "clip_name1"): "text_encoders",
    ("DualCLIPLoader", "clip_name2"): "text_encoders",
    ("TripleCLIPLoader", "clip_name1"): "text_encoders",
    ("TripleCLIPLoader", "clip_name2"): "text_encoders",
    ("TripleCLIPLoader", "clip_name3"): "text_encoders",
    ("CLIPVisionLoader", "clip_name"): "clip_vision",
    ("UpscaleModelLoader", "model_name"): "upscale_models",
    ("LoraLoader", "lora_name"): "loras",
    ("LoraLoaderModelOnly", "lora_name"): "loras",
    ("WanVideoModelLoader", "model"): "diffusion_models",
    ("WanVideoVAELoader", "model_name"): "vae",
    ("LoadWanVideoT5TextEncoder", "model_name"): "text_encoders",
}
# Nodes with VALIDATE_INPUTS: ComfyUI skips the combo/min/max checks for these inputs.
CUSTOM_VALIDATED = {"LoadImage": ("image",), "LoadImageMask": ("image",)}
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})

DEFAULT_IMAGE_SIZE = (64, 64)
DEFAULT_VIDEO_SIZE = (64, 48)
DEFAULT_FRAMES = 16  # a short clip: enough frames to see motion, cheap to encode
DEFAULT_FPS = 16.0  # Wan 2.1's native rate
DEFAULT_STEPS = 20  # KSampler's default steps
UPSCALE_TILE = 512 - 32  # ImageUpscaleWithModel tiles 512 px with a 32 px overlap

VideoMode = Literal["good", "black", "frozen", "flash"]


def _custom_node(name: str, required: dict, optional: dict | None = None,
                 output: tuple[str, ...] = (), output_node: bool = False,
                 module: str = "custom_nodes.ComfyUI-WanVideoWrapper") -> dict[str, Any]:
    inputs = {"required": required, **({"optional": optional} if optional else {})}
    return {
        "input": inputs, "input_order": {k: list(v) for k, v in inputs.items()},
        "output": list(output), "output_is_list": [False] * len(output),
        "output_name": list(output), "name": name, "display_name": name, "description": "",
        "python_module": module, "category": "fake custom nodes", "output_node": output_node,
    }


# Custom nodes Tandava's workflows use but the captured server did not have. Only the
# inputs the fake reads are declared; others pass through unchecked, as extra inputs do.
CUSTOM_NODES = {
    "VHS_VideoCombine": _custom_node(
        "VHS_VideoCombine",
        {"images": ["IMAGE"], "frame_rate": ["FLOAT", {"default": 8, "min": 1, "step": 1}],
         "loop_count": ["INT", {"default": 0, "min": 0, "max": 100, "step": 1}],
         "filename_prefix": ["STRING", {"default": "AnimateDiff"}],
         "pingpong": ["BOOLEAN", {"default": False}], "save_output": ["BOOLEAN", {"default": True}]},
        {"audio": ["AUDIO"], "meta_batch": ["VHS_BatchManager"], "vae": ["VAE"]},
        ("VHS_FILENAMES",), output_node=True, module="custom_nodes.ComfyUI-VideoHelperSuite"),
    "WanVideoModelLoader": _custom_node(
        "WanVideoModelLoader", {"model": [[]]}, output=("WANVIDEOMODEL",)),
    "WanVideoVAELoader": _custom_node(
        "WanVideoVAELoader", {"model_name": [[]]}, output=("WANVAE",)),
    "LoadWanVideoT5TextEncoder": _custom_node(
        "LoadWanVideoT5TextEncoder", {"model_name": [[]]}, output=("WANTEXTENCODER",)),
    "WanVideoTextEncode": _custom_node(
        "WanVideoTextEncode",
        {"positive_prompt": ["STRING", {"multiline": True}],
         "negative_prompt": ["STRING", {"multiline": True}]},
        {"t5": ["WANTEXTENCODER"]}, ("WANVIDEOTEXTEMBEDS",)),
    "WanVideoImageToVideoEncode": _custom_node(
        "WanVideoImageToVideoEncode",
        {"width": ["INT", {"default": 832, "min": 16, "max": 8096, "step": 8}],
         "height": ["INT", {"default": 480, "min": 16, "max": 8096, "step": 8}],
         "num_frames": ["INT", {"default": 81, "min": 1, "max": 10000, "step": 4}]},
        {"vae": ["WANVAE"], "start_image": ["IMAGE"], "end_image": ["IMAGE"],
         "clip_embeds": ["WANVIDIMAGE_CLIPEMBEDS"]},
        ("WANVIDIMAGE_EMBEDS",)),
    "WanVideoSampler": _custom_node(
        "WanVideoSampler",
        {"model": ["WANVIDEOMODEL"], "image_embeds": ["WANVIDIMAGE_EMBEDS"],
         "steps": ["INT", {"default": 30, "min": 1}],
         "cfg": ["FLOAT", {"default": 6.0, "min": 0.0, "max": 30.0, "step": 0.01}],
         "shift": ["FLOAT", {"default": 5.0, "min": 0.0, "max": 1000.0, "step": 0.01}],
         "seed": ["INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF}]},
        {"text_embeds": ["WANVIDEOTEXTEMBEDS"], "samples": ["LATENT"]}, ("LATENT",)),
    "WanVideoDecode": _custom_node(
        "WanVideoDecode", {"vae": ["WANVAE"], "samples": ["LATENT"]}, output=("IMAGE",)),
}


@lru_cache(maxsize=1)
def _captured_object_info() -> dict[str, Any]:
    """The captured /object_info (read once; callers copy what they change)."""
    return json.loads(OBJECT_INFO_FILE.read_text(encoding="utf-8"))


def _now_ms() -> int:
    return int(time.time() * 1000)


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[1], int)


def _type_name(exc: BaseException) -> str:
    """ComfyUI's full_type_name: builtins bare, everything else module-qualified."""
    kind = type(exc)
    name = kind.__qualname__
    return name if kind.__module__ == "builtins" else f"{kind.__module__}.{name}"


def _error(kind: str, message: str, details: str = "", extra: dict | None = None) -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": extra or {}}


def _inside(base: Path, target: Path) -> bool:
    return target.resolve().is_relative_to(base.resolve())


# ---------------------------------------------------------------------------------------------
# Validation: a port of execution.validate_prompt / validate_inputs (v0.3.64), messages verbatim.


def validate_prompt(prompt: Any, info: dict[str, Any], partial: list[str] | None,
                    image_exists: Callable[[str], bool]) -> tuple[bool, dict | None, list[str], dict]:
    """ComfyUI's answer to a graph: (valid, error, outputs to run, node_errors).

    Malformed bodies (a prompt that is not a dict of dicts) raise, which the
    route turns into a 500 as the real server does.
    """
    outputs = []
    for node_id in prompt:
        node = prompt[node_id]
        if "class_type" not in node:
            return False, _error("invalid_prompt", "Cannot execute because a node is missing the "
                                 "class_type property.", f"Node ID '#{node_id}'"), [], {}
        class_type = node["class_type"]
        if class_type not in info:
            return False, _error("invalid_prompt", f"Cannot execute because node {class_type} does "
                                 "not exist.", f"Node ID '#{node_id}'"), [], {}
        if info[class_type].get("output_node") is True and (partial is None or node_id in partial):
            outputs.append(node_id)
    if not outputs:
        return False, _error("prompt_no_outputs", "Prompt has no outputs"), [], {}

    validated: dict[str, tuple[bool, list]] = {}
    good, failed, node_errors = [], [], {}
    for out in outputs:
        try:
            valid, reasons = _validate_inputs(prompt, out, validated, info, image_exists)
        except Exception as exc:
            valid, reasons = False, [_error(
                "exception_during_validation", "Exception when validating node", str(exc),
                {"exception_type": _type_name(exc),
                 "traceback": traceback.format_tb(exc.__traceback__)})]
            validated[out] = (False, reasons)
        if valid:
            good.append(out)
            continue
        failed.append(reasons)
        # As in ComfyUI, every invalid node seen so far gets this output as a dependent,
        # related or not; downstream nodes of a bad node carry no errors of their own.
        for node_id, (ok, why) in validated.items():
            if not ok and why:
                entry = node_errors.setdefault(node_id, {
                    "errors": why, "dependent_outputs": [],
                    "class_type": prompt[node_id]["class_type"]})
                entry["dependent_outputs"].append(out)
    if not good:
        details = "\n".join(f"{e['message']}: {e['details']}" for reasons in failed for e in reasons)
        return False, _error("prompt_outputs_failed_validation", "Prompt outputs failed validation",
                             details), [], node_errors
    return True, None, good, node_errors


def _validate_inputs(prompt: dict, node_id: str, validated: dict, info: dict,
                     image_exists: Callable[[str], bool]) -> tuple[bool, list]:
    if node_id in validated:
        return validated[node_id]
    inputs = prompt[node_id]["inputs"]
    class_type = prompt[node_id]["class_type"]
    declared = info[class_type]["input"]
    custom = CUSTOM_VALIDATED.get(class_type, ())
    errors: list[dict] = []
    valid = True
    for section in ("required", "optional"):
        for name, entry in (declared.get(section) or {}).items():
            input_type = entry[0]
            extra = entry[1] if len(entry) > 1 else {}
            config = [input_type, extra]
            if name not in inputs:
                if section == "required":
                    errors.append(_error("required_input_missing", "Required input is missing", name,
                                         {"input_name": name}))
                continue
            value = inputs[name]
            if isinstance(value, list):
                if len(value) != 2:
                    errors.append(_error(
                        "bad_linked_input",
                        "Bad linked input, must be a length-2 list of [node_id, slot_index]", name,
                        {"input_name": name, "input_config": config, "received_value": value}))
                    continue
                source = value[0]
                received = info[prompt[source]["class_type"]]["output"][value[1]]
                if not _types_match(received, input_type):
                    errors.append(_error(
                        "return_type_mismatch", "Return type mismatch between linked nodes",
                        f"{name}, received_type({received}) mismatch input_type({input_type})",
                        {"input_name": name, "input_config": config, "received_type": received,
                         "linked_node": value}))
                    continue
                try:
                    if not _validate_inputs(prompt, source, validated, info, image_exists)[0]:
                        valid = False
                except Exception as exc:
                    valid = False
                    validated[source] = (False, [_error(
                        "exception_during_inner_validation", "Exception when validating inner node",
                        str(exc), {"input_name": name, "input_config": config,
                                   "exception_message": str(exc), "exception_type": _type_name(exc),
                                   "traceback": traceback.format_tb(exc.__traceback__),
                                   "linked_node": value})])
                continue
            error = _check_literal(inputs, name, input_type, extra, config, name in custom)
            if error:
                errors.append(error)
    for name in custom:
        value = inputs.get(name)
        if value is not None and not isinstance(value, list) and not image_exists(str(value)):
            errors.append(_error("custom_validation_failed", "Custom validation failed for node",
                                 f"{name} - Invalid image file: {value}", {"input_name": name}))
    result = (not errors and valid, errors)
    validated[node_id] = result
    return result


def _check_literal(inputs: dict, name: str, input_type: Any, extra: dict, config: list,
                   custom: bool) -> dict | None:
    """Convert a widget value in place like ComfyUI and return its error, if any."""
    value = inputs[name]
    if isinstance(value, dict) and "__value__" in value:
        value = inputs[name] = value["__value__"]
    convert = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}.get(
        input_type if isinstance(input_type, str) else "")
    try:
        if convert:
            value = inputs[name] = convert(value)
    except Exception as exc:
        return _error("invalid_input_type",
                      f"Failed to convert an input value to a {input_type} value",
                      f"{name}, {value}, {exc}",
                      {"input_name": name, "input_config": config, "received_value": value,
                       "exception_message": str(exc)})
    if custom:
        return None
    if "min" in extra and value < extra["min"]:
        return _error("value_smaller_than_min", f"Value {value} smaller than min of {extra['min']}",
                      name, {"input_name": name, "input_config": config, "received_value": value})
    if "max" in extra and value > extra["max"]:
        return _error("value_bigger_than_max", f"Value {value} bigger than max of {extra['max']}",
                      name, {"input_name": name, "input_config": config, "received_value": value})
    # Only old-style combos are checked here; V3 ["COMBO", {"options": ...}] fail at run time.
    if isinstance(input_type, list) and value not in input_type:
        listed = f"(list of length {len(input_type)})" if len(input_type) > 20 else str(input_type)
        return _error("value_not_in_list", "Value not in list", f"{name}: '{value}' not in {listed}",
                      {"input_name": name, "input_config": None if len(input_type) > 20 else config,
                       "received_value": value})
    return None


def _types_match(received: Any, wanted: Any) -> bool:
    """ComfyUI's validate_node_input: equal, '*', or overlapping comma-separated unions."""
    if received == wanted:
        return True
    if not isinstance(received, str) or not isinstance(wanted, str):
        return False
    got = {t.strip() for t in received.split(",")}
    need = {t.strip() for t in wanted.split(",")}
    return "*" in got or "*" in need or bool(got & need)


# ---------------------------------------------------------------------------------------------
# Graph helpers: cache signatures, execution order, and what the outputs should look like.

# When the data path says nothing, these nodes anywhere in the graph give size and frame count.
_SIZE_NODES = ("EmptyImage", "EmptySD3LatentImage", "EmptyLatentImage", "WanImageToVideo",
               "WanVideoImageToVideoEncode")
_FRAME_INPUTS = {"WanImageToVideo": "length", "WanVideoImageToVideoEncode": "num_frames",
                 "RepeatImageBatch": "amount"}
# Inputs followed upstream to find a node's size, frame count and fps, in order of preference.
_DATA_INPUTS = ("images", "image", "pixels", "samples", "latent_image", "latent", "video",
                "image_embeds", "start_image", "image1")


def _links(node: dict) -> dict[str, str]:
    return {k: str(v[0]) for k, v in node.get("inputs", {}).items() if _is_link(v)}


def _upstream(graph: dict, node_id: str) -> Iterator[str]:
    """Node ids from ``node_id`` up the main data path (images, then samples, ...)."""
    seen: set[str] = set()
    current: str | None = node_id
    while current in graph and current not in seen:
        seen.add(current)
        yield current
        links = _links(graph[current])
        preferred = [links[k] for k in _DATA_INPUTS if k in links]
        current = (preferred or list(links.values()) or [None])[0]


def _literal_int(inputs: dict, key: str) -> int | None:
    value = inputs.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _batch(graph: dict, node_id: str, depth: int = 0) -> int | None:
    """How many images (frames) flow out of ``node_id``, when the graph says so."""
    node = graph.get(node_id)
    if node is None or depth > 200:
        return None
    inputs = node.get("inputs", {})
    if node.get("class_type") == "ImageBatch":
        parts = [_batch(graph, _links(node)[k], depth + 1) or 1 for k in ("image1", "image2")
                 if k in _links(node)]
        return sum(parts) or None
    for key in ("length", "num_frames", "batch_size"):
        if _literal_int(inputs, key):
            return _literal_int(inputs, key)
    upstream = list(_upstream(graph, node_id))[1:2]
    inner = _batch(graph, upstream[0], depth + 1) if upstream else None
    amount = _literal_int(inputs, "amount") if node.get("class_type") == "RepeatImageBatch" else None
    return amount * (inner or 1) if amount else inner


def _size(graph: dict, node_id: str,
          load: Callable[[str], Image.Image | None]) -> tuple[int, int] | None:
    for nid in _upstream(graph, node_id):
        inputs = graph[nid].get("inputs", {})
        width, height = _literal_int(inputs, "width"), _literal_int(inputs, "height")
        if width and height:
            return width, height
        if graph[nid].get("class_type") in CUSTOM_VALIDATED and isinstance(inputs.get("image"), str):
            image = load(inputs["image"])
            if image is not None:
                return image.size
    for node in graph.values():
        inputs = node.get("inputs", {})
        width, height = _literal_int(inputs, "width"), _literal_int(inputs, "height")
        if node.get("class_type") in _SIZE_NODES and width and height:
            return width, height
    return None


def _frame_count(graph: dict, node_id: str) -> int:
    """Frames of a clip: from its data path, else a Wan/RepeatImageBatch node, else 16."""
    found = _batch(graph, node_id)
    for node in graph.values() if not found else ():
        key = _FRAME_INPUTS.get(node.get("class_type", ""))
        found = _literal_int(node.get("inputs", {}), key) if key else None
        if found:
            break
    return found or DEFAULT_FRAMES


def _fps(graph: dict, node_id: str) -> float:
    for nid in _upstream(graph, node_id):
        inputs = graph[nid].get("inputs", {})
        for key in ("fps", "frame_rate"):
            if isinstance(inputs.get(key), int | float) and inputs[key] > 0:
                return float(inputs[key])
    return DEFAULT_FPS


def _seed(graph: dict) -> int:
    for node in graph.values():
        for key in ("seed", "noise_seed"):
            value = _literal_int(node.get("inputs", {}), key)
            if value is not None:
                return abs(value)
    return 0


def _model_of(graph: dict) -> tuple[Any, ...]:
    """The model a job needs: literal loader inputs in node order (empty: no model)."""
    return tuple(value for node in graph.values() for name, value in node.get("inputs", {}).items()
                 if name in LOADER_INPUTS and not isinstance(value, list))


def _signatures(graph: dict, is_changed: Callable[[dict], Any]) -> dict[str, str]:
    """Cache keys: a node's class, inputs and (recursively) its ancestors' keys, not its id."""
    memo: dict[str, str] = {}

    def key(node_id: str, path: frozenset[str]) -> str:
        if node_id in memo:
            return memo[node_id]
        node = graph.get(node_id)
        if node is None or node_id in path:
            return f"missing:{node_id}"
        parts = [[name, "link", key(str(v[0]), path | {node_id}), v[1]] if _is_link(v) else [name, v]
                 for name, v in sorted(node.get("inputs", {}).items())]
        raw = json.dumps([node.get("class_type"), is_changed(node), parts], sort_keys=True,
                         default=str)
        memo[node_id] = hashlib.sha256(raw.encode("utf-8")).hexdigest()
        return memo[node_id]

    return {node_id: key(node_id, frozenset()) for node_id in graph}


def _plan(graph: dict, outputs: list[str], cached: set[str]) -> list[str]:
    """Nodes to visit in dependency order; cached nodes stop the walk (output ones are kept)."""
    order: list[str] = []
    seen: set[str] = set()

    def visit(node_id: str) -> None:
        if node_id in seen or node_id not in graph:
            return
        seen.add(node_id)
        if node_id not in cached:
            for source in _links(graph[node_id]).values():
                visit(source)
        if node_id not in cached or node_id in outputs:
            order.append(node_id)

    for out in outputs:
        visit(out)
    return order


# ---------------------------------------------------------------------------------------------
# Media: default pictures and clips.


def gradient_image(width: int, height: int, seed: int) -> Image.Image:
    """A colourful gradient with noise; different seeds look clearly different."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    u, v = x / max(1, width - 1), y / max(1, height - 1)
    freq, phase = rng.uniform(0.5, 2.5, 3), rng.uniform(0, 2 * np.pi, 3)
    angle = rng.uniform(0, np.pi, 3)
    waves = [2 * np.pi * freq[c] * (u * np.cos(angle[c]) + v * np.sin(angle[c])) + phase[c]
             for c in range(3)]
    rgb = np.stack([0.5 + 0.5 * np.sin(w) for w in waves], axis=-1)
    noisy = rgb * 255 + rng.normal(0, 10, rgb.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")


def pan_zoom_frames(start: Image.Image, count: int, width: int, height: int) -> np.ndarray:
    """``count`` frames of ``start`` slowly zooming in while panning: a clip with motion."""
    bilinear = Image.Resampling.BILINEAR
    base = start.convert("RGB").resize((int(width * 1.25), int(height * 1.25)), bilinear)
    frames = np.empty((count, height, width, 3), np.uint8)
    for i in range(count):
        t = i / max(1, count - 1)
        box_w, box_h = base.width / (1 + 0.2 * t), base.height / (1 + 0.2 * t)
        left, top = (base.width - box_w) * t, (base.height - box_h) * t
        crop = base.resize((width, height), bilinear, box=(left, top, left + box_w, top + box_h))
        frames[i] = np.asarray(crop)
    return frames


def spoil_frames(frames: np.ndarray, mode: VideoMode) -> np.ndarray:
    """Turn a good clip into the bad kind a quality gate must catch."""
    if mode == "black":
        return np.zeros_like(frames)
    if mode == "frozen":
        return np.repeat(frames[:1], len(frames), axis=0)
    if mode == "flash":
        spoiled = frames.copy()
        middle = len(frames) // 2
        spoiled[max(0, middle - 1): middle + 2] = 255
        return spoiled
    return frames


def write_video(path: Path, frames: np.ndarray, fps: float) -> None:
    """Encode rgb24 frames with PyAV: H.264 in .mp4, VP9 in .webm, animated PIL otherwise."""
    if path.suffix in (".webp", ".png"):
        images = [Image.fromarray(f) for f in frames]
        images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
        return
    codec = "libvpx-vp9" if path.suffix == ".webm" else "libx264"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = ({"preset": "ultrafast", "crf": "20"} if codec == "libx264"
                          else {"deadline": "realtime", "cpu-used": "8"})
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))


def _save_png(image: Image.Image, path: Path, graph: dict, extra: dict, compress_level: int) -> None:
    """PNG with ComfyUI's text chunks: the graph and one per extra_pnginfo key."""
    info = PngImagePlugin.PngInfo()
    info.add_text("prompt", json.dumps(graph))
    for key, value in (extra.get("extra_pnginfo") or {}).items():
        info.add_text(key, json.dumps(value))
    image.save(path, pnginfo=info, compress_level=compress_level)


def save_path(prefix: str, base: Path) -> tuple[Path, str, int, str]:
    """folder_paths.get_save_image_path: folder, name, next counter from disk, subfolder."""
    normalized = PurePosixPath(os.path.normpath(prefix).replace("\\", "/"))
    subfolder = "" if str(normalized.parent) == "." else str(normalized.parent)
    name = normalized.name
    folder = base / subfolder
    if not _inside(base, folder):
        raise _NodeFailed("Exception", "**** ERROR: Saving image outside the output folder is not "
                          f"allowed.\n full_output_folder: {folder.resolve()}\n"
                          f"         output_dir: {base}")
    folder.mkdir(parents=True, exist_ok=True)
    counters = [0]
    for existing in folder.iterdir():
        head, digits = existing.name[:len(name) + 1], existing.name[len(name) + 1:].split("_")[0]
        if os.path.normcase(head[:-1]) == os.path.normcase(name) and head.endswith("_"):
            counters.append(int(digits) if digits.isdigit() else 0)
    return folder, name, max(counters) + 1, subfolder


def _vhs_counter(folder: Path, name: str) -> int:
    """VideoHelperSuite numbers ``name_00001.mp4`` (no trailing underscore) by its own regex."""
    pattern = re.compile(rf"{re.escape(name)}_(\d+)\D*\..+", re.IGNORECASE)
    found = [int(m.group(1)) for f in folder.iterdir() if (m := pattern.fullmatch(f.name))]
    return max(found, default=0) + 1


class _NodeFailed(Exception):
    """A node raised at run time: becomes execution_error."""

    def __init__(self, exception_type: str, message: str) -> None:
        super().__init__(message)
        self.exception_type, self.message = exception_type, message


class _Interrupted(Exception):
    """POST /interrupt reached a check point: becomes execution_interrupted."""


@dataclass
class _Failure:
    node_class: str | None
    exception_type: str
    message: str


# ---------------------------------------------------------------------------------------------


class FakeComfy:
    """A ComfyUI v0.3.64 look-alike on a real socket, for tests and benchmarks.

    ``with FakeComfy(tmp_path / "comfy") as fake:`` serves at ``fake.url`` with
    ``input/``, ``output/`` and ``temp/`` under the root. Settings may be changed
    while it runs; they apply from the next job.
    """

    def __init__(
        self, root: Path | str, *, host: str = "127.0.0.1", port: int = 0,
        object_info: dict[str, dict | None] | None = None,
        models: dict[str, list[str]] | None = None,
        job_seconds: float = 0.05, node_seconds: dict[str, float] | None = None,
        swap_seconds: float = 0.0, model_vram: int = 0, cpu: bool = False,
        vram_total: int | None = None, vram_free: int | None = None,
        video_mode: VideoMode = "good",
        image_maker: Callable[[dict, str], Image.Image | list[Image.Image]] | None = None,
        video_maker: Callable[[dict, str, Path], None] | None = None,
        vhs_reports_gifs: bool = False, argv: list[str] | None = None,
        input_dir: Path | None = None, output_dir: Path | None = None, temp_dir: Path | None = None,
    ) -> None:
        self.root = Path(root)
        self.input_dir = Path(input_dir or self.root / "input")
        self.output_dir = Path(output_dir or self.root / "output")
        self.temp_dir = Path(temp_dir or self.root / "temp")
        self.host, self.port = host, port
        self.object_info_overrides = dict(object_info or {})
        self.models = {k: list(v) for k, v in (models or {}).items()}
        self.job_seconds, self.node_seconds = job_seconds, dict(node_seconds or {})
        self.swap_seconds, self.model_vram, self.cpu = swap_seconds, model_vram, cpu
        total, free = CPU_RAM if cpu else GPU_VRAM
        self.vram_total = total if vram_total is None else vram_total
        self.vram_free = free if vram_free is None else vram_free
        self.video_mode: VideoMode = video_mode
        self.image_maker, self.video_maker = image_maker, video_maker
        self.vhs_reports_gifs = vhs_reports_gifs
        self.argv = argv or ["main.py", *(["--cpu"] if cpu else [])]
        self.progress_nodes = set(PROGRESS_NODES)
        self.default_steps = DEFAULT_STEPS
        # What tests observe; kept across restarts.
        self.posted: list[str] = []
        self.executed_count = 0
        self.swaps = 0
        self.loaded_model: tuple[Any, ...] | None = None
        self.events: list[dict[str, Any]] = []
        self.timestamps: dict[str, dict[str, int]] = {}
        self._failures: list[_Failure] = []
        self._loaded_bytes = 0
        self._hung = False
        self._process: _Process | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "", "::") else self.host
        return f"http://{host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self) -> FakeComfy:
        """Listen and serve; temp/ is wiped as at every ComfyUI start."""
        if self._thread is not None:
            raise RuntimeError("FakeComfy is already running")
        for folder in (self.input_dir, self.output_dir, self.temp_dir):
            folder.mkdir(parents=True, exist_ok=True)
        for leftover in self.temp_dir.iterdir():
            _remove(leftover)
        listener = _listen(self.host, self.port)
        self.port = listener.getsockname()[1]
        process = _Process(self, listener)
        thread = threading.Thread(target=process.run, name=f"fakecomfy-{self.port}", daemon=True)
        thread.start()
        if not process.ready.wait(10) or process.startup_error is not None:
            listener.close()
            raise RuntimeError(f"FakeComfy did not start: {process.startup_error}")
        self._process, self._thread = process, thread
        return self

    def stop(self) -> None:
        """Shut down cleanly: websockets get a close frame, the port is released."""
        self._shutdown("graceful")

    def die(self) -> None:
        """Like kill -9: connections cut without a close frame, queue/history/cache gone."""
        self._shutdown("abrupt")

    def restart(self) -> None:
        """Start again on the same port with an empty memory (dies first if running)."""
        if self._thread is not None:
            self.die()
        self.start()

    def hang(self) -> None:
        """Keep accepting connections but answer nothing and send nothing until ``unhang``."""
        self._hung = True
        if self._process is not None:
            self._process.loop.call_soon_threadsafe(self._process.serving.clear)

    def unhang(self) -> None:
        """Serve again; requests that waited meanwhile are answered now."""
        self._hung = False
        if self._process is not None:
            self._process.loop.call_soon_threadsafe(self._process.serving.set)

    def _shutdown(self, mode: str) -> None:
        process, thread = self._process, self._thread
        self._process, self._thread = None, None
        if process is None or thread is None or not thread.is_alive():
            return
        with contextlib.suppress(RuntimeError):  # the loop may have closed on its own
            process.loop.call_soon_threadsafe(_resolve, process.stopping, mode)
        # Returns only once every socket is closed: a thread left running would close them
        # during a later test, or leave them to the garbage collector (a busy machine is slow).
        thread.join(60)
        if thread.is_alive():
            raise RuntimeError(f"FakeComfy on port {self.port} did not stop within 60 s")

    def __enter__(self) -> FakeComfy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- test controls ----------------------------------------------------------------------

    def fail_next(self, node_class: str | None = None, exception_type: str = "RuntimeError",
                  message: str = "boom") -> None:
        """Make the next job that runs a ``node_class`` node (any node if None) fail there."""
        self._failures.append(_Failure(node_class, exception_type, message))

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Block until nothing is queued or running."""
        deadline = time.monotonic() + timeout
        while self._process is not None and self._process.busy:
            if time.monotonic() > deadline:
                raise TimeoutError("FakeComfy still busy")
            time.sleep(0.005)

    def object_info(self) -> dict[str, Any]:
        """/object_info as served now: captured nodes + custom + overrides, live model lists."""
        info = dict(_captured_object_info())
        info.update(CUSTOM_NODES)
        for name, spec in self.object_info_overrides.items():
            if spec is None:
                info.pop(name, None)
            else:
                info[name] = spec
        for (class_type, field), folder in MODEL_COMBOS.items():
            if class_type in info:
                names = sorted(self.models.get(folder, []))
                if class_type == "VAELoader":
                    names.append("pixel_space")  # VAELoader always offers it
                info[class_type] = _with_options(info[class_type], field, names)
        images = sorted(p.name for p in self.input_dir.glob("*")
                        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        for class_type in CUSTOM_VALIDATED:
            if class_type in info:
                info[class_type] = _with_options(info[class_type], "image", images)
        return info

    # -- model memory (touched from the loop) -----------------------------------------------

    def _load(self, model: tuple[Any, ...]) -> None:
        if self.loaded_model is None:
            self._loaded_bytes = self.model_vram
            self.vram_free -= self._loaded_bytes
        self.loaded_model = model

    def _unload(self) -> None:
        if self.loaded_model is not None:
            self.vram_free += self._loaded_bytes
        self.loaded_model, self._loaded_bytes = None, 0


def _resolve(future: asyncio.Future[str], value: str) -> None:
    if not future.done():
        future.set_result(value)


def _with_options(spec: dict, field: str, options: list[str]) -> dict:
    """A copy of a node's info whose combo ``field`` lists ``options`` (old or V3 form)."""
    spec = copy.deepcopy(spec)
    for section in ("required", "optional"):
        entry = (spec["input"].get(section) or {}).get(field)
        if entry is None:
            continue
        if isinstance(entry[0], list):
            entry[0] = list(options)
        elif entry[0] == "COMBO":
            entry[1]["options"] = list(options)
    return spec


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if os.name != "nt":  # on Windows SO_REUSEADDR would let two servers share a port
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        for child in path.iterdir():
            _remove(child)
        path.rmdir()
    else:
        path.unlink()


class _Job:
    """One prompt's run: its history messages, progress_state and outputs."""

    def __init__(self, process: _Process, prompt_id: str, client_id: str | None) -> None:
        self.process, self.prompt_id, self.client_id = process, prompt_id, client_id
        self.messages: list[list[Any]] = []
        self.nodes: dict[str, dict[str, Any]] = {}
        self.outputs: dict[str, dict] = {}
        self.meta: dict[str, dict] = {}
        self.done: list[str] = []

    def send(self, kind: str, data: dict, broadcast: bool = False) -> None:
        """To the prompt's client; ``broadcast`` messages go to everyone when it has none."""
        if self.client_id is not None or broadcast:
            self.process.emit(kind, data, self.client_id)

    def message(self, kind: str, data: dict, broadcast: bool = False) -> None:
        """A message that is also kept in the history entry's status.messages."""
        self.messages.append([kind, data])
        self.send(kind, data, broadcast)

    def progress(self, node_id: str, value: float, maximum: float, state: str) -> None:
        self.nodes[node_id] = {
            "value": value, "max": maximum, "state": state, "node_id": node_id,
            "prompt_id": self.prompt_id, "display_node_id": node_id, "parent_node_id": None,
            "real_node_id": node_id}
        nodes = {k: dict(v) for k, v in self.nodes.items()}
        self.send("progress_state", {"prompt_id": self.prompt_id, "nodes": nodes}, broadcast=True)

    def finish(self, node_id: str) -> None:
        maximum = self.nodes[node_id]["max"]
        self.progress(node_id, maximum, maximum, "finished")

    def executed(self, node_id: str, ui: dict) -> None:
        self.outputs[node_id] = ui
        self.meta[node_id] = {"node_id": node_id, "display_node": node_id, "parent_node": None,
                              "real_node_id": node_id}
        self.send("executed", {"node": node_id, "display_node": node_id, "output": ui,
                               "prompt_id": self.prompt_id})


class _Process:
    """One lifetime of the server: everything a kill -9 loses."""

    def __init__(self, fake: FakeComfy, listener: socket.socket) -> None:
        self.fake, self.listener = fake, listener
        self.ready = threading.Event()
        self.startup_error: BaseException | None = None
        self.loop: asyncio.AbstractEventLoop
        self.serving: asyncio.Event
        self.stopping: asyncio.Future[str]
        self.sockets: dict[str, web.WebSocketResponse] = {}
        self.all_sockets: set[web.WebSocketResponse] = set()
        self.pending: list[list[Any]] = []
        self.running_item: list[Any] | None = None
        self.history: dict[str, dict] = {}
        self.cache: dict[str, dict | None] = {}
        self.flags: dict[str, Any] = {}
        self.counter = 0
        self.interrupted = False
        self.client_id: str | None = None
        self.last_node: str | None = None

    @property
    def busy(self) -> bool:
        return bool(self.pending) or self.running_item is not None

    def run(self) -> None:
        # Never debug: a debug loop makes aiohttp put tracebacks into its 500 bodies.
        asyncio.run(self._main(), debug=False)

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.serving, self.wake = asyncio.Event(), asyncio.Event()
        self.outbox: asyncio.Queue[tuple[str, dict, str | None]] = asyncio.Queue()
        self.stopping = self.loop.create_future()
        if not self.fake._hung:
            self.serving.set()
        try:
            runner = web.AppRunner(self._app(), access_log=None, shutdown_timeout=0.5)
            await runner.setup()
            await web.SockSite(runner, self.listener).start()
        except Exception as exc:
            self.startup_error = exc
            self.ready.set()
            return
        tasks = [asyncio.create_task(self._work()), asyncio.create_task(self._publish())]
        self.ready.set()
        mode = await self.stopping
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for site in list(runner.sites):
            await site.stop()  # stop listening first: a reconnect is refused
        # A connection the kernel accepted just before is handed to the server a few loop
        # turns later; closing before then left its socket to the garbage collector.
        for _ in range(5):
            await asyncio.sleep(0)
        if mode == "abrupt":
            for handler in runner.server.connections if runner.server else []:
                if handler.transport is not None:
                    handler.transport.abort()  # no close frame: the peer sees 1006
        else:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.gather(
                    *(ws.close(code=WSCloseCode.GOING_AWAY) for ws in list(self.all_sockets)),
                    return_exceptions=True), 2)
        self.serving.set()  # let requests parked by hang() finish before the runner waits on them
        await runner.cleanup()
        self.fake._unload()

    def _app(self) -> web.Application:
        @web.middleware
        async def gate(request: web.Request, handler: Any) -> web.StreamResponse:
            await self.serving.wait()  # hang(): the connection is accepted, nothing is answered
            return await handler(request)

        app = web.Application(middlewares=[gate], client_max_size=FEATURES["max_upload_size"])
        routes = [
            ("GET", "/", self.index), ("GET", "/ws", self.websocket),
            ("GET", "/embeddings", self.embeddings), ("GET", "/extensions", self.embeddings),
            ("GET", "/models", self.model_folders), ("GET", "/models/{folder}", self.model_files),
            ("POST", "/upload/image", self.upload_image), ("GET", "/view", self.view),
            ("GET", "/system_stats", self.system_stats), ("GET", "/features", self.features),
            ("GET", "/prompt", self.get_prompt), ("POST", "/prompt", self.post_prompt),
            ("GET", "/object_info", self.object_info),
            ("GET", "/object_info/{node_class}", self.object_info_one),
            ("GET", "/history", self.get_history), ("GET", "/history/{prompt_id}", self.history_one),
            ("POST", "/history", self.post_history), ("GET", "/queue", self.get_queue),
            ("POST", "/queue", self.post_queue), ("POST", "/interrupt", self.interrupt),
            ("POST", "/free", self.free),
        ]
        for method, path, handler in routes:  # every route twice, as server.add_routes() does
            app.router.add_route(method, path, handler)
            app.router.add_route(method, "/api" + path, handler)
        return app

    # -- websocket ----------------------------------------------------------------------------

    def emit(self, kind: str, data: dict, sid: str | None = None) -> None:
        """Queue a message for one client (or all when ``sid`` is None), in order."""
        self.fake.events.append({"type": kind, "data": data, "sid": sid})
        self.outbox.put_nowait((kind, data, sid))

    def queue_info(self) -> dict[str, Any]:
        return {"exec_info": {"queue_remaining": len(self.pending) + (self.running_item is not None)}}

    def status(self) -> None:
        self.emit("status", {"status": self.queue_info()})

    async def _publish(self) -> None:
        while True:
            kind, data, sid = await self.outbox.get()
            await self.serving.wait()
            text = json.dumps({"type": kind, "data": data})
            if sid is None:
                targets = list(self.sockets.values())
            else:
                targets = [self.sockets[sid]] if sid in self.sockets else []
            for ws in targets:
                await self._send_text(ws, text)

    async def _send_text(self, ws: web.WebSocketResponse, text: str) -> None:
        await self.serving.wait()
        with contextlib.suppress(ConnectionError, aiohttp.ClientError):
            await ws.send_str(text)

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        # autoping off so a hung server does not answer pings either.
        ws = web.WebSocketResponse(autoping=False, timeout=1.0)
        await ws.prepare(request)
        sid = request.query.get("clientId", "")
        if sid:
            self.sockets.pop(sid, None)  # a newer socket takes over; the old one goes deaf
        else:
            sid = uuid.uuid4().hex
        self.sockets[sid] = ws
        self.all_sockets.add(ws)
        try:
            await self._send_text(ws, json.dumps(
                {"type": "status", "data": {"status": self.queue_info(), "sid": sid}}))
            if self.client_id == sid and self.last_node is not None:
                await self._send_text(ws, json.dumps(
                    {"type": "executing", "data": {"node": self.last_node}}))
            first = True
            async for msg in ws:
                if msg.type == WSMsgType.PING:
                    await self.serving.wait()
                    await ws.pong(msg.data)
                elif msg.type == WSMsgType.TEXT:
                    with contextlib.suppress(ValueError):
                        data = json.loads(msg.data)
                        if first and isinstance(data, dict) and data.get("type") == "feature_flags":
                            await self._send_text(ws, json.dumps(
                                {"type": "feature_flags", "data": FEATURES}))
                        first = False
        finally:
            # ComfyUI pops by sid: an old socket closing also deafens its successor.
            self.sockets.pop(sid, None)
            self.all_sockets.discard(ws)
        return ws

    # -- simple routes ------------------------------------------------------------------------

    async def index(self, request: web.Request) -> web.Response:
        return web.Response(text="<!DOCTYPE html><title>ComfyUI</title>", content_type="text/html")

    async def embeddings(self, request: web.Request) -> web.Response:
        return web.json_response([])

    async def model_folders(self, request: web.Request) -> web.Response:
        extra = [f for f in self.fake.models if f not in MODEL_FOLDERS]
        return web.json_response([*MODEL_FOLDERS, *extra])

    async def model_files(self, request: web.Request) -> web.Response:
        folder = request.match_info["folder"]
        if folder not in MODEL_FOLDERS and folder not in self.fake.models:
            return web.Response(status=404)
        return web.json_response(sorted(self.fake.models.get(folder, [])))

    async def features(self, request: web.Request) -> web.Response:
        return web.json_response(FEATURES)

    async def system_stats(self, request: web.Request) -> web.Response:
        fake = self.fake
        if fake.cpu:
            device = {"name": "cpu", "type": "cpu", "index": None, "vram_total": fake.vram_total,
                      "vram_free": fake.vram_free, "torch_vram_total": fake.vram_total,
                      "torch_vram_free": fake.vram_free}
        else:
            device = {"name": GPU_NAME, "type": "cuda", "index": 0, "vram_total": fake.vram_total,
                      "vram_free": fake.vram_free, "torch_vram_total": fake._loaded_bytes,
                      "torch_vram_free": 0}
        system = {
            "os": os.name, "ram_total": CPU_RAM[0], "ram_free": CPU_RAM[1],
            "comfyui_version": COMFYUI_VERSION, "required_frontend_version": "1.27.10",
            "installed_templates_version": "0.1.95", "required_templates_version": "0.1.95",
            "python_version": sys.version,
            "pytorch_version": "2.13.0+cpu" if fake.cpu else "2.13.0+cu128",
            "embedded_python": False, "argv": fake.argv}
        return web.json_response({"system": system, "devices": [device]})

    async def object_info(self, request: web.Request) -> web.Response:
        return web.json_response(self.fake.object_info())

    async def object_info_one(self, request: web.Request) -> web.Response:
        name = request.match_info["node_class"]
        info = self.fake.object_info()
        return web.json_response({name: info[name]} if name in info else {})

    # -- queue and history --------------------------------------------------------------------

    async def get_prompt(self, request: web.Request) -> web.Response:
        return web.json_response(self.queue_info())

    async def post_prompt(self, request: web.Request) -> web.Response:
        body = await request.json()  # not JSON: aiohttp's plain-text 500, like ComfyUI
        if "number" in body:
            number: float = float(body["number"])
        else:
            number = -self.counter if body.get("front") else self.counter
            self.counter += 1  # counted before validation: rejected posts use a number too
        if "prompt" not in body:
            return web.json_response({"error": _error("no_prompt", "No prompt provided",
                                                      "No prompt provided"), "node_errors": {}},
                                     status=400)
        graph = body["prompt"]
        prompt_id = str(body.get("prompt_id", uuid.uuid4()))
        valid, error, outputs, node_errors = validate_prompt(
            graph, self.fake.object_info(), body.get("partial_execution_targets"), self.image_exists)
        extra = body.get("extra_data", {})
        if "client_id" in body:
            extra["client_id"] = body["client_id"]
        if not valid:
            return web.json_response({"error": error, "node_errors": node_errors}, status=400)
        for key in SENSITIVE_EXTRA_KEYS:
            extra.pop(key, None)
        heapq.heappush(self.pending, [number, prompt_id, graph, extra, outputs])
        self.fake.posted.append(prompt_id)
        self.status()
        self.wake.set()
        return web.json_response(
            {"prompt_id": prompt_id, "number": number, "node_errors": node_errors})

    async def get_queue(self, request: web.Request) -> web.Response:
        running = [self.running_item[:5]] if self.running_item else []
        return web.json_response({"queue_running": running,
                                  "queue_pending": [item[:5] for item in self.pending]})

    async def post_queue(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("clear"):
            self.pending.clear()
            self.status()
        for prompt_id in body.get("delete", []):
            index = next((i for i, item in enumerate(self.pending) if item[1] == prompt_id), None)
            if index is not None:
                self.pending.pop(index)
                heapq.heapify(self.pending)
                self.status()
        return web.Response(status=200)

    async def get_history(self, request: web.Request) -> web.Response:
        max_items = request.query.get("max_items")
        limit = int(max_items) if max_items is not None else None
        offset = int(request.query.get("offset", -1))
        if offset < 0 and limit is not None:
            offset = len(self.history) - limit
        out: dict[str, dict] = {}
        for i, prompt_id in enumerate(self.history):
            if i >= offset:
                out[prompt_id] = self.history[prompt_id]
                if limit is not None and len(out) >= limit:
                    break
        return web.json_response(out)

    async def history_one(self, request: web.Request) -> web.Response:
        prompt_id = request.match_info["prompt_id"]
        entry = self.history.get(prompt_id)
        return web.json_response({prompt_id: entry} if entry else {})

    async def post_history(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("clear"):
            self.history.clear()
        for prompt_id in body.get("delete", []):
            self.history.pop(prompt_id, None)
        return web.Response(status=200)

    async def interrupt(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except json.JSONDecodeError:
            body = {}
        target = body.get("prompt_id")
        if not target or (self.running_item is not None and self.running_item[1] == target):
            self.interrupted = True  # seen at the next node start or progress update
        return web.Response(status=200)

    async def free(self, request: web.Request) -> web.Response:
        body = await request.json()
        for flag in ("unload_models", "free_memory"):
            if body.get(flag):
                self.flags[flag] = body[flag]
        self.wake.set()  # the worker acts on flags when it wakes, as ComfyUI's does
        return web.Response(status=200)

    # -- files --------------------------------------------------------------------------------

    def _dir_for(self, kind: str) -> Path | None:
        fake = self.fake
        return {"input": fake.input_dir, "output": fake.output_dir, "temp": fake.temp_dir}.get(kind)

    def annotated(self, name: str) -> tuple[str, Path | None]:
        """'x.png [temp]' -> ('x.png', temp dir); unannotated names have no folder."""
        for kind in ("output", "input", "temp"):
            if name.endswith(f"[{kind}]"):
                return name[: -len(kind) - 3], self._dir_for(kind)
        return name, None

    def input_path(self, name: str) -> Path | None:
        name, base = self.annotated(name)
        base = base or self.fake.input_dir
        path = base / name
        return path if name and _inside(base, path) else None

    def image_exists(self, name: str) -> bool:
        path = self.input_path(name)
        return path is not None and path.is_file()

    def load_image(self, name: str) -> Image.Image | None:
        path = self.input_path(name)
        if path is None or not path.is_file():
            return None
        try:
            with Image.open(path) as image:
                return image.convert("RGB")
        except (OSError, ValueError):
            return None

    async def upload_image(self, request: web.Request) -> web.Response:
        post = await request.post()
        kind = post.get("type")
        kind = "input" if kind is None else str(kind)
        upload_dir = self._dir_for(kind)
        if upload_dir is None:
            raise ValueError(f"unknown upload type {kind!r}")  # ComfyUI answers this with a 500
        image = post.get("image")
        if not image or not isinstance(image, web.FileField) or not image.filename:
            return web.Response(status=400)
        subfolder = str(post.get("subfolder", ""))
        folder = upload_dir / os.path.normpath(subfolder)
        filename = image.filename
        target = folder / filename
        if not _inside(upload_dir, target):
            return web.Response(status=400)
        folder.mkdir(parents=True, exist_ok=True)
        content = image.file.read()
        duplicate = False
        if post.get("overwrite") not in ("true", "1"):
            stem, suffix = str(PurePosixPath(filename).with_suffix("")), PurePosixPath(filename).suffix
            i = 1
            while target.exists():
                if target.read_bytes() == content:  # same bytes: reuse the name, write nothing
                    duplicate = True
                    break
                filename = f"{stem} ({i}){suffix}"
                target = folder / filename
                i += 1
        if not duplicate:
            target.write_bytes(content)
        return web.json_response({"name": filename, "subfolder": subfolder, "type": kind})

    async def view(self, request: web.Request) -> web.StreamResponse:
        query = request.query
        if "filename" not in query:
            return web.Response(status=404)
        filename, base = self.annotated(query["filename"])
        if not filename or filename[0] == "/" or ".." in filename:
            return web.Response(status=400)
        base = base or self._dir_for(query.get("type", "output"))
        if base is None:
            return web.Response(status=400)
        if "subfolder" in query:
            folder = base / query["subfolder"]
            if not _inside(base, folder):
                return web.Response(status=403)
            base = folder
        filename = PurePath(filename).name
        path = base / filename
        if not path.is_file():
            return web.Response(status=404)
        disposition = {"Content-Disposition": f'filename="{filename}"'}
        if "preview" in query:
            image_format, _, quality = query["preview"].partition(";")
            image_format = "webp" if image_format == "webp" else "jpeg"
            buffer = io.BytesIO()
            with Image.open(path) as image:
                picture = image.convert("RGB") if image_format == "jpeg" else image
                picture.save(buffer, format=image_format, quality=int(quality or 90))
            return web.Response(body=buffer.getvalue(), content_type=f"image/{image_format}",
                                headers=disposition)
        content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        if content_type in {"text/html", "text/html-sandboxed", "application/xhtml+xml",
                            "text/javascript", "text/css"}:
            content_type = "application/octet-stream"  # ComfyUI forces these to download
        return web.FileResponse(path, headers={**disposition, "Content-Type": content_type})

    # -- the worker ---------------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            await self.serving.wait()
            self._apply_flags()
            while self.pending:
                await self.serving.wait()
                self.running_item = heapq.heappop(self.pending)
                self.status()
                await self._execute(self.running_item)
                self._apply_flags()

    def _apply_flags(self) -> None:
        flags, self.flags = self.flags, {}
        free_memory = flags.get("free_memory", False)
        if flags.get("unload_models", free_memory):
            self.fake._unload()
        if free_memory:
            self.cache.clear()

    def _is_changed(self, node: dict) -> Any:
        """LoadImage's IS_CHANGED: a new file under the same name re-runs the node."""
        if node.get("class_type") in CUSTOM_VALIDATED and isinstance(node["inputs"].get("image"), str):
            path = self.input_path(node["inputs"]["image"])
            if path is not None and path.is_file():
                return hashlib.sha256(path.read_bytes()).hexdigest()
        return None

    async def _execute(self, item: list[Any]) -> None:
        _number, prompt_id, graph, extra, outputs = item
        fake = self.fake
        job = _Job(self, prompt_id, extra.get("client_id"))
        self.client_id, self.interrupted = job.client_id, False
        started = _now_ms()
        fake.timestamps[prompt_id] = {"execution_start": started}
        job.message("execution_start", {"prompt_id": prompt_id, "timestamp": started})
        keys = _signatures(graph, self._is_changed)
        cached = [n for n in graph if keys[n] in self.cache]
        live = set(keys.values())
        self.cache = {k: v for k, v in self.cache.items() if k in live}
        job.message("execution_cached", {"nodes": cached, "prompt_id": prompt_id,
                                         "timestamp": _now_ms()})
        plan = _plan(graph, outputs, set(cached))
        seconds = self._node_seconds(graph, [n for n in plan if n not in cached])
        if seconds:
            fake.executed_count += 1
        model = _model_of(graph)
        info = fake.object_info()
        end = "execution_success"
        try:
            for node_id in plan:
                if node_id in cached:
                    ui = self.cache[keys[node_id]]
                    if ui:
                        job.executed(node_id, ui)
                    job.progress(node_id, 1, 1, "finished")
                    continue
                await self._run_node(job, graph, node_id, info, seconds[node_id], extra, model)
                ui = job.outputs.get(node_id)
                self.cache[keys[node_id]] = ui
        except _Interrupted:
            end = "execution_interrupted"
            job.message(end, {"prompt_id": prompt_id, "node_id": self.last_node,
                              "node_type": graph[self.last_node]["class_type"],
                              "executed": list(job.done), "timestamp": _now_ms()}, broadcast=True)
        except _NodeFailed as failure:
            end = "execution_error"
            node_id = self.last_node or ""
            job.message(end, {
                "prompt_id": prompt_id, "node_id": node_id,
                "node_type": graph[node_id]["class_type"], "executed": list(job.done),
                "exception_message": f"{failure.message}\n",
                "exception_type": failure.exception_type,
                "traceback": _fake_traceback(graph[node_id]["class_type"], failure),
                "current_inputs": _current_inputs(graph, node_id, info),
                "current_outputs": list(graph), "timestamp": _now_ms()})
        else:
            job.message(end, {"prompt_id": prompt_id, "timestamp": _now_ms()})
        fake.timestamps[prompt_id][end] = job.messages[-1][1]["timestamp"]
        ok = end == "execution_success"
        self.last_node = None
        self.history[prompt_id] = {
            "prompt": item[:5], "outputs": job.outputs,
            "status": {"status_str": "success" if ok else "error", "completed": ok,
                       "messages": job.messages},
            "meta": job.meta}
        if len(self.history) > MAX_HISTORY:
            self.history.pop(next(iter(self.history)))
        self.running_item = None
        self.status()
        if job.client_id is not None:
            self.emit("executing", {"node": None, "prompt_id": prompt_id}, job.client_id)

    def _node_seconds(self, graph: dict, nodes: list[str]) -> dict[str, float]:
        """Per-node run time: overrides by class, the rest share ``job_seconds`` equally."""
        overrides = self.fake.node_seconds
        plain = [n for n in nodes if graph[n]["class_type"] not in overrides]
        share = self.fake.job_seconds / len(plain) if plain else 0.0
        return {n: overrides.get(graph[n]["class_type"], share) for n in nodes}

    async def _run_node(self, job: _Job, graph: dict, node_id: str, info: dict, seconds: float,
                        extra: dict, model: tuple[Any, ...]) -> None:
        fake = self.fake
        class_type = graph[node_id]["class_type"]
        await self.serving.wait()
        job.progress(node_id, 0.0, 1.0, "running")
        job.send("executing", {"node": node_id, "display_node": node_id, "prompt_id": job.prompt_id})
        self.last_node = node_id
        if self.interrupted:
            raise _Interrupted
        self._check_runtime(graph, node_id, info)
        if model and model != fake.loaded_model:
            fake.swaps += 1
            await asyncio.sleep(fake.swap_seconds)
            fake._load(model)
        if class_type in fake.progress_nodes:
            steps = self._steps(graph, node_id)
            for step in range(1, steps + 1):
                await asyncio.sleep(seconds / steps)
                await self.serving.wait()
                if self.interrupted:
                    raise _Interrupted
                job.progress(node_id, step, steps, "running")
                job.send("progress", {"value": step, "max": steps, "prompt_id": job.prompt_id,
                                      "node": node_id}, broadcast=True)
        else:
            await asyncio.sleep(seconds)
        if info[class_type].get("output_node"):
            ui = await asyncio.to_thread(self._write_outputs, graph, node_id, extra)
            if ui:
                job.executed(node_id, ui)
        job.finish(node_id)
        job.done.append(node_id)

    def _steps(self, graph: dict, node_id: str) -> int:
        node = graph[node_id]
        if node["class_type"] == "ImageUpscaleWithModel":
            width, height = _size(graph, node_id, self.load_image) or DEFAULT_IMAGE_SIZE
            batch = _batch(graph, node_id) or 1
            return batch * math.ceil(height / UPSCALE_TILE) * math.ceil(width / UPSCALE_TILE)
        steps = _literal_int(node["inputs"], "steps")
        return steps if steps and steps > 0 else self.fake.default_steps

    def _check_runtime(self, graph: dict, node_id: str, info: dict) -> None:
        """Raise what the real node would raise: injected failures, V3 combos, bad images."""
        node = graph[node_id]
        class_type, inputs = node["class_type"], node["inputs"]
        for i, failure in enumerate(self.fake._failures):
            if failure.node_class in (None, class_type):
                del self.fake._failures[i]
                raise _NodeFailed(failure.exception_type, failure.message)
        declared = info[class_type]["input"]
        for section in ("required", "optional"):
            for name, entry in (declared.get(section) or {}).items():
                value = inputs.get(name)
                options = entry[1].get("options") if entry[0] == "COMBO" and len(entry) > 1 else None
                if options is None or value is None or isinstance(value, list) or value in options:
                    continue
                folder = MODEL_COMBOS.get((class_type, name))
                if folder:
                    raise _NodeFailed("FileNotFoundError", f"Model in folder '{folder}' with "
                                      f"filename '{value}' not found.")
                if class_type == "SaveWEBM":
                    raise _NodeFailed("KeyError", f"'{value}'")
                enum = {"format": "VideoContainer", "codec": "VideoCodec"}.get(name, name)
                raise _NodeFailed("ValueError", f"'{value}' is not a valid {enum}")
        if class_type in CUSTOM_VALIDATED and isinstance(inputs.get("image"), str):
            path = self.input_path(inputs["image"])
            if path is None or not path.is_file():
                raise _NodeFailed("FileNotFoundError",
                                  f"[Errno 2] No such file or directory: '{path}'")
            try:
                with Image.open(path) as image:
                    image.verify()
            except OSError as exc:
                raise _NodeFailed(_type_name(exc), f"cannot identify image file '{path}'") from exc

    # -- output files (run in a worker thread) ------------------------------------------------

    def _write_outputs(self, graph: dict, node_id: str, extra: dict) -> dict | None:
        class_type = graph[node_id]["class_type"]
        try:
            if class_type in IMAGE_NODES:
                return self._save_images(graph, node_id, extra, IMAGE_NODES[class_type])
            if class_type in VIDEO_NODES:
                return self._save_video(graph, node_id, VIDEO_NODES[class_type])
        except _NodeFailed:
            raise
        except Exception as exc:
            raise _NodeFailed(_type_name(exc), str(exc)) from exc
        return None  # an output node without UI output sends no "executed"

    def _images(self, graph: dict, node_id: str) -> list[Image.Image]:
        if self.fake.image_maker is not None:
            made = self.fake.image_maker(graph, node_id)
            return list(made) if isinstance(made, list | tuple) else [made]
        count = _batch(graph, node_id) or 1
        for upstream in list(_upstream(graph, node_id))[1:]:
            node = graph[upstream]
            inputs = node.get("inputs", {})
            if node.get("class_type") == "EmptyImage":
                color = int(inputs.get("color", 0))
                rgb = ((color >> 16) & 0xFF, (color >> 8) & 0xFF, color & 0xFF)
                size = (int(inputs.get("width", 64)), int(inputs.get("height", 64)))
                return [Image.new("RGB", size, rgb) for _ in range(count)]
            if node.get("class_type") in CUSTOM_VALIDATED:
                image = self.load_image(str(inputs.get("image")))
                if image is not None:
                    return [image] * count
        width, height = _size(graph, node_id, self.load_image) or DEFAULT_IMAGE_SIZE
        seed = _seed(graph)
        return [gradient_image(width, height, seed + i) for i in range(count)]

    def _save_images(self, graph: dict, node_id: str, extra: dict, kind: str) -> dict:
        if kind == "temp":
            letters = "".join(random.choice("abcdefghijklmnopqrstupvxyz") for _ in range(5))
            prefix, base, level = f"ComfyUI_temp_{letters}", self.fake.temp_dir, 1
        else:
            prefix = str(graph[node_id]["inputs"].get("filename_prefix", "ComfyUI"))
            base, level = self.fake.output_dir, 4
        folder, name, counter, subfolder = save_path(prefix, base)
        results = []
        for batch_number, image in enumerate(self._images(graph, node_id)):
            filename = f"{name.replace('%batch_num%', str(batch_number))}_{counter:05}_.png"
            _save_png(image, folder / filename, graph, extra, level)
            results.append({"filename": filename, "subfolder": subfolder, "type": kind})
            counter += 1
        return {"images": results}

    def _save_video(self, graph: dict, node_id: str, suffix: str) -> dict:
        fake = self.fake
        inputs = graph[node_id]["inputs"]
        folder, name, counter, subfolder = save_path(str(inputs.get("filename_prefix", "ComfyUI")),
                                                     fake.output_dir)
        vhs = graph[node_id]["class_type"] == "VHS_VideoCombine" and fake.vhs_reports_gifs
        stem = f"{name}_{_vhs_counter(folder, name):05}" if vhs else f"{name}_{counter:05}_"
        path = folder / f"{stem}.{suffix}"
        fps = _fps(graph, node_id)
        frames = None
        if fake.video_maker is not None:
            fake.video_maker(graph, node_id, path)
        else:
            frames = self._frames(graph, node_id)
            write_video(path, frames, fps)
        if not vhs:
            return {"images": [{"filename": path.name, "subfolder": subfolder, "type": "output"}],
                    "animated": [True]}
        # VideoHelperSuite's real shape: under "gifs", with a first-frame PNG beside the clip.
        if frames is not None:
            Image.fromarray(frames[0]).save(folder / f"{stem}.png")
        return {"gifs": [{"filename": path.name, "subfolder": subfolder, "type": "output",
                          "format": "video/h264-mp4", "frame_rate": fps, "workflow": f"{stem}.png",
                          "fullpath": str(path)}]}

    def _frames(self, graph: dict, node_id: str) -> np.ndarray:
        count = _frame_count(graph, node_id)
        width, height = _size(graph, node_id, self.load_image) or DEFAULT_VIDEO_SIZE
        width, height = max(2, width - width % 2), max(2, height - height % 2)  # yuv420p: even sizes
        start = next((image for node in graph.values()
                      if node.get("class_type") in CUSTOM_VALIDATED
                      and (image := self.load_image(str(node["inputs"].get("image")))) is not None),
                     None)
        start = start or gradient_image(width, height, _seed(graph))
        return spoil_frames(pan_zoom_frames(start, count, width, height), self.fake.video_mode)


def _current_inputs(graph: dict, node_id: str, info: dict) -> dict[str, list[Any]]:
    """execution_error.current_inputs: widget values as they are, linked data as a repr."""
    out: dict[str, list[Any]] = {}
    for name, value in graph[node_id]["inputs"].items():
        if _is_link(value):
            source = graph.get(str(value[0]), {}).get("class_type", "")
            kinds = info.get(source, {}).get("output", [])
            kind = kinds[value[1]] if 0 <= value[1] < len(kinds) else "object"
            out[name] = [f"<{kind} object from node {value[0]}>"]
        else:
            plain = value is None or isinstance(value, int | float | str)
            out[name] = [value if plain else str(value)]
    return out


def _fake_traceback(node_type: str, failure: _NodeFailed) -> list[str]:
    return [
        '  File "/srv/ComfyUI/execution.py", line 496, in execute\n    output_data, output_ui, '
        "has_subgraph, has_pending_tasks = await get_output_data(prompt_id, unique_id, obj, "
        "input_data_all, execution_block_cb=execution_block_cb, pre_execute_cb=pre_execute_cb, "
        "hidden_inputs=hidden_inputs)\n",
        f'  File "/srv/ComfyUI/fakecomfy/{node_type}.py", line 1, in execute\n'
        f"    raise {failure.exception_type}({failure.message!r})\n",
    ]
