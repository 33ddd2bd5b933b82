"""The rubric's checks: from what a notebook produced (`Execution`) to points and messages.

Each check is one small function returning a `CheckResult`; `evaluate` finds the answer once
and hands every check the same facts, so the messages never contradict each other.

What a message may tell: its own check's findings, and another check's (what is wrong with
LOSS20, where it was found, which figure has the five methods) only while a learner who reads
this message also sees that check (`Facts.may_tell`, from the rubric's visibilities). With
`loss20.values` hidden, `plot.loss20` says "no plotted line shows the batch-20 losses", never
"your LOSS20 shows batch-size-10 numbers": a held-back check's verdict does not leak through
a shown one (`grader.reports.learner_view` leaves out everything else computed from it).

Cost: the probe reader caps what an Execution holds (200 variables of at most 10,000 values,
500 figures, 5,000 lines and 1,000,000 values over all figures); every step here is linear
in that, so `evaluate` takes well under a second at the caps. It runs in a worker thread
(the pipeline keeps it off the event loop that feeds the kernels); the one step that touches
torch's global RNG (the reference's shuffled-loader replay) holds its own lock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from grader.grading.compare import (
    Tolerance,
    find_window,
    first_difference,
    matching_prefix,
    starts_with,
)
from grader.grading.diagnosis import Finding, data_finding, divergence_finding, mistake_finding
from grader.grading.rubric import CheckSpec, Rubric
from grader.models import Axes, CheckId, CheckResult, Curve, Execution, GradeResult, Variable
from reference import LabSettings, expected, mistake_info

ANSWER_METHOD = "LOSS20"
DATA_NAMES = frozenset({"X", "Y", "f"})
LEGEND_NAMES = {
    "LOSS_BGD": "batch gradient descent",
    "LOSS_SGD": "stochastic gradient descent",
    "LOSS_MINI5": "mini-batch, batch size 5",
    "LOSS_MINI10": "mini-batch, batch size 10",
    "LOSS20": "mini-batch, batch size 20",
}


@dataclass
class Answer:
    """Where the learner's batch-20 losses were found, if anywhere."""

    name: str | None = None  # variable graded as LOSS20
    values: list[float] = field(default_factory=list)
    by_alias: bool = False
    alias_empty: str | None = None  # an alias that exists but holds nothing
    window: tuple[str, int] | None = None  # right numbers found inside another list


@dataclass
class Facts:
    """Everything the checks share, computed once per submission."""

    execution: Execution
    rubric: Rubric
    tol: Tolerance
    settings: LabSettings
    expected: dict[str, list[float]]
    answer: Answer
    data: Finding | None
    mistake: Finding | None = None
    comparison: tuple[Axes | None, dict[str, int]] | None = None  # see best_comparison_axes

    @property
    def want(self) -> list[float]:
        return self.expected[ANSWER_METHOD]

    def may_tell(self, spec: CheckSpec, *others: str) -> bool:
        """May `spec`'s message tell what the checks `others` found? Only if a learner who
        reads it sees them too: they are visible, or shown exactly when it is, or it is
        never shown, or they are not in the rubric (then there is no verdict to give away)."""
        for other in others:
            theirs = self.rubric.check(other)
            if theirs is None or spec.visibility == "hidden":
                continue
            if theirs.visibility not in ("visible", spec.visibility):
                return False
        return True


def _numeric(variable: Variable) -> bool:
    return variable.length > 0 and len(variable.values) > 0


