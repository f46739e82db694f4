"""Settings for a daemon whose images come from Gemini and clips from Veo, both on a fake Google."""

from __future__ import annotations

from pathlib import Path

from fakegoogle import API_KEY, FakeGoogle

from daemon.config import Settings, load_settings


def google_settings(tmp_path: Path, fake: FakeGoogle, *, extra: str = "", route: str = "vertex",
                    mode: str = "interpolate", reference: bool = True) -> Settings:
    """A tandava.toml for gemini images and veo clips on ``fake``, small and fast."""
    from PIL import Image

    refs = ""
    if reference:
        Image.new("RGB", (64, 64), (200, 120, 40)).save(tmp_path / "shiva.png")
        refs = 'references = ["shiva.png"]\n'
    creds = f'credentials_file = "{fake.authorized_user_file(tmp_path).as_posix()}"\nproject = "tandava-test"\n' \
        if route == "vertex" else ""
    (tmp_path / ".env").write_text(f"GOOGLE_API_KEY={API_KEY}\n", encoding="utf-8")
    (tmp_path / "tandava.toml").write_text(
        "[watch]\nstable_seconds = 0.3\nrescan_seconds = 1.0\npoll_seconds = 0.2\n"
        "[engine]\ntick_seconds = 0.05\nbackoff_initial_seconds = 0.01\nbackoff_max_seconds = 0.05\n"
        "[web]\nenabled = false\n"
        "[approval]\nmode = \"auto\"\n"
        "[video]\nwidth = 320\nheight = 180\nfps = 12\n"
        "[images]\nbackend = \"gemini\"\ncandidates = 1\n"
        f"[clips]\nbackend = \"veo\"\nveo_mode = \"{mode}\"\n"
        "[assembly]\ntransition = \"none\"\npreset = \"ultrafast\"\n"
        f"[google]\nroute = \"{route}\"\nbase_url = \"{fake.url}\"\n{creds}{refs}"
        "poll_first_seconds = 0.1\npoll_every_seconds = 0.1\ntimeout_seconds = 20\n" + extra,
        encoding="utf-8")
    return load_settings(tmp_path / "tandava.toml")
