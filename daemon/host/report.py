"""What the CLI shows a person: run status, one run in full, and the sample config.

Pure formatting over the store: it reads manifests and returns lines, so the
CLI prints them and tests compare them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from daemon import defaults
from daemon.errors import StoreError
from daemon.runs.manifest import Manifest
from daemon.runs.states import State
from daemon.runs.store import RunRef, RunStore


def status_lines(root: Path, *, verbose: bool = False) -> Iterator[str]:
    """Runs per state; with ``verbose`` (or when few), one line per run with its progress."""
    store = RunStore(root)
    refs = list(store.iter_runs())
    counts = {state: 0 for state in State}
    for ref in refs:
        counts[ref.state] += 1
    yield f"state root: {root}"
    from daemon.runs.health import health_lines

    yield from health_lines(root)
    yield "  ".join(f"{state.value}: {counts[state]}" for state in State)
    if not refs:
        yield "no runs yet: drop a song into the inbox."
        return
    if not verbose and len(refs) > 50:
        yield f"({len(refs)} runs; `tandava status -v` lists them all)"
        refs = [ref for ref in refs if ref.state is not State.RENDERED][:50]
    for state in State:
        chosen = [ref for ref in refs if ref.state is state]
        if not chosen:
            continue
        yield ""
        yield f"{state.value}/"
        for ref in chosen:
            yield f"  {ref.run_id}  {_progress(store, ref)}"
            if state in (State.ANALYZED, State.IMAGED, State.PENDING_APPROVAL):
                yield from _doubt_lines(ref, indent="      ")
            if state in (State.ANALYZED, State.PENDING_APPROVAL, State.APPROVED):
                yield from _live_jobs(store, ref)


def _live_jobs(store: RunStore, ref: RunRef) -> Iterator[str]:
    """One line per backend job in flight: where it is (queued, running on which server) and how far."""
    try:
        jobs = [j for j in store.load(ref).jobs.values() if j.status == "submitted"]
    except StoreError:
        return
    for job in sorted(jobs, key=lambda j: (j.kind, j.segment, j.index)):
        where = str(job.detail.get("where", "waiting to start"))
        done = float(job.detail.get("progress", 0.0))
        yield f"      {job.kind} s{job.segment:03d}#{job.index}  {done:4.0%}  {where}  [{job.backend}]"


def _progress(store: RunStore, ref: RunRef) -> str:
    try:
        manifest = store.load(ref)
    except StoreError as exc:
        return f"(manifest unreadable: {exc})"
    if ref.state is State.FAILED and manifest.last_error is not None:
        err = manifest.last_error
        return f"failed in {err.stage}: {err.reason}"
    parts = [
        f"{stage}: " + (
            str(progress.detail["waiting"]) if "waiting" in progress.detail
            else f"{', '.join(progress.steps_done) or 'starting'} (attempt {progress.attempts})"
        )
        for stage, progress in manifest.stages.items()
        if progress.finished_at is None
    ]
    analyze = manifest.stages.get("analyze")
    if analyze is not None and analyze.finished_at is not None:
        info = analyze.detail
        if "tempo" in info:
            parts.append(f"{info.get('duration', 0):.0f}s at {info['tempo']:.0f} BPM")
        if "segments" in info:
            parts.append(f"{info['segments']} segments")
    return "; ".join(parts) or manifest.song.original_name


def show_lines(store: RunStore, run_id: str) -> Iterator[str]:
    """Everything about one run a person might ask."""
    ref = store.find(run_id)
    manifest: Manifest = store.load(ref)
    song = manifest.song
    yield f"run      {ref.run_id}"
    yield f"state    {ref.state.value}   ({ref.path})"
    yield f"song     {song.original_name}  ({song.size:,} bytes, sha256 {song.sha256[:16] or 'unknown'})"
    yield f"arrived  {manifest.created_at:%Y-%m-%d %H:%M:%S} UTC"
    yield "history"
    for change in manifest.history:
        yield f"  {change.at:%Y-%m-%d %H:%M:%S}  {change.state.value:<17} {change.note}"
    if manifest.stages:
        yield "stages"
        for name, progress in manifest.stages.items():
            done = "finished" if progress.finished_at else "in progress"
            steps = ", ".join(progress.steps_done) or "-"
            extra = " ".join(f"{k}={v}" for k, v in progress.detail.items())
            yield f"  {name}: {done}; steps: {steps}; attempts: {progress.attempts}  {extra}".rstrip()
    yield from _music_lines(ref)
    yield from _writing_lines(ref.path)
    if manifest.errors:
        yield "errors"
        for err in manifest.errors:
            yield f"  {err.at:%Y-%m-%d %H:%M:%S}  {err.stage}: {err.reason}"
            if err.hint:
                yield f"      fix: {err.hint}"
    if ref.state is State.FAILED:
        yield f"retry with: tandava retry {ref.run_id}"


def _analysis_facts(run_dir: Path) -> dict[str, Any] | None:
    """The few facts of ``analysis.json`` a report shows (None before analysis)."""
    try:
        doc = json.loads((run_dir / "analysis.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _music_lines(ref: RunRef) -> Iterator[str]:
    """Tempo, meter and how sure the analysis was."""
    facts = _analysis_facts(ref.path)
    if facts is None:
        return
    given = " (given by a person)" if facts.get("tempo_given") else ""
    yield (f"music    {facts.get('tempo', 0):.1f} BPM{given}, {facts.get('beats_per_bar', 4)}/4, "
           f"confidence {facts.get('confidence', 1.0):.2f}")
    yield from _doubt_lines(ref, indent="  ", facts=facts)


def _doubt_lines(ref: RunRef, *, indent: str, facts: dict[str, Any] | None = None) -> Iterator[str]:
    """A low-confidence analysis, flagged with how to correct it before GPU time is spent."""
    facts = facts if facts is not None else _analysis_facts(ref.path)
    if not facts or not facts.get("low_confidence") or facts.get("tempo_given"):
        return
    yield f"{indent}! tempo unsure: {facts['low_confidence']}"
    yield f"{indent}  if the beat is wrong: tandava retry {ref.run_id} --tempo BPM"


def _writing_lines(run_dir: Path) -> Iterator[str]:
    """Who wrote the plan, and why each writer tried before it fell through."""
    from daemon.music.segments_file import SEGMENTS_FILE, read_writing

    if not (run_dir / SEGMENTS_FILE).is_file():
        return
    try:
        writer, fell = read_writing(run_dir)
    except (OSError, ValueError):
        return
    yield f"writer   {writer or 'unknown'}"
    for entry in fell:
        yield f"  {entry.get('writer', '?')} fell through: {entry.get('reason', '')}"
        if entry.get("hint"):
            yield f"      fix: {entry['hint']}"


def sample_config() -> str:
    """A commented ``tandava.toml`` with every key at its default."""
    return f"""\
