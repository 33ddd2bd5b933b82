"""Per-check visibility in what learners see (`grader.reports.learner_view` and the views drawn
from it): a check left out gives nothing away.

Grades come from the real checks (`grader.grading.checks.evaluate`) on hand-built Executions
(no kernels). The central test grades two notebooks that differ only in the outcome of a
check the rubric withholds, and asserts that every learner-facing view of the two is the
same: the feedback page, the top-level text of results.json, the pytest plugin's lines and
the service's comment.
"""

from __future__ import annotations

import html
import re

import pytest

from grader.grading.checks import evaluate
from grader.grading.rubric import default_rubric_text, parse_rubric
from grader.models import GradeResult
from grader.platforms.coursera import text_feedback
from grader.reports.feedback import feedback_html, gradescope_json
from grader.reports.learner_view import ALL_SHOWN_PASSED, learner_view
from grader.service.dispatcher import _comment
from grader.xqueue.feedback import message_html
from reference import expected
from tests.helpers import PAIRS, lab_execution, rubric_with

WANT = expected()


def correct() -> GradeResult:
    return evaluate(lab_execution(), RUBRIC_PLAIN)


RUBRIC_PLAIN = parse_rubric(default_rubric_text())


def _page_text(page: str) -> str:
    page = re.sub(r"Generated: <b>[^<]*</b>", "", page)  # the clock
    return page


def learner_outputs(result: GradeResult) -> dict[str, str]:
    """Everything a learner is shown of a grade, as text."""
    view = learner_view(result)
    shown = view.result
    data = gradescope_json(result, plot=False)
    return {
        "page": _page_text(feedback_html(result, plot=False)),
        "gradescope_output": data["output"],
        "shown_tests": repr([t for t in data["tests"] if t["visibility"] == "visible"]),
        "comment": _comment(result),
        "xqueue_msg": message_html(result),
        "coursera_text": text_feedback(result),
        "view": repr((shown.score, shown.max_score, shown.diagnosis, shown.mistake, view.withheld)),
        "integrity": shown.integrity,
        "answer": repr(shown.answer_name),
    }


@pytest.mark.parametrize("check_id", sorted(PAIRS))
@pytest.mark.parametrize("visibility", ["hidden", "after_due_date", "after_published"])
def test_a_withheld_check_changes_nothing_a_learner_sees(check_id, visibility):
    rubric = rubric_with(**{check_id: visibility})
    passing, failing = (evaluate(execution, rubric) for execution in PAIRS[check_id])
    # the pair really differs in that check, and only in it
    assert all(c.passed for c in passing.checks)
    assert [c.id for c in failing.checks if not c.passed] == [check_id]
    assert failing.score == passing.score - rubric.check(check_id).points
    held = next(c for c in failing.checks if c.id == check_id)
    assert held.visibility == visibility

    seen_passing, seen_failing = learner_outputs(passing), learner_outputs(failing)
    for view in seen_passing:
        assert seen_passing[view] == seen_failing[view], view
    # and what is said is honest: no total, no "all passed", how many checks are not shown
    page = html.unescape(re.sub(r"<[^>]+>", " ", seen_failing["page"]))
    assert "All checks passed" not in page and "Well done" not in page
    assert "Every check shown here passed" in page
    assert "1 more check" in page and "not your final score" in page
    assert held.name not in page and check_id not in page
    points_shown = rubric.max_score - held.max_points
    assert f"{points_shown:g} / {points_shown:g} points shown" in " ".join(page.split())
    assert "not your final score" in seen_failing["gradescope_output"]
    for text in (seen_failing["xqueue_msg"], seen_failing["coursera_text"]):
        assert "1 more check" in text and "not your final score" in text
        assert held.name not in text and check_id not in text
    assert (
        f"**Points on the checks shown: {points_shown:g} / {points_shown:g}.**"
        in (seen_failing["gradescope_output"])
    )
    assert "on the checks shown (1 more check not shown)" in seen_failing["comment"]
    assert ALL_SHOWN_PASSED in seen_failing["comment"]


