"""ComfyUI workflow templates: an exported API graph plus a mapping of our slots onto it.

How this works: a workflow is two files side by side, ``<name>.json`` (the
graph as ComfyUI's "Export (API)" writes it: ``{node_id: {class_type,
inputs, _meta}}``) and ``<name>.toml`` (what the daemon needs to drive it):

    kind = "video"                  # "image" or "video"
    description = "..."
    vram_gb = 20.0                  # free VRAM a job needs (an estimate)
    timeout_seconds = 2400          # a job that runs longer is stuck
    max_frames = 81                 # video only
    frame_step = 4                  # video only: frame counts of the form k*step+1 (Wan: 4)
    [inputs]                        # slot = "node_id.input" or a list of them
    prompt = "6.text"
    width = ["50.width", "12.width"]

The daemon never looks inside a graph by class name: it only writes the
values of the slots into the inputs the mapping names. So a person can drop
their own exported workflow and a mapping into the workflows folder and run
it without a code change. ``load_workflow`` checks the mapping against the
graph (node ids, input names, required slots) so that a mistake shows up
when the file is loaded, with the file and the fix named, not as a failed
job an hour later. Whether the graph fits a live server is ``preflight``'s job.

Nothing here does network I/O; files are read once, as UTF-8.
"""

from __future__ import annotations

import copy
import hashlib
import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import daemon
from daemon.errors import WorkflowError

SLOTS = (
    "prompt",
    "negative_prompt",
    "seed",
    "width",
    "height",
    "frames",
    "fps",
    "start_image",
    "filename_prefix",
)
REQUIRED_SLOTS: dict[str, tuple[str, ...]] = {
    "image": ("prompt", "seed", "width", "height", "filename_prefix"),
    "video": ("prompt", "seed", "width", "height", "filename_prefix", "start_image", "frames", "fps"),
}
# Slots a workflow may leave out and still make what was asked: Flux dev has
# no negative prompt, and an image workflow has no frame rate. A value given
# for one of these is dropped; any other unmapped slot is a caller mistake.
OPTIONAL_SLOTS = frozenset({"negative_prompt", "fps"})

_MAPPING_KEYS = frozenset({"kind", "description", "vram_gb", "timeout_seconds", "max_frames", "frame_step",
                           "inputs"})
# How model files end; used to find the model inputs of any graph, including
# custom loaders we have never seen.
_MODEL_SUFFIXES = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin", ".gguf", ".onnx")

Target = tuple[str, str]


