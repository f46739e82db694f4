"""Money before it is spent: prices, estimates, the caps and the spend ledger.

How this works: ``[google.prices]`` gives each model a price per image or per
second of video. ``estimate_images``/``estimate_clips`` turn a run's plan into
``Line``s ("clips: 41 × 6 s on veo-3.1-fast-generate-001 ≈ $4.92"), kept in the
run's ``cost.json`` under ``estimate`` before its first paid job.

The ledger has two files: the run's ``cost.json`` (its estimate, a spend the
person approved once, and one entry per paid job) and one file per UTC day
under ``<state root>/spend/``. ``reserve`` is called before a job is sent: it
checks both caps counting every entry not known to be free (billed, and
*pending*: in flight, or a submit whose answer was lost and may be billed),
then writes the job as pending in both files. ``settle`` records what the job
cost once it is known (Google charges nothing for blocked or filtered output).
Entries are keyed by job id, so a re-attached job is never counted twice.

A job over a cap raises ``Unavailable``: the run waits (no attempt used) with
a reason naming the figures and the two ways on: a higher cap in
``tandava.toml``, or ``tandava spend <run> --approve`` for this run once.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from daemon.config import GoogleConfig
from daemon.errors import PermanentError, Unavailable
from daemon.runs import fsutil

COST_FILE = "cost.json"
SPEND_DIR = "spend"
# Veo 3.x makes clips of these lengths only.
VEO_SECONDS = (4, 6, 8)
EntryStatus = Literal["pending", "billed", "free"]
# A run over its cap is looked at again this often (a person may have approved it).
CAP_RECHECK_SECONDS = 10.0


def veo_seconds(frames: int, fps: int) -> int:
    """The shortest Veo duration that covers ``frames`` at ``fps`` (8 s when none does)."""
    needed = frames / max(1, fps)
    return next((s for s in VEO_SECONDS if s + 1e-9 >= needed), VEO_SECONDS[-1])


def price_of(cfg: GoogleConfig, model: str, unit: Literal["image", "second"]) -> float:
    """The configured price; a model missing from the table is refused (money unknown, never sent)."""
    price = cfg.prices.get(model)
    value = getattr(price, unit, 0.0) if price is not None else 0.0
    if price is None or value <= 0:
        raise PermanentError(
            f"[google.prices] has no price per {unit} for {model}, so its cost cannot be checked "
            "against the caps",
            f'Add it to tandava.toml: [google.prices."{model}"] {unit} = <USD> (see '
            "ai.google.dev/gemini-api/docs/pricing), then `tandava retry <run>`.",
            cause="GooglePrice")
    return float(value)


@dataclass(frozen=True)
class Line:
    """One line of an estimate: how many, how long, on which model, for how much."""

    what: Literal["images", "clips"]
    count: int
    seconds: tuple[int, ...]
    model: str
    usd: float

    def text(self) -> str:
        if self.what == "images":
            return f"images: {self.count} on {self.model} ≈ ${self.usd:.2f}"
        lengths = set(self.seconds)
        size = f"{self.count} × {self.seconds[0]} s" if len(lengths) == 1 else \
            f"{self.count} clips, {sum(self.seconds)} s"
        return f"clips: {size} on {self.model} ≈ ${self.usd:.2f}"

    def as_json(self) -> dict[str, Any]:
        return {"count": self.count, "seconds": list(self.seconds), "model": self.model,
                "usd": round(self.usd, 4), "text": self.text()}


def estimate_images(cfg: GoogleConfig, count: int) -> Line:
    return Line("images", count, (), cfg.image_model, count * price_of(cfg, cfg.image_model, "image"))


def estimate_clips(cfg: GoogleConfig, seconds: list[int]) -> Line:
    usd = sum(seconds) * price_of(cfg, cfg.veo_model, "second")
    return Line("clips", len(seconds), tuple(seconds), cfg.veo_model, usd)


def read_cost(run_dir: Path) -> dict[str, Any]:
    """A run's ``cost.json`` ({} when it has none or it cannot be read)."""
    try:
        data = json.loads((run_dir / COST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_estimate(run_dir: Path, *lines: Line) -> None:
    """Record the run's estimate (images and/or clips) in ``cost.json``."""
    data = read_cost(run_dir)
    estimate = data.setdefault("estimate", {})
    for line in lines:
        estimate[line.what] = line.as_json()
    estimate["usd"] = round(sum(float(v["usd"]) for k, v in estimate.items() if k in ("images", "clips")), 4)
    fsutil.atomic_write_json(run_dir / COST_FILE, data)


def approve_spend(run_dir: Path, usd: float) -> None:
    """Allow this run to spend up to ``usd`` whatever the caps say (``tandava spend --approve``)."""
    data = read_cost(run_dir)
    data["approved_usd"] = round(usd, 4)
    fsutil.atomic_write_json(run_dir / COST_FILE, data)


def estimate_lines(run_dir: Path) -> list[str]:
    """The estimate and the spend so far, for ``show``, ``status`` and the channels."""
    data = read_cost(run_dir)
    estimate = data.get("estimate") or {}
    lines = [str(estimate[k]["text"]) for k in ("images", "clips") if k in estimate]
    if lines:
        lines.append(f"estimate ≈ ${float(estimate.get('usd', 0)):.2f}")
    entries = (data.get("entries") or {}).values()
    if entries:
        billed = sum(float(e["usd"]) for e in entries if e.get("status") == "billed")
        pending = sum(float(e["usd"]) for e in entries if e.get("status") == "pending")
        lines.append(f"spent ${billed:.2f}" + (f" (+${pending:.2f} in flight)" if pending else ""))
    if data.get("approved_usd"):
        lines.append(f"approved once up to ${float(data['approved_usd']):.2f}")
    return lines


def day_total(state_root: Path, day: str) -> float:
    """What a UTC day's entries add up to (billed and pending)."""
    data = _read(state_root / SPEND_DIR / f"{day}.json")
    return sum(float(e["usd"]) for e in (data.get("entries") or {}).values() if e.get("status") != "free")


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _counted(entries: dict[str, Any], skip: str) -> float:
    return sum(float(e["usd"]) for k, e in entries.items() if k != skip and e.get("status") != "free")


class Ledger:
    """The spend ledger of one daemon: caps checked and entries written under one lock."""

    def __init__(self, state_root: Path, cfg: GoogleConfig, *, clock: Callable[[], datetime] | None = None):
        self.state_root = state_root
        self.cfg = cfg
        self.clock = clock or (lambda: datetime.now(UTC))
        self._lock = threading.Lock()

    def reserve(self, run_dir: Path, key: str, *, kind: str, model: str, units: float, usd: float) -> None:
        """Enter a job as pending, or raise ``Unavailable`` when it would pass a cap."""
        with self._lock:
            run = read_cost(run_dir)
            entries = run.setdefault("entries", {})
            if key in entries and entries[key].get("status") != "free":
                return  # already counted (a re-attached job of ours)
            now = self.clock()
            day = now.strftime("%Y-%m-%d")
            day_path = self.state_root / SPEND_DIR / f"{day}.json"
            daily = _read(day_path)
            run_total = _counted(entries, key) + usd
            day_total_ = _counted(daily.get("entries") or {}, key) + usd
            approved = float(run.get("approved_usd") or 0.0)
            estimate = float((run.get("estimate") or {}).get("usd", 0.0))
            if run_total > self.cfg.max_usd_per_run + 1e-9 and run_total > approved + 1e-9:
                self._over(run_dir.name, kind, usd, run_total, "max_usd_per_run", self.cfg.max_usd_per_run,
                           "this run's", estimate)
            if day_total_ > self.cfg.max_usd_per_day + 1e-9 and run_total > approved + 1e-9:
                self._over(run_dir.name, kind, usd, day_total_, "max_usd_per_day", self.cfg.max_usd_per_day,
                           f"today's ({day} UTC)", estimate)
            entry = {"kind": kind, "model": model, "units": units, "usd": round(usd, 6), "status": "pending",
                     "at": now.isoformat(timespec="seconds"), "day": day}
            entries[key] = entry
            fsutil.atomic_write_json(run_dir / COST_FILE, run)
            daily.setdefault("entries", {})[key] = {"run": run_dir.name, **entry}
            day_path.parent.mkdir(parents=True, exist_ok=True)
            fsutil.atomic_write_json(day_path, daily)

    def settle(self, run_dir: Path, key: str, status: EntryStatus, *, reason: str = "") -> None:
        """Record what a pending job came to: billed, or free (blocked, filtered, failed)."""
        with self._lock:
            run = read_cost(run_dir)
            entry = (run.get("entries") or {}).get(key)
            if entry is None or entry.get("status") == status:
                return
            entry["status"] = status
            if reason:
                entry["reason"] = reason
            fsutil.atomic_write_json(run_dir / COST_FILE, run)
            day_path = self.state_root / SPEND_DIR / f"{entry['day']}.json"
            daily = _read(day_path)
            if key in (daily.get("entries") or {}):
                daily["entries"][key]["status"] = status
                fsutil.atomic_write_json(day_path, daily)

    def _over(self, run_id: str, kind: str, usd: float, total: float, key: str, cap: float, whose: str,
              estimate: float) -> None:
        raise Unavailable(
            f"the next Google {kind} (${usd:.2f}) would bring {whose} spend to ${total:.2f}, over "
            f"[google] {key} = ${cap:.2f} (this run's estimate: ${estimate:.2f}); nothing was sent",
            f"Raise [google] {key} in tandava.toml and restart the daemon, or allow this run's spend "
            f"once with `tandava spend {run_id} --approve`.",
            cause="GoogleBudget", recheck_seconds=CAP_RECHECK_SECONDS)
