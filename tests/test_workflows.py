"""Workflow templates: loading the JSON + TOML pair, filling slots, refusing broken mappings."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest

from daemon.backends.comfy.workflows import (
    REQUIRED_SLOTS,
    Workflow,
    builtin_dir,
    find_workflow,
    load_workflow,
)
from daemon.errors import PermanentError, WorkflowError

SHIPPED = ("flux_t2i", "wan21_i2v", "wan21_i2v_kijai")

FULL_VALUES: dict[str, object] = {
    "prompt": "a red fox running through snow",
    "negative_prompt": "blurry",
    "seed": 424242,
    "width": 640,
    "height": 368,
    "frames": 49,
    "fps": 16.0,
    "start_image": "run_abc_seg03.png",
    "filename_prefix": "tandava/run_abc/seg03",
}


def write_pair(folder: Path, name: str, graph: object, mapping: str) -> Path:
    """Write <name>.json and <name>.toml into folder; return the .json path."""
    path = folder / f"{name}.json"
    path.write_text(json.dumps(graph), encoding="utf-8")
    (folder / f"{name}.toml").write_text(mapping, encoding="utf-8")
    return path


def tiny_graph() -> dict[str, object]:
    """A small API graph: EmptyImage -> SaveImage, and a text node for the prompt."""
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
        "3": {"class_type": "PrimitiveString", "inputs": {"value": ""}},
    }


IMAGE_MAPPING = """kind = "image"
vram_gb = 1.0
timeout_seconds = 60
[inputs]
prompt = "3.value"
seed = "1.color"
width = "1.width"
height = "1.height"
filename_prefix = "2.filename_prefix"
"""


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_workflow_loads(name: str) -> None:
    """Each shipped workflow loads with its kind, estimates and every required slot mapped."""
    wf = find_workflow(name)
    assert wf.name == name
    assert wf.path == builtin_dir() / f"{name}.json"
    assert wf.kind in ("image", "video")
    assert set(REQUIRED_SLOTS[wf.kind]) <= set(wf.inputs)
    assert wf.vram_gb > 0 and wf.timeout_seconds > 0
    assert wf.description
    assert (wf.max_frames is not None) == (wf.kind == "video")


def test_shipped_kinds_and_frames() -> None:
    """Flux makes images; both Wan workflows make videos of at most 81 frames."""
    assert find_workflow("flux_t2i").kind == "image"
    for name in ("wan21_i2v", "wan21_i2v_kijai"):
        wf = find_workflow(name)
        assert (wf.kind, wf.max_frames) == ("video", 81)


@pytest.mark.parametrize("name", ("wan21_i2v", "wan21_i2v_kijai"))
def test_fill_sets_every_target_and_leaves_the_template_alone(name: str) -> None:
    """fill writes each slot's value into its targets in a copy; the template graph is unchanged."""
    wf = find_workflow(name)
    before = copy.deepcopy(wf.graph)
    graph = wf.fill(**FULL_VALUES)
    for slot, targets in wf.inputs.items():
        for node_id, input_name in targets:
            assert graph[node_id]["inputs"][input_name] == FULL_VALUES[slot]
    assert wf.graph == before
    assert graph is not wf.graph
    node_id, input_name = wf.inputs["prompt"][0]
    graph[node_id]["inputs"][input_name] = "mutated"
    assert wf.graph == before


def test_fill_of_native_wan_lands_on_the_right_nodes() -> None:
    """The native Wan mapping drives the text encoders, sampler, WanImageToVideo, CreateVideo and SaveVideo."""
    graph = find_workflow("wan21_i2v").fill(**FULL_VALUES)
    assert graph["6"]["inputs"]["text"] == FULL_VALUES["prompt"]
    assert graph["7"]["inputs"]["text"] == FULL_VALUES["negative_prompt"]
    assert graph["3"]["inputs"]["seed"] == 424242
    assert graph["50"]["inputs"]["length"] == 49
    assert graph["52"]["inputs"]["image"] == "run_abc_seg03.png"
    assert graph["55"]["inputs"]["fps"] == 16.0
    assert graph["56"]["inputs"]["filename_prefix"] == "tandava/run_abc/seg03"


