"""Explaining wrong answers: changed data first, then the known mistakes of the reference.

"Matches batch size 10: your loop uses the old trainloader" beats "mismatch at epoch 2".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from grader.grading.compare import Tolerance, log_distance, starts_with
from grader.models import Variable
from reference import LabSettings, make_data, mistake_info, mistake_variants

SEEDS_TRIED_FOR_CHANGED_DATA = range(0, 101)
NOISE_LEVEL = 0.1


@dataclass(frozen=True)
class Finding:
    id: str  # machine id, e.g. "batch_size_10", "data_changed"
    message: str  # for the learner
    exact: bool = True  # False: only the closest known mistake, not a match


def _values(variable: Variable | None, size: int) -> list[float] | None:
    if variable is None or variable.length != size or len(variable.values) != size:
        return None
    return variable.values


def data_finding(variables: dict[str, Variable], seed: int, tol: Tolerance) -> Finding | None:
    """Say so when the learner's X or Y is not the lab's: nothing downstream can then match."""
    data = make_data(seed)
    size = data.X.numel()
    xs = _values(variables.get("X"), size)
    ys = _values(variables.get("Y"), size)
    if xs is not None and not starts_with(xs, data.X.flatten().tolist(), tol):
        return Finding(
            "data_changed",
            "Your X is not the lab's: it should be torch.arange(-3, 3, 0.1).view(-1, 1). "
            "Every loss depends on it, so fix the data first.",
        )
    if ys is None or starts_with(ys, data.Y.flatten().tolist(), tol):
        return None
    for other in SEEDS_TRIED_FOR_CHANGED_DATA:
        if other != seed and starts_with(ys, make_data(other).Y.flatten().tolist(), tol):
            return Finding(
                "data_changed",
                f"Your Y is what torch.manual_seed({other}) gives, not manual_seed({seed}). "
                f"Use torch.manual_seed({seed}) before creating the data: every loss depends "
                "on it, so nothing downstream can match until it is fixed.",
            )
    residual = torch.tensor(ys) - data.f.flatten()
    noise = residual.std().item()
    if math.isfinite(noise) and abs(noise - NOISE_LEVEL) > 0.3 * NOISE_LEVEL:
        return Finding(
            "data_changed",
            f"Your Y has noise of about {noise:.2g} around the line; the lab adds "
            f"0.1 * torch.randn. Every loss depends on Y, so fix the data first.",
        )
    return Finding(
        "data_changed",
        f"Your Y differs from the lab's data (torch.manual_seed({seed}), then "
        "Y = f + 0.1 * torch.randn(X.size())). Every loss depends on it: fix the data first.",
    )


def mistake_finding(
    values: Sequence[float], settings: LabSettings, tol: Tolerance
) -> Finding | None:
    """The known mistake these values match exactly, else the closest one if it is close."""
    variants = mistake_variants(settings)
    for mistake_id, variant in variants.items():
        if len(values) >= len(variant) and starts_with(values, variant, tol):
            return Finding(mistake_id, mistake_info(mistake_id).hint)
    nearest_id, nearest = min(variants.items(), key=lambda item: log_distance(values, item[1]))
    if log_distance(values, nearest) < 0.05:
        title = mistake_info(nearest_id).title
        return Finding(
            nearest_id,
            f"Your numbers are close to, but not exactly, what '{title}' gives. "
            + mistake_info(nearest_id).hint,
            exact=False,
        )
    return None


def divergence_finding(values: Sequence[float]) -> Finding | None:
    for epoch, value in enumerate(values):
        if not math.isfinite(value):
            return Finding(
                "not_finite",
                f"LOSS20 holds {value} at epoch {epoch}: training diverged or the list holds "
                "something that is not a loss. Check the learning rate (0.1) and the update.",
            )
    return None
