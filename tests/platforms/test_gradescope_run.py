"""The Gradescope autograder as Gradescope runs it: the exported zip unpacked into
/autograder/source, `run_autograder` copied to /autograder, the wheel installed by pip at
/opt/mbgd (setup.sh's venv), and one learner upload per run in /autograder/submission. Each
run is its own mount namespace (bubblewrap) with a temporary folder bound at /autograder, as
root like Gradescope's harness; the grader's own sandbox nests inside it.

Each upload is graded once (a module fixture, all four at once) and results.json is checked
against Gradescope's documented schema and the verdicts submissions/MANIFEST.toml records.
"""

from __future__ import annotations

import html
import json
import os
import shutil
import subprocess
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field

from tests.helpers import (
    MANIFEST,
    SUBMISSIONS,
    cli,
    install_for_real,
    mountpoints,
    system_python,
    tree_memory_peak_mb,
    verdict_holds,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap (bwrap)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="Gradescope runs the autograder as root"),
]

SOLVED = "correct/loss20.ipynb"
MISTAKE = "mistakes/stale_loader.ipynb"
GRADESCOPE_DEFAULT_MB = 768

# -- Gradescope's results.json, from its "Autograder Specifications" (every documented field;
# -- anything else is an error) --------------------------------------------------------------

Visibility = Literal["hidden", "after_due_date", "after_published", "visible"]
Format = Literal["text", "html", "simple_format", "md", "ansi"]


class GradescopeTest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    score: float | None = None
    max_score: float | None = None
    status: Literal["passed", "failed"] | None = None
    name: str | None = None
    name_format: Format | None = None
    number: str | None = None
    output: str | None = None
    output_format: Format | None = None
    tags: list[str] | None = None
    visibility: Visibility | None = None
    extra_data: dict | None = None


class GradescopeResults(BaseModel):
    model_config = ConfigDict(extra="forbid")
    score: float | None = None
    execution_time: float | None = Field(default=None, ge=0)
    output: str | None = None
    output_format: Format | None = None
    test_output_format: Format | None = None
    test_name_format: Format | None = None
    visibility: Visibility | None = None
    stdout_visibility: Visibility | None = None
    extra_data: dict | None = None
    tests: list[GradescopeTest] | None = None
    leaderboard: list[dict] | None = None


METADATA = {  # the shape of /autograder/submission_metadata.json (Gradescope's docs)
    "id": 123456,
    "created_at": "2026-11-30T14:22:32.365935-07:00",
    "assignment": {"id": 25828, "title": "Mini-Batch Gradient Descent", "total_points": "10.0"},
    "submission_method": "upload",
    "users": [{"email": "learner@example.com", "id": 1234, "name": "A Learner"}],
    "previous_submissions": [],
}

UPLOADS: dict[str, dict[str, Path | bytes]] = {
    "solved": {"lab.ipynb": SUBMISSIONS / SOLVED},
    "mistake": {"Mini-Batch GD (1).ipynb": SUBMISSIONS / MISTAKE},
    "script": {"lab.py": b"LOSS20 = []\n"},
    "two notebooks": {
        "lab.ipynb": SUBMISSIONS / SOLVED,
        "old/lab.ipynb": SUBMISSIONS / MISTAKE,
        ".ipynb_checkpoints/lab-checkpoint.ipynb": SUBMISSIONS / SOLVED,  # hidden: not counted
    },
}


@dataclass
class Run:
    code: int
    log: str
    results: dict
    peak_mb: int