def find_answer(variables: dict[str, Variable], rubric: Rubric, want: list[float]) -> Answer:
    """By alias first (in the rubric's order), then by value under any other name."""
    tol = Tolerance(rubric.answer.rtol, rubric.answer.atol)
    answer = Answer()
    for alias in rubric.answer.aliases:
        variable = variables.get(alias)
        if variable is None:
            continue
        if _numeric(variable):
            return Answer(name=alias, values=variable.values, by_alias=True)
        answer.alias_empty = answer.alias_empty or alias
    candidates = [v for name, v in variables.items() if name not in DATA_NAMES and _numeric(v)]
    for variable in candidates:
        if starts_with(variable.values, want, tol):
            answer.name, answer.values = variable.name, variable.values
            return answer
    for variable in candidates:
        offset = find_window(variable.values, want, tol)
        if offset is not None:
            answer.window = (variable.name, offset)
            return answer
    return answer


def _result(
    spec: CheckSpec,
    passed: bool,
    message: str,
    *,
    fraction: float | None = None,
    diagnosis: str = "",
) -> CheckResult:
    share = (1.0 if passed else 0.0) if fraction is None else fraction
    return CheckResult(
        id=spec.id,
        name=spec.title,
        points=round(spec.points * share, 4),
        max_points=spec.points,
        passed=passed,
        message=message,
        diagnosis=diagnosis,
        visibility=spec.visibility,
    )


def check_notebook_runs(spec: CheckSpec, facts: Facts) -> CheckResult:
    execution = facts.execution
    failed = [cell for cell in execution.cells if cell.status in ("error", "timeout", "died")]
    not_run = sum(1 for cell in execution.cells if cell.status == "not_run")
    if not failed and execution.fate == "ok":
        return _result(spec, True, "Every cell ran without errors.")
    parts = []
    for cell in failed[:5]:
        if cell.status == "error":
            parts.append(f"cell {cell.index} raised {cell.error_name}: {cell.error_value}")
        elif cell.status == "timeout":
            parts.append(f"cell {cell.index} did not finish in time and was stopped")
        elif cell.error_name == "ProtocolError":  # the harness stopped listening to it
            parts.append(f"while running cell {cell.index}, {cell.error_value}")
        else:
            parts.append(f"the kernel died while running cell {cell.index}")
    if len(failed) > 5:
        parts.append(f"and {len(failed) - 5} more")
    if not_run:
        parts.append(f"{not_run} cells after it could not run")
    if execution.fate == "oom":
        parts.append("the notebook ran out of memory")
    if execution.fate == "timeout" and not failed:
        parts.append("the notebook ran out of its total time budget")
    text = "; ".join(parts)
    return _result(spec, False, text[:1].upper() + text[1:] + ".")


def check_present(spec: CheckSpec, facts: Facts) -> CheckResult:
    answer = facts.answer
    if answer.by_alias:
        return _result(spec, True, f"Found your batch-20 losses in {answer.name}.")
    # found by value, or right numbers in another list: that tells the values check's verdict
    tell = facts.may_tell(spec, CheckId.LOSS20_VALUES)
    if answer.name and not tell:
        return _result(spec, True, f"Found a list to grade as LOSS20: {answer.name}.")
    if answer.name:
        return _result(
            spec, True, f"Found the batch-20 losses under the name {answer.name} (by value)."
        )
    if answer.window and tell:
        name, offset = answer.window
        where = f"{answer.alias_empty} is empty, but" if answer.alias_empty else "No LOSS20, but"
        return _result(
            spec,
            False,
            f"{where} the batch-20 losses were appended to {name} (from entry {offset} on). "
            "Append them to LOSS20 instead.",
            diagnosis="appended_to_wrong_list",
        )
    if answer.alias_empty:
        return _result(
            spec,
            False,
            f"{answer.alias_empty} exists but holds no numbers. Append the loss at the start of "
            "each epoch inside your batch-20 training loop.",
        )
    if answer.window:
        return _result(spec, False, NO_LOSS20 + " " + STORE_LOSS20)
    return _result(
        spec,
        False,
        NO_LOSS20[:-1] + ", and no other list holds the batch-20 losses. " + STORE_LOSS20,
    )


