"""Comparing loss sequences within the rubric's tolerance.

Kept apart from the checks so that the answer search, the plot checks and the mistake
diagnosis all agree on what "the same numbers" means.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Tolerance:
    rtol: float = 1e-4
    atol: float = 1e-9

    def close(self, got: float, want: float) -> bool:
        """Within tolerance; a diverged run's inf (or NaN) equals only the same inf (or NaN)."""
        if not (math.isfinite(got) and math.isfinite(want)):
            return got == want or (math.isnan(got) and math.isnan(want))
        return abs(got - want) <= self.atol + self.rtol * abs(want)


@dataclass(frozen=True)
class Difference:
    """The first epoch where two sequences part, or a length shortfall."""

    epoch: int
    expected: float | None
    got: float | None


def first_difference(
    got: Sequence[float], want: Sequence[float], tol: Tolerance
) -> Difference | None:
    """None when `got` starts with `want` (within tolerance); extra values in `got` are ignored."""
    for epoch, expected in enumerate(want):
        if epoch >= len(got):
            return Difference(epoch, expected, None)
        if not tol.close(got[epoch], expected):
            return Difference(epoch, expected, got[epoch])
    return None


def matching_prefix(got: Sequence[float], want: Sequence[float], tol: Tolerance) -> int:
    """How many leading values of `got` match `want`."""
    count = 0
    for value, expected in zip(got, want, strict=False):
        if not tol.close(value, expected):
            break
        count += 1
    return count


def starts_with(got: Sequence[float], want: Sequence[float], tol: Tolerance) -> bool:
    return len(want) > 0 and first_difference(got, want, tol) is None


def close_mask(values: np.ndarray, want: float, tol: Tolerance) -> np.ndarray:
    """`tol.close(v, want)` for every v at once, with the same float64 arithmetic."""
    if math.isfinite(want):
        with np.errstate(invalid="ignore", over="ignore"):  # inf - inf, NaN: simply not close
            return np.abs(values - want) <= tol.atol + tol.rtol * abs(want)
    if math.isnan(want):
        return np.isnan(values)
    return values == want


def find_window(got: Sequence[float], want: Sequence[float], tol: Tolerance) -> int | None:
    """First offset at which `want` appears inside `got` (answers appended to another list).

    Vectorised over the offsets: len(want) passes over `got`, stopping as soon as no offset
    is left, so a 10,000-value list costs about a millisecond whatever it holds.
    """
    size, width = len(got), len(want)
    if width == 0 or size < width:
        return None
    values = np.asarray(got, dtype=np.float64)
    offsets = size - width + 1
    alive = close_mask(values[:offsets], float(want[0]), tol)
    for k in range(1, width):
        if not alive.any():
            return None
        alive &= close_mask(values[k : k + offsets], float(want[k]), tol)
    hits = np.flatnonzero(alive)
    return int(hits[0]) if hits.size else None


def log_distance(got: Sequence[float], want: Sequence[float]) -> float:
    """Mean |log10 ratio| over the common epochs: how far apart two loss curves look."""
    pairs = [(g, w) for g, w in zip(got, want, strict=False) if g > 0 and w > 0]
    pairs = [(g, w) for g, w in pairs if math.isfinite(g) and math.isfinite(w)]
    if not pairs:
        return math.inf
    return sum(abs(math.log10(g / w)) for g, w in pairs) / len(pairs)
