"""Session-wide fixtures: what several test modules need graded, graded once."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from grader.models import GradeResult
from tests import manifest

LAB_SAMPLE_FOLDERS = ("correct/", "mistakes/", "broken/")
# Hostile samples a learner could plausibly hand in: the learners' door is tested on them too.
HOSTILE_FOR_LEARNERS = (
    "hostile/xss_labels.ipynb",
    "hostile/hard_coded.ipynb",
    "hostile/nan_loss20.ipynb",
    "hostile/zip_notebook.ipynb",
    "hostile/invalid_utf8.ipynb",
)


@dataclass
class GradedSamples:
    """`learner_samples()` graded by `mbgd-grader grade` (the instructors' door), once."""

    folder: Path  # the copies that were graded
    out: Path  # the CLI's output folder
    returncode: int
    log: str
    results: dict[str, GradeResult]  # manifest path -> result

    def report(self, path: str) -> dict:
        """results.json of one sample, as the CLI wrote it."""
        return json.loads((self.out / path.removesuffix(".ipynb") / "results.json").read_text())


def lab_samples() -> list[dict]:
    return [s for s in manifest.SAMPLES if s["path"].startswith(LAB_SAMPLE_FOLDERS)]


def learner_samples() -> list[dict]:
    """What the shared CLI run grades: the lab samples plus the learner-like hostile ones."""
    return lab_samples() + [s for s in manifest.SAMPLES if s["path"] in HOSTILE_FOR_LEARNERS]


@pytest.fixture(scope="session")
def graded_samples(tmp_path_factory) -> GradedSamples:
    work = tmp_path_factory.mktemp("graded-samples")
    folder, out = work / "labs", work / "reports"
    for sample in learner_samples():
        target = folder / sample["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(manifest.SUBMISSIONS / sample["path"], target)
    command = [sys.executable, "-m", "grader.cli", "grade", str(folder), "--out", str(out)]
    command += ["--jobs", "2", "--cell-timeout", "20", "--timeout", "180"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1500)
    db = sqlite3.connect(out / "gradebook.sqlite")
    rows = db.execute("SELECT submission, result FROM submissions").fetchall()
    db.close()
    results = {f"{sub}.ipynb": GradeResult.model_validate_json(text) for sub, text in rows}
    return GradedSamples(folder, out, done.returncode, done.stdout + done.stderr, results)
