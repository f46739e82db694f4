"""ComfyUI messages and history parsed without I/O, checked against frames captured from a real server."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.backends.comfy.events import (
    Executed,
    Executing,
    ExecutionError,
    ExecutionInterrupted,
    JobWatch,
    Preview,
    ProtocolError,
    Status,
    Text,
    Unknown,
    parse_binary,
    parse_history,
    parse_text,
)

# shared/ sits beside the repository, for developers and CI alike.
SAMPLES = Path(__file__).resolve().parent / "data" / "comfyui"



def frames(name: str) -> list[dict[str, Any]]:
    return [f for f in json.loads((SAMPLES / name).read_text(encoding="utf-8")) if f.get("kind") == "text"]


def watch_sequence(name: str) -> JobWatch:
    seq = frames(name)
    prompt_id = next(f["json"]["data"]["prompt_id"] for f in seq if f["json"]["type"] == "execution_start")
    watch = JobWatch(prompt_id)
    for frame in seq:
        watch.feed(parse_text(json.dumps(frame["json"])))
    return watch


def test_success_sequence_ends_in_success_with_the_saved_image() -> None:
    """execution_success then executing null: success, with the file SaveImage reported."""
    watch = watch_sequence("e1_ws_sequence_success.json")
    assert watch.done and watch.outcome == "success"
    assert [(f.subfolder, f.filename) for f in watch.outputs] == [("probe", "img_00004_.png")]
    assert watch.progress == 1.0


def test_runtime_error_sequence_is_an_error_with_the_exception() -> None:
    """execution_error then executing null: an error naming the node and exception."""
    watch = watch_sequence("e5_ws_sequence_runtime_error.json")
    assert watch.done and watch.outcome == "error"
    assert isinstance(watch.error, ExecutionError)
    assert watch.error.node_type == "SaveVideo" and watch.error.exception_type == "ValueError"


def test_interrupted_sequence_is_interrupted_not_error() -> None:
    """execution_interrupted is told apart from a failure."""
    watch = watch_sequence("e6_ws_sequence_interrupted.json")
    assert watch.done and watch.outcome == "interrupted"
    assert isinstance(watch.error, ExecutionInterrupted) and watch.error.node_type == "ImageBlur"


def test_progress_messages_move_progress_forward() -> None:
    """A job with a progress bar reports rising progress until it ends."""
    seq = frames("e12_ws_sequence_with_progress.json")
    prompt_id = next(f["json"]["data"]["prompt_id"] for f in seq if f["json"]["type"] == "execution_start")
    watch, seen = JobWatch(prompt_id), []
    for frame in seq:
        watch.feed(parse_text(json.dumps(frame["json"])))
        seen.append(watch.progress)
    assert watch.done and watch.outcome == "success"
    assert 0.0 < min(p for p in seen if p > 0) < 1.0 and seen[-1] == 1.0


def test_cached_resubmission_still_reports_the_old_file() -> None:
    """A fully cached job succeeds and names the old output; no new file was written."""
    watch = watch_sequence("e1_ws_sequence_identical_resubmit_cached.json")
    assert watch.outcome == "success" and watch.cached
    assert watch.outputs


def test_end_marker_without_success_is_never_success() -> None:
    """An end marker with no execution_success means the job did not succeed."""
    watch = JobWatch("p1")
    watch.feed(parse_text('{"type": "execution_start", "data": {"prompt_id": "p1", "timestamp": 1}}'))
    watch.feed(parse_text('{"type": "executing", "data": {"node": null, "prompt_id": "p1"}}'))
    assert watch.done and watch.outcome == "error"


def test_reconnect_mid_job_names_the_node_without_prompt_id() -> None:
    """After a reconnect, `executing` has no prompt_id; the watch keeps following its job."""
    clients = json.loads((SAMPLES / "e9_ws_clients.json").read_text(encoding="utf-8"))
    seq = [f for f in clients["(d) reconnect same clientId mid-job: frames after reconnect"] if f.get("kind") == "text"]
    events = [parse_text(json.dumps(f["json"])) for f in seq]
    assert events[1] == Executing(prompt_id=None, node="12")
    prompt_id = next(e.prompt_id for e in events if hasattr(e, "prompt_id") and e.prompt_id)
    watch = JobWatch(prompt_id, started=True)
    for event in events:
        watch.feed(event)
    assert watch.done


def test_other_prompts_events_are_ignored() -> None:
    """A watch follows its own prompt only."""
    watch = JobWatch("mine")
    watch.feed(parse_text('{"type": "execution_success", "data": {"prompt_id": "theirs", "timestamp": 1}}'))
    watch.feed(parse_text('{"type": "executing", "data": {"node": null, "prompt_id": "theirs"}}'))
    assert not watch.done and watch.outcome is None


def test_video_outputs_come_under_images_marked_animated() -> None:
    """Video nodes report their file under `images` with animated: [true]."""
    event = parse_text(json.dumps({"type": "executed", "data": {
        "node": "6", "display_node": "6", "prompt_id": "p",
        "output": {"images": [{"filename": "video_00001_.mp4", "subfolder": "probe", "type": "output"}],
                   "animated": [True]}}}))
    assert isinstance(event, Executed)
    assert event.files[0].animated and event.files[0].filename == "video_00001_.mp4"


def test_status_on_connect_carries_the_sid() -> None:
    """The first status message names the socket's client id."""
    event = parse_text(json.dumps(frames("e1_ws_sequence_success.json")[0]["json"]))
    assert isinstance(event, Status) and event.sid == "probe-e1-client"


