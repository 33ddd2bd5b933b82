"""Session-wide fixtures: what several test modules need graded, graded once."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys

import pytest

from grader.models import GradeResult
from tests.helpers import SUBMISSIONS, GradedSamples, learner_samples


@pytest.fixture(scope="session")
def graded_samples(tmp_path_factory) -> GradedSamples:
    work = tmp_path_factory.mktemp("graded-samples")
    folder, out = work / "labs", work / "reports"
    for sample in learner_samples():
        target = folder / sample["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SUBMISSIONS / sample["path"], target)
    command = [sys.executable, "-m", "grader.cli", "grade", str(folder), "--out", str(out)]
    command += ["--jobs", "2", "--cell-timeout", "20", "--timeout", "180"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1500)
    db = sqlite3.connect(out / "gradebook.sqlite")
    rows = db.execute("SELECT submission, result FROM submissions").fetchall()
    db.close()
    results = {f"{sub}.ipynb": GradeResult.model_validate_json(text) for sub, text in rows}
    return GradedSamples(folder, out, done.returncode, done.stdout + done.stderr, results)
