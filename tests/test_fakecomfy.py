"""The fake ComfyUI against the captures of a real one (shared/comfyui/PROTOCOL.md)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
import requests
import websocket
from fakecomfy import FakeComfy
from fakecomfy.server import SAMPLES
from PIL import Image

from daemon.backends.comfy.events import Executing, JobWatch, parse_history, parse_text

IMAGE_GRAPH = {
    "1": {"class_type": "EmptyImage",
          "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0xFF8800}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "probe/img"}},
}


def _sample(name: str) -> Any:
    return json.loads((SAMPLES / name).read_text(encoding="utf-8"))


def _job_types(frames: list[dict]) -> list[str]:
    """Message types of a captured job, without the socket's on-connect status."""
    messages = [f["json"] for f in frames if f["kind"] == "text"]
    return [m["type"] for m in messages if "sid" not in m["data"]]


def _graph(*nodes: tuple[str, dict]) -> dict[str, dict]:
    """Nodes "1", "2", ... in order; a string input "@3" links to node 3's first output."""
    return {str(i): {"class_type": cls, "inputs": {
        k: [v[1:], 0] if isinstance(v, str) and v.startswith("@") else v for k, v in inputs.items()}}
        for i, (cls, inputs) in enumerate(nodes, start=1)}


def _blur_chain(blurs: int) -> dict[str, dict]:
    blur = ("ImageBlur", {"blur_radius": 3, "sigma": 1.0})
    chain = [("EmptyImage", {"width": 32, "height": 32, "batch_size": 1, "color": 0x123456})]
    for i in range(blurs):
        chain.append((blur[0], {"image": f"@{i + 1}", **blur[1]}))
    chain.append(("SaveImage", {"images": f"@{blurs + 1}", "filename_prefix": "probe/slow"}))
    return _graph(*chain)


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeComfy]:
    with FakeComfy(tmp_path / "comfy", job_seconds=0.01) as server:
        yield server


@contextlib.contextmanager
def _socket(fake: FakeComfy, client_id: str | None = "tester",
            skip_hello: bool = True) -> Iterator[websocket.WebSocket]:
    query = f"?clientId={client_id}" if client_id else ""
    ws = websocket.create_connection(f"ws://127.0.0.1:{fake.port}/ws{query}", timeout=5)
    try:
        if skip_hello:
            ws.recv()
        yield ws
    finally:
        with contextlib.suppress(OSError, websocket.WebSocketException):
            ws.close(timeout=1)
        ws.shutdown()


def _post(fake: FakeComfy, graph: dict, client_id: str | None = "tester", **body: Any) -> dict:
    if client_id:
        body["client_id"] = client_id
    response = requests.post(f"{fake.url}/prompt", json={"prompt": graph, **body}, timeout=5)
    assert response.status_code == 200, response.text
    return response.json()


def _until_done(ws: websocket.WebSocket, prompt_id: str) -> list[dict]:
    """Every message up to this prompt's end marker ``executing {node: null}``."""
    messages = []
    while True:
        message = json.loads(ws.recv())
        messages.append(message)
        data = message["data"]
        ended = message["type"] == "executing" and data.get("node") is None
        if ended and data.get("prompt_id") == prompt_id:
            return messages


def _history(fake: FakeComfy, prompt_id: str) -> dict:
    return requests.get(f"{fake.url}/history/{prompt_id}", timeout=5).json()


def test_success_sequence_matches_capture(fake: FakeComfy) -> None:
    """A good image job sends exactly the captured message sequence, readable by our parser."""
    with _socket(fake) as ws:
        prompt_id = _post(fake, IMAGE_GRAPH, extra_data={"extra_pnginfo": {"note": "hi"}})["prompt_id"]
        messages = _until_done(ws, prompt_id)
    assert [m["type"] for m in messages] == _job_types(_sample("e1_ws_sequence_success.json"))
    watch = JobWatch(prompt_id)
    for message in messages:
        watch.feed(parse_text(json.dumps(message)))
    assert watch.outcome == "success"
    assert [f.filename for f in watch.outputs] == ["img_00001_.png"]
    with Image.open(fake.output_dir / "probe" / "img_00001_.png") as image:
        assert image.getpixel((5, 5)) == (255, 136, 0)
        assert json.loads(image.text["prompt"]) == IMAGE_GRAPH
        assert json.loads(image.text["note"]) == "hi"


