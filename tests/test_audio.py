"""Decoding songs and refusing unusable ones (daemon.music.audio)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from daemon.errors import BadInput
from daemon.music.audio import load_mono, probe_duration
from daemon.music.synth import synth_song, write_audio, write_long_silence, write_song

FORMATS = [".wav", ".flac", ".ogg", ".mp3", ".m4a"]


@pytest.fixture(scope="module")
def song() -> tuple[np.ndarray, int]:
    """Four seconds of synthesized drums and chords at 22,050 Hz."""
    y, truth = synth_song(4.0, 120.0, seed=11)
    return y, truth.sample_rate


@pytest.mark.parametrize("suffix", FORMATS)
def test_probe_duration_reads_the_header_of_every_format(
    tmp_path: Path, song: tuple[np.ndarray, int], suffix: str
) -> None:
    """probe_duration reports each format's length to within 0.1 s."""
    y, sr = song
    path = write_audio(tmp_path / f"song{suffix}", y, sr)
    assert probe_duration(path) == pytest.approx(len(y) / sr, abs=0.1)


@pytest.mark.parametrize("suffix", FORMATS)
def test_load_mono_decodes_every_format(
    tmp_path: Path, song: tuple[np.ndarray, int], suffix: str
) -> None:
    """Each format decodes to float32 mono of the right length and loudness."""
    y, sr = song
    path = write_audio(tmp_path / f"song{suffix}", y, sr)
    decoded = load_mono(path, sr)
    assert decoded.dtype == np.float32 and decoded.ndim == 1
    assert len(decoded) / sr == pytest.approx(len(y) / sr, abs=0.1)
    rms = float(np.sqrt(np.mean(decoded**2)))
    assert rms == pytest.approx(float(np.sqrt(np.mean(y**2))), rel=0.15)


def test_load_mono_downmixes_stereo_and_resamples(tmp_path: Path) -> None:
    """A 44.1 kHz stereo file becomes the mean of its channels at the requested rate."""
    t = np.arange(44100 * 3) / 44100
    left = 0.5 * np.sin(2 * np.pi * 220 * t)
    path = tmp_path / "stereo.wav"
    sf.write(str(path), np.stack([left, np.zeros_like(left)], axis=1), 44100, subtype="FLOAT")
    decoded = load_mono(path, 22050)
    assert len(decoded) == 22050 * 3
    assert float(np.max(np.abs(decoded[1000:-1000]))) == pytest.approx(0.25, rel=0.02)


def test_zero_byte_file_is_refused(tmp_path: Path) -> None:
    """An empty file is BadInput 'empty' and the hint says how to retry."""
    path = tmp_path / "empty.mp3"
    path.touch()
    with pytest.raises(BadInput) as info:
        probe_duration(path)
    assert info.value.cause == "empty"
    assert "0 bytes" in info.value.reason and "tandava retry" in info.value.hint


def test_text_file_named_mp3_is_refused(tmp_path: Path) -> None:
    """A text file with an audio suffix is BadInput 'not_audio', naming the file."""
    path = tmp_path / "lyrics.mp3"
    path.write_text("these are the lyrics, not the song\n" * 20, encoding="utf-8")
    with pytest.raises(BadInput) as info:
        load_mono(path, 22050)
    assert info.value.cause == "not_audio"
    assert "lyrics.mp3" in info.value.reason and "not an audio file" in info.value.reason


@pytest.mark.parametrize("suffix", [".mp3", ".flac"])
def test_truncated_file_is_refused(tmp_path: Path, suffix: str) -> None:
    """A file cut in half (an interrupted copy) is BadInput 'truncated' with both lengths."""
    whole = tmp_path / f"whole{suffix}"
    write_song(whole, 10.0, 120.0, seed=3)
    data = whole.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadInput) as info:
        load_mono(cut, 22050)
    assert info.value.cause == "truncated"
    assert "promises 10.0 s" in info.value.reason


def test_too_short_song_is_refused(tmp_path: Path) -> None:
    """0.3 s of audio is BadInput 'too_short' that says a beat cannot be found."""
    y, truth = synth_song(0.3, 120.0)
    path = write_audio(tmp_path / "blip.wav", y, truth.sample_rate)
    with pytest.raises(BadInput) as info:
        load_mono(path, 22050)
    assert info.value.cause == "too_short"
    assert "too short to find a beat" in info.value.reason


def test_two_hour_file_is_refused_before_decoding(tmp_path: Path) -> None:
    """A 2-hour WAV is refused as 'too_long' from its header, in well under 2 s."""
    path = write_long_silence(tmp_path / "mix.wav", 2 * 3600)
    started = time.perf_counter()
    with pytest.raises(BadInput) as info:
        load_mono(path, 22050, max_seconds=20 * 60)
    assert time.perf_counter() - started < 2.0
    assert info.value.cause == "too_long"
    assert "2:00:00" in info.value.reason and "20:00" in info.value.reason


def test_silent_file_is_refused(tmp_path: Path) -> None:
    """Digital silence is BadInput 'silent' rather than an analysis of nothing."""
    path = write_long_silence(tmp_path / "silence.wav", 5.0)
    with pytest.raises(BadInput) as info:
        load_mono(path, 22050)
    assert info.value.cause == "silent"


