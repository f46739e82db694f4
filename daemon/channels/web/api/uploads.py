"""``POST /api/v1/runs``: a multipart upload streamed to disk, checked, and handed to the intake.

How this works: ``receive`` feeds the request stream, chunk by chunk, to
python-multipart's push parser. Each part is written straight into a folder
of its own under ``<state root>/.api/uploads/<id>/`` (the song under its
sanitised name, photos as ``photos/001_<name>`` in the order given) while the
song is hashed on the way, so no part is ever whole in memory and a body over
``api.max_upload_mb`` stops with ``TooLarge`` at the first byte past it
(a ``Content-Length`` that says so is refused before any is read). The small
``options`` part is the only one kept in memory, under its own cap.

``register`` then writes ``upload.json`` (the upload is whole) and calls
``Intake.accept`` with the options and photos as extras: the same function a
song dropped into the inbox goes through, which puts them into the run folder
before the run becomes visible. ``recover`` (at start-up) finishes uploads a
restart cut between ``upload.json`` and the intake, and drops the half-sent
ones; so a restart between an upload and its run loses nothing.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import unicodedata
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from daemon.channels.web.bodies import TooLarge, declared_length
from daemon.intake.intake import Intake
from daemon.runs import fsutil
from daemon.runs.store import RunRef, RunStore

UPLOADS_DIR = ".api/uploads"
MARKER = "upload.json"
OPTIONS_MAX_BYTES = 64 * 1024
_NAME_MAX = 120
_RESERVED = re.compile(r'[<>:"/\\|?*]')
_AUDIO_SUFFIXES = {".mp3", ".wav", ".flac", ".ogg", ".oga", ".opus", ".m4a", ".aac", ".aif", ".aiff",
                   ".wma", ".webm", ".mka", ".caf", ".mp4"}


class UploadRefused(Exception):
    """An upload that cannot be taken: ``status``, ``code``, ``message`` and ``hint`` for the client."""

    def __init__(self, status: int, code: str, message: str, hint: str = "") -> None:
        self.status, self.code, self.message, self.hint = status, code, message, hint
        super().__init__(message)


@dataclass
class Upload:
    """What arrived: where it is on disk, the song's hash, and the raw options part."""

    folder: Path
    song: Path | None = None
    sha256: str = ""
    photos: list[Path] = field(default_factory=list)
    options: bytes | None = None


def sanitize_name(raw: str, fallback: str) -> str:
    """A file name safe on any system: no folders, no control characters, no reserved ones."""
    name = unicodedata.normalize("NFC", raw.replace("\\", "/").rsplit("/", 1)[-1])
    name = "".join(ch for ch in name if unicodedata.category(ch) not in ("Cc", "Cf", "Cs"))
    name = _RESERVED.sub("_", name).strip().lstrip(".").strip()
    if len(name) > _NAME_MAX:
        stem, dot, suffix = name.rpartition(".")
        name = (stem[: _NAME_MAX - len(suffix) - 1] + dot + suffix) if dot and len(suffix) < 10 else name[:_NAME_MAX]
    return name or fallback


def sniff_audio(head: bytes) -> str | None:
    """The audio container ``head`` starts like, or None when it is not audio."""
    if head[:3] == b"ID3" or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return "mp3"
    if head[:4] == b"RIFF" and head[8:12] in (b"WAVE", b"RF64"):
        return "wav"
    if head[:4] == b"RF64":
        return "wav"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"OggS":
        return "ogg"
    if head[4:8] == b"ftyp":
        return "m4a"
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return "aiff"
    if head[:4] == b"caff":
        return "caf"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "webm"
    if head[:16] == b"\x30\x26\xb2\x75\x8e\x66\xcf\x11\xa6\xd9\x00\xaa\x00\x62\xce\x6c":
        return "wma"
    return None


def sniff_image(head: bytes) -> str | None:
    """``.png``, ``.jpg`` or ``.webp`` for a photo the folder backend can use, else None."""
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return ".png"
    if head[:3] == b"\xff\xd8\xff":
        return ".jpg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return ".webp"
    return None


def what_it_is(head: bytes) -> str:
    """A few words on what a file that is not audio looks like."""
    if sniff_image(head):
        return "it is an image"
    if not head:
        return "it is empty"
    if head[:5] == b"%PDF-":
        return "it is a PDF document"
    if head[:2] == b"PK":
        return "it is a ZIP archive"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "its first bytes match no audio format"
    return "it is text"


