"""Reports: Gradescope's results.json and the learner's feedback page.

The rendering tests build a GradeResult by hand (a report unit test, not a mocked grader);
the slow tests grade real notebooks with the real pipeline and check what lands on disk.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
import os
import re
import stat
import xml.etree.ElementTree as ET

import nbformat
import pytest
from markdown_it import MarkdownIt

from grader import TESTED_TORCH
from grader.grading.integrity import derive_seed
from grader.models import CellRun, CheckResult, Curve, Execution, GradeResult
from grader.reports.feedback import (
    feedback_html,
    gradescope_json,
    md_escape,
    short_traceback,
    torch_note,
    write_reports,
)
from grader.reports.plot import DRAWN_POINTS, clean_label, curves_svg, svg_data_uri
from reference import LabSettings, expected, mistake_variants
from tests.helpers import markdown_text

HOSTILE = '<script>alert("pwned")</script><img src=x onerror=alert(1)>'
SVG = "{http://www.w3.org/2000/svg}"


def _reference_curves() -> list[Curve]:
    return [Curve(label=name, y=values) for name, values in expected().items()]


def _hand_made(**changes) -> GradeResult:
    """A graded batch-size-10 mistake, the way the checks module reports one."""
    wrong = mistake_variants(LabSettings())["batch_size_10"]
    execution = Execution(
        fate="ok",
        sandbox="rlimits-only (bwrap not found)",
        notes=["Tensors were detached for plotting: not your fault."],
        cells=[
            CellRun(index=3, status="ok"),
            CellRun(
                index=31,
                status="error",
                error_name="NameError",
                error_value="name 'LOSS_MINI20' is not defined",
                traceback="Traceback (most recent call last):\n"
                + "".join(f"  frame {i}\n" for i in range(100))
                + "NameError: name 'LOSS_MINI20' is not defined",
            ),
            CellRun(index=32, status="not_run"),
        ],
    )
    checks = [
        CheckResult(
            id="notebook.runs",
            name="Notebook runs without errors",
            points=0,
            max_points=0,
            passed=False,
            message="cell 31 raised NameError",
        ),
        CheckResult(
            id="loss20.values",
            name="LOSS20 matches batch size 20",
            points=0,
            max_points=5,
            passed=False,
            message="Epoch 1 differs.\nYour numbers are what batch size 10 gives.",
            diagnosis="batch_size_10",
        ),
        CheckResult(
            id="plot.loss20",
            name="The batch-20 loss is plotted",
            points=2,
            max_points=2,
            passed=True,
            message="Plotted.",
        ),
    ]
    fields = dict(
        submission="my_lab.ipynb",
        status="graded",
        score=2,
        max_score=7,
        checks=checks,
        answer_name="LOSS_MINI20",
        diagnosis="LOSS_MINI20 matches batch size 10: your loop uses the old trainloader.",
        mistake="batch_size_10",
        sandbox=execution.sandbox,
        grader_version="9.9.9",
        rubric_name="mini-batch-gd",
        execution=execution,
        learner_curves=[Curve(label="your LOSS_MINI20", y=wrong)],
        reference_curves=_reference_curves(),
        seconds=12.345,
    )
    fields.update(changes)
    return GradeResult(**fields)


def _embedded_svg(page: str) -> ET.Element:
    """The page's picture, parsed as XML (which also proves it is well-formed)."""
    match = re.search(r"<svg .*?</svg>", page, re.DOTALL)
    assert match, "the feedback page has no inline SVG"
    root = ET.fromstring(match.group(0))
    assert root.tag == f"{SVG}svg"
    return root


def _curves(svg: ET.Element, kind: str) -> dict[str, list[list[tuple[float, float]]]]:
    """label -> the point lists of each drawn curve of this kind ('yours', 'reference'...)."""
    found: dict[str, list[list[tuple[float, float]]]] = {}
    for group in svg.iter(f"{SVG}g"):
        if group.get("class") == f"curve {kind}":
            segments = [
                [tuple(map(float, p.split(","))) for p in line.get("points").split()]
                for line in group.iter(f"{SVG}polyline")
            ]
            assert group.find(f"{SVG}title").text == group.get("data-label")
            found.setdefault(group.get("data-label"), []).extend(segments)
    return found


def _legend(svg: ET.Element) -> list[str]:
    return [
        text.text
        for entry in svg.iter(f"{SVG}g")
        if entry.get("class") == "legend-entry"
        for text in entry.iter(f"{SVG}text")
    ]


