"""Every lab sample in submissions/ (the hostile corpus has its own test) gets the verdict its
manifest states, graded through the instructors' door: real CLI, real kernels, real notebooks."""

from __future__ import annotations

import pytest

from grader.execution.pool import KernelPool
from grader.models import GradeResult
from reference import mistake_info, mistake_variants
from tests.helpers import lab_samples, verdict_holds

SAMPLES = lab_samples()


@pytest.fixture(scope="session")
def graded(graded_samples) -> dict[str, GradeResult]:
    assert graded_samples.returncode == 0, graded_samples.log[-3000:]
    return graded_samples.results


def _ids(sample: dict) -> str:
    return sample["path"]


@pytest.mark.slow
@pytest.mark.parametrize("sample", SAMPLES, ids=_ids)
def test_sample_gets_its_manifest_verdict(graded, sample):
    result = graded[sample["path"]]
    checks = {check.id: check for check in result.checks}
    summary = "; ".join(
        f"{c.id}={'pass' if c.passed else 'fail'}: {c.message}" for c in result.checks
    )
    assert result.status == sample["status"], summary
    for check_id, verdict in sample.get("checks", {}).items():
        assert check_id in checks, check_id
        check = checks[check_id]
        assert verdict_holds(verdict, check.passed, check.points, check.max_points), (
            f"{check_id}: {summary}"
        )
    assert result.score == pytest.approx(sample["score"]), summary
    if sample.get("answer_name"):
        assert result.answer_name == sample["answer_name"]
    if sample.get("diagnosis"):
        assert checks["loss20.values"].diagnosis == sample["diagnosis"], summary
    for check in result.checks:
        assert check.message.strip(), check.id  # every check explains itself
        assert 0 <= check.points <= check.max_points


@pytest.mark.slow
@pytest.mark.skipif(not KernelPool.available(), reason="the warm pool needs bwrap and root")
def test_the_batch_ran_every_notebook_in_a_warm_kernel(graded_samples, graded):
    ran = [p for p, r in graded.items() if r.execution and r.execution.fate != "not_started"]
    assert len(ran) > 20
    assert {graded[path].execution.kernel for path in ran} == {"warm"}
    assert graded_samples.report(ran[0])["extra_data"]["kernel_origin"] == "warm"


@pytest.mark.slow
def test_correct_samples_score_full_marks_and_explain_nothing_wrong(graded):
    correct = [path for path in graded if path.startswith("correct/")]
    assert len(correct) >= 5
    for path in correct:
        result = graded[path]
        assert result.score == result.max_score == 10, path
        assert result.diagnosis.startswith("Everything matches"), path
        assert result.reference_curves and result.learner_curves


@pytest.mark.slow
def test_lab_plot_cell_pasted_unchanged_still_gets_the_plot_checks(graded):
    """plt.plot(LOSS_BGD) with tensors that require grad crashes on current torch: not the
    learner's fault. The probe detaches them and says so."""
    result = graded["correct/lab_plot_cell_unchanged.ipynb"]
    assert all(c.passed for c in result.checks if c.id.startswith("plot."))
    assert result.execution is not None
    assert any("detach" in note for note in result.execution.notes)


@pytest.mark.slow
def test_mistakes_are_named_in_the_headline(graded):
    for sample in SAMPLES:
        if sample.get("diagnosis") and sample["path"].startswith("mistakes/"):
            result = graded[sample["path"]]
            assert result.mistake == sample["diagnosis"], sample["path"]
            values = next(c for c in result.checks if c.id == "loss20.values")
            assert result.diagnosis == values.message, sample["path"]  # the headline is it
            if sample["diagnosis"] in mistake_variants():
                assert mistake_info(sample["diagnosis"]).hint in result.diagnosis


@pytest.mark.slow
def test_not_json_is_rejected_with_a_reason(graded):
    rejected = [r for r in graded.values() if r.status == "rejected"]
    assert rejected
    for result in rejected:
        assert result.score == 0 and result.error
        assert all(not c.passed for c in result.checks)


@pytest.mark.slow
def test_a_crash_mid_notebook_is_named_with_its_error_and_later_cells_still_count(graded):
    result = graded["broken/crash_mid.ipynb"]
    runs = next(c for c in result.checks if c.id == "notebook.runs")
    assert not runs.passed
    assert "NameError" in runs.message and "LOSS_sgd" in runs.message
    assert result.execution is not None
    failed = [cell for cell in result.execution.cells if cell.status == "error"]
    assert len(failed) == 1 and f"cell {failed[0].index} " in runs.message.lower()
    later = [c for c in result.execution.cells if c.index > failed[0].index]
    assert later and all(c.status == "ok" for c in later)


@pytest.mark.slow
def test_the_plots_switch_on_the_same_notebook(graded):
    """The stale-loader notebook as graded (plots judged against the reference), then its
    same Execution under a rubric with `[plots] accept_learner_values = true`."""
    from grader.grading.checks import evaluate
    from grader.grading.rubric import default_rubric_text, parse_rubric

    result = graded["mistakes/stale_loader.ipynb"]
    checks = {c.id: c for c in result.checks}
    assert not checks["plot.loss20"].passed
    assert "shows batch-size-10 numbers" in checks["plot.loss20"].message
    assert result.execution is not None
    lenient = parse_rubric(default_rubric_text() + "\n[plots]\naccept_learner_values = true\n")
    again = evaluate(result.execution, lenient)
    relaxed = {c.id: c for c in again.checks}
    assert relaxed["plot.loss20"].passed and relaxed["plot.all_methods"].passed
    assert not relaxed["loss20.values"].passed  # the values are still wrong
    gained = sum(relaxed[i].points - checks[i].points for i in ("plot.loss20", "plot.all_methods"))
    assert again.score == result.score + gained > result.score
