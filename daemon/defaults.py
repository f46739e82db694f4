"""Named defaults, each with the reason for its value.

Config models read these; nothing else in the package hard-codes a number a
user might want to change.
"""

from __future__ import annotations

# Audio files a person may drop. Matched case-insensitively on the suffix.
AUDIO_SUFFIXES: frozenset[str] = frozenset({".mp3", ".wav", ".flac", ".ogg", ".m4a"})

# Wan 2.1 image-to-video generates 4k+1 frames; 81 is its native clip length.
CLIP_FRAMES = 81
# Wan 2.1's native frame rate: 81 frames at 16 fps is a 5.06 s clip.
CLIP_FPS = 16
# Wan 2.1 I2V 480p model's native landscape size.
VIDEO_WIDTH = 832
VIDEO_HEIGHT = 480

# Refuse songs longer than this without decoding them: a 2-hour DJ mix would
# plan ~1,400 GPU clips, which is never what someone meant to drop.
MAX_SONG_SECONDS = 20 * 60
# Shorter than this there are not enough beats to estimate a tempo.
MIN_SONG_SECONDS = 2.0
# Beat tracking only needs the band below ~5 kHz; 22,050 Hz halves the work
# of a 44.1 kHz file.
ANALYSIS_SAMPLE_RATE = 22050

# A file counts as arrived when size and mtime hold still this long. Two
# seconds covers SMB clients that pause between chunks.
STABLE_SECONDS = 2.0
# Native events get lost (overflow, share reconnects); a rescan finds the rest.
RESCAN_SECONDS = 30.0
# Polling interval on network shares, where inotify sees nothing.
POLL_SECONDS = 1.0
# The shortest re-check of a file: `run --once` looks twice at least this far
# apart before trusting an old mtime, and a file Windows still holds open is
# looked at again after this. (A close-write no longer shortens the stable
# window: chunked copies close after every chunk.)
SETTLE_SECONDS = 0.5
# `tandava run --once` waits up to the stable window plus this for songs still
# arriving: enough for a copy that just finished to prove it, short enough that a
# one-shot run never hangs on a copy that will take minutes (it says so instead).
ONCE_MARGIN_SECONDS = 3.0
# A song that fails to decode while its file changed within this long may still
# be arriving (a copy paused past the stable window, then resumed through the
# same handle): the run waits and looks again instead of failing.
RECENT_CHANGE_SECONDS = 60.0
# How often such a run looks again.
RECENT_CHANGE_RECHECK_SECONDS = 5.0
# How often the inbox watcher checks its observer and folder: a dead observer
# or a share that came back is noticed within a second, for one stat.
WATCH_CHECK_SECONDS = 1.0

# How long the engine sleeps between looks at the state directories when idle.
ENGINE_TICK_SECONDS = 0.5
# Transient errors: attempts per stage before the run fails, and backoff bounds.
STAGE_ATTEMPTS = 5
BACKOFF_INITIAL_SECONDS = 2.0
BACKOFF_MAX_SECONDS = 300.0
# Decoding and analysis are CPU-bound; one per core is the most a 2-core box
# can use without starving the watcher and the GPU feeders.
CPU_WORKERS = 2

# Log rotation: a month of a busy daemon fits in 10 x 10 MB.
LOG_MAX_BYTES = 10 * 1024 * 1024
LOG_BACKUPS = 10

THEME = "shiva"
SEED = 0

# Candidates per segment: two gives a person a choice without doubling GPU time.
CANDIDATES = 2
# Rounds of fresh candidates for a segment whose candidates were all rejected,
# before the run waits for a person to say what they want.
MAX_ROUNDS = 3
# Slowing a clip by more than half again makes motion visibly sluggish; past
# that a segment gets a chain of clips instead.
MAX_SLOWDOWN = 1.5
# A crossfade at section boundaries: long enough to read as a transition,
# short enough (8 frames at 16 fps) not to blur the beat.
TRANSITION_SECONDS = 0.5
# H.264 quality: 20 is visually clean at 832x480 and keeps a 4-minute video
# around 30-60 MB.
CRF = 20
# Shortest piece of a clip on the timeline: below ~half a second a cut reads
# as a glitch.
MIN_PIECE_SECONDS = 0.5

# ComfyUI (issue 4).
QC_ATTEMPTS = 3
COMFY_PORT = 8188
COMFY_START_TIMEOUT_SECONDS = 180.0
IMAGE_WORKFLOW = "flux_t2i"
VIDEO_WORKFLOW = "wan21_i2v"
VRAM_MARGIN_GB = 1.0
COMFY_REQUEST_TIMEOUT_SECONDS = 30.0
COMFY_HEALTH_TIMEOUT_SECONDS = 10.0
# A 14B video model step can take minutes on a small GPU, with no event in between.
COMFY_SILENCE_SECONDS = 900.0
GPU_RUNS = 4
# A stage that has made no progress for this long is reported as stalled (with what it waits for).
STALL_MINUTES = 30.0
# Logs roll weekly as well as by size, so months of them stay findable by date.
LOG_MAX_AGE_DAYS = 7

