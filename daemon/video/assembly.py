"""The final video: every clip, trimmed, slowed and joined, encoded once with the song.

How this works. ``assemble`` runs ONE ffmpeg process. Its inputs are the
clips in timeline order and the song; its filter graph (``filter_graph``, a
pure function of the ``Timeline``) does, per piece::

    trim to the source frames used -> scale/crop to the output size ->
    restamp frame N at N * speed / fps -> fps (duplicates frames to slow) ->
    clone-pad + trim to exactly the piece's output frames

Pieces between two transitions form a *run*, joined by the ``concat`` filter
(hard cuts). Runs are joined by ``xfade`` (its offset is the frames so far
minus the transition's, so the blend is centred on the cut) or, for fades,
concatenated after ``fade`` out/in at the run ends. Because every piece is
made frame-exact, the video has exactly ``timeline.total_frames`` frames;
the audio is trimmed/padded to the song's duration, never cut with
``-shortest``. Optional exports (an MJPEG ``.mov`` for VJ software and a
9:16 centre crop) branch off the same graph with ``split``, so frames are
decoded and filtered once and each output is encoded once.

The graph goes to ffmpeg through a file (``-/filter_complex``), because a
10-minute song's graph passes Windows' 32 k command-line limit. Every output
is written under a hidden temp name in the target folder, probed (frame
count, duration, streams, size), fsynced and only then renamed into place:
nothing half-written ever carries a final name, and a failure removes all
temp files. Errors: broken inputs and failed checks raise ``PermanentError``;
ffmpeg's own failures are translated by ``media.run_ffmpeg`` (a full disk is
a ``TransientError`` with cause ``DiskFull``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from daemon.config import AssemblyConfig
from daemon.errors import PermanentError, StageError, TransientError
from daemon.music.plan import Segment
from daemon.runs.fsutil import fsync_dir, replacing, temp_path_for
from daemon.video.media import FFMPEG_TIMEOUT_SECONDS, MediaInfo, Progress, probe, run_ffmpeg
from daemon.video.timeline import Timeline

if TYPE_CHECKING:
    from PIL import Image

FINAL_NAME = "final.mp4"
EXPORT_NAMES = {"mov": "final_vj.mov", "vertical": "final_vertical.mp4"}
# Phone-sized 9:16 (a centre crop of the full height); a 1080p source keeps its full height.
VERTICAL_ASPECT = (9, 16)
VERTICAL_MIN_HEIGHT = 854
THUMBNAIL_MAX_WIDTH = 1280
_IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})
# The default ``assembly.preset = "lean"``: x264's veryfast with its costliest
# tools for this job turned down. Measured on bench/bench_assembly.py (4 min,
# 3840 frames 832x480, 2 cores) against plain veryfast at CRF 20: x264 ~45% fewer
# CPU-seconds (8.8 vs 15.5 s encoding the same frames), PSNR -0.07 dB, file
# ~35% larger. CAVLC instead of CABAC (cost grows with bitrate), diamond
# motion search, subpel refinement 1, no inter sub-partitions, no weighted
# P-prediction (only helps fades). Kept: mbtree + lookahead (a large size win),
# B-frames, deblocking, adaptive quantisation, 8x8 DCT.
LEAN_PRESET = "veryfast"
LEAN_X264_PARAMS = "cabac=0:me=dia:subme=1:partitions=none:weightp=0"


@dataclass(frozen=True)
class AssemblyResult:
    """What ``assemble`` made: the final video, its exports, what it holds and how long it took."""

    final: Path
    exports: dict[str, Path]
    info: MediaInfo
    seconds: float


@dataclass(frozen=True)
class _Output:
    name: str  # final file name
    label: str  # video label in the graph
    args: tuple[str, ...]  # encoder and muxer options
    size: tuple[int, int]
    codec: str


def vertical_size(height: int) -> tuple[int, int]:
    """The 9:16 export's size: phone-sized, or the source height when that is larger."""
    h = max(VERTICAL_MIN_HEIGHT, height) // 2 * 2
    return round(h * VERTICAL_ASPECT[0] / VERTICAL_ASPECT[1] / 2) * 2, h