NO_LOSS20 = "No list named LOSS20 (or LOSS_MINI20, ...) was found."
STORE_LOSS20 = "Store the loss of each epoch in a list called LOSS20."
NO_MATCH = "Your batch-20 losses do not match the reference."


def _mismatch_message(facts: Facts, got: list[float]) -> tuple[str, str]:
    epochs = len(facts.want)
    difference = first_difference(got, facts.want, facts.tol)
    where = ""
    if difference and difference.got is not None:
        where = (
            f"First difference at epoch {difference.epoch}: expected "
            f"{difference.expected:.6g}, got {difference.got:.6g}. "
        )
    finding = facts.mistake
    if finding is not None:
        return where + finding.message, finding.id
    if len(got) < epochs:
        return where + f"LOSS20 holds {len(got)} values; the lab runs {epochs} epochs.", ""
    return (
        where + "This does not match any mistake the grader knows. Compare your loop with the "
        "batch-10 one: same start weights (w=-15, b=-10), lr=0.1, the loss recorded before "
        "each epoch, a DataLoader with batch_size=20.",
        "unknown",
    )


def check_values(spec: CheckSpec, facts: Facts) -> CheckResult:
    answer = facts.answer
    if facts.data is not None:
        return _result(spec, False, facts.data.message, diagnosis=facts.data.id)
    if not answer.name and not facts.may_tell(spec, CheckId.LOSS20_PRESENT):
        return _result(spec, False, NO_MATCH)  # why (no LOSS20) is the present check's
    if answer.window:
        name, offset = answer.window
        return _result(
            spec,
            False,
            f"Your batch-20 losses are right but sit in {name}[{offset}:], not in LOSS20.",
            diagnosis="appended_to_wrong_list",
        )
    if not answer.name:
        return _result(
            spec, False, "There is no LOSS20 to compare with the reference.", diagnosis="no_answer"
        )
    got, epochs = answer.values, len(facts.want)
    if starts_with(got, facts.want, facts.tol):
        extra = (
            f" (graded on the first {epochs} of your {len(got)} epochs)"
            if len(got) > epochs
            else ""
        )
        return _result(spec, True, f"All {epochs} epochs match the reference{extra}.")
    matched = matching_prefix(got, facts.want, facts.tol)
    if len(got) < epochs and matched == len(got):
        return _result(
            spec,
            False,
            f"Your {len(got)} values match the reference, but the lab runs {epochs} epochs: "
            f"run train for {epochs} epochs. Partial credit for {len(got)} of {epochs}.",
            fraction=len(got) / epochs,
            diagnosis="too_few_epochs",
        )
    message, diagnosis = _mismatch_message(facts, got)
    return _result(spec, False, message, diagnosis=diagnosis)


def _all_axes(execution: Execution) -> list[Axes]:
    return [axes for figure in execution.figures for axes in figure.axes]


def _own_curve(facts: Facts, method: str) -> list[float]:
    """The learner's own list for a method (its first `epochs` values), or []."""
    if method == ANSWER_METHOD:
        own = facts.answer.values if facts.answer.name else []
    else:
        variable = facts.execution.variables.get(method)
        own = variable.values if variable is not None and _numeric(variable) else []
    return own[: len(facts.want)]


def _shows_reference(y: list[float], facts: Facts, method: str) -> bool:
    return starts_with(y, facts.expected[method], facts.tol)


def _shows_own(y: list[float], facts: Facts, method: str) -> bool:
    own = _own_curve(facts, method)
    return bool(own) and starts_with(y, own, facts.tol)


def _methods_on(axes: Axes, facts: Facts) -> dict[str, int]:
    """Which of the five methods each line of these axes shows: method -> line index.

    A line is recognised by the reference's numbers or by the learner's own list for that
    method (whether that is enough to pass is the checks' business: see `_off_reference`);
    each line stands for one method at most, reference matches first.
    """
    found: dict[str, int] = {}
    taken: set[int] = set()
    for shows in (_shows_reference, _shows_own):
        for method in facts.expected:
            if method in found:
                continue
            for index, line in enumerate(axes.lines):
                if index not in taken and shows(line.y, facts, method):
                    found[method] = index
                    taken.add(index)
                    break
    return found