def test_identical_resubmit_is_cached(fake: FakeComfy) -> None:
    """Re-posting the same graph runs nothing, writes nothing and points at the old file."""
    with _socket(fake) as ws:
        _until_done(ws, _post(fake, IMAGE_GRAPH)["prompt_id"])
        prompt_id = _post(fake, IMAGE_GRAPH)["prompt_id"]
        messages = _until_done(ws, prompt_id)
    expected = _job_types(_sample("e1_ws_sequence_identical_resubmit_cached.json"))
    assert [m["type"] for m in messages] == expected
    assert messages[3]["data"]["nodes"] == ["1", "2"]
    assert sorted(p.name for p in (fake.output_dir / "probe").iterdir()) == ["img_00001_.png"]
    outcome = parse_history(prompt_id, _history(fake, prompt_id))
    assert outcome is not None and outcome.files[0].filename == "img_00001_.png"
    assert fake.executed_count == 1


def test_changed_input_reruns_only_what_changed(fake: FakeComfy) -> None:
    """A new filename_prefix re-runs SaveImage while EmptyImage stays cached."""
    _post(fake, IMAGE_GRAPH, client_id=None)
    changed = json.loads(json.dumps(IMAGE_GRAPH))
    changed["2"]["inputs"]["filename_prefix"] = "probe/other"
    prompt_id = _post(fake, changed, client_id=None)["prompt_id"]
    fake.wait_idle()
    messages = _history(fake, prompt_id)[prompt_id]["status"]["messages"]
    assert messages[1][1]["nodes"] == ["1"]
    assert (fake.output_dir / "probe" / "other_00001_.png").is_file()


def test_runtime_error_sequence_matches_capture(fake: FakeComfy) -> None:
    """A V3 combo value outside its options passes POST and fails at run time like e5."""
    graph = _sample("e5_history_runtime_error.json")
    graph = next(iter(graph.values()))["prompt"][2]
    with _socket(fake) as ws:
        answer = _post(fake, graph)
        assert answer["node_errors"] == {}
        messages = _until_done(ws, answer["prompt_id"])
    assert [m["type"] for m in messages] == _job_types(_sample("e5_ws_sequence_runtime_error.json"))
    error = messages[-3]["data"]
    assert (error["node_id"], error["node_type"]) == ("4", "SaveVideo")
    assert error["exception_type"] == "ValueError"
    assert error["exception_message"] == "'mkv' is not a valid VideoContainer\n"
    assert sorted(error["executed"]) == ["1", "2", "3"]
    assert error["current_inputs"]["format"] == ["mkv"]
    entry = _history(fake, answer["prompt_id"])[answer["prompt_id"]]
    captured = next(iter(_sample("e5_history_runtime_error.json").values()))
    assert entry.keys() == captured.keys()
    assert (entry["outputs"], entry["meta"]) == ({}, {})
    assert entry["status"]["status_str"] == "error" and entry["status"]["completed"] is False
    assert entry["status"]["messages"][-1][1].keys() == captured["status"]["messages"][-1][1].keys()


def test_fail_next_fails_once_at_the_named_node(fake: FakeComfy) -> None:
    """fail_next makes exactly one job end in execution_error at the chosen node class."""
    fake.fail_next("SaveImage", "torch.OutOfMemoryError", "CUDA out of memory")
    failed = _post(fake, IMAGE_GRAPH, client_id=None)["prompt_id"]
    fake.wait_idle()
    outcome = parse_history(failed, _history(fake, failed))
    assert outcome is not None and outcome.outcome == "error" and outcome.error is not None
    assert (outcome.error.node_id, outcome.error.exception_type) == ("2", "torch.OutOfMemoryError")
    ok = _post(fake, IMAGE_GRAPH, client_id=None)["prompt_id"]
    fake.wait_idle()
    assert _history(fake, ok)[ok]["status"]["status_str"] == "success"


