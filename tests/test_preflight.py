"""Preflight: workflow graphs checked against a real ComfyUI v0.3.64 /object_info capture."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest

from daemon.backends.comfy.preflight import (
    Problem,
    check,
    check_workflow,
    model_folder,
    node_pack,
    raise_for,
)
from daemon.backends.comfy.workflows import builtin_dir, find_workflow
from daemon.errors import WorkflowError

SAMPLES = Path(__file__).resolve().parent / "data" / "comfyui"
KIJAI_FIXTURE = Path(__file__).resolve().parent / "data" / "object_info_kijai.json"

# Every model file the shipped workflows load, by the folder it lives in.
MODEL_FILES: dict[str, list[str]] = {
    "diffusion_models": [
        "flux1-dev.safetensors",
        "wan2.1_i2v_480p_14B_fp8_e4m3fn.safetensors",
        "Wan2_1-I2V-14B-480P_fp8_e5m2.safetensors",
    ],
    "text_encoders": [
        "clip_l.safetensors",
        "t5xxl_fp8_e4m3fn.safetensors",
        "umt5_xxl_fp8_e4m3fn_scaled.safetensors",
        "umt5-xxl-enc-bf16.safetensors",
    ],
    "vae": ["ae.safetensors", "wan_2.1_vae.safetensors", "Wan2_1_VAE_bf16.safetensors"],
    "clip_vision": ["clip_vision_h.safetensors"],
}


@pytest.fixture(scope="module")
def captured() -> dict[str, Any]:
    """The /object_info of ComfyUI v0.3.64 with no models installed (API nodes disabled)."""
    data: dict[str, Any] = json.loads(
        (SAMPLES / "object_info_full_disable_api_nodes.json").read_text(encoding="utf-8")
    )
    return data


@pytest.fixture(scope="module")
def kijai() -> dict[str, Any]:
    """Our hand-made /object_info excerpt of the ComfyUI-WanVideoWrapper classes the kijai workflow uses."""
    data = json.loads(KIJAI_FIXTURE.read_text(encoding="utf-8"))
    return {name: info for name, info in data.items() if not name.startswith("_")}


def with_models(object_info: Mapping[str, Any], files: Mapping[str, Iterable[str]]) -> dict[str, Any]:
    """A copy of object_info whose model combos list ``files`` (folder -> names), as a server with them would."""
    info = copy.deepcopy(dict(object_info))
    for class_type, entry in info.items():
        for section in ("required", "optional"):
            for name, spec in (entry.get("input", {}).get(section) or {}).items():
                names = list(files.get(model_folder(class_type, name) or "", ()))
                if not names:
                    continue
                if isinstance(spec[0], list):
                    spec[0].extend(n for n in names if n not in spec[0])
                elif spec[0] == "COMBO":
                    options = spec[1].setdefault("options", [])
                    options.extend(n for n in names if n not in options)
    return info


def graph_of(*nodes: tuple[str, str, dict[str, Any]]) -> dict[str, Any]:
    """An API graph from (node_id, class_type, inputs) triples."""
    return {node_id: {"class_type": class_type, "inputs": inputs} for node_id, class_type, inputs in nodes}


def only(problems: list[Problem]) -> Problem:
    """The single problem of a list, failing with all of them shown otherwise."""
    assert len(problems) == 1, [str(p) for p in problems]
    return problems[0]


SAVE: tuple[str, str, dict[str, Any]] = ("9", "SaveImage", {"images": ["8", 0], "filename_prefix": "t"})
IMAGE: tuple[str, str, dict[str, Any]] = ("8", "EmptyImage", {"width": 64, "height": 64, "batch_size": 1, "color": 0})


@pytest.mark.parametrize("name", ["flux_t2i", "wan21_i2v"])
def test_native_workflow_is_clean_once_its_models_are_on_the_server(name: str, captured: dict[str, Any]) -> None:
    """With the model files in the lists, every class, input, link and value of a native workflow fits v0.3.64."""
    assert check_workflow(find_workflow(name), with_models(captured, MODEL_FILES)) == []


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "flux_t2i",
            {
                ("10", "unet_name"): "diffusion_models",
                ("11", "clip_name1"): "text_encoders",
                ("11", "clip_name2"): "text_encoders",
                ("12", "vae_name"): "vae",
            },
        ),
        (
            "wan21_i2v",
            {
                ("37", "unet_name"): "diffusion_models",
                ("38", "clip_name"): "text_encoders",
                ("39", "vae_name"): "vae",
                ("49", "clip_name"): "clip_vision",
            },
        ),
    ],
)
def test_each_missing_model_is_reported_with_its_folder(
    name: str, expected: dict[tuple[str, str], str], captured: dict[str, Any]
) -> None:
    """On a server without models, each model input is one problem naming the folder to put the file in."""
    problems = check_workflow(find_workflow(name), captured)
    assert {(p.node, p.input): p.folder for p in problems} == expected
    for p in problems:
        assert f"put the file in ComfyUI/models/{p.folder}/" in str(p)


def test_problem_reads_as_one_sentence(captured: dict[str, Any]) -> None:
    """A missing model reads: workflow, node, class, input, value, what is wrong and where the file goes."""
    problems = check_workflow(find_workflow("wan21_i2v"), captured)
    assert str(problems[0]) == (
        "wan21_i2v: node 37 (UNETLoader) input unet_name = 'wan2.1_i2v_480p_14B_fp8_e4m3fn.safetensors' "
        "is not on the server: put the file in ComfyUI/models/diffusion_models/"
    )
    assert problems[0].value == "wan2.1_i2v_480p_14B_fp8_e4m3fn.safetensors"


def test_one_missing_model_is_found_among_the_present_ones(captured: dict[str, Any]) -> None:
    """Only the file that is absent is reported when the others are there."""
    files = {**MODEL_FILES, "clip_vision": []}
    problem = only(check_workflow(find_workflow("wan21_i2v"), with_models(captured, files)))
    assert (problem.node, problem.class_type, problem.folder) == ("49", "CLIPVisionLoader", "clip_vision")


def test_kijai_workflow_on_a_plain_server_names_the_missing_pack(captured: dict[str, Any]) -> None:
    """Without the wrapper installed, each of its nodes is an unknown class naming ComfyUI-WanVideoWrapper."""
    wf = find_workflow("wan21_i2v_kijai")
    problems = check_workflow(wf, with_models(captured, MODEL_FILES))
    custom = {node["class_type"] for node in wf.graph.values()} - set(captured)
    assert {p.class_type for p in problems} == custom
    for p in problems:
        assert p.input is None
        assert str(p).endswith(
            f"node class {p.class_type} is not installed on the server "
            "(a custom node pack is missing: ComfyUI-WanVideoWrapper)"
        )


def test_kijai_workflow_is_clean_with_the_wrapper_installed(captured: dict[str, Any], kijai: dict[str, Any]) -> None:
    """With the wrapper's classes (and the core clip vision model) on the server, the kijai workflow fits."""
    server = with_models({**captured, **kijai}, {"clip_vision": ["clip_vision_h.safetensors"]})
    assert check_workflow(find_workflow("wan21_i2v_kijai"), server) == []