def _off_reference(axes: Axes, methods: dict[str, int], facts: Facts) -> list[str]:
    """The methods whose line on these axes is the learner's list, not the reference's."""
    return [m for m, i in methods.items() if not _shows_reference(axes.lines[i].y, facts, m)]


def best_comparison_axes(facts: Facts) -> tuple[Axes | None, dict[str, int]]:
    """The axes showing the most methods; searched once, shared by the two checks using it.

    On a tie, the axes with the batch-20 line win (the figure drawn for the exercise, not
    the lab's own), and among those the last one drawn.
    """
    if facts.comparison is None:
        best: tuple[Axes | None, dict[str, int]] = (None, {})
        best_key = (0, False)
        for axes in _all_axes(facts.execution):
            methods = _methods_on(axes, facts)
            key = (len(methods), ANSWER_METHOD in methods)
            if methods and key >= best_key:
                best, best_key = (axes, methods), key
        facts.comparison = best
    return facts.comparison


def _what_it_shows(facts: Facts) -> str:
    """What the learner's wrong LOSS20 holds, in a few words ("batch-size-10 numbers")."""
    return _wrong_answer(facts)[0]


def _wrong_answer(facts: Facts) -> tuple[str, str]:
    """(what the wrong LOSS20 holds, the known mistake's id when it is exactly that one)."""
    finding = facts.mistake
    got = facts.answer.values
    if facts.data is not None:
        return "numbers computed from data that are not the lab's", facts.data.id
    if len(got) < len(facts.want) and matching_prefix(got, facts.want, facts.tol) == len(got):
        return f"only {len(got)} of the {len(facts.want)} epochs", "too_few_epochs"
    if finding is not None and finding.id.startswith("batch_size_"):
        size = finding.id.removeprefix("batch_size_")
        if finding.exact:
            return f"batch-size-{size} numbers", finding.id
        return f"numbers close to what batch size {size} gives", ""
    if finding is not None:
        try:
            title = mistake_info(finding.id).title
        except KeyError:  # not a variant of the reference (e.g. "not_finite")
            title = ""
        if title and finding.exact:
            return f"what '{title}' gives", finding.id
        if title:
            return f"numbers close to '{title}'", ""
    return "numbers that differ from the reference", ""


def check_plot_loss20(spec: CheckSpec, facts: Facts) -> CheckResult:
    lenient = facts.rubric.plots.accept_learner_values
    own_line = None
    for axes in _all_axes(facts.execution):
        for line in axes.lines:
            shows_own = _shows_own(line.y, facts, ANSWER_METHOD)
            if _shows_reference(line.y, facts, ANSWER_METHOD) or (lenient and shows_own):
                label = f" (labelled '{line.label}')" if line.label else ""
                return _result(spec, True, f"Your batch-20 losses are plotted{label}.")
            if shows_own and own_line is None:
                own_line = line
    # what is wrong with the plotted LOSS20 is the values check's to say
    if own_line is not None and facts.may_tell(spec, *ANSWER_CHECKS):
        what, mistake = _wrong_answer(facts)
        return _result(
            spec,
            False,
            f"Your {facts.answer.name} is plotted, but it shows {what}, so the figure does not "
            "show the batch-20 losses. Fix LOSS20 and plot it again.",
            diagnosis=mistake,
        )
    if not facts.execution.figures:
        return _result(spec, False, "The notebook drew no figures.")
    if own_line is not None:  # the answer is plotted; what is wrong with it is not ours to say
        return _result(spec, False, "None of the plotted lines shows the expected batch-20 losses.")
    return _result(
        spec,
        False,
        "No plotted line shows the batch-20 losses. Plot LOSS20, e.g. "
        "plt.plot(LOSS20, label='Mini-Batch Gradient Descent, Batch size: 20').",
    )


