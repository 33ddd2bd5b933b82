"""Every check of the default rubric, passing and failing, on hand-built Executions.

No kernel runs: an `Execution` is what the probe would have recorded, and
`grader.grading.checks.evaluate` scores it. Expected numbers come from `reference`.
"""

from __future__ import annotations

import pytest

from grader.grading.checks import LEGEND_NAMES, best_comparison_axes, evaluate, gather_facts
from grader.grading.rubric import PlotsSpec, Rubric, load_rubric, parse_rubric
from grader.models import CellRun, CheckResult, Figure, GradeResult
from reference import METHODS, expected, mistake_variants
from tests.helpers import LEGEND_LABELS, comparison_axes, lab_execution

RUBRIC = load_rubric()
LENIENT = RUBRIC.model_copy(update={"plots": PlotsSpec(accept_learner_values=True)})
WANT = expected()
EPOCHS = RUBRIC.answer.epochs
DEFAULT_IDS = [
    "notebook.runs",
    "loss20.present",
    "loss20.values",
    "plot.loss20",
    "plot.all_methods",
    "plot.legend",
]


def check(result: GradeResult, check_id: str) -> CheckResult:
    (found,) = [c for c in result.checks if c.id == check_id]
    return found


def assert_failed(result: GradeResult, check_id: str, message: str, diagnosis: str = "") -> None:
    found = check(result, check_id)
    assert (found.passed, found.points) == (False, 0), found
    assert found.message == message
    assert found.diagnosis == diagnosis


def only_loss20(values: list[float]) -> dict[str, list[float]]:
    return {"LOSS20": values}


RUBRIC_TEXT_NO_PLOTS = """
name = "no-plots"
[answer]
aliases = ["LOSS20"]
[[checks]]
id = "loss20.present"
title = "Present"
points = 1
[[checks]]
id = "loss20.values"
title = "Values"
points = 5
"""


# -- all of them -----------------------------------------------------------------------------


def test_the_default_rubric_holds_the_checks_tested_here():
    assert [c.id for c in RUBRIC.checks] == DEFAULT_IDS
    assert RUBRIC.answer.seed == 1 and RUBRIC.max_score == sum(c.points for c in RUBRIC.checks)


def test_a_correct_notebook_passes_every_check_with_its_message():
    result = evaluate(lab_execution(), RUBRIC)
    assert result.status == "graded"
    assert [c.id for c in result.checks] == DEFAULT_IDS
    messages = {c.id: c.message for c in result.checks}
    assert messages == {
        "notebook.runs": "Every cell ran without errors.",
        "loss20.present": "Found your batch-20 losses in LOSS20.",
        "loss20.values": f"All {EPOCHS} epochs match the reference.",
        "plot.loss20": f"Your batch-20 losses are plotted (labelled '{LEGEND_LABELS['LOSS20']}').",
        "plot.all_methods": "One figure compares all five methods.",
        "plot.legend": "The legend names every method.",
    }
    for c in result.checks:
        assert c.passed and c.points == c.max_points == RUBRIC.check(c.id).points, c
        assert c.name == RUBRIC.check(c.id).title and c.diagnosis == ""
    assert result.score == result.max_score == RUBRIC.max_score
    assert result.answer_name == "LOSS20" and result.mistake == ""
    assert result.diagnosis == "Everything matches the reference. Well done."
    assert result.rubric_name == RUBRIC.name
    assert {c.label for c in result.reference_curves} == set(METHODS)
    assert [c.y for c in result.reference_curves if c.label == "LOSS20"] == [WANT["LOSS20"]]
    assert [c.label for c in result.learner_curves][0] == "your LOSS20"


def test_the_rubric_decides_which_checks_count_and_their_points():
    text = """
name = "values-only"
[answer]
aliases = ["LOSS20"]
[[checks]]
id = "loss20.values"
title = "Values"
points = 7
[[checks]]
id = "integrity.seed"
title = "Secret seed"
points = 0
"""
    result = evaluate(lab_execution(), parse_rubric(text))
    # integrity.seed is scored by the integrity re-run, not by evaluate.
    assert [c.id for c in result.checks] == ["loss20.values"]
    assert (result.score, result.max_score, result.rubric_name) == (7, 7, "values-only")


