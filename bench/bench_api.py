"""HTTP API: upload → run registered, listing under 50 concurrent clients, RSS during a big upload.

    python bench/bench_api.py [--runs 500] [--clients 50] [--uploads 20] [--big-mb 200]

The API is served by a separate process (this script with ``--serve``: the
panel and its API over a temp state root, as the daemon serves them, without
the engine, so nothing but the API's own work shows in its memory). Measured
over real loopback sockets:

- upload of a 10 MB WAV (a distinct song each time) with ``http.client``:
  from the moment the last body byte is sent to the 201 (the run is
  registered: streamed to disk, hashed, taken in through the intake), p50 and
  p95 of ``--uploads``; and the whole request;
- ``GET /api/v1/runs`` (a page of 50) with ``--runs`` runs on disk (written
  like bench_web's: 80 % rendered, 10 % waiting, 10 % failed), ``--clients``
  threads with a keep-alive connection each, 20 requests each: p50 and p99;
  target p99 <= 100 ms; and the server's CPU time per request, which a busy
  machine does not inflate;
- the server's RSS while a ``--big-mb`` WAV uploads (sampled every 20 ms):
  growth over its RSS before; target <= 20 MB.
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import psutil
import structlog

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_web import make_runs  # noqa: E402

MB = 1024 * 1024
TARGET_P99_MS = 100.0
TARGET_RSS_MB = 20.0


def serve(root: Path) -> None:
    """The ``--serve`` child: the panel and API on a free port; prints the URL, stops when stdin closes."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    from daemon.channels.web.server import WebPanel
    from daemon.config import load_settings
    from daemon.runs.store import RunStore

    (root / "tandava.toml").write_text("[web]\nport = 0\n[api]\nmax_upload_mb = 4096\n", encoding="utf-8")
    settings = load_settings(root / "tandava.toml")
    store = RunStore(settings.paths.state_root)
    store.ensure_layout()
    with WebPanel(settings, store) as panel:
        print(panel.url, flush=True)
        sys.stdin.read()


def wav_header(data_bytes: int) -> bytes:
    """A 16-bit mono 22050 Hz WAV header for ``data_bytes`` of samples."""
    import struct

    return (b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, 22050,
            44100, 2, 16) + b"data" + struct.pack("<I", data_bytes))


def post_song(url: str, header: bytes, chunks: int, chunk: bytes, tag: bytes) -> tuple[float, float, int]:
    """POST a WAV of ``chunks`` × ``chunk`` bytes (``tag`` makes it unique); (after-body ms, total ms, status)."""
    host, port = url.split("//")[1].rstrip("/").rsplit(":", 1)
    boundary = uuid.uuid4().hex
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"song\"; filename=\"bench.wav\"\r\n"
            "Content-Type: audio/wav\r\n\r\n").encode() + header + tag
    tail = f"\r\n--{boundary}--\r\n".encode()
    length = len(head) + chunks * len(chunk) + len(tail)
    conn = http.client.HTTPConnection(host, int(port), timeout=600)
    try:
        began = time.perf_counter()
        conn.putrequest("POST", "/api/v1/runs")
        conn.putheader("Content-Type", f"multipart/form-data; boundary={boundary}")
        conn.putheader("Content-Length", str(length))
        conn.endheaders()
        conn.send(head)
        for _ in range(chunks):
            conn.send(chunk)
        conn.send(tail)
        sent = time.perf_counter()
        response = conn.getresponse()
        response.read()
        done = time.perf_counter()
        return (done - sent) * 1000, (done - began) * 1000, response.status
    finally:
        conn.close()


def requests_get(url: str) -> None:
    with urllib.request.urlopen(url, timeout=60) as response:
        response.read()


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def bench_uploads(url: str, count: int) -> tuple[list[float], list[float]]:
    chunk = (bytes(range(256)) * 256)[: 64 * 1024]
    chunks = 10 * MB // len(chunk)
    after, total = [], []
    for i in range(count):
        ms_after, ms_total, status = post_song(url, wav_header(chunks * len(chunk) + 8), chunks, chunk,
                                               i.to_bytes(8, "little"))
        assert status == 201, status
        after.append(ms_after)
        total.append(ms_total)
    return after, total