def test_interrupt_stops_at_next_node_like_capture(fake: FakeComfy) -> None:
    """POST /interrupt ends the running job at the next node start; the next job runs."""
    fake.node_seconds = {"ImageBlur": 0.15}
    captured = _job_types(_sample("e6_ws_sequence_interrupted.json"))
    captured = captured[: captured.index("execution_interrupted") + 3]
    with _socket(fake) as ws:
        first = _post(fake, _blur_chain(4))["prompt_id"]
        second = _post(fake, IMAGE_GRAPH)["prompt_id"]
        while json.loads(ws.recv())["data"].get("node") != "2":
            pass
        requests.post(f"{fake.url}/interrupt", json={"prompt_id": "not-running"}, timeout=5)
        requests.post(f"{fake.url}/api/interrupt", timeout=5)
        messages = _until_done(ws, first)
        _until_done(ws, second)
    types = [m["type"] for m in messages]
    assert types[-6:] == captured[-6:]
    stopped = messages[-3]["data"]
    assert (stopped["node_id"], stopped["node_type"]) == ("3", "ImageBlur")
    assert stopped["executed"] == ["1", "2"]
    entry = _history(fake, first)[first]
    assert entry["status"]["status_str"] == "error"
    assert entry["status"]["messages"][-1][0] == "execution_interrupted"
    assert _history(fake, second)[second]["status"]["status_str"] == "success"


def test_progress_sequence_matches_capture(tmp_path: Path) -> None:
    """ImageUpscaleWithModel on 2x1024² reports 18 progress steps exactly like e12."""
    graph = _graph(
        ("UpscaleModelLoader", {"model_name": "tiny.safetensors"}),
        ("EmptyImage", {"width": 1024, "height": 1024, "batch_size": 2, "color": 255}),
        ("ImageUpscaleWithModel", {"upscale_model": "@1", "image": "@2"}),
        ("SaveImage", {"images": "@3", "filename_prefix": "probe/upscaled"}))
    with FakeComfy(tmp_path, job_seconds=0.01, node_seconds={"ImageUpscaleWithModel": 0.05},
                   models={"upscale_models": ["tiny.safetensors"]}) as fake, _socket(fake) as ws:
        messages = _until_done(ws, _post(fake, graph)["prompt_id"])
    assert [m["type"] for m in messages] == _job_types(_sample("e12_ws_sequence_with_progress.json"))
    progress = [m["data"] for m in messages if m["type"] == "progress"]
    steps = [(p["value"], p["max"], p["node"]) for p in progress]
    assert steps == [(i, 18, "3") for i in range(1, 19)]


def test_prompt_without_client_id_reaches_nobody(fake: FakeComfy) -> None:
    """Without client_id other sockets only see status and broadcast progress_state (e9 a)."""
    clients = _sample("e9_ws_clients.json")
    captured = clients["(a) prompt WITHOUT client_id: frames seen by an unrelated socket"]
    with _socket(fake, "observer") as observer:
        _post(fake, IMAGE_GRAPH, client_id=None)
        fake.wait_idle()
        seen = [json.loads(observer.recv())["type"] for _ in captured]
        observer.settimeout(0.1)
        with pytest.raises(websocket.WebSocketTimeoutException):
            observer.recv()
    assert seen == [m["type"] for m in captured]