def test_kijai_missing_models_name_the_wrapper_folders(captured: dict[str, Any], kijai: dict[str, Any]) -> None:
    """The wrapper's own loaders map to diffusion_models, vae and text_encoders."""
    emptied = copy.deepcopy(kijai)
    for class_type, name in (("WanVideoModelLoader", "model"), ("WanVideoVAELoader", "model_name"),
                             ("LoadWanVideoT5TextEncoder", "model_name")):
        emptied[class_type]["input"]["required"][name][0] = []
    server = with_models({**captured, **emptied}, {"clip_vision": ["clip_vision_h.safetensors"]})
    problems = check_workflow(find_workflow("wan21_i2v_kijai"), server)
    assert {(p.class_type, p.folder) for p in problems} == {
        ("WanVideoModelLoader", "diffusion_models"),
        ("WanVideoVAELoader", "vae"),
        ("LoadWanVideoT5TextEncoder", "text_encoders"),
    }


def test_a_class_missing_from_an_installed_pack_asks_for_an_update(
    captured: dict[str, Any], kijai: dict[str, Any]
) -> None:
    """When the wrapper is installed but lacks a class (an older version), the problem says to update it."""
    server = with_models({**captured, **kijai}, MODEL_FILES)
    del server["WanVideoClipVisionEncode"]
    problem = only(check_workflow(find_workflow("wan21_i2v_kijai"), server))
    assert problem.message == (
        "node class WanVideoClipVisionEncode is not in the ComfyUI-WanVideoWrapper installed on the server "
        "(the pack is older or newer than the workflow: update it)"
    )


def test_every_kijai_class_in_the_fixture_is_used_by_the_workflow(kijai: dict[str, Any]) -> None:
    """The fixture holds exactly the wrapper classes the shipped kijai workflow needs."""
    graph = json.loads((builtin_dir() / "wan21_i2v_kijai.json").read_text(encoding="utf-8"))
    used = {node["class_type"] for node in graph.values() if node_pack(node["class_type"])}
    assert used == set(kijai)