# Tandava configuration. Every key is optional; the values shown are the defaults.
# Precedence (highest first): TANDAVA_* environment variables, .env beside this
# file (for secrets), this file, built-in defaults. Nested keys in the
# environment use "__", e.g. TANDAVA_WATCH__POLLING=always.
# Relative paths resolve against this file's folder.

[paths]
inbox = "inbox"            # drop songs here (.mp3 .wav .flac .ogg .m4a); may be an SMB/NFS share
state_root = "state"       # run folders live here, one directory per state
logs = "logs"              # JSON-lines log files, rotated
# themes = "themes"        # extra prompt themes (*.toml) beside the built-in shiva and neutral

[watch]
stable_seconds = {defaults.STABLE_SECONDS}     # a file is complete when size and mtime hold this long
rescan_seconds = {defaults.RESCAN_SECONDS}    # full rescan of the inbox, because events get lost
poll_seconds = {defaults.POLL_SECONDS}       # polling interval on network shares
polling = "auto"           # auto (poll on SMB/CIFS/NFS), always, never

[analysis]
max_song_seconds = {defaults.MAX_SONG_SECONDS}   # longer songs are refused before decoding
min_song_seconds = {defaults.MIN_SONG_SECONDS}
sample_rate = {defaults.ANALYSIS_SAMPLE_RATE}
writer = "theme"           # who writes the prompts: theme (offline), gemini (listens to the song) or ollama
fallback = ["theme"]       # tried in order when the writer fails (network, quota, invalid output)
theme = "{defaults.THEME}"            # shiva or neutral, or a theme file of your own
seed = {defaults.SEED}                 # same seed, same prompts
segments = "dynamic"       # "dynamic" (from length and sections) or a fixed number

[gemini]                   # the key: GOOGLE_API_KEY in .env beside this file, or in the environment
model = "{defaults.GEMINI_MODEL}"
timeout_seconds = {defaults.GEMINI_TIMEOUT_SECONDS}
attempts = {defaults.GEMINI_ATTEMPTS}
inline_max_mb = {defaults.GEMINI_INLINE_MAX_MB}      # larger songs go through the Files API
# base_url = ""            # another endpoint (a proxy)

[ollama]
url = "{defaults.OLLAMA_URL}"
model = "{defaults.OLLAMA_MODEL}"
timeout_seconds = {defaults.OLLAMA_TIMEOUT_SECONDS}

[video]
width = {defaults.VIDEO_WIDTH}
height = {defaults.VIDEO_HEIGHT}
fps = {defaults.CLIP_FPS}                  # Wan 2.1's native rate
clip_frames = {defaults.CLIP_FRAMES}          # Wan 2.1 makes 4k+1 frames; 81 at 16 fps is 5.06 s

[images]
backend = "storyboard"     # storyboard (labelled preview frames), folder (your photos) or comfyui (Flux)
candidates = {defaults.CANDIDATES}             # candidate images per segment
# folder = "photos"        # photos for the folder backend; default: a folder named like the song in the inbox
max_rounds = {defaults.MAX_ROUNDS}             # rounds of new candidates when every candidate of a segment is rejected
qc_attempts = {defaults.QC_ATTEMPTS}            # new seeds for a black, flat or duplicate ComfyUI image before the run fails

[approval]
mode = "manual"            # manual (tandava approve …) or auto (the first candidate nobody rejected)

