"""Preflight: does a filled workflow graph fit what a ComfyUI server offers?

How this works: ``GET /object_info`` describes every node class the server
has, its inputs (``required``/``optional``/``hidden``, each with a type and
options) and its output types. ``check`` walks the graph node by node and
compares it with that description, with no I/O, and returns every
``Problem`` it finds rather than stopping at the first, so a person can fix
a workflow in one go. ``raise_for`` turns the list into one ``WorkflowError``.

Why not just POST the prompt and read ``node_errors``: the server stops at
the first broken node it meets in some cases (unknown class), says nothing
about which model folder a missing file belongs in, and does **not** check
combo values of nodes written with the new schema (``["COMBO", {"options":
[...]}]``: SaveVideo, UpscaleModelLoader, ...), so ``format: "mkv"`` is
accepted and fails at run time (PROTOCOL.md §1). Preflight checks both
combo forms, and names the folder a missing model file has to go into.

Inputs we fill at run time with a file we upload first (the start image)
hold a placeholder; pass them in ``skip`` so their value is not checked.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from daemon.backends.comfy.workflows import Workflow, is_link, node_order
from daemon.errors import WorkflowError

# Which folder a model combo lists, by (class, input) first, then by input
# name alone (that covers core loaders and most custom ones that reuse the
# core names). Folders are those of GET /models; "input"/"output" are the
# server's file folders, not model folders.
_FOLDER_BY_CLASS_INPUT: dict[tuple[str, str], str] = {
    ("CLIPVisionLoader", "clip_name"): "clip_vision",
    ("UpscaleModelLoader", "model_name"): "upscale_models",
    ("ModelPatchLoader", "name"): "model_patches",
    ("DiffusersLoader", "model_path"): "diffusers",
    ("CheckpointLoader", "config_name"): "configs",
    ("LoadImage", "image"): "input",
    ("LoadImageMask", "image"): "input",
    ("LoadVideo", "file"): "input",
    ("LoadLatent", "latent"): "input",
    ("LoadImageOutput", "image"): "output",
    # kijai/ComfyUI-WanVideoWrapper (nodes_model_loading.py, nodes.py)
    ("WanVideoModelLoader", "model"): "diffusion_models",
    ("WanVideoVAELoader", "model_name"): "vae",
    ("WanVideoTinyVAELoader", "model_name"): "vae_approx",
    ("LoadWanVideoT5TextEncoder", "model_name"): "text_encoders",
    ("LoadWanVideoClipTextEncoder", "model_name"): "clip_vision",
    ("WanVideoTextEncodeCached", "model_name"): "text_encoders",
    ("WanVideoLoraSelect", "lora"): "loras",
    ("WanVideoVACEModelSelect", "vace_model"): "diffusion_models",
    ("WanVideoExtraModelSelect", "extra_model"): "diffusion_models",
}
_FOLDER_BY_INPUT: dict[str, str] = {
    "ckpt_name": "checkpoints",
    "unet_name": "diffusion_models",
    "vae_name": "vae",
    "clip_name": "text_encoders",
    "clip_name1": "text_encoders",
    "clip_name2": "text_encoders",
    "clip_name3": "text_encoders",
    "clip_name4": "text_encoders",
    "lora_name": "loras",
    "control_net_name": "controlnet",
    "style_model_name": "style_models",
    "gligen_name": "gligen",
    "hypernetwork_name": "hypernetworks",
    "photomaker_model_name": "photomaker",
}
_FILE_FOLDERS = frozenset({"input", "output"})

# Custom node packs we can name from a class name alone.
_PACK_BY_PREFIX = (
    ("WanVideo", "ComfyUI-WanVideoWrapper"),
    ("LoadWanVideo", "ComfyUI-WanVideoWrapper"),
    ("VHS_", "ComfyUI-VideoHelperSuite"),
)
_PACK_BY_SUFFIX = (("GGUF", "ComfyUI-GGUF"), ("KJ", "ComfyUI-KJNodes"))
_NOT_INSTALLED = "node class "  # how an unknown-class message starts; raise_for groups on it
_REEXPORT = "export the workflow again with Export (API)"

# What check_workflow writes into the slots when no values are given: one
# value of each type the daemon sends, so a slot mapped onto an input of the
# wrong type shows up before the first job.
_SAMPLE_VALUES: dict[str, object] = {
    "prompt": "preflight check",
    "negative_prompt": "",
    "seed": 1,
    "width": 832,
    "height": 480,
    "fps": 16.0,
    "start_image": "preflight.png",
    "filename_prefix": "tandava/preflight",
}


@dataclass(frozen=True)
class Problem:
    """One way a workflow does not fit the server; ``str()`` is a sentence for a person."""

    workflow: str
    node: str
    class_type: str
    input: str | None
    value: object
    message: str
    folder: str | None = None

    def __str__(self) -> str:
        subject = f"{self.workflow}: node {self.node}"
        if self.class_type:
            subject += f" ({self.class_type})"
        if self.input is None:
            return f"{subject}: {self.message}"
        subject += f" input {self.input}"
        if self.value is not None:
            subject += f" = {_short(self.value)}"
        return f"{subject} {self.message}"


def model_folder(class_type: str, input_name: str) -> str | None:
    """The server folder a combo input lists files of (``diffusion_models``, ``input``, ...), if known."""
    return _FOLDER_BY_CLASS_INPUT.get((class_type, input_name), _FOLDER_BY_INPUT.get(input_name))


def node_pack(class_type: str) -> str | None:
    """The custom node pack a class comes from, for the classes we know."""
    for prefix, pack in _PACK_BY_PREFIX:
        if class_type.startswith(prefix):
            return pack
    for suffix, pack in _PACK_BY_SUFFIX:
        if class_type.endswith(suffix):
            return pack
    return None


def check(
    workflow_graph: Mapping[str, Any],
    object_info: Mapping[str, Any],
    *,
    workflow: str,
    skip: Collection[tuple[str, str]] = (),
) -> list[Problem]:
    """Every problem of the graph against the server's object_info; ``skip`` = (node, input) filled at run time."""
    problems: list[Problem] = []
    for node_id in sorted(workflow_graph, key=node_order):
        problems.extend(_check_node(workflow, workflow_graph, object_info, node_id, set(skip)))
    return problems


