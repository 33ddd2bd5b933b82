"""The class at a glance: gradebook.csv for the LMS and summary.html for the instructor.

Both are views of the batch's results, one row per submission. Everything in them that came
from a learner (file names, variable names, messages) is hostile: the CSV neutralises
spreadsheet formulas and the page is rendered with autoescaping and a strict CSP.

gradebook.csv columns: learner, submission, score, max_score, one column per check id with
its points (rubric order), answer_name, diagnosis (machine id of the main finding, e.g.
`batch_size_10`, `hard_coded`), message (the learner's one-line headline), integrity
(not_checked/passed/flagged), seconds, status (graded/rejected/timeout/crashed), feedback
(path of the learner's page, relative to the CSV).
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import math
import statistics
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import jinja2

from grader.models import PROBLEM_STATUSES, CheckId, Entry, GradeResult, GraderMistake
from grader.reports.rendering import environment, write_atomic

if TYPE_CHECKING:
    from rich.console import Console

# -- CSV -------------------------------------------------------------------------------------


FORMULA_STARTS = ("=", "+", "-", "@", "\t")


def _cell(value: object) -> object:
    """Text that a spreadsheet would run as a formula gets a leading apostrophe: at the start
    of the field and of each of its lines, since some spreadsheets start a row at a line break
    even inside quotes. Every line break (a bare CR, which the writer would not quote, and
    the Unicode ones) becomes a LF, which it quotes."""
    if not isinstance(value, str):
        return value
    lines = value.splitlines() or [""]
    return "\n".join("'" + line if line.startswith(FORMULA_STARTS) else line for line in lines)


def _num(value: float) -> str:
    return f"{round(value, 4):g}" if math.isfinite(value) else ""


def check_ids(entries: list[Entry]) -> list[str]:
    """Every check id seen, in rubric order (the order the first results list them)."""
    seen: dict[str, None] = {}
    for entry in entries:
        for check in entry.result.checks:
            seen.setdefault(check.id, None)
    return list(seen)


def gradebook_csv(entries: list[Entry]) -> str:
    ids = check_ids(entries)
    header = ["learner", "submission", "score", "max_score", *ids]
    header += ["answer_name", "diagnosis", "message", "integrity", "seconds", "status"]
    header += ["feedback"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for e in entries:
        r = e.result
        points = {c.id: _num(c.points) for c in r.checks}
        row = [e.learner, e.submission, _num(r.score), _num(r.max_score)]
        row += [points.get(i, "") for i in ids]
        row += [r.answer_name or "", r.mistake, r.diagnosis or r.error, r.integrity]
        row += [f"{r.seconds:.1f}", r.status, f"{e.report_dir}/feedback.html"]
        writer.writerow([_cell(v) for v in row])
    return buffer.getvalue()


# -- the class summary -----------------------------------------------------------------------


@dataclass
class Bin:
    label: str
    lo: float
    hi: float
    count: int = 0


@dataclass
class CheckRate:
    id: str
    title: str
    max_points: float
    passed: int
    total: int

    @property
    def percent(self) -> float:
        return 100 * self.passed / self.total if self.total else 0.0


@dataclass
class Diagnosis:
    id: str
    title: str
    count: int
    examples: list[Entry] = field(default_factory=list)


@dataclass
class ClassSummary:
    entries: list[Entry]
    max_score: float
    mean: float
    median: float
    full_marks: int
    statuses: Counter
    bins: list[Bin]
    checks: list[CheckRate]
    diagnoses: list[Diagnosis]
    problems: list[Entry]
    flagged: list[Entry]
    integrity_checked: bool

    @property
    def total(self) -> int:
        return len(self.entries)


def _bins(scores: list[float], max_score: float) -> list[Bin]:
    """One bar per whole point when the rubric is small (a score goes to the point below it,
    so the last bar is exactly full marks); ten equal bars otherwise."""
    top = max([max_score, *scores, 0.0])
    if 0 < top <= 20 and float(top).is_integer():
        bins = [Bin(f"{k}", k, k + 1) for k in range(int(top) + 1)]
    else:
        width = (top or 1.0) / 10
        bins = [
            Bin(f"{k * width:g}–{(k + 1) * width:g}", k * width, (k + 1) * width) for k in range(10)
        ]
    for s in scores:
        for i, b in enumerate(bins):
            if b.lo <= s < b.hi or (i == len(bins) - 1 and s >= b.lo):
                b.count += 1
                break
        else:  # negative: a rubric with penalties
            bins[0].count += 1
    return bins


def axis_ticks(peak: int) -> list[int]:
    """Whole-number ticks from 0 to at least `peak`, at most five of them past zero."""
    step = max(1, math.ceil(peak / 4))
    return [step * k for k in range(math.ceil(max(peak, 1) / step) + 1)]


def _mistake_title(mistake: str) -> str:
    from reference import mistake_info

    special: dict[str, str] = {
        GraderMistake.HARD_CODED: "numbers hard-coded or copied (did not follow a new seed)",
        GraderMistake.NOT_A_NOTEBOOK: "file is not a readable notebook",
    }
    if mistake in special:
        return special[mistake]
    try:
        return mistake_info(mistake).title
    except (KeyError, ValueError):
        return mistake.replace("_", " ")


def problem_text(result: GradeResult) -> str:
    """One line for the instructor: why this submission needs a look."""
    if result.status == "rejected" or (result.status == "crashed" and result.error):
        return result.error or result.diagnosis
    notes = result.execution.notes if result.execution else []
    if result.status == "timeout":
        limit = next((n for n in notes if "time limit" in n), "")
        return f"Timed out: {limit}." if limit else result.error or "Timed out."
    if result.status == "crashed":
        died = next((n for n in notes if "kernel" in n), "")
        return died or result.error or "The kernel crashed."
    if result.integrity == "flagged":
        seed = CheckId.INTEGRITY_SEED
        check = next((c for c in result.checks if c.id == seed and not c.passed), None)
        if check is not None:
            return "Secret-seed re-run: " + check.message
        return "LOSS20's numbers are written out as literals in the source (typed in?)."
    return result.diagnosis


def summarize(entries: list[Entry]) -> ClassSummary:
    results = [e.result for e in entries]
    scores = [r.score for r in results]
    max_score = max((r.max_score for r in results), default=0.0)
    rates: dict[str, CheckRate] = {}
    for r in results:
        for c in r.checks:
            rate = rates.setdefault(c.id, CheckRate(c.id, c.name, c.max_points, 0, 0))
            rate.total += 1
            rate.passed += int(c.passed)
    counts = Counter(r.mistake for r in results if r.mistake)
    diagnoses = []
    for mistake, count in counts.most_common(8):
        examples = [e for e in entries if e.result.mistake == mistake][:3]
        diagnoses.append(Diagnosis(mistake, _mistake_title(mistake), count, examples))
    return ClassSummary(
        entries=entries,
        max_score=max_score,
        mean=statistics.fmean(scores) if scores else 0.0,
        median=statistics.median(scores) if scores else 0.0,
        full_marks=sum(1 for r in results if r.max_score > 0 and r.score >= r.max_score),
        statuses=Counter(r.status for r in results),
        bins=_bins(scores, max_score),
        checks=list(rates.values()),
        diagnoses=diagnoses,
        problems=[e for e in entries if e.result.status in PROBLEM_STATUSES],
        flagged=[e for e in entries if e.result.integrity == "flagged"],
        integrity_checked=any(r.integrity != "not_checked" for r in results),
    )


SORT_SCRIPT = """\
document.querySelectorAll('table.sortable').forEach(function (table) {
  table.querySelectorAll('th').forEach(function (th, col) {
    th.addEventListener('click', function () {
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      var asc = th.getAttribute('aria-sort') !== 'ascending';
      table.querySelectorAll('th').forEach(function (h) { h.removeAttribute('aria-sort'); });
      th.setAttribute('aria-sort', asc ? 'ascending' : 'descending');
      rows.sort(function (a, b) {
        var x = a.cells[col].dataset.sort || a.cells[col].textContent.trim();
        var y = b.cells[col].dataset.sort || b.cells[col].textContent.trim();
        var nx = parseFloat(x), ny = parseFloat(y);
        var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
        return asc ? c : -c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


@cache
def _environment() -> jinja2.Environment:
    filters = {"num": lambda v: f"{round(v, 2):g}", "mistake_title": _mistake_title}
    return environment({**filters, "problem": problem_text})


def summary_html(entries: list[Entry], *, title: str = "Mini-Batch Gradient Descent") -> str:
    """A self-contained page: inline SVG histogram, one small sorting script, no assets."""
    digest = base64.b64encode(hashlib.sha256(SORT_SCRIPT.encode()).digest()).decode()
    summary = summarize(entries)
    ticks = axis_ticks(max((b.count for b in summary.bins), default=0))
    return (
        _environment()
        .get_template("summary.html.j2")
        .render(
            s=summary,
            title=title,
            ticks=ticks,
            peak=ticks[-1],
            script=SORT_SCRIPT,
            script_hash=f"sha256-{digest}",
            generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        )
    )


def write_summary(entries: list[Entry], out: Path) -> None:
    """out/gradebook.csv and out/summary.html."""
    title = next((e.result.rubric_name for e in entries if e.result.rubric_name), "")
    write_atomic(out / "gradebook.csv", gradebook_csv(entries))
    write_atomic(out / "summary.html", summary_html(entries, title=title or "Class summary"))


def print_class_table(entries: list[Entry], console: Console) -> None:
    """The class at a glance in the terminal: scores, checks, top diagnoses."""
    from rich.table import Table

    s = summarize(entries)
    if not s.total:
        return
    head = Table(title=f"Class summary: {s.total} submissions", show_header=False, box=None)
    head.add_row("mean score", f"{s.mean:.2f} / {s.max_score:g} (median {s.median:g})")
    head.add_row("full marks", f"{s.full_marks} ({100 * s.full_marks / s.total:.0f}%)")
    head.add_row("status", ", ".join(f"{k} {v}" for k, v in s.statuses.most_common()))
    if s.integrity_checked:
        head.add_row("integrity flags", str(len(s.flagged)))
    console.print(head)
    checks = Table(title="Pass rate per check")
    checks.add_column("check")
    checks.add_column("points", justify="right")
    checks.add_column("passed", justify="right")
    for c in s.checks:
        checks.add_row(c.id, f"{c.max_points:g}", f"{c.passed}/{c.total} ({c.percent:.0f}%)")
    console.print(checks)
    if s.diagnoses:
        diag = Table(title="Most common diagnoses")
        diag.add_column("count", justify="right")
        diag.add_column("diagnosis")
        for d in s.diagnoses:
            diag.add_row(str(d.count), f"{d.title} ({d.id})")
        console.print(diag)