[clips]
backend = "kenburns"       # kenburns (a slow camera move over each image) or comfyui (Wan 2.1 image-to-video)
qc_attempts = {defaults.QC_ATTEMPTS}            # new seeds for a black, frozen or flashing ComfyUI clip before the run fails
max_slowdown = {defaults.MAX_SLOWDOWN}         # how far a clip may be slowed to fill its segment before a chain is used

[comfy]
servers = []               # ComfyUI URLs, one per GPU or machine, e.g. ["http://127.0.0.1:8188"]
# workflows = "workflows"  # your own API-format workflows + mappings; default: the shipped ones
image_workflow = "{defaults.IMAGE_WORKFLOW}"
video_workflow = "{defaults.VIDEO_WORKFLOW}"  # or wan21_i2v_kijai (ComfyUI-WanVideoWrapper)
vram_margin_gb = {defaults.VRAM_MARGIN_GB}       # free VRAM kept above a workflow's need before a job is sent
request_timeout_seconds = {defaults.COMFY_REQUEST_TIMEOUT_SECONDS}
health_timeout_seconds = {defaults.COMFY_HEALTH_TIMEOUT_SECONDS}  # /system_stats slower than this: the server is hung
silence_seconds = {defaults.COMFY_SILENCE_SECONDS}       # no event this long while our job runs: hung
# ollama_url = "http://127.0.0.1:11434"  # unload this Ollama's models when VRAM is short

# A ComfyUI that Tandava launches, watches and restarts (optional):
# [comfy.managed]
# folder = "C:/ComfyUI"    # holds main.py
# python = "C:/ComfyUI/venv/Scripts/python.exe"  # default: the Python running Tandava
# args = ["--disable-api-nodes"]
# port = {defaults.COMFY_PORT}
# log_file = "logs/comfyui.log"

[assembly]
transition = "crossfade"   # none, fade or crossfade, at section changes
transition_seconds = {defaults.TRANSITION_SECONDS}
crf = {defaults.CRF}                   # H.264 quality (lower is better and bigger)
preset = "lean"            # lean (fast, tuned veryfast), or an x264 preset: ultrafast … slow
audio_bitrate = "192k"
exports = []               # add "mov" (MJPEG for VJ tools) and/or "vertical" (9:16)
# ffmpeg = "/usr/bin/ffmpeg"  # a system ffmpeg instead of the bundled one

[engine]
cpu_workers = {defaults.CPU_WORKERS}            # analyses at once
gpu_runs = {defaults.GPU_RUNS}               # runs with jobs in the ComfyUI queue at once
stall_minutes = {defaults.STALL_MINUTES}        # a stage without progress this long is reported as stalled
attempts = {defaults.STAGE_ATTEMPTS}               # tries of a stage on transient errors before failing
backoff_initial_seconds = {defaults.BACKOFF_INITIAL_SECONDS}
backoff_max_seconds = {defaults.BACKOFF_MAX_SECONDS}
tick_seconds = {defaults.ENGINE_TICK_SECONDS}

[log]
level = "INFO"
console = "auto"           # auto (pretty on a terminal, JSON otherwise/journald), json, pretty
max_bytes = {defaults.LOG_MAX_BYTES}
backups = {defaults.LOG_BACKUPS}
max_age_days = {defaults.LOG_MAX_AGE_DAYS}           # also roll a log this old (0: by size only)
"""


def pending_lines(root: Path) -> Iterator[str]:
    """Runs waiting for approval, per segment: status and candidate images."""
    from daemon.approval.store import ApprovalStore, candidates_of, statuses
    from daemon.music.segments_file import read_segments

    store = RunStore(root)
    approvals = ApprovalStore(store)
    refs = list(store.iter_runs([State.PENDING_APPROVAL]))
    if not refs:
        yield "nothing waits for approval."
        return
    for ref in refs:
        try:
            manifest = store.load(ref)
            segments = read_segments(ref.path)
            current = statuses(manifest, approvals.load(ref), len(segments))
        except (StoreError, OSError, ValueError) as exc:
            yield f"{ref.run_id}: cannot read ({exc})"
            continue
        jobs = candidates_of(manifest)
        open_count = sum(1 for s in current if s.approved is None)
        yield f"{ref.run_id}  ({manifest.song.original_name}): {open_count} of {len(current)} segment(s) open"
        for status, segment in zip(current, segments, strict=True):
            state = f"approved {status.approved}" if status.approved is not None else (
                "all rejected" if status.all_rejected else "open")
            yield f"  segment {segment.index}  {_clock(segment.start)}-{_clock(segment.end)}  {segment.mood}  [{state}]"
            for job in jobs.get(segment.index, []):
                mark = "approved" if job.index == status.approved else (
                    "rejected" if job.index in status.rejected else "")
                yield f"    {segment.index}:{job.index}  {ref.path / job.output}  {mark}".rstrip()
        yield f"  approve with: tandava approve {ref.run_id} --all   (or SEGMENT:CANDIDATE …)"


def _clock(seconds: float) -> str:
    return f"{int(seconds // 60):02d}:{seconds % 60:05.2f}"
