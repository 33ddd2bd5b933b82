"""What a grade looks like on disk: Gradescope's results.json and the learner's feedback page.

Both are views of one `GradeResult`; neither adds judgement. Everything in a result that came
from the learner (variable names, error messages, tracebacks, curve labels) is hostile: the
page is rendered with autoescaping, the JSON's Markdown is escaped (`md_escape`), and the JSON
carries only what the schema asks for (never the kernel's variables, never a secret seed).

Per-check visibility: results.json keeps every check with its visibility for Gradescope (or
an LMS) to honour; the feedback page is a learner's view and shows only the checks revealed
(`grader.reports.learner_view`).
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from grader import TESTED_TORCH
from grader.models import (
    ALWAYS_SHOWN,
    VISIBILITIES,
    CellRun,
    CheckId,
    CheckResult,
    GradeResult,
    Reveal,
)
from grader.reports.learner_view import LearnerView, learner_view
from grader.reports.plot import ANSWER_KEY, curves_svg, svg_data_uri
from grader.reports.rendering import environment, write_atomic

MAX_TRACEBACK_LINES = 30
MAX_TRACEBACK_CHARS = 4000
MAX_FAILING_CELLS = 5
MD_TRACEBACK_LINES = 15  # results.json: the end of the first failing cell's traceback
MAX_TABLE_EPOCHS = 50  # rows of the loss table in results.json (the lab has 10 epochs)
PICTURE_ALT = "Loss per epoch: your curves (solid) against the reference (dashed), log scale"

STATUS_TEXT = {
    "graded": "Graded",
    "rejected": "Not graded: the file could not be read as a notebook",
    "timeout": "Graded after a time-out",
    "crashed": "Not graded: the grader failed",
}


def _num(value: float) -> float:
    """Points as JSON numbers: finite and without float noise."""
    return round(value, 4) if math.isfinite(value) else 0.0


def _points(value: float) -> str:
    return f"{_num(value):g}"


# -- Markdown: Gradescope renders `output_format: "md"`; everything from a learner is escaped --

# Every ASCII punctuation character but & < > (those become entities): CommonMark reads each
# one after a backslash as itself, so none can start or end a construct (a setext underline
# of = or -, a ~~~ fence, a table's |, an autolink's : or www., emphasis, ...).
_MD_PUNCTUATION = re.compile(r"([!\"#$%'()*+,\-./:;=?@\[\\\]^_`{|}~])")
# GitHub-flavoured renderers find e-mail addresses in the text once escapes are undone:
# after an @, an invisible WORD JOINER keeps an address from being one.
WORD_JOINER = "\u2060"


def md_escape(text: str) -> str:
    """`text` as literal Markdown: no link, autolink (URL, IP address, e-mail), image,
    emphasis, heading, fence, table, list or raw HTML can come out of it (a learner's variable
    name or error message must stay text). Line breaks stay; so does what a reader sees (a
    zero-width word joiner after each @ aside)."""
    text = _MD_PUNCTUATION.sub(r"\\\1", text)
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = text.replace("@", "@" + WORD_JOINER)
    return "  \n".join(line.strip() for line in text.splitlines())


def md_code_block(text: str) -> str:
    """A fenced block whose fence is longer than any backtick run in `text`."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{text}\n{fence}"


def withheld_text(view: LearnerView) -> str:
    """The sentence every learner's view shows while some checks are held back."""
    count = view.withheld
    more = " more" if view.result.checks else ""
    checks = f"{count}{more} check{'s' if count != 1 else ''}"
    verb = "is" if count == 1 else "are"
    return (
        f"{checks} ({_points(view.withheld_points)} points) {verb} graded but not shown here, "
        "so this is not your final score."
    )


def torch_note(version: str) -> str:
    """A sentence for the verdict when `version` (GradeResult.torch_version) is not the tested
    release; "" when it is, or is unknown. The build tag (`+cpu`, `+cu130`) does not count.

    On a learner's own computer the notebook and the reference both run on the learner's
    torch, so the verdict compares numbers of one build (docs/tolerance.md measures how far
    builds differ)."""
    if not version or version.split("+", 1)[0] == TESTED_TORCH:
        return ""
    return (
        f"Graded with your torch {version}; the course's grader uses torch {TESTED_TORCH}. "
        "Your numbers and the expected ones were both computed with your torch, so the verdict "
        "is the same unless your code relies on something that changed between the two; the "
        "numbers themselves may differ from the course's in the last digits."
    )


def learner_notes(result: GradeResult) -> list[str]:
    """What the learner should know besides the checks: another torch than the tested one
    first, then what the run noted."""
    note = torch_note(result.torch_version)
    return ([note] if note else []) + (list(result.execution.notes) if result.execution else [])


