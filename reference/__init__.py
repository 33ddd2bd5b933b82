"""The lab 'Mini-Batch Gradient Descent' as pure functions: the numbers learners are graded on."""

from reference.lab import (
    LabData,
    LabSettings,
    TrainingRun,
    make_data,
    train_bgd,
    train_minibatch,
)
from reference.methods import METHODS, expected
from reference.mistakes import Mistake, mistake_info, mistake_variants

__all__ = [
    "METHODS",
    "LabData",
    "LabSettings",
    "Mistake",
    "TrainingRun",
    "expected",
    "make_data",
    "mistake_info",
    "mistake_variants",
    "train_bgd",
    "train_minibatch",
]
