"""A stand-in for ComfyUI's main.py, stdlib only, for the supervisor tests.

Tests copy this file into a fake ComfyUI folder as ``main.py`` so the
supervisor launches, adopts and kills it exactly as it would the real one.

Modes (``--stub-mode`` or ``$STUB_MODE``):
- ok:    after ``--stub-startup-seconds``, serve GET /system_stats like ComfyUI;
- hang:  bind and listen, accept connections and never answer (a hung server);
- crash: print an error and a traceback line to stderr, exit with code 1.
``--stub-child`` also starts a sleeping child process, so a process tree can be killed.
Unknown arguments are ignored, as the supervisor passes ComfyUI's own.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SYSTEM_STATS = {
    "system": {
        "os": sys.platform,
        "comfyui_version": "0.0.0-stub",
        "python_version": sys.version,
        "embedded_python": False,
        "argv": sys.argv,
    },
    "devices": [{"name": "cpu", "type": "cpu", "index": None, "vram_total": 0, "vram_free": 0}],
}


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path.split("?")[0] != "/system_stats":
            self.send_error(404)
            return
        body = json.dumps(SYSTEM_STATS).encode("utf-8")
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    # SO_REUSEADDR on Windows would let two servers share a port; ComfyUI (aiohttp) does the same.
    allow_reuse_address = sys.platform != "win32"
    daemon_threads = True


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8188)
    parser.add_argument("--stub-mode", default=os.environ.get("STUB_MODE", "ok"), choices=["ok", "hang", "crash"])
    parser.add_argument("--stub-startup-seconds", type=float, default=0.0)
    parser.add_argument("--stub-child", action="store_true")
    args, _comfy_args = parser.parse_known_args()
    print(f"comfystub starting: mode={args.stub_mode} pid={os.getpid()}", flush=True)

    if args.stub_mode == "crash":
        print("Traceback (most recent call last):", file=sys.stderr)
        print("RuntimeError: comfystub crashed on purpose", file=sys.stderr, flush=True)
        return 1
    if args.stub_child:
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    time.sleep(args.stub_startup_seconds)

    if args.stub_mode == "hang":
        listener = socket.create_server((args.listen, args.port))
        held = []  # accepted and never answered, as a hung server does
        while True:
            conn, _ = listener.accept()
            held.append(conn)

    with _Server((args.listen, args.port), _Handler) as server:
        print(f"To see the GUI go to: http://{args.listen}:{args.port}", flush=True)
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
