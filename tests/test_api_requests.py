"""The HTTP API's answers to each kind of request, good and bad, on a real socket (no engine running)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from api_helpers import upload
from pydantic import SecretStr
from test_approval import new_pending_run

from daemon.approval import decisions
from daemon.approval.store import ApprovalStore
from daemon.channels.web.api.uploads import MARKER, UPLOADS_DIR, sanitize_name
from daemon.channels.web.server import WebPanel
from daemon.config import Settings
from daemon.music.synth import write_song
from daemon.runs import fsutil
from daemon.runs.states import State
from daemon.runs.store import RunStore


@pytest.fixture
def song(tmp_path: Path) -> Path:
    """A short real song."""
    path = tmp_path / "song.wav"
    write_song(path, 3.0, 120.0)
    return path


@pytest.fixture
def api(settings: Settings, store: RunStore) -> Iterator[str]:
    """The panel with its API on a free loopback port; yields the API's base URL."""
    settings.web.port = 0
    with WebPanel(settings, store) as panel:
        yield panel.url + "api/v1"


def _error(response: requests.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "hint"}
    assert body["error"]["code"] == code, body
    return str(body["error"]["message"])


def test_an_upload_without_a_song_is_a_400(api: str) -> None:
    """A multipart upload with no song part is refused with 400 no_song."""
    response = requests.post(api + "/runs", files={"options": (None, "{}")}, timeout=10)
    assert "no song part" in _error(response, 400, "no_song")


def test_a_broken_multipart_body_is_a_400(api: str, store: RunStore) -> None:
    """A body that is not valid multipart (schemathesis found this) is a 400 bad_multipart, not a 500."""
    response = requests.post(api + "/runs", data=b"--B\r\nlorem ipsum--B--\r\n", timeout=10,
                             headers={"Content-Type": "multipart/form-data; boundary=B"})
    assert "cannot be read" in _error(response, 400, "bad_multipart")
    uploads = store.root / UPLOADS_DIR
    assert not uploads.exists() or not any(uploads.iterdir())