ANSWER_CHECKS = (CheckId.LOSS20_VALUES, CheckId.LOSS20_PRESENT)  # what LOSS20 is, where it is


def _lines_off(off: list[str], facts: Facts) -> str:
    """Which lines do not match the reference, and what the batch-20 one shows instead."""
    clauses = []
    if ANSWER_METHOD in off:
        clauses.append(f"its batch-20 line ({facts.answer.name}) shows {_what_it_shows(facts)}")
    others = [m for m in off if m != ANSWER_METHOD]
    if len(others) == 1:
        clauses.append(
            f"its {LEGEND_NAMES[others[0]]} line ({others[0]}) does not match the reference"
        )
    elif others:
        names = ", ".join(others[:-1]) + " and " + others[-1]
        clauses.append(f"its {names} lines do not match the reference")
    return "; ".join(clauses)


def check_all_methods(spec: CheckSpec, facts: Facts) -> CheckResult:
    """One figure with all five methods' losses. While what LOSS20 holds and what its line
    shows may not be told (`Facts.may_tell`), the lines that are off are named without the
    batch-20 one, so the message is the same whether it is among them or not."""
    axes, methods = best_comparison_axes(facts)
    if axes is None:
        return _result(spec, False, "No figure shows any of the five methods' losses.")
    off = [] if facts.rubric.plots.accept_learner_values else _off_reference(axes, methods, facts)
    tell = facts.may_tell(spec, *ANSWER_CHECKS, CheckId.PLOT_LOSS20)  # what its line shows
    named = off if tell else [m for m in off if m != ANSWER_METHOD]
    if len(methods) == len(facts.expected) and not off:
        return _result(spec, True, "One figure compares all five methods.")
    if len(methods) == len(facts.expected) and not named:  # the batch-20 line, unnamed
        return _result(
            spec,
            False,
            "One figure shows all five methods, but not every line matches the reference. "
            "Check your lists and plot them again.",
        )
    if len(methods) == len(facts.expected) and facts.data is not None and tell:
        return _result(
            spec,
            False,
            f"One figure shows all five methods, but {len(off)} of its lines do not match the "
            "reference: your data are not the lab's, so fix X and Y first.",
        )
    if len(methods) == len(facts.expected):
        return _result(
            spec,
            False,
            "One figure shows all five methods, but "
            + _lines_off(named, facts)
            + (
                ". Fix that list and plot it again."
                if len(named) == 1
                else ". Fix those lists and plot them again."
            ),
        )
    missing = [LEGEND_NAMES[m] for m in facts.expected if m not in methods]
    if ANSWER_METHOD in methods and facts.may_tell(spec, CheckId.PLOT_LOSS20):
        message = (
            f"Your figure with the batch-20 loss shows {len(methods)} of 5 methods; "
            f"it does not show {' or '.join(missing)}."
        )
    else:
        message = (
            f"The figure with the most methods shows {len(methods)} of 5; missing: "
            f"{', '.join(missing)}."
        )
    if named:
        message += " Besides, " + _lines_off(named, facts) + "."
    return _result(spec, False, message + " Plot all five loss lists in one figure.")


def check_legend(spec: CheckSpec, facts: Facts) -> CheckResult:
    axes, methods = best_comparison_axes(facts)
    if axes is None or len(methods) < len(facts.expected):
        message = "There is no figure with all five methods to label."
    elif not axes.legend:
        message = "The figure with all five methods has no legend: call plt.legend()."
    elif unlabeled := [
        LEGEND_NAMES[m] for m, i in methods.items() if not axes.lines[i].label.strip()
    ]:
        message = (
            "The legend does not name every line; unlabelled: " + ", ".join(unlabeled) + ". "
            "Pass label=... to each plt.plot."
        )
    else:
        return _result(spec, True, "The legend names every method.")
    if not facts.may_tell(spec, CheckId.PLOT_ALL_METHODS):
        # which figure shows the five methods (if one does) is plot.all_methods's to say
        message = (
            "No figure has a legend naming each of the five methods. Pass label=... to each "
            "plt.plot and call plt.legend()."
        )
    return _result(spec, False, message)