def test_missing_file_is_refused(tmp_path: Path) -> None:
    """A file that vanished is BadInput 'missing' telling the person to drop it again."""
    with pytest.raises(BadInput) as info:
        probe_duration(tmp_path / "gone.flac")
    assert info.value.cause == "missing"


def test_unreadable_file_is_refused(
    tmp_path: Path, song: tuple[np.ndarray, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PermissionError becomes BadInput 'unreadable' that says to fix permissions and retry."""
    y, sr = song
    path = write_audio(tmp_path / "locked.wav", y, sr)
    real_open = Path.open

    def denied(self: Path, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        # The OS's refusal, faked at the edge: root reads chmod-000 files and
        # Windows has no such mode, so a real one cannot be made portably.
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "open", denied)
    with pytest.raises(BadInput) as info:
        load_mono(path, sr)
    assert info.value.cause == "unreadable"
    assert "not allowed to read" in info.value.reason
    assert "permission" in info.value.hint and "tandava retry" in info.value.hint


def junk_mp3(path: Path) -> Path:
    """An ID3 header followed by noise: libmpg123 searches it for frames and complains on stderr."""
    rng = np.random.default_rng(7)
    path.write_bytes(b"ID3\x03\x00\x00\x00\x00\x00\x00" + rng.integers(0, 256, 100_000, dtype=np.uint8).tobytes())
    return path


def test_decoder_noise_is_logged_as_an_event_not_written_to_stderr(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """libmpg123's stderr lines during a decode become one audio.decoder_message event; fd 2 gets none of them."""
    from structlog.testing import capture_logs

    with capture_logs() as logs, pytest.raises(BadInput):
        load_mono(junk_mp3(tmp_path / "noise.mp3"), 22050)
    assert capfd.readouterr().err == ""
    messages = [e for e in logs if e["event"] == "audio.decoder_message"]
    assert messages and all(e["file"] == "noise.mp3" for e in messages)
    assert any("MPEG" in line or "mpg123" in line for e in messages for line in e["lines"])


def test_concurrent_decodes_share_the_capture_and_restore_stderr(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Four threads decoding bad files at once leave fd 2 as it was and print nothing raw."""
    import os
    import threading

    before = os.fstat(2)
    files = [junk_mp3(tmp_path / f"noise{i}.mp3") for i in range(4)]
    errors: list[BaseException] = []

    def decode(path: Path) -> None:
        for _ in range(3):
            try:
                load_mono(path, 22050)
            except BadInput:
                pass
            except BaseException as exc:  # anything but the refusal is a failure of the test
                errors.append(exc)

    threads = [threading.Thread(target=decode, args=(f,)) for f in files]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = os.fstat(2)
    assert errors == []
    assert (before.st_dev, before.st_ino) == (after.st_dev, after.st_ino)
    assert capfd.readouterr().err == ""


def test_json_console_stays_json_lines_while_a_bad_mp3_is_decoded(tmp_path: Path) -> None:
    """The daemon's JSON console (stderr) carries only JSON lines while decoders complain and other threads log."""
    import json
    import subprocess
    import sys

    song = junk_mp3(tmp_path / "noise.mp3")
    script = (
        "import threading, structlog\n"
        "from pathlib import Path\n"
        "from daemon.logs import configure_logging, default_console\n"
        "from daemon.music.audio import load_mono\n"
        "configure_logging(console=default_console(), console_mode='json')\n"
        "log = structlog.get_logger('t')\n"
        "stop = threading.Event()\n"
        "def chatter():\n"
        "    while not stop.is_set():\n"
        "        log.info('other.thread')\n"
        "t = threading.Thread(target=chatter); t.start()\n"
        "for _ in range(5):\n"
        "    try:\n"
        f"        load_mono(Path({str(song)!r}), 22050)\n"
        "    except Exception:\n"
        "        pass\n"
        "stop.set(); t.join()\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    lines = done.stderr.splitlines()
    parsed = [json.loads(line) for line in lines]  # raises on any raw decoder line
    assert any(e["event"] == "audio.decoder_message" for e in parsed)
    assert any(e["event"] == "other.thread" for e in parsed)
    caught = [line for e in parsed if e["event"] == "audio.decoder_message" for line in e["lines"]]
    assert not any("other.thread" in line for line in caught)  # our own lines are never swallowed


def test_not_audio_reason_has_no_raw_errno(tmp_path: Path) -> None:
    """A file FFmpeg cannot read is 'not an audio file (the decoder found no audio stream)'; the raw text is logged only."""
    from structlog.testing import capture_logs

    path = tmp_path / "voice memo.m4a"
    path.write_bytes(b"\x00\x01not audio at all" * 500)
    with capture_logs() as logs, pytest.raises(BadInput) as info:
        load_mono(path, 22050)
    assert info.value.cause == "not_audio"
    assert "voice memo.m4a is not an audio file (the decoder found no audio stream)" in info.value.reason
    assert "Errno" not in info.value.reason and "Errno" not in info.value.hint
    assert any("Invalid data" in e.get("error", "") for e in logs if e["event"] == "audio.decode_error")
