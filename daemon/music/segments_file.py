"""``segments.json``: the segment plan a run carries from analysis to assembly.

Beside the segments it records who wrote them: ``writer`` (theme, gemini,
ollama) and ``fell_through``, one ``{"writer", "reason", "hint"?}`` per writer
of the chain that was tried first and gave no plan.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from daemon.music.plan import Segment
from daemon.runs import fsutil

SEGMENTS_FILE = "segments.json"
_SEGMENTS = TypeAdapter(list[Segment])


def write_segments(run_dir: Path, segments: list[Segment], **meta: Any) -> None:
    """Write the plan atomically, with who wrote it (writer, fell_through, theme, seed…)."""
    doc = {**meta, "segments": [s.model_dump(mode="json") for s in segments]}
    fsutil.atomic_write_text(run_dir / SEGMENTS_FILE, json.dumps(doc, ensure_ascii=False, indent=2) + "\n")


def read_segments(run_dir: Path) -> list[Segment]:
    """The run's segments, validated."""
    doc = json.loads((run_dir / SEGMENTS_FILE).read_text(encoding="utf-8"))
    return _SEGMENTS.validate_python(doc["segments"])


def read_writing(run_dir: Path) -> tuple[str, list[dict[str, str]]]:
    """Who wrote the run's plan and why the writers before it fell through."""
    doc = json.loads((run_dir / SEGMENTS_FILE).read_text(encoding="utf-8"))
    fell = doc.get("fell_through") or []
    return str(doc.get("writer", "")), [{str(k): str(v) for k, v in f.items()} for f in fell if isinstance(f, dict)]
