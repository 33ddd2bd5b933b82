"""Naming the mistake: every variant of `reference.mistake_variants()` held in LOSS20 is
diagnosed as that mistake; changed data and diverged runs are named too. No kernels."""

from __future__ import annotations

import math

import pytest

from grader.grading.checks import evaluate
from grader.grading.compare import Tolerance
from grader.grading.diagnosis import data_finding, divergence_finding, mistake_finding
from grader.grading.rubric import load_rubric
from grader.models import GradeResult
from reference import LabSettings, expected, make_data, mistake_info, mistake_variants
from tests.helpers import lab_execution, variable

RUBRIC = load_rubric()
SETTINGS = LabSettings(seed=RUBRIC.answer.seed, epochs=RUBRIC.answer.epochs)
TOL = Tolerance(RUBRIC.answer.rtol, RUBRIC.answer.atol)
VARIANTS = mistake_variants(SETTINGS)
WANT = expected(seed=SETTINGS.seed, epochs=SETTINGS.epochs)["LOSS20"]


def values_check(result: GradeResult):
    (found,) = [c for c in result.checks if c.id == "loss20.values"]
    return found


def test_the_variants_are_the_ones_this_file_covers():
    fixed = {
        "weights_not_reset",
        "loss_after_epoch",
        "noisy_targets",
        "shuffled_loader",
        "batch_losses_summed",
        "batch_losses_appended",
        "sum_criterion",
        "batch_gd",
        "full_data_in_loop",
        "grads_not_zeroed",
        "loss_start_and_end",
        "epoch_and_batch_losses",
        "batch_losses_and_epoch_end",
        "last_batch_loss",
    }
    sizes = {f"batch_size_{n}" for n in range(1, 61) if n != 20}
    rates = {f"lr_{lr}" for lr in ("0.001", "0.01", "0.05", "0.2", "0.3", "0.5", "1")}
    assert set(VARIANTS) == fixed | sizes | rates


def test_the_full_data_hint_points_at_the_loop_body():
    hint = mistake_info("full_data_in_loop").hint
    assert hint.startswith(
        "Inside `for x, y in trainloader:` the loss is computed on the whole data set "
        "(`forward(X)`, `Y`): use the batch `x`, `y`"
    )
    assert mistake_info("lr_0.01").title == "learning rate 0.01"
    assert "`lr = 0.1`" in mistake_info("lr_0.01").hint


@pytest.mark.parametrize("mistake_id", sorted(VARIANTS))
def test_each_variant_in_loss20_is_named_as_that_mistake(mistake_id):
    result = evaluate(lab_execution(variables={"LOSS20": VARIANTS[mistake_id]}), RUBRIC)
    found = values_check(result)
    assert (found.passed, found.points) == (False, 0)
    assert found.diagnosis == mistake_id
    assert found.message.endswith(mistake_info(mistake_id).hint)
    assert "close to, but not exactly" not in found.message  # an exact match, not the nearest
    assert result.mistake == mistake_id and result.answer_name == "LOSS20"
    assert result.diagnosis == found.message


@pytest.mark.parametrize("mistake_id", ["batch_size_10", "weights_not_reset", "shuffled_loader"])
def test_a_near_miss_is_named_as_the_closest_mistake_but_not_as_exact(mistake_id):
    near = [value * (1 + 100 * TOL.rtol) for value in VARIANTS[mistake_id]]
    finding = mistake_finding(near, SETTINGS, TOL)
    assert finding is not None and finding.id == mistake_id and not finding.exact
    title = mistake_info(mistake_id).title
    assert finding.message == (
        f"Your numbers are close to, but not exactly, what '{title}' gives. "
        + mistake_info(mistake_id).hint
    )


def test_numbers_far_from_every_mistake_are_not_named():
    assert mistake_finding([1000 * value for value in WANT], SETTINGS, TOL) is None


def test_the_mistakes_follow_the_seed():
    other = LabSettings(seed=SETTINGS.seed + 1, epochs=SETTINGS.epochs)
    stale = mistake_variants(other)["batch_size_10"]
    assert mistake_finding(stale, other, TOL).id == "batch_size_10"
    assert stale != VARIANTS["batch_size_10"]


def test_a_diverged_list_is_named_not_finite_at_its_epoch():
    diverged = [math.nan] * len(WANT)
    result = evaluate(lab_execution(variables={"LOSS20": diverged}), RUBRIC)
    found = values_check(result)
    assert found.diagnosis == "not_finite"
    assert "LOSS20 holds nan at epoch 0: training diverged" in found.message
    inf_at_3 = WANT[:3] + [math.inf] * (len(WANT) - 3)
    finding = divergence_finding(inf_at_3)
    assert finding is not None and finding.id == "not_finite"
    assert finding.message.startswith("LOSS20 holds inf at epoch 3:")
    assert divergence_finding(WANT) is None


# -- the data --------------------------------------------------------------------------------


def data_of(seed: int) -> dict:
    data = make_data(seed)
    return {"X": data.X.flatten().tolist(), "Y": data.Y.flatten().tolist()}


def finding_for(x: list[float], y: list[float]):
    variables = {"X": variable("X", x), "Y": variable("Y", y)}
    return data_finding(variables, SETTINGS.seed, TOL)


def test_the_labs_data_is_not_a_finding():
    lab = data_of(SETTINGS.seed)
    assert finding_for(lab["X"], lab["Y"]) is None
    assert data_finding({}, SETTINGS.seed, TOL) is None  # no X, no Y: nothing to say


def test_y_from_another_seed_names_that_seed():
    lab, other = data_of(SETTINGS.seed), data_of(SETTINGS.seed + 1)
    finding = finding_for(lab["X"], other["Y"])
    assert finding is not None and finding.id == "data_changed"
    assert finding.message.startswith(
        f"Your Y is what torch.manual_seed({SETTINGS.seed + 1}) gives, "
        f"not manual_seed({SETTINGS.seed})."
    )


def test_y_with_other_noise_says_how_much():
    data = make_data(SETTINGS.seed)
    loud = (data.f + 5 * (data.Y - data.f)).flatten().tolist()  # five times the lab's noise
    finding = finding_for(data.X.flatten().tolist(), loud)
    assert finding is not None and finding.id == "data_changed"
    assert finding.message.startswith("Your Y has noise of about 0.")
    assert "the lab adds 0.1 * torch.randn" in finding.message


def test_y_slightly_changed_is_named_without_a_guess():
    lab = data_of(SETTINGS.seed)
    y = list(lab["Y"])
    y[7] += 0.5
    finding = finding_for(lab["X"], y)
    assert finding is not None and finding.id == "data_changed"
    assert finding.message.startswith("Your Y differs from the lab's data")


def test_x_changed_is_named_first():
    lab = data_of(SETTINGS.seed)
    finding = finding_for([2 * x for x in lab["X"]], [0.0] * len(lab["Y"]))
    assert finding is not None and finding.id == "data_changed"
    assert finding.message.startswith("Your X is not the lab's")


def test_data_of_another_size_is_not_judged():
    lab = data_of(SETTINGS.seed)
    shifted = [x + 1 for x in lab["X"][:-1]], [y + 1 for y in lab["Y"][:-1]]
    assert finding_for(*shifted) is None  # wrong, but not the lab's 60 points: not data
