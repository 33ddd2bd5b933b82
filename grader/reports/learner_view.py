"""What a learner may see of a grade: the checks shown to them now, and nothing that gives
the others away.

Instructors mark checks `hidden`, `after_due_date` or `after_published` in the rubric
(Gradescope's names). Every learner-facing view (the feedback page, the pytest plugin's
items and summary, the top-level text of results.json, the service's comment for the LMS)
is drawn from `learner_view(result, reveal).result`: a copy of the grade that holds only
the checks in `reveal`, their points as its score, and nothing computed from the others.
"Nothing computed from the others" is the point: the headline, the mistake id, the
integrity verdict, the loss curves, the failing cells, the kernel's fate (the status line)
and the graded variable's name all depend on particular checks, and each is kept only while
those checks are shown. The shown checks' own messages tell another check's verdict only
while that one is shown with them: `grader.grading.checks` words them for the rubric's
visibilities; the secret-seed re-run's check, worded by the pipeline, is reworded here, and
the pipeline's note on LOSS20's check about literals is the same whatever the re-run found.
So a learner whose hidden check fails sees exactly what one whose hidden check passes sees,
and never "all checks passed" above a lower score.

Instructors' views (the gradebook, the class summary) use the full result.
"""

from __future__ import annotations

from dataclasses import dataclass

from grader.models import ALWAYS_SHOWN, CheckId, CheckResult, GradeResult, Reveal

ALL_SHOWN_PASSED = "Every check shown here passed."
# The secret-seed re-run's check says whether LOSS20 matched for the rubric's seed (it re-runs
# only then): while loss20.values is held back it gives its verdict and no more.
RERUN_SAYS = {
    True: "Re-run with another seed: nothing to flag.",
    False: "Re-run with another seed: the numbers look typed in or copied rather than "
    "computed by the notebook.",
}
# The order in which a failing check becomes the headline (as grading.checks picks it).
HEADLINE_ORDER = (CheckId.LOSS20_VALUES, CheckId.LOSS20_PRESENT, CheckId.NOTEBOOK_RUNS)


@dataclass(frozen=True)
class LearnerView:
    """A grade as a learner may see it now."""

    result: GradeResult  # only the checks shown; score and max_score are theirs
    withheld: int = 0  # checks graded but not shown (yet)
    withheld_points: float = 0.0  # their max points

    @property
    def complete(self) -> bool:
        """Every check is shown: the score is the grade."""
        return self.withheld == 0


def _headline(shown: list[CheckResult]) -> str:
    """The first thing to fix, chosen among the shown checks only."""
    for check_id in HEADLINE_ORDER:
        failed = next((c for c in shown if c.id == check_id and not c.passed), None)
        if failed is not None:
            return failed.message
    failed = next((c for c in shown if not c.passed), None)
    if failed is not None:
        return failed.message
    return ALL_SHOWN_PASSED if shown else ""


def _reworded(check: CheckResult, held_ids: set[str]) -> CheckResult:
    """A shown check as a learner may read it while the checks `held_ids` are not shown."""
    if check.id == CheckId.INTEGRITY_SEED and CheckId.LOSS20_VALUES in held_ids:
        return check.model_copy(update={"message": RERUN_SAYS[check.passed]})
    return check


def learner_view(result: GradeResult, reveal: Reveal = ALWAYS_SHOWN) -> LearnerView:
    """`result` with the checks whose visibility is not in `reveal` taken out (see above)."""
    held = [c for c in result.checks if c.visibility not in reveal]
    if not held:
        return LearnerView(result)
    held_ids = {c.id for c in held}
    shown = [_reworded(c, held_ids) for c in result.checks if c.visibility in reveal]

    def open_(*check_ids: str) -> bool:
        """None of these checks is withheld (shown, or not part of this rubric)."""
        return not held_ids.intersection(check_ids)

    not_graded = bool(result.error) and result.diagnosis in ("", result.error)
    mistakes = {c.diagnosis for c in shown if c.diagnosis}
    # the picture shows the graded list (what it holds) by its name, or "no LOSS20 found"
    curves = open_(CheckId.LOSS20_VALUES, CheckId.LOSS20_PRESENT)
    # "timeout"/"crashed" of a graded notebook is the kernel's fate: the runs check's finding
    status = result.status
    if not open_(CheckId.NOTEBOOK_RUNS) and not result.error and status in ("timeout", "crashed"):
        status = "graded"
    redacted = result.model_copy(
        update={
            "checks": shown,
            "status": status,
            "score": round(sum(c.points for c in shown), 4),
            "max_score": round(sum(c.max_points for c in shown), 4),
            "diagnosis": result.diagnosis if not_graded else _headline(shown),
            "mistake": result.mistake if result.mistake in mistakes else "",
            "integrity": (
                result.integrity
                if open_(CheckId.INTEGRITY_SEED, CheckId.LOSS20_VALUES)
                else "not_checked"
            ),
            "answer_name": result.answer_name if open_(CheckId.LOSS20_PRESENT) else None,
            "learner_curves": result.learner_curves if curves else [],
            "reference_curves": result.reference_curves if curves else [],
            # what the kernel left (variables, figures) is not for learners' views
            "execution": (
                result.execution.model_copy(update={"variables": {}, "figures": []})
                if result.execution is not None and open_(CheckId.NOTEBOOK_RUNS)
                else None
            ),
        }
    )
    return LearnerView(
        redacted,
        withheld=len(held),
        withheld_points=round(sum(c.max_points for c in held), 4),
    )
