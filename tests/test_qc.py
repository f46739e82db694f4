"""Output QC: real H.264 clips and images made in tmp_path, checked as ComfyUI's would be."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image

from daemon.errors import PermanentError, QCFailed
from daemon.video import qc

W, H = 208, 120  # a quarter of Wan's 832x480: same grid figures, 16x less to encode
FRAMES, FPS = 81, 16


def texture(w: int, h: int, seed: int, *, mean: float = 128, std: float = 45) -> Image.Image:
    """A colour picture with a natural image's 1/f spectrum (detail at every scale)."""
    rng = np.random.default_rng(seed)

    def field() -> np.ndarray:
        f = np.hypot(np.fft.rfftfreq(w)[None, :], np.fft.fftfreq(h)[:, None])
        f[0, 0] = 1.0
        spectrum = (rng.normal(size=f.shape) + 1j * rng.normal(size=f.shape)) / f
        spectrum[0, 0] = 0
        values = np.fft.irfft2(spectrum, s=(h, w))
        return (values - values.mean()) / values.std()

    luma = field() * std + mean
    rgb = np.stack([luma + 8 * field(), luma, luma - 8 * field()], axis=-1)
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


def camera(source: Image.Image, *, w: int = W, h: int = H, frames: int = FRAMES,
           pan: float = 0.0, zoom: float = 0.0) -> Iterator[Image.Image]:
    """Frames of a camera over ``source``: ``pan`` in px/frame at 832 px wide, ``zoom`` added over the clip."""
    scale = source.width / (w * 1.3)
    step = pan * w / 832 * scale
    for i in range(frames):
        z = 1 + zoom * i / max(frames - 1, 1)
        bw, bh = w * scale / z, h * scale / z
        cx, cy = source.width / 2 + (i - frames / 2) * step, source.height / 2
        yield source.resize((w, h), Image.Resampling.BICUBIC,
                            box=(cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2))


def write_clip(path: Path, frames: Iterable[Image.Image | np.ndarray], *, w: int = W, h: int = H) -> Path:
    """Encode rgb24 frames to H.264 mp4 at 16 fps, as ComfyUI's video nodes do (crf 19, yuv420p)."""
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y",
           "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", str(FPS), "-i", "-",
           "-c:v", "libx264", "-preset", "ultrafast", "-crf", "19", "-pix_fmt", "yuv420p", str(path)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE)
    assert proc.stdin is not None
    for frame in frames:
        proc.stdin.write(np.clip(np.asarray(frame, dtype=np.float32), 0, 255).astype(np.uint8).tobytes())
    proc.stdin.close()
    assert proc.wait() == 0
    return path


def source(seed: int = 1, **kwargs: float) -> Image.Image:
    """A texture large enough for the camera to move over."""
    return texture(int(W * 2.1), int(H * 2.1), seed, **kwargs)


def still(seed: int = 1, **kwargs: float) -> np.ndarray:
    """One frame of ``source`` at the clip's size, as floats."""
    return np.asarray(next(camera(source(seed, **kwargs), frames=1)), dtype=np.float32)


def failure(path: Path, *, start_image: Path | None = None) -> QCFailed:
    """The QCFailed that check_clip raises for ``path``."""
    with pytest.raises(QCFailed) as caught:
        qc.check_clip(path, expected_frames=FRAMES, start_image=start_image)
    return caught.value


def test_good_full_size_clip_passes_and_starts_at_its_image(tmp_path: Path) -> None:
    """A Wan-sized 832x480 slow pan and zoom passes, its first frame close to the start image."""
    frames = list(camera(texture(1800, 1040, 1), w=832, h=480, pan=0.5, zoom=0.05))
    frames[0].save(tmp_path / "start.png")
    clip = write_clip(tmp_path / "good.mp4", frames, w=832, h=480)
    stats = qc.check_clip(clip, expected_frames=FRAMES, start_image=tmp_path / "start.png")
    assert (stats.frames, stats.width, stats.height, stats.fps) == (81, 832, 480, 16.0)
    assert stats.motion > 3 * qc.ClipLimits().min_motion
    assert stats.first_frame_distance is not None and stats.first_frame_distance < 5
    assert stats.flash_frames == 0 and stats.black_fraction == 0


def test_slowest_gentle_pan_passes(tmp_path: Path) -> None:
    """A pan of a quarter pixel per frame at 832 px, slower than Wan's gentle moves, is not frozen."""
    clip = write_clip(tmp_path / "slow.mp4", camera(source(), pan=0.25))
    assert qc.check_clip(clip, expected_frames=FRAMES).motion > 2 * qc.ClipLimits().min_motion


