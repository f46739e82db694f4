"""``tandava doctor``: checks an installation, one result per check.

Each check returns ok or what is wrong and the fix. Later capabilities
(ComfyUI, Telegram, Gemini, services) add their checks to ``CHECKS``.

The daemon runs the cheap, local ones itself before it starts
(``refuse_to_start``: paths, theme, workflow files): a value that would fail
every song, from the file or the environment, stops the start with the very
line doctor prints, instead of failing runs one by one.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

from daemon.checks import Check
from daemon.config import Settings, comfy_urls, uses_comfy
from daemon.errors import PermanentError, TandavaError
from daemon.runs import fsutil
from daemon.video.media import find_ffmpeg


def check_writable(name: str, folder: Path) -> Check:
    """The folder exists (or can be made) and a file can be written and renamed in it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".tandava-doctor"
        fsutil.atomic_write_text(probe, "ok")
        probe.unlink()
    except OSError as exc:
        return Check(name, False, f"{folder} is not writable ({exc.strerror or exc}); "
                     f"create it or give this user write access")
    return Check(name, True, str(folder))


def check_ffmpeg(settings: Settings) -> Check:
    try:
        exe = find_ffmpeg(settings.assembly.ffmpeg)
    except PermanentError as exc:
        return Check("ffmpeg", False, f"{exc.reason}; {exc.hint}")
    try:
        out = subprocess.run([exe, "-version"], capture_output=True, text=True, encoding="utf-8",
                             errors="replace", timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return Check("ffmpeg", False, f"{exe} does not run ({exc})")
    return Check("ffmpeg", True, out.splitlines()[0] if out else exe)


def check_decoders(_settings: Settings) -> Check:
    try:
        import av
        import soundfile
    except ImportError as exc:
        return Check("audio decoders", False, f"{exc.name} is missing; reinstall Tandava")
    return Check("audio decoders", True,
                 f"libsndfile {soundfile.__libsndfile_version__} (mp3 flac ogg wav), PyAV {av.__version__} (m4a)")


def check_config(settings: Settings) -> Check:
    source = settings.config_file or "defaults (no tandava.toml found)"
    return Check("configuration", True, f"valid ({source})")


def check_paths(settings: Settings) -> Iterator[Check]:
    yield check_writable("inbox", settings.paths.inbox)
    yield check_writable("state root", settings.paths.state_root)
    yield check_writable("logs", settings.paths.logs)


def check_theme(settings: Settings) -> Check:
    from daemon.errors import ConfigError
    from daemon.writers.chain import load_theme

    extra = [settings.paths.themes] if settings.paths.themes else []
    try:
        load_theme(settings.analysis.theme, extra)
    except ConfigError as exc:
        return Check("theme", False, str(exc))
    return Check("theme", True, settings.analysis.theme)


def check_comfy(settings: Settings) -> Iterator[Check]:
    """Each ComfyUI server answers, and each workflow in use fits it (nodes, inputs, models) before any GPU time."""
    from daemon.backends.comfy.client import ComfyClient
    from daemon.backends.comfy.preflight import check_workflow
    from daemon.backends.comfy.supervisor import PortTaken, refuse_foreign_owner
    from daemon.backends.comfy.vram import GB, stats_line
    from daemon.backends.comfy.workflows import find_workflow
    from daemon.errors import StageError

    if not uses_comfy(settings):
        return
    cfg = settings.comfy
    try:
        workflows = [find_workflow(name, cfg.workflows) for name in _workflow_names(settings)]
    except StageError as exc:
        yield Check("workflows", False, f"{exc.reason}; {exc.hint}")
        return
    managed = cfg.managed
    if managed is not None and not (managed.folder / "main.py").is_file():
        yield Check("managed ComfyUI", False, f"{managed.folder} holds no main.py; set [comfy.managed] folder "
                    "to the ComfyUI folder")
    for url in comfy_urls(settings):
        client = ComfyClient(url, client_id="tandava-doctor", timeout=cfg.health_timeout_seconds)
        try:
            stats = client.system_stats()
            info = client.object_info()
        except StageError as exc:
            if managed is not None and url == comfy_urls(settings)[0]:
                # Another program on the port keeps the daemon from launching it: say who, as the daemon would.
                try:
                    refuse_foreign_owner(managed)
                except PortTaken as taken:
                    yield Check(f"ComfyUI {url}", False, f"{taken.reason}; {taken.hint}")
                    continue
                # Not running is expected before the daemon starts: it launches this one.
                yield Check(f"ComfyUI {url}", True, f"not running now; `tandava run` launches it from "
                            f"{managed.folder / 'main.py'} (workflows are checked once it is up)")
                continue
            yield Check(f"ComfyUI {url}", False, f"{exc.reason}; {exc.hint}")
            continue
        finally:
            client.close()
        yield Check(f"ComfyUI {url}", True, stats_line(stats))
        for wf in workflows:
            problems = check_workflow(wf, info)
            if problems:
                more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
                yield Check(f"workflow {wf.name} on {url}", False, "; ".join(map(str, problems[:5])) + more)
                continue
            note = "fits the server"
            if stats.vram_total < wf.vram_gb * GB:
                note += (f", but it needs about {wf.vram_gb:.0f} GB and the server has "
                         f"{stats.vram_total / GB:.0f} GB: ComfyUI will offload and run slowly")
            yield Check(f"workflow {wf.name} on {url}", True, note)


def _workflow_names(settings: Settings) -> list[str]:
    names = [settings.comfy.image_workflow] if settings.images.backend == "comfyui" else []
    return names + ([settings.comfy.video_workflow] if settings.clips.backend == "comfyui" else [])


def check_workflow_files(settings: Settings) -> Iterator[Check]:
    """The ComfyUI workflows in use exist and fit their mappings (no server is asked)."""
    from daemon.backends.comfy.workflows import find_workflow
    from daemon.errors import StageError

    names = _workflow_names(settings)
    try:
        for name in names:
            find_workflow(name, settings.comfy.workflows)
    except StageError as exc:
        yield Check("workflows", False, f"{exc.reason}; {exc.hint}")
        return
    if names:
        yield Check("workflows", True, ", ".join(names))


class StartRefused(TandavaError):
    """A check doctor also runs failed before the daemon started; its lines say what and how to fix it."""


def startup_checks(settings: Settings) -> list[Check]:
    """The checks the daemon runs before it starts: local, quick, and fatal to every song when they fail."""
    return [*check_paths(settings), check_theme(settings), *check_workflow_files(settings)]


def refuse_to_start(settings: Settings) -> None:
    """Raise StartRefused with doctor's own lines when a start-up check fails."""
    failing = [check for check in startup_checks(settings) if not check.ok]
    if failing:
        lines = "\n".join(f"FAIL {check.name}: {check.detail}" for check in failing)
        # Names only, never values: the environment also carries tokens.
        # Settings come from TANDAVA_<SECTION>__<KEY>; other TANDAVA_ variables (tests, tools) are not settings.
        env = sorted(key for key in os.environ if key.startswith("TANDAVA_") and "__" in key)
        where = f"\n(the environment sets {', '.join(env)}; it overrides tandava.toml)" if env else ""
        raise StartRefused(f"not started; fix this first (`tandava doctor` runs every check):\n{lines}{where}")


def check_writers(settings: Settings) -> Iterator[Check]:
    """The remote prompt writers in the chain (``[analysis] writer`` and ``fallback``) can write."""
    from daemon.writers.gemini import doctor_checks as gemini_checks
    from daemon.writers.ollama import doctor_checks as ollama_checks

    yield from gemini_checks(settings)
    yield from ollama_checks(settings)


def check_google(settings: Settings) -> Iterator[Check]:
    """Google's backends (``gemini`` images, ``veo`` clips): credentials, route, models, prices, caps."""
    from daemon.backends.google.doctor import doctor_checks
    from daemon.stages.google import google_route

    yield from doctor_checks(google_route(settings), settings)


def check_service(settings: Settings) -> Check:
    """A service definition written earlier still runs this installation (or none is installed)."""
    from daemon.host.service import definition_problem, installed_definitions

    paths = installed_definitions(settings)
    if not paths:
        return Check("service", True, "not installed as a service (`tandava service install --systemd` "
                     "or `--windows` writes one)")
    problems = [p for p in (definition_problem(path, settings) for path in paths) if p]
    if problems:
        return Check("service", False, "; ".join(problems) + ": run `tandava service install` again "
                     "with this --config")
    return Check("service", True, ", ".join(str(p) for p in paths))


CHECKS: list[Callable[[Settings], Check]] = [check_config, check_ffmpeg, check_decoders, check_theme,
                                             check_service]


def run_checks(settings: Settings) -> Iterator[Check]:
    """Every check, in a stable order."""
    yield from check_paths(settings)
    for check in CHECKS:
        yield check(settings)
    yield from check_comfy(settings)
    yield from check_writers(settings)
    yield from check_google(settings)
    from daemon.channels.web.server import doctor_checks as web_checks

    yield from web_checks(settings)
    from daemon.channels.telegram.bot import doctor_checks as telegram_checks

    yield from telegram_checks(settings)