def _output(result: GradeResult) -> str:
    """The top-level Markdown Gradescope shows above the tests, at once, to the learner: so
    it is drawn from what every learner may see now (`learner_view`), whatever the tests'
    own visibility."""
    view = learner_view(result, ALWAYS_SHOWN)
    shown = view.result
    score = f"{_points(shown.score)} / {_points(shown.max_score)}"
    if view.complete:
        parts = [f"**Score: {score}**"]
    elif not shown.checks:
        parts = [f"**No check is shown here yet.** {withheld_text(view)}"]
    else:
        parts = [f"**Points on the checks shown: {score}.** {withheld_text(view)}"]
    if shown.error:
        parts.append(f"**{STATUS_TEXT.get(shown.status, shown.status)}:** {md_escape(shown.error)}")
    if shown.diagnosis and shown.diagnosis != shown.error:
        failed = any(not check.passed for check in shown.checks)
        label = "**What to look at first:** " if failed else ""
        parts.append(label + md_escape(shown.diagnosis))
    if shown.answer_name:
        parts.append(f"Graded variable: {md_escape(shown.answer_name)}")
    parts.extend(f"Note: {md_escape(note)}" for note in learner_notes(shown))
    return "\n\n".join(parts)


def _curve_table(result: GradeResult) -> str:
    """The graded list against the reference, epoch by epoch, as text: it reads the same
    wherever Markdown is rendered, picture or not."""
    want = next((c.y for c in result.reference_curves if c.label == ANSWER_KEY), None)
    label = f"your {result.answer_name}"  # the graded list (grading.checks.curves_for)
    mine = next((c for c in result.learner_curves if c.label == label), None)
    if want is None or mine is None or result.answer_name is None:
        return ""
    rows = ["epoch        yours     expected   relative difference"]
    for epoch in range(min(max(len(want), len(mine.y)), MAX_TABLE_EPOCHS)):
        got = mine.y[epoch] if epoch < len(mine.y) else None
        ref = want[epoch] if epoch < len(want) else None
        diff = ""
        if got is not None and ref is not None and math.isfinite(got) and ref != 0:
            diff = f"{(got - ref) / abs(ref):+.2e}"
        rows.append(f"{epoch:>5}  {_cell(got):>11}  {_cell(ref):>11}   {diff}".rstrip())
    return md_code_block("\n".join(rows))


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"


def _curves_md(result: GradeResult, picture: str | None) -> str:
    """The learner's loss curve against the reference: the picture, then the numbers."""
    if not result.learner_curves and not result.reference_curves:
        return ""  # none to show (or not to this learner): no picture either
    table = _curve_table(result)
    name = md_escape(result.answer_name or "your list")
    parts = [f"**Your {name} per epoch against the expected LOSS20**"]
    if picture is not None:
        parts.append(f"![{PICTURE_ALT}]({picture})")
    if table:
        parts.append(table)
    return "\n\n".join(parts)


def _failing_cell_md(result: GradeResult) -> str:
    cells = failing_cells(result)
    if not cells or not cells[0].traceback:
        return ""
    cell = cells[0]
    return f"Cell {cell.index}, where it stopped:\n\n" + md_code_block(
        short_traceback(cell.traceback, lines=MD_TRACEBACK_LINES)
    )


def _test_output(check: CheckResult, result: GradeResult, picture: str | None) -> str:
    """One check's Markdown: its message, and what belongs to it (a check's extras take its
    visibility on Gradescope: the curves go with loss20.values, the traceback with
    notebook.runs)."""
    parts = [md_escape(check.message)]
    if check.id == CheckId.LOSS20_VALUES:
        parts.append(_curves_md(result, picture))
    elif check.id == CheckId.NOTEBOOK_RUNS and not check.passed:
        parts.append(_failing_cell_md(result))
    return "\n\n".join(part for part in parts if part)


def _alongside(check: CheckResult) -> Reveal:
    """What a learner who reads `check`'s test on Gradescope sees with it: the visible checks
    and those of its own visibility (a hidden test no learner reads)."""
    if check.visibility == "hidden":
        return frozenset(VISIBILITIES)
    return frozenset({"visible", check.visibility})


def _test(check: CheckResult, result: GradeResult, plot: bool) -> dict[str, Any]:
    """One test, its output drawn from what a learner reading it may see (`_alongside`)."""
    seen = learner_view(result, _alongside(check)).result
    said = next(c for c in seen.checks if c.id == check.id)
    picture = _picture_uri(seen) if plot and check.id == CheckId.LOSS20_VALUES else None
    return {
        "name": check.name,
        "score": _num(check.points),
        "max_score": _num(check.max_points),
        "status": "passed" if check.passed else "failed",
        "output": _test_output(said, seen, picture),
        "output_format": "md",
        "visibility": check.visibility,
        "extra_data": {"id": check.id, "diagnosis": said.diagnosis},
    }


