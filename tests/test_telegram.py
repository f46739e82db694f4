"""The Telegram approval bot against a fake Bot API on a real socket: offers, taps, restarts, outages, videos."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import imageio_ffmpeg
import pytest
from conftest import TELEGRAM_USER
from faketelegram import CHAT_ID, TOKEN, FakeTelegram
from PIL import Image
from pydantic import SecretStr
from structlog.testing import capture_logs
from test_approval import gate_once, new_pending_run

from daemon.approval import decisions
from daemon.approval.store import ApprovalStore
from daemon.channels.telegram.bot import TelegramBot, doctor_checks
from daemon.channels.telegram.media import PREVIEW_NAME, photo_payload
from daemon.config import Settings
from daemon.errors import BadInput
from daemon.runs.manifest import utcnow
from daemon.runs.states import Event, State
from daemon.runs.store import RunRef, RunStore

USER = TELEGRAM_USER
STRANGER = 999


@pytest.fixture
def fake(telegram_api: FakeTelegram) -> FakeTelegram:
    """The fake Bot API (conftest)."""
    return telegram_api


@pytest.fixture
def tg(telegram_settings: Settings) -> Settings:
    """Settings with the bot on the fake (conftest)."""
    return telegram_settings


@contextlib.contextmanager
def running(settings: Settings, store: RunStore, **kwargs: object) -> Iterator[TelegramBot]:
    bot = TelegramBot(settings, store, sync_seconds=0.1, backoff=(0.05, 0.3), **kwargs)  # type: ignore[arg-type]
    bot.start()
    try:
        yield bot
    finally:
        bot.stop()


def button(fake: FakeTelegram, message_id: int, label: str) -> str:
    markup = fake.messages[(CHAT_ID, message_id)]["reply_markup"]
    return next(b["callback_data"] for row in markup["inline_keyboard"] for b in row if b["text"] == label)


def messages(fake: FakeTelegram) -> tuple[int, list[int]]:
    """The song message's id and the control messages' ids, in order."""
    texts = fake.sent("sendMessage")
    return texts[0].message_ids[0], [s.message_ids[0] for s in texts[1:] if "segment" in s.text]


def edited(fake: FakeTelegram, message_id: int, fragment: str) -> bool:
    return any(e.message_id == message_id and fragment in e.text for e in fake.edits)


def verdicts(store: RunStore, ref: RunRef) -> list[tuple[int, int | None, str, str]]:
    return [(d.segment, d.candidate, d.verdict, d.channel)
            for d in ApprovalStore(store).load(store.find(ref.run_id)).decisions]


def make_video(path: Path, seconds: float = 2.0, bitrate: str = "200k") -> None:
    """A real H.264 + AAC mp4 of noise (incompressible, so its size follows the bitrate)."""
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y",
                    "-f", "lavfi", "-i", f"nullsrc=s=320x240:r=16:d={seconds},geq=random(1)*255:128:128",
                    "-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}",
                    "-c:v", "libx264", "-b:v", bitrate, "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest",
                    str(path)], check=True, capture_output=True)


def render(store: RunStore, settings: Settings, ref: RunRef, backend: object, bitrate: str) -> RunRef:
    """Approve everything, pass the gate, and put a rendered video in place as the render stage does."""
    decisions.approve_all(store, ref.run_id, by="me", channel="cli")
    gate_once(store, settings, backend)  # type: ignore[arg-type]
    approved = store.find(ref.run_id)
    assert approved.state is State.APPROVED
    make_video(approved.path / "final.mp4", bitrate=bitrate)
    Image.new("RGB", (832, 480), (200, 40, 90)).save(approved.path / "thumbnail.jpg")
    return store.move(approved, Event.RENDER_DONE)


def test_candidates_arrive_as_albums_with_control_messages(store: RunStore, tmp_path: Path, tg: Settings,
                                                           fake: FakeTelegram) -> None:
    """Per segment one album (numbered captions) and one control message with time, prompt and buttons."""
    ref, _ = new_pending_run(store, tmp_path, tg, segments=2)
    with running(tg, store):
        fake.wait_for(lambda: len(fake.sends) == 5)
        time.sleep(0.3)
    assert [s.method for s in fake.sends] == ["sendMessage", "sendMediaGroup", "sendMessage",
                                              "sendMediaGroup", "sendMessage"]
    assert len(fake.sends) == 5 and fake.flood_hits == 0
    song = fake.sends[0]
    assert ref.run_id in song.text and "Approved: 0 of 2" in song.text
    assert song.reply_markup is not None
    assert song.reply_markup["inline_keyboard"][0][0]["text"] == "✅ approve all (song)"
    album, control = fake.sends[3], fake.sends[4]
    assert album.captions == ["1:0 · segment 1 · 00:05.00–00:10.00", "1:1 · segment 1 · 00:05.00–00:10.00"]
    assert "00:05.00–00:10.00" in control.text and "prompt 1" in control.text and "steady" in control.text
    assert control.reply_markup is not None
    labels = [[b["text"] for b in row] for row in control.reply_markup["inline_keyboard"]]
    assert labels == [["✅0", "✅1"], ["❌0", "❌1"], ["✅ approve all (segment)", "🔁 regenerate"]]
    assert all(len(b["callback_data"].encode()) <= 64 for row in control.reply_markup["inline_keyboard"]
               for b in row)
    record = json.loads((store.find(ref.run_id).path / "telegram.json").read_text(encoding="utf-8"))
    assert [p["message_id"] for p in record["posts"]] == [fake.sends[2].message_ids[0], control.message_ids[0]]
    assert len(record["tokens"]) == 1 + 2 * (2 * 2 + 2)


def test_taps_decide_edit_and_answer(store: RunStore, tmp_path: Path, tg: Settings, fake: FakeTelegram) -> None:
    """Approve, reject, approve-all (segment and song) and regenerate land in approvals.json via decide."""
    ref, backend = new_pending_run(store, tmp_path, tg, segments=3)
    with running(tg, store):
        fake.wait_for(lambda: len(fake.sends) == 7)
        song, (c0, c1, c2) = messages(fake)
        assert "0:1" in fake.answer(fake.tap(USER, button(fake, c0, "✅1"), c0)).text
        fake.wait_for(lambda: edited(fake, c0, "✅ approved: 0:1"))
        assert "[✅1]" in [b["text"] for b in fake.messages[(CHAT_ID, c0)]["reply_markup"]["inline_keyboard"][0]]
        assert "rejected" in fake.answer(fake.tap(USER, button(fake, c0, "❌0"), c0)).text
        assert "1:0" in fake.answer(fake.tap(USER, button(fake, c1, "✅ approve all (segment)"), c1)).text
        assert "segment 2" in fake.answer(fake.tap(USER, button(fake, c2, "🔁 regenerate"), c2)).text
        fake.wait_for(lambda: edited(fake, song, "Approved: 2 of 3"))
        gate_once(store, tg, backend)  # the gate makes segment 2's second round
        fake.wait_for(lambda: len(fake.sends) == 9)
        assert fake.sends[7].captions == ["2:2 · segment 2 · 00:10.00–00:15.00",
                                          "2:3 · segment 2 · 00:10.00–00:15.00"]
        assert "2:2" in fake.answer(fake.tap(USER, button(fake, song, "✅ approve all (song)"), song)).text
        fake.wait_for(lambda: edited(fake, song, "Approved: 3 of 3"))
    assert verdicts(store, ref) == [
        (0, 1, "approve", "telegram"), (0, 0, "reject", "telegram"), (1, 0, "approve", "telegram"),
        (2, 0, "reject", "telegram"), (2, 1, "reject", "telegram"), (2, None, "regenerate", "telegram"),
        (2, 2, "approve", "telegram")]
    assert {d.by for d in ApprovalStore(store).load(store.find(ref.run_id)).decisions} == {f"tg:{USER}"}


def test_a_stranger_is_refused_and_logged(store: RunStore, tmp_path: Path, tg: Settings, fake: FakeTelegram) -> None:
    """A tap from a user not in allowed_users is answered with a refusal, logged with the id, and decides nothing."""
    ref, _ = new_pending_run(store, tmp_path, tg, segments=1)
    with running(tg, store), capture_logs() as logs:
        fake.wait_for(lambda: len(fake.sends) == 3)
        _, (c0,) = messages(fake)
        answer = fake.answer(fake.tap(STRANGER, button(fake, c0, "✅0"), c0))
    assert "not allowed" in answer.text and answer.show_alert
    assert any(e["event"] == "telegram.tap_refused" and e["user_id"] == STRANGER for e in logs)
    assert verdicts(store, ref) == []


def test_forged_buttons_are_refused(store: RunStore, tmp_path: Path, tg: Settings, fake: FakeTelegram) -> None:
    """callback_data that no telegram.json knows gets a clear refusal and decides nothing."""
    ref, _ = new_pending_run(store, tmp_path, tg, segments=1)
    with running(tg, store):
        fake.wait_for(lambda: len(fake.sends) == 3)
        _, (c0,) = messages(fake)
        for data in ("AAAAAAAAAAAA", "approve:0:1", "x" * 64):
            assert "unknown or expired" in fake.answer(fake.tap(USER, data, c0)).text
    assert verdicts(store, ref) == []


def test_taps_on_a_run_that_moved_on_are_answered(store: RunStore, tmp_path: Path, tg: Settings,
                                                  fake: FakeTelegram) -> None:
    """Buttons of an approved, rendered or failed run say so instead of deciding."""
    ref, backend = new_pending_run(store, tmp_path, tg, segments=1)
    (tmp_path / "b").mkdir()
    later = RunStore(store.root, clock=lambda: utcnow() + timedelta(seconds=5))  # another run id, same song
    other, _ = new_pending_run(later, tmp_path / "b", tg, segments=1)
    with running(tg, store):
        fake.wait_for(lambda: len(fake.sends) == 6)
        ids = [s.message_ids[0] for s in fake.sent("sendMessage") if "segment 0" in s.text]
        taps = {ids[0]: button(fake, ids[0], "✅1"), ids[1]: button(fake, ids[1], "✅1")}
        decisions.approve_all(store, ref.run_id, by="me", channel="cli")
        gate_once(store, tg, backend)
        assert "no longer waiting" in fake.answer(fake.tap(USER, taps[ids[0]], ids[0])).text
        store.move(store.find(ref.run_id), Event.RENDER_DONE)
        assert "already rendered" in fake.answer(fake.tap(USER, taps[ids[0]], ids[0])).text
        store.fail(store.find(other.run_id), "approval", BadInput("the song is unreadable"))
        assert "failed" in fake.answer(fake.tap(USER, taps[ids[1]], ids[1])).text
    assert verdicts(store, other) == []
    assert [d.channel for d in ApprovalStore(store).load(store.find(ref.run_id)).decisions] == ["cli"]


def test_a_restart_between_taps_loses_and_resends_nothing(store: RunStore, tmp_path: Path, tg: Settings,
                                                          fake: FakeTelegram) -> None:
    """A new bot process carries on with the messages telegram.json records: both taps count, nothing is resent."""
    ref, _ = new_pending_run(store, tmp_path, tg, segments=2)
    with running(tg, store) as first:
        fake.wait_for(lambda: len(fake.sends) == 5)
        _, (c0, c1) = messages(fake)
        fake.answer(fake.tap(USER, button(fake, c0, "✅0"), c0))
        fake.wait_for(lambda: edited(fake, c0, "✅ approved: 0:0"))
        started = time.monotonic()
        first.stop()
        assert time.monotonic() - started < 5
    sent, edits = len(fake.sends), len(fake.edits)
    with running(tg, store) as second:
        fake.wait_for(second.connected.is_set)
        assert "1:1" in fake.answer(fake.tap(USER, button(fake, c1, "✅1"), c1)).text
        fake.wait_for(lambda: edited(fake, c1, "✅ approved: 1:1"))
        time.sleep(0.4)
    assert len(fake.sends) == sent
    assert len(fake.edits) == edits + 2  # the tapped control message and the song's count
    assert verdicts(store, ref) == [(0, 0, "approve", "telegram"), (1, 1, "approve", "telegram")]


def test_the_bot_catches_up_after_telegram_was_unreachable(store: RunStore, tmp_path: Path, tg: Settings,
                                                           fake: FakeTelegram) -> None:
    """Down at start and again later: start() returns at once, the run waits, then everything pending goes out."""
    ref, _ = new_pending_run(store, tmp_path, tg, segments=2)
    fake.go_down()
    with running(tg, store) as bot:
        time.sleep(0.6)
        assert not bot.connected.is_set() and fake.sends == []
        fake.come_back()
        fake.wait_for(lambda: len(fake.sends) == 5)
        _, (c0, c1) = messages(fake)
        fake.go_down()
        decisions.decide(store, ref.run_id, "approve", 0, 1, by="me", channel="cli")
        query = fake.tap(USER, button(fake, c1, "❌0"), c1)  # pressed while the bot cannot hear it
        time.sleep(0.6)
        fake.come_back()
        fake.wait_for(lambda: edited(fake, c0, "✅ approved: 0:1"))
        assert "rejected" in fake.answer(query, timeout=20).text
    assert len(fake.sends) == 5
    assert verdicts(store, ref) == [(0, 1, "approve", "cli"), (1, 0, "reject", "telegram")]


def test_decisions_from_other_channels_show_in_the_chat(store: RunStore, tmp_path: Path, tg: Settings,
                                                        fake: FakeTelegram) -> None:
    """A decision made through decisions.decide (CLI, web) edits the control and song messages."""
    ref, _ = new_pending_run(store, tmp_path, tg, segments=2)
    with running(tg, store):
        fake.wait_for(lambda: len(fake.sends) == 5)
        song, (_, c1) = messages(fake)
        decisions.decide(store, ref.run_id, "approve", 1, 1, by="web", channel="web")
        fake.wait_for(lambda: edited(fake, c1, "✅ approved: 1:1") and edited(fake, song, "Approved: 1 of 2"))
        decisions.decide(store, ref.run_id, "reject", 1, 0, by="web", channel="web")
        fake.wait_for(lambda: edited(fake, c1, "❌ 1:0"))
        edits = len(fake.edits)
        time.sleep(0.4)
    assert len(fake.edits) == edits  # nothing changed: no edit
    assert len(fake.sends) == 5


def test_a_rendered_video_is_sent_once_with_its_thumbnail(store: RunStore, tmp_path: Path, tg: Settings,
                                                           fake: FakeTelegram) -> None:
    """When the run is rendered its video arrives once, thumbnail attached; a restart does not send it again."""
    ref, backend = new_pending_run(store, tmp_path, tg, segments=1)
    with running(tg, store):
        fake.wait_for(lambda: len(fake.sends) == 3)
        song, _ = messages(fake)
        rendered = render(store, tg, ref, backend, bitrate="200k")
        fake.wait_for(lambda: len(fake.sent("sendVideo")) == 1)
        fake.wait_for(lambda: edited(fake, song, "rendered"))
    with running(tg, store) as again:
        fake.wait_for(again.connected.is_set)
        time.sleep(0.4)
    video = fake.sent("sendVideo")
    assert len(video) == 1 and "preview" not in video[0].captions[0]
    assert video[0].files["video"] == (rendered.path / "final.mp4").stat().st_size
    assert "thumbnail" in str(list(video[0].files)) or len(video[0].files) == 2
    record = json.loads((rendered.path / "telegram.json").read_text(encoding="utf-8"))
    assert record["finished"] and record["video"]["message_id"] == video[0].message_ids[0]


def test_a_video_above_the_upload_limit_is_sent_as_a_preview(store: RunStore, tmp_path: Path, tg: Settings,
                                                              fake: FakeTelegram) -> None:
    """Above the (lowered) upload limit a smaller preview encode is sent instead, and fits."""
    limit = 200_000
    fake.upload_limit = limit
    ref, backend = new_pending_run(store, tmp_path, tg, segments=1)
    with running(tg, store, video_limit=limit):
        fake.wait_for(lambda: len(fake.sends) == 3)
        rendered = render(store, tg, ref, backend, bitrate="2M")
        assert (rendered.path / "final.mp4").stat().st_size > limit
        fake.wait_for(lambda: len(fake.sent("sendVideo")) == 1, timeout=30)
    video = fake.sent("sendVideo")[0]
    assert "preview" in video.captions[0] and sum(video.files.values()) <= limit
    assert (rendered.path / PREVIEW_NAME).stat().st_size == video.files["video"]


def test_a_run_left_waiting_gets_one_reminder_per_period(store: RunStore, tmp_path: Path, tg: Settings,
                                                         fake: FakeTelegram) -> None:
    """After reminder_hours without a decision one reminder is sent, then none until the next period."""
    offset = [timedelta(0)]

    def clock() -> datetime:
        return utcnow() + offset[0]

    tg.telegram.reminder_hours = 12
    new_pending_run(store, tmp_path, tg, segments=1)
    with running(tg, store, clock=clock):
        fake.wait_for(lambda: len(fake.sends) == 3)
        time.sleep(0.3)
        assert len(fake.sends) == 3
        offset[0] = timedelta(hours=13)
        fake.wait_for(lambda: len(fake.sends) == 4)
        assert fake.sends[3].text.startswith("⏰") and "1 of 1 segment(s) still open" in fake.sends[3].text
        time.sleep(0.4)
        assert len(fake.sends) == 4
        offset[0] = timedelta(hours=26)
        fake.wait_for(lambda: len(fake.sends) == 5)


def test_the_token_never_reaches_a_log(store: RunStore, tmp_path: Path, tg: Settings, fake: FakeTelegram) -> None:
    """Neither structlog events nor stdlib records (httpx, telegram) carry the token, even for a rejected one."""
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler, root = Keep(logging.DEBUG), logging.getLogger()
    handler.setFormatter(logging.Formatter("%(name)s %(message)s"))
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    for name in ("httpx", "httpcore", "telegram"):
        logging.getLogger(name).setLevel(logging.DEBUG)  # the bot must hold these back itself
    wrong = "987654321:AAWrongTokenWrongTokenWrongToken_xyz"
    try:
        new_pending_run(store, tmp_path, tg, segments=1)
        with capture_logs() as events:
            with running(tg, store):
                fake.wait_for(lambda: len(fake.sends) == 3)
                _, (c0,) = messages(fake)
                fake.answer(fake.tap(USER, button(fake, c0, "✅0"), c0))
            tg.telegram.token = SecretStr(wrong)
            with running(tg, store):
                time.sleep(0.5)
            checks = list(doctor_checks(tg))
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    assert any(e["event"] == "telegram.token_rejected" for e in events)
    assert not checks[0].ok and "rejected" in checks[0].detail
    text = json.dumps([str(e) for e in events]) + "\n".join(lines) + str(checks)
    assert TOKEN not in text and wrong not in text
    assert TOKEN.split(":")[1] not in text and wrong.split(":")[1] not in text


def test_doctor_checks_token_and_chat(tg: Settings, fake: FakeTelegram) -> None:
    """doctor: getMe and getChat succeed; a chat the bot cannot reach is named with the fix; disabled: nothing."""
    checks = list(doctor_checks(tg))
    assert [(c.name, c.ok) for c in checks] == [("telegram bot", True), ("telegram chat", True),
                                                ("telegram users", True)]
    assert "@tandava_test_bot" in checks[0].detail
    tg.telegram.chat_id = 31337
    chat = list(doctor_checks(tg))[1]
    assert not chat.ok and "31337" in chat.detail and "Start" in chat.detail
    tg.telegram.enabled = False
    assert list(doctor_checks(tg)) == []


def test_photos_beyond_telegram_limits_are_recompressed(tmp_path: Path) -> None:
    """An image above 10000 px of sides (or above the byte limit) becomes a JPEG that fits; others go as they are."""
    small = tmp_path / "small.png"
    Image.new("RGB", (832, 480), (10, 20, 30)).save(small)
    assert not photo_payload(small).recompressed and photo_payload(small).data == small.read_bytes()
    wide = tmp_path / "wide.png"
    Image.new("RGB", (9000, 1500), (10, 20, 30)).save(wide)  # 10500 px of sides
    photo = photo_payload(wide)
    with Image.open(io.BytesIO(photo.data)) as img:
        assert photo.recompressed and img.format == "JPEG" and sum(img.size) <= 10000
    heavy = tmp_path / "heavy.png"
    Image.effect_noise((1200, 800), 20).convert("RGB").save(heavy)  # about 1.5 MB of PNG
    photo = photo_payload(heavy, max_bytes=400_000)
    assert photo.recompressed and len(photo.data) <= 400_000
