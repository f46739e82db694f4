"""Google's backends against a fake Google: routes, reference images, blocked output, 429s, caps, doctor."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakegoogle import API_KEY, TOKEN, FakeGoogle
from PIL import Image
from pydantic import SecretStr
from structlog.testing import capture_logs

from daemon.backends.base import Job, noop_progress
from daemon.backends.google.client import Route as _Route
from daemon.backends.google.costs import COST_FILE, Ledger, approve_spend, read_cost, veo_seconds
from daemon.backends.google.doctor import doctor_checks
from daemon.backends.google.images import GeminiImageBackend, aspect_ratio
from daemon.backends.google.operations import polls_for, wait_until_done
from daemon.backends.google.veo import VeoBackend
from daemon.config import GoogleConfig, Settings
from daemon.errors import PermanentError, QCFailed, TransientError, Unavailable
from daemon.video import media


@pytest.fixture
def fake() -> Iterator[FakeGoogle]:
    with FakeGoogle(op_seconds=0.2) as server:
        yield server


_ROUTES: list[_Route] = []


@pytest.fixture(autouse=True)
def close_routes() -> Iterator[None]:
    yield
    while _ROUTES:
        _ROUTES.pop().close()


def Route(cfg: GoogleConfig, key: str) -> _Route:  # noqa: N802 - stands in for the class in these tests
    """A route whose shared client is closed after the test."""
    route = _Route(cfg, key)
    _ROUTES.append(route)
    return route


def _cfg(fake: FakeGoogle, tmp_path: Path, **extra: object) -> GoogleConfig:
    values: dict[str, object] = {"base_url": fake.url, "poll_first_seconds": 0.05, "poll_every_seconds": 0.05,
                                 "timeout_seconds": 10} | extra
    return GoogleConfig(**values)  # type: ignore[arg-type]


def _image_job(tmp_path: Path, jid: str = "run-image-s000-i00-1") -> Job:
    (tmp_path / "run").mkdir(exist_ok=True)
    return Job(id=jid, kind="image", backend="gemini", segment=0, seed=1, prompt="Shiva dances on Kailash",
               width=320, height=180, output=str(tmp_path / "run" / "candidates" / "s000_c00.png"))


def _clip_job(tmp_path: Path, *, last: bool = False) -> Job:
    run = tmp_path / "run"
    (run / "candidates").mkdir(parents=True, exist_ok=True)
    for name in ("a.png", "b.png"):
        Image.new("RGB", (320, 180), (90, 40, 160)).save(run / "candidates" / name)
    return Job(id="run-clip-s000-i00-7", kind="clip", backend="veo", segment=0, seed=7, prompt="slow zoom",
               width=320, height=180, frames=50, fps=12, source=str(run / "candidates" / "a.png"),
               output=str(run / "clips" / "s000_p00.mp4"),
               detail={"last_frame": str(run / "candidates" / "b.png")} if last else {})


def test_images_on_the_gemini_api_send_every_reference_and_the_aspect_ratio(fake: FakeGoogle, tmp_path: Path) -> None:
    """An image request carries the key, the reference images inline, and the ratio nearest the video's."""
    ref = tmp_path / "shiva.jpg"
    Image.new("RGB", (64, 64), (10, 200, 30)).save(ref)
    cfg = _cfg(fake, tmp_path, references=[ref])
    backend = GeminiImageBackend(Route(cfg, API_KEY), Ledger(tmp_path / "state", cfg))
    job = _image_job(tmp_path)
    out = backend.collect(job, progress=noop_progress, stop=threading.Event())
    with Image.open(out) as image:
        assert image.size == (320, 180)
    [call] = fake.requests(":generateContent")
    assert call["path"] == f"/v1beta/models/{cfg.image_model}:generateContent"
    assert call["headers"]["x-goog-api-key"] == API_KEY
    parts = call["body"]["contents"][0]["parts"]
    assert parts[0]["inlineData"]["mime_type"] == "image/jpeg" and parts[1] == {"text": job.prompt}
    assert call["body"]["generationConfig"]["imageConfig"]["aspectRatio"] == "16:9"
    assert job.detail["request_id"] and job.detail["model"] == cfg.image_model
    assert read_cost(tmp_path / "run")["entries"][job.id]["status"] == "billed"