def filter_graph(
    timeline: Timeline, *, width: int, height: int, audio_input: int, exports: Sequence[str] = ()
) -> str:
    """The ffmpeg filter graph for a timeline; outputs ``[v0]``/``[a0]`` (+ ``[v1]``… per export)."""
    fps = timeline.fps
    lines: list[str] = []
    for i, piece in enumerate(timeline.pieces):
        out, src = piece.output_frames, piece.source_frames
        lines.append(
            f"[{i}:v:0]trim=end_frame={src},"
            f"scale={width}:{height}:force_original_aspect_ratio=increase,"
            f"crop={width}:{height},setsar=1,format=yuv420p,"
            # Frame N shows at N * speed / fps; fps then repeats frames to slow the clip.
            f"setpts=N*{out}/({src}*{fps}*TB),fps={fps},"
            # fps may end a frame short; clone-pad and cut to the exact count.
            f"tpad=stop=-1:stop_mode=clone,trim=end_frame={out}[p{i}]"
        )
    runs = _runs(timeline)
    for r, (first, last) in enumerate(runs):
        labels = "".join(f"[p{i}]" for i in range(first, last + 1))
        chain = [f"concat=n={last - first + 1}:v=1:a=0"] if last > first else []
        before = timeline.transition_after(first - 1) if first else None
        after = timeline.transition_after(last)
        length = sum(p.output_frames for p in timeline.pieces[first : last + 1])
        if before is not None and before.kind == "fade":
            chain.append(f"fade=t=in:start_frame=0:nb_frames={before.after}")
        if after is not None and after.kind == "fade":
            chain.append(f"fade=t=out:start_frame={length - after.before}:nb_frames={after.before}")
        # concat emits microsecond timestamps; xfade wants both sides in 1/fps.
        chain.append(f"settb=1/{fps}")
        lines.append(f"{labels}{','.join(chain)}[r{r}]")
    lines.extend(_join_runs(timeline, runs))
    lines.extend(_branches(width, height, exports))
    duration = f"{timeline.duration:.6f}"
    audio_tail = f"asplit={1 + len(exports)}" + "".join(f"[a{k}]" for k in range(1 + len(exports)))
    lines.append(f"[{audio_input}:a:0]atrim=end={duration},apad=whole_dur={duration},{audio_tail}")
    return ";\n".join(lines) + "\n"


def _runs(timeline: Timeline) -> list[tuple[int, int]]:
    """(first, last) piece index of each stretch of pieces joined by hard cuts."""
    runs, first = [], 0
    for t in timeline.transitions:
        runs.append((first, t.piece))
        first = t.piece + 1
    runs.append((first, len(timeline.pieces) - 1))
    return runs


def _join_runs(timeline: Timeline, runs: list[tuple[int, int]]) -> list[str]:
    fps = timeline.fps
    if len(runs) == 1:
        return ["[r0]null[vjoined]"]
    if all(t.kind == "fade" for t in timeline.transitions):
        labels = "".join(f"[r{r}]" for r in range(len(runs)))
        return [f"{labels}concat=n={len(runs)}:v=1:a=0[vjoined]"]
    lines, have, acc = [], "[r0]", sum(p.output_frames for p in timeline.pieces[: runs[0][1] + 1])
    for r, t in enumerate(timeline.transitions, start=1):
        first, last = runs[r]
        length = sum(p.output_frames for p in timeline.pieces[first : last + 1])
        out = "[vjoined]" if r == len(runs) - 1 else f"[x{r}]"
        # Both sides are frame-exact, so the blend starts d frames before the end so far.
        lines.append(
            f"{have}[r{r}]xfade=transition=fade:duration={t.frames / fps:.6f}"
            f":offset={(acc - t.frames) / fps:.6f}{out}"
        )
        have, acc = out, acc + length - t.frames
    return lines