# Gradescope's autograder specification (gradescope/autograder_samples, docs/specs.md):
# the keys results.json and each test may have, and the values of `visibility`.
GRADESCOPE_TOP = {
    "score", "execution_time", "output", "output_format", "test_output_format",
    "test_name_format", "visibility", "stdout_visibility", "extra_data", "tests", "leaderboard",
}  # fmt: skip
GRADESCOPE_TEST = {
    "score", "max_score", "status", "name", "name_format", "number", "output", "output_format",
    "tags", "visibility", "extra_data",
}  # fmt: skip
GRADESCOPE_VISIBILITY = {"visible", "hidden", "after_due_date", "after_published"}


def test_gradescope_json_follows_the_schema():
    result = _hand_made()
    data = gradescope_json(result, plot=False)
    json.dumps(data, allow_nan=False)  # strict JSON: Gradescope rejects NaN
    assert set(data) <= GRADESCOPE_TOP
    assert data["score"] == 2
    assert data["execution_time"] == pytest.approx(12.345)
    assert (data["output_format"], data["visibility"]) == ("md", "visible")
    assert data["stdout_visibility"] == "hidden"  # the grader's log is the instructor's
    output = markdown_text(data["output"])
    assert "Score: 2 / 7" in output
    assert "LOSS_MINI20 matches batch size 10: your loop uses the old trainloader." in output
    assert "Tensors were detached for plotting: not your fault." in output
    assert [t["extra_data"]["id"] for t in data["tests"]] == [c.id for c in result.checks]
    for test, check in zip(data["tests"], result.checks, strict=True):
        assert set(test) <= GRADESCOPE_TEST
        assert test["name"] == check.name
        assert test["score"] == check.points
        assert test["max_score"] == check.max_points
        assert test["status"] == ("passed" if check.passed else "failed")
        assert test["output_format"] == "md"
        assert test["visibility"] == check.visibility in GRADESCOPE_VISIBILITY
        for line in check.message.splitlines():
            assert line in markdown_text(test["output"])
    assert sum(t["score"] for t in data["tests"]) == data["score"]
    # the failing cell's traceback goes with notebook.runs, its end only
    runs = markdown_text(data["tests"][0]["output"])
    assert "NameError: name 'LOSS_MINI20' is not defined" in runs and "frame 99" in runs
    assert "frame 80" not in runs
    extra = data["extra_data"]
    assert extra["max_score"] == 7
    assert extra["answer_name"] == "LOSS_MINI20"
    assert extra["diagnosis"] == result.diagnosis
    assert extra["mistake"] == "batch_size_10"
    assert extra["integrity"] == "not_checked"
    assert extra["sandbox"] == "rlimits-only (bwrap not found)"
    assert extra["grader_version"] == "9.9.9"
    assert extra["status"] == "graded"
    # the kernel's variables are not part of an LMS record
    assert "learner_curves" not in json.dumps(data)


def test_gradescope_json_shows_the_loss_curve_with_the_values_check():
    """The learner's LOSS20 against the reference, in the values check's Markdown: a picture
    (a data URI) and the same numbers as a text table, which reads the same wherever the
    picture is not drawn."""
    result = _hand_made()
    data = gradescope_json(result)
    values = data["tests"][1]
    assert values["extra_data"]["id"] == "loss20.values"
    rendered = MarkdownIt().render(values["output"])
    # Markdown image syntax around an SVG data URI (markdown-it, like many sanitizers, will
    # not render an SVG data URI, so the picture is read from the Markdown source)
    image = re.search(
        r"!\[([^\]]*)\]\(data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)\)", values["output"]
    )
    assert image, "no picture in the values check"
    svg = ET.fromstring(base64.b64decode(image.group(2)))
    assert svg.tag.endswith("svg") and not svg.findall(".//{*}script")
    assert "against the reference" in image.group(1)
    table = re.search(r"<pre><code[^>]*>(.*?)</code></pre>", rendered, re.S)
    assert table
    rows = [line.split() for line in html.unescape(table.group(1)).splitlines()[1:]]
    mine, want = result.learner_curves[0].y, expected()["LOSS20"]
    assert [int(r[0]) for r in rows] == list(range(len(want)))
    for row, got, ref in zip(rows, mine, want, strict=True):
        assert float(row[1]) == pytest.approx(got, rel=1e-5)
        assert float(row[2]) == pytest.approx(ref, rel=1e-5)
        assert float(row[3]) == pytest.approx((got - ref) / ref, rel=1e-2, abs=1e-12)
    # only there: the other tests and the top level carry no picture
    others = [t["output"] for t in data["tests"] if t is not values]
    assert "data:image" not in "".join(others) + data["output"]
    # plot=False leaves the picture out and keeps the numbers
    plain = gradescope_json(result, plot=False)["tests"][1]["output"]
    assert "data:image" not in plain and "expected" in plain


