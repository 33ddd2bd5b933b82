"""Issue 16: a kernel forked from a warm parent that ran the lab's own first cells gives the
same Execution, field by field, as running every cell (`--no-reuse`), for every sample.

The session's shared CLI run (`graded_samples`, reuse on by default) is compared with one more
CLI run over the samples that reused a prefix there, with `--no-reuse`. Samples that reused
nothing ran every cell both times, so they are not run again.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from grader.execution.prefix import match
from grader.models import GradeResult
from tests.helpers import SUBMISSIONS, GradedSamples, comparable, lab_samples

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def without_reuse(graded_samples: GradedSamples, tmp_path_factory) -> dict[str, GradeResult]:
    """The samples that reused a prefix in the shared run, graded again with --no-reuse."""
    work = tmp_path_factory.mktemp("no-reuse")
    folder, out = work / "labs", work / "reports"
    for path, result in graded_samples.results.items():
        if result.execution is not None and result.execution.reused_cells:
            target = folder / path
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(graded_samples.folder / path, target)
    command = [sys.executable, "-m", "grader.cli", "grade", str(folder), "--out", str(out)]
    command += ["--jobs", "2", "--cell-timeout", "20", "--timeout", "180", "--no-reuse"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    db = sqlite3.connect(out / "gradebook.sqlite")
    rows = db.execute("SELECT submission, result FROM submissions").fetchall()
    db.close()
    return {f"{sub}.ipynb": GradeResult.model_validate_json(text) for sub, text in rows}


def _code_sources(path: Path) -> list[str]:
    nb = nbformat.read(path, as_version=4)
    return [str(c.source) for c in nb.cells if c.cell_type == "code" and str(c.source).strip()]


def test_every_sample_that_could_reuse_did(graded_samples: GradedSamples) -> None:
    """A sample whose first cells are a known lab prefix got a forked start, and exactly those
    cells were reused; one whose cells differ early (seed, noise) ran everything."""
    for sample in lab_samples():
        result = graded_samples.results[sample["path"]]
        if result.execution is None or result.execution.fate == "not_started":
            continue
        nb = nbformat.read(SUBMISSIONS / sample["path"], as_version=4)
        indices = [
            i for i, c in enumerate(nb.cells) if c.cell_type == "code" and str(c.source).strip()
        ]
        prefix = match(_code_sources(SUBMISSIONS / sample["path"]))
        want = indices[: len(prefix.cells)] if prefix else []
        assert result.execution.reused_cells == want, sample["path"]
    results = graded_samples.results.values()
    reused = [r for r in results if r.execution and r.execution.reused_cells]
    assert len(reused) >= 20  # the samples are the lab plus an answer: most reuse


def test_reuse_changes_nothing_but_timing(
    graded_samples: GradedSamples, without_reuse: dict[str, GradeResult]
) -> None:
    assert without_reuse, "no sample reused a prefix"
    for path, full in without_reuse.items():
        reused = graded_samples.results[path]
        assert full.execution is not None and reused.execution is not None
        assert not full.execution.reused_cells
        assert comparable(reused.execution) == comparable(full.execution), path
        # and so is the verdict built from it
        skip = {"seconds", "execution"}
        assert reused.model_dump(exclude=skip) == full.model_dump(exclude=skip), path


def test_the_reused_cells_are_named_in_results_and_feedback(graded_samples: GradedSamples) -> None:
    path = "correct/loss20.ipynb"
    reused = graded_samples.results[path].execution
    assert reused is not None and reused.reused_cells
    report = graded_samples.report(path)
    assert report["extra_data"]["reused_cells"] == reused.reused_cells
    page = (graded_samples.out / "correct" / "loss20" / "feedback.html").read_text()
    assert f"{len(reused.reused_cells)} of the lab's own cells" in page
