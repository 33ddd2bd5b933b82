"""Finding the learner's batch-20 losses (`grader.grading.checks.find_answer`): by alias in the
rubric's order, by value under any other name, as a window inside a longer list, or not at all."""

from __future__ import annotations

import math

from grader.grading.checks import Answer, evaluate, find_answer
from grader.grading.rubric import load_rubric
from grader.models import Variable
from reference import expected, mistake_variants
from tests.helpers import lab_execution, variable

RUBRIC = load_rubric()
ALL = expected(seed=RUBRIC.answer.seed, epochs=RUBRIC.answer.epochs)
WANT = ALL["LOSS20"]
STALE = mistake_variants()["batch_size_10"]


def search(**lists: list[float]) -> Answer:
    return find_answer(
        {name: variable(name, values) for name, values in lists.items()}, RUBRIC, WANT
    )


def test_every_alias_is_found_by_name():
    for alias in RUBRIC.answer.aliases:
        answer = search(**{alias: WANT})
        assert (answer.name, answer.by_alias, answer.values) == (alias, True, WANT)


def test_aliases_are_tried_in_the_rubrics_order():
    first, second = RUBRIC.answer.aliases[:2]
    answer = search(**{second: WANT, first: STALE})
    assert answer.name == first and answer.values == STALE


def test_an_alias_wins_over_the_right_numbers_under_another_name():
    # The learner named an answer: it is graded, right or wrong.
    answer = search(LOSS20=STALE, my_losses=WANT)
    assert (answer.name, answer.by_alias) == ("LOSS20", True)


def test_an_empty_alias_is_passed_over_and_remembered_for_the_message():
    answer = search(LOSS20=[], LOSS_MINI20=WANT)
    assert (answer.name, answer.by_alias, answer.values) == ("LOSS_MINI20", True, WANT)
    answer = search(LOSS20=[], losses=WANT)
    assert (answer.name, answer.by_alias, answer.alias_empty) == ("losses", False, "LOSS20")


def test_the_right_numbers_are_found_under_any_name():
    answer = search(LOSS_MINI10=ALL["LOSS_MINI10"], b20=WANT + [0.0])
    assert (answer.name, answer.by_alias, answer.window) == ("b20", False, None)
    assert answer.values == WANT + [0.0]  # graded on its first epochs later


def test_the_data_is_never_taken_for_the_answer():
    assert search(X=WANT, Y=WANT, f=WANT) == Answer()


def test_a_window_inside_a_longer_list_is_found_with_its_offset():
    offset = len(ALL["LOSS_MINI10"])
    answer = search(LOSS_MINI10=ALL["LOSS_MINI10"] + WANT)
    assert answer.name is None and answer.window == ("LOSS_MINI10", offset)
    tail = search(log=STALE + WANT + STALE)
    assert tail.window == ("log", len(STALE))


def test_a_start_beats_a_window():
    answer = search(appended=STALE + WANT, own=WANT)
    assert answer.name == "own" and answer.window is None


def test_nothing_found():
    assert search() == Answer()
    assert search(LOSS_MINI10=ALL["LOSS_MINI10"], other=STALE) == Answer()


def test_non_finite_values_are_a_list_like_any_other():
    nan = [math.nan] * len(WANT)
    answer = search(LOSS20=nan)
    assert answer.name == "LOSS20" and all(math.isnan(v) for v in answer.values)
    assert search(diverged=[math.inf] * len(WANT)) == Answer()  # inf never matches a loss
    # The right numbers after NaN and inf are still found as a window.
    answer = search(log=[math.nan, math.inf, -math.inf] + WANT)
    assert answer.window == ("log", 3)


def test_a_list_shorter_than_the_run_is_found_only_by_alias():
    short = WANT[:4]
    assert search(losses=short) == Answer()
    answer = search(LOSS20=short)
    assert (answer.name, answer.values) == ("LOSS20", short)


def test_a_capped_variable_is_searched_on_what_it_holds():
    # The probe keeps at most 10,000 values; `length` is the learner's true length.
    capped = Variable(name="big", type_name="ndarray", values=STALE + WANT, length=50_000)
    answer = find_answer({"big": capped}, RUBRIC, WANT)
    assert answer.window == ("big", len(STALE))
    nothing = Variable(name="LOSS20", type_name="list", values=[], length=3)
    assert find_answer({"LOSS20": nothing}, RUBRIC, WANT).alias_empty == "LOSS20"


def test_the_answer_found_is_the_one_graded():
    result = evaluate(lab_execution(variables={"mine": WANT}), RUBRIC)
    assert result.answer_name == "mine"
    assert result.learner_curves[0].label == "your mine"
    assert result.learner_curves[0].y == WANT