def test_reconnect_mid_job_gets_executing_without_prompt_id(fake: FakeComfy) -> None:
    """A socket that comes back during a job hears status, then the current node without prompt_id."""
    fake.node_seconds = {"ImageBlur": 0.3}
    with _socket(fake, "reattach") as ws:
        prompt_id = _post(fake, _blur_chain(1), client_id="reattach")["prompt_id"]
        while json.loads(ws.recv())["data"].get("node") != "2":
            pass
    time.sleep(0.05)
    with _socket(fake, "reattach", skip_hello=False) as ws:
        hello, current = json.loads(ws.recv()), json.loads(ws.recv())
        rest = _until_done(ws, prompt_id)
    assert hello["type"] == "status" and hello["data"]["sid"] == "reattach"
    assert current == {"type": "executing", "data": {"node": "2"}}
    assert parse_text(json.dumps(current)) == Executing(prompt_id=None, node="2")
    assert "execution_success" in [m["type"] for m in rest]


def test_newer_socket_with_same_client_id_takes_over(fake: FakeComfy) -> None:
    """Two sockets with one clientId: the newer gets the job, the older hears nothing (e9 c)."""
    _post(fake, IMAGE_GRAPH, client_id=None)  # e9 c re-ran a graph whose EmptyImage was cached
    fake.wait_idle()
    graph = json.loads(json.dumps(IMAGE_GRAPH))
    graph["2"]["inputs"]["filename_prefix"] = "probe/twin"
    with _socket(fake, "twin") as old, _socket(fake, "twin") as new:
        prompt_id = _post(fake, graph, client_id="twin")["prompt_id"]
        types = [m["type"] for m in _until_done(new, prompt_id)]
        old.settimeout(0.2)
        with pytest.raises(websocket.WebSocketTimeoutException):
            old.recv()
    captured = _sample("e9_ws_clients.json")["(c) two sockets same clientId"]
    assert types == captured["second_socket_types"]


def _shape(value: Any) -> Any:
    """Keys and types of a JSON value, with ids and numbers abstracted away."""
    if isinstance(value, dict):
        return {"<id>" if len(k) > 30 else k: _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(v) for v in value]
    return type(value).__name__ if value is not None else None


def test_history_entry_matches_captured_shape(fake: FakeComfy) -> None:
    """/history/{id} has the captured shape; unknown ids and max_items behave as captured."""
    prompt_id = _post(fake, IMAGE_GRAPH, client_id="probe-e1-client",
                      extra_data={"extra_pnginfo": {"note": "n"}})["prompt_id"]
    fake.wait_idle()
    entry = _history(fake, prompt_id)
    captured = _sample("e1_history_prompt_id.json")
    assert _shape(entry) == _shape(captured)
    assert entry[prompt_id]["prompt"][4] == ["2"]
    assert requests.get(f"{fake.url}/history/nope", timeout=5).json() == {}
    second = _post(fake, _blur_chain(1), client_id=None)["prompt_id"]
    fake.wait_idle()
    assert list(requests.get(f"{fake.url}/api/history?max_items=1", timeout=5).json()) == [second]
    assert list(requests.get(f"{fake.url}/history", timeout=5).json()) == [prompt_id, second]
    requests.post(f"{fake.url}/history", json={"delete": [prompt_id]}, timeout=5)
    assert list(requests.get(f"{fake.url}/history", timeout=5).json()) == [second]


def _without_tracebacks(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_tracebacks(v) for k, v in value.items() if k != "traceback"}
    if isinstance(value, list):
        return [_without_tracebacks(v) for v in value]
    return value


def test_rejected_prompts_match_capture(fake: FakeComfy) -> None:
    """Every captured POST /prompt case gets the captured status and body (tracebacks aside)."""
    for case in _sample("e4_post_prompt_cases.json"):
        if case["case"] == "invalid_json_body":
            response = requests.post(f"{fake.url}/prompt", data="{nope", timeout=5)
            assert (response.status_code, response.text) == (500, case["response"])
            continue
        response = requests.post(f"{fake.url}/prompt", json=case["request"], timeout=5)
        assert response.status_code == case["status"], case["case"]
        assert response.headers["Content-Type"] == "application/json; charset=utf-8"
        body = response.json()
        if case["status"] == 400:
            assert _without_tracebacks(body) == _without_tracebacks(case["response"]), case["case"]
        else:
            assert body["node_errors"] == case["response"]["node_errors"], case["case"]
    counted = [c for c in _sample("e4_post_prompt_cases.json")
               if "request" in c and "number" not in c["request"]]
    assert _post(fake, IMAGE_GRAPH, front=True)["number"] == -len(counted)  # rejected ones count