def test_gradescope_markdown_cannot_be_driven_by_the_learner():
    """A variable name or an error message made of Markdown and HTML stays text."""
    attack = (
        "![beacon](http://evil.example/x.png) [click](javascript:alert(1)) <b>bold</b>\n"
        "# heading\n- item\n1. item\n    indented code\n```\nfence\n``` *em* _em_ `code` " + HOSTILE
    )
    check = CheckResult(
        id="loss20.values", name="Values", points=0, max_points=5, passed=False, message=attack
    )
    cell = CellRun(index=4, status="error", error_name="E", error_value="x", traceback=attack)
    result = _hand_made(
        checks=[check, check.model_copy(update={"id": "notebook.runs"})],
        answer_name=attack,
        diagnosis=attack,
        execution=Execution(fate="ok", sandbox="bubblewrap", notes=[attack], cells=[cell]),
    )
    data = gradescope_json(result)
    for markdown in [data["output"], *(t["output"] for t in data["tests"])]:
        rendered = MarkdownIt().render(markdown)
        tags = set(re.findall(r"<([a-z0-9]+)", rendered))
        # a picture only of ours (a data URI), the table and traceback only in code blocks
        assert tags <= {"p", "br", "strong", "pre", "code", "img"}, tags
        for src in re.findall(r'src="([^"]*)"', rendered):
            assert src.startswith("data:image/svg+xml;base64,")
        assert "<b>" not in rendered and "<script" not in rendered and "href" not in rendered
        for line in ("![beacon](http://evil.example/x.png)", "*em* _em_ `code`", "# heading"):
            assert line in html.unescape(re.sub(r"<[^>]+>", "", rendered))


def test_another_torch_than_the_tested_one_is_noted_on_every_report():
    """Issue 17: a learner's own torch may differ from the course's; the verdict says so."""
    assert torch_note("") == torch_note(TESTED_TORCH) == torch_note(TESTED_TORCH + "+cpu") == ""
    other = _hand_made(torch_version="2.14.1+cu130")
    note = torch_note(other.torch_version)
    assert "your torch 2.14.1+cu130" in note and f"uses torch {TESTED_TORCH}" in note
    data = gradescope_json(other)
    assert data["extra_data"]["torch_version"] == "2.14.1+cu130"
    assert data["extra_data"]["tested_torch"] == TESTED_TORCH
    assert f"Note: {md_escape(note)}" in data["output"]
    page = feedback_html(other)
    assert note in html.unescape(page) and "Torch: <b>2.14.1+cu130</b>" in page
    tested = _hand_made(torch_version=f"{TESTED_TORCH}+cpu")
    assert "uses torch" not in gradescope_json(tested)["output"]
    assert "uses torch" not in feedback_html(tested)


def test_gradescope_json_never_emits_nan_points():
    result = _hand_made(score=math.nan, max_score=math.inf)
    text = json.dumps(gradescope_json(result), allow_nan=False)
    assert json.loads(text)["score"] == 0


def test_feedback_page_shows_score_checks_diagnosis_notes_and_cells():
    result = _hand_made()
    page = feedback_html(result)
    text = html.unescape(re.sub(r"<[^>]+>", " ", page))
    assert "2 / 7 points" in " ".join(text.split())
    assert result.diagnosis in text
    for check in result.checks:
        assert check.name in text and check.id in text
    assert "passed" in text and "failed" in text
    assert "Tensors were detached for plotting: not your fault." in text
    assert "Cell 31" in text and "NameError" in text
    assert "frame 99" in text and "frame 10\n" not in text  # traceback shortened to its end
    assert "LOSS_MINI20" in text
    assert "rlimits-only (bwrap not found)" in text