@pytest.mark.parametrize(("reply", "said"), [("blocked_prompt", "prompt blocked (PROHIBITED_CONTENT)"),
                                             ("blocked_image", "image blocked (IMAGE_SAFETY)"),
                                             ("text_only", "without an image")])
def test_blocked_output_is_a_recorded_reason_and_free(fake: FakeGoogle, tmp_path: Path, reply: str,
                                                      said: str) -> None:
    """A 200 answer without an image raises QCFailed with the reason, kept on the job and free in the ledger."""
    cfg = _cfg(fake, tmp_path)
    backend = GeminiImageBackend(Route(cfg, API_KEY), Ledger(tmp_path / "state", cfg))
    fake.image_replies.append(reply)
    job = _image_job(tmp_path)
    with pytest.raises(QCFailed, match=r"no image") as caught:
        backend.collect(job, progress=noop_progress, stop=threading.Event())
    assert said in caught.value.reason and said in str(job.detail["blocked"])
    assert read_cost(tmp_path / "run")["entries"][job.id]["status"] == "free"
    assert fake.billed_images == 0


def test_a_429_waits_for_its_retry_delay(fake: FakeGoogle, tmp_path: Path) -> None:
    """Two 429s with RetryInfo 0.3s: the next requests come after the delay Google asked for, then succeed."""
    cfg = _cfg(fake, tmp_path)
    backend = GeminiImageBackend(Route(cfg, API_KEY), Ledger(tmp_path / "state", cfg))
    fake.rate_limit(2, "0.3s")
    backend.collect(_image_job(tmp_path), progress=noop_progress, stop=threading.Event())
    times = [c["at"] for c in fake.requests(":generateContent")]
    assert len(times) == 3 and all(b - a >= 0.29 for a, b in zip(times, times[1:], strict=False))


def test_quota_exhausted_parks_the_run_and_a_stop_ends_the_wait(fake: FakeGoogle, tmp_path: Path) -> None:
    """429s past every attempt become Unavailable (the run waits, with the fix); a stop cuts the wait short."""
    cfg = _cfg(fake, tmp_path, attempts=2)
    backend = GeminiImageBackend(Route(cfg, API_KEY), Ledger(tmp_path / "state", cfg))
    fake.rate_limit(5, "30s")
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    started = time.monotonic()
    with pytest.raises(Unavailable, match="quota") as caught:
        backend.collect(_image_job(tmp_path), progress=noop_progress, stop=stop)
    assert time.monotonic() - started < 5 and "quota" in caught.value.hint


def test_an_unknown_model_and_a_bad_key_name_the_cause_and_never_the_key(fake: FakeGoogle, tmp_path: Path) -> None:
    """404 names the model and the setting to change; a rejected key says so without the key (Google echoes it)."""
    cfg = _cfg(fake, tmp_path, image_model="gemini-9-image")
    cfg.prices["gemini-9-image"] = cfg.prices["gemini-3-pro-image"]
    with pytest.raises(PermanentError) as missing:
        GeminiImageBackend(Route(cfg, API_KEY), Ledger(tmp_path / "s", cfg)).collect(
            _image_job(tmp_path), progress=noop_progress, stop=threading.Event())
    assert missing.value.cause == "GoogleModel" and "gemini-9-image" in missing.value.reason
    assert "image_model" in missing.value.hint
    wrong = "AIzaWrongKeyThatMustNeverBeShown_123456"
    with capture_logs() as logs, pytest.raises(PermanentError) as refused:
        GeminiImageBackend(Route(_cfg(fake, tmp_path), wrong), Ledger(tmp_path / "s", cfg)).collect(
            _image_job(tmp_path, "other"), progress=noop_progress, stop=threading.Event())
    assert refused.value.cause == "GoogleCredentials"
    assert wrong not in refused.value.reason + refused.value.hint + repr(logs)
    assert refused.value.__cause__ is None and wrong not in (tmp_path / "run" / COST_FILE).read_text("utf-8")


def test_no_key_or_project_fails_with_the_fix_before_any_request(fake: FakeGoogle, tmp_path: Path) -> None:
    """Without a key (Gemini API) or a project or key (Vertex), nothing is sent and the fix is named."""
    for cfg in (_cfg(fake, tmp_path), _cfg(fake, tmp_path, route="vertex")):
        backend = GeminiImageBackend(Route(cfg, ""), Ledger(tmp_path / "state", cfg))
        with pytest.raises(PermanentError, match="GOOGLE_API_KEY") as caught:
            backend.collect(_image_job(tmp_path), progress=noop_progress, stop=threading.Event())
        assert caught.value.cause == "GoogleCredentials"
    assert not fake.calls


