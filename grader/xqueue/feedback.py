"""The message an Open edX learner sees under the problem: a compact, well-formed fragment.

The LMS stores the grader's `msg` with the learner's state and shows it inline; older LMS
versions drop a reply whose `msg` does not parse as XML (lxml's ``etree.fromstring``), so it
is built here as an element tree and serialised, never glued from strings. The full
feedback page (`grader.reports.feedback`) is a document with styles and a plot: too big and
not a fragment. Everything from the learner's notebook (messages, tracebacks, names) is text
in the tree, so it is escaped; characters XML 1.0 cannot carry at all are dropped, and the
whole is bounded.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from grader.models import GradeResult
from grader.reports.feedback import (
    STATUS_TEXT,
    failing_cells,
    learner_notes,
    short_traceback,
    withheld_text,
)
from grader.reports.learner_view import learner_view

MAX_MESSAGE_CHARS = 600  # one check's message, one note
MAX_TRACEBACK_CHARS = 1500  # the end of one failing cell's traceback
MAX_FAILING_CELLS = 2
# Characters XML 1.0 does not allow, even as character references.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _text(value: str, limit: int) -> str:
    value = _NOT_XML.sub("\ufffd", value)
    return value if len(value) <= limit else value[: limit - 1] + "…"


def _points(value: float) -> str:
    return f"{round(value, 4):g}"


def _add(
    parent: ET.Element, tag: str, text: str = "", *, limit: int = MAX_MESSAGE_CHARS, css: str = ""
) -> ET.Element:
    element = ET.SubElement(parent, tag, {"class": css} if css else {})
    if text:
        element.text = _text(text, limit)
    return element


def message_html(graded: GradeResult, *, scale: float = 1.0) -> str:
    """The fragment for `graded`, as a learner may see it (`learner_view`: checks the rubric
    holds back are left out, and so is whatever would give them away); `scale` turns the
    rubric's points into the problem's."""
    view = learner_view(graded)
    result = view.result
    root = ET.Element("div", {"class": "mbgd-grader-feedback"})
    score, top = result.score * scale, result.max_score * scale
    head = _add(root, "p")
    _add(head, "strong", f"Score: {_points(score)} / {_points(top)}")
    head[-1].tail = " \u2014 " + _text(STATUS_TEXT.get(result.status, result.status), 200)
    if not view.complete:
        _add(root, "p", withheld_text(view), css="withheld")
    if result.error:
        _add(root, "p", result.error, css="error")
    if result.diagnosis and result.diagnosis != result.error:
        _add(root, "p", result.diagnosis, css="diagnosis")
    if result.answer_name:
        line = _add(root, "p", "Graded variable: ")
        _add(line, "code", result.answer_name, limit=100)
    if result.checks:
        table = _add(root, "ul", css="checks")
        for check in result.checks:
            item = _add(table, "li")
            mark = "\u2714" if check.passed else "\u2718"
            points = f"{_points(check.points * scale)}/{_points(check.max_points * scale)}"
            title = _add(item, "strong", f"{mark} {check.name} ({points})", limit=200)
            said = (result.error and result.error in check.message) or (
                check.message == result.diagnosis  # the headline above says it already
            )
            if check.message and not said:
                title.tail = ": "
                _add(item, "span", check.message)
    for cell in failing_cells(result)[:MAX_FAILING_CELLS]:
        what = f"Cell {cell.index}: {cell.status}"
        if cell.error_name:
            what += f" ({cell.error_name}: {cell.error_value})"
        _add(root, "p", what, css="cell")
        if cell.traceback:
            _add(
                root,
                "pre",
                short_traceback(cell.traceback)[-MAX_TRACEBACK_CHARS:],
                limit=MAX_TRACEBACK_CHARS + 1,
            )
    notes = learner_notes(result)[:5]
    if notes:
        listing = _add(root, "ul", css="notes")
        for note in notes:
            _add(listing, "li", f"Note: {note}")
    return ET.tostring(root, encoding="unicode")