def test_another_seed_grades_against_that_seeds_numbers():
    seed = RUBRIC.answer.seed + 6
    theirs = lab_execution(seed=seed, figures=[])
    assert check(evaluate(theirs, RUBRIC, seed=seed), "loss20.values").passed
    assert not check(evaluate(theirs, RUBRIC), "loss20.values").passed
    assert not check(evaluate(lab_execution(figures=[]), RUBRIC, seed=seed), "loss20.values").passed


# -- notebook.runs ---------------------------------------------------------------------------


def ran(*cells: CellRun, fate="ok") -> GradeResult:
    return evaluate(lab_execution(cells=list(cells), fate=fate), RUBRIC)


OK0 = CellRun(index=0, status="ok")


@pytest.mark.parametrize(
    ("cells", "fate", "message"),
    [
        (
            [OK0, CellRun(index=1, status="error", error_name="ValueError", error_value="boom")],
            "ok",
            "Cell 1 raised ValueError: boom.",
        ),
        (
            [OK0, CellRun(index=1, status="timeout"), CellRun(index=2, status="not_run")],
            "timeout",
            "Cell 1 did not finish in time and was stopped; 1 cells after it could not run.",
        ),
        (
            [OK0, CellRun(index=1, status="died"), CellRun(index=2, status="not_run")],
            "oom",
            "The kernel died while running cell 1; 1 cells after it could not run; "
            "the notebook ran out of memory.",
        ),
        (
            [
                CellRun(
                    index=3,
                    status="died",
                    error_name="ProtocolError",
                    error_value="the kernel sent a message over 17 MB",
                )
            ],
            "died",
            "While running cell 3, the kernel sent a message over 17 MB.",
        ),
        (
            [OK0, CellRun(index=1, status="not_run"), CellRun(index=2, status="not_run")],
            "timeout",
            "2 cells after it could not run; the notebook ran out of its total time budget.",
        ),
        (
            [
                CellRun(index=i, status="error", error_name="E", error_value=str(i))
                for i in range(7)
            ],
            "ok",
            "Cell 0 raised E: 0; cell 1 raised E: 1; cell 2 raised E: 2; cell 3 raised E: 3; "
            "cell 4 raised E: 4; and 2 more.",
        ),
    ],
    ids=["error", "timeout", "oom", "protocol", "total_budget", "many_errors"],
)
def test_notebook_runs_fails_saying_which_cell_and_why(cells, fate, message):
    result = ran(*cells, fate=fate)
    assert_failed(result, "notebook.runs", message)
    # It is worth 0 points in the default rubric: the other checks still score.
    assert result.score == RUBRIC.max_score


def test_a_kernel_that_ended_badly_fails_even_if_every_cell_says_ok():
    assert not check(ran(OK0, fate="died"), "notebook.runs").passed
    assert check(ran(OK0), "notebook.runs").passed


def test_a_failed_run_is_the_headline_only_when_the_answer_is_right():
    error = CellRun(index=1, status="error", error_name="NameError", error_value="name 'x'")
    assert ran(OK0, error).diagnosis == "Cell 1 raised NameError: name 'x'."
    broken = lab_execution(variables={}, cells=[OK0, error])
    assert (
        evaluate(broken, RUBRIC).diagnosis
        == check(evaluate(broken, RUBRIC), "loss20.values").message
    )


# -- loss20.present --------------------------------------------------------------------------


def test_present_passes_by_alias_and_by_value():
    result = evaluate(lab_execution(variables={"LOSS_MINI20": WANT["LOSS20"]}), RUBRIC)
    assert check(result, "loss20.present").message == "Found your batch-20 losses in LOSS_MINI20."
    result = evaluate(lab_execution(variables={"my_losses": WANT["LOSS20"]}), RUBRIC)
    found = check(result, "loss20.present")
    assert found.passed and found.points == RUBRIC.check("loss20.present").points
    assert found.message == "Found the batch-20 losses under the name my_losses (by value)."
    assert result.answer_name == "my_losses"


def test_present_fails_when_nothing_holds_the_losses():
    result = evaluate(lab_execution(variables={"LOSS_MINI10": WANT["LOSS_MINI10"]}), RUBRIC)
    assert_failed(
        result,
        "loss20.present",
        "No list named LOSS20 (or LOSS_MINI20, ...) was found, and no other list holds the "
        "batch-20 losses. Store the loss of each epoch in a list called LOSS20.",
    )
    assert result.answer_name is None


