"""What "the same numbers" means (`grader.grading.compare`): the tolerance at its edges, NaN and
inf, prefixes and windows. Numbers come from the reference's batch-20 losses."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from grader.grading.compare import (
    Difference,
    Tolerance,
    close_mask,
    find_window,
    first_difference,
    log_distance,
    matching_prefix,
    starts_with,
)
from grader.grading.rubric import load_rubric
from reference import expected, mistake_variants

ANSWER = load_rubric().answer
TOL = Tolerance(ANSWER.rtol, ANSWER.atol)
WANT = expected(seed=ANSWER.seed, epochs=ANSWER.epochs)["LOSS20"]
STALE = mistake_variants()["batch_size_10"]
BIG = float(np.finfo(np.float64).max)  # BIG - (-BIG) overflows
EDGE_CASES = [0.0, -WANT[0], *WANT[:3], BIG, -BIG, math.inf, -math.inf, math.nan]


def test_the_default_tolerance_is_the_rubrics():
    assert Tolerance() == TOL


@pytest.mark.parametrize("want", WANT)
def test_the_relative_tolerance_edge(want):
    inside = want * (1 + 0.99 * TOL.rtol)
    outside = want * (1 + 1.01 * TOL.rtol) + TOL.atol
    assert TOL.close(inside, want) and TOL.close(want * (1 - 0.99 * TOL.rtol), want)
    assert not TOL.close(outside, want)
    assert not TOL.close(want * (1 - 1.01 * TOL.rtol) - TOL.atol, want)


def test_the_tolerance_is_relative_to_what_is_wanted():
    want = WANT[0]
    got = want * (1 + TOL.rtol * (1 + TOL.rtol / 2))  # just over rtol of want, under rtol of got
    assert not TOL.close(got, want)
    assert TOL.close(want, got)  # not symmetric: the reference's number is the yardstick


def test_negative_and_zero_wants():
    assert TOL.close(-WANT[0] * (1 + 0.5 * TOL.rtol), -WANT[0])
    assert TOL.close(0.5 * TOL.atol, 0.0) and not TOL.close(2 * TOL.atol, 0.0)
    assert Tolerance(TOL.rtol, 0.0).close(0.0, 0.0)


def test_nan_and_inf_equal_only_themselves():
    assert TOL.close(math.nan, math.nan) and TOL.close(math.inf, math.inf)
    assert TOL.close(-math.inf, -math.inf)
    assert not TOL.close(math.inf, -math.inf) and not TOL.close(-math.inf, math.inf)
    for finite in (0.0, WANT[0]):
        for odd in (math.nan, math.inf, -math.inf):
            assert not TOL.close(finite, odd) and not TOL.close(odd, finite)
    assert not TOL.close(math.nan, math.inf)


def test_the_vectorised_comparison_agrees_with_the_scalar_one_without_warnings():
    got = np.array(EDGE_CASES + [WANT[1] * (1 + 0.5 * TOL.rtol), WANT[2] * (1 + 2 * TOL.rtol)])
    for want in EDGE_CASES:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            mask = close_mask(got, want, TOL)
        assert mask.tolist() == [TOL.close(float(g), want) for g in got], want


def test_first_difference():
    assert first_difference(WANT, WANT, TOL) is None
    assert first_difference(WANT + STALE, WANT, TOL) is None  # extra epochs are ignored
    assert first_difference(WANT[:4], WANT, TOL) == Difference(4, WANT[4], None)
    bent = WANT[:6] + STALE[6:]
    assert first_difference(bent, WANT, TOL) == Difference(6, WANT[6], STALE[6])
    assert first_difference([], WANT, TOL) == Difference(0, WANT[0], None)


def test_matching_prefix_and_starts_with():
    assert matching_prefix(WANT, WANT, TOL) == len(WANT)
    assert matching_prefix(WANT[:6] + STALE[6:], WANT, TOL) == 6
    assert matching_prefix(WANT[:3], WANT, TOL) == 3
    assert starts_with(WANT + [math.nan], WANT, TOL)
    assert not starts_with(WANT[:-1], WANT, TOL)
    assert not starts_with(WANT, [], TOL)  # nothing wanted is never a match
    assert starts_with([math.nan, *WANT[1:]], [math.nan, *WANT[1:]], TOL)


def test_find_window():
    assert find_window(WANT, WANT, TOL) == 0
    assert find_window(STALE + WANT, WANT, TOL) == len(STALE)
    assert find_window(STALE[:3] + WANT + WANT, WANT, TOL) == 3  # the first of two
    assert find_window(STALE + WANT[:-1], WANT, TOL) is None  # cut short
    assert find_window(STALE, WANT, TOL) is None
    assert find_window(WANT[:3], WANT, TOL) is None  # shorter than what is wanted
    assert find_window(WANT, [], TOL) is None
    assert find_window([math.inf, math.nan] + WANT, WANT, TOL) == 2
    odd = [WANT[0], math.nan, math.inf]
    assert find_window(STALE + odd, odd, TOL) == len(STALE)


def test_find_window_agrees_with_starts_with_at_every_offset():
    got = STALE + WANT + STALE + WANT
    slow = next(k for k in range(len(got)) if starts_with(got[k:], WANT, TOL))
    assert find_window(got, WANT, TOL) == slow == len(STALE)


def test_log_distance():
    assert log_distance(WANT, WANT) == 0
    assert log_distance([10 * v for v in WANT], WANT) == pytest.approx(1.0)
    assert log_distance([v / 100 for v in WANT], WANT) == pytest.approx(2.0)
    assert log_distance([math.nan, -1.0, 0.0], WANT[:3]) == math.inf  # nothing comparable
    # Only the comparable epochs count.
    assert log_distance([math.inf, *WANT[1:]], WANT) == 0