def _autograder_root(work: Path, source: Path, files: dict[str, Path | bytes]) -> Path:
    """/autograder as Gradescope's image and harness lay it out for one submission."""
    root = work / "autograder"
    shutil.copytree(source, root / "source", symlinks=True)
    shutil.copy2(source / "run_autograder", root / "run_autograder")
    (root / "results").mkdir()
    (root / "submission_metadata.json").write_text(json.dumps(METADATA))
    for name, content in files.items():
        target = root / "submission" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            shutil.copyfile(content, target)
    (root / "submission").mkdir(exist_ok=True)
    return root


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Run]:
    work = tmp_path_factory.mktemp("gradescope")
    done = subprocess.run(
        [*cli(), "export", "gradescope", "--out", str(work / "autograder.zip")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    source = work / "source"
    with zipfile.ZipFile(work / "autograder.zip") as archive:
        archive.extractall(source)
        for info in archive.infolist():
            os.chmod(source / info.filename, (info.external_attr >> 16) & 0o777)
    (wheel,) = source.glob("*.whl")
    venv = work / "opt-mbgd"
    install_for_real(wheel, venv, python=system_python())  # setup.sh: the image's python3
    started: dict[str, tuple[subprocess.Popen, Path]] = {}
    with mountpoints("/autograder", "/opt/mbgd"):
        for path in ("/autograder", "/opt/mbgd"):
            Path(path).mkdir(exist_ok=True)
        for case, files in UPLOADS.items():
            root = _autograder_root(work / case.replace(" ", "-"), source, files)
            log = root.parent / "stdout"
            argv = ["bwrap", "--dev-bind", "/", "/", "--bind", str(root), "/autograder"]
            argv += ["--bind", str(venv), "/opt/mbgd", "--die-with-parent", "--chdir"]
            argv += ["/autograder", "--", "/autograder/run_autograder"]
            with log.open("wb") as out:
                proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
            started[case] = (proc, root)
        peak = tree_memory_peak_mb(started["solved"][0], every=0.25)
        results = {}
        for case, (proc, root) in started.items():
            code = proc.wait(timeout=600)
            text = (root.parent / "stdout").read_text()
            data = json.loads((root / "results" / "results.json").read_text())
            results[case] = Run(code, text, data, peak() if case == "solved" else 0)
    return results


@pytest.mark.parametrize("case", list(UPLOADS))
def test_every_upload_gets_a_results_json_in_gradescopes_schema(
    runs: dict[str, Run], case: str
) -> None:
    run = runs[case]
    assert run.code == 0, run.log
    GradescopeResults.model_validate(run.results)
    data = run.results
    assert data["tests"], "one test per check of the rubric"
    assert data["score"] == pytest.approx(sum(t["score"] for t in data["tests"]))
    assert data["extra_data"]["max_score"] == sum(t["max_score"] for t in data["tests"])
    assert "Gradescope submission 123456" in run.log  # submission_metadata.json was read


@pytest.mark.parametrize(("case", "sample_path"), [("solved", SOLVED), ("mistake", MISTAKE)])
def test_a_notebook_gets_the_verdicts_the_grader_gives_it(
    runs: dict[str, Run], case: str, sample_path: str
) -> None:
    sample = next(s for s in MANIFEST if s["path"] == sample_path)
    data = runs[case].results
    assert data["extra_data"]["status"] == sample["status"]
    assert data["score"] == sample["score"]
    assert data["extra_data"]["mistake"] == sample["diagnosis"]
    assert data["extra_data"]["answer_name"] == sample["answer_name"]
    verdicts = {t["extra_data"]["id"]: t for t in data["tests"]}
    for check, verdict in sample["checks"].items():
        test = verdicts[check]
        passed = test["status"] == "passed"
        assert verdict_holds(verdict, passed, test["score"], test["max_score"]), (check, test)
    assert all(t["output_format"] == "md" for t in data["tests"])


def test_the_graders_own_sandbox_nests_inside_the_autograder(runs: dict[str, Run]) -> None:
    assert runs["solved"].results["extra_data"]["sandbox"].startswith("bubblewrap")


def test_the_solved_lab_fits_gradescopes_default_memory(runs: dict[str, Run]) -> None:
    """Harness and kernel together, each shared page counted once (README: what to set)."""
    print(f"peak memory of the solved lab in the autograder layout: {runs['solved'].peak_mb} MB")
    assert 0 < runs["solved"].peak_mb < GRADESCOPE_DEFAULT_MB


@pytest.mark.parametrize(
    ("case", "says"),
    [
        ("script", ["lab.py", "not a notebook", ".ipynb", "File > Download"]),
        ("two notebooks", ["exactly one notebook", "lab.ipynb", "old/lab.ipynb"]),
    ],
)
def test_a_wrong_upload_scores_zero_and_says_what_to_upload(
    runs: dict[str, Run], case: str, says: list[str]
) -> None:
    data = runs[case].results
    assert data["score"] == 0
    assert all(t["score"] == 0 and t["status"] == "failed" for t in data["tests"])
    shown = html.unescape(data["output"].replace("\\", ""))  # Markdown's escapes undone
    for words in says:
        assert words in shown, (words, shown)
    assert "checkpoint" not in shown