@pytest.mark.parametrize(("name", "outcome", "kind"), [
    ("e1_history_prompt_id.json", "success", None),
    ("e5_history_runtime_error.json", "error", ExecutionError),
    ("e6_history_interrupted.json", "interrupted", ExecutionInterrupted),
])
def test_history_tells_success_error_and_interrupt_apart(name: str, outcome: str, kind: type | None) -> None:
    """History says "error" for both failures; the last message tells an interrupt from an error."""
    body = json.loads((SAMPLES / name).read_text(encoding="utf-8"))
    prompt_id = next(iter(body))
    result = parse_history(prompt_id, body)
    assert result is not None and result.outcome == outcome
    assert (result.error is None) if kind is None else isinstance(result.error, kind)


def test_history_of_an_unknown_or_running_prompt_is_none() -> None:
    """An unknown id answers {} (not 404): the job has not finished, or never existed."""
    assert parse_history("nope", {}) is None


def test_binary_frames() -> None:
    """Preview (1, 4) and text (3) binary frames decode; unknown types are kept, short ones refused."""
    assert parse_binary(struct.pack(">II", 1, 2) + b"PNGDATA") == Preview("png", b"PNGDATA")
    meta = json.dumps({"node_id": "3", "prompt_id": "p", "image_type": "image/jpeg"}).encode()
    assert parse_binary(struct.pack(">II", 4, len(meta)) + meta + b"JPG") == Preview("jpeg", b"JPG", "p", "3")
    assert parse_binary(struct.pack(">II", 3, 2) + b"12hello") == Text("12", "hello")
    assert isinstance(parse_binary(struct.pack(">I", 9) + b"x"), Unknown)
    with pytest.raises(ProtocolError):
        parse_binary(b"\x00")


def test_unknown_types_are_kept_and_garbage_is_a_protocol_error() -> None:
    """A new message type is kept as Unknown; a malformed frame is a ProtocolError, never a crash."""
    assert parse_text('{"type": "brand_new", "data": {"x": 1}}') == Unknown("brand_new", {"x": 1})
    for bad in ("not json", '{"data": {}}', '{"type": "executing", "data": {}}', "[1, 2]"):
        with pytest.raises(ProtocolError):
            parse_text(bad)


@given(st.text() | st.binary())
def test_parse_text_never_raises_anything_but_protocol_error(raw: str | bytes) -> None:
    """Whatever arrives on the socket, parsing either returns an event or raises ProtocolError."""
    try:
        event = parse_text(raw)
    except ProtocolError:
        return
    assert event is not None
