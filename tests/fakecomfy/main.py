"""Run FakeComfy in the foreground with ComfyUI's main.py command line.

A supervisor test can copy or symlink this file into a folder as ``main.py`` and
start it as it would start ComfyUI: the folder is the root (input/, output/,
temp/). The repo root comes from ``TANDAVA_REPO``, else from this file's real
path (a symlink leads back into the repo), else from the installed ``daemon``
package. It runs until SIGINT/Ctrl+C; SIGTERM kills it like it kills ComfyUI.

    python tests/fakecomfy/main.py --listen 127.0.0.1 --port 8188 [--cpu]
        [--fake-hang] [--fake-startup-seconds 0.5] [--fake-job-seconds 0.05]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import sys
import time
from pathlib import Path


def _repo_root() -> Path:
    if os.environ.get("TANDAVA_REPO"):
        return Path(os.environ["TANDAVA_REPO"])
    real = Path(__file__).resolve().parents[2]
    if (real / "tests" / "fakecomfy" / "server.py").is_file():
        return real
    spec = importlib.util.find_spec("daemon")  # a copy outside the repo: ask the installed package
    if spec is not None and spec.origin is not None:
        return Path(spec.origin).resolve().parents[1]
    raise SystemExit("fake ComfyUI: set TANDAVA_REPO to the Tandava checkout")


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", nargs="?", const="0.0.0.0", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8188)
    parser.add_argument("--cpu", action="store_true")
    parser.add_argument("--base-directory", type=Path)
    parser.add_argument("--input-directory", type=Path)
    parser.add_argument("--output-directory", type=Path)
    parser.add_argument("--temp-directory", type=Path)
    parser.add_argument("--fake-hang", action="store_true", help="listen but never answer")
    parser.add_argument("--fake-startup-seconds", type=float, default=0.0,
                        help="wait this long before listening, as ComfyUI loads its nodes")
    parser.add_argument("--fake-job-seconds", type=float, default=0.05)
    parser.add_argument("--fake-models-json", type=Path,
                        help="a JSON file {folder: [model file names]} the server pretends to have")
    # ComfyUI flags the fake has no use for (--disable-api-nodes, --preview-method ...).
    args, _ignored = parser.parse_known_args(argv)
    return args


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    sys.path.insert(0, str(_repo_root()))
    from tests.fakecomfy.server import FakeComfy

    root = args.base_directory or Path(__file__).absolute().parent  # the "ComfyUI folder"
    host = args.listen.split(",")[0]
    time.sleep(args.fake_startup_seconds)
    models = json.loads(args.fake_models_json.read_text(encoding="utf-8")) if args.fake_models_json else None
    fake = FakeComfy(root, host=host, port=args.port, cpu=args.cpu, models=models,
                     job_seconds=args.fake_job_seconds, argv=["main.py", *sys.argv[1:]],
                     input_dir=args.input_directory, output_dir=args.output_directory,
                     temp_dir=args.temp_directory)
    if args.fake_hang:
        fake.hang()
    fake.start()
    # A shell's background job starts with SIGINT ignored; a supervisor's Ctrl+C must still work.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    print(f"Starting server\n\nTo see the GUI go to: http://{host}:{fake.port}", flush=True)
    try:
        while True:  # a sleep loop, not Event.wait(): Ctrl+C must get through on Windows
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
