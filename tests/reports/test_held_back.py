"""A held-back check's verdict reaches no learner through anything else: the matrix.

Each check in turn is held back (`hidden`, and `after_due_date` before the due date) on a
notebook where it fails, chosen so that the shown checks would have something to say about
it (a plotted wrong LOSS20, the right numbers in another list, a figure short of a method,
a failed secret-seed re-run, ...). Then no learner-facing text (the feedback page with its
picture, results.json's learner copy, what Gradescope and an LMS show of the full
results.json, the service's comment, the XQueue message, Coursera's text and page) carries
the held check's message, any sentence of it, or the words that state its verdict.

Grades come from the real checks on hand-built Executions (no kernels); the secret-seed
check is the pipeline's own (`_apply_integrity`), applied as the pipeline applies it.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import nbformat
import pytest

from grader.grading.checks import evaluate
from grader.grading.rubric import CheckSpec, Rubric
from grader.models import ALWAYS_SHOWN, CellRun, CheckId, Figure, GradeResult
from grader.pipeline import _apply_integrity, _flag_literals, _integrity_check
from grader.platforms.coursera import html_feedback, text_feedback
from grader.reports.feedback import feedback_html, gradescope_json
from grader.reports.learner_view import learner_view
from grader.service.dispatcher import _comment
from grader.submission import load
from grader.xqueue.feedback import message_html
from reference import METHODS, expected, mistake_variants
from tests.helpers import PAIRS, comparison_axes, lab_execution, rubric_with

WANT = expected()
STALE = mistake_variants()["batch_size_10"]
OTHERS = {m: WANT[m] for m in METHODS if m != "LOSS20"}


def _figure(curves: dict[str, list[float]]) -> list[Figure]:
    return [Figure(cell=2, axes=[comparison_axes(curves)])]


def _graded(execution, rubric) -> GradeResult:
    return evaluate(execution, rubric)


def _rerun(follows: bool, source: str = "") -> Callable[[Any, Any], GradeResult]:
    """A correct notebook graded with --integrity whose re-run with the secret seed did (not)
    follow the seed, as `grader.pipeline.grade_submission` records it, its literal scan too
    (`source`: a cell of the notebook besides the lab's)."""
    notebook = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell("LOSS20 = train(20)"), nbformat.v4.new_code_cell(source)]
    )
    submission = load(nbformat.writes(notebook).encode(), name="learner")

    def grade(execution, rubric) -> GradeResult:
        rubric = rubric.with_integrity()
        result = evaluate(execution, rubric)
        secret = 7
        values = expected(seed=secret)["LOSS20"] if follows else WANT["LOSS20"]
        _apply_integrity(result, values, rubric, secret)
        _flag_literals(result, submission, rubric)
        return result

    return grade


def rubric_holding(check_id: str, visibility: str = "visible") -> Rubric:
    """The default rubric with one check's visibility set (the secret-seed check listed)."""
    if check_id != CheckId.INTEGRITY_SEED:
        return rubric_with(**{check_id: visibility})
    return with_rerun_check(rubric_with(), visibility)


def with_rerun_check(rubric: Rubric, visibility: str) -> Rubric:
    spec = CheckSpec(id=CheckId.INTEGRITY_SEED, title="Same code, secret seed", points=0)
    spec = spec.model_copy(update={"visibility": visibility})
    return rubric.model_copy(update={"checks": [*rubric.checks, spec]})


def _wrong_loss20_checked(execution, rubric) -> GradeResult:
    """A wrong LOSS20 graded with --integrity, the rubric showing the re-run's check itself."""
    rubric = with_rerun_check(rubric, "visible")
    result = evaluate(execution, rubric)
    check = _integrity_check(result, None, rubric, 7)
    result.checks = [*result.checks, check]
    return result