def test_present_fails_on_an_empty_alias():
    result = evaluate(lab_execution(variables={"LOSS20": []}), RUBRIC)
    assert_failed(
        result,
        "loss20.present",
        "LOSS20 exists but holds no numbers. Append the loss at the start of each epoch inside "
        "your batch-20 training loop.",
    )


@pytest.mark.parametrize("empty_alias", [False, True])
def test_present_fails_on_losses_appended_to_another_list(empty_alias):
    variables = {"LOSS_MINI10": WANT["LOSS_MINI10"] + WANT["LOSS20"]}
    if empty_alias:
        variables["LOSS20"] = []
    result = evaluate(lab_execution(variables=variables), RUBRIC)
    where = "LOSS20 is empty, but" if empty_alias else "No LOSS20, but"
    assert_failed(
        result,
        "loss20.present",
        f"{where} the batch-20 losses were appended to LOSS_MINI10 (from entry {EPOCHS} on). "
        "Append them to LOSS20 instead.",
        diagnosis="appended_to_wrong_list",
    )


# -- loss20.values ---------------------------------------------------------------------------


def test_values_pass_on_the_first_epochs_of_a_longer_run():
    longer = WANT["LOSS20"] + expected(epochs=EPOCHS + 2)["LOSS20"][EPOCHS:]
    result = evaluate(lab_execution(variables=only_loss20(longer)), RUBRIC)
    found = check(result, "loss20.values")
    assert found.passed and found.points == RUBRIC.check("loss20.values").points
    assert found.message == (
        f"All {EPOCHS} epochs match the reference "
        f"(graded on the first {EPOCHS} of your {EPOCHS + 2} epochs)."
    )


def test_values_give_partial_credit_for_too_few_epochs():
    got = WANT["LOSS20"][:6]
    result = evaluate(lab_execution(variables=only_loss20(got)), RUBRIC)
    found = check(result, "loss20.values")
    assert not found.passed and found.diagnosis == "too_few_epochs"
    assert found.points == pytest.approx(RUBRIC.check("loss20.values").points * 6 / EPOCHS)
    assert found.message == (
        f"Your 6 values match the reference, but the lab runs {EPOCHS} epochs: run train for "
        f"{EPOCHS} epochs. Partial credit for 6 of {EPOCHS}."
    )
    assert result.mistake == "too_few_epochs"


def test_values_fail_without_an_answer():
    result = evaluate(lab_execution(variables={}), RUBRIC)
    assert_failed(
        result, "loss20.values", "There is no LOSS20 to compare with the reference.", "no_answer"
    )
    assert result.mistake == "no_answer"


def test_values_fail_when_the_right_numbers_sit_in_another_list():
    variables = {"LOSS_MINI10": WANT["LOSS_MINI10"] + WANT["LOSS20"]}
    result = evaluate(lab_execution(variables=variables), RUBRIC)
    assert_failed(
        result,
        "loss20.values",
        f"Your batch-20 losses are right but sit in LOSS_MINI10[{EPOCHS}:], not in LOSS20.",
        "appended_to_wrong_list",
    )


def test_values_fail_on_numbers_no_known_mistake_explains():
    want = WANT["LOSS20"]
    got = [2 * value for value in want]
    result = evaluate(lab_execution(variables=only_loss20(got)), RUBRIC)
    found = check(result, "loss20.values")
    assert (found.passed, found.points, found.diagnosis) == (False, 0, "unknown")
    assert found.message.startswith(
        f"First difference at epoch 0: expected {want[0]:.6g}, got {got[0]:.6g}. "
        "This does not match any mistake the grader knows."
    )
    assert result.diagnosis == found.message


def test_values_fail_on_a_short_wrong_list_saying_how_many_epochs():
    want = WANT["LOSS20"]
    got = [2 * value for value in want[:3]]
    found = check(evaluate(lab_execution(variables=only_loss20(got)), RUBRIC), "loss20.values")
    assert (found.passed, found.points, found.diagnosis) == (False, 0, "")
    assert found.message == (
        f"First difference at epoch 0: expected {want[0]:.6g}, got {got[0]:.6g}. "
        f"LOSS20 holds 3 values; the lab runs {EPOCHS} epochs."
    )


