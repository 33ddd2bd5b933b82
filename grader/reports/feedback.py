"""What a grade looks like on disk: Gradescope's results.json and the learner's feedback page.

Both are views of one `GradeResult`; neither adds judgement. Everything in a result that came
from the learner (variable names, error messages, tracebacks, curve labels) is hostile: the
page is rendered with autoescaping, and the JSON carries only what the schema asks for (never
the kernel's variables, never a secret seed).
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from functools import cache
from pathlib import Path

import jinja2
from markupsafe import Markup

from grader.models import CellRun, GradeResult
from grader.reports.plot import curves_svg
from grader.reports.rendering import environment, write_atomic

MAX_TRACEBACK_LINES = 30
MAX_TRACEBACK_CHARS = 4000
MAX_FAILING_CELLS = 5

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


def _output(result: GradeResult) -> str:
    """The top-level text Gradescope shows above the tests."""
    lines = [f"Score: {_points(result.score)} / {_points(result.max_score)}"]
    if result.error:
        lines.append(result.error)
    if result.diagnosis:
        lines.append(result.diagnosis)
    if result.answer_name:
        lines.append(f"Graded variable: {result.answer_name}")
    if result.execution:
        lines.extend(f"Note: {note}" for note in result.execution.notes)
    return "\n".join(lines)


def gradescope_json(result: GradeResult) -> dict:
    """results.json content, Gradescope's autograder schema plus our `extra_data`."""
    tests = [
        {
            "name": check.name,
            "score": _num(check.points),
            "max_score": _num(check.max_points),
            "status": "passed" if check.passed else "failed",
            "output": check.message,
            "visibility": "visible",
            "extra_data": {"id": check.id, "diagnosis": check.diagnosis},
        }
        for check in result.checks
    ]
    execution = result.execution
    return {
        "score": _num(result.score),
        "execution_time": round(result.seconds, 3),
        "output": _output(result),
        "output_format": "text",
        "visibility": "visible",
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
            "rubric": result.rubric_name,
            "error": result.error,
            "kernel": execution.fate if execution else None,
            "kernel_origin": execution.kernel if execution else None,  # "warm": from the pool
            "notes": list(execution.notes) if execution else [],
            # cells whose results came from a warm parent that ran the lab's own copy of them
            "reused_cells": list(execution.reused_cells) if execution else [],
        },
    }


def short_traceback(text: str) -> str:
    """The end of a traceback, which is where the learner's own line is."""
    lines = text.strip().splitlines()
    if len(lines) > MAX_TRACEBACK_LINES:
        lines = ["…", *lines[-MAX_TRACEBACK_LINES:]]
    text = "\n".join(lines)
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
    if not result.reference_curves and not result.learner_curves:
        return None
    label = f"your {result.answer_name}" if result.answer_name else None
    return curves_svg(result.learner_curves, result.reference_curves, label)


def feedback_html(result: GradeResult) -> str:
    """A self-contained page for the learner: no scripts, no external assets."""
    template = _environment().get_template("feedback.html.j2")
    cells = failing_cells(result)
    total_bad = (
        sum(1 for c in result.execution.cells if c.status not in ("ok", "not_run"))
        if result.execution
        else 0
    )
    return template.render(
        r=result,
        status_text=STATUS_TEXT.get(result.status, result.status),
        passed=sum(1 for c in result.checks if c.passed),
        plot=_plot(result),
        cells=cells,
        more_cells=total_bad - len(cells),
        notes=result.execution.notes if result.execution else [],
        percent=(100 * result.score / result.max_score) if result.max_score > 0 else 0,
        full_marks=result.max_score > 0 and result.score >= result.max_score,
        all_passed=bool(result.checks) and all(c.passed for c in result.checks),
        generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    )


def write_reports(result: GradeResult, out_dir: Path) -> None:
    """out_dir/results.json and out_dir/feedback.html."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = json.dumps(gradescope_json(result), indent=2, allow_nan=False)
    write_atomic(out_dir / "results.json", data + "\n")
    write_atomic(out_dir / "feedback.html", feedback_html(result))
