"""`mbgd-grader coursera`: the ENTRYPOINT of the Coursera custom grader image (v2).

Coursera's contract (coursera/programming-assignments-demo, custom-graders/v2, and
coursera_autograder): the learner's file is in `/shared/submission/` (read-only, renamed to
the part's suggested file name), the environment has `partId` (and `filename`, the name the
learner chose, and `userId`), and the grader writes `/shared/feedback.json`
(`fractionalScore` 0..1, `feedback`, `feedbackType` "HTML") with the page itself in
`/shared/htmlFeedback.html`. It runs as a non-root user without network; ENV lines of the
Dockerfile are dropped, so the parts come from `coursera.json`, baked into the image.

Only the checks visible at once are on the page (Coursera knows no due dates here); the
fraction counts every check, as the grade does.
"""

from __future__ import annotations

import html
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from grader.errors import UsageError
from grader.execution.limits import RunLimits
from grader.grading.rubric import load_rubric
from grader.models import GradeResult, grader_failed
from grader.platforms.memory import limits_for_container
from grader.platforms.uploads import WrongUpload, grade_upload, script_instead, wrong_upload_result
from grader.reports.feedback import feedback_html, withheld_text
from grader.reports.learner_view import learner_view
from grader.reports.rendering import write_atomic

# Coursera shows rich feedback up to 64 KB; the page is ~9 KB, its picture ~5 KB more.
MAX_HTML_BYTES = 64 * 1024 - 512
MAX_CONFIG_BYTES = 64 * 1024
SCRIPT_SUFFIXES = (".py", ".pyw")


class CourseraConfigError(UsageError):
    """coursera.json is missing or malformed (the image was not built by `export coursera`)."""


def load_config(path: Path) -> dict[str, Any]:
    """{"parts": [...], "rubric": path or None}, checked."""
    try:
        data = json.loads(Path(path).read_bytes()[:MAX_CONFIG_BYTES])
    except (OSError, ValueError) as error:
        raise CourseraConfigError(f"cannot read the grader's config {path}: {error}") from error
    parts = data.get("parts") if isinstance(data, dict) else None
    if not isinstance(parts, list) or not all(isinstance(p, str) for p in parts):
        raise CourseraConfigError(f"{path} has no list of part ids under 'parts'")
    rubric = data.get("rubric")
    return {"parts": parts, "rubric": rubric if isinstance(rubric, str) else None}


def text_feedback(result: GradeResult) -> str:
    """The plain-text form of what the learner may see (the page's words, without it)."""
    view = learner_view(result)
    shown = view.result
    lines = [f"Score: {shown.score:g} / {shown.max_score:g}"]
    if not view.complete:
        lines.append(withheld_text(view))
    if shown.error:
        lines.append(shown.error)
    elif shown.diagnosis:
        lines.append(shown.diagnosis)
    for check in shown.checks:
        mark = "passed" if check.passed else "failed"
        lines.append(f"- {check.name} ({check.points:g}/{check.max_points:g}, {mark}): ")
        lines[-1] += check.message
    return "\n".join(lines)


def html_feedback(result: GradeResult) -> str:
    """The feedback page, under Coursera's size limit: with its picture (inline SVG, a few
    KB), else without it, else the text form in a minimal page (a long traceback or many
    notes can push it over)."""
    for plot in (True, False):
        page = feedback_html(result, plot=plot)
        if len(page.encode("utf-8")) <= MAX_HTML_BYTES:
            return page
    text = text_feedback(result)[: MAX_HTML_BYTES // 2]
    return (
        '<!doctype html><html><head><meta charset="utf-8"><title>Feedback</title></head>'
        f"<body><pre>{html.escape(text)}</pre></body></html>"
    )


def _message_result(message: str, rubric: str | None) -> GradeResult:
    """A result that is just a message to the learner (score 0)."""
    return wrong_upload_result("submission", WrongUpload(message), load_rubric(rubric))


def grade_part(
    shared: Path, config: Mapping[str, Any], env: Mapping[str, str], limits: RunLimits
) -> GradeResult:
    """The result for this part's submission; never raises."""
    part = env.get("partId", "")
    try:
        if part not in config["parts"]:
            known = ", ".join(config["parts"])
            return _message_result(
                f"This grader grades part {known} of the lab; this submission is for part "
                f"{part or '(none given)'}. Nothing of yours is wrong: please tell the course "
                "staff that the grader is attached to the wrong part.",
                config["rubric"],
            )
        chosen = env.get("filename", "")
        if chosen.lower().endswith(SCRIPT_SUFFIXES):
            return _message_result(script_instead(Path(chosen).name).message, config["rubric"])
    except Exception as error:  # noqa: BLE001 - a broken rubric: feedback all the same
        return grader_failed("submission", error)
    return grade_upload(shared / "submission", config["rubric"], limits)


def write_feedback(shared: Path, result: GradeResult) -> dict[str, Any]:
    """/shared/htmlFeedback.html, then /shared/feedback.json that points to it."""
    fraction = result.score / result.max_score if result.max_score > 0 else 0.0
    text = text_feedback(result)
    feedback = {
        "fractionalScore": round(min(1.0, max(0.0, fraction)), 4),
        "feedback": text,
        "feedbackType": "HTML",
    }
    try:
        page = html_feedback(result)
    except Exception:  # noqa: BLE001 - the grade still reaches the learner, as text
        page = f"<!doctype html><pre>{html.escape(text)}</pre>"
    write_atomic(shared / "htmlFeedback.html", page)
    write_atomic(shared / "feedback.json", json.dumps(feedback, allow_nan=False) + "\n")
    return feedback


def run(shared: Path, config_path: Path, env: Mapping[str, str]) -> int:
    """Grade and write the feedback; 0, or 1 when the grader itself failed."""
    try:
        config = load_config(config_path)
        result = grade_part(shared, config, env, limits_for_container(RunLimits()))
    except Exception as error:  # noqa: BLE001 - Coursera needs a feedback.json regardless
        result = grader_failed("submission", error)
    feedback = write_feedback(shared, result)
    # stdout is for the course staff only (Coursera's container log)
    print(
        f"part {env.get('partId', '?')}, user {env.get('userId', '?')}: {result.status}, "
        f"fractionalScore {feedback['fractionalScore']}",
        flush=True,
    )
    if result.error:
        print(result.error, file=sys.stderr, flush=True)
    return 1 if result.status == "crashed" and result.execution is None else 0