def test_values_fail_on_changed_data_before_anything_else():
    execution = lab_execution()
    x = execution.variables["X"]
    execution.variables["X"] = x.model_copy(update={"values": [v + 1 for v in x.values]})
    result = evaluate(execution, RUBRIC)
    message = (
        "Your X is not the lab's: it should be torch.arange(-3, 3, 0.1).view(-1, 1). "
        "Every loss depends on it, so fix the data first."
    )
    # The values are the reference's, but the data finding wins: it is the headline too.
    assert_failed(result, "loss20.values", message, "data_changed")
    assert result.diagnosis == message and result.mistake == "data_changed"


# -- plot.loss20 -----------------------------------------------------------------------------


def test_plot_loss20_fails_without_figures():
    result = evaluate(lab_execution(figures=[]), RUBRIC)
    assert_failed(result, "plot.loss20", "The notebook drew no figures.")


def test_plot_loss20_fails_when_no_line_shows_the_batch20_losses():
    others = {m: WANT[m] for m in METHODS if m != "LOSS20"}
    result = evaluate(
        lab_execution(figures=[Figure(cell=2, axes=[comparison_axes(others)])]), RUBRIC
    )
    assert_failed(
        result,
        "plot.loss20",
        "No plotted line shows the batch-20 losses. Plot LOSS20, e.g. "
        "plt.plot(LOSS20, label='Mini-Batch Gradient Descent, Batch size: 20').",
    )


def stale_execution(*, whole_figure: bool = False):
    """A stale batch-10 loader: LOSS20 holds batch-10 numbers, and they are plotted."""
    stale = mistake_variants()["batch_size_10"]
    if whole_figure:
        axes = comparison_axes({**{m: WANT[m] for m in METHODS if m != "LOSS20"}, "LOSS20": stale})
    else:
        axes = comparison_axes({"LOSS20": stale}, labels={})
    variables = {m: WANT[m] for m in METHODS} | {"LOSS20": stale}
    return lab_execution(variables=variables, figures=[Figure(cell=2, axes=[axes])])


STALE_PLOTTED = (
    "Your LOSS20 is plotted, but it shows batch-size-10 numbers, so the figure does not show "
    "the batch-20 losses. Fix LOSS20 and plot it again."
)


def test_plot_loss20_fails_on_the_learners_own_wrong_list_saying_so():
    result = evaluate(stale_execution(), RUBRIC)
    assert_failed(result, "plot.loss20", STALE_PLOTTED, "batch_size_10")
    assert check(result, "loss20.values").diagnosis == "batch_size_10"
    assert result.mistake == "batch_size_10"  # from the values check, as before


def test_plot_loss20_accepts_the_learners_own_list_when_the_rubric_says_so():
    execution = stale_execution()
    found = check(evaluate(execution, LENIENT), "plot.loss20")
    assert found.passed and found.message == "Your batch-20 losses are plotted."
    assert not check(evaluate(execution, LENIENT), "loss20.values").passed
    assert not check(evaluate(execution, RUBRIC), "plot.loss20").passed  # same Execution


def test_plot_loss20_says_how_many_epochs_a_short_plotted_list_holds():
    short = WANT["LOSS20"][:5]
    figure = Figure(cell=2, axes=[comparison_axes({"LOSS20": short})])
    result = evaluate(lab_execution(variables=only_loss20(short), figures=[figure]), RUBRIC)
    assert_failed(
        result,
        "plot.loss20",
        f"Your LOSS20 is plotted, but it shows only 5 of the {EPOCHS} epochs, so the figure "
        "does not show the batch-20 losses. Fix LOSS20 and plot it again.",
        "too_few_epochs",
    )
    assert check(
        evaluate(lab_execution(variables=only_loss20(short), figures=[figure]), LENIENT),
        "plot.loss20",
    ).passed


def test_plot_loss20_names_a_known_mistake_by_its_title():
    values = mistake_variants()["weights_not_reset"]
    figure = Figure(cell=2, axes=[comparison_axes({"LOSS20": values})])
    result = evaluate(lab_execution(variables=only_loss20(values), figures=[figure]), RUBRIC)
    assert_failed(
        result,
        "plot.loss20",
        "Your LOSS20 is plotted, but it shows what 'w and b not reset' gives, so the "
        "figure does not show the batch-20 losses. Fix LOSS20 and plot it again.",
        "weights_not_reset",
    )


# -- plot.all_methods ------------------------------------------------------------------------