@dataclass(frozen=True)
class Workflow:
    """One workflow template: the API graph and what our slots write into it."""

    name: str
    kind: str
    graph: dict[str, Any]
    inputs: dict[str, tuple[Target, ...]]
    vram_gb: float
    timeout_seconds: float
    max_frames: int | None
    path: Path
    description: str = ""
    # Video models take frame counts of the form k*frame_step+1 (Wan 2.1: 4); 1 means any count.
    frame_step: int = 1

    def frames_for(self, wanted: int) -> int:
        """The frame count to ask for: the smallest allowed count that holds ``wanted``, within max_frames."""
        step = max(1, self.frame_step)
        frames = 1 + step * max(0, -(-(wanted - 1) // step))
        return min(frames, self.max_frames) if self.max_frames else frames

    def fill(self, **values: object) -> dict[str, Any]:
        """A copy of the graph with each given slot's targets set; ``None`` means not given."""
        graph = copy.deepcopy(self.graph)
        for slot, value in values.items():
            if value is None:
                continue
            if slot not in SLOTS:
                raise WorkflowError(
                    f"workflow {self.name}: there is no slot {slot!r}",
                    f"use one of: {', '.join(SLOTS)}",
                )
            targets = self.inputs.get(slot)
            if not targets:
                if slot in OPTIONAL_SLOTS:
                    continue
                raise WorkflowError(
                    f"workflow {self.name} ({self.path.with_suffix('.toml').name}) has no mapping for slot "
                    f"{slot!r}, so the {slot} asked for would be ignored",
                    f"add {slot} = \"<node_id>.<input>\" under [inputs] in {self.path.with_suffix('.toml')}",
                )
            for node_id, input_name in targets:
                graph[node_id]["inputs"][input_name] = value
        return graph

    def models(self) -> list[tuple[str, str, str]]:
        """(node_id, input, file name) of every input that names a model file, in node order."""
        found = []
        for node_id in sorted(self.graph, key=node_order):
            for input_name, value in self.graph[node_id].get("inputs", {}).items():
                if isinstance(value, str) and value.lower().endswith(_MODEL_SUFFIXES):
                    found.append((node_id, input_name, value))
        return found

    def signature(self) -> str:
        """A short stable id of the model files this workflow loads: jobs with equal ones need no model swap."""
        names = sorted({value for _, _, value in self.models()})
        return hashlib.sha256("\n".join(names).encode("utf-8")).hexdigest()[:16]


def builtin_dir() -> Path:
    """The workflows shipped with Tandava: the repository's ``workflows/`` in a checkout,
    the same files as ``daemon/workflows`` in a wheel install (pyproject maps them there)."""
    package = Path(daemon.__file__).resolve().parent
    checkout = package.parent / "workflows"
    return checkout if checkout.is_dir() else package / "workflows"


def find_workflow(name: str, folder: Path | None = None) -> Workflow:
    """The workflow called ``name``: the user's folder first, then the shipped ones."""
    stem = name.removesuffix(".json")
    if not stem or Path(stem).name != stem:
        raise WorkflowError(f"{name!r} is not a workflow name", "give the file name without folder, e.g. wan21_i2v")
    folders = [f for f in (folder, builtin_dir()) if f is not None]
    for where in folders:
        candidate = where / f"{stem}.json"
        if candidate.is_file():
            return load_workflow(candidate)
    available = sorted({p.stem for where in folders if where.is_dir() for p in where.glob("*.json")})
    searched = " and ".join(str(f) for f in folders)
    raise WorkflowError(
        f"there is no workflow {stem!r} in {searched}",
        f"use one of: {', '.join(available) or '(none found)'}; or put {stem}.json and {stem}.toml there",
    )


def load_workflow(path: Path) -> Workflow:
    """Read ``<name>.json`` and its ``<name>.toml`` mapping, and check that they fit together."""
    graph = _read_graph(path)
    mapping_path = path.with_suffix(".toml")
    mapping = _read_mapping(mapping_path)
    where = mapping_path.name

    unknown = sorted(set(mapping) - _MAPPING_KEYS)
    if unknown:
        raise WorkflowError(
            f"{where}: unknown key(s) {', '.join(unknown)}",
            f"the keys are: {', '.join(sorted(_MAPPING_KEYS))}",
        )
    kind = mapping.get("kind")
    if kind not in REQUIRED_SLOTS:
        raise WorkflowError(f"{where}: kind = {kind!r} is not valid", 'write kind = "image" or kind = "video"')
    vram_gb = _positive_number(mapping, "vram_gb", where)
    timeout_seconds = _positive_number(mapping, "timeout_seconds", where)
    max_frames = mapping.get("max_frames")
    if kind == "video":
        if not isinstance(max_frames, int) or isinstance(max_frames, bool) or max_frames < 1:
            raise WorkflowError(
                f"{where}: a video workflow needs max_frames, a whole number of frames one job makes at most "
                f"(got {max_frames!r})",
                "add e.g. max_frames = 81 (Wan 2.1 makes 4k+1 frames)",
            )
    else:
        max_frames = None
    frame_step = mapping.get("frame_step", 1)
    if not isinstance(frame_step, int) or isinstance(frame_step, bool) or frame_step < 1:
        raise WorkflowError(f"{where}: frame_step must be a whole number of at least 1 (got {frame_step!r})",
                            "write e.g. frame_step = 4 for Wan, or leave it out")
    description = mapping.get("description", "")
    if not isinstance(description, str):
        raise WorkflowError(f"{where}: description must be text", 'write description = "..."')

    raw_inputs = mapping.get("inputs")
    if not isinstance(raw_inputs, dict):
        raise WorkflowError(f"{where}: there is no [inputs] table", "add [inputs] with one line per slot, e.g. prompt = \"6.text\"")
    inputs = {slot: _parse_targets(slot, value, graph, where) for slot, value in raw_inputs.items()}
    # Two slots writing one input would make the result depend on fill order.
    owner: dict[Target, str] = {}
    for slot, targets in inputs.items():
        for target in targets:
            if target in owner:
                raise WorkflowError(
                    f"{where}: {slot} and {owner[target]} both point at {'.'.join(target)}",
                    "give each slot its own input",
                )
            owner[target] = slot
    missing = [slot for slot in REQUIRED_SLOTS[kind] if slot not in inputs]
    if missing:
        raise WorkflowError(
            f"{where}: a {kind} workflow must map {', '.join(missing)}",
            "add under [inputs], e.g. " + "; ".join(f'{slot} = "<node_id>.<input>"' for slot in missing),
        )
    return Workflow(
        name=path.stem,
        kind=kind,
        graph=graph,
        inputs=inputs,
        vram_gb=vram_gb,
        timeout_seconds=timeout_seconds,
        max_frames=max_frames,
        path=path,
        description=description,
        frame_step=frame_step,
    )


def _read_graph(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise WorkflowError(f"cannot read workflow {path}: {exc.strerror or exc}", "check the path and permissions") from exc
    except json.JSONDecodeError as exc:
        raise WorkflowError(
            f"{path.name} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})",
            "export the workflow again from ComfyUI with Export (API)",
        ) from exc
    except UnicodeDecodeError as exc:
        raise WorkflowError(f"{path.name} is not UTF-8 text", "export the workflow again from ComfyUI with Export (API)") from exc
    if not isinstance(data, dict) or not data:
        raise WorkflowError(f"{path.name} holds no nodes", "export the workflow again from ComfyUI with Export (API)")
    # The UI format (what "Save"/"Export" write) lists nodes and links; the
    # server only runs the API format, which has node ids at the top level.
    if "nodes" in data or "links" in data:
        raise WorkflowError(
            f"{path.name} is in ComfyUI's UI format (it has top-level 'nodes'/'links'); the server runs only the API format",
            "this is the UI format; in ComfyUI use Export (API) (menu Workflow > Export (API)) and save that file instead",
        )
    for node_id, node in data.items():
        if not isinstance(node, dict) or not isinstance(node.get("inputs"), dict):
            raise WorkflowError(
                f"{path.name}: node {node_id} is not an API-format node (needs 'class_type' and an 'inputs' object)",
                "export the workflow again from ComfyUI with Export (API)",
            )
        if not isinstance(node.get("class_type"), str) or not node["class_type"]:
            raise WorkflowError(
                f"{path.name}: node {node_id} has no class_type",
                "export the workflow again from ComfyUI with Export (API)",
            )
    return data


def _read_mapping(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise WorkflowError(
            f"workflow {path.stem} has no mapping file {path.name} beside it",
            f"write {path} with kind, vram_gb, timeout_seconds and an [inputs] table (see the shipped workflows/*.toml)",
        ) from exc
    except OSError as exc:
        raise WorkflowError(f"cannot read {path}: {exc.strerror or exc}", "check the path and permissions") from exc
    except tomllib.TOMLDecodeError as exc:
        raise WorkflowError(f"{path.name} is not valid TOML: {exc}", "fix the TOML syntax at the place named") from exc
    except UnicodeDecodeError as exc:
        raise WorkflowError(f"{path.name} is not UTF-8 text", "save the mapping file as UTF-8") from exc


def _positive_number(mapping: Mapping[str, Any], key: str, where: str) -> float:
    value = mapping.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise WorkflowError(f"{where}: {key} must be a number above 0 (got {value!r})", f"add e.g. {key} = 16.0")
    return float(value)


def _parse_targets(slot: str, value: object, graph: Mapping[str, Any], where: str) -> tuple[Target, ...]:
    if slot not in SLOTS:
        raise WorkflowError(f"{where}: [inputs] has an unknown slot {slot!r}", f"the slots are: {', '.join(SLOTS)}")
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(item, str) for item in items):
        raise WorkflowError(
            f"{where}: {slot} = {value!r} is not a target",
            f'write {slot} = "<node_id>.<input>" or a list of them',
        )
    targets = []
    for item in items:
        # Node ids have no dots; input names can ("blocks.0."), so split once.
        node_id, dot, input_name = item.partition(".")
        if not dot or not node_id or not input_name:
            raise WorkflowError(f"{where}: {slot} = {item!r} is not \"<node_id>.<input>\"", f'write e.g. {slot} = "6.text"')
        node = graph.get(node_id)
        if node is None:
            raise WorkflowError(
                f"{where}: {slot} points at node {node_id}, which is not in the workflow",
                f"use one of the node ids in the .json: {', '.join(sorted(graph, key=node_order))}",
            )
        if input_name not in node["inputs"]:
            raise WorkflowError(
                f"{where}: {slot} points at {item}, but node {node_id} ({node['class_type']}) has no input {input_name!r}",
                f"use one of its inputs: {', '.join(node['inputs'])}",
            )
        if is_link(node["inputs"][input_name]):
            raise WorkflowError(
                f"{where}: {slot} points at {item}, which is connected to node {node['inputs'][input_name][0]}; "
                "writing a value there would cut that link",
                "map the input that holds the value itself (follow the link to its source node)",
            )
        targets.append((node_id, input_name))
    return tuple(targets)


def is_link(value: object) -> bool:
    """A link in the API format is ``[source_node_id, output_index]``."""
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str | int)
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
    )


def node_order(node_id: str) -> tuple[int, int | str]:
    """Numeric ids in number order, others after them in text order."""
    return (0, int(node_id)) if node_id.isdigit() else (1, node_id)
