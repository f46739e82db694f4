"""The web panel over real sockets: pages, actions through decisions.*, files, tokens, refusals."""

from __future__ import annotations

import hashlib
import http.client
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import imageio_ffmpeg
import pytest
import requests
from PIL import Image
from test_approval import new_pending_run

from daemon.approval import decisions
from daemon.approval.store import ApprovalStore
from daemon.channels.web.server import WebPanel, doctor_checks, url_for
from daemon.config import Settings
from daemon.errors import ConfigError, PermanentError
from daemon.runs.states import Event, State
from daemon.runs.store import RunRef, RunStore

TOKEN = "s3cret-token-for-tests-0123456789"
SONG = "शिव तांडव 🔱 & 'Rudra'.flac"


# -- helpers shared with test_web_browser --------------------------------------------------------


def new_run(store: RunStore, tmp_path: Path, name: str) -> RunRef:
    """A run in incoming/ for a song called ``name`` (its id differs from every other name's)."""
    song = tmp_path / name
    song.write_bytes(b"not audio")
    return store.create(song, hashlib.sha256(name.encode("utf-8")).hexdigest())


def new_failed_run(store: RunStore, tmp_path: Path, name: str = "broken song.mp3",
                   reason: str = "the song is silent", hint: str = "drop a song with sound") -> RunRef:
    """A run in failed/ with a reason and a hint, its song named ``name``."""
    return store.fail(new_run(store, tmp_path, name), "analyze", PermanentError(reason, hint))


def new_rendered_run(store: RunStore, tmp_path: Path, name: str = "finished song.wav") -> RunRef:
    """A run in rendered/ with a real one-second final.mp4 and a thumbnail."""
    ref = new_run(store, tmp_path, name)
    for event in (Event.ANALYSIS_DONE, Event.IMAGES_DONE, Event.OFFERED, Event.ALL_APPROVED):
        ref = store.move(ref, event)
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y",
                    "-f", "lavfi", "-i", "testsrc=duration=1:size=64x48:rate=8",
                    "-pix_fmt", "yuv420p", str(ref.path / "final.mp4")], check=True, timeout=60)
    Image.new("RGB", (64, 48), (200, 90, 20)).save(ref.path / "thumbnail.jpg", format="JPEG")
    return store.move(ref, Event.RENDER_DONE)


def csrf_of(page: str) -> str:
    """The CSRF value the panel put into a page's forms."""
    found = re.search(r'name="csrf(?:" value|-token" content)="([^"]+)"', page)
    assert found, "no form on the page"
    return found.group(1)


def section_of(page: str, state: State) -> str:
    """The HTML of one state's section on the index."""
    found = re.search(rf'<section class="state" id="{state.value}">(.*?)</section>', page, re.S)
    return found.group(1) if found else ""


@pytest.fixture
def panel(settings: Settings, store: RunStore) -> Iterator[WebPanel]:
    """A panel on 127.0.0.1, any free port, no token."""
    settings.web.port = 0
    with WebPanel(settings, store, poll_seconds=0.5) as running:
        yield running


def raw_get(url: str, path: str) -> int:
    """GET ``path`` exactly as written (no client-side ``..`` clean-up); returns the status."""
    host, port = url.split("//")[1].rstrip("/").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    finally:
        conn.close()


def post(session: requests.Session, url: str, path: str, **fields: object) -> requests.Response:
    """POST a form the way the page does, with the page's CSRF value."""
    page = session.get(url)
    data = {"csrf": csrf_of(page.text), **{k: str(v) for k, v in fields.items()}}
    return session.post(url.rstrip("/") + path, data=data, allow_redirects=False, timeout=10)


# -- tests ----------------------------------------------------------------------------------------