def test_all_methods_fails_naming_the_missing_ones():
    three = {m: WANT[m] for m in ("LOSS_BGD", "LOSS_MINI10", "LOSS20")}
    # The figure showing most methods is the one judged, wherever it is.
    figures = [
        Figure(cell=1, axes=[comparison_axes({"LOSS20": WANT["LOSS20"]})]),
        Figure(cell=2, axes=[comparison_axes(three)]),
    ]
    result = evaluate(lab_execution(figures=figures), RUBRIC)
    missing = " or ".join(LEGEND_NAMES[m] for m in ("LOSS_SGD", "LOSS_MINI5"))
    assert_failed(
        result,
        "plot.all_methods",
        f"Your figure with the batch-20 loss shows 3 of 5 methods; it does not show {missing}. "
        "Plot all five loss lists in one figure.",
    )
    assert check(result, "plot.loss20").passed


def test_all_methods_without_the_batch20_line_names_what_the_best_figure_misses():
    three = {m: WANT[m] for m in ("LOSS_BGD", "LOSS_SGD", "LOSS_MINI10")}
    result = evaluate(
        lab_execution(figures=[Figure(cell=2, axes=[comparison_axes(three)])]), RUBRIC
    )
    missing = ", ".join(LEGEND_NAMES[m] for m in ("LOSS_MINI5", "LOSS20"))
    assert_failed(
        result,
        "plot.all_methods",
        f"The figure with the most methods shows 3 of 5; missing: {missing}. "
        "Plot all five loss lists in one figure.",
    )


def test_on_a_tie_the_figure_with_the_batch20_line_is_the_one_judged():
    # The lab's own figure (BGD, SGD, 5, 10) left as is, and the exercise figure without BGD.
    lab_figure = {m: WANT[m] for m in METHODS if m != "LOSS20"}
    exercise = {m: WANT[m] for m in METHODS if m != "LOSS_BGD"}
    for order in ((lab_figure, exercise), (exercise, lab_figure)):
        figures = [Figure(cell=i, axes=[comparison_axes(c)]) for i, c in enumerate(order)]
        result = evaluate(lab_execution(figures=figures), RUBRIC)
        assert_failed(
            result,
            "plot.all_methods",
            "Your figure with the batch-20 loss shows 4 of 5 methods; it does not show "
            "batch gradient descent. Plot all five loss lists in one figure.",
        )
        assert best_comparison_axes(gather_facts(lab_execution(figures=figures), RUBRIC))[
            0
        ] == comparison_axes(exercise)


def test_on_a_tie_without_a_batch20_line_the_last_figure_is_judged():
    first = {m: WANT[m] for m in ("LOSS_BGD", "LOSS_SGD")}
    last = {m: WANT[m] for m in ("LOSS_MINI5", "LOSS_MINI10")}
    figures = [
        Figure(cell=1, axes=[comparison_axes(first)]),
        Figure(cell=2, axes=[comparison_axes(last)]),
    ]
    axes, methods = best_comparison_axes(gather_facts(lab_execution(figures=figures), RUBRIC))
    assert axes == comparison_axes(last) and set(methods) == set(last)


def test_all_methods_names_the_line_that_is_off_and_the_switch_accepts_it():
    execution = stale_execution(whole_figure=True)
    result = evaluate(execution, RUBRIC)
    assert_failed(
        result,
        "plot.all_methods",
        "One figure shows all five methods, but its batch-20 line (LOSS20) shows batch-size-10 "
        "numbers. Fix that list and plot it again.",
    )
    # The legend is about labels: it is judged on that figure all the same.
    assert check(result, "plot.legend").passed
    lenient = evaluate(execution, LENIENT)
    assert check(lenient, "plot.all_methods").passed and check(lenient, "plot.loss20").passed
    assert lenient.score - result.score == 3  # plot.loss20 (2) and plot.all_methods (1)


def test_all_methods_names_another_method_whose_line_is_off():
    bgd = [2 * v for v in WANT["LOSS_BGD"]]
    variables = {m: WANT[m] for m in METHODS} | {"LOSS_BGD": bgd}
    figure = Figure(cell=2, axes=[comparison_axes(variables)])
    result = evaluate(lab_execution(variables=variables, figures=[figure]), RUBRIC)
    assert_failed(
        result,
        "plot.all_methods",
        "One figure shows all five methods, but its batch gradient descent line (LOSS_BGD) "
        "does not match the reference. Fix that list and plot it again.",
    )
    assert check(
        evaluate(lab_execution(variables=variables, figures=[figure]), LENIENT), "plot.all_methods"
    ).passed