def check_workflow(wf: Workflow, object_info: Mapping[str, Any], values: Mapping[str, object] | None = None) -> list[Problem]:
    """Check ``wf`` filled with ``values`` (or sample values), not checking the start image placeholder."""
    if values is None:
        samples = dict(_SAMPLE_VALUES, frames=wf.max_frames or 81)
        values = {slot: samples[slot] for slot in wf.inputs}
    graph = wf.fill(**values)
    return check(graph, object_info, workflow=wf.name, skip=set(wf.inputs.get("start_image", ())))


def raise_for(problems: list[Problem]) -> None:
    """Raise one WorkflowError naming up to five problems and how to fix them; nothing if the list is empty."""
    if not problems:
        return
    names = sorted({p.workflow for p in problems})
    shown = "; ".join(str(p) for p in problems[:5])
    more = f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
    count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
    reason = f"workflow {', '.join(names)} does not fit the ComfyUI server ({count}): {shown}{more}"

    hints = []
    unknown = [p for p in problems if p.input is None and p.message.startswith(_NOT_INSTALLED)]
    if unknown:
        packs = sorted({node_pack(p.class_type) or "the pack that provides " + p.class_type for p in unknown})
        hints.append(f"install or update the custom node pack(s) {', '.join(packs)} (ComfyUI-Manager can) and restart ComfyUI")
    folders = sorted({p.folder for p in problems if p.folder and p.folder not in _FILE_FOLDERS})
    if folders:
        where = ", ".join(f"ComfyUI/models/{folder}/" for folder in folders)
        hints.append(f"put the missing model files into {where} (the server sees new files without a restart)")
    if any(p.folder in _FILE_FOLDERS for p in problems):
        hints.append("put the named files into the server's input/ folder or map that input as start_image")
    if any(p not in unknown and p.folder is None for p in problems):
        hints.append("open the workflow in ComfyUI, fix the named inputs and save it again with Export (API)")
    raise WorkflowError(reason, "; ".join(hints), cause="WorkflowMismatch")


def _check_node(
    workflow: str,
    graph: Mapping[str, Any],
    object_info: Mapping[str, Any],
    node_id: str,
    skip: set[tuple[str, str]],
) -> list[Problem]:
    node = graph[node_id]
    class_type = node.get("class_type") if isinstance(node, dict) else None
    if not isinstance(class_type, str) or not class_type:
        return [Problem(workflow, node_id, "", None, None, f"has no class_type; {_REEXPORT}")]

    def problem(message: str, name: str | None = None, value: object = None) -> Problem:
        return Problem(workflow, node_id, str(class_type), name, value, message)

    info = object_info.get(class_type)
    if not isinstance(info, dict):
        pack = node_pack(class_type)
        if pack and any(node_pack(other) == pack for other in object_info):
            # The pack is there but lacks this class: a version the workflow was not made with.
            return [problem(f"{_NOT_INSTALLED}{class_type} is not in the {pack} installed on the server "
                            "(the pack is older or newer than the workflow: update it)")]
        missing = f"a custom node pack is missing: {pack}" if pack else "a custom node pack is missing"
        return [problem(f"{_NOT_INSTALLED}{class_type} is not installed on the server ({missing})")]
    inputs = node.get("inputs")
    if not isinstance(inputs, dict):
        return [problem(f"has no inputs object; {_REEXPORT}")]

    sections = info.get("input") or {}
    required = sections.get("required") or {}
    optional = sections.get("optional") or {}
    hidden = sections.get("hidden") or {}
    problems = [
        problem(f"is required by {class_type} but not set (the node was probably updated): "
                "set it in ComfyUI and export again", name)
        for name in required
        if name not in inputs
    ]
    for name, value in inputs.items():
        if name in hidden or (node_id, name) in skip:
            continue
        spec = required.get(name, optional.get(name))
        if spec is None:
            problems.append(problem(
                f"is not an input of {class_type} on the server (renamed or removed in a node update?)", name, value
            ))
        elif is_link(value):
            problems.extend(_check_link(workflow, graph, object_info, node_id, class_type, name, value, spec))
        else:
            problems.extend(_check_value(workflow, node_id, class_type, name, value, spec))
    return problems