def _branches(width: int, height: int, exports: Sequence[str]) -> list[str]:
    count = 1 + len(exports)
    if count == 1:
        return ["[vjoined]null[v0]"]
    lines = [f"[vjoined]split={count}" + "".join(f"[s{k}]" for k in range(count)), "[s0]null[v0]"]
    for k, kind in enumerate(exports, start=1):
        if kind == "mov":
            lines.append(f"[s{k}]format=yuvj422p[v{k}]")
        elif kind == "vertical":
            vw, vh = vertical_size(height)
            aw, ah = VERTICAL_ASPECT
            crop = f"crop=trunc(ih*{aw}/{ah}/2)*2:ih,scale={vw}:{vh},setsar=1,format=yuv420p"
            lines.append(f"[s{k}]{crop}[v{k}]")
        else:
            raise ValueError(f"unknown export {kind!r}")
    return lines


def x264_options(preset: str) -> tuple[str, ...]:
    """libx264 options for an ``assembly.preset``: ``lean`` (see ``LEAN_X264_PARAMS``) or x264's own."""
    if preset == "lean":
        return ("-preset", LEAN_PRESET, "-x264-params", LEAN_X264_PARAMS)
    return ("-preset", preset)


def _outputs(
    width: int, height: int, fps: int, cfg: AssemblyConfig, exports: Sequence[str]
) -> list[_Output]:
    x264 = x264_options(cfg.preset)
    h264 = ("-c:v", "libx264", *x264, "-crf", str(cfg.crf), "-pix_fmt", "yuv420p")
    aac = ("-c:a", "aac", "-b:a", cfg.audio_bitrate, "-movflags", "+faststart", "-f", "mp4")
    rate = ("-r", str(fps))
    outputs = [_Output(FINAL_NAME, "[v0]", (*h264, *rate, *aac), (width, height), "h264")]
    for k, kind in enumerate(exports, start=1):
        if kind == "mov":
            # VJ software scrubs MJPEG frame by frame; PCM audio avoids AAC's priming offset.
            args = ("-c:v", "mjpeg", "-q:v", "3", *rate, "-c:a", "pcm_s16le", "-f", "mov")
            outputs.append(_Output(EXPORT_NAMES[kind], f"[v{k}]", args, (width, height), "mjpeg"))
        else:
            outputs.append(
                _Output(
                    EXPORT_NAMES[kind],
                    f"[v{k}]",
                    (*h264, *rate, *aac),
                    vertical_size(height),
                    "h264",
                )
            )
    return outputs


def assemble(
    timeline: Timeline,
    clips: Sequence[Path],
    audio: Path,
    out_dir: Path,
    *,
    width: int,
    height: int,
    cfg: AssemblyConfig,
    ffmpeg: str,
    timeout: float | None = FFMPEG_TIMEOUT_SECONDS,
    progress: Progress | None = None,
) -> AssemblyResult:
    """Encode ``final.mp4`` (and ``cfg.exports``) in ``out_dir`` from one clip per ``timeline.clips``.

    ``progress`` gets the seconds of video encoded so far (ffmpeg's ``out_time``),
    rising to ``timeline.duration`` once the encode has ended.
    """
    started = time.perf_counter()
    if len(clips) != len(timeline.clips):
        raise ValueError(f"{len(clips)} clip files for {len(timeline.clips)} clip requests")
    _check_inputs(timeline, clips, audio)
    exports = list(dict.fromkeys(cfg.exports))
    outputs = _outputs(width, height, timeline.fps, cfg, exports)
    temps = [temp_path_for(out_dir / o.name) for o in outputs]
    script = temp_path_for(out_dir / "final.filtergraph.txt")
    graph = filter_graph(
        timeline, width=width, height=height, audio_input=len(clips), exports=exports
    )
    args: list[str] = []
    for clip in [*clips, audio]:
        args += ["-i", str(clip)]
    args += ["-/filter_complex", str(script)]
    for k, (output, temp) in enumerate(zip(outputs, temps, strict=True)):
        args += ["-map", output.label, "-map", f"[a{k}]", *output.args, str(temp)]
    try:
        script.write_text(graph, encoding="utf-8")
        _run(ffmpeg, args, timeout=timeout, progress=progress)
        if progress is not None:
            progress(timeline.duration)
        infos = [_verify(t, o, timeline) for t, o in zip(temps, outputs, strict=True)]
        for temp in temps:
            _fsync_file(temp)
        finals = [out_dir / o.name for o in outputs]
        for temp, final in zip(temps, finals, strict=True):
            os.replace(temp, final)
        fsync_dir(out_dir)
    except OSError as exc:
        raise _io_error(exc, out_dir) from exc
    finally:
        for path in [script, *temps]:
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
    return AssemblyResult(
        final=finals[0],
        exports={kind: final for kind, final in zip(exports, finals[1:], strict=True)},
        info=infos[0],
        seconds=time.perf_counter() - started,
    )


