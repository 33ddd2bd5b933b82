"""Plain data passed between the grading stages.

Every stage takes and returns these models, never dicts of dicts, so that the CLI, the pytest
plugin and the webhook service see exactly the same result. Everything that came out of a
learner's kernel is re-validated into these models before anyone reads it.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Literal
from urllib.parse import quote

from pydantic import BaseModel, Field

from grader import __version__

CellStatus = Literal["ok", "error", "timeout", "died", "not_run"]
KernelFate = Literal["ok", "timeout", "died", "oom", "not_started"]
SubmissionStatus = Literal["graded", "rejected", "timeout", "crashed"]
IntegrityStatus = Literal["not_checked", "passed", "flagged"]
# When a learner may see a check (Gradescope's names and meanings): `visible` always, `hidden`
# never, the other two once the due date has passed / the instructor has published grades.
# Instructors' views (gradebook, class summary) always show every check.
Visibility = Literal["visible", "hidden", "after_due_date", "after_published"]
VISIBILITIES: tuple[Visibility, ...] = ("visible", "hidden", "after_due_date", "after_published")
# What a learner-facing view shows now: "visible" plus whatever the instructor has released.
Reveal = frozenset[Visibility]
ALWAYS_SHOWN: Reveal = frozenset({"visible"})
# A submission with one of these needs the instructor's look (the console bar, the summary).
PROBLEM_STATUSES: tuple[SubmissionStatus, ...] = ("timeout", "crashed", "rejected")


class CheckId(StrEnum):
    """Every rubric check there is: the ids rubrics, results, reports and gradebooks use.

    A rubric TOML names some of them (`grader.grading.rubric`); what each tests is in
    `grader.grading.checks`. They are strings: `check.id == CheckId.LOSS20_VALUES` holds for
    a `CheckResult` read back from JSON. Never rename one: stored gradebooks use them.
    """

    NOTEBOOK_RUNS = "notebook.runs"
    LOSS20_PRESENT = "loss20.present"
    LOSS20_VALUES = "loss20.values"
    PLOT_LOSS20 = "plot.loss20"
    PLOT_ALL_METHODS = "plot.all_methods"
    PLOT_LEGEND = "plot.legend"
    INTEGRITY_SEED = "integrity.seed"  # added by --integrity (the secret-seed re-run)


class GraderMistake(StrEnum):
    """Mistake ids the grader itself gives (the lab's own mistakes are `reference`'s ids)."""

    NOT_A_NOTEBOOK = "not_a_notebook"  # the upload could not be read as a notebook
    HARD_CODED = "hard_coded"  # the answer did not follow a new seed, or stands as literals


class Line(BaseModel):
    """One plotted line, as data: what the learner drew, not a picture of it."""

    label: str = ""
    x: list[float] = Field(default_factory=list)
    y: list[float] = Field(default_factory=list)


class Axes(BaseModel):
    title: str = ""
    xlabel: str = ""
    ylabel: str = ""
    yscale: str = "linear"
    legend: list[str] = Field(default_factory=list)
    lines: list[Line] = Field(default_factory=list)


class Figure(BaseModel):
    """A figure recorded by the probe at plt.show() or at the end of the cell that drew it."""

    cell: int  # index in notebook.cells of the cell that was running
    axes: list[Axes] = Field(default_factory=list)


class CellRun(BaseModel):
    index: int  # index in notebook.cells
    status: CellStatus
    seconds: float = 0.0
    error_name: str = ""
    error_value: str = ""
    traceback: str = ""  # short, plain text, no ANSI colours


class Variable(BaseModel):
    """A candidate answer found in the kernel's globals after the last cell."""

    name: str
    type_name: str  # list, tuple, ndarray, Tensor, ...
    values: list[float]  # flattened, NaN and +-inf allowed
    length: int  # the length the learner's object had (values may be capped)
    cell: int | None = None  # last cell that created or changed it


class Execution(BaseModel):
    """What running one notebook produced: cells, figures, variables, and how the kernel ended."""

    fate: KernelFate
    fate_cell: int | None = None  # the cell that timed out or killed the kernel
    sandbox: str  # "bubblewrap" or "rlimits-only (bwrap not found)" etc.
    kernel: Literal["fresh", "warm"] = "fresh"  # a new process, or forked from the warm pool
    cells: list[CellRun] = Field(default_factory=list)
    figures: list[Figure] = Field(default_factory=list)
    variables: dict[str, Variable] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)  # e.g. tensors detached for plotting
    # cells not run in this kernel: the lab's own first cells, whose runs and records come
    # from a warm parent that ran exactly them (issue 16; grader.execution.prefix)
    reused_cells: list[int] = Field(default_factory=list)
    seconds: float = 0.0
    phases: dict[str, float] = Field(default_factory=dict)  # kernel_start, cells, teardown...