def test_veo_on_the_gemini_api_route_is_refused_before_any_request(fake: FakeGoogle, tmp_path: Path) -> None:
    """google-genai 3.x sends Veo only on Vertex AI: the key route fails with the setting to change, nothing sent."""
    cfg = _cfg(fake, tmp_path)
    backend = VeoBackend(Route(cfg, API_KEY), Ledger(tmp_path / "state", cfg), ffmpeg=media.find_ffmpeg(), fps=12)
    with pytest.raises(PermanentError, match="only on Vertex AI") as caught:
        backend.submit(_clip_job(tmp_path))
    assert caught.value.cause == "GoogleRoute" and 'route = "vertex"' in caught.value.hint
    assert fake.submits == 0 and not fake.calls
    assert read_cost(tmp_path / "run")["entries"]["run-clip-s000-i00-7#1"]["status"] == "free"


@pytest.mark.parametrize("express", [False, True])
def test_veo_on_vertex_interpolates_and_conforms_the_clip(fake: FakeGoogle, tmp_path: Path, express: bool) -> None:
    """Vertex (project + credentials, or an express key): first and last frame sent, no audio, 6 s asked for
    50 frames at 12 fps; the clip comes back as exactly those frames at 320x180 without audio."""
    extra = {"route": "vertex"} if express else {
        "route": "vertex", "project": "p1", "credentials_file": fake.authorized_user_file(tmp_path)}
    cfg = _cfg(fake, tmp_path, **extra)
    backend = VeoBackend(Route(cfg, API_KEY if express else ""), Ledger(tmp_path / "state", cfg),
                         ffmpeg=media.find_ffmpeg(), fps=12)
    job = _clip_job(tmp_path, last=True)
    backend.submit(job)
    name = str(job.detail["operation"])
    assert backend.can_resume(job)
    out = backend.collect(job, progress=noop_progress, stop=threading.Event())
    info = media.probe(out)
    assert (info.frames, info.width, info.height, info.has_audio) == (50, 320, 180, False)
    [submit] = fake.requests(":predictLongRunning")
    prefix = "/v1beta1/publishers" if express else "/v1beta1/projects/p1/locations/us-central1/publishers"
    assert submit["path"].startswith(prefix)
    assert (submit["headers"].get("x-goog-api-key") == API_KEY) if express else \
        (submit["headers"]["authorization"] == f"Bearer {TOKEN}")
    params = submit["body"]["parameters"]
    assert params["durationSeconds"] == 6 and params["generateAudio"] is False and params["seed"] == 7
    assert "lastFrame" in submit["body"]["instances"][0]
    assert fake.requests(":fetchPredictOperation")[0]["body"] == {"operationName": name}
    assert fake.billed_seconds == 6 and read_cost(tmp_path / "run")["entries"][f"{job.id}#1"]["status"] == "billed"


def test_polling_follows_the_schedule_and_stops_on_request() -> None:
    """A 90 s operation is seen through by 8 polls (20 s, then every 10 s); a stop ends the wait at once."""
    assert polls_for(90, 20, 10) == 8 and polls_for(5, 20, 10) == 1
    stop = threading.Event()
    threading.Timer(0.1, stop.set).start()
    started = time.monotonic()
    got = wait_until_done(lambda: pytest.fail("polled before its time"), submitted_at=time.time(), first=30,
                          every=10, stop=stop, progress=lambda f, w: None)
    assert got is None and time.monotonic() - started < 2