def test_all_methods_fails_when_no_figure_shows_any_method():
    unrelated = [2 * v for v in WANT["LOSS_BGD"]]
    figure = Figure(cell=2, axes=[comparison_axes({"other": unrelated})])
    result = evaluate(lab_execution(figures=[figure]), RUBRIC)
    assert_failed(result, "plot.all_methods", "No figure shows any of the five methods' losses.")


def test_all_methods_wants_the_five_in_one_axes():
    # Five lines in one axes count; the same five over two figures do not.
    first = {m: WANT[m] for m in METHODS[:3]}
    second = {m: WANT[m] for m in METHODS[3:]}
    figures = [
        Figure(cell=1, axes=[comparison_axes(first)]),
        Figure(cell=2, axes=[comparison_axes(second)]),
    ]
    assert not check(evaluate(lab_execution(figures=figures), RUBRIC), "plot.all_methods").passed


# -- plot.legend -----------------------------------------------------------------------------


def test_legend_fails_without_a_legend():
    figure = Figure(cell=2, axes=[comparison_axes(WANT, legend=False)])
    result = evaluate(lab_execution(figures=[figure]), RUBRIC)
    assert_failed(
        result, "plot.legend", "The figure with all five methods has no legend: call plt.legend()."
    )
    assert check(result, "plot.all_methods").passed


def test_legend_fails_naming_the_unlabelled_lines():
    labels = {m: label for m, label in LEGEND_LABELS.items() if m != "LOSS_MINI5"}
    figure = Figure(cell=2, axes=[comparison_axes(WANT, labels=labels)])
    result = evaluate(lab_execution(figures=[figure]), RUBRIC)
    assert_failed(
        result,
        "plot.legend",
        f"The legend does not name every line; unlabelled: {LEGEND_NAMES['LOSS_MINI5']}. "
        "Pass label=... to each plt.plot.",
    )


def test_legend_fails_when_no_figure_has_all_five_methods():
    four = {m: WANT[m] for m in METHODS if m != "LOSS_SGD"}
    result = evaluate(lab_execution(figures=[Figure(cell=2, axes=[comparison_axes(four)])]), RUBRIC)
    assert_failed(result, "plot.legend", "There is no figure with all five methods to label.")


def test_a_rubric_without_plots_ignores_figures():
    rubric: Rubric = parse_rubric(RUBRIC_TEXT_NO_PLOTS)
    result = evaluate(lab_execution(figures=[]), rubric)
    assert result.score == result.max_score == rubric.max_score
    assert not any(c.id.startswith("plot.") for c in result.checks)


def test_plots_of_changed_data_say_the_data_are_the_cause():
    seed = RUBRIC.answer.seed + 1  # the learner's data: another seed's
    execution = lab_execution(seed=seed)
    result = evaluate(execution, RUBRIC)
    assert_failed(
        result,
        "plot.loss20",
        "Your LOSS20 is plotted, but it shows numbers computed from data that are not the "
        "lab's, so the figure does not show the batch-20 losses. Fix LOSS20 and plot it again.",
        "data_changed",
    )
    assert_failed(
        result,
        "plot.all_methods",
        "One figure shows all five methods, but 5 of its lines do not match the reference: "
        "your data are not the lab's, so fix X and Y first.",
    )
    assert check(result, "plot.legend").passed
    lenient = evaluate(execution, LENIENT)
    assert all(c.passed for c in lenient.checks if c.id.startswith("plot."))


def test_all_methods_groups_several_lines_that_are_off():
    variables = {m: [2 * v for v in WANT[m]] for m in METHODS if m != "LOSS20"}
    variables["LOSS20"] = mistake_variants()["weights_not_reset"]
    figure = Figure(cell=2, axes=[comparison_axes(variables)])
    result = evaluate(lab_execution(variables=variables, figures=[figure]), RUBRIC)
    assert_failed(
        result,
        "plot.all_methods",
        "One figure shows all five methods, but its batch-20 line (LOSS20) shows what 'w and b "
        "not reset' gives; its LOSS_BGD, LOSS_SGD, LOSS_MINI5 and LOSS_MINI10 lines do not "
        "match the reference. Fix those lists and plot them again.",
    )