def test_a_text_file_as_the_song_is_a_415_with_the_reason(api: str) -> None:
    """A text file sent as the song is refused with 415 saying it is text."""
    response = requests.post(api + "/runs", files={"song": ("song.mp3", b"just some words\n", "audio/mpeg")},
                             timeout=10)
    assert "it is text" in _error(response, 415, "not_audio")


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_an_oversize_upload_is_a_413(settings: Settings, store: RunStore, song: Path, chunked: bool) -> None:
    """An upload over api.max_upload_mb is a 413, declared or streamed, and leaves no upload folder behind."""
    settings.web.port = 0
    settings.api.max_upload_mb = 0.05
    with WebPanel(settings, store) as panel:
        boundary = "XyZ"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"song\"; filename=\"s.wav\"\r\n\r\n".encode()
                + song.read_bytes() + f"\r\n--{boundary}--\r\n".encode())
        data = iter([body[i:i + 8192] for i in range(0, len(body), 8192)]) if chunked else body
        response = requests.post(panel.url + "api/v1/runs", data=data, timeout=10,
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        assert "over" in _error(response, 413, "too_large")
    uploads = store.root / UPLOADS_DIR
    assert not uploads.exists() or not any(uploads.iterdir())
    assert not list(store.iter_runs())


@pytest.mark.parametrize(("options", "field"), [
    ({"fps": 1000}, "options.fps"),
    ({"colour": "red"}, "options.colour"),
    ({"scenes": [{"prompt": "no time"}]}, "options.scenes.0"),
    ({"approval": {"mode": "sometimes"}}, "options.approval.mode"),
    ({"theme": "no-such-theme"}, "options.theme"),
    ("{not json", "options"),
])
def test_bad_options_are_a_422_naming_the_field(api: str, song: Path, store: RunStore, options: object,
                                                 field: str) -> None:
    """Invalid options are refused with 422 and a message naming the field; no run is made."""
    if isinstance(options, str):
        with song.open("rb") as fh:
            response = requests.post(api + "/runs", files={"song": ("s.wav", fh)}, data={"options": options},
                                     timeout=10)
    else:
        response = upload(api, song, options=options)  # type: ignore[arg-type]
    assert _error(response, 422, "invalid_options").startswith(field)
    assert not list(store.iter_runs())


def test_an_unknown_run_is_a_404(api: str) -> None:
    """Reading, deciding on, retrying or downloading from a run that does not exist is a 404."""
    _error(requests.get(api + "/runs/20990101-000000_nope_00000000", timeout=10), 404, "not_found")
    _error(requests.post(api + "/runs/nope/retry", timeout=10), 404, "not_found")
    _error(requests.post(api + "/runs/nope/decisions", json={"decisions": [
        {"segment": 0, "candidate": 0, "action": "approve"}]}, timeout=10), 404, "not_found")
    _error(requests.get(api + "/runs/nope/files/final.mp4", timeout=10), 404, "not_found")
    _error(requests.get(api + "/no/such/call", timeout=10), 404, "not_found")


def test_a_decision_on_a_run_that_is_not_waiting_is_a_409(api: str, song: Path) -> None:
    """Deciding on a run that is not pending approval is a 409 naming its state; so is retrying it."""
    run_id = upload(api, song).json()["id"]
    message = _error(requests.post(f"{api}/runs/{run_id}/decisions", json={"decisions": [
        {"segment": 0, "candidate": 0, "action": "approve"}]}, timeout=10), 409, "not_waiting")
    assert "incoming" in message
    _error(requests.post(f"{api}/runs/{run_id}/retry", timeout=10), 409, "not_failed")


def test_decisions_go_through_the_store_every_channel_reads(api: str, store: RunStore, settings: Settings,
                                                            tmp_path: Path) -> None:
    """Decisions posted to the API land in approvals.json (channel api) and show in the shared run view."""
    ref, _ = new_pending_run(store, tmp_path, settings, segments=2)
    response = requests.post(f"{api}/runs/{ref.run_id}/decisions", json={"decisions": [
        {"segment": 0, "candidate": 0, "action": "approve"}, {"segment": 1, "candidate": 0, "action": "reject"}]},
        timeout=10)
    assert response.status_code == 200, response.text
    assert [d["action"] for d in response.json()["applied"]] == ["approve", "reject"]
    logged = ApprovalStore(store).load(store.find(ref.run_id)).decisions
    assert [(d.segment, d.verdict, d.channel) for d in logged] == [(0, "approve", "api"), (1, "reject", "api")]
    view = decisions.run_view(store, store.find(ref.run_id))
    assert view.segments[0].approved == 0
    detail = requests.get(f"{api}/runs/{ref.run_id}", timeout=10).json()
    assert [c["status"] for c in detail["candidates"] if c["segment"] == 0][0] == "approved"
    _error(requests.post(f"{api}/runs/{ref.run_id}/decisions", json={"decisions": [
        {"segment": 0, "candidate": 99, "action": "approve"}]}, timeout=10), 409, "decision_refused")
    _error(requests.post(f"{api}/runs/{ref.run_id}/decisions", json={"decisions": [{"segment": 0}]},
                         timeout=10), 422, "invalid_body")
    _error(requests.post(f"{api}/runs/{ref.run_id}/decisions", data="segment=0", timeout=10), 415, "not_json")


def test_a_forged_token_is_a_401_and_the_real_one_passes(settings: Settings, store: RunStore) -> None:
    """With a token configured, a wrong Bearer token is a 401 in the API's error shape; the right one works."""
    settings.web.port = 0
    settings.web.token = SecretStr("a-real-token-of-enough-length-42")
    with WebPanel(settings, store) as panel:
        base = panel.url + "api/v1"
        _error(requests.get(base + "/runs", headers={"Authorization": "Bearer forged"}, timeout=10),
               401, "token_needed")
        _error(requests.get(base + "/runs", timeout=10), 401, "token_needed")
        ok = requests.get(base + "/runs", headers={"Authorization": "Bearer a-real-token-of-enough-length-42"},
                          timeout=10)
        assert ok.status_code == 200 and ok.json() == {"runs": [], "next_cursor": None}


def test_a_path_traversal_name_stays_inside_the_run(api: str, song: Path, store: RunStore) -> None:
    """An uploaded name with ../ and control characters is stored as its bare, clean name inside the run."""
    response = upload(api, song, name="../../..\\evil\x07\u200b.wav")
    assert response.status_code == 201, response.text
    ref = store.find(response.json()["id"])
    assert response.json()["song"] == "evil.wav"
    assert (ref.path / "evil.wav").is_file()
    assert not (store.root.parent / "evil.wav").exists()
    for name in ("..%2Frun.json", "run.json", "%2e%2e%2f%2e%2e%2ftandava.toml", "evil.wav"):
        assert requests.get(f"{api}/runs/{ref.run_id}/files/{name}", timeout=10).status_code == 404
    assert sanitize_name("...", "song.wav") == "song.wav"
    assert sanitize_name("CON:<x>|.mp3", "s") == "CON__x__.mp3"


def test_a_known_song_answers_200_with_the_existing_run(api: str, song: Path) -> None:
    """The same song twice: 201 with a new run, then 200 with that run and duplicate true."""
    first = upload(api, song)
    again = upload(api, song, name="renamed.wav")
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"] and again.json()["duplicate"] is True


def test_lists_page_newest_first_with_a_cursor(api: str, tmp_path: Path) -> None:
    """GET /runs pages newest first; the cursor walks every run once; a bad state or limit is a 400."""
    made = []
    for i in range(5):
        path = tmp_path / f"s{i}.wav"
        write_song(path, 1.0, 100.0 + 7 * i)
        made.append(upload(api, path).json()["id"])
    seen, cursor = [], None
    while True:
        page = requests.get(api + "/runs", params={"limit": 2, **({"cursor": cursor} if cursor else {})},
                            timeout=10).json()
        seen += [r["id"] for r in page["runs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(made, reverse=True)
    only = requests.get(api + "/runs", params={"state": "incoming"}, timeout=10).json()["runs"]
    assert len(only) == 5
    _error(requests.get(api + "/runs", params={"state": "nowhere"}, timeout=10), 400, "bad_state")
    _error(requests.get(api + "/runs", params={"limit": 0}, timeout=10), 400, "bad_limit")


def test_an_upload_cut_by_a_restart_becomes_its_run_at_the_next_start(settings: Settings, store: RunStore,
                                                                      song: Path) -> None:
    """A whole upload a restart interrupted before the intake becomes its run (with options); a half one is dropped."""
    whole = store.root / UPLOADS_DIR / "aaaa"
    whole.mkdir(parents=True)
    song.replace(whole / "song.wav")
    (whole / "options.json").write_text(json.dumps({"approval": {"mode": "auto"}}), encoding="utf-8")
    fsutil.atomic_write_json(whole / MARKER, {"song": "song.wav", "sha256": fsutil.sha256_file(whole / "song.wav"),
                                              "extras": ["options.json"]})
    half = store.root / UPLOADS_DIR / "bbbb"
    half.mkdir()
    (half / "song.part").write_bytes(b"RIFF")
    settings.web.port = 0
    with WebPanel(settings, store):
        pass
    (ref,) = store.iter_runs()
    assert ref.state is State.INCOMING and (ref.path / "song.wav").is_file()
    assert json.loads((ref.path / "options.json").read_text("utf-8")) == {"approval": {"mode": "auto"}}
    assert not any((store.root / UPLOADS_DIR).iterdir())


def test_openapi_is_3_1_and_names_every_call(api: str) -> None:
    """The spec is OpenAPI 3.1 with the run options' schema from the same model the handler validates with."""
    doc = requests.get(api + "/openapi.json", timeout=10).json()
    assert doc["openapi"].startswith("3.1")
    assert {"/runs", "/runs/{run_id}", "/runs/{run_id}/decisions", "/runs/{run_id}/retry",
            "/runs/{run_id}/files/{name}", "/health", "/events"} <= set(doc["paths"])
    assert "scenes" in doc["components"]["schemas"]["RunOptions"]["properties"]
    assert requests.get(api + "/health", timeout=10).status_code == 200


def test_a_big_upload_streams_to_disk_with_memory_flat(api: str, store: RunStore) -> None:
    """A 100 MB song is written to disk as it arrives: the process grows by under 20 MB, and it becomes a run."""
    import struct
    import threading

    import psutil

    size = 100 * 1024 * 1024
    header = (b"RIFF" + struct.pack("<I", 36 + size) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, 22050, 44100,
              2, 16) + b"data" + struct.pack("<I", size))
    chunk = bytes(range(256)) * 256

    def body() -> Iterator[bytes]:
        yield b'--B\r\nContent-Disposition: form-data; name="song"; filename="big.wav"\r\n\r\n' + header
        for _ in range(size // len(chunk)):
            yield chunk
        yield b"\r\n--B--\r\n"

    me = psutil.Process()
    before, peak, done = me.memory_info().rss, [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], me.memory_info().rss)
            done.wait(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        response = requests.post(api + "/runs", data=body(), timeout=120,
                                 headers={"Content-Type": "multipart/form-data; boundary=B"})
    finally:
        done.set()
        sampler.join()
    assert response.status_code == 201, response.text
    assert peak[0] - before < 20 * 1024 * 1024
    ref = store.find(response.json()["id"])
    assert (ref.path / "big.wav").stat().st_size == len(header) + size