def _check_link(
    workflow: str,
    graph: Mapping[str, Any],
    object_info: Mapping[str, Any],
    node_id: str,
    class_type: str,
    name: str,
    link: list[Any],
    spec: object,
) -> list[Problem]:
    def problem(message: str) -> list[Problem]:
        return [Problem(workflow, node_id, class_type, name, link, message)]

    source_id, index = str(link[0]), link[1]
    source = graph.get(source_id)
    if not isinstance(source, dict):
        return problem(f"links to node {source_id}, which is not in the workflow")
    source_info = object_info.get(source.get("class_type", ""))
    if not isinstance(source_info, dict):
        return []  # the source node's own problem says its class is missing
    outputs = source_info.get("output") or []
    source_class = source["class_type"]
    if not 0 <= index < len(outputs):
        return problem(
            f"links to output {index} of node {source_id} ({source_class}), which has {len(outputs)} output(s)"
        )
    expected, _ = _spec(spec)
    received = outputs[index]
    # A combo input takes whatever a primitive or a node's list output gives it.
    if _is_combo(expected) or _types_match(received, expected):
        return []
    return problem(
        f"expects {expected} but is linked to output {index} of node {source_id} ({source_class}), "
        f"which gives {received}"
    )


def _check_value(workflow: str, node_id: str, class_type: str, name: str, value: object, spec: object) -> list[Problem]:
    def problem(message: str, folder: str | None = None) -> list[Problem]:
        return [Problem(workflow, node_id, class_type, name, value, message, folder)]

    kind, options = _spec(spec)
    if _is_combo(kind):
        choices = kind if isinstance(kind, list) else options.get("options")
        if not isinstance(choices, list) or value in choices:
            return []  # no list: the browser fetches the options (remote combo); nothing to compare
        folder = model_folder(class_type, name)
        if folder in _FILE_FOLDERS:
            # The list holds only files at the top of the folder, but the server
            # also loads "sub/x.png" and "x.png [temp]" (PROTOCOL.md §6).
            if isinstance(value, str) and ("/" in value or value.endswith("]")):
                return []
            return problem(f"is not in ComfyUI/{folder}/ on the server: upload it or put the file there", folder)
        if folder:
            return problem(f"is not on the server: put the file in ComfyUI/models/{folder}/", folder)
        return problem(f"is not one of the choices the server offers: {_choices(choices)}")
    if kind == "INT":
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            return problem(f"should be a whole number (INT), not {_type_name(value)}")
        return _check_range(value, options, problem)
    if kind == "FLOAT":
        if isinstance(value, bool) or not isinstance(value, int | float):
            return problem(f"should be a number (FLOAT), not {_type_name(value)}")
        return _check_range(value, options, problem)
    if kind == "STRING":
        return [] if isinstance(value, str) else problem(f"should be text (STRING), not {_type_name(value)}")
    if kind == "BOOLEAN":
        return [] if isinstance(value, bool) else problem(f"should be true or false (BOOLEAN), not {_type_name(value)}")
    if kind == "*":
        return []
    return problem(f"needs a link from a node that outputs {kind}, not a value")


def _check_range(value: float, options: Mapping[str, Any], problem: Callable[[str], list[Problem]]) -> list[Problem]:
    low, high = options.get("min"), options.get("max")
    if isinstance(low, int | float) and value < low:
        return problem(f"is below the minimum {low}")
    if isinstance(high, int | float) and value > high:
        return problem(f"is above the maximum {high}")
    return []


def _spec(spec: object) -> tuple[object, Mapping[str, Any]]:
    """(type, options) of an input spec in any of its forms: "INT", ["INT", {...}], [[choices]], ["COMBO", {...}]."""
    if isinstance(spec, list | tuple) and spec:
        options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
        return spec[0], options
    return spec, {}


def _is_combo(kind: object) -> bool:
    return isinstance(kind, list) or kind == "COMBO"


def _types_match(received: object, expected: object) -> bool:
    """ComfyUI's rule: equal, or either is "*", or comma-separated unions that overlap."""
    if not isinstance(received, str) or not isinstance(expected, str):
        return True  # a list output is a combo; we cannot say more than the server would
    if received == expected:
        return True
    have = {t.strip() for t in received.split(",")}
    want = {t.strip() for t in expected.split(",")}
    return "*" in have or "*" in want or bool(have & want)


def _choices(choices: list[Any]) -> str:
    if not choices:
        return "(none)"
    shown = ", ".join(repr(c) for c in choices[:8])
    return shown + (f" and {len(choices) - 8} more" if len(choices) > 8 else "")


def _type_name(value: object) -> str:
    return {str: "text", bool: "true/false", int: "a whole number", float: "a number", list: "a list", dict: "an object"}.get(
        type(value), type(value).__name__
    )


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