def test_start_image_placeholder_is_skipped_but_checked_otherwise(captured: dict[str, Any]) -> None:
    """The LoadImage value we upload at run time is not checked; a fixed image that is absent is."""
    graph = find_workflow("wan21_i2v").graph
    server = with_models(captured, MODEL_FILES)
    problem = only(check(graph, server, workflow="wan21_i2v"))
    assert (problem.node, problem.input, problem.folder) == ("52", "image", "input")
    assert "is not in ComfyUI/input/ on the server" in str(problem)
    assert check(graph, server, workflow="wan21_i2v", skip={("52", "image")}) == []


def test_images_in_subfolders_are_not_flagged(captured: dict[str, Any]) -> None:
    """LoadImage lists only top-level files but loads 'sub/x.png' and 'x.png [temp]', so those pass."""
    for name in ("daemon/probe_sub.png", "probe_tmp.png [temp]", "example.png"):
        graph = graph_of(("1", "LoadImage", {"image": name}), ("9", "SaveImage", {"images": ["1", 0], "filename_prefix": "t"}))
        assert check(graph, captured, workflow="t") == []


def test_int_out_of_range_is_reported(captured: dict[str, Any]) -> None:
    """An INT below min or above max names the bound."""
    low = copy.deepcopy(IMAGE)
    low[2]["width"] = 0
    assert "is below the minimum 1" in str(only(check(graph_of(low, SAVE), captured, workflow="t")))
    high = copy.deepcopy(IMAGE)
    high[2]["color"] = 0x1000000
    assert "is above the maximum 16777215" in str(only(check(graph_of(high, SAVE), captured, workflow="t")))


def test_float_out_of_range_is_reported(captured: dict[str, Any]) -> None:
    """A FLOAT above max (CreateVideo fps 121) is a problem, as the server would say."""
    graph = find_workflow("wan21_i2v").fill(fps=121.0)
    problems = check(graph, with_models(captured, MODEL_FILES), workflow="wan21_i2v", skip={("52", "image")})
    assert str(only(problems)) == "wan21_i2v: node 55 (CreateVideo) input fps = 121.0 is above the maximum 120.0"


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("width", "abc", "should be a whole number (INT), not text"),
        ("width", 64.5, "should be a whole number (INT), not a number"),
        ("width", True, "should be a whole number (INT), not true/false"),
    ],
)
def test_wrong_literal_type_is_reported(captured: dict[str, Any], name: str, value: object, words: str) -> None:
    """A string, fraction or boolean where an INT belongs is a problem."""
    node = copy.deepcopy(IMAGE)
    node[2][name] = value
    assert words in str(only(check(graph_of(node, SAVE), captured, workflow="t")))


def test_whole_float_is_accepted_for_int(captured: dict[str, Any]) -> None:
    """64.0 for an INT passes, as the server converts it."""
    node = copy.deepcopy(IMAGE)
    node[2]["width"] = 64.0
    assert check(graph_of(node, SAVE), captured, workflow="t") == []


def test_old_style_combo_value_not_in_list(captured: dict[str, Any]) -> None:
    """A KSampler sampler_name outside [[options], {...}] is reported with the choices."""
    graph = find_workflow("flux_t2i").fill(seed=1)
    graph["3"]["inputs"]["sampler_name"] = "euler_fast"
    problem = only(check(graph, with_models(captured, MODEL_FILES), workflow="flux_t2i"))
    assert (problem.node, problem.input, problem.folder) == ("3", "sampler_name", None)
    assert "is not one of the choices the server offers: 'euler', 'euler_cfg_pp'" in str(problem)


def test_new_style_combo_value_not_in_list(captured: dict[str, Any]) -> None:
    """SaveVideo format 'mkv' is a problem although the server accepts it and fails at run time."""
    graph = find_workflow("wan21_i2v").fill()
    graph["56"]["inputs"]["format"] = "mkv"
    problem = only(check(graph, with_models(captured, MODEL_FILES), workflow="wan21_i2v", skip={("52", "image")}))
    assert str(problem) == (
        "wan21_i2v: node 56 (SaveVideo) input format = 'mkv' is not one of the choices the server offers: 'auto', 'mp4'"
    )