def _io_error(exc: OSError, folder: Path) -> StageError:
    """Our own writes (graph file, fsync, rename) failing: a full disk is worth a retry."""
    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return TransientError(
            f"the disk is full: the video could not be written to {folder}",
            "Free some disk space on the state root's drive, then run `tandava retry <run>`.",
            cause="DiskFull",
        )
    return PermanentError(f"the video could not be written to {folder}: {exc}", cause="WriteFailed")


def _run(ffmpeg: str, args: list[str], *, timeout: float | None, progress: Progress | None = None) -> None:
    """Run with the graph in a file; ffmpeg < 7 spells that ``-filter_complex_script``."""
    try:
        run_ffmpeg(ffmpeg, args, what="assemble the video", timeout=timeout, progress=progress)
    except PermanentError as exc:
        if "/filter_complex" not in exc.reason or "nrecognized option" not in exc.reason:
            raise
        old = ["-filter_complex_script" if a == "-/filter_complex" else a for a in args]
        run_ffmpeg(ffmpeg, old, what="assemble the video", timeout=timeout, progress=progress)


def _check_inputs(timeline: Timeline, clips: Sequence[Path], audio: Path) -> None:
    """Fail fast, naming the file, before minutes of encoding are spent."""
    if not audio.is_file():
        raise PermanentError(f"the song's audio {audio} is missing", cause="MissingInput")
    for clip_path, request, piece in zip(clips, timeline.clips, timeline.pieces, strict=True):
        what = f"the clip for segment {request.segment} part {request.part} ({clip_path.name})"
        if not clip_path.is_file():
            raise PermanentError(f"{what} is missing", cause="MissingInput")
        try:
            info = probe(clip_path, count_frames=False)
        except PermanentError as exc:
            raise PermanentError(
                f"{what} cannot be used: {exc.reason}",
                "Delete the clip so it is made again, then `tandava retry <run>`.",
                cause="BrokenVideo",
            ) from exc
        if info.frames < piece.source_frames:
            raise PermanentError(
                f"{what} has {info.frames} frames; the timeline needs {piece.source_frames}",
                "Delete the clip so it is made again, then `tandava retry <run>`.",
                cause="BrokenVideo",
            )


def _verify(path: Path, output: _Output, timeline: Timeline) -> MediaInfo:
    info = probe(path)
    frame = 1 / timeline.fps
    problems = []
    if info.frames != timeline.total_frames:
        problems.append(f"{info.frames} video frames instead of {timeline.total_frames}")
    if abs(info.duration - timeline.duration) > frame + 1e-3:
        problems.append(f"lasts {info.duration:.3f} s instead of {timeline.duration:.3f} s")
    if not info.has_audio:
        problems.append("has no audio")
    if (info.width, info.height) != output.size:
        problems.append(
            f"is {info.width}x{info.height} instead of {output.size[0]}x{output.size[1]}"
        )
    if info.video_codec != output.codec:
        problems.append(f"is {info.video_codec} instead of {output.codec}")
    if problems:
        raise PermanentError(
            f"the assembled {output.name} failed its check: {'; '.join(problems)}",
            "This is a bug in assembly; report it with the run folder.",
            cause="AssemblyCheckFailed",
        )
    return info


def _fsync_file(path: Path) -> None:
    with path.open("rb") as fh:
        os.fsync(fh.fileno())