def test_v3_and_v1_validation_differ_like_capture(fake: FakeComfy) -> None:
    """Old-style combos are checked at POST; V3 min/max are checked, V3 options are not."""
    cases = _sample("e13_v3_vs_v1_validation.json")
    webm = _graph(("EmptyImage", {"width": 64, "height": 48, "batch_size": 2, "color": 1}),
                  ("SaveWEBM", {"images": "@1", "filename_prefix": "probe/w", "codec": "vp9",
                                "fps": 12.0, "crf": 100}))
    response = requests.post(f"{fake.url}/prompt", json={"prompt": webm}, timeout=5)
    assert response.json() == cases["V3 SaveWEBM crf=100 (max 63)"]["post_body"]
    scale = _graph(("EmptyImage", {"width": 64, "height": 48, "batch_size": 1, "color": 1}),
                   ("ImageScale", {"image": "@1", "upscale_method": "bogus", "width": 8, "height": 8,
                                   "crop": "disabled"}),
                   ("SaveImage", {"images": "@2", "filename_prefix": "probe/s"}))
    response = requests.post(f"{fake.url}/prompt", json={"prompt": scale}, timeout=5)
    assert response.json() == cases["V1 ImageScale upscale_method=bogus"]["post_body"]


def test_v3_model_combo_fails_at_run_time(fake: FakeComfy) -> None:
    """An unknown upscale model is accepted with 200 and fails as FileNotFoundError (e12)."""
    graph = _graph(("EmptyImage", {"width": 8, "height": 8, "batch_size": 1, "color": 1}),
                   ("UpscaleModelLoader", {"model_name": "nonexistent.safetensors"}),
                   ("ImageUpscaleWithModel", {"upscale_model": "@2", "image": "@1"}),
                   ("SaveImage", {"images": "@3", "filename_prefix": "probe/up"}))
    answer = _post(fake, graph, client_id=None)
    assert answer["node_errors"] == {}
    fake.wait_idle()
    error = _history(fake, answer["prompt_id"])[answer["prompt_id"]]["status"]["messages"][-1][1]
    captured = _sample("e12_v3_combo_validation.json")["v3_model_not_in_list_runtime_error"]
    for key in ("node_id", "node_type", "exception_message", "exception_type", "current_inputs"):
        assert error[key] == captured[key], key


def test_partially_valid_graph_runs_only_valid_output(fake: FakeComfy) -> None:
    """200 with node_errors: the bad branch is reported and only the good output runs."""
    cases = _sample("e4_post_prompt_cases.json")
    case = next(c for c in cases if c["case"] == "one_good_one_bad_output")
    answer = _post(fake, case["request"]["prompt"], client_id=None)
    assert answer["node_errors"] == case["response"]["node_errors"]
    fake.wait_idle()
    entry = _history(fake, answer["prompt_id"])[answer["prompt_id"]]
    assert entry["prompt"][4] == ["2"] and list(entry["outputs"]) == ["2"]


def _upload(fake: FakeComfy, data: bytes, name: str = "probe_src.png",
            **fields: str) -> requests.Response:
    return requests.post(f"{fake.url}/upload/image", files={"image": (name, data)}, data=fields,
                         timeout=5)


