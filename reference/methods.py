"""The expected per-epoch losses of the lab's five methods, for any seed and settings."""

from __future__ import annotations

from functools import lru_cache

from reference.lab import LabSettings, make_data, train_bgd, train_minibatch

METHOD_BATCH_SIZES: dict[str, int] = {
    "LOSS_SGD": 1,
    "LOSS_MINI5": 5,
    "LOSS_MINI10": 10,
    "LOSS20": 20,
}
METHODS: tuple[str, ...] = ("LOSS_BGD", *METHOD_BATCH_SIZES)


@lru_cache(maxsize=64)
def _expected(settings: LabSettings) -> tuple[tuple[str, tuple[float, ...]], ...]:
    data = make_data(settings.seed)
    runs = {"LOSS_BGD": train_bgd(data, settings).losses}
    for name, batch_size in METHOD_BATCH_SIZES.items():
        runs[name] = train_minibatch(data, batch_size, settings).losses
    return tuple((name, tuple(runs[name])) for name in METHODS)


def expected(
    seed: int = 1,
    epochs: int = 10,
    lr: float = 0.1,
    w0: float = -15.0,
    b0: float = -10.0,
) -> dict[str, list[float]]:
    """Loss at the start of each epoch for BGD, SGD and mini-batch 5, 10, 20 (cached).

    Keys: LOSS_BGD, LOSS_SGD, LOSS_MINI5, LOSS_MINI10, LOSS20.
    """
    settings = LabSettings(seed=seed, epochs=epochs, lr=lr, w0=w0, b0=b0)
    return {name: list(values) for name, values in _expected(settings)}
