"""--integrity: a second run with a secret seed tells computed answers from typed-in ones.

Every correct sample must pass it; every forgery in the hostile corpus whose manifest entry
names `integrity_rerun` must end with that verdict (flagged), through the instructors' CLI.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys

import pytest

from grader.grading.integrity import derive_seed
from grader.models import GradeResult
from tests.helpers import MANIFEST, SUBMISSIONS

pytestmark = pytest.mark.slow

CORRECT = [s for s in MANIFEST if s["path"].startswith("correct/")]
FORGERIES = [s for s in MANIFEST if "integrity_rerun" in s and "generate" not in s]


@pytest.fixture(scope="module")
def integrity_run(tmp_path_factory) -> dict[str, GradeResult]:
    if shutil.which("bwrap") is None and FORGERIES:
        pytest.skip("the forgery samples run only inside the bubblewrap sandbox")
    work = tmp_path_factory.mktemp("integrity")
    folder, out = work / "in", work / "out"
    for sample in CORRECT + FORGERIES:
        target = folder / sample["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SUBMISSIONS / sample["path"], target)
    command = [sys.executable, "-m", "grader.cli", "grade", str(folder), "--out", str(out)]
    command += ["--jobs", "2", "--integrity", "--cell-timeout", "30", "--timeout", "120"]
    env = {**os.environ, "MBGD_SECRET_SEED": "918273"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=1200, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    with sqlite3.connect(out / "gradebook.sqlite") as db:
        rows = db.execute("SELECT submission, result FROM submissions").fetchall()
    return {f"{sub}.ipynb": GradeResult.model_validate_json(text) for sub, text in rows}


@pytest.mark.parametrize("sample", CORRECT, ids=lambda s: s["path"])
def test_correct_samples_pass_the_secret_seed(integrity_run, sample):
    result = integrity_run[sample["path"]]
    check = next(c for c in result.checks if c.id == "integrity.seed")
    assert check.passed, check.message
    assert result.integrity == "passed"
    assert result.score == result.max_score == 10
    assert result.diagnosis.startswith("Everything matches")


@pytest.mark.parametrize("sample", FORGERIES, ids=lambda s: s["path"])
def test_forgeries_are_flagged(integrity_run, sample):
    result = integrity_run[sample["path"]]
    assert result.integrity == sample["integrity_rerun"], result.diagnosis
    check = next(c for c in result.checks if c.id == "integrity.seed")
    assert not check.passed and check.diagnosis == "hard_coded"
    assert result.mistake == "hard_coded"
    assert "literal" in result.diagnosis or "seed" in result.diagnosis


def test_the_secret_seed_never_reaches_a_learner(integrity_run):
    for path, result in integrity_run.items():
        sha = hashlib.sha256((SUBMISSIONS / path).read_bytes()).hexdigest()
        seed = str(derive_seed("918273", sha, avoid={1}))  # this notebook's own seed
        text = result.model_dump_json()
        assert "918273" not in text and seed not in text