def test_new_style_model_combo_names_its_folder(captured: dict[str, Any]) -> None:
    """UpscaleModelLoader ['COMBO', {options}] with a missing file names upscale_models."""
    graph = graph_of(("1", "UpscaleModelLoader", {"model_name": "4x_foolhardy.pth"}))
    problem = only(check(graph, captured, workflow="t"))
    assert problem.folder == "upscale_models"
    assert "put the file in ComfyUI/models/upscale_models/" in str(problem)
    assert check(graph_of(("1", "UpscaleModelLoader", {"model_name": "tiny_compact_x1.safetensors"})), captured, workflow="t") == []


def test_unknown_input_name_is_reported(captured: dict[str, Any]) -> None:
    """An input the class does not have (renamed in an update) is a problem."""
    node = copy.deepcopy(IMAGE)
    node[2]["colour"] = 5
    problem = only(check(graph_of(node, SAVE), captured, workflow="t"))
    assert (problem.input, problem.value) == ("colour", 5)
    assert "is not an input of EmptyImage on the server" in str(problem)


def test_missing_required_input_is_reported(captured: dict[str, Any]) -> None:
    """A required input that is neither a value nor a link is a problem; hidden inputs are not required."""
    node = copy.deepcopy(IMAGE)
    del node[2]["width"]
    problem = only(check(graph_of(node, SAVE), captured, workflow="t"))
    assert (problem.node, problem.input, problem.value) == ("8", "width", None)
    assert str(problem).startswith("t: node 8 (EmptyImage) input width is required by EmptyImage but not set")


def test_missing_optional_input_is_fine(captured: dict[str, Any]) -> None:
    """Optional inputs may be left out (WanImageToVideo without clip_vision_output)."""
    graph = find_workflow("wan21_i2v").fill()
    del graph["50"]["inputs"]["clip_vision_output"]
    assert check(graph, with_models(captured, MODEL_FILES), workflow="w", skip={("52", "image")}) == []


def test_link_to_a_missing_node_is_reported(captured: dict[str, Any]) -> None:
    """A link whose source node id is not in the graph is a problem on the consuming input."""
    save = ("9", "SaveImage", {"images": ["99", 0], "filename_prefix": "t"})
    problem = only(check(graph_of(IMAGE, save), captured, workflow="t"))
    assert str(problem) == "t: node 9 (SaveImage) input images = ['99', 0] links to node 99, which is not in the workflow"


def test_link_to_an_output_the_source_lacks_is_reported(captured: dict[str, Any]) -> None:
    """A link to output 2 of a one-output node is a problem."""
    save = ("9", "SaveImage", {"images": ["8", 2], "filename_prefix": "t"})
    assert "links to output 2 of node 8 (EmptyImage), which has 1 output(s)" in str(
        only(check(graph_of(IMAGE, save), captured, workflow="t"))
    )


def test_linked_type_mismatch_is_reported(captured: dict[str, Any]) -> None:
    """A LATENT linked into an IMAGE input is a problem naming both types."""
    graph = find_workflow("flux_t2i").fill()
    graph["9"]["inputs"]["images"] = ["3", 0]
    problem = only(check(graph, with_models(captured, MODEL_FILES), workflow="flux_t2i"))
    assert str(problem) == (
        "flux_t2i: node 9 (SaveImage) input images = ['3', 0] expects IMAGE but is linked to "
        "output 0 of node 3 (KSampler), which gives LATENT"
    )


def test_star_input_takes_any_type(captured: dict[str, Any]) -> None:
    """PreviewAny's '*' input accepts an IMAGE link."""
    graph = graph_of(IMAGE, ("2", "PreviewAny", {"source": ["8", 0]}))
    assert check(graph, captured, workflow="t") == []


def test_combo_input_accepts_a_link(captured: dict[str, Any]) -> None:
    """A combo input may be fed by a node whose output is a list of choices."""
    server = {**captured, "PickSampler": {"input": {"required": {}}, "output": [["euler", "uni_pc"]]}}
    graph = find_workflow("flux_t2i").fill()
    graph["20"] = {"class_type": "PickSampler", "inputs": {}}
    graph["3"]["inputs"]["sampler_name"] = ["20", 0]
    assert check(graph, with_models(server, MODEL_FILES), workflow="t") == []


def test_value_where_a_link_belongs_is_reported(captured: dict[str, Any]) -> None:
    """A literal in a MODEL input is a problem: it needs a link."""
    graph = find_workflow("flux_t2i").fill()
    graph["3"]["inputs"]["model"] = "flux1-dev.safetensors"
    problem = only(check(graph, with_models(captured, MODEL_FILES), workflow="t"))
    assert "needs a link from a node that outputs MODEL, not a value" in str(problem)