def test_feedback_page_is_self_contained():
    page = feedback_html(_hand_made())
    assert "<script" not in page.lower()
    assert not re.search(r'(src|href)="(?!data:|#)', page), "external asset referenced"
    # the one URL allowed is the SVG namespace, which is a name, never fetched
    assert re.findall(r"https?://[^\s\"']+", page) == ["http://www.w3.org/2000/svg"]
    svg = _embedded_svg(page)
    assert float(svg.get("width")) > 800 and float(svg.get("height")) > 300
    assert not [e for e in svg.iter() if e.tag in (f"{SVG}script", f"{SVG}image", f"{SVG}a")]
    assert not [k for e in svg.iter() for k in e.attrib if k.startswith("on") or "href" in k]


def test_picture_draws_the_learner_against_the_reference_from_the_data():
    """Every point of every curve, in the panel it belongs to, with the names in legends."""
    result = _hand_made()
    svg = _embedded_svg(feedback_html(result))
    yours = _curves(svg, "yours")
    reference = _curves(svg, "reference")
    expected_20 = _curves(svg, "expected")
    assert list(expected_20) == ["expected (batch size 20)"]
    assert sorted(reference) == sorted(c.label for c in result.reference_curves)
    for curve in result.reference_curves:
        (points,) = reference[curve.label]  # one unbroken line per method
        assert len(points) == len(curve.y)
    # the graded answer: once against its reference (left), once among the methods (right)
    answer = yours["your LOSS_MINI20"]
    assert [len(run) for run in answer] == [10, 10]
    (left_expected,) = expected_20["expected (batch size 20)"]
    # batch size 10 (the mistake) falls faster than batch size 20 at first: on screen, lower
    # losses are drawn lower, i.e. at a larger y
    assert answer[0][0] == pytest.approx(left_expected[0], abs=1.0)  # same first loss
    assert answer[0][2][1] > left_expected[2][1] + 20
    xs = [x for x, _ in answer[0]]
    assert xs == sorted(xs) and len(set(xs)) == 10  # one point per epoch, left to right
    dots = [c for g in svg.iter(f"{SVG}g") if g.get("class") == "curve yours" for c in g]
    assert sum(1 for c in dots if c.tag == f"{SVG}circle") == 10  # the graded line's epochs
    legend = _legend(svg)
    assert legend[:2] == ["your LOSS_MINI20", "expected (batch size 20)"]
    assert set(legend) >= {"LOSS_BGD", "LOSS_SGD", "LOSS_MINI5", "LOSS_MINI10", "LOSS20"}
    ticks = [t.text for t in svg.iter(f"{SVG}text") if t.text and t.text.isdigit()]
    assert {"0", "9", "1"} <= set(ticks)  # epochs on x, a decade (1) on the log y axis


def test_picture_is_the_same_for_the_same_data_and_small():
    result = _hand_made()
    first = curves_svg(result.learner_curves, result.reference_curves, "your LOSS_MINI20")
    again = curves_svg(result.learner_curves, result.reference_curves, "your LOSS_MINI20")
    assert first == again and len(first.encode()) < 30_000
    uri = svg_data_uri(first)
    assert uri.startswith("data:image/svg+xml;base64,")


def test_hostile_learner_text_is_escaped_everywhere():
    execution = Execution(
        fate="ok",
        sandbox="bubblewrap",
        notes=[HOSTILE],
        cells=[
            CellRun(
                index=1,
                status="error",
                error_name=HOSTILE,
                error_value=HOSTILE,
                traceback=HOSTILE,
            )
        ],
    )
    check = CheckResult(
        id="plot.legend",
        name=HOSTILE,
        points=0,
        max_points=1,
        passed=False,
        message=HOSTILE,
        diagnosis=HOSTILE,
    )
    result = _hand_made(
        submission=HOSTILE,
        answer_name=HOSTILE,
        diagnosis=HOSTILE,
        error=HOSTILE,
        checks=[check],
        execution=execution,
        learner_curves=[Curve(label=f"your {HOSTILE}", y=[1.0, 0.5])],  # as the checks name it
    )
    page = feedback_html(result)
    assert "<script" not in page.lower()
    assert "<img src=x" not in page
    svg = _embedded_svg(page)  # still well-formed XML with the label inside
    label = clean_label(f"your {HOSTILE}")
    assert label.startswith("your <script>") and len(label) <= 60
    assert list(_curves(svg, "yours")) == [label]
    assert any(entry.startswith(label[:40]) for entry in _legend(svg))  # as much as fits
    assert page.count("&lt;script&gt;") >= 8  # title, header, callouts, table, notes, cells
    assert "Content-Security-Policy" in page  # second line of defence: no script may run
    # results.json keeps the text as data: escaped Markdown, read back as the same text
    output = json.loads(json.dumps(gradescope_json(result)))["tests"][0]["output"]
    assert "<script" not in output and markdown_text(output).strip() == HOSTILE


