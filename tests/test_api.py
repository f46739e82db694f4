"""The HTTP API end to end on real sockets: upload with options, follow SSE to rendered, download, photos."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
import requests
from api_helpers import follow, running_daemon, upload
from PIL import Image

from daemon.config import Settings
from daemon.music.synth import write_song
from daemon.video.media import probe

SCENES = [
    {"start": 3.2, "duration": 4.0, "prompt": "a blue lotus opening", "motion": "slow zoom out, pan right",
     "transition": "fade"},
    {"start": 10.2, "duration": 4.0, "prompt": "fire on the water", "motion": "pan left"},
]
OPTIONS = {"approval": {"mode": "auto"}, "images": {"backend": "storyboard"}, "clips": {"backend": "kenburns"},
           "transition": "fade", "candidates": 1, "fps": 16, "width": 160, "height": 96, "scenes": SCENES,
           "theme": "neutral", "exports": ["vertical"]}


def _luma_at(video: Path, seconds: float) -> float:
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            if frame.time is not None and frame.time >= seconds:
                return float(np.asarray(frame.to_ndarray(format="gray")).mean())
    raise AssertionError(f"no frame at {seconds} s")


@pytest.mark.slow
def test_upload_with_options_follows_sse_to_rendered_and_downloads(settings: Settings, tmp_path: Path) -> None:
    """A song with options (auto, storyboard, kenburns, fade, theme, export, two scenes) is followed by SSE to a video that honours them."""
    song = tmp_path / "lotus.wav"
    write_song(song, 16.0, 120.0, section_change_at=8.0)
    with running_daemon(settings) as base:
        created = upload(base, song, options=OPTIONS)
        assert created.status_code == 201, created.text
        run_id = created.json()["id"]
        assert created.headers["location"] == f"/api/v1/runs/{run_id}"
        events = follow(base, run_id, lambda e: e["type"] == "run.state" and e["data"]["state"] in ("rendered", "failed"))
        assert events[-1]["data"]["state"] == "rendered", events[-1]
        ids = [e["id"] for e in events]
        assert ids == sorted(set(ids))
        assert {"run.created", "run.state", "run.progress", "run.decision"} <= {e["type"] for e in events}
        detail = requests.get(f"{base}/runs/{run_id}", timeout=10).json()
        assert detail["state"] == "rendered" and {"final.mp4", "final_vertical.mp4"} <= set(detail["outputs"])
        assert all(d["channel"] == "auto" for d in detail["decisions"])
        url = base.removesuffix("/api/v1") + detail["outputs"]["final.mp4"]
        video = tmp_path / "final.mp4"
        video.write_bytes(requests.get(url, timeout=30).content)
        part = requests.get(url, headers={"Range": "bytes=0-99"}, timeout=10)
        assert part.status_code == 206 and len(part.content) == 100
    run_dir = settings.paths.state_root / "rendered" / run_id
    plan = json.loads((run_dir / "segments.json").read_text("utf-8"))
    beats = json.loads((run_dir / "analysis.json").read_text("utf-8"))["beats"]
    by_prompt = {s["visual_prompt"].split(",")[0]: s for s in plan["segments"]}
    lotus, fire = by_prompt["a blue lotus opening"], by_prompt["fire on the water"]
    assert lotus["motion_prompt"] == "slow zoom out, pan right" and fire["motion_prompt"] == "pan left"
    for seg, scene in ((lotus, SCENES[0]), (fire, SCENES[1])):
        assert min(abs(seg["start"] - b) for b in beats) < 1e-6  # on a beat
        assert abs(seg["start"] - scene["start"]) <= 0.5
    assert plan["scene_transitions"] == {str(lotus["index"]): "fade"}
    assert plan["theme"] == "neutral" and plan["scenes"] == 2
    info = probe(video)
    assert (info.width, info.height, round(info.fps)) == (160, 96, 16)
    assert abs(info.duration - 16.0) < 0.3
    # A fade passes through black at the cut into the lotus scene.
    assert _luma_at(video, lotus["start"]) < 0.6 * _luma_at(video, lotus["start"] + 1.0)


@pytest.mark.slow
def test_a_song_and_three_photos_make_a_slideshow_of_them(settings: Settings, tmp_path: Path) -> None:
    """A song plus three photos gives a video whose segments show those photos, in the order given."""
    song = tmp_path / "slides.wav"
    write_song(song, 20.0, 120.0, section_change_at=10.0)
    colours = [(220, 30, 30), (30, 200, 40), (40, 60, 230)]
    photos = []
    for i, colour in enumerate(colours):
        photo = tmp_path / f"z{3 - i}.png"  # names sort against the given order: the order given wins
        Image.new("RGB", (320, 200), colour).save(photo)
        photos.append(photo)
    options = {"approval": {"mode": "auto"}, "candidates": 1, "fps": 16, "width": 160, "height": 96,
               "transition": "none"}
    with running_daemon(settings) as base:
        created = upload(base, song, options=options, photos=photos)
        assert created.status_code == 201, created.text
        assert created.json()["photos"] == 3
        run_id = created.json()["id"]
        events = follow(base, run_id, lambda e: e["type"] == "run.state" and e["data"]["state"] in ("rendered", "failed"))
        assert events[-1]["data"]["state"] == "rendered", events[-1]
        detail = requests.get(f"{base}/runs/{run_id}", timeout=10).json()
        shown = []
        for cand in sorted(detail["candidates"], key=lambda c: c["segment"]):
            data = requests.get(base.removesuffix("/api/v1") + cand["url"], timeout=10).content
            image = tmp_path / "cand.png"
            image.write_bytes(data)
            with Image.open(image) as im:
                shown.append(tuple(np.asarray(im.convert("RGB")).reshape(-1, 3).mean(axis=0).round()))
    assert len(shown) >= 3
    for segment, mean in enumerate(shown):
        expected = colours[segment % 3]
        assert max(abs(a - b) for a, b in zip(mean, expected, strict=True)) < 12, (segment, mean)
    run_dir = settings.paths.state_root / "rendered" / run_id
    assert sorted(p.name for p in (run_dir / "photos").iterdir()) == ["001_z3.png", "002_z2.png", "003_z1.png"]
