"""An independent float64 implementation of the lab's training, for tests only.

It shares no code with `reference`: numpy, closed-form gradients of the mean squared error,
plain slicing for the batches. Only the data (torch's random noise) is taken as input.
"""

from __future__ import annotations

import numpy as np


def mse(w: float, b: float, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean((w * x + b - y) ** 2))


def batch_gd(
    x: np.ndarray, y: np.ndarray, epochs: int, lr: float, w: float, b: float
) -> list[float]:
    losses = []
    for _ in range(epochs):
        losses.append(mse(w, b, x, y))
        residual = w * x + b - y
        w, b = w - lr * float(np.mean(2 * residual * x)), b - lr * float(np.mean(2 * residual))
    return losses


def minibatch_gd(
    x: np.ndarray,
    y_eval: np.ndarray,
    y_train: np.ndarray,
    batch_size: int,
    epochs: int,
    lr: float,
    w: float,
    b: float,
) -> list[float]:
    """Loss on (x, y_eval) at the start of each epoch; updates on consecutive batches of y_train."""
    losses = []
    for _ in range(epochs):
        losses.append(mse(w, b, x, y_eval))
        for start in range(0, len(x), batch_size):
            xb, yb = x[start : start + batch_size], y_train[start : start + batch_size]
            residual = w * xb + b - yb
            w, b = w - lr * float(np.mean(2 * residual * xb)), b - lr * float(np.mean(2 * residual))
    return losses


def five_methods(
    x: np.ndarray, y: np.ndarray, epochs: int = 10, lr: float = 0.1
) -> dict[str, list[float]]:
    line = x - 1.0
    runs = {"LOSS_BGD": batch_gd(x, y, epochs, lr, -15.0, -10.0)}
    for name, size in (("LOSS_SGD", 1), ("LOSS_MINI5", 5), ("LOSS_MINI10", 10), ("LOSS20", 20)):
        runs[name] = minibatch_gd(x, y, line, size, epochs, lr, -15.0, -10.0)
    return runs