def test_upload_collision_rules_match_capture(fake: FakeComfy) -> None:
    """Same bytes keep the name, different bytes get ' (n)', overwrite replaces (e2)."""
    captured = {c["case"]: c for c in _sample("e2_upload_and_view.json")}
    answers = [_upload(fake, b"one"), _upload(fake, b"one"), _upload(fake, b"two"),
               _upload(fake, b"three"), _upload(fake, b"four", overwrite="true")]
    expected = ["first upload", "same name, same bytes (no overwrite)",
                "same name, different bytes (no overwrite)", "same name, different bytes again",
                "same name, different bytes, overwrite=true"]
    assert [a.text for a in answers] == [captured[c]["body"] for c in expected]
    assert (fake.input_dir / "probe_src.png").read_bytes() == b"four"
    assert _upload(fake, b"x", "x.png", subfolder="../../etc").status_code == 400
    assert requests.post(f"{fake.url}/upload/image", data={"a": "b"}, timeout=5).status_code == 400
    bogus = _upload(fake, b"x", type="bogus")
    assert (bogus.status_code, bogus.text) == (500, captured["type=bogus"]["body"])
    assert _upload(fake, b"y", "probe_sub.png", subfolder="daemon").json()["subfolder"] == "daemon"
    combo = requests.get(f"{fake.url}/object_info/LoadImage", timeout=5).json()
    assert combo["LoadImage"]["input"]["required"]["image"][0] == [
        "probe_src (1).png", "probe_src (2).png", "probe_src.png"]


def test_view_serves_files_and_refuses_bad_paths(fake: FakeComfy) -> None:
    """/view streams with the right type, supports ranges, and refuses escapes like the capture."""
    _upload(fake, b"0123456789", "probe_src.png")
    view = f"{fake.url}/view"
    ok = requests.get(view, params={"filename": "probe_src.png", "type": "input"}, timeout=5)
    assert (ok.status_code, ok.headers["Content-Type"]) == (200, "image/png")
    assert ok.content == b"0123456789"
    assert ok.headers["Content-Disposition"] == 'filename="probe_src.png"'
    part = requests.get(view, params={"filename": "probe_src.png [input]"},
                        headers={"Range": "bytes=0-3"}, timeout=5)
    assert (part.status_code, part.content) == (206, b"0123")
    refused = {
        404: {"filename": "probe_src.png"}, 400: {"filename": "../x.png", "type": "input"},
        403: {"filename": "probe_src.png", "subfolder": "../", "type": "input"},
    }
    for status, params in refused.items():
        response = requests.get(view, params=params, timeout=5)
        assert (response.status_code, response.content) == (status, b""), params
    weird = requests.get(view, params={"filename": "a.png", "type": "weird"}, timeout=5)
    assert weird.status_code == 400


def test_die_cuts_connections_and_restart_forgets(fake: FakeComfy) -> None:
    """die() is kill -9: no close frame, connection refused; restart() has an empty memory."""
    _post(fake, IMAGE_GRAPH, client_id=None)
    fake.wait_idle()
    fake.node_seconds = {"ImageBlur": 1.0}
    port = fake.port
    with _socket(fake) as ws:
        _post(fake, _blur_chain(1))
        while json.loads(ws.recv())["data"].get("node") != "2":
            pass
        fake.die()
        with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError)):
            for _ in range(100):
                assert ws.recv() != "", "a close frame arrived: a killed server sends none"
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{fake.url}/queue", timeout=2)
    (fake.temp_dir / "left.png").write_bytes(b"x")
    fake.restart()
    assert fake.port == port
    assert requests.get(f"{fake.url}/history", timeout=5).json() == {}
    queue = requests.get(f"{fake.url}/queue", timeout=5).json()
    assert queue == {"queue_running": [], "queue_pending": []}
    assert not any(fake.temp_dir.iterdir())
    again = _post(fake, IMAGE_GRAPH, client_id=None)
    fake.wait_idle()
    assert again["number"] == 0
    outputs = _history(fake, again["prompt_id"])[again["prompt_id"]]["outputs"]
    assert outputs["2"]["images"][0]["filename"] == "img_00002_.png"  # ran again: cache lost


def test_hang_accepts_but_never_answers(fake: FakeComfy) -> None:
    """hang(): TCP connects, HTTP times out; unhang() serves again."""
    fake.hang()
    with socket.create_connection(("127.0.0.1", fake.port), timeout=1):
        pass
    with pytest.raises(requests.ReadTimeout):
        requests.get(f"{fake.url}/system_stats", timeout=0.3)
    fake.unhang()
    assert requests.get(f"{fake.url}/system_stats", timeout=5).status_code == 200


