"""Benchmark final-video assembly: one ffmpeg pass against the naive two-pass way.

Run: ``python bench/bench_assembly.py [--seconds 240] [--presets lean,veryfast,ultrafast]``

The first preset is the one reported first and judged against the target; the
default is the shipped ``assembly.preset`` ("lean", see ``assembly.LEAN_X264_PARAMS``),
with plain x264 presets after it for comparison.

Makes, in a temporary folder (not timed): a synthetic song, a timeline of
~5 s segments at 16 fps with Wan 2.1's 81-frame cap (some clips trimmed,
some slowed) and crossfades at a few section boundaries, and one 832x480
clip per request from ffmpeg's ``testsrc2`` (moving shapes) with fixed grain
and a per-clip hue, so the encoder has real detail and motion to code (flat
colour would flatter it). The clips come out at ~1.6 MB each, like Wan 2.1's
81-frame 480p clips; temporal grain (``allf=t``) would be ~7x that and make
decoding alone slower than the whole realistic job. Then it times:

a. ``assemble`` (single pass, final.mp4 only) per x264 preset;
b. the same with the MOV and vertical exports from the same pass;
c. where the time goes: decode only, decode + filter graph (``-f null``);
d. the naive way: re-encode every trimmed/slowed clip, then a concat-demuxer
   re-encode with the audio (hard cuts only, so it does less than (a)).

Target from the issue: realtime factor (song seconds / assembly seconds)
>= 20x on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from daemon.config import AssemblyConfig  # noqa: E402
from daemon.music.synth import write_song  # noqa: E402
from daemon.video.assembly import assemble, filter_graph, x264_options  # noqa: E402
from daemon.video.media import find_ffmpeg, probe, run_ffmpeg  # noqa: E402
from daemon.video.timeline import Timeline, build_timeline  # noqa: E402

TARGET = 20.0
FPS, WIDTH, HEIGHT, CAP = 16, 832, 480, 81
BPM = 120.0


def make_timeline(seconds: float) -> Timeline:
    """~5 s segments on the beat (alternating 4.5 and 5.5 s), a section change every 6th cut."""
    beat = 60.0 / BPM
    bounds, t, k = [0.0], 0.0, 0
    while True:
        t += (9 if k % 2 else 11) * beat
        k += 1
        if t > seconds - 3.0:
            break
        bounds.append(t)
    bounds.append(seconds)
    sections = [(i + 1) % 6 == 0 for i in range(len(bounds) - 2)]
    return build_timeline(
        bounds,
        fps=FPS,
        max_frames=CAP,
        section_cuts=sections,
        transition="crossfade",
        transition_frames=8,
    )


def make_clips(tl: Timeline, folder: Path, ffmpeg: str, tune: str | None = "fastdecode") -> list[Path]:
    """One textured, moving clip per request, encoded as Tandava's backends write clips.

    ``tune="fastdecode"`` is how the kenburns backend encodes its intermediates;
    ``None`` is a plain x264 veryfast clip, like a third-party tool's output.
    """
    clips = []
    for i, request in enumerate(tl.clips):
        path = folder / f"clip{i:03d}.mp4"
        source = f"testsrc2=s={WIDTH}x{HEIGHT}:r={FPS}"
        run_ffmpeg(
            ffmpeg,
            ["-f", "lavfi", "-i", source, "-frames:v", str(request.frames),
             "-vf", f"hue=h={i * 37 % 360},noise=alls=12",
             "-c:v", "libx264", "-preset", "veryfast", *(["-tune", tune] if tune else []),
             "-crf", "18", "-pix_fmt", "yuv420p", str(path)],
            what="make a bench clip",
        )  # fmt: skip
        clips.append(path)
    return clips


class Clock:
    """Wall and CPU seconds (this process and its ffmpeg children) of a block."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), _cpu()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, _cpu() - self.cpu


def _cpu() -> float:
    # Children's times are filled in on POSIX; on Windows they read 0.
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def inputs(clips: list[Path], audio: Path) -> list[str]:
    args: list[str] = []
    for path in [*clips, audio]:
        args += ["-i", str(path)]
    return args


def breakdown(
    tl: Timeline, clips: list[Path], audio: Path, work: Path, ffmpeg: str, preset: str
) -> list[tuple[str, Clock]]:
    """Where the time goes: decode only, decode + filter graph, and x264 alone on generated frames."""
    concat = "".join(f"[{i}:v:0]" for i in range(len(clips))) + f"concat=n={len(clips)}:v=1:a=0[v]"
    script = work / "graph.txt"
    script.write_text(
        filter_graph(tl, width=WIDTH, height=HEIGHT, audio_input=len(clips)), encoding="utf-8"
    )
    runs = {
        "decode only (-f null)": [
            *inputs(clips, audio), "-filter_complex", concat, "-map", "[v]", "-f", "null", "-"
        ],
        "decode + filter graph (-f null)": [
            *inputs(clips, audio), "-/filter_complex", str(script),
            "-map", "[v0]", "-map", "[a0]", "-f", "null", "-",
        ],
        f"x264 {preset} alone (lavfi frames, no decode)": [
            "-f", "lavfi", "-i", f"testsrc2=s={WIDTH}x{HEIGHT}:r={FPS},noise=alls=12",
            "-frames:v", str(tl.total_frames), "-c:v", "libx264", *x264_options(preset),
            "-crf", "20", "-pix_fmt", "yuv420p", "-f", "null", "-",
        ],
    }  # fmt: skip
    rows = []
    for what, args in runs.items():
        with Clock() as clock:
            run_ffmpeg(ffmpeg, args, what=what)
        rows.append((what, clock))
    return rows