def gradescope_json(result: GradeResult, *, plot: bool = True) -> dict[str, Any]:
    """results.json content in Gradescope's autograder schema (plus our `extra_data`).

    Each test carries its check's visibility, which Gradescope honours (it hides the total
    score from learners while any test is hidden); the top-level `output` is what every
    learner may see at once, and each test's output what a learner may see with it.
    `plot`: True draws the loss-curve picture into the loss20.values test (an SVG data URI,
    a few KB), False leaves the picture out (the table of numbers stays)."""
    tests = [_test(check, result, plot) for check in result.checks]
    output = _output(result)
    if not any(check.id == CheckId.LOSS20_VALUES for check in result.checks):
        shown = learner_view(result, ALWAYS_SHOWN).result
        curves = _curves_md(shown, _picture_uri(shown) if plot else None)
        output = "\n\n".join(part for part in (output, curves) if part)
    execution = result.execution
    return {
        "score": _num(result.score),
        "execution_time": round(result.seconds, 3),
        "output": output,
        "output_format": "md",
        "visibility": "visible",  # each test says its own
        "stdout_visibility": "hidden",  # the grader's log is for instructors
        "tests": tests,
        "extra_data": {
            "submission": result.submission,
            "status": result.status,
            "max_score": _num(result.max_score),
            "answer_name": result.answer_name,
            "diagnosis": result.diagnosis,
            "mistake": result.mistake,
            "integrity": result.integrity,
            "sandbox": result.sandbox,
            "grader_version": result.grader_version,
            "torch_version": result.torch_version,
            "tested_torch": TESTED_TORCH,
            "rubric": result.rubric_name,
            "error": result.error,
            "kernel": execution.fate if execution else None,
            "kernel_origin": execution.kernel if execution else None,  # "warm": from the pool
            "notes": list(execution.notes) if execution else [],
            # cells whose results came from a warm parent that ran the lab's own copy of them
            "reused_cells": list(execution.reused_cells) if execution else [],
        },
    }


def short_traceback(text: str, lines: int = MAX_TRACEBACK_LINES) -> str:
    """The end of a traceback, which is where the learner's own line is."""
    kept = text.strip().splitlines()
    if len(kept) > lines:
        kept = ["…", *kept[-lines:]]
    text = "\n".join(kept)
    if len(text) > MAX_TRACEBACK_CHARS:
        text = "…" + text[-MAX_TRACEBACK_CHARS:]
    return text


def failing_cells(result: GradeResult) -> list[CellRun]:
    if result.execution is None:
        return []
    bad = [cell for cell in result.execution.cells if cell.status not in ("ok", "not_run")]
    return bad[:MAX_FAILING_CELLS]


@cache
def _environment() -> jinja2.Environment:
    return environment({"points": _points, "short_traceback": short_traceback})


def _plot(result: GradeResult) -> Markup | None:
    """The page's picture, inline SVG drawn from the curves (None when there are none)."""
    if not result.reference_curves and not result.learner_curves:
        return None
    label = f"your {result.answer_name}" if result.answer_name else None
    return curves_svg(result.learner_curves, result.reference_curves, label)


def _picture_uri(result: GradeResult) -> str | None:
    """The same picture as a data URI, for Markdown's image syntax (results.json)."""
    svg = _plot(result)
    return None if svg is None else svg_data_uri(svg)


def feedback_html(result: GradeResult, *, reveal: Reveal = ALWAYS_SHOWN, plot: bool = True) -> str:
    """A self-contained page for the learner: no scripts, no external assets.

    Only the checks whose visibility is in `reveal` are on it, and nothing that gives the
    others away (`learner_view`). `plot`: False leaves the picture out; it is shown only
    while the learner may see the curves."""
    view = learner_view(result, reveal)
    shown = view.result
    picture = None
    if shown.learner_curves or shown.reference_curves:
        picture = _plot(shown) if plot else None
    template = _environment().get_template("feedback.html.j2")
    cells = failing_cells(shown)
    total_bad = (
        sum(1 for c in shown.execution.cells if c.status not in ("ok", "not_run"))
        if shown.execution
        else 0
    )
    all_passed = bool(shown.checks) and all(c.passed for c in shown.checks)
    return template.render(
        r=shown,
        status_text=STATUS_TEXT.get(shown.status, shown.status),
        passed=sum(1 for c in shown.checks if c.passed),
        plot=picture,
        cells=cells,
        more_cells=total_bad - len(cells),
        notes=learner_notes(shown),
        percent=(100 * shown.score / shown.max_score) if shown.max_score > 0 else 0,
        full_marks=view.complete and shown.max_score > 0 and shown.score >= shown.max_score,
        all_passed=all_passed,
        withheld=view.withheld,
        withheld_points=view.withheld_points,
        generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    )


def write_reports(
    result: GradeResult,
    out_dir: Path,
    *,
    reveal: Reveal = ALWAYS_SHOWN,
    learner_copy: bool = False,
) -> None:
    """out_dir/results.json and out_dir/feedback.html (the picture costs about a millisecond).

    The page shows the checks in `reveal`. results.json keeps every check with its
    visibility (for a platform to honour), unless `learner_copy`: then it too holds only
    what the learner may see now (the pytest plugin writes into the learner's own folder)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = gradescope_json(learner_view(result, reveal).result if learner_copy else result)
    write_atomic(out_dir / "results.json", json.dumps(data, indent=2, allow_nan=False) + "\n")
    write_atomic(out_dir / "feedback.html", feedback_html(result, reveal=reveal))