def test_fill_drops_optional_slots_the_workflow_does_not_map() -> None:
    """Flux has no negative prompt or frame rate: those values are ignored, not an error."""
    wf = find_workflow("flux_t2i")
    graph = wf.fill(prompt="p", negative_prompt="ugly", fps=16.0)
    assert graph["6"]["inputs"]["text"] == "p"
    assert graph == wf.fill(prompt="p")


def test_fill_refuses_a_required_slot_the_mapping_lacks() -> None:
    """A start image for an image workflow would be silently lost, so fill refuses it."""
    with pytest.raises(WorkflowError) as info:
        find_workflow("flux_t2i").fill(prompt="p", start_image="a.png")
    assert "start_image" in info.value.reason
    assert "flux_t2i.toml" in info.value.hint


def test_fill_refuses_an_unknown_slot() -> None:
    """A misspelt slot name is an error that lists the real slots."""
    with pytest.raises(WorkflowError) as info:
        find_workflow("flux_t2i").fill(promt="p")
    assert "promt" in info.value.reason
    assert "prompt" in info.value.hint


def test_fill_treats_none_as_not_given() -> None:
    """A slot passed as None keeps the template's value."""
    wf = find_workflow("wan21_i2v")
    assert wf.fill(negative_prompt=None, start_image=None) == wf.graph


def test_workflow_error_is_permanent() -> None:
    """WorkflowError is a PermanentError: retrying the same workflow cannot help."""
    assert issubclass(WorkflowError, PermanentError)


def test_models_lists_model_file_inputs() -> None:
    """models() names every input that holds a model file, in node order."""
    assert find_workflow("wan21_i2v").models() == [
        ("37", "unet_name", "wan2.1_i2v_480p_14B_fp8_e4m3fn.safetensors"),
        ("38", "clip_name", "umt5_xxl_fp8_e4m3fn_scaled.safetensors"),
        ("39", "vae_name", "wan_2.1_vae.safetensors"),
        ("49", "clip_name", "clip_vision_h.safetensors"),
    ]
    kijai = {value for _, _, value in find_workflow("wan21_i2v_kijai").models()}
    assert kijai == {
        "Wan2_1-I2V-14B-480P_fp8_e5m2.safetensors",
        "Wan2_1_VAE_bf16.safetensors",
        "umt5-xxl-enc-bf16.safetensors",
        "clip_vision_h.safetensors",
    }


def test_signature_groups_workflows_by_model_files(tmp_path: Path) -> None:
    """Two workflows that load the same files share a signature; different files give a different one."""
    src = builtin_dir()
    shutil.copy(src / "wan21_i2v.json", tmp_path / "my_wan.json")
    (tmp_path / "my_wan.toml").write_text(
        (src / "wan21_i2v.toml").read_text(encoding="utf-8").replace("vram_gb = 20.0", "vram_gb = 24.0"),
        encoding="utf-8",
    )
    mine = find_workflow("my_wan", tmp_path)
    shipped = find_workflow("wan21_i2v")
    assert mine.signature() == shipped.signature()
    assert shipped.signature() == shipped.signature()
    assert shipped.signature() != find_workflow("flux_t2i").signature()
    assert shipped.signature() != find_workflow("wan21_i2v_kijai").signature()


def test_ui_format_is_refused_with_the_export_api_hint(tmp_path: Path) -> None:
    """A workflow saved in the UI format is refused, and the hint says to use Export (API)."""
    ui = {"last_node_id": 9, "nodes": [{"id": 3, "type": "KSampler"}], "links": [[1, 4, 0, 3, 0, "MODEL"]]}
    path = write_pair(tmp_path, "ui", ui, IMAGE_MAPPING)
    with pytest.raises(WorkflowError) as info:
        load_workflow(path)
    assert "ui.json" in info.value.reason
    assert "UI format" in info.value.reason
    assert "Export (API)" in info.value.hint


