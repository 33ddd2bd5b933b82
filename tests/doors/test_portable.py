"""The learners' door on the portable path: what Windows and macOS always take (issue 17).

`pytest --mbgd-notebook ... --mbgd-portable` runs the notebooks in the plain kernel of
`grader.execution.portable` (tcp on loopback, no sandbox, no warm pool) even though this
machine could sandbox them. One pytester run grades the solved lab and two mistakes; each is
held to its verdict in submissions/MANIFEST.toml and to the sandboxed verdict the session's
`mbgd-grader grade` run (conftest's `graded_samples`) gave the same file: same points, same
checks, same diagnosis, same graded numbers.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import pytest

from grader import TESTED_TORCH
from grader.execution.portable import PORTABLE
from tests.helpers import MANIFEST, SUBMISSIONS, GradedSamples, verdict_holds

pytestmark = pytest.mark.slow

SAMPLES = (
    "correct/loss20.ipynb",
    "mistakes/stale_loader.ipynb",  # LOSS20 of batch size 10: the values and two plots fail
    "mistakes/plot_missing_batch20.ipynb",  # right LOSS20, the figure misses it
)


@dataclass
class PortableRun:
    ret: int
    output: str
    cases: dict[tuple[str, str], tuple[str, float]]  # (sample, check) -> (outcome, points)
    results: dict[str, dict]  # sample -> results.json the plugin wrote
    feedback: dict[str, str]  # sample -> feedback.html


@pytest.fixture(scope="module")
def portable_run(tmp_path_factory) -> PortableRun:
    where = tmp_path_factory.mktemp("portable")
    for sample in SAMPLES:
        target = where / "labs" / sample
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SUBMISSIONS / sample, target)
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--mbgd-portable"]
    command += [arg for sample in SAMPLES for arg in ("--mbgd-notebook", f"labs/{sample}")]
    command += ["--mbgd-notebook-jobs", "2"]  # several notebooks: no warm pool when portable
    command += ["--mbgd-feedback-dir=fb", f"--junitxml={where / 'junit.xml'}"]
    done = subprocess.run(command, cwd=where, capture_output=True, text=True, timeout=600)
    by_class = {"labs." + s.replace("/", "."): s for s in SAMPLES}
    cases = {}
    for case in ET.parse(where / "junit.xml").getroot().iter("testcase"):
        failed = case.find("failure") is not None or case.find("error") is not None
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        key = (by_class[case.get("classname")], case.get("name"))
        cases[key] = ("failed" if failed else "passed", float(props.get("points", "nan")))
    results, feedback = {}, {}
    for sample in SAMPLES:
        folder = where / "fb" / Path(sample).stem
        results[sample] = json.loads((folder / "results.json").read_text())
        feedback[sample] = (folder / "feedback.html").read_text()
    return PortableRun(done.returncode, done.stdout + done.stderr, cases, results, feedback)


def test_the_portable_path_ran_every_notebook_without_the_sandbox(portable_run) -> None:
    assert portable_run.ret == 1  # some checks fail: not a usage or internal error
    assert "INTERNALERROR" not in portable_run.output
    for sample in SAMPLES:
        extra = portable_run.results[sample]["extra_data"]
        assert extra["sandbox"] == PORTABLE, sample
        assert extra["kernel"] == "ok" and extra["kernel_origin"] == "fresh", sample
        assert f"Ran in: <b>{PORTABLE}</b>" in portable_run.feedback[sample]
    assert portable_run.output.count(f"ran without a sandbox ({PORTABLE})") == 1


def test_portable_verdicts_are_the_manifests(portable_run) -> None:
    manifest = {s["path"]: s for s in MANIFEST}
    for sample in SAMPLES:
        want = manifest[sample]
        result = portable_run.results[sample]
        assert result["score"] == want["score"], sample
        assert result["extra_data"]["answer_name"] == want["answer_name"], sample
        assert result["extra_data"]["mistake"] == want["diagnosis"], sample
        for test in result["tests"]:
            check = test["extra_data"]["id"]
            passed = test["status"] == "passed"
            assert verdict_holds(want["checks"][check], passed, test["score"], test["max_score"]), (
                sample,
                check,
            )
            outcome, points = portable_run.cases[(sample, check)]
            assert outcome == ("passed" if passed else "failed"), (sample, check)
            assert points == test["score"], (sample, check)


def test_portable_verdicts_equal_the_sandboxed_ones(
    portable_run, graded_samples: GradedSamples
) -> None:
    """Same notebook, the instructor's sandboxed run: the same grade, word for word."""
    for sample in SAMPLES:
        portable = portable_run.results[sample]
        sandboxed = graded_samples.report(sample)
        assert sandboxed["extra_data"]["sandbox"] != PORTABLE
        assert portable["score"] == sandboxed["score"], sample
        assert [(t["extra_data"]["id"], t["status"], t["output"]) for t in portable["tests"]] == [
            (t["extra_data"]["id"], t["status"], t["output"]) for t in sandboxed["tests"]
        ], sample
        for key in ("answer_name", "diagnosis", "mistake", "status", "integrity"):
            assert portable["extra_data"][key] == sandboxed["extra_data"][key], (sample, key)


def test_the_tested_torch_gets_no_version_note(portable_run) -> None:
    """This machine runs the tested torch: the verdict names it and adds no note."""
    for sample in SAMPLES:
        extra = portable_run.results[sample]["extra_data"]
        assert extra["torch_version"].split("+")[0] == extra["tested_torch"] == TESTED_TORCH
        assert "course's grader uses torch" not in portable_run.results[sample]["output"]
    assert "course's grader uses torch" not in portable_run.output
