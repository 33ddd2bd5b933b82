"""Known ways to get LOSS20 wrong, each computed from the same inputs as the right answer.

The grader compares a wrong answer with every variant here; the closest match names the
likely mistake in the learner's own terms. Each variant is the full list a learner would
have after that mistake, for the same seed and settings.
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch.utils.data import DataLoader, Dataset

from reference.lab import LabData, LabSettings, make_data, train_bgd, train_minibatch

RIGHT_BATCH_SIZE = 20
LOADER_EPOCHS_BEFORE_BATCH20 = 3  # SGD, mini-batch 5 and 10 each iterate a loader per epoch
# Learning rates a learner may type instead of the lab's 0.1 (ids `lr_0.01` etc.).
WRONG_LEARNING_RATES = (0.001, 0.01, 0.05, 0.2, 0.3, 0.5, 1.0)


@dataclass(frozen=True)
class Mistake:
    id: str
    title: str  # a few words, for tables
    hint: str  # what probably happened and where to look, for the learner


def _batch_size_mistake(batch_size: int) -> Mistake:
    if batch_size == 10:
        hint = (
            "Your numbers are what batch size 10 gives. Most likely the training loop still "
            "uses the DataLoader from the batch-10 part (a stale or misspelled `trainloader`): "
            "create `DataLoader(dataset=dataset, batch_size=20)` and loop over that one."
        )
    elif batch_size in (1, 5):
        hint = (
            f"Your numbers are what batch size {batch_size} gives: the loop uses an earlier "
            "DataLoader. Build a new one with batch_size=20 and loop over it."
        )
    else:
        hint = (
            f"Your numbers are what batch size {batch_size} gives. Check the `batch_size` "
            "you pass to the DataLoader: the exercise asks for 20."
        )
    return Mistake(f"batch_size_{batch_size}", f"batch size {batch_size}", hint)


def _lr_id(lr: float) -> str:
    return f"lr_{lr:g}"


def _lr_mistake(text: str) -> Mistake:
    lr = float(text)
    speed = "smaller" if lr < 0.1 else "larger"
    hint = (
        f"Your numbers are what a learning rate of {text} gives: each step is {speed} than "
        "the lab's. Set `lr = 0.1` in your batch-20 cell, as the other methods do."
    )
    return Mistake(_lr_id(lr), f"learning rate {text}", hint)


FIXED_MISTAKES: dict[str, Mistake] = {
    m.id: m
    for m in (
        Mistake(
            "weights_not_reset",
            "w and b not reset",
            "Training started from where the batch-10 run ended, not from w=-15, b=-10. "
            "Create fresh `w` and `b` tensors (requires_grad=True) before training with batch 20.",
        ),
        Mistake(
            "loss_after_epoch",
            "loss recorded after the epoch",
            "You record the loss after each epoch's updates. The lab records it at the start "
            "of each epoch, before the inner loop over the DataLoader.",
        ),
        Mistake(
            "noisy_targets",
            "trained on the noisy Y",
            "Your model was trained on the noisy `Y`, but the `Data` set (and so the "
            "DataLoader) holds the noiseless line `1 * X - 1`. Train over the DataLoader.",
        ),
        Mistake(
            "shuffled_loader",
            "shuffled DataLoader",
            "Your DataLoader shuffles. The lab's loaders go through the data in order: "
            "leave out `shuffle=True`.",
        ),
        Mistake(
            "batch_losses_summed",
            "sum of batch losses",
            "You add up the mini-batch losses of each epoch. The lab stores the loss on the "
            "whole data set, `criterion(forward(X), Y)`, once at the start of each epoch.",
        ),
        Mistake(
            "batch_losses_appended",
            "one entry per batch",
            "You append a loss for every mini-batch (3 per epoch). Append once per epoch: "
            "the full-data loss `criterion(forward(X), Y)` before the inner loop.",
        ),
        Mistake(
            "sum_criterion",
            "summed squared error",
            "Your training loss sums the squared errors instead of averaging them, so each "
            "step is 20 times too large. Use the lab's `criterion` (a mean).",
        ),
        Mistake(
            "batch_gd",
            "batch gradient descent",
            "These are the batch gradient descent losses (LOSS_BGD), not mini-batch with "
            "batch size 20.",
        ),
        Mistake(
            "full_data_in_loop",
            "whole data set inside the loop",
            "Inside `for x, y in trainloader:` the loss is computed on the whole data set "
            "(`forward(X)`, `Y`): use the batch `x`, `y` (`yhat = forward(x)`, "
            "`loss = criterion(yhat, y)`). As written, each epoch takes three full-batch steps "
            "on the noisy `Y`.",
        ),
        Mistake(
            "grads_not_zeroed",
            "gradients not zeroed",
            "Your gradients add up from step to step: after each update the lab zeroes them "
            "with `w.grad.data.zero_()` and `b.grad.data.zero_()`. Put both lines back at the "
            "end of the inner loop.",
        ),
        Mistake(
            "loss_start_and_end",
            "loss recorded before and after each epoch",
            "You append the full-data loss twice per epoch, before and after the inner loop, "
            "so every value after the first appears twice. Keep only the append before the "
            "inner loop.",
        ),
        Mistake(
            "epoch_and_batch_losses",
            "epoch loss and every batch loss",
            "Besides the full-data loss at the start of each epoch you also append every "
            "mini-batch loss (4 entries per epoch). Remove the append inside the inner loop.",
        ),
        Mistake(
            "batch_losses_and_epoch_end",
            "every batch loss and the loss after the epoch",
            "You append every mini-batch loss and then the full-data loss after the inner loop "
            "(4 entries per epoch). Append once per epoch: the full-data loss "
            "`criterion(forward(X), Y)` before the inner loop.",
        ),
        Mistake(
            "last_batch_loss",
            "last mini-batch's loss",
            "You store the loss of the epoch's last mini-batch (`loss` after the inner loop). "
            "The lab stores the loss on the whole data set, `criterion(forward(X), Y)`, at the "
            "start of each epoch, before the inner loop.",
        ),
    )
}


def mistake_info(mistake_id: str) -> Mistake:
    """Title and hint for a variant id (fixed mistakes, `batch_size_N` and `lr_X`)."""
    if mistake_id.startswith("batch_size_"):
        return _batch_size_mistake(int(mistake_id.removeprefix("batch_size_")))
    if mistake_id.startswith("lr_"):
        return _lr_mistake(mistake_id.removeprefix("lr_"))
    return FIXED_MISTAKES[mistake_id]


_GLOBAL_RNG = threading.Lock()


def shuffled_epoch_orders(
    settings: LabSettings, batch_size: int = RIGHT_BATCH_SIZE
) -> list[torch.Tensor]:
    """The index order a shuffled batch-20 DataLoader would use in the lab notebook.

    Replays the lab's use of the global RNG (the data, then one draw per earlier loader
    epoch) with torch's own DataLoader, then restores the caller's RNG state.
    """
    with _GLOBAL_RNG:  # one replay at a time: evaluate runs in worker threads
        return _replay_shuffled(settings, batch_size)


def _replay_shuffled(settings: LabSettings, batch_size: int) -> list[torch.Tensor]:
    saved = torch.get_rng_state()
    try:
        torch.manual_seed(settings.seed)
        torch.randn(60, 1)
        # A list is a map-style dataset (__getitem__, __len__); torch's stubs want a Dataset.
        indices: Dataset[int] = list(range(60))  # type: ignore[assignment]
        for _ in range(LOADER_EPOCHS_BEFORE_BATCH20 * settings.epochs):
            iter(DataLoader(indices, batch_size=batch_size))
        loader = DataLoader(indices, batch_size=batch_size, shuffle=True)
        return [torch.cat(list(loader)) for _ in range(settings.epochs)]
    finally:
        torch.set_rng_state(saved)


def _variants(settings: LabSettings, data: LabData) -> dict[str, list[float]]:
    variants: dict[str, list[float]] = {}
    for batch_size in range(1, 61):
        if batch_size != RIGHT_BATCH_SIZE:
            variants[f"batch_size_{batch_size}"] = train_minibatch(
                data, batch_size, settings
            ).losses
    batch10 = train_minibatch(data, 10, settings)
    variants["weights_not_reset"] = train_minibatch(
        data, RIGHT_BATCH_SIZE, settings, start=batch10.final_weights
    ).losses
    variants["loss_after_epoch"] = train_minibatch(
        data, RIGHT_BATCH_SIZE, settings, record_after_epoch=True
    ).losses
    variants["noisy_targets"] = train_minibatch(
        data, RIGHT_BATCH_SIZE, settings, targets=data.Y
    ).losses
    variants["shuffled_loader"] = train_minibatch(
        data, RIGHT_BATCH_SIZE, settings, epoch_orders=shuffled_epoch_orders(settings)
    ).losses
    right = train_minibatch(data, RIGHT_BATCH_SIZE, settings)
    per_epoch = len(right.batch_losses) // settings.epochs
    variants["batch_losses_summed"] = [
        sum(right.batch_losses[i : i + per_epoch])
        for i in range(0, len(right.batch_losses), per_epoch)
    ]
    variants["batch_losses_appended"] = list(right.batch_losses)
    variants["sum_criterion"] = train_minibatch(
        data, RIGHT_BATCH_SIZE, settings, sum_criterion=True
    ).losses
    variants["batch_gd"] = train_bgd(data, settings).losses
    variants["full_data_in_loop"] = train_minibatch(
        data, RIGHT_BATCH_SIZE, settings, full_data_loss=True
    ).losses
    variants["grads_not_zeroed"] = train_minibatch(
        data, RIGHT_BATCH_SIZE, settings, zero_grad=False
    ).losses
    after = variants["loss_after_epoch"]
    batch = right.batch_losses
    epochs = range(len(right.losses))
    variants["loss_start_and_end"] = [v for e in epochs for v in (right.losses[e], after[e])]
    variants["epoch_and_batch_losses"] = [
        v for e in epochs for v in (right.losses[e], *batch[e * per_epoch : (e + 1) * per_epoch])
    ]
    variants["batch_losses_and_epoch_end"] = [
        v for e in epochs for v in (*batch[e * per_epoch : (e + 1) * per_epoch], after[e])
    ]
    variants["last_batch_loss"] = batch[per_epoch - 1 :: per_epoch]
    for lr in WRONG_LEARNING_RATES:
        variants[_lr_id(lr)] = train_minibatch(
            data, RIGHT_BATCH_SIZE, dataclasses.replace(settings, lr=lr)
        ).losses
    return variants


@lru_cache(maxsize=16)
def _cached_variants(settings: LabSettings) -> tuple[tuple[str, tuple[float, ...]], ...]:
    variants = _variants(settings, make_data(settings.seed))
    return tuple((name, tuple(values)) for name, values in variants.items())


def mistake_variants(settings: LabSettings = LabSettings()) -> dict[str, list[float]]:
    """Every known mistake's LOSS20 for these settings, keyed by mistake id (cached)."""
    return {name: list(values) for name, values in _cached_variants(settings)}