def test_index_lists_runs_by_state(panel: WebPanel, store: RunStore, tmp_path: Path,
                                   settings: Settings) -> None:
    """Runs show under their state's heading, with a thumbnail and the counts per state."""
    pending, _ = new_pending_run(store, tmp_path, settings, segments=2)
    failed = new_failed_run(store, tmp_path)
    page = requests.get(panel.url, timeout=10)
    assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
    assert pending.run_id in section_of(page.text, State.PENDING_APPROVAL)
    assert "2 of 2</b> segments to decide" in section_of(page.text, State.PENDING_APPROVAL)
    assert failed.run_id in section_of(page.text, State.FAILED)
    assert "the song is silent" in section_of(page.text, State.FAILED)
    assert section_of(page.text, State.RENDERED) == ""
    thumb = requests.get(f"{panel.url}runs/{pending.run_id}/thumb", timeout=10)
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/png"


def test_gallery_shows_candidates_and_serves_their_images(panel: WebPanel, store: RunStore,
                                                          tmp_path: Path, settings: Settings) -> None:
    """A waiting run's every-segment view shows each candidate with approve/reject and regenerate."""
    ref, _ = new_pending_run(store, tmp_path, settings, segments=2)
    page = requests.get(f"{panel.url}runs/{ref.run_id}?view=all", timeout=10).text
    for seg in (0, 1):
        assert f'id="seg-{seg}"' in page and f"prompt {seg}" in page
        for cand in range(settings.images.candidates):
            assert f'id="c-{seg}-{cand}"' in page
    assert page.count('value="approve"') == 2 * settings.images.candidates
    assert page.count('value="regenerate"') == 2 and "/approve-all" in page
    image = requests.get(f"{panel.url}runs/{ref.run_id}/candidates/1/0", timeout=10)
    view = decisions.run_view(store, ref)
    assert image.status_code == 200 and image.content == view.segments[1].candidates[0].image.read_bytes()


def test_actions_land_in_approvals_through_decisions(panel: WebPanel, store: RunStore,
                                                     tmp_path: Path, settings: Settings) -> None:
    """Approve, reject, regenerate and approve-all POSTs are decisions by channel web."""
    ref, _ = new_pending_run(store, tmp_path, settings, segments=3)
    with requests.Session() as s:
        assert post(s, panel.url, f"/runs/{ref.run_id}/decide", verdict="approve", segment=0,
                    candidate=1).status_code == 303
        assert post(s, panel.url, f"/runs/{ref.run_id}/decide", verdict="reject", segment=1,
                    candidate=0).status_code == 303
        answer = s.post(f"{panel.url}runs/{ref.run_id}/decide", timeout=10,
                        data={"csrf": csrf_of(s.get(panel.url + f"runs/{ref.run_id}").text),
                              "verdict": "regenerate", "segment": "2"},
                        headers={"X-Tandava-Fetch": "1"})
        assert answer.status_code == 200 and "new candidates" in answer.json()["message"]
        view = decisions.run_view(store, store.find(ref.run_id))
        assert view.segments[0].approved == 1
        assert [c.status for c in view.segments[1].candidates][0] == "rejected"
        assert post(s, panel.url, f"/runs/{ref.run_id}/approve-all",
                    confirmed="yes").status_code == 303
    view = decisions.run_view(store, store.find(ref.run_id))
    # segment 2's candidates were rejected by the request for new ones: approve-all leaves it open
    assert [seg.approved for seg in view.segments] == [1, 1, None]
    log = ApprovalStore(store).load(store.find(ref.run_id)).decisions
    assert {d.channel for d in log} == {"web"} and [d.verdict for d in log if d.segment == 2] == [
        "reject", "reject", "regenerate"]
    assert all(d.by.startswith("web:127.0.0.1") for d in log)


def test_retry_sends_a_failed_run_back_and_shows_its_error(panel: WebPanel, store: RunStore,
                                                           tmp_path: Path, settings: Settings) -> None:
    """A failed run's page shows reason and hint; Retry moves it back to where it failed."""
    ref, _ = new_pending_run(store, tmp_path, settings, segments=1)
    store.fail(ref, "render", PermanentError("ComfyUI lost the model", "put it back, then retry"))
    page = requests.get(f"{panel.url}runs/{ref.run_id}", timeout=10).text
    assert "ComfyUI lost the model" in page and "put it back, then retry" in page
    with requests.Session() as s:
        answer = post(s, panel.url, f"/runs/{ref.run_id}/retry")
        assert answer.status_code == 303 and answer.headers["location"] == f"/runs/{ref.run_id}"
        assert store.find(ref.run_id).state is State.PENDING_APPROVAL
        again = post(s, panel.url, f"/runs/{ref.run_id}/retry")
        assert again.status_code == 409 and "not failed" in again.text