class CheckResult(BaseModel):
    id: str  # a CheckId value, e.g. "loss20.values"
    name: str  # human title
    points: float
    max_points: float
    passed: bool
    message: str  # written for the learner
    diagnosis: str = ""  # machine id of the matched mistake, e.g. "batch_size_10"
    visibility: Visibility = "visible"  # the rubric's: when a learner may see this check


class Curve(BaseModel):
    """A named sequence for the feedback picture (learner's or reference)."""

    label: str
    y: list[float]


class GradeResult(BaseModel):
    """The verdict on one submission: what every door reports."""

    submission: str  # display name (file stem or LMS id)
    status: SubmissionStatus
    score: float
    max_score: float
    checks: list[CheckResult] = Field(default_factory=list)
    answer_name: str | None = None  # which variable was graded as LOSS20
    diagnosis: str = ""  # one-line headline for the learner
    mistake: str = ""  # machine id of the main finding ("batch_size_10", "data_changed", ...)
    integrity: IntegrityStatus = "not_checked"
    sandbox: str = ""
    grader_version: str = ""
    torch_version: str = ""  # of the grading process and its kernels
    rubric_name: str = ""
    execution: Execution | None = None
    learner_curves: list[Curve] = Field(default_factory=list)
    reference_curves: list[Curve] = Field(default_factory=list)
    seconds: float = 0.0
    error: str = ""  # why a submission was rejected or crashed the harness


def not_graded(
    submission: str,
    status: SubmissionStatus,
    error: str,
    *,
    checks: list[CheckResult] | None = None,
    max_score: float = 0.0,
    rubric_name: str = "",
    diagnosis: str = "",
    mistake: str = "",
    seconds: float = 0.0,
) -> GradeResult:
    """The verdict on a submission that was not graded: no points, and `error` says why.

    The one recipe for them all: a file that is not a notebook ("rejected", with the rubric's
    checks at zero), a grader that failed on it ("crashed", `grader_failed`), a Celery task
    stopped at its time limit ("timeout")."""
    return GradeResult(
        submission=submission,
        status=status,
        score=0.0,
        max_score=max_score,
        checks=checks or [],
        diagnosis=diagnosis,
        mistake=mistake,
        grader_version=__version__,
        rubric_name=rubric_name,
        seconds=seconds,
        error=error,
    )


def grader_failed(submission: str, error: BaseException) -> GradeResult:
    """A stand-in verdict when the grader itself failed on a submission: shown, never stored."""
    detail = "".join(traceback.format_exception_only(type(error), error)).strip()
    return not_graded(
        submission, "crashed", f"internal grader error (not the learner's fault): {detail}"
    )


# -- a class folder's submissions (the batch, its gradebook, console bar and summary) --------


@dataclass(frozen=True)
class Item:
    """One notebook of a class folder: who handed it in, where it is, where its reports go."""

    submission: str  # unique in the batch: its path relative to the folder, without .ipynb
    learner: str
    path: Path  # the file that is (or was) graded
    report_dir: str  # relative to the output folder
    sha256: str  # of the notebook's bytes
    key: str = ""  # the identity of its grade (grader.grading.identity.grade_key)


@dataclass(frozen=True)
class Entry:
    """An item and its verdict: a gradebook row, a line of the class summary."""

    item: Item
    result: GradeResult
    graded_at: str = ""  # ISO 8601, when read from the gradebook

    @property
    def submission(self) -> str:
        return self.item.submission

    @property
    def learner(self) -> str:
        return self.item.learner

    @property
    def report_dir(self) -> str:
        return self.item.report_dir

    @property
    def feedback_href(self) -> str:
        return quote(f"{self.item.report_dir}/feedback.html")


# Where a grading backend hands each finished item: (item, result, persist). `persist` is False
# for a stand-in verdict of a grader failure, which is shown but never stored.
Sink = Callable[[Item, GradeResult, bool], None]