def test_unknown_class_outside_known_packs(captured: dict[str, Any]) -> None:
    """A class we cannot place still says that a custom node pack is missing; VHS and GGUF ones are named."""
    graph = graph_of(("1", "MysteryNode", {}), ("2", "VHS_VideoCombine", {}), ("3", "UnetLoaderGGUF", {}))
    assert [p.message for p in check(graph, captured, workflow="t")] == [
        "node class MysteryNode is not installed on the server (a custom node pack is missing)",
        "node class VHS_VideoCombine is not installed on the server (a custom node pack is missing: ComfyUI-VideoHelperSuite)",
        "node class UnetLoaderGGUF is not installed on the server (a custom node pack is missing: ComfyUI-GGUF)",
    ]


def test_node_without_class_type_is_reported(captured: dict[str, Any]) -> None:
    """A node with no class_type is a problem that says to re-export."""
    problem = only(check({"1": {"inputs": {}}}, captured, workflow="t"))
    assert str(problem) == "t: node 1: has no class_type; export the workflow again with Export (API)"


def test_check_workflow_fills_sample_values_of_each_type(tmp_path: Path, captured: dict[str, Any]) -> None:
    """A mapping that sends the prompt into an INT input is caught before the first job."""
    src = builtin_dir()
    (tmp_path / "bad.json").write_text((src / "flux_t2i.json").read_text(encoding="utf-8"), encoding="utf-8")
    toml = (src / "flux_t2i.toml").read_text(encoding="utf-8").replace('prompt = "6.text"', 'prompt = "3.steps"')
    (tmp_path / "bad.toml").write_text(toml, encoding="utf-8")
    problem = only(check_workflow(find_workflow("bad", tmp_path), with_models(captured, MODEL_FILES)))
    assert (problem.node, problem.input, problem.value) == ("3", "steps", "preflight check")
    assert "should be a whole number (INT), not text" in str(problem)


def test_check_workflow_with_given_values(captured: dict[str, Any]) -> None:
    """Given values are checked as filled: a width above the maximum is reported."""
    problems = check_workflow(find_workflow("flux_t2i"), with_models(captured, MODEL_FILES), {"width": 20000})
    assert "is above the maximum 16384" in str(only(problems))


def test_model_folder_table() -> None:
    """Loader inputs map to the server's model folders, class-specific entries first."""
    assert model_folder("CheckpointLoaderSimple", "ckpt_name") == "checkpoints"
    assert model_folder("UNETLoader", "unet_name") == "diffusion_models"
    assert model_folder("DualCLIPLoader", "clip_name2") == "text_encoders"
    assert model_folder("CLIPLoader", "clip_name") == "text_encoders"
    assert model_folder("CLIPVisionLoader", "clip_name") == "clip_vision"
    assert model_folder("LoraLoader", "lora_name") == "loras"
    assert model_folder("UpscaleModelLoader", "model_name") == "upscale_models"
    assert model_folder("ControlNetLoader", "control_net_name") == "controlnet"
    assert model_folder("WanVideoModelLoader", "model") == "diffusion_models"
    assert model_folder("LoadImage", "image") == "input"
    assert model_folder("KSampler", "sampler_name") is None


def test_raise_for_lists_five_problems_and_counts_the_rest(captured: dict[str, Any]) -> None:
    """raise_for names five problems, says how many more, and hints at folders and packs."""
    problems = check_workflow(find_workflow("wan21_i2v_kijai"), captured)
    assert len(problems) == 10
    with pytest.raises(WorkflowError) as info:
        raise_for(problems)
    error = info.value
    assert error.cause == "WorkflowMismatch"
    assert error.reason.startswith("workflow wan21_i2v_kijai does not fit the ComfyUI server (10 problems): ")
    assert error.reason.endswith("; and 5 more")
    assert str(problems[4]) in error.reason and str(problems[5]) not in error.reason
    assert "install or update the custom node pack(s) ComfyUI-WanVideoWrapper" in error.hint
    assert "ComfyUI/models/clip_vision/" in error.hint


def test_raise_for_hint_for_mismatched_inputs(captured: dict[str, Any]) -> None:
    """Input problems without a folder hint at fixing and re-exporting the workflow."""
    node = copy.deepcopy(IMAGE)
    node[2]["width"] = "wide"
    with pytest.raises(WorkflowError) as info:
        raise_for(check(graph_of(node, SAVE), captured, workflow="t"))
    assert "(1 problem)" in info.value.reason
    assert "Export (API)" in info.value.hint


def test_raise_for_nothing_passes() -> None:
    """An empty problem list raises nothing."""
    raise_for([])
