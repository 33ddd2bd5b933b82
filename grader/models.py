"""Plain data passed between the grading stages.

Every stage takes and returns these models, never dicts of dicts, so that the CLI, the pytest
plugin and the webhook service see exactly the same result. Everything that came out of a
learner's kernel is re-validated into these models before anyone reads it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

CellStatus = Literal["ok", "error", "timeout", "died", "not_run"]
KernelFate = Literal["ok", "timeout", "died", "oom", "not_started"]
SubmissionStatus = Literal["graded", "rejected", "timeout", "crashed"]
IntegrityStatus = Literal["not_checked", "passed", "flagged"]


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
    seconds: float = 0.0
    phases: dict[str, float] = Field(default_factory=dict)  # kernel_start, cells, teardown...


class CheckResult(BaseModel):
    id: str  # rubric check id, e.g. "loss20.values"
    name: str  # human title
    points: float
    max_points: float
    passed: bool
    message: str  # written for the learner
    diagnosis: str = ""  # machine id of the matched mistake, e.g. "batch_size_10"


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
    rubric_name: str = ""
    execution: Execution | None = None
    learner_curves: list[Curve] = Field(default_factory=list)
    reference_curves: list[Curve] = Field(default_factory=list)
    seconds: float = 0.0
    error: str = ""  # why a submission was rejected or crashed the harness