def bench_list(url: str, clients: int, each: int) -> list[float]:
    times: list[float] = []
    lock = threading.Lock()
    start = threading.Barrier(clients)

    host, port = url.split("//")[1].rstrip("/").rsplit(":", 1)

    def client() -> None:
        # http.client with keep-alive: a light client, so the figure is mostly the server's.
        mine = []
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        try:
            start.wait()
            for _ in range(each):
                began = time.perf_counter()
                conn.request("GET", "/api/v1/runs")
                response = conn.getresponse()
                response.read()
                assert response.status == 200, response.status
                mine.append((time.perf_counter() - began) * 1000)
        finally:
            conn.close()
        with lock:
            times.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return times


def bench_rss(url: str, pid: int, big_mb: int) -> tuple[float, float, float]:
    proc = psutil.Process(pid)
    before = proc.memory_info().rss
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            done.wait(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    chunk = bytes(range(256)) * 1024
    chunks = big_mb * MB // len(chunk)
    try:
        _, total, status = post_song(url, wav_header(chunks * len(chunk) + 8), chunks, chunk, b"big-song")
    finally:
        done.set()
        sampler.join()
    assert status == 201, status
    return (peak[0] - before) / MB, before / MB, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--uploads", type=int, default=20)
    parser.add_argument("--big-mb", type=int, default=200)
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    with tempfile.TemporaryDirectory(prefix="tandava-bench-api-") as tmp:
        root = Path(tmp)
        make_runs(root / "state", args.runs, 20)
        child = subprocess.Popen([sys.executable, __file__, "--serve", str(root)], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout is not None
            url = child.stdout.readline().strip()
            requests_get(url + "api/v1/runs")  # steady state: the daemon has served a page before
            server = psutil.Process(child.pid)
            cpu_before = sum(server.cpu_times()[:2])
            listing = bench_list(url, args.clients, 20)
            cpu_per_get = (sum(server.cpu_times()[:2]) - cpu_before) * 1000 / len(listing)
            after, total = bench_uploads(url, args.uploads)
            growth, base, big_ms = bench_rss(url, child.pid, args.big_mb)
        finally:
            assert child.stdin is not None
            child.stdin.close()
            child.wait(30)
    load = ", ".join(f"{x:.1f}" for x in psutil.getloadavg())
    print(f"machine: {psutil.cpu_count()} CPUs, load average {load} (other work shares them)")
    print(f"{'measurement':58} {'value':>10} {'target':>8}")
    rows = [
        (f"upload 10 MB, body sent -> run registered, p50 (n={len(after)})", statistics.median(after), "ms", ""),
        ("upload 10 MB, body sent -> run registered, p95", pct(after, 95), "ms", ""),
        ("upload 10 MB, whole request, p95", pct(total, 95), "ms", ""),
        (f"GET /runs ({args.runs} runs, {args.clients} clients) p50", statistics.median(listing), "ms", ""),
        (f"GET /runs ({args.runs} runs, {args.clients} clients) p99", pct(listing, 99), "ms",
         f"{TARGET_P99_MS:.0f}"),
        ("GET /runs: server CPU per request (load-independent)", cpu_per_get, "ms", ""),
        (f"server RSS growth during a {args.big_mb} MB upload (from {base:.0f} MB)", growth, "MB",
         f"{TARGET_RSS_MB:.0f}"),
        (f"{args.big_mb} MB upload, whole request", big_ms, "ms", ""),
    ]
    for what, value, unit, target in rows:
        print(f"{what:58} {value:8.1f}{unit:>2} {target:>8}")


if __name__ == "__main__":
    main()
