"""Final video assembly (daemon.video.assembly) with the real ffmpeg on real files."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from daemon.config import AssemblyConfig
from daemon.errors import PermanentError, TransientError
from daemon.music.plan import Segment
from daemon.music.synth import write_song
from daemon.runs.fsutil import is_temp_name
from daemon.video.assembly import (
    LEAN_X264_PARAMS,
    assemble,
    contact_label,
    thumbnail_time,
    write_contact_sheet,
    write_thumbnail,
    x264_options,
)
from daemon.video.media import find_ffmpeg, probe, run_ffmpeg
from daemon.video.timeline import Timeline, build_timeline

W, H = 160, 96
SONG_SECONDS = 12.0
# Strong, pairwise-distinct colours: a hard cut moves the mean RGB by > 100.
PALETTE = ["0xE02020", "0x20C040", "0x2040E0", "0xE0E020", "0xC020C0", "0x20D0D0", "0xF0F0F0"]


@pytest.fixture(scope="module")
def ffmpeg() -> str:
    """The bundled ffmpeg."""
    return find_ffmpeg()


@pytest.fixture(scope="module")
def song(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 12-second synthetic song."""
    path = tmp_path_factory.mktemp("song") / "song.wav"
    write_song(path, SONG_SECONDS, 120.0, section_change_at=6.0)
    return path


def _solid_clips(
    tl: Timeline, folder: Path, ffmpeg: str, size: tuple[int, int] = (W, H)
) -> list[Path]:
    """One solid-colour clip per request, colours cycling through PALETTE."""
    clips = []
    for i, request in enumerate(tl.clips):
        path = folder / f"clip{i:02d}.mp4"
        source = f"color=c={PALETTE[i % len(PALETTE)]}:s={size[0]}x{size[1]}:r={tl.fps}"
        _encode(ffmpeg, ["-f", "lavfi", "-i", source], request.frames, path)
        clips.append(path)
    return clips


def _ramp_clips(tl: Timeline, folder: Path, ffmpeg: str) -> list[Path]:
    """Clips whose brightness is 20 + 2 * frame number and whose tint differs per clip."""
    clips = []
    for i, request in enumerate(tl.clips):
        path = folder / f"ramp{i:02d}.mp4"
        cb, cr = (60, 200) if i % 2 else (200, 60)
        graph = f"geq=lum='20+2*N':cb={cb}:cr={cr}"
        source = ["-f", "lavfi", "-i", f"nullsrc=s=192x96:r={tl.fps}", "-vf", graph]
        _encode(ffmpeg, source, request.frames, path)
        clips.append(path)
    return clips


def _encode(ffmpeg: str, source: list[str], frames: int, path: Path) -> None:
    args = [*source, "-frames:v", str(frames), "-c:v", "libx264", "-preset", "ultrafast"]
    run_ffmpeg(
        ffmpeg, [*args, "-qp", "0", "-pix_fmt", "yuv420p", str(path)], what="make a test clip"
    )