def _checkpoint_graph(ckpt: str, prefix: str) -> dict[str, dict]:
    return _graph(("CheckpointLoaderSimple", {"ckpt_name": ckpt}),
                  ("EmptyLatentImage", {"width": 64, "height": 64, "batch_size": 1}),
                  ("VAEDecode", {"samples": "@2", "vae": ["1", 2]}),
                  ("SaveImage", {"images": "@3", "filename_prefix": prefix}))


def test_model_swaps_and_free(tmp_path: Path) -> None:
    """A job needing another model counts a swap; /free unload_models empties VRAM."""
    models = {"checkpoints": ["a.safetensors", "b.safetensors"]}
    with FakeComfy(tmp_path, job_seconds=0.01, models=models, model_vram=1000) as fake:
        free = fake.vram_free
        for ckpt, prefix in [("a", "p/1"), ("a", "p/2"), ("b", "p/3")]:
            _post(fake, _checkpoint_graph(f"{ckpt}.safetensors", prefix), client_id=None)
        fake.wait_idle()
        assert (fake.swaps, fake.loaded_model) == (2, ("b.safetensors",))
        stats = requests.get(f"{fake.url}/system_stats", timeout=5).json()["devices"][0]
        assert (stats["type"], stats["vram_free"]) == ("cuda", free - 1000)
        requests.post(f"{fake.url}/free", json={"unload_models": True}, timeout=5)
        time.sleep(0.05)
        assert (fake.loaded_model, fake.vram_free) == (None, free)
        _post(fake, _checkpoint_graph("b.safetensors", "p/4"), client_id=None)
        fake.wait_idle()
        assert fake.swaps == 3


def test_queue_control_and_priority(fake: FakeComfy) -> None:
    """front jumps the queue; delete and clear touch only pending prompts."""
    fake.node_seconds = {"ImageBlur": 0.3}
    running = _post(fake, _blur_chain(1), client_id=None)["prompt_id"]
    time.sleep(0.05)
    later = _post(fake, IMAGE_GRAPH, client_id=None)["prompt_id"]
    first = _post(fake, _blur_chain(0), client_id=None, front=True)
    doomed = _post(fake, _blur_chain(2), client_id=None)["prompt_id"]
    queue = requests.get(f"{fake.url}/queue", timeout=5).json()
    assert [item[1] for item in queue["queue_running"]] == [running]
    assert first["number"] < 0 and len(queue["queue_pending"]) == 3
    requests.post(f"{fake.url}/queue", json={"delete": [doomed, running]}, timeout=5)
    fake.wait_idle()
    history = requests.get(f"{fake.url}/history", timeout=5).json()
    assert list(history) == [running, first["prompt_id"], later]


def test_introspection_endpoints(tmp_path: Path) -> None:
    """system_stats (cpu), features, object_info, models answer like the captures, also under /api."""
    with FakeComfy(tmp_path, cpu=True, models={"loras": ["x.safetensors"]}) as fake:
        stats = requests.get(f"{fake.url}/api/system_stats", timeout=5).json()
        assert stats["devices"] == _sample("e8_system_stats_cpu.json")["devices"]
        assert requests.get(f"{fake.url}/features", timeout=5).json() == {
            "supports_preview_metadata": True, "max_upload_size": 104857600}
        assert requests.get(f"{fake.url}/object_info/NoSuchNode", timeout=5).json() == {}
        info = requests.get(f"{fake.url}/object_info", timeout=5).json()
        assert info["LoraLoader"]["input"]["required"]["lora_name"][0] == ["x.safetensors"]
        assert requests.get(f"{fake.url}/models/loras", timeout=5).json() == ["x.safetensors"]
        assert requests.get(f"{fake.url}/models/nope", timeout=5).status_code == 404
        idle = requests.get(f"{fake.url}/prompt", timeout=5).json()
        assert idle == {"exec_info": {"queue_remaining": 0}}
        with _socket(fake, "flags") as ws:
            ws.send(json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": True}}))
            assert json.loads(ws.recv())["type"] == "feature_flags"


def _frames(path: Path) -> tuple[np.ndarray, float, str]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])
        return frames, float(stream.average_rate), stream.codec_context.name


