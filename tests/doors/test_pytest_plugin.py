"""The learners' door: `pytest --mbgd-notebook ...`, driven with pytester in a real subprocess.

Grading is slow, so one pytester run grades the learner samples of submissions/MANIFEST.toml,
and the session's one `mbgd-grader grade` run over the same files (conftest's
`graded_samples`) is the instructor's verdict to compare with; the tests read the run's
output, its JUnit XML and the CLI's results.json. A second, small run covers the options
(-k, -vv, --mbgd-feedback-dir) on a tiny notebook with bubblewrap hidden from PATH.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import pytest

from tests.helpers import SUBMISSIONS, GradedSamples, learner_samples, markdown_text

pytest_plugins = ["pytester"]

GRADE_TIMEOUT = 1500  # seconds for grading every sample; the infinite-loop sample alone takes 60
SUMMARY = re.compile(r"^mbgd-grader: ([\d.]+)/([\d.]+) points for (\S+)", re.M)
GRADER_INTERNALS = (
    "Traceback (most recent call last)",
    "pytest_plugin.py",
    "CheckFailed",
    "site-packages",
)


def manifest_samples() -> list[dict]:
    """The samples this module grades: the lab samples and the learner-like hostile ones,
    the same files the session's shared CLI run (`graded_samples` in conftest) grades."""
    return learner_samples()


@dataclass
class Case:
    """One JUnit test case: a check of a notebook as pytest reported it."""

    outcome: str  # passed / failed / skipped / error
    text: str = ""  # the failure text, as the learner saw it
    properties: dict[str, str] = field(default_factory=dict)


@dataclass
class PluginRun:
    samples: list[dict]  # the manifest entries that were graded
    output: str
    ret: int
    cases: dict[tuple[str, str], Case]  # (sample path, check id) -> case
    summary: dict[str, tuple[float, float]]  # nodeid of the notebook -> (points, max)
    cli: dict[str, dict]  # sample path -> results.json written by `mbgd-grader grade`
    labs: Path
    cli_returncode: int = 0
    cli_log: str = ""


def parse_junit(xml_path: Path, samples: list[dict]) -> dict[tuple[str, str], Case]:
    by_class = {"labs." + s["path"].replace("/", "."): s["path"] for s in samples}
    cases: dict[tuple[str, str], Case] = {}
    for case in ET.parse(xml_path).getroot().iter("testcase"):
        path = by_class[case.get("classname")]
        outcome, text = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome, text = {"failure": "failed"}.get(tag, tag), node.text or ""
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        cases[(path, case.get("name"))] = Case(outcome, text, props)
    return cases