def test_the_instructors_record_keeps_every_check_with_its_visibility():
    rubric = rubric_with(**{"loss20.values": "hidden", "plot.legend": "after_due_date"})
    failing = evaluate(PAIRS["loss20.values"][1], rubric)
    data = gradescope_json(failing, plot=False)
    assert {t["extra_data"]["id"]: t["visibility"] for t in data["tests"]} == {
        c.id: c.visibility for c in rubric.checks
    }
    assert data["score"] == failing.score < rubric.max_score  # the grade is the whole grade
    values = next(t for t in data["tests"] if t["extra_data"]["id"] == "loss20.values")
    assert values["status"] == "failed" and "batch size 10" in values["output"]
    # the loss table goes with the values check, so it is hidden with it
    assert "expected" in values["output"] and "expected" not in data["output"]
    assert failing.diagnosis in [c.message for c in failing.checks]
    assert "batch" not in data["output"]


def test_revealing_shows_the_check_and_the_whole_score_again():
    rubric = rubric_with(**{"loss20.values": "after_due_date"})
    failing = evaluate(PAIRS["loss20.values"][1], rubric)
    before = learner_view(failing, rubric.revealed())
    assert before.withheld == 1 and before.withheld_points == 5
    assert before.result.learner_curves == [] and before.result.reference_curves == []
    due = parse_rubric(default_rubric_text() + "\n[release]\nafter_due_date = true\n")
    after = learner_view(failing, due.revealed())
    assert after.complete and after.result == failing
    page = feedback_html(failing, reveal=due.revealed(), plot=False)
    assert "batch size 10" in html.unescape(page) and "not your final score" not in page
    # hidden stays hidden whatever is released
    hidden = evaluate(PAIRS["loss20.values"][1], rubric_with(**{"loss20.values": "hidden"}))
    everything = frozenset({"visible", "after_due_date", "after_published"})
    assert learner_view(hidden, everything).withheld == 1


def test_a_shown_failure_is_still_the_headline():
    rubric = rubric_with(**{"plot.legend": "hidden"})
    failing = evaluate(PAIRS["loss20.values"][1], rubric)
    view = learner_view(failing)
    values = next(c for c in failing.checks if c.id == "loss20.values")
    assert view.result.diagnosis == values.message == failing.diagnosis
    assert view.result.mistake == "batch_size_10"
    assert view.result.learner_curves  # the values check is shown: so is the picture's data
    assert "batch size 10" in gradescope_json(failing, plot=False)["output"]


def test_a_result_with_every_check_shown_is_left_as_it_is():
    result = correct()
    assert learner_view(result).result is result
    assert learner_view(result).complete


def test_a_file_that_is_not_a_notebook_keeps_its_reason_and_its_checks_visibility(tmp_path):
    """The pipeline's "rejected" verdict (no kernel is started for it) carries each check's
    visibility too; learners read why it was not graded, and only the checks shown."""
    from grader.pipeline import GradeOptions, grade

    rubric = tmp_path / "rubric.toml"
    anchor = 'id = "loss20.values"\n'
    rubric.write_text(default_rubric_text().replace(anchor, anchor + 'visibility = "hidden"\n'))
    result = grade(
        b"LOSS20 = [1, 2]\n", name="lab.py", options=GradeOptions(rubric_path=str(rubric))
    )
    assert result.status == "rejected"
    assert {c.id: c.visibility for c in result.checks}["loss20.values"] == "hidden"
    view = learner_view(result)
    assert view.withheld == 1 and "loss20.values" not in [c.id for c in view.result.checks]
    assert view.result.error == result.error and view.result.diagnosis == result.diagnosis
    page = html.unescape(feedback_html(result, plot=False))
    assert result.error in page and "loss20.values" not in page