def test_a_refused_decision_is_a_409_with_its_reason(panel: WebPanel, store: RunStore,
                                                     tmp_path: Path, settings: Settings) -> None:
    """DecisionRefused and StoreError answer 409 with the reason (page or JSON), never a 500."""
    ref, _ = new_pending_run(store, tmp_path, settings, segments=1)
    with requests.Session() as s:
        page = post(s, panel.url, f"/runs/{ref.run_id}/decide", verdict="approve", segment=0,
                    candidate=9)
        assert page.status_code == 409 and "segment 0 has no candidate 9" in page.text
        assert "Traceback" not in page.text
        token = csrf_of(s.get(panel.url).text)
        js = s.post(f"{panel.url}runs/{ref.run_id}/decide", headers={"X-Tandava-Fetch": "1"},
                    data={"csrf": token, "verdict": "approve", "segment": "0", "candidate": "9"})
        assert js.status_code == 409 and "no candidate 9" in js.json()["error"]
        gone = post(s, panel.url, "/runs/20990101-000000_nothing_00000000/approve-all")
        assert gone.status_code == 404 and "no run" in gone.text
        bad = post(s, panel.url, f"/runs/{ref.run_id}/decide", verdict="bless", segment=0, candidate=0)
        assert bad.status_code == 400


def test_files_are_served_only_from_inside_run_folders(panel: WebPanel, store: RunStore,
                                                       tmp_path: Path, settings: Settings) -> None:
    """Unknown names, traversal in any part of the URL and outputs pointing outside are all 404."""
    ref, _ = new_pending_run(store, tmp_path, settings, segments=1)
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"secret")
    rid = ref.run_id
    for path in (f"/runs/{rid}/files/run.json", f"/runs/{rid}/files/..%2F..%2F..%2Fsecret.png",
                 f"/runs/{rid}/files/../../../secret.png", "/runs/..%2F..%2F/files/final.mp4",
                 f"/runs/{rid}/candidates/0/99", f"/runs/{rid}/files/final.mp4",
                 f"/runs/{rid[:-3]}/thumb"):
        assert raw_get(panel.url, path) == 404, path
    manifest = store.load(ref)
    for job in manifest.jobs.values():
        job.output = "../../../secret.png"  # a damaged or hostile manifest
    store.save(ref, manifest)
    assert raw_get(panel.url, f"/runs/{rid}/candidates/0/0") == 404


def test_the_video_plays_in_the_page_with_range_requests(panel: WebPanel, store: RunStore,
                                                         tmp_path: Path, settings: Settings) -> None:
    """A rendered run's page has a <video>, and final.mp4 answers a Range request with 206."""
    ref = new_rendered_run(store, tmp_path)
    page = requests.get(f"{panel.url}runs/{ref.run_id}", timeout=10).text
    assert f'src="/runs/{ref.run_id}/files/final.mp4"' in page and "<video controls" in page
    size = (ref.path / "final.mp4").stat().st_size
    part = requests.get(f"{panel.url}runs/{ref.run_id}/files/final.mp4",
                        headers={"Range": "bytes=100-199"}, timeout=10)
    assert part.status_code == 206 and part.headers["content-type"] == "video/mp4"
    assert part.headers["content-range"] == f"bytes 100-199/{size}"
    assert part.content == (ref.path / "final.mp4").read_bytes()[100:200]
    index = requests.get(panel.url, timeout=10).text
    assert ref.run_id in section_of(index, State.RENDERED)
    thumb = requests.get(f"{panel.url}runs/{ref.run_id}/thumb", timeout=10)
    assert thumb.headers["content-type"] == "image/jpeg"