def test_black_clip_fails(tmp_path: Path) -> None:
    """An all-black clip is called black, and only black."""
    error = failure(write_clip(tmp_path / "black.mp4", (np.zeros((H, W, 3)) for _ in range(FRAMES))))
    assert "black (100% of frames" in error.reason and "frozen" not in error.reason
    assert error.figures["black_fraction"] == 1.0 and error.cause == "QCFailed"
    assert "new seed" in error.hint


def test_near_black_noise_is_still_black(tmp_path: Path) -> None:
    """Faint noise over black is still a black clip."""
    rng = np.random.default_rng(0)
    error = failure(write_clip(tmp_path / "dim.mp4", (3 + rng.normal(0, 2, (H, W, 3)) for _ in range(FRAMES))))
    assert "black" in error.reason and error.figures["mean_luma"] < 8


def test_dark_night_scene_passes(tmp_path: Path) -> None:
    """A dark but textured night scene panning slowly is neither black nor frozen."""
    clip = write_clip(tmp_path / "night.mp4", camera(source(mean=25, std=12), pan=1.0))
    stats = qc.check_clip(clip, expected_frames=FRAMES)
    assert 15 < stats.mean_luma < 35 and stats.black_fraction == 0


def test_repeated_frame_is_frozen(tmp_path: Path) -> None:
    """One frame repeated 81 times is frozen, every frame a repeat."""
    frame = still()
    error = failure(write_clip(tmp_path / "frozen.mp4", (frame for _ in range(FRAMES))))
    assert re.search(r"frozen \(motion 0\.00 < 0\.35; 9\d% of frames repeat the one before\)", error.reason)
    assert error.figures["static_fraction"] > 0.9


def test_imperceptible_noise_is_frozen(tmp_path: Path) -> None:
    """A full-size still under noise no one can see is frozen, though its frames are not identical."""
    frame = np.asarray(next(camera(texture(1800, 1040, 1), w=832, h=480, frames=1)), dtype=np.float32)
    rng = np.random.default_rng(0)
    frames = (frame + rng.normal(0, 2, frame.shape) for _ in range(FRAMES))
    error = failure(write_clip(tmp_path / "noise.mp4", frames, w=832, h=480))
    assert "frozen" in error.reason and 0 < error.figures["motion"] < 0.35


def test_deliberate_still_passes_with_min_motion_zero(tmp_path: Path) -> None:
    """A caller that wants a still sets min_motion=0; repeated frames still fail via static_fraction."""
    limits = qc.ClipLimits(min_motion=0.0)
    drift = write_clip(tmp_path / "drift.mp4", camera(source(), zoom=0.02))
    qc.check_clip(drift, expected_frames=FRAMES, limits=limits)
    frame = still()
    frozen = write_clip(tmp_path / "frozen.mp4", (frame for _ in range(FRAMES)))
    with pytest.raises(QCFailed, match="frames repeat the one before"):
        qc.check_clip(frozen, expected_frames=FRAMES, limits=limits)


def test_two_white_frames_are_flashes(tmp_path: Path) -> None:
    """Two white frames in the middle of a moving clip are two flash frames."""
    frames = [np.asarray(f, dtype=np.float32) for f in camera(source(), pan=1.0)]
    frames[40] = frames[41] = np.full((H, W, 3), 255.0)
    error = failure(write_clip(tmp_path / "flash.mp4", frames))
    assert "2 flash frames (luma jump 1" in error.reason and "frozen" not in error.reason
    assert error.figures["flash_frames"] == 2 and error.figures["max_luma_jump"] > 100
    assert "VAE" in error.hint and "frame count" not in error.hint


def test_hard_cut_is_not_a_flash(tmp_path: Path) -> None:
    """A cut from a dark scene to a bright one changes level for good and passes."""
    dark = list(camera(source(1, mean=50, std=25), pan=1.0, frames=40))
    bright = list(camera(source(2, mean=190, std=25), pan=1.0, frames=41))
    stats = qc.check_clip(write_clip(tmp_path / "cut.mp4", dark + bright), expected_frames=FRAMES)
    assert stats.flash_frames == 0 and stats.max_luma_jump < 30


def test_too_few_frames(tmp_path: Path) -> None:
    """A 12-frame clip where 81 were asked for is named as such."""
    clip = write_clip(tmp_path / "short.mp4", camera(source(), pan=1.0, frames=12))
    error = failure(clip)
    assert "12 frames, 81 expected" in error.reason and error.figures["expected_frames"] == 81