def thumbnail_time(segments: Sequence[Segment]) -> float:
    """The midpoint of the most energetic segment: where a thumbnail shows the video at its peak."""
    best = max(segments, key=lambda s: s.energy)
    return (best.start + best.end) / 2


def write_thumbnail(
    source: Path,
    out: Path,
    *,
    at_seconds: float = 0.0,
    ffmpeg: str,
    max_width: int = THUMBNAIL_MAX_WIDTH,
) -> Path:
    """A JPEG of a video frame at ``at_seconds`` (or of an image), at most ``max_width`` wide."""
    from PIL import Image

    if source.suffix.lower() in _IMAGE_SUFFIXES:
        frame = _open_rgb(source)
        if frame.width > max_width:
            frame = frame.resize((max_width, round(frame.height * max_width / frame.width / 2) * 2))
        with replacing(out) as fh:
            frame.save(fh, format="JPEG", quality=90)
        return out
    info = probe(source, count_frames=False)
    # Seeking past the last frame would encode nothing; keep inside the video.
    at = min(max(0.0, at_seconds), max(0.0, info.duration - 2 / max(info.fps, 1.0)))
    temp = temp_path_for(out)
    try:
        run_ffmpeg(
            ffmpeg,
            ["-ss", f"{at:.3f}", "-i", str(source), "-frames:v", "1",
             "-vf", f"scale='min({max_width},iw)':-2", "-q:v", "2", "-f", "image2", "-update", "1",
             "-c:v", "mjpeg", str(temp)],
            what=f"make a thumbnail of {source.name}",
        )  # fmt: skip
        with Image.open(temp) as img:
            img.verify()
        _fsync_file(temp)
        os.replace(temp, out)
    except OSError as exc:
        raise PermanentError(
            f"no thumbnail could be made from {source.name}: {exc}", cause="BrokenVideo"
        ) from exc
    finally:
        temp.unlink(missing_ok=True)
    fsync_dir(out.parent)
    return out


def contact_label(index: int, start: float, end: float, mood: str) -> str:
    """A contact-sheet label such as ``03 00:10.1–00:15.2 intense``."""

    def clock(t: float) -> str:
        tenths = round(t * 10)
        return f"{tenths // 600:02d}:{tenths % 600 // 10:02d}.{tenths % 10}"

    return f"{index:02d} {clock(start)}–{clock(end)} {mood}"


def write_contact_sheet(
    images: Sequence[tuple[Path, str]], out: Path, *, columns: int = 4, tile_width: int = 320
) -> Path:
    """A PNG grid of images, each with its label underneath."""
    from PIL import Image, ImageDraw, ImageFont

    if not images:
        raise ValueError("a contact sheet needs at least one image")
    font = ImageFont.load_default(size=max(12, tile_width // 20))
    tiles = []
    for path, label in images:
        tile = _open_rgb(path)
        tiles.append(
            (tile.resize((tile_width, max(1, round(tile.height * tile_width / tile.width)))), label)
        )
    pad, text_h = 8, max(12, tile_width // 20) + 8
    tile_h = max(t.height for t, _ in tiles)
    cols = min(columns, len(tiles))
    rows = -(-len(tiles) // cols)
    sheet = Image.new(
        "RGB", (pad + cols * (tile_width + pad), pad + rows * (tile_h + text_h + pad)), (18, 18, 18)
    )
    draw = ImageDraw.Draw(sheet)
    for k, (tile, label) in enumerate(tiles):
        x = pad + (k % cols) * (tile_width + pad)
        y = pad + (k // cols) * (tile_h + text_h + pad)
        sheet.paste(tile, (x, y))
        draw.text((x, y + tile_h + 4), label, fill=(235, 235, 235), font=font)
    with replacing(out) as fh:
        sheet.save(fh, format="PNG")
    return out


def _open_rgb(path: Path) -> Image.Image:
    """An image file as RGB; an unreadable one is a PermanentError naming it."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except OSError as exc:
        raise PermanentError(f"{path.name} is not a readable image: {exc}", cause="BrokenImage") from exc