STALE_CURVES = {**OTHERS, "LOSS20": STALE}
STALE_EVERYWHERE = lab_execution(variables=STALE_CURVES, figures=_figure(STALE_CURVES))
# check id held back -> (what fails it, how it is graded, words that state its verdict)
SCENARIOS: dict[str, tuple[str, Any, Callable[..., GradeResult], list[str]]] = {
    "values: a stale loader, plotted": (
        CheckId.LOSS20_VALUES,
        STALE_EVERYWHERE,
        _graded,
        ["batch_size_10", "batch-size-10", "batch size 10", "trainloader", "does not match"],
    ),
    "values: another seed's data, plotted": (
        CheckId.LOSS20_VALUES,
        lab_execution(seed=2),
        _graded,
        ["data_changed", "manual_seed", "the lab's", "X and Y"],
    ),
    "values: wrong, the re-run's check shown": (
        CheckId.LOSS20_VALUES,
        STALE_EVERYWHERE,
        _wrong_loss20_checked,
        ["batch_size_10", "batch-size-10", "does not match the reference for seed"],
    ),
    "present: the losses appended to another list": (
        CheckId.LOSS20_PRESENT,
        lab_execution(variables={**OTHERS, "LOSS_MINI10": OTHERS["LOSS_MINI10"] + WANT["LOSS20"]}),
        _graded,
        ["appended", "LOSS_MINI10[", "not in LOSS20", "No LOSS20", "no_answer"],
    ),
    "present: no list at all": (
        CheckId.LOSS20_PRESENT,
        lab_execution(variables=OTHERS, figures=_figure(OTHERS)),
        _graded,
        ["No list named", "There is no LOSS20", "no_answer", "was found"],
    ),
    "runs: a cell raised, the kernel timed out": (
        CheckId.NOTEBOOK_RUNS,
        lab_execution(
            variables=OTHERS,
            # cell 1 raised a NameError, the last one ran out of time
            cells=[*PAIRS[CheckId.NOTEBOOK_RUNS][1].cells, CellRun(index=3, status="timeout")],
            fate="timeout",
        ),
        lambda execution, rubric: evaluate(execution, rubric).model_copy(
            update={"status": "timeout"}  # the pipeline's status of a timed-out kernel
        ),
        ["NameError", "oops", "time-out", "did not finish", "timeout", "Kernel:"],
    ),
    "plot.loss20: the wrong LOSS20 plotted beside three methods": (
        CheckId.PLOT_LOSS20,
        lab_execution(
            variables={**OTHERS, "LOSS20": STALE},
            figures=_figure({m: v for m, v in STALE_CURVES.items() if m != "LOSS_BGD"}),
        ),
        _graded,
        ["Your LOSS20 is plotted", "its batch-20 line", "does not show the batch-20"],
    ),
    "plot.all_methods: a figure short of one method": (
        CheckId.PLOT_ALL_METHODS,
        lab_execution(figures=_figure({m: WANT[m] for m in METHODS if m != "LOSS_BGD"})),
        _graded,
        ["all five methods", "shows 4 of 5", "missing:"],
    ),
    "plot.legend: no legend": (
        CheckId.PLOT_LEGEND,
        lab_execution(figures=[Figure(cell=2, axes=[comparison_axes(WANT, legend=False)])]),
        _graded,
        ["no legend", "plt.legend()"],
    ),
    "integrity.seed: the re-run did not follow the seed": (
        CheckId.INTEGRITY_SEED,
        lab_execution(),
        _rerun(follows=False),
        ["typed in", "flagged", "hard_coded", "did not change", "secret seed"],
    ),
    # the literals' note on the shown LOSS20 check is there whatever the re-run found (its
    # "typed in" is the literal scan's, not the re-run's verdict)
    "integrity.seed: the re-run did not follow the seed, the numbers pasted in as literals": (
        CheckId.INTEGRITY_SEED,
        lab_execution(),
        _rerun(follows=False, source=f"# it printed {WANT['LOSS20']}"),
        ["flagged", "hard_coded", "did not change", "secret seed", "LOSS20 follows"],
    ),
}