def test_caps_count_money_in_flight_and_a_run_can_be_approved_once(tmp_path: Path) -> None:
    """Pending and billed entries count against both caps; over one, nothing is entered and the reason names
    the figures and the way on; an approved spend lets that run past; a re-attached job is not counted twice."""
    cfg = GoogleConfig(max_usd_per_run=1.0, max_usd_per_day=1.5)
    ledger = Ledger(tmp_path / "state", cfg)
    run_a, run_b = tmp_path / "a", tmp_path / "b"
    run_a.mkdir(), run_b.mkdir()
    ledger.reserve(run_a, "a1", kind="clip", model="veo", units=6, usd=0.72)
    ledger.reserve(run_a, "a1", kind="clip", model="veo", units=6, usd=0.72)  # the same job again
    with pytest.raises(Unavailable) as over:
        ledger.reserve(run_a, "a2", kind="clip", model="veo", units=4, usd=0.48)
    assert "$1.20" in over.value.reason and "max_usd_per_run = $1.00" in over.value.reason
    assert "tandava spend a --approve" in over.value.hint
    approve_spend(run_a, 1.25)
    ledger.reserve(run_a, "a2", kind="clip", model="veo", units=4, usd=0.48)
    ledger.settle(run_a, "a2", "free", reason="filtered")
    ledger.reserve(run_b, "b1", kind="clip", model="veo", units=4, usd=0.48)
    with pytest.raises(Unavailable, match="max_usd_per_day"):
        ledger.reserve(run_b, "b2", kind="clip", model="veo", units=4, usd=0.48)
    assert sorted(read_cost(run_a)["entries"]) == ["a1", "a2"]


def test_shortest_veo_length_and_nearest_aspect_ratio() -> None:
    """Veo gets the shortest of 4/6/8 s covering the clip; images the supported ratio nearest the video's."""
    assert [veo_seconds(f, 24) for f in (1, 96, 97, 144, 192, 300)] == [4, 4, 6, 6, 8, 8]
    assert (aspect_ratio(832, 480), aspect_ratio(1080, 1920), aspect_ratio(512, 512)) == ("16:9", "9:16", "1:1")


def test_doctor_checks_credentials_route_models_prices_and_caps(fake: FakeGoogle, tmp_path: Path,
                                                                 settings: Settings) -> None:
    """doctor: all ok on Vertex with the fake; the key route names Veo's route problem; an unknown model and
    a model without a price each fail with their fix; the key appears nowhere."""
    settings.images.backend, settings.clips.backend = "gemini", "veo"
    settings.google = _cfg(fake, tmp_path, route="vertex", project="p1",
                           credentials_file=fake.authorized_user_file(tmp_path))
    checks = {c.name: c for c in doctor_checks(Route(settings.google, ""), settings)}
    assert all(c.ok for c in checks.values()), checks
    assert "Veo veo-3.1-fast-generate-001 through Vertex AI project p1" in checks["veo route"].detail
    settings.google = _cfg(fake, tmp_path, veo_model="veo-9", api_key=SecretStr(API_KEY))
    checks = {c.name: c for c in doctor_checks(Route(settings.google, API_KEY), settings)}
    assert not checks["veo route"].ok and not checks["google prices"].ok and "veo-9" in checks["google prices"].detail
    assert checks["google model gemini-3-pro-image"].ok
    assert all(API_KEY not in c.detail for c in checks.values())


def test_operations_past_the_limit_wait_for_a_slot_and_old_ones_are_not_reattached(fake: FakeGoogle,
                                                                                   tmp_path: Path) -> None:
    """With one slot, a second clip is not sent at submit but from collect once the first is done; an
    operation older than keep_hours is dropped (sent again after the cost check)."""
    cfg = _cfg(fake, tmp_path, route="vertex", max_concurrent_operations=1)
    backend = VeoBackend(Route(cfg, API_KEY), Ledger(tmp_path / "state", cfg), ffmpeg=media.find_ffmpeg(), fps=12)
    first, second = _clip_job(tmp_path), _clip_job(tmp_path).model_copy(
        update={"id": "run-clip-s001-i00-7", "output": str(tmp_path / "run" / "clips" / "s001_p00.mp4"),
                "detail": {}})
    backend.submit(first)
    backend.submit(second)
    assert fake.submits == 1 and "operation" not in second.detail and not backend.can_resume(second)
    backend.collect(first, progress=noop_progress, stop=threading.Event())
    backend.collect(second, progress=noop_progress, stop=threading.Event())
    assert fake.submits == 2 and backend.slots.held == 0
    old = second.model_copy(update={"detail": {"operation": "x/operations/1", "submitted_at": time.time() - 49 * 3600}})
    assert not backend.can_resume(old) and "operation" not in old.detail