def test_plot_survives_hostile_and_degenerate_curves():
    weird = [
        Curve(label="your LOSS20", y=[3.0, math.nan, math.inf, -1.0, 0.0, 1e300, 1e-300, 2.0]),
        Curve(label="your LOSS_SGD\x00\x1b[31m\ud800\uffff", y=[]),
        Curve(label="x" * 10_000, y=[1.0] * 100_000),
        *(Curve(label=f"your LOSS_{i}", y=[float(i + 1)]) for i in range(50)),
    ]
    reference = _reference_curves()
    reference.append(Curve(label="LOSS_SGD\x00\x1b[31m\ud800\uffff", y=[2.0] * 10))
    svg = ET.fromstring(str(curves_svg(weird, reference)))  # well-formed: no control chars
    answer = _curves(svg, "yours")["your LOSS20"]
    # what a log axis cannot show breaks the line there, it is not joined over
    assert [len(run) for run in answer] == [1, 3, 1, 3]  # 3.0 | 1e300, 1e-300, 2.0: twice
    assert "LOSS_SGD [31m" in _legend(svg)
    long = ET.fromstring(
        str(curves_svg([Curve(label="LOSS20", y=[1.0 + k for k in range(5000)])], []))
    )
    (runs,) = _curves(long, "yours").values()
    assert 100 < len(runs[0]) <= DRAWN_POINTS
    empty = ET.fromstring(str(curves_svg([], [])))
    assert "no LOSS20 found in your notebook" in "".join(empty.itertext())
    assert clean_label("$a$\x00b\n") == "$a$ b"
    assert len(clean_label("y" * 500)) <= 60


def test_rejected_result_renders_without_a_plot():
    result = GradeResult(
        submission="notes.txt",
        status="rejected",
        score=0,
        max_score=10,
        error="This file is not a notebook: it is not JSON (line 1).",
        diagnosis="This file is not a notebook: it is not JSON (line 1).",
    )
    page = feedback_html(result)
    assert "not a notebook" in page and "<svg" not in page
    data = gradescope_json(result)
    assert data["extra_data"]["status"] == "rejected" and data["tests"] == []


def test_short_traceback_keeps_the_end():
    text = "\n".join(f"line {i}" for i in range(1000))
    short = short_traceback(text)
    assert short.endswith("line 999") and "line 0\n" not in short
    assert len(short) < 4100


def test_write_reports_writes_both_files_readable(tmp_path):
    result = _hand_made()
    out = tmp_path / "deep" / "my_lab"
    write_reports(result, out)
    assert json.loads((out / "results.json").read_text()) == gradescope_json(result)
    assert _curves(_embedded_svg((out / "feedback.html").read_text()), "reference")
    for name in ("results.json", "feedback.html"):
        assert stat.S_IMODE((out / name).stat().st_mode) & 0o044 == 0o044
    assert sorted(p.name for p in out.iterdir()) == ["feedback.html", "results.json"]


# --- the real pipeline ------------------------------------------------------------------


def _notebook(*sources: str) -> bytes:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in sources]
    return nbformat.writes(nb).encode()


@pytest.fixture(scope="module")
def hostile_graded():
    """A tiny real notebook whose plot label and error message are HTML."""
    from grader.pipeline import grade

    source = _notebook(
        "import matplotlib.pyplot as plt",
        f"LOSS20 = [3.0, 2.0, 1.0]\nplt.plot(LOSS20, label={HOSTILE!r})\nplt.legend()\nplt.show()",
        f"raise ValueError({HOSTILE!r})",
    )
    return grade(source, name="hostile.ipynb")