def test_mapping_pointing_at_a_missing_node_is_refused(tmp_path: Path) -> None:
    """A mapping target naming a node id the graph lacks is refused with the ids that exist."""
    path = write_pair(tmp_path, "w", tiny_graph(), IMAGE_MAPPING.replace('prompt = "3.', 'prompt = "99.'))
    with pytest.raises(WorkflowError) as info:
        load_workflow(path)
    assert "w.toml" in info.value.reason
    assert "node 99" in info.value.reason
    assert "1, 2, 3" in info.value.hint


def test_mapping_pointing_at_a_missing_input_is_refused(tmp_path: Path) -> None:
    """A mapping target naming an input the node does not have is refused with the node's inputs."""
    path = write_pair(tmp_path, "w", tiny_graph(), IMAGE_MAPPING.replace('width = "1.width"', 'width = "1.wdth"'))
    with pytest.raises(WorkflowError) as info:
        load_workflow(path)
    assert "'wdth'" in info.value.reason and "EmptyImage" in info.value.reason
    assert "width" in info.value.hint


def test_mapping_pointing_at_a_link_is_refused(tmp_path: Path) -> None:
    """A target that holds a link would cut the graph when filled, so it is refused."""
    path = write_pair(tmp_path, "w", tiny_graph(), IMAGE_MAPPING.replace('prompt = "3.value"', 'prompt = "2.images"'))
    with pytest.raises(WorkflowError, match="connected to node 1"):
        load_workflow(path)


def test_missing_required_slot_for_the_kind_is_refused(tmp_path: Path) -> None:
    """A video mapping without start_image, frames and fps is refused, naming them."""
    mapping = IMAGE_MAPPING.replace('kind = "image"', 'kind = "video"\nmax_frames = 81')
    path = write_pair(tmp_path, "w", tiny_graph(), mapping)
    with pytest.raises(WorkflowError) as info:
        load_workflow(path)
    assert "start_image, frames, fps" in info.value.reason


@pytest.mark.parametrize(
    ("mapping", "words"),
    [
        ("kind = \"image\"\nvram_gb = [broken\n", "not valid TOML"),
        (IMAGE_MAPPING.replace('kind = "image"', 'kind = "audio"'), "kind = 'audio'"),
        (IMAGE_MAPPING.replace("vram_gb = 1.0", "vram_gb = 0"), "vram_gb must be a number above 0"),
        (IMAGE_MAPPING.replace("vram_gb = 1.0", 'vram = 1.0\nvram_gb = 1.0'), "unknown key(s) vram"),
        (IMAGE_MAPPING + 'colour = "1.color"\n', "unknown slot 'colour'"),
        (IMAGE_MAPPING.replace('seed = "1.color"', "seed = 3"), "is not a target"),
        (IMAGE_MAPPING.replace('seed = "1.color"', 'seed = "color"'), "is not \"<node_id>.<input>\""),
        (IMAGE_MAPPING.replace('kind = "image"', 'kind = "video"'), "needs max_frames"),
        (IMAGE_MAPPING.split("[inputs]")[0], "no [inputs] table"),
        (IMAGE_MAPPING.replace('seed = "1.color"', 'seed = "1.width"'), "width and seed both point at 1.width"),
    ],
)
def test_bad_mapping_is_refused_naming_the_file(tmp_path: Path, mapping: str, words: str) -> None:
    """Broken TOML, a bad kind or estimate, unknown keys or slots and malformed targets are refused."""
    path = write_pair(tmp_path, "w", tiny_graph(), mapping)
    with pytest.raises(WorkflowError) as info:
        load_workflow(path)
    assert "w.toml" in info.value.reason
    assert words in info.value.reason