def _video_graph(prefix: str) -> dict[str, dict]:
    return _graph(("LoadImage", {"image": "start.png"}),
                  ("RepeatImageBatch", {"image": "@1", "amount": 12}),
                  ("ImageInvert", {"image": "@2"}),
                  ("ImageBatch", {"image1": "@2", "image2": "@3"}),
                  ("CreateVideo", {"images": "@4", "fps": 12.0}),
                  ("SaveVideo", {"video": "@5", "filename_prefix": prefix, "format": "mp4",
                                 "codec": "h264"}))


def _start_image(fake: FakeComfy) -> None:
    picture = Image.effect_mandelbrot((64, 48), (-2.0, -1.0, 1.0, 1.0), 50).convert("RGB")
    picture.save(fake.input_dir / "start.png")


def test_video_output_is_a_real_h264_clip(fake: FakeComfy) -> None:
    """SaveVideo writes an H.264 mp4 of the start image with motion, reported as animated images."""
    _start_image(fake)
    prompt_id = _post(fake, _video_graph("probe/video"), client_id=None)["prompt_id"]
    fake.wait_idle()
    output = _history(fake, prompt_id)[prompt_id]["outputs"]["6"]
    assert output == {"images": [{"filename": "video_00001_.mp4", "subfolder": "probe",
                                  "type": "output"}], "animated": [True]}
    frames, fps, codec = _frames(fake.output_dir / "probe" / "video_00001_.mp4")
    assert (frames.shape, fps, codec) == ((24, 48, 64, 3), 12.0, "h264")
    assert np.abs(frames[0].astype(int) - frames[-1].astype(int)).mean() > 5


@pytest.mark.parametrize("mode", ["black", "frozen", "flash"])
def test_bad_video_modes(fake: FakeComfy, mode: str) -> None:
    """video_mode makes the all-black, frozen and flashing clips a quality gate must catch."""
    fake.video_mode = mode
    _start_image(fake)
    _post(fake, _video_graph(f"bad/{mode}"), client_id=None)
    fake.wait_idle()
    frames, _, _ = _frames(fake.output_dir / "bad" / f"{mode}_00001_.mp4")
    means = frames.reshape(len(frames), -1).mean(axis=1)
    if mode == "black":
        assert means.max() < 10
    elif mode == "frozen":
        assert np.abs(frames.astype(int) - frames[0].astype(int)).mean(axis=(1, 2, 3)).max() < 3
    else:
        assert means[len(frames) // 2] > 245 and means[0] < 200


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_main_script_runs_from_a_comfyui_folder(tmp_path: Path) -> None:
    """main.py copied into a folder serves ComfyUI's API there until interrupted."""
    folder = tmp_path / "ComfyUI"
    folder.mkdir()
    shutil.copy(Path(__file__).parent / "fakecomfy" / "main.py", folder / "main.py")
    port = _free_port()
    env = {**os.environ, "TANDAVA_REPO": str(Path(__file__).resolve().parents[1])}
    process = subprocess.Popen(
        [sys.executable, str(folder / "main.py"), "--listen", "127.0.0.1", "--port", str(port),
         "--cpu", "--disable-api-nodes"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                stats = requests.get(f"http://127.0.0.1:{port}/system_stats", timeout=1).json()
                break
            except requests.ConnectionError:
                assert process.poll() is None and time.monotonic() < deadline, "main.py did not start"
                time.sleep(0.05)
        assert stats["devices"][0]["type"] == "cpu"
        assert "--disable-api-nodes" in stats["system"]["argv"]
        assert (folder / "output").is_dir() and (folder / "input").is_dir()
    finally:
        process.terminate()
        process.communicate(timeout=10)