def naive(
    tl: Timeline, clips: list[Path], audio: Path, work: Path, ffmpeg: str, preset: str
) -> None:
    """Re-encode each piece on its own, then re-encode the concatenation with the audio."""
    listing = []
    for i, (piece, clip) in enumerate(zip(tl.pieces, clips, strict=True)):
        out, src = piece.output_frames - piece.head - piece.tail, piece.source_frames
        part = work / f"naive{i:03d}.mp4"
        chain = (
            f"trim=end_frame={src},setpts=N*{out}/({src}*{FPS}*TB),fps={FPS},"
            f"tpad=stop=-1:stop_mode=clone,trim=end_frame={out}"
        )
        run_ffmpeg(
            ffmpeg,
            ["-i", str(clip), "-vf", chain, "-c:v", "libx264", *x264_options(preset), "-crf", "20",
             "-pix_fmt", "yuv420p", str(part)],
            what="naive piece",
        )  # fmt: skip
        listing.append(f"file '{part.as_posix()}'")
    (work / "list.txt").write_text("\n".join(listing) + "\n", encoding="utf-8")
    run_ffmpeg(
        ffmpeg,
        ["-f", "concat", "-safe", "0", "-i", str(work / "list.txt"), "-i", str(audio),
         "-map", "0:v", "-map", "1:a", "-c:v", "libx264", *x264_options(preset), "-crf", "20",
         "-pix_fmt", "yuv420p", "-r", str(FPS), "-c:a", "aac", "-b:a", "192k", "-t", f"{tl.duration:.6f}",
         str(work / "naive.mp4")],
        what="naive concat",
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=240.0)
    parser.add_argument("--presets", default="lean,veryfast,ultrafast")
    parser.add_argument("--skip-naive", action="store_true")
    opts = parser.parse_args()
    ffmpeg = find_ffmpeg()
    presets = opts.presets.split(",")
    with tempfile.TemporaryDirectory(prefix="tandava-bench-") as tmp:
        work = Path(tmp)
        audio = work / "song.wav"
        write_song(audio, opts.seconds, BPM, section_change_at=opts.seconds / 2)
        tl = make_timeline(opts.seconds)
        started = time.perf_counter()
        clips = make_clips(tl, work, ffmpeg)
        slowed = sum(p.speed > 1 for p in tl.pieces)
        print(
            f"song {opts.seconds:.0f} s, {tl.total_frames} frames at {FPS} fps, {WIDTH}x{HEIGHT}; "
            f"{len(clips)} clips of {CAP} frames ({slowed} slowed), {len(tl.transitions)} crossfades; "
            f"clips made in {time.perf_counter() - started:.1f} s (not timed); {os.cpu_count()} cores; "
            f"ffmpeg {Path(ffmpeg).name}"
        )
        rows: list[tuple[str, Clock]] = []
        for preset in presets:
            out = work / f"out-{preset}"
            out.mkdir()
            cfg = AssemblyConfig(preset=preset)
            with Clock() as clock:
                result = assemble(
                    tl, clips, audio, out, width=WIDTH, height=HEIGHT, cfg=cfg, ffmpeg=ffmpeg
                )
            size = result.final.stat().st_size / 1e6
            rows.append((f"single pass, {preset} ({size:.1f} MB)", clock))
        out = work / "out-exports"
        out.mkdir()
        cfg = AssemblyConfig(preset=presets[0], exports=["mov", "vertical"])
        with Clock() as clock:
            result = assemble(
                tl, clips, audio, out, width=WIDTH, height=HEIGHT, cfg=cfg, ffmpeg=ffmpeg
            )
        assert probe(result.exports["vertical"]).frames == tl.total_frames
        rows.append((f"single pass, {presets[0]} + mov + vertical", clock))
        plain_dir = work / "plain"
        plain_dir.mkdir()
        plain = make_clips(tl, plain_dir, ffmpeg, tune=None)
        out = work / "out-plain"
        out.mkdir()
        with Clock() as clock:
            assemble(tl, plain, audio, out, width=WIDTH, height=HEIGHT,
                     cfg=AssemblyConfig(preset=presets[0]), ffmpeg=ffmpeg)
        rows.append((f"single pass, {presets[0]}, plain x264 clips", clock))
        split = breakdown(tl, clips, audio, work, ffmpeg, presets[0])
        encode = Clock()
        encode.wall = rows[0][1].wall - split[1][1].wall
        encode.cpu = rows[0][1].cpu - split[1][1].cpu
        rows += [*split, (f"-> x264 {presets[0]} share (single pass - decode+filter)", encode)]
        if not opts.skip_naive:
            with Clock() as clock:
                naive(tl, clips, audio, work, ffmpeg, presets[0])
            rows.append((f"naive: per-clip + concat, {presets[0]}", clock))
        print(f"\n{'what':<48} {'wall s':>7} {'cpu s':>7} {'realtime':>9}")
        for what, c in rows:
            print(f"{what:<48} {c.wall:>7.2f} {c.cpu:>7.2f} {opts.seconds / c.wall:>8.1f}x")
        best = opts.seconds / rows[0][1].wall
        verdict = "meets" if best >= TARGET else "misses"
        print(f"\n{presets[0]} single pass {verdict} the {TARGET:.0f}x target ({best:.1f}x)")


if __name__ == "__main__":
    main()
