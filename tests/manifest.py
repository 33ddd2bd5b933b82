"""Reading submissions/MANIFEST.toml: the expected verdict of every sample."""

from __future__ import annotations

import tomllib
from pathlib import Path

SUBMISSIONS = Path(__file__).resolve().parent.parent / "submissions"
SAMPLES: list[dict] = tomllib.loads((SUBMISSIONS / "MANIFEST.toml").read_text())["sample"]


def verdict_holds(verdict: str, passed: bool, points: float, max_points: float) -> bool:
    """pass / fail / partial (failed, some points) / any (0-point checks that may go either way)."""
    if verdict == "any":
        return max_points == 0
    if verdict == "partial":
        return not passed and 0 < points < max_points
    return passed == (verdict == "pass")
