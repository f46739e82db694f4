"""One line of ``tandava doctor``'s report, low enough that every package can make one.

Each package that can be checked brings a ``doctor_checks(settings)`` that
yields ``Check`` values; ``daemon.host.doctor`` gathers them. Keeping the type
here, below every package, is what lets a writer or a channel say what is wrong
without importing the doctor back (which made an import cycle).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Check:
    """One line of the doctor's report: a name, ok or not, and the detail (the fix when not ok)."""

    name: str
    ok: bool
    detail: str