class _Part:
    """One multipart part being received: where its bytes go."""

    def __init__(self) -> None:
        self.headers: dict[str, bytes] = {}
        self.name = ""
        self.filename: str | None = None
        self.sink: IO[bytes] | None = None
        self.path: Path | None = None
        self.memory: bytearray | None = None
        self.head = b""
        self.size = 0


class _Receiver:
    """python-multipart callbacks writing each part to ``folder`` (see the module docstring)."""

    def __init__(self, folder: Path) -> None:
        self.upload = Upload(folder)
        self.part = _Part()
        self.field = b""
        self.value = b""
        self.hasher = hashlib.sha256()
        self.error: UploadRefused | None = None

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self._begin, "on_header_field": self._field, "on_header_value": self._value,
            "on_header_end": self._header_end, "on_headers_finished": self._headers_done,
            "on_part_data": self._data, "on_part_end": self._end,
        }

    def _begin(self) -> None:
        self.part = _Part()

    def _field(self, data: bytes, start: int, end: int) -> None:
        self.field += data[start:end]

    def _value(self, data: bytes, start: int, end: int) -> None:
        self.value += data[start:end]

    def _header_end(self) -> None:
        self.part.headers[self.field.decode("latin-1").lower()] = self.value
        self.field = self.value = b""

    def _headers_done(self) -> None:
        part = self.part
        _, params = parse_options_header(part.headers.get("content-disposition", b""))
        part.name = params.get(b"name", b"").decode("utf-8", "replace")
        raw = params.get(b"filename")
        part.filename = raw.decode("utf-8", "replace") if raw is not None else None
        folder = self.upload.folder
        if part.name == "song":
            if self.upload.song is not None:
                raise UploadRefused(400, "two_songs", "The upload has two song parts.",
                                    "Send one song per request.")
            part.path = folder / "song.part"
        elif part.name == "photos":
            (folder / "photos").mkdir(exist_ok=True)
            part.path = folder / "photos" / f"{len(self.upload.photos) + 1:03d}.part"
        elif part.name == "options":
            part.memory = bytearray()
            return
        else:
            return  # a part we do not know is read and dropped
        part.sink = part.path.open("wb")

    def _data(self, data: bytes, start: int, end: int) -> None:
        part = self.part
        chunk = data[start:end]
        part.size += len(chunk)
        if len(part.head) < 64:
            part.head += chunk[: 64 - len(part.head)]
        if part.sink is not None:
            part.sink.write(chunk)
            if part.name == "song":
                self.hasher.update(chunk)
        elif part.memory is not None:
            if part.size > OPTIONS_MAX_BYTES:
                raise UploadRefused(413, "options_too_large", f"The options part is over {OPTIONS_MAX_BYTES} bytes.",
                                    "Send fewer scenes, or shorter prompts.")
            part.memory += chunk

    def _end(self) -> None:
        part = self.part
        if part.sink is not None:
            part.sink.close()
            part.sink = None
        if part.name == "song" and part.path is not None:
            self._finish_song(part)
        elif part.name == "photos" and part.path is not None:
            self._finish_photo(part)
        elif part.name == "options" and part.memory is not None:
            self.upload.options = bytes(part.memory)

    def _finish_song(self, part: _Part) -> None:
        assert part.path is not None
        kind = sniff_audio(part.head)
        if kind is None:
            raise UploadRefused(415, "not_audio", f"The song is not an audio file: {what_it_is(part.head)}.",
                                "Send an MP3, WAV, FLAC, OGG, M4A or AIFF file as the song part.")
        name = sanitize_name(part.filename or "", f"song.{kind}")
        if Path(name).suffix.lower() not in _AUDIO_SUFFIXES:
            name = f"{name}.{kind}"
        final = self.upload.folder / name
        part.path.replace(final)
        self.upload.song, self.upload.sha256 = final, self.hasher.hexdigest()

    def _finish_photo(self, part: _Part) -> None:
        assert part.path is not None
        suffix = sniff_image(part.head)
        if suffix is None:
            raise UploadRefused(415, "not_an_image",
                                f"Photo {len(self.upload.photos) + 1} ({part.filename or 'no name'}) is not a "
                                f"PNG, JPEG or WebP image: {what_it_is(part.head)}.",
                                "Send photos as PNG, JPEG or WebP files.")
        stem = Path(sanitize_name(part.filename or "", "photo")).stem
        final = part.path.with_name(f"{len(self.upload.photos) + 1:03d}_{stem}{suffix}")
        part.path.replace(final)
        self.upload.photos.append(final)

    def close(self) -> None:
        if self.part.sink is not None:
            self.part.sink.close()