def test_a_submit_whose_answer_is_lost_stays_counted_as_spent(fake: FakeGoogle, tmp_path: Path) -> None:
    """A submit that timed out may be billed: its ledger entry stays pending (the caps count it), the job has
    no operation to re-attach, and the next send is a new ledger entry after the cost check."""
    cfg = _cfg(fake, tmp_path, route="vertex", timeout_seconds=1)
    backend = VeoBackend(Route(cfg, API_KEY), Ledger(tmp_path / "state", cfg), ffmpeg=media.find_ffmpeg(), fps=12)
    fake.submit_delay = 3.0
    job = _clip_job(tmp_path)
    with pytest.raises(Exception, match="did not answer in time"):
        backend.submit(job)
    assert fake.submits == 1 and "operation" not in job.detail and not backend.can_resume(job)
    fake.submit_delay = 0.0
    backend.submit(job)
    entries = read_cost(tmp_path / "run")["entries"]
    assert entries[f"{job.id}#1"]["status"] == "pending" and f"{job.id}#2" in entries
    backend.collect(job, progress=noop_progress, stop=threading.Event())
    assert read_cost(tmp_path / "run")["entries"][f"{job.id}#2"]["status"] == "billed"


def test_a_refused_prompt_is_rewritten_by_gemini_when_it_writes(settings: Settings) -> None:
    """With Gemini among the writers, it rewrites a refused clip prompt; when it cannot answer, the local
    gentle rewrite is used instead."""
    from fakegemini import API_KEY as GEMINI_KEY
    from fakegemini import FakeGemini, error, text

    from daemon.stages.google import prompt_rewriter

    with FakeGemini() as gemini:
        settings.analysis.writer = "gemini"
        settings.gemini = settings.gemini.model_copy(update={
            "base_url": gemini.base_url, "api_key": SecretStr(GEMINI_KEY), "attempts": 1})
        gemini.script(text("A slow orbit around a glowing lotus at dawn"), error(500, "INTERNAL", "boom"))
        rewrite = prompt_rewriter(settings)
        assert rewrite("Shiva's trident burns the city", "violence") == "A slow orbit around a glowing lotus at dawn"
        assert "refused this motion prompt" in gemini.prompt(gemini.generate_calls()[0])
        fallback = rewrite("Shiva's trident burns the city", "violence")
        assert fallback.startswith("A calm") and "trident" not in fallback


def test_a_failed_operation_is_free_and_sent_again_next_time(fake: FakeGoogle, tmp_path: Path) -> None:
    """An operation that ends in an error is recorded free, dropped from the job, and retried as a new send."""
    cfg = _cfg(fake, tmp_path, route="vertex")
    backend = VeoBackend(Route(cfg, API_KEY), Ledger(tmp_path / "state", cfg), ffmpeg=media.find_ffmpeg(), fps=12)
    fake.video_replies.append("error")
    job = _clip_job(tmp_path)
    backend.submit(job)
    with pytest.raises(TransientError, match="Internal error"):
        backend.collect(job, progress=noop_progress, stop=threading.Event())
    assert "operation" not in job.detail and not backend.can_resume(job)
    backend.collect(job, progress=noop_progress, stop=threading.Event())
    entries = read_cost(tmp_path / "run")["entries"]
    assert (entries[f"{job.id}#1"]["status"], entries[f"{job.id}#2"]["status"]) == ("free", "billed")
    assert fake.submits == 2 and fake.billed_seconds == 6


def test_a_runs_candidates_are_asked_for_together(fake: FakeGoogle, tmp_path: Path) -> None:
    """Submitted candidates run on parallel workers: all three 0.5 s requests arrive before the first is done;
    one answered but not yet collected is re-attached (can_resume), never asked for again."""
    cfg = _cfg(fake, tmp_path)
    backend = GeminiImageBackend(Route(cfg, API_KEY), Ledger(tmp_path / "state", cfg))
    fake.image_delay = 0.5
    jobs = [_image_job(tmp_path, f"img-{n}").model_copy(
        update={"output": str(tmp_path / "run" / "candidates" / f"c{n}.png")}) for n in range(3)]
    try:
        for job in jobs:
            backend.submit(job)
        assert all(backend.can_resume(job) for job in jobs)
        for job in jobs:
            backend.collect(job, progress=noop_progress, stop=threading.Event())
    finally:
        backend.close()
    arrived = [c["at"] for c in fake.requests(":generateContent")]
    assert len(arrived) == 3 and max(arrived) - min(arrived) < 0.45 and not backend.can_resume(jobs[0])
    assert all(job.detail["request_id"] for job in jobs)