def grade_every_sample(pytester: pytest.Pytester, graded_samples: GradedSamples) -> PluginRun:
    """One plugin run over every sample; `mbgd-grader grade` graded the same files once for the
    whole session (conftest's `graded_samples`)."""
    labs = pytester.path / "labs"
    for sample in manifest_samples():
        target = labs / sample["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SUBMISSIONS / sample["path"], target)
    result = pytester.runpytest_subprocess(
        "--mbgd-notebook",
        "labs",
        "--mbgd-notebook-jobs",
        "2",
        "-p",
        "no:cacheprovider",
        f"--junitxml={pytester.path / 'junit.xml'}",
        timeout=GRADE_TIMEOUT,
    )
    return load_run(pytester.path, result.ret, graded_samples)


def load_run(where: Path, ret: int, graded_samples: GradedSamples) -> PluginRun:
    """Read what the run left in `where` (pytest's stdout, the JUnit XML) and the CLI's reports."""
    samples = [s for s in manifest_samples() if (where / "labs" / s["path"]).is_file()]
    output = (where / "stdout").read_text()  # pytester keeps the subprocess's output there
    summary = {m[3]: (float(m[1]), float(m[2])) for m in SUMMARY.finditer(output)}
    reports = {s["path"]: graded_samples.report(s["path"]) for s in samples}
    cases = parse_junit(where / "junit.xml", samples)
    return PluginRun(
        samples=samples,
        output=output,
        ret=ret,
        cases=cases,
        summary=summary,
        cli=reports,
        labs=where / "labs",
        cli_returncode=graded_samples.returncode,
        cli_log=graded_samples.log,
    )


@pytest.mark.slow
@pytest.mark.timeout(2 * GRADE_TIMEOUT)
def test_plugin_on_every_sample(pytester, subtests, graded_samples):
    """Grading is slow: one run, then each property as its own subtest."""
    run = grade_every_sample(pytester, graded_samples)
    for check in (
        every_check_of_every_sample_is_one_item,
        correct_samples_pass_every_item,
        mistakes_fail_the_right_items_with_their_diagnosis,
        value_mistakes_name_the_first_epoch_that_differs,
        broken_notebook_reports_its_error,
        plugin_points_equal_cli_grade_points,
        feedback_pages_are_written_beside_each_notebook,
    ):
        with subtests.test(check.__name__.replace("_", " ")):
            check(run)


def _samples(run: PluginRun, kind: str) -> list[dict]:
    return [s for s in run.samples if s["path"].startswith(kind + "/")]


def every_check_of_every_sample_is_one_item(run: PluginRun) -> None:
    checks = {t["extra_data"]["id"] for r in run.cli.values() for t in r["tests"]}
    assert {"notebook.runs", "loss20.values", "plot.legend"} <= checks
    for sample in run.samples:
        ids = [check for (path, check) in run.cases if path == sample["path"]]
        assert sorted(ids) == sorted(
            t["extra_data"]["id"] for t in run.cli[sample["path"]]["tests"]
        )
    assert run.ret == 1  # some items failed; not a usage or internal error
    assert "INTERNALERROR" not in run.output


def correct_samples_pass_every_item(run: PluginRun) -> None:
    for sample in _samples(run, "correct"):
        cases = {c: case for (p, c), case in run.cases.items() if p == sample["path"]}
        assert cases and all(case.outcome == "passed" for case in cases.values()), sample["path"]
        points, top = run.summary["labs/" + sample["path"]]
        assert points == top == sample["score"]


def mistakes_fail_the_right_items_with_their_diagnosis(run: PluginRun) -> None:
    for sample in _samples(run, "mistakes") + _samples(run, "broken") + _samples(run, "hostile"):
        tests = {t["extra_data"]["id"]: t for t in run.cli[sample["path"]]["tests"]}
        for check, verdict in sample.get("checks", {}).items():
            case = run.cases[(sample["path"], check)]
            want = "passed" if verdict == "pass" else "failed"
            assert case.outcome == want, (sample["path"], check, case.text)
            if want == "failed":
                # the learner reads the grader's own diagnosis, first, without our internals
                # (results.json holds it as Markdown, then what goes with the check)
                message = markdown_text(tests[check]["output"].split("\n\n")[0])
                said = " ".join(case.text.split())
                assert said.startswith(" ".join(message.split())), (sample["path"], check)
                assert (
                    f"{tests[check]['score']:g}/{tests[check]['max_score']:g} points" in case.text
                )
                assert not any(word in case.text for word in GRADER_INTERNALS), case.text
        headline = run.cli[sample["path"]]["extra_data"]["diagnosis"]
        if sample.get("diagnosis"):  # a known mistake: its explanation reaches the terminal
            assert headline and f"  {headline}\n" in run.output, sample["path"]


def value_mistakes_name_the_first_epoch_that_differs(run: PluginRun) -> None:
    from reference import expected

    want = expected()["LOSS20"]
    for sample in _samples(run, "mistakes"):
        case = run.cases[(sample["path"], "loss20.values")]
        if case.outcome != "failed" or "First difference" not in case.text:
            continue
        epoch = int(re.search(r"epoch (\d+): expected ([\d.e+-]+)", case.text)[1])
        expected_text = re.search(r"expected ([\d.e+-]+),", case.text)[1]
        assert float(expected_text) == pytest.approx(want[epoch], rel=1e-5), sample["path"]
        assert re.search(r"got \S+", case.text), sample["path"]


def broken_notebook_reports_its_error(run: PluginRun) -> None:
    rejected = [s for s in run.samples if s["status"] == "rejected"]
    assert rejected, "the manifest has no rejected sample"
    for sample in rejected:
        error = run.cli[sample["path"]]["extra_data"]["error"]
        assert error
        cases = [case for (p, _), case in run.cases.items() if p == sample["path"]]
        assert cases and all(c.outcome == "failed" and error in c.text for c in cases)
        assert run.summary["labs/" + sample["path"]][0] == 0
        assert re.search(
            rf"mbgd-grader: 0/\S+ points for labs/{re.escape(sample['path'])} \(rejected\)",
            run.output,
        )
    crashed = [s for s in run.samples if s.get("checks", {}).get("notebook.runs") == "fail"]
    for sample in crashed:
        text = run.cases[(sample["path"], "notebook.runs")].text
        assert re.search(r"[Cc]ell \d+", text), text  # names the cell that failed


def plugin_points_equal_cli_grade_points(run: PluginRun) -> None:
    """For every sample: terminal summary == sum of the items' points == `mbgd-grader grade`."""
    samples = run.samples
    assert run.cli_returncode == 0, run.cli_log[-3000:]
    assert len(run.summary) == len(samples)
    for sample in samples:
        cli = run.cli[sample["path"]]
        points, top = run.summary["labs/" + sample["path"]]
        items = [c for (p, _), c in run.cases.items() if p == sample["path"]]
        assert points == pytest.approx(cli["score"]), sample["path"]
        assert top == pytest.approx(cli["extra_data"]["max_score"]), sample["path"]
        assert sum(float(c.properties["points"]) for c in items) == pytest.approx(points)
        assert sum(float(c.properties["max_points"]) for c in items) == pytest.approx(top)


def feedback_pages_are_written_beside_each_notebook(run: PluginRun) -> None:
    for sample in run.samples:
        notebook = run.labs / sample["path"]
        folder = notebook.with_name(notebook.stem + "-feedback")
        page = folder / "feedback.html"
        assert f"feedback page: {page}" in run.output
        assert page.is_file() and "<script" not in page.read_text().lower()
        mine = json.loads((folder / "results.json").read_text())
        assert mine["score"] == run.cli[sample["path"]]["score"]


# --- options, on a tiny notebook -------------------------------------------------------


def _tiny_notebook(path: Path, runs_log: Path | None = None) -> Path:
    """Two cells; with `runs_log` (unsandboxed runs only) each execution appends a line there."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("LOSS20 = [1.0, 2.0, 3.0]"),
        nbformat.v4.new_code_cell("raise RuntimeError('boom in the learner cell')"),
    ]
    if runs_log is not None:
        log = f"with open({str(runs_log)!r}, 'a') as log:\n    log.write('ran\\n')"
        nb.cells.insert(0, nbformat.v4.new_code_cell(log))
    nbformat.write(nb, path)
    return path


@pytest.mark.slow
def test_options_on_a_laptop_without_bubblewrap(pytester, monkeypatch):
    runs_log = pytester.path / "runs.log"
    notebook = _tiny_notebook(pytester.path / "my_lab.ipynb", runs_log)
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))  # no bwrap, no setpriv
    out = pytester.path / "fb"
    result = pytester.runpytest_subprocess(
        "--mbgd-notebook",
        notebook.name,
        "-k",
        "present or values or runs",
        "-vv",
        f"--mbgd-feedback-dir={out}",
        "-p",
        "no:cacheprovider",
        timeout=300,
    )
    text = result.stdout.str()
    result.assert_outcomes(passed=1, failed=2, deselected=3)
    result.stdout.fnmatch_lines(
        [
            "my_lab.ipynb::notebook.runs FAILED*",
            "my_lab.ipynb::loss20.present PASSED*",
            "my_lab.ipynb::loss20.values FAILED*",
            "mbgd-grader: 1/10 points for my_lab.ipynb",
            f"  feedback page: {out / 'my_lab' / 'feedback.html'}",
        ]
    )
    assert (out / "my_lab" / "feedback.html").is_file()
    assert not (pytester.path / "my_lab-feedback").exists()
    assert text.count("ran without a sandbox (portable kernel)") == 1  # said once
    assert "-- details (-vv) --" in text and "boom in the learner cell" in text
    assert "cell 2 raised runtimeerror" in text.lower()
    assert runs_log.read_text() == "ran\n"  # three items, one execution of the notebook


def test_inactive_without_notebook(pytester):
    """No --mbgd-notebook: nothing collected, nothing printed, as if the plugin were off."""
    pytester.makepyfile(test_plain="def test_one():\n    assert True\n")
    _tiny_notebook(pytester.path / "lab.ipynb")
    on = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    off = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:mbgd_grader")
    on.assert_outcomes(passed=1)
    off.assert_outcomes(passed=1)
    assert "mbgd-grader:" not in on.stdout.str()
    assert not list(pytester.path.glob("*-feedback"))
    help_text = pytester.runpytest_subprocess("--help").stdout.str()
    assert "--mbgd-notebook=PATH, --notebook=PATH" in help_text
    assert "--mbgd-feedback-dir=DIR" in help_text and "--mbgd-rubric=FILE" in help_text


def test_usage_errors_are_clear(pytester):
    missing = pytester.runpytest_subprocess("--mbgd-notebook", "nope.ipynb")
    assert missing.ret == pytest.ExitCode.USAGE_ERROR
    missing.stderr.fnmatch_lines(["*--mbgd-notebook nope.ipynb: no such file or folder*"])
    (pytester.path / "empty").mkdir()
    empty = pytester.runpytest_subprocess("--mbgd-notebook", "empty")
    empty.stderr.fnmatch_lines(["*no .ipynb notebook in this folder*"])
    (pytester.path / "bad.toml").write_text("name = 1\n")
    _tiny_notebook(pytester.path / "lab.ipynb")
    bad = pytester.runpytest_subprocess("--mbgd-notebook", "lab.ipynb", "--mbgd-rubric", "bad.toml")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    bad.stderr.fnmatch_lines(["*--mbgd-rubric: rubric is not usable*"])


def test_collect_only_lists_the_checks_without_grading(pytester):
    from grader.grading.rubric import load_rubric

    _tiny_notebook(pytester.path / "lab.ipynb")
    (pytester.path / "more").mkdir()
    _tiny_notebook(pytester.path / "more" / "other.ipynb")
    (pytester.path / "more" / ".ipynb_checkpoints").mkdir()
    _tiny_notebook(pytester.path / "more" / ".ipynb_checkpoints" / "other-checkpoint.ipynb")
    result = pytester.runpytest_subprocess(
        "--mbgd-notebook", "lab.ipynb", "--mbgd-notebook", "more", "--mbgd-notebook-jobs", "2",
        "--collect-only", "-q", "-p", "no:cacheprovider",
    )  # fmt: skip
    ids = [check.id for check in load_rubric().checks]
    lines = result.stdout.lines
    assert [f"lab.ipynb::{i}" for i in ids] + [f"more/other.ipynb::{i}" for i in ids] == [
        line for line in lines if "::" in line
    ]
    assert not list(pytester.path.rglob("*-feedback"))  # nothing was graded
    assert not SUMMARY.search(result.stdout.str())  # no points: no notebook ran


def test_the_old_option_spellings_still_work(pytester):
    """`--notebook`, `--notebook-jobs`, `--rubric` (before the `--mbgd-` prefix) are aliases."""
    from grader.grading.rubric import default_rubric_text, load_rubric

    _tiny_notebook(pytester.path / "lab.ipynb")
    (pytester.path / "rubric.toml").write_text(default_rubric_text())
    result = pytester.runpytest_subprocess(
        "--notebook", "lab.ipynb", "--notebook-jobs", "2", "--rubric", "rubric.toml",
        "--feedback-dir", "fb", "--collect-only", "-q", "-p", "no:cacheprovider",
    )  # fmt: skip
    assert result.ret == pytest.ExitCode.OK
    ids = [check.id for check in load_rubric().checks]
    assert [f"lab.ipynb::{i}" for i in ids] == [
        line for line in result.stdout.lines if "::" in line
    ]


def _rubric_showing(path: Path, shown: set[str], release: str = "") -> Path:
    """The default rubric with every check outside `shown` marked after_due_date."""
    from grader.grading.rubric import default_rubric_text, load_rubric

    text = default_rubric_text()
    for check in load_rubric().checks:
        if check.id not in shown:
            anchor = f'id = "{check.id}"\n'
            text = text.replace(anchor, anchor + 'visibility = "after_due_date"\n')
    path.write_text(text + release)
    return path


@pytest.mark.slow
def test_a_green_run_never_reads_as_full_marks_while_checks_are_withheld(pytester):
    """Only notebook.runs and loss20.present are shown; LOSS20's values are wrong. Every item
    the learner runs passes, and the run still says the points are not the grade; nothing of
    the withheld checks reaches the terminal or the learner's folder."""
    notebook = pytester.path / "lab.ipynb"
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("LOSS20 = [1.0, 2.0, 3.0]")]
    nbformat.write(nb, notebook)
    rubric = _rubric_showing(pytester.path / "rubric.toml", {"notebook.runs", "loss20.present"})
    result = pytester.runpytest_subprocess(
        "--mbgd-notebook", notebook.name, "--mbgd-rubric", rubric.name, "-v",
        "-p", "no:cacheprovider", timeout=300,
    )  # fmt: skip
    text = result.stdout.str()
    result.assert_outcomes(passed=2)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(
        [
            "*rubric.toml, 1 points in the checks shown (4 more not shown here)",
            "lab.ipynb::notebook.runs PASSED*",
            "lab.ipynb::loss20.present PASSED*",
            "mbgd-grader: 1/1 points on the checks shown for lab.ipynb",
            "  Every check shown here passed.",
            "  4 more checks (9 points) are graded but not shown here: "
            "this is not your final score.",
        ]
    )
    folder = pytester.path / "lab-feedback"
    written = (folder / "feedback.html").read_text() + (folder / "results.json").read_text()
    for withheld in ("loss20.values", "plot.loss20", "plot.all_methods", "plot.legend"):
        assert withheld not in text and withheld not in written
    assert "Epoch" not in text and "epoch" not in written  # the values check's words, its table
    assert "All checks passed" not in written and "data:image" not in written
    learner_copy = json.loads((folder / "results.json").read_text())
    assert [t["extra_data"]["id"] for t in learner_copy["tests"]] == [
        "notebook.runs",
        "loss20.present",
    ]
    assert learner_copy["score"] == 1

    # Once released (the due date passed), the next run collects those checks too.
    released = _rubric_showing(
        pytester.path / "released.toml",
        {"notebook.runs", "loss20.present"},
        "\n[release]\nafter_due_date = 2000-01-01T00:00:00Z\n",
    )
    listed = pytester.runpytest_subprocess(
        "--mbgd-notebook", notebook.name, "--mbgd-rubric", released.name, "--collect-only",
        "-q", "-p", "no:cacheprovider",
    )  # fmt: skip
    assert sum("::" in line for line in listed.stdout.lines) == 6


def test_a_learner_machine_without_bubblewrap_gets_the_portable_kernel(monkeypatch) -> None:
    """No kernel: the plugin (the learner's door) asks for the portable kernel where the
    sandbox cannot grade; the server doors keep rlimits there (`use_portable`)."""
    import grader.execution.portable
    import grader.execution.sandbox
    from grader.pytest_plugin import _needs_portable

    monkeypatch.setattr(grader.execution.portable, "torch_fits_the_sandbox", lambda: True)
    monkeypatch.setattr(grader.execution.sandbox, "find_bwrap", lambda: None)
    assert _needs_portable() is True
    monkeypatch.setattr(grader.execution.sandbox, "find_bwrap", lambda: "/usr/bin/bwrap")
    assert _needs_portable() is False
    monkeypatch.setattr(grader.execution.portable, "torch_fits_the_sandbox", lambda: False)
    assert _needs_portable() is True  # a CUDA build of torch
