"""The lab's arithmetic as pure functions, in the lab's own float32 torch operations.

Quirks of the lab are kept on purpose, because learners' numbers carry them:
- batch gradient descent trains on the noisy `Y`, while the `Data` set behind every
  DataLoader run holds the noiseless line `1 * X - 1`;
- every method records the full-data MSE against the noisy `Y` at the *start* of each epoch;
- updates are `w.data = w.data - lr * w.grad.data` on 0-d float32 tensors.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class LabSettings:
    """What a run depends on. The lab's values are the defaults."""

    seed: int = 1
    epochs: int = 10
    lr: float = 0.1
    w0: float = -15.0
    b0: float = -10.0


@dataclass(frozen=True)
class LabData:
    """`X` (inputs), `f` (the noiseless line) and `Y` (noisy targets), float32, shape (60, 1)."""

    X: torch.Tensor
    f: torch.Tensor
    Y: torch.Tensor


@dataclass
class TrainingRun:
    """Per-epoch losses (recorded before each epoch) and (w, b) after every update."""

    losses: list[float] = field(default_factory=list)
    trajectory: list[tuple[float, float]] = field(default_factory=list)
    batch_losses: list[float] = field(default_factory=list)

    @property
    def final_weights(self) -> tuple[float, float]:
        return self.trajectory[-1]


def make_data(seed: int = 1) -> LabData:
    """The lab's data: the noise is the first draw after `torch.manual_seed(seed)`.

    Uses a private generator, so the caller's global RNG is left alone; torch's CPU generator
    gives the same numbers for the same seed either way.
    """
    generator = torch.Generator().manual_seed(seed)
    X = torch.arange(-3, 3, 0.1).view(-1, 1)
    f = 1 * X - 1
    Y = f + 0.1 * torch.randn(X.size(), generator=generator)
    return LabData(X=X, f=f, Y=Y)


def forward(w: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return w * x + b


def criterion(yhat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.mean((yhat - y) ** 2)


def start_weights(w0: float, b0: float) -> tuple[torch.Tensor, torch.Tensor]:
    return (
        torch.tensor(float(w0), requires_grad=True),
        torch.tensor(float(b0), requires_grad=True),
    )


def step(
    w: torch.Tensor, b: torch.Tensor, loss: torch.Tensor, lr: float, *, zero_grad: bool = True
) -> None:
    """One update exactly as the lab writes it (through `.data`, then zero the grads).

    `zero_grad=False` leaves out the two `zero_()` lines: gradients then accumulate.
    """
    loss.backward()
    assert w.grad is not None and b.grad is not None, "both weights require grad"
    w.data = w.data - lr * w.grad.data
    b.data = b.data - lr * b.grad.data
    if zero_grad:
        w.grad.data.zero_()
        b.grad.data.zero_()


def full_loss(w: torch.Tensor, b: torch.Tensor, data: LabData) -> float:
    with torch.no_grad():
        return criterion(forward(w, b, data.X), data.Y).item()


def train_bgd(data: LabData, settings: LabSettings = LabSettings()) -> TrainingRun:
    """Batch gradient descent on (X, noisy Y), as `train_model_BGD`."""
    w, b = start_weights(settings.w0, settings.b0)
    run = TrainingRun()
    for _ in range(settings.epochs):
        loss = criterion(forward(w, b, data.X), data.Y)
        run.losses.append(loss.item())
        step(w, b, loss, settings.lr)
        run.trajectory.append((w.item(), b.item()))
    return run


def batches(
    x: torch.Tensor, y: torch.Tensor, batch_size: int, order: torch.Tensor | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """What a DataLoader over the lab's `Data` yields: consecutive rows, last batch short."""
    n = x.shape[0]
    for start in range(0, n, batch_size):
        if order is None:
            yield x[start : start + batch_size], y[start : start + batch_size]
        else:
            index = order[start : start + batch_size]
            yield x[index], y[index]


def train_minibatch(
    data: LabData,
    batch_size: int,
    settings: LabSettings = LabSettings(),
    *,
    targets: torch.Tensor | None = None,
    start: tuple[float, float] | None = None,
    epoch_orders: list[torch.Tensor] | None = None,
    record_after_epoch: bool = False,
    sum_criterion: bool = False,
    full_data_loss: bool = False,
    zero_grad: bool = True,
) -> TrainingRun:
    """SGD / mini-batch training over the `Data` set, as `train_model_SGD`/`_Mini5`/`_Mini10`.

    The keyword arguments exist for the known mistakes (`reference.mistakes`); the defaults are
    the lab. `targets` defaults to the noiseless line the `Data` class holds.
    `full_data_loss` computes each step's loss on the whole data set (`X`, noisy `Y`) instead
    of the batch; `zero_grad=False` never zeroes the gradients.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    y_train = data.f if targets is None else targets
    w0, b0 = start if start is not None else (settings.w0, settings.b0)
    w, b = start_weights(w0, b0)
    run = TrainingRun()
    for epoch in range(settings.epochs):
        if not record_after_epoch:
            run.losses.append(full_loss(w, b, data))
        order = epoch_orders[epoch] if epoch_orders is not None else None
        for x, y in batches(data.X, y_train, batch_size, order):
            if full_data_loss:
                x, y = data.X, data.Y
            yhat = forward(w, b, x)
            loss = torch.sum((yhat - y) ** 2) if sum_criterion else criterion(yhat, y)
            run.batch_losses.append(loss.item())
            step(w, b, loss, settings.lr, zero_grad=zero_grad)
            run.trajectory.append((w.item(), b.item()))
        if record_after_epoch:
            run.losses.append(full_loss(w, b, data))
    return run