def test_list_targets_and_dotted_input_names(tmp_path: Path) -> None:
    """A slot may fill several inputs, and input names may contain dots (split at the first dot only)."""
    graph = tiny_graph()
    graph["4"] = {"class_type": "X", "inputs": {"blocks.0.": 1}}
    mapping = IMAGE_MAPPING.replace('width = "1.width"', 'width = ["1.width", "4.blocks.0."]')
    wf = load_workflow(write_pair(tmp_path, "w", graph, mapping))
    assert wf.inputs["width"] == (("1", "width"), ("4", "blocks.0."))
    filled = wf.fill(width=320)
    assert filled["1"]["inputs"]["width"] == 320 and filled["4"]["inputs"]["blocks.0."] == 320


def test_missing_mapping_file_is_refused(tmp_path: Path) -> None:
    """A .json without its .toml is refused, saying which file to write."""
    path = tmp_path / "lonely.json"
    path.write_text(json.dumps(tiny_graph()), encoding="utf-8")
    with pytest.raises(WorkflowError) as info:
        load_workflow(path)
    assert "lonely.toml" in info.value.reason


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("{not json", "not valid JSON (line 1"),
        ("[]", "holds no nodes"),
        ('{"1": {"inputs": {}}}', "node 1 has no class_type"),
        ('{"1": {"class_type": "X", "inputs": 3}}', "node 1 is not an API-format node"),
    ],
)
def test_bad_graph_is_refused_naming_the_file(tmp_path: Path, text: str, words: str) -> None:
    """Invalid JSON and nodes without the API shape are refused, naming the file."""
    path = tmp_path / "w.json"
    path.write_text(text, encoding="utf-8")
    (tmp_path / "w.toml").write_text(IMAGE_MAPPING, encoding="utf-8")
    with pytest.raises(WorkflowError) as info:
        load_workflow(path)
    assert "w.json" in info.value.reason and words in info.value.reason


def test_user_folder_is_searched_before_the_shipped_one(tmp_path: Path) -> None:
    """A user's workflow with a shipped name replaces the shipped one."""
    shutil.copy(builtin_dir() / "flux_t2i.json", tmp_path / "flux_t2i.json")
    toml = (builtin_dir() / "flux_t2i.toml").read_text(encoding="utf-8")
    (tmp_path / "flux_t2i.toml").write_text(toml.replace("vram_gb = 14.0", "vram_gb = 23.5"), encoding="utf-8")
    wf = find_workflow("flux_t2i", tmp_path)
    assert (wf.vram_gb, wf.path) == (23.5, tmp_path / "flux_t2i.json")
    assert find_workflow("wan21_i2v", tmp_path).path.parent == builtin_dir()


def test_a_dropped_in_workflow_needs_no_code(tmp_path: Path) -> None:
    """Any exported graph plus a mapping in the user folder is found by name, with or without .json."""
    write_pair(tmp_path, "my_sdxl", tiny_graph(), IMAGE_MAPPING)
    wf = find_workflow("my_sdxl.json", tmp_path)
    assert isinstance(wf, Workflow)
    assert wf.fill(seed=7, width=128)["1"]["inputs"] == {"width": 128, "height": 64, "batch_size": 1, "color": 7}


def test_unknown_name_lists_the_available_workflows(tmp_path: Path) -> None:
    """A name that is nowhere is refused with the user's and the shipped names."""
    write_pair(tmp_path, "mine", tiny_graph(), IMAGE_MAPPING)
    with pytest.raises(WorkflowError) as info:
        find_workflow("wan22", tmp_path)
    assert "'wan22'" in info.value.reason
    for name in ("mine", *SHIPPED):
        assert name in info.value.hint


def test_a_path_is_not_a_name() -> None:
    """Names with folders are refused so a name cannot reach outside the workflow folders."""
    with pytest.raises(WorkflowError):
        find_workflow("../pyproject")