def test_beyond_loopback_every_request_needs_the_token(settings: Settings, store: RunStore,
                                                       tmp_path: Path) -> None:
    """Bound to 0.0.0.0 with a token: 401 without it; Bearer or the ?token= cookie let one in."""
    settings.web.host, settings.web.port = "0.0.0.0", 0
    settings.web.token = type(settings.web.token)(TOKEN)
    ref, _ = new_pending_run(store, tmp_path, settings, segments=1)
    with WebPanel(settings, store) as panel:
        assert requests.get(panel.url, timeout=10).status_code == 401
        assert requests.get(f"{panel.url}static/panel.js", timeout=10).status_code == 401
        assert requests.get(panel.url, headers={"Authorization": "Bearer wrong"},
                            timeout=10).status_code == 401
        ok = requests.get(panel.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
        assert ok.status_code == 200 and TOKEN not in ok.text
        with requests.Session() as s:
            first = s.get(f"{panel.url}?token={TOKEN}", allow_redirects=False, timeout=10)
            assert first.status_code == 303 and first.headers["location"] == "/"
            cookie = first.headers["set-cookie"].lower()
            assert "httponly" in cookie and "samesite=strict" in cookie and TOKEN.lower() not in cookie
            page = s.get(f"{panel.url}runs/{ref.run_id}", timeout=10)
            assert page.status_code == 200
            target = f"{panel.url}runs/{ref.run_id}/approve-all"
            assert s.post(target, timeout=10).status_code == 403  # no CSRF value
            foreign = s.post(target, data={"csrf": csrf_of(page.text)}, timeout=10,
                             headers={"Origin": "http://evil.example"})
            assert foreign.status_code == 403
            assert s.post(target, data={"csrf": csrf_of(page.text), "confirmed": "yes"},
                          allow_redirects=False, timeout=10).status_code == 303
        scripted = requests.post(f"{panel.url}runs/{ref.run_id}/decide", timeout=10,
                                 headers={"Authorization": f"Bearer {TOKEN}"},
                                 data={"verdict": "reject", "segment": "0", "candidate": "1"},
                                 allow_redirects=False)
        assert scripted.status_code == 303
        assert requests.post(f"{panel.url}runs/{ref.run_id}/retry", timeout=10).status_code == 401


def test_no_token_beyond_loopback_refuses_to_start(settings: Settings, store: RunStore) -> None:
    """A panel other machines could reach refuses to start without a token, naming web.token."""
    settings.web.host, settings.web.port = "0.0.0.0", 0
    with pytest.raises(ConfigError, match="web.token"):
        WebPanel(settings, store).start()
    assert not [c for c in doctor_checks(settings) if c.name == "web panel token"][0].ok


def test_a_taken_port_is_a_clear_error_and_doctor_tells_whose(panel: WebPanel, settings: Settings,
                                                              store: RunStore) -> None:
    """A port in use raises ConfigError naming it; doctor says whether a Tandava holds it."""
    taken = int(panel.url.rstrip("/").rsplit(":", 1)[1])
    settings.web.port = taken
    with pytest.raises(ConfigError, match=rf"web.port = {taken}.*already in use"):
        WebPanel(settings, store).start()
    port_check = [c for c in doctor_checks(settings) if c.name == "web panel port"][0]
    assert port_check.ok and "served by a running Tandava" in port_check.detail
    with socket.socket() as other:  # bound by another program; connecting is refused at once
        other.bind(("127.0.0.1", 0))
        settings.web.port = other.getsockname()[1]
        port_check = [c for c in doctor_checks(settings) if c.name == "web panel port"][0]
        assert not port_check.ok and str(settings.web.port) in port_check.detail


def test_song_names_in_any_script_show_intact_and_escaped(panel: WebPanel, store: RunStore,
                                                          tmp_path: Path) -> None:
    """Devanagari and emoji show as typed; markup in names and errors is escaped, not run."""
    ref = new_failed_run(store, tmp_path, SONG, reason="<script>alert(1)</script> broke")
    index = requests.get(panel.url, timeout=10)
    assert index.encoding == "utf-8"
    assert "शिव तांडव 🔱 &amp; &#x27;Rudra&#x27;.flac" in index.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt; broke" in index.text and "<script>alert" not in index.text
    assert "शिव-तांडव" in ref.run_id
    page = requests.get(panel.url + "runs/" + requests.utils.quote(ref.run_id), timeout=10)
    assert page.status_code == 200 and "शिव तांडव 🔱 &amp;" in page.text


def test_a_decision_from_the_cli_shows_in_the_panel(panel: WebPanel, store: RunStore,
                                                    tmp_path: Path, settings: Settings) -> None:
    """CLI, panel and the shared view agree: a CLI approval shows in the page and the poll version moves."""
    from daemon.cli import main

    ref, _ = new_pending_run(store, tmp_path, settings, segments=2)
    url = f"{panel.url}runs/{ref.run_id}?view=all"
    before = requests.get(url, headers={"X-Tandava-Fetch": "1"}, timeout=10)
    assert "<main" not in before.text and 'id="c-0-1"' in before.text
    assert main(["--config", str(settings.config_file), "approve", ref.run_id, "0:1"]) == 0
    after = requests.get(url, headers={"X-Tandava-Fetch": "1"}, timeout=10)
    assert after.headers["x-tandava-version"] != before.headers["x-tandava-version"]
    assert '<figure class="cand c-approved" id="c-0-1"' in after.text
    assert '<span class="badge s-approved">approved: candidate 1</span>' in after.text
    assert decisions.run_view(store, store.find(ref.run_id)).segments[0].approved == 1


def test_a_foreign_host_name_is_refused_on_loopback(panel: WebPanel) -> None:
    """On loopback, a Host header naming another site (DNS rebinding) is refused."""
    assert requests.get(panel.url, headers={"Host": "evil.example"}, timeout=10).status_code == 403
    assert requests.get(panel.url, headers={"Host": "localhost"}, timeout=10).status_code == 200


def test_stop_is_quick_frees_the_port_and_logs_quietly(settings: Settings, store: RunStore) -> None:
    """Stopping with a keep-alive connection open ends within a second; uvicorn logs at WARNING."""
    import logging

    settings.web.port = 0
    panel = WebPanel(settings, store)
    url = panel.start()
    assert panel.start() == url  # starting twice serves once
    assert logging.getLogger("uvicorn.error").getEffectiveLevel() == logging.WARNING
    with requests.Session() as s:
        assert s.get(url, timeout=10).status_code == 200
        began = time.monotonic()
        panel.stop()
        assert time.monotonic() - began < 1.5 and panel.url == ""
    port = int(url.rstrip("/").rsplit(":", 1)[1])
    with socket.create_server(("127.0.0.1", port)):
        pass
    panel.stop()  # idempotent


def test_url_for_a_wildcard_bind_is_reachable_from_this_machine() -> None:
    """The URL of a 0.0.0.0 or :: bind names loopback; IPv6 literals are bracketed."""
    assert url_for("0.0.0.0", 8420) == "http://127.0.0.1:8420/"
    assert url_for("::", 8420) == "http://[::1]:8420/"
    assert url_for("localhost", 1) == "http://localhost:1/"


def test_uvicorn_logs_through_ours_at_warning(settings: Settings, store: RunStore,
                                             tmp_path: Path) -> None:
    """uvicorn's warnings land in our JSON log file; its INFO chatter and access lines do not."""
    import json
    import logging

    import structlog

    from daemon.logs import configure_logging

    log_file = tmp_path / "logs" / "tandava.log"
    configure_logging(log_file=log_file, console=None, level="DEBUG")
    try:
        settings.web.port = 0
        with WebPanel(settings, store) as panel:
            url = panel.url
            assert requests.get(url, timeout=10).status_code == 200
            host, port = url.split("//")[1].rstrip("/").rsplit(":", 1)
            with socket.create_connection((host, int(port)), timeout=10) as conn:
                conn.sendall(b"NOT HTTP AT ALL\r\n\r\n")
                conn.recv(1024)
        events = [json.loads(line) for line in log_file.read_text(encoding="utf-8").splitlines()]
    finally:
        root = logging.getLogger()
        for handler in list(root.handlers):
            root.removeHandler(handler)
            handler.close()
        structlog.reset_defaults()
    uvicorn_events = [e for e in events if e.get("logger", "").startswith("uvicorn")]
    assert uvicorn_events and all(e["level"] == "warning" for e in uvicorn_events)
    assert any("Invalid HTTP request" in e["event"] for e in uvicorn_events)
    started = [e for e in events if e["event"] == "web.started"]
    assert started and started[0]["url"] == url


def test_a_long_state_shows_its_newest_and_pages_the_rest(panel: WebPanel, store: RunStore,
                                                          tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the per-state limit the index links to /states/<state>, which pages every run."""
    from daemon.channels.web import app as web_app

    monkeypatch.setattr(web_app, "INDEX_PER_STATE", 1)
    monkeypatch.setattr(web_app, "PAGE_SIZE", 2)
    runs = [new_failed_run(store, tmp_path, f"song {i}.mp3") for i in range(3)]
    index = section_of(requests.get(panel.url, timeout=10).text, State.FAILED)
    assert index.count('<article class="card') == 1 and runs[2].run_id in index
    assert '<a class="btn" href="/states/failed">All 3 failed runs</a>' in requests.get(panel.url,
                                                                            timeout=10).text
    first = requests.get(f"{panel.url}states/failed", timeout=10).text
    second = requests.get(f"{panel.url}states/failed?page=2", timeout=10).text
    assert [r.run_id in first for r in runs] == [False, True, True]
    assert [r.run_id in second for r in runs] == [True, False, False] and "Page 2 of 2" in second
    assert requests.get(f"{panel.url}states/nowhere", timeout=10).status_code == 404


def test_failed_runs_come_last_folded_and_can_be_forgotten(panel: WebPanel, store: RunStore,
                                                           tmp_path: Path) -> None:
    """Failed runs are listed after waiting and finished ones, folded; Forget and Forget all archive them."""
    pending = new_run(store, tmp_path, "waiting.wav")
    for event in (Event.ANALYSIS_DONE, Event.IMAGES_DONE, Event.OFFERED):
        pending = store.move(pending, event)
    rendered = new_rendered_run(store, tmp_path)
    failed = [new_failed_run(store, tmp_path, f"broken {i}.mp3") for i in range(3)]
    with requests.Session() as http:
        page = http.get(panel.url, timeout=10).text
        order = [page.index(f'id="{state.value}"') for state in
                 (State.PENDING_APPROVAL, State.RENDERED, State.FAILED)]
        assert order == sorted(order)
        folded = section_of(page, State.FAILED)
        assert folded.startswith("<details><summary><h2>Failed <small>(3)</small></h2></summary>")
        assert "Forget all failed runs" in folded
        answer = http.post(f"{panel.url}runs/{failed[0].run_id}/forget", data={"csrf": csrf_of(page)},
                           headers={"X-Tandava-Fetch": "1"}, timeout=10)
        assert answer.status_code == 200 and "archive/" in answer.json()["message"]
        assert (store.root / "archive" / failed[0].run_id / "broken 0.mp3").is_file()
        waiting = http.post(f"{panel.url}runs/{pending.run_id}/forget", data={"csrf": csrf_of(page)},
                            allow_redirects=False, timeout=10)
        assert waiting.status_code == 303 and not pending.path.exists()  # a waiting run may be forgotten
        busy = new_run(store, tmp_path, "arriving.wav")
        refused = http.post(f"{panel.url}runs/{busy.run_id}/forget", data={"csrf": csrf_of(page)}, timeout=10)
        assert refused.status_code == 409 and "is being worked on" in refused.text
        assert busy.path.is_dir()
        everything = http.post(f"{panel.url}failed/forget", data={"csrf": csrf_of(page)},
                               allow_redirects=False, timeout=10)
        assert everything.status_code == 303 and everything.headers["location"] == "/"
        page = http.get(panel.url, timeout=10).text
    assert list(store.iter_runs([State.FAILED])) == []
    assert section_of(page, State.FAILED) == "" and rendered.run_id in section_of(page, State.RENDERED)
    assert sorted(p.name for p in (store.root / "archive").iterdir()) == sorted(
        [pending.run_id, *(r.run_id for r in failed)])