# Retention (issue 11): what old runs keep. Two weeks is time to notice a video
# needs a redo from its candidates; after that candidates and clips (MBs per
# run, far more at 832x480) go, the video and its decisions stay.
INTERMEDIATES_DAYS = 14.0
# A duplicate is a second copy of a song a run already holds.
DUPLICATES_DAYS = 30.0
# Retention looks at old runs hourly; the state root's size is measured at most this often.
RETENTION_SWEEP_SECONDS = 3600.0
DISK_USAGE_SECONDS = 300.0

# Approval channels (issue 5).
TELEGRAM_BASE_URL = "https://api.telegram.org/bot"
TELEGRAM_REMINDER_HOURS = 12.0
TELEGRAM_MESSAGES_PER_SECOND = 1.0
# Not 8080 or 8188 (ComfyUI): a port a local panel rarely shares.
WEB_PORT = 8420
# HTTP API (issue 14): a song of an hour in WAV is ~600 MB; photos add little.
API_MAX_UPLOAD_MB = 1024.0
# A receiver that is down is asked again soon, then at most every five minutes.
WEBHOOK_BACKOFF_INITIAL_SECONDS = 2.0
WEBHOOK_BACKOFF_MAX_SECONDS = 300.0
# Events reach an SSE client or a webhook within about this long of the change.
API_WATCH_SECONDS = 0.5

# Prompt writers (issue 6).
GEMINI_MODEL = "gemini-2.5-flash"
# The SDK waits forever by default; a planning call with a song's audio takes 10-60 s.
GEMINI_TIMEOUT_SECONDS = 180.0
GEMINI_ATTEMPTS = 3
# Requests up to 20 MB may carry the audio inline; leave room for the rest of the request.
GEMINI_INLINE_MAX_MB = 15.0
OLLAMA_URL = "http://localhost:11434"
OLLAMA_MODEL = "gemma3:12b"
OLLAMA_TIMEOUT_SECONDS = 300.0

# Google: Gemini image candidates and Veo clips (issue 13).
# The generally available Gemini image model with a published price (Gemini 3 Pro Image,
# GA 2026-05-28); gemini-2.5-flash-image is past its announced shutdown (2026-10-02).
GOOGLE_IMAGE_MODEL = "gemini-3-pro-image"
# Veo 3.1 Fast: a third of Standard's price per second, same image-to-video and last-frame support.
GOOGLE_VEO_MODEL = "veo-3.1-fast-generate-001"
# Vertex AI region where Veo 3.1 is served.
GOOGLE_LOCATION = "us-central1"
# Caps in USD: a run of ~40 clips on Veo Fast is ~$30; a day a few runs.
GOOGLE_MAX_USD_PER_RUN = 40.0
GOOGLE_MAX_USD_PER_DAY = 100.0
# Veo's documented limit of concurrent operations per project.
GOOGLE_MAX_OPERATIONS = 10
# Gemini image requests in flight at once: a run's candidates come together, well under per-minute quotas.
GOOGLE_MAX_IMAGE_REQUESTS = 4
# Veo takes from ~11 s to minutes: nothing is ever ready before the first poll,
# then one GET every poll_every_seconds (a 90 s operation costs 1 submit + 8 polls).
GOOGLE_POLL_FIRST_SECONDS = 20.0
GOOGLE_POLL_EVERY_SECONDS = 10.0
# Google keeps generated videos for 2 days; an operation older than this is gone.
GOOGLE_KEEP_HOURS = 48.0
# One request's wait; a submit carrying two images is a few MB.
GOOGLE_TIMEOUT_SECONDS = 120.0
# 429s retried (after RetryInfo's delay) before the run backs off as a whole.
GOOGLE_ATTEMPTS = 5
# Published prices (USD), per image and per second of video, as of PRICES_DATE:
# ai.google.dev/gemini-api/docs/pricing (transcribed 2026-09-20) and the
# 2026-04-07 Veo 3.1 Fast/Lite cut. README ("Google prices") says how to update them.
GOOGLE_PRICES_DATE = "2026-09-20"
GOOGLE_PRICES: dict[str, dict[str, float]] = {
    "gemini-3-pro-image": {"image": 0.134},
    "gemini-3-pro-image-preview": {"image": 0.134},
    "gemini-2.5-flash-image": {"image": 0.039},
    "veo-3.1-generate-001": {"second": 0.40},
    "veo-3.1-generate-preview": {"second": 0.40},
    "veo-3.1-fast-generate-001": {"second": 0.12},
    "veo-3.1-fast-generate-preview": {"second": 0.12},
    "veo-3.1-lite-generate-001": {"second": 0.08},
}