async def receive(request: Request, root: Path, *, limit: int) -> Upload:
    """Stream a multipart request into a new upload folder under ``root`` (see the module docstring).

    Raises ``UploadRefused`` or ``TooLarge``; the folder is removed then.
    """
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise UploadRefused(415, "not_multipart", "Send the upload as multipart/form-data.",
                            "curl -F song=@song.mp3 -F 'options={\"approval\": {\"mode\": \"auto\"}}' …")
    declared_length(request, limit)
    folder = root / UPLOADS_DIR / uuid.uuid4().hex
    folder.mkdir(parents=True)
    receiver = _Receiver(folder)
    parser = MultipartParser(boundary, receiver.callbacks())  # type: ignore[arg-type]
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise TooLarge(limit)
            parser.write(chunk)
        parser.finalize()
    except FormParserError as exc:
        receiver.close()
        shutil.rmtree(folder, ignore_errors=True)
        raise UploadRefused(400, "bad_multipart", f"The multipart body cannot be read: {exc}.",
                            "Send it as a client's multipart/form-data (curl -F song=@song.mp3).") from None
    except BaseException:
        receiver.close()
        shutil.rmtree(folder, ignore_errors=True)
        raise
    receiver.close()
    if receiver.upload.song is None:
        shutil.rmtree(folder, ignore_errors=True)
        raise UploadRefused(400, "no_song", "The upload has no song part.",
                            "Send the audio as a part named song (curl -F song=@song.mp3).")
    return receiver.upload


def register(intake: Intake, store: RunStore, upload: Upload, options: bytes | None) -> tuple[RunRef, bool]:
    """Hand a whole upload to the intake; returns the run and whether it already existed."""
    assert upload.song is not None
    existing = store.find_by_hash(upload.sha256)
    if existing is not None:
        shutil.rmtree(upload.folder, ignore_errors=True)
        return existing, True
    extras: dict[str, Path] = {}
    if options is not None:
        fsutil.atomic_write_bytes(upload.folder / "options.json", options)
        extras["options.json"] = upload.folder / "options.json"
    if upload.photos:
        extras["photos"] = upload.folder / "photos"
    fsutil.atomic_write_json(upload.folder / MARKER, {"song": upload.song.name, "sha256": upload.sha256,
                                                      "extras": sorted(extras)})
    return _take(intake, store, upload.folder, upload.song, upload.sha256, extras)


def _take(intake: Intake, store: RunStore, folder: Path, song: Path, digest: str,
          extras: dict[str, Path]) -> tuple[RunRef, bool]:
    ref = intake.accept(song, extras=extras)
    if ref is None:  # the same song arrived another way a moment ago
        ref = store.find_by_hash(digest)
        if ref is None:
            raise UploadRefused(503, "vanished", "The upload vanished before it became a run.",
                                "Send it again.")
        shutil.rmtree(folder, ignore_errors=True)
        return ref, True
    shutil.rmtree(folder, ignore_errors=True)
    return ref, False


def recover(intake: Intake, store: RunStore) -> list[str]:
    """Finish whole uploads a restart interrupted and drop half-sent ones; returns what it did."""
    done: list[str] = []
    base = store.root / UPLOADS_DIR
    if not base.is_dir():
        return done
    for folder in sorted(p for p in base.iterdir() if p.is_dir()):
        try:
            marker = fsutil.read_json(folder / MARKER)
        except (OSError, ValueError):
            shutil.rmtree(folder, ignore_errors=True)
            done.append(f"dropped the unfinished upload {folder.name}")
            continue
        song = folder / str(marker.get("song", ""))
        if not song.is_file():  # the intake took it before the restart
            shutil.rmtree(folder, ignore_errors=True)
            done.append(f"cleaned up after upload {folder.name}")
            continue
        extras = {name: folder / name for name in marker.get("extras", []) if (folder / name).exists()}
        ref, _ = _take(intake, store, folder, song, str(marker.get("sha256", "")), extras)
        done.append(f"registered upload {folder.name} as {ref.run_id}")
    return done