# What each check id tests (CheckId.INTEGRITY_SEED is the pipeline's: it needs a re-run).
CHECKS: dict[str, Callable[[CheckSpec, Facts], CheckResult]] = {
    CheckId.NOTEBOOK_RUNS: check_notebook_runs,
    CheckId.LOSS20_PRESENT: check_present,
    CheckId.LOSS20_VALUES: check_values,
    CheckId.PLOT_LOSS20: check_plot_loss20,
    CheckId.PLOT_ALL_METHODS: check_all_methods,
    CheckId.PLOT_LEGEND: check_legend,
}


def gather_facts(execution: Execution, rubric: Rubric, seed: int | None = None) -> Facts:
    spec = rubric.answer
    settings = LabSettings(seed=spec.seed if seed is None else seed, epochs=spec.epochs)
    tol = Tolerance(spec.rtol, spec.atol)
    want = expected(seed=settings.seed, epochs=settings.epochs)
    answer = find_answer(execution.variables, rubric, want[ANSWER_METHOD])
    facts = Facts(
        execution=execution,
        rubric=rubric,
        tol=tol,
        settings=settings,
        expected=want,
        answer=answer,
        data=data_finding(execution.variables, settings.seed, tol),
    )
    if answer.name and not starts_with(answer.values, want[ANSWER_METHOD], tol):
        facts.mistake = mistake_finding(answer.values, settings, tol) or divergence_finding(
            answer.values
        )
    return facts


def _headline(facts: Facts, checks: list[CheckResult]) -> str:
    if facts.data is not None:
        return facts.data.message
    for check_id in (CheckId.LOSS20_VALUES, CheckId.LOSS20_PRESENT, CheckId.NOTEBOOK_RUNS):
        failed = next((c for c in checks if c.id == check_id and not c.passed), None)
        if failed is not None:
            return failed.message
    failed = next((c for c in checks if not c.passed), None)
    return failed.message if failed else "Everything matches the reference. Well done."


def curves_for(facts: Facts) -> tuple[list[Curve], list[Curve]]:
    """The learner's lists and the reference, for the feedback picture."""
    learner: list[Curve] = []
    if facts.answer.name:
        learner.append(Curve(label=f"your {facts.answer.name}", y=facts.answer.values[:1000]))
    for method in facts.expected:
        variable = facts.execution.variables.get(method)
        if method != ANSWER_METHOD and variable is not None and _numeric(variable):
            learner.append(Curve(label=f"your {method}", y=variable.values[:1000]))
    reference = [Curve(label=name, y=values) for name, values in facts.expected.items()]
    return learner, reference


def evaluate(execution: Execution, rubric: Rubric, seed: int | None = None) -> GradeResult:
    """Score one execution. The caller fills in submission name, timings and versions."""
    facts = gather_facts(execution, rubric, seed)
    checks = [CHECKS[spec.id](spec, facts) for spec in rubric.checks if spec.id in CHECKS]
    learner, reference = curves_for(facts)
    values = CheckId.LOSS20_VALUES
    mistake = next((c.diagnosis for c in checks if c.id == values and c.diagnosis), "")
    return GradeResult(
        submission="",
        status="graded",
        score=round(sum(c.points for c in checks), 4),
        max_score=rubric.max_score,
        checks=checks,
        answer_name=facts.answer.name,
        diagnosis=_headline(facts, checks),
        sandbox=execution.sandbox,
        rubric_name=rubric.name,
        execution=execution,
        learner_curves=learner,
        reference_curves=reference,
        mistake=mistake,
    )