def _frame_stats(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame mean RGB and mean Y (limited range: black is 16) of a video, decoded with PyAV."""
    rgb, luma = [], []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            rgb.append(frame.to_ndarray(format="rgb24").reshape(-1, 3).mean(axis=0))
            luma.append(frame.to_ndarray()[: frame.height].mean())
    return np.array(rgb), np.array(luma)


def _hard_cuts(rgb: np.ndarray) -> list[int]:
    """Frames whose mean colour jumps from the previous frame's."""
    jumps = np.abs(np.diff(rgb, axis=0)).sum(axis=1)
    return [int(i) + 1 for i in np.flatnonzero(jumps > 60)]


def _assert_valid(tl: Timeline, path: Path, size: tuple[int, int] = (W, H)) -> None:
    info = probe(path)
    assert info.frames == tl.total_frames
    assert abs(info.duration - tl.duration) <= 1 / tl.fps
    assert info.has_audio
    assert (info.width, info.height) == size


def _leftovers(folder: Path) -> list[str]:
    return sorted(
        p.name for p in folder.iterdir() if is_temp_name(p.name) or p.name.startswith("final")
    )


def test_hard_cuts_land_exactly_on_the_timeline(tmp_path: Path, song: Path, ffmpeg: str) -> None:
    """Without transitions every cut is a hard cut on its timeline frame, and the video is exact."""
    tl = build_timeline([0.0, 2.5, 5.0, 8.25, SONG_SECONDS], fps=16, max_frames=None)
    out = tmp_path / "out"
    out.mkdir()
    result = assemble(
        tl, _solid_clips(tl, tmp_path, ffmpeg), song, out, width=W, height=H,
        cfg=AssemblyConfig(transition="none"), ffmpeg=ffmpeg,
    )  # fmt: skip
    assert result.final == out / "final.mp4" and result.exports == {}
    _assert_valid(tl, result.final)
    assert (result.info.pix_fmt, result.info.video_codec) == ("yuv420p", "h264")
    rgb, _ = _frame_stats(result.final)
    assert _hard_cuts(rgb) == list(tl.cut_frames[1:-1])
    assert _leftovers(out) == ["final.mp4"]


@pytest.mark.parametrize("fps", [24, 30])
def test_crossfade_is_centred_on_the_section_cut(
    tmp_path: Path, song: Path, ffmpeg: str, fps: int
) -> None:
    """A crossfade blends across its section cut; other cuts stay hard and on their frames."""
    tl = build_timeline(
        [0.0, 3.0, 6.0, 9.0, SONG_SECONDS], fps=fps, max_frames=None, section_cuts=[False, True, False],
        transition="crossfade", transition_frames=fps // 2,
    )  # fmt: skip
    result = assemble(
        tl, _solid_clips(tl, tmp_path, ffmpeg), song, tmp_path, width=W, height=H,
        cfg=AssemblyConfig(), ffmpeg=ffmpeg,
    )  # fmt: skip
    _assert_valid(tl, result.final)
    rgb, _ = _frame_stats(result.final)
    (t,) = tl.transitions
    assert _hard_cuts(rgb) == [tl.cut_frames[1], tl.cut_frames[3]]
    outgoing, incoming = rgb[t.frame - t.before - 1], rgb[t.frame + t.after]
    middle = rgb[t.frame]
    # The blend is monotone from one colour to the other, half-way near the cut.
    assert np.abs(rgb[t.frame - t.before - 5] - outgoing).max() < 4
    assert np.abs(rgb[t.frame + t.after + 5] - incoming).max() < 4
    assert (
        np.abs(middle - (outgoing + incoming) / 2).max() < 0.2 * np.abs(outgoing - incoming).max()
    )


def test_fade_goes_through_black_at_the_section_cut(
    tmp_path: Path, song: Path, ffmpeg: str
) -> None:
    """A fade darkens to black before the section cut and back after it; the length is unchanged."""
    tl = build_timeline(
        [0.0, 6.0, SONG_SECONDS], fps=16, max_frames=None, section_cuts=[True],
        transition="fade", transition_frames=8,
    )  # fmt: skip
    result = assemble(
        tl, _solid_clips(tl, tmp_path, ffmpeg), song, tmp_path, width=W, height=H,
        cfg=AssemblyConfig(transition="fade"), ffmpeg=ffmpeg,
    )  # fmt: skip
    _assert_valid(tl, result.final)
    _, y = _frame_stats(result.final)
    luma = y - 16
    cut = tl.cut_frames[1]
    assert luma[cut - 1] < 0.3 * luma[cut - 6] and luma[cut] < 0.3 * luma[cut + 6]
    assert luma[cut - 5] > 0.9 * luma[0] and luma[cut + 5] > 0.9 * luma[-1]


def test_trimmed_slowed_and_chained_clips_with_exports(
    tmp_path: Path, song: Path, ffmpeg: str
) -> None:
    """A capped backend's clips are trimmed, slowed and chained frame-exactly; MOV and vertical come from the same pass."""
    tl = build_timeline([0.0, 1.5, 4.0, 10.0, SONG_SECONDS], fps=16, max_frames=33)
    speeds = [round(p.speed, 3) for p in tl.pieces]
    assert speeds[0] == 1.0 and speeds[1] > 1.0 and len(tl.requests_for(2)) == 2
    cfg = AssemblyConfig(transition="none", exports=["mov", "vertical"])
    result = assemble(
        tl,
        _ramp_clips(tl, tmp_path, ffmpeg),
        song,
        tmp_path,
        width=W,
        height=H,
        cfg=cfg,
        ffmpeg=ffmpeg,
    )
    _assert_valid(tl, result.final)
    rgb, luma = _frame_stats(result.final)
    assert _hard_cuts(rgb) == [p.start for p in tl.pieces[1:]]
    for piece in tl.pieces:
        # Each piece starts on its clip's first frame and ends on the last source frame it uses.
        assert luma[piece.start] == pytest.approx(20, abs=3)
        assert luma[piece.end - 1] == pytest.approx(20 + 2 * (piece.source_frames - 1), abs=3)
    assert set(result.exports) == {"mov", "vertical"}
    mov, vertical = result.exports["mov"], result.exports["vertical"]
    assert mov.name == "final_vj.mov" and vertical.name == "final_vertical.mp4"
    _assert_valid(tl, mov)
    assert probe(mov).video_codec == "mjpeg" and probe(mov).pix_fmt.startswith("yuvj")
    _assert_valid(tl, vertical, size=(480, 854))
    assert _leftovers(tmp_path) == ["final.mp4", "final_vertical.mp4", "final_vj.mov"]


def test_broken_clip_fails_permanently_and_leaves_nothing(
    tmp_path: Path, song: Path, ffmpeg: str
) -> None:
    """A clip that is not a video raises PermanentError naming it; no final file, no temp files."""
    tl = build_timeline([0.0, 6.0, SONG_SECONDS], fps=16, max_frames=None)
    clips = _solid_clips(tl, tmp_path, ffmpeg)
    clips[1].write_bytes(os.urandom(4096))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(PermanentError) as info:
        assemble(tl, clips, song, out, width=W, height=H, cfg=AssemblyConfig(), ffmpeg=ffmpeg)
    assert "segment 1" in info.value.reason and clips[1].name in info.value.reason
    assert list(out.iterdir()) == []


def test_short_clip_fails_before_encoding(tmp_path: Path, song: Path, ffmpeg: str) -> None:
    """A clip with fewer frames than its piece needs is refused up front."""
    tl = build_timeline([0.0, 6.0, SONG_SECONDS], fps=16, max_frames=None)
    clips = _solid_clips(tl, tmp_path, ffmpeg)
    _encode(ffmpeg, ["-f", "lavfi", "-i", f"color=c=red:s={W}x{H}:r=16"], 20, clips[0])
    with pytest.raises(PermanentError, match="has 20 frames; the timeline needs 96"):
        assemble(tl, clips, song, tmp_path, width=W, height=H, cfg=AssemblyConfig(), ffmpeg=ffmpeg)
    assert _leftovers(tmp_path) == []


def _fake_ffmpeg(folder: Path) -> str:
    """A real executable that half-writes every output it is given, then reports a full disk."""
    script = folder / "fake_ffmpeg.py"
    script.write_text(
        "import sys\n"
        "for arg in sys.argv[1:]:\n"
        "    if '.tandava-' in arg and not arg.endswith('filtergraph.txt'):\n"
        "        open(arg, 'wb').write(b'half a video')\n"
        "sys.stderr.write('av_interleaved_write_frame(): No space left on device\\n')\n"
        "sys.exit(1)\n",
        encoding="utf-8",
    )
    if os.name == "nt":
        launcher = folder / "fake_ffmpeg.cmd"
        launcher.write_text(f'@"{sys.executable}" "{script}" %*\r\n', encoding="utf-8")
    else:
        launcher = folder / "fake_ffmpeg"
        launcher.write_text(
            f'#!/bin/sh\nexec "{sys.executable}" "{script}" "$@"\n', encoding="utf-8"
        )
        launcher.chmod(launcher.stat().st_mode | stat.S_IXUSR)
    return str(launcher)


def test_disk_full_is_transient_and_leaves_nothing(tmp_path: Path, song: Path, ffmpeg: str) -> None:
    """ffmpeg reporting a full disk raises TransientError(DiskFull) and removes what it half-wrote."""
    tl = build_timeline([0.0, 6.0, SONG_SECONDS], fps=16, max_frames=None)
    clips = _solid_clips(tl, tmp_path, ffmpeg)
    out = tmp_path / "out"
    out.mkdir()
    cfg = AssemblyConfig(exports=["mov"])
    with pytest.raises(TransientError) as info:
        assemble(tl, clips, song, out, width=W, height=H, cfg=cfg, ffmpeg=_fake_ffmpeg(tmp_path))
    assert info.value.cause == "DiskFull"
    assert list(out.iterdir()) == []


def test_thumbnail_from_video_and_image(tmp_path: Path, song: Path, ffmpeg: str) -> None:
    """A thumbnail is a JPEG of the frame at the asked time (clamped into the video), or of an image."""
    tl = build_timeline([0.0, 6.0, SONG_SECONDS], fps=16, max_frames=None)
    video = assemble(
        tl, _solid_clips(tl, tmp_path, ffmpeg), song, tmp_path, width=W, height=H,
        cfg=AssemblyConfig(transition="none"), ffmpeg=ffmpeg,
    ).final  # fmt: skip
    segments = [
        Segment(index=0, start=0.0, end=6.0, beats=12, energy=0.2, mood="calm", section=0),
        Segment(index=1, start=6.0, end=12.0, beats=12, energy=0.9, mood="intense", section=1),
    ]
    assert thumbnail_time(segments) == 9.0
    thumb = write_thumbnail(video, tmp_path / "thumb.jpg", at_seconds=9.0, ffmpeg=ffmpeg)
    with Image.open(thumb) as img:
        assert (img.format, img.size) == ("JPEG", (W, H))
        assert np.abs(np.asarray(img.convert("RGB")).mean(axis=(0, 1)) - (32, 192, 64)).max() < 12
    late = write_thumbnail(video, tmp_path / "late.jpg", at_seconds=99.0, ffmpeg=ffmpeg)
    assert late.stat().st_size > 0
    big = tmp_path / "big.png"
    Image.new("RGB", (2000, 1000), (10, 20, 30)).save(big)
    with Image.open(write_thumbnail(big, tmp_path / "big.jpg", ffmpeg=ffmpeg)) as img:
        assert img.size == (1280, 640)
    assert not [p for p in tmp_path.iterdir() if is_temp_name(p.name)]


def test_contact_sheet_grids_labelled_images(tmp_path: Path) -> None:
    """A contact sheet is a PNG grid with one labelled tile per approved image."""
    images = []
    for i in range(5):
        path = tmp_path / f"img{i}.png"
        Image.new("RGB", (832, 480), (40 * i, 100, 200)).save(path)
        images.append((path, contact_label(i + 1, 10.06 * i, 10.06 * i + 5.1, "intense")))
    assert images[2][1] == "03 00:20.1–00:25.2 intense"
    sheet = write_contact_sheet(images, tmp_path / "sheet.png", columns=3, tile_width=200)
    with Image.open(sheet) as img:
        assert img.format == "PNG"
        assert img.width == 8 + 3 * 208 and img.height > 2 * 115


def test_lean_preset_is_veryfast_with_tuned_x264_params() -> None:
    """The default preset is lean: veryfast with tuned x264 params; named presets pass through unchanged."""
    assert AssemblyConfig().preset == "lean"
    assert x264_options("lean") == ("-preset", "veryfast", "-x264-params", LEAN_X264_PARAMS)
    assert x264_options("ultrafast") == ("-preset", "ultrafast")