def _strings(value: Any) -> Iterator[str]:
    """Every text in a JSON document."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _plain(text: str) -> str:
    """What a reader reads: tags and entities, Markdown escapes and spacing undone."""
    text = re.sub(r"<style>.*?</style>", " ", text, flags=re.DOTALL)
    text = html.unescape(re.sub(r"<[^>]+>", " ", text))
    text = re.sub(r"\\([\\`*_{}\[\]()#+\-.!=~|<>&:@/])", r"\1", text)
    return " ".join(text.split()).lower()


def learner_texts(result: GradeResult) -> dict[str, str]:
    """Every learner-facing view of `result` (nothing released), as plain text."""
    full = gradescope_json(result)
    shown_tests = [t for t in full["tests"] if t["visibility"] == "visible"]
    view = learner_view(result).result
    return {
        "feedback page": feedback_html(result),
        "results.json, learner copy": "\n".join(_strings(gradescope_json(view))),
        "results.json, what Gradescope shows": "\n".join(
            _strings({"output": full["output"], "tests": shown_tests})
        ),
        "service comment": _comment(result),
        "xqueue msg": message_html(result),
        "coursera text": text_feedback(result),
        "coursera page": html_feedback(result),
        "learner view": json.dumps(
            view.model_dump(include={"checks", "diagnosis", "mistake", "integrity", "status"})
        ),
    }


def _sentences(message: str) -> list[str]:
    pieces = re.split(r"(?<=[.:;])\s+|,\s+", message)
    return [piece.strip(" .;:") for piece in pieces if len(piece.strip(" .;:")) >= 25]


@pytest.mark.parametrize("visibility", ["hidden", "after_due_date"])
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_no_learner_view_tells_a_held_back_checks_verdict(scenario, visibility):
    check_id, execution, grade, verdict_words = SCENARIOS[scenario]
    rubric = rubric_holding(check_id, visibility)
    result = grade(execution, rubric)
    held = next(c for c in result.checks if c.id == check_id)
    assert not held.passed and held.visibility == visibility
    # the same notebook with every check shown does say it (the words are the right ones)
    told = learner_texts(grade(execution, rubric_holding(check_id)))
    assert any(_plain(w) in _plain(told["feedback page"]) for w in verdict_words), scenario

    said = [held.message, held.name, held.id, *_sentences(held.message), *verdict_words]
    if held.diagnosis not in {c.diagnosis for c in result.checks if c.visibility == "visible"}:
        said.append(held.diagnosis)  # its mistake id, unless a shown check found it too
    for view, text in learner_texts(result).items():
        plain = _plain(text)
        leaks = [s for s in said if _plain(s) in plain]
        assert not leaks, f"{view} of {scenario} tells {leaks}"
    assert learner_view(result, ALWAYS_SHOWN).withheld >= 1


def test_checks_shown_together_may_tell_each_others_findings():
    """The rich wording stays wherever the learner sees both checks at once."""

    def plotted(**visibility: str) -> str:
        result = evaluate(STALE_EVERYWHERE, rubric_with(**visibility))
        return next(c.message for c in result.checks if c.id == CheckId.PLOT_LOSS20)

    assert "batch-size-10" in plotted()
    both = "after_due_date"
    assert "batch-size-10" in plotted(**{"loss20.values": both, "plot.loss20": both})
    assert "batch-size-10" in plotted(**{"plot.loss20": "hidden"})  # never read by a learner
    assert "batch-size-10" not in plotted(**{"loss20.values": both})


def test_a_plotted_answer_is_not_told_to_be_plotted_while_its_values_are_held_back():
    """The learner plotted LOSS20 (batch-10 numbers): with loss20.values held back, the plot
    check neither says why the line is off nor tells them to plot LOSS20, which they did."""
    result = evaluate(STALE_EVERYWHERE, rubric_with(**{"loss20.values": "hidden"}))
    plotted = next(c for c in result.checks if c.id == CheckId.PLOT_LOSS20)
    assert not plotted.passed
    assert plotted.message == "None of the plotted lines shows the expected batch-20 losses."