@pytest.mark.slow
def test_real_grade_of_hostile_notebook_is_escaped(hostile_graded, tmp_path):
    result = hostile_graded
    assert result.status == "graded"
    assert any(HOSTILE in (cell.error_value or "") for cell in result.execution.cells)
    write_reports(result, tmp_path)
    page = (tmp_path / "feedback.html").read_text()
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(&#34;pwned&#34;)&lt;/script&gt;" in page
    drawn = _curves(_embedded_svg(page), "yours")["your LOSS20"]
    assert [len(run) for run in drawn] == [3, 3]  # LOSS20 = [3, 2, 1], in both panels
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["score"] == result.score
    assert sum(t["score"] for t in data["tests"]) == pytest.approx(result.score)
    assert {t["extra_data"]["id"] for t in data["tests"]} >= {"notebook.runs", "loss20.values"}


@pytest.mark.slow
def test_secret_seed_is_never_reported(tmp_path):
    """Integrity re-runs use a secret seed; a notebook that shouts its seed must not leak it."""
    from grader.pipeline import GradeOptions, grade

    secret = 1_739_204_861
    source = _notebook(
        "import torch\ntorch.manual_seed(1)",
        "LOSS20 = [float(torch.initial_seed())] * 10",
        "raise ValueError(f'seed in use: {torch.initial_seed()}')",
    )
    options = GradeOptions(integrity=True, secret_seed=secret)  # the key, now
    result = grade(source, name="seeded.ipynb", options=options)
    write_reports(result, tmp_path)
    page = (tmp_path / "feedback.html").read_text()
    assert "seed in use: 1" in page  # the learner's error text does reach the page ...
    seed = derive_seed(str(secret), hashlib.sha256(source).hexdigest(), avoid={1})
    for name in ("results.json", "feedback.html"):
        text = (tmp_path / name).read_text()
        assert str(secret) not in text and str(seed) not in text  # ... but not the secret run's
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["extra_data"]["integrity"] != "not_checked"  # the secret-seed run did happen


def test_headline_title_follows_the_checks():
    base = _hand_made(learner_curves=[], reference_curves=[])  # no plot: only the words
    fixed = [c.model_copy(update={"passed": True, "points": c.max_points}) for c in base.checks]
    all_passed = base.model_copy(update={"checks": fixed, "score": 7.0})
    assert "All checks passed" in feedback_html(all_passed)
    runs_failed = [fixed[0].model_copy(update={"passed": False}), *fixed[1:]]
    full = base.model_copy(update={"checks": runs_failed, "score": 7.0})
    assert "Full marks, but look at this" in feedback_html(full)
    assert "What to look at first" in feedback_html(base)


def test_the_writer_gets_what_the_reports_show_and_nothing_more():
    """The kernel's figures and variables stay behind: the reports do not change without them."""
    from grader.models import Axes, Figure, Line, Variable
    from grader.reports.writer import for_reports

    result = _hand_made()
    line = Line(label="data", x=[0.5] * 240, y=[0.25] * 240)
    result.execution.figures = [Figure(cell=3, axes=[Axes(lines=[line])])] * 50
    result.execution.variables = {
        "X": Variable(name="X", type_name="Tensor", values=[1.0], length=1)
    }
    slim = for_reports(result)
    assert slim.execution.figures == [] and slim.execution.variables == {}
    assert len(result.execution.figures) == 50  # the caller's result is left as it was
    assert gradescope_json(slim) == gradescope_json(result)
    generated = re.compile(r"Generated: <b>[^<]*</b>")
    assert generated.sub("", feedback_html(slim)) == generated.sub("", feedback_html(result))
    assert for_reports(_hand_made(execution=None)).execution is None


def test_reports_written_behind_the_grading_survive_a_killed_writer(tmp_path):
    from grader.reports.writer import BackgroundReports

    errors: list[str] = []
    with BackgroundReports(errors, backlog=2) as reports:
        for k in range(3):
            reports.submit(f"s{k}", _hand_made(submission=f"s{k}"), tmp_path / f"s{k}")
        writers = list(reports._pool._processes.values())
        assert len(writers) == 1 and writers[0].pid != os.getpid()  # another process draws
        writers[0].kill()
        writers[0].join()
        for k in range(3, 6):  # the writer is gone: these are written in the harness
            reports.submit(f"s{k}", _hand_made(submission=f"s{k}"), tmp_path / f"s{k}")
    assert errors == []
    for k in range(6):
        data = json.loads((tmp_path / f"s{k}" / "results.json").read_text())
        assert data["extra_data"]["submission"] == f"s{k}"
        assert _curves(_embedded_svg((tmp_path / f"s{k}" / "feedback.html").read_text()), "yours")