def test_first_frame_unlike_start_image(tmp_path: Path) -> None:
    """A clip that does not start from the approved image is caught."""
    texture(W, H, 7).save(tmp_path / "approved.png")  # as bright and contrasty as the clip
    clip = write_clip(tmp_path / "other.mp4", camera(source(1), pan=1.0))
    error = failure(clip, start_image=tmp_path / "approved.png")
    assert "first frame differs from the approved image (distance" in error.reason
    assert error.figures["first_frame_distance"] > 30


def test_truncated_clip_is_broken(tmp_path: Path) -> None:
    """A clip cut off mid-write cannot be decoded: QCFailed with cause BrokenClip."""
    whole = write_clip(tmp_path / "whole.mp4", camera(source(), pan=1.0, frames=20)).read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(QCFailed) as caught:
        qc.check_clip(cut, expected_frames=20)
    assert caught.value.cause == "BrokenClip" and "cut.mp4 cannot be decoded" in caught.value.reason


def test_clip_problems_report_every_problem() -> None:
    """clip_problems lists each problem of a clip that is short, frozen and flashing."""
    stats = qc.ClipStats(frames=40, width=W, height=H, fps=16.0, mean_luma=100.0, black_fraction=0.0,
                         motion=0.1, static_fraction=0.2, max_luma_jump=180.0, flash_frames=3,
                         first_frame_distance=None)
    assert qc.clip_problems(stats, expected_frames=81) == [
        "40 frames, 81 expected", "frozen (motion 0.10 < 0.35)", "3 flash frames (luma jump 180 > 60)"]
    assert "first_frame_distance" not in stats.figures() and stats.figures()["flash_frames"] == 3.0


def save(image: Image.Image | np.ndarray, path: Path, **kwargs: int) -> Path:
    """Save an image (array or PIL) to ``path``."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    image.save(path, **kwargs)
    return path


def gradient(seed: int = 0) -> np.ndarray:
    """A left-to-right gradient with noise, 512x288 RGB."""
    ramp = np.linspace(30, 220, 512)[None, :, None].repeat(288, 0).repeat(3, 2)
    return ramp + np.random.default_rng(seed).normal(0, 10, ramp.shape)


def test_black_image_fails(tmp_path: Path) -> None:
    """A black image is called black with its mean luma."""
    with pytest.raises(QCFailed, match=r"black\.png is black \(mean luma 0\.0 < 8\)") as caught:
        qc.check_image(save(np.zeros((288, 512, 3)), tmp_path / "black.png"))
    assert caught.value.figures["mean_luma"] == 0.0


def test_flat_grey_image_fails(tmp_path: Path) -> None:
    """A uniform grey image with faint noise is flat."""
    grey = 128 + np.random.default_rng(0).normal(0, 1, (288, 512, 3))
    with pytest.raises(QCFailed, match=r"is flat \(luma spread"):
        qc.check_image(save(grey, tmp_path / "grey.png"))


def test_real_image_passes(tmp_path: Path) -> None:
    """A gradient with noise passes and reports its size."""
    stats = qc.check_image(save(gradient(), tmp_path / "ok.png"))
    assert (stats.width, stats.height) == (512, 288) and stats.std_luma > 40


def test_resaved_image_is_a_near_duplicate(tmp_path: Path) -> None:
    """The same picture, brightened a little and re-saved as JPEG, is a near-duplicate."""
    first = qc.check_image(save(gradient(), tmp_path / "a.png"))
    again = save(gradient(1) + 4, tmp_path / "b.jpg", quality=80)
    with pytest.raises(QCFailed, match="near-duplicate of another candidate") as caught:
        qc.check_image(again, [first])
    assert caught.value.figures["hash_distance"] <= 5 and "seed" in caught.value.hint


def test_different_image_is_not_a_duplicate(tmp_path: Path) -> None:
    """A different picture is far from the first in hash distance."""
    first = qc.check_image(save(gradient(), tmp_path / "a.png"))
    other = qc.check_image(save(texture(512, 288, 3), tmp_path / "b.png"), [first])
    assert qc.hash_distance(first.dhash, other.dhash) > 16


def test_unreadable_image_is_permanent(tmp_path: Path) -> None:
    """A file that is not an image raises PermanentError naming it."""
    bad = tmp_path / "c01.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(PermanentError, match="c01.png is not a readable image"):
        qc.image_stats(bad)
