"""`grade(notebook) -> GradeResult`: the one grading core behind the CLI, pytest and webhooks.

It never raises for anything a learner can cause: a file that is not a notebook becomes a
result with status "rejected" and the reason, a kernel that dies becomes "crashed".
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, model_validator

from grader import __version__
from grader.execution.portable import run_sync
from grader.execution.runner import KernelSource, RunLimits, execute_async
from grader.grading.checks import evaluate
from grader.grading.compare import Tolerance, starts_with
from grader.grading.forgery import hard_coded_cells
from grader.grading.integrity import derive_seed, new_key
from grader.grading.rubric import Rubric, load_rubric
from grader.models import (
    CheckId,
    CheckResult,
    Execution,
    GradeResult,
    GraderMistake,
)
from grader.submission import Submission, SubmissionError, load
from reference import expected

Source = bytes | str | os.PathLike | dict[str, Any]


class GradeOptions(BaseModel):
    """How to grade; JSON-serialisable so a Celery worker grades exactly the same way."""

    rubric_path: str | None = None  # None: the default rubric shipped with the package
    limits: RunLimits = Field(default_factory=RunLimits)
    integrity: bool = False  # re-run with a secret seed; hard-coded answers then fail
    # The integrity key: each submission's secret seed is derived from it and the notebook's
    # sha256 (grader.grading.integrity). None with integrity: a fresh random key, so a random seed.
    secret_key: str | None = Field(default=None, repr=False)
    # A pooled kernel may start from a warm parent that already ran the lab's own first cells
    # (issue 16): same results, field by field; False (`--no-reuse`) runs every cell.
    reuse: bool = True

    @model_validator(mode="before")
    @classmethod
    def _seed_was_the_key(cls, data: Any) -> Any:
        """`secret_seed=N` (the field before keys) is now the key "N"."""
        if isinstance(data, dict) and "secret_seed" in data:
            data = dict(data)
            seed = data.pop("secret_seed")
            if seed is not None and data.get("secret_key") is None:
                data["secret_key"] = str(seed)
        return data

    def rubric(self) -> Rubric:
        return load_rubric(self.rubric_path)


def _status(result: GradeResult, execution: Execution) -> str:
    """A kernel that timed out or died still counts as graded if it left something to grade."""
    if execution.fate == "ok" or result.answer_name:
        return "graded"
    if execution.fate == "timeout":
        return "timeout"
    return "crashed"


def _torch_version() -> str:
    """The torch of this process, which is the kernels' too (they run the same Python): the
    one that computed both the learner's numbers and the expected ones."""
    import torch  # already imported by `reference`

    return str(torch.__version__)


RERUN_FAILED = "the secret-seed re-run failed inside the grader (not the learner's doing)"


async def _secret_seed_rerun(
    submission: Submission,
    options: GradeOptions,
    answer_name: str | None,
    seed: int,
    pool: KernelSource | None,
) -> list[float] | None:
    """Run the notebook again with `seed`; return only the values of `answer_name` there.

    Nothing else of this run may leave this function: its notes, errors, other variables,
    figures and duration could all carry the seed (the learner's code knows it while it runs)
    to a result the learner sees. Its failures are reported with fixed texts only.
    """
    try:
        second = await execute_async(
            submission.notebook, options.limits, seed_override=seed, pool=pool
        )
    except OSError:
        raise OSError(RERUN_FAILED) from None  # an OSError: the Celery task is retried
    except Exception:  # noqa: BLE001 - whatever it says stays here
        raise RuntimeError(RERUN_FAILED) from None
    if second.fate == "not_started":  # no kernel: that is no evidence against the learner
        raise OSError(RERUN_FAILED + ": its kernel did not start")
    variable = second.variables.get(answer_name or "")
    return None if variable is None else list(variable.values)


def _follows(values: list[float] | None, secret_seed: int, rubric: Rubric) -> bool:
    """The re-run's answer is the reference's for the secret seed (a fresh training of the
    five methods, ~0.1 s: each submission has its own seed, so nothing is cached)."""
    if values is None:
        return False
    want = expected(seed=secret_seed, epochs=rubric.answer.epochs)["LOSS20"]
    return starts_with(values, want, Tolerance(rubric.answer.rtol, rubric.answer.atol))


def _apply_integrity(
    result: GradeResult, values: list[float] | None, rubric: Rubric, secret_seed: int
) -> None:
    """Add the secret-seed check to `result`; a failed one flags the grade as hard-coded."""
    check = _integrity_check(result, values, rubric, secret_seed)
    result.checks = [c for c in result.checks if c.id != check.id] + [check]
    result.integrity = "passed" if check.passed else "flagged"
    if not check.passed:
        result.mistake = result.mistake or GraderMistake.HARD_CODED
        result.diagnosis = check.message


def _integrity_check(
    first: GradeResult, values: list[float] | None, rubric: Rubric, secret_seed: int
) -> CheckResult:
    """Same code, secret seed: a computed answer follows the seed, a hard-coded one does not.

    `values`: the answer's values in the re-run (None: it had no such variable). Every message
    is a fixed text: nothing of the re-run or of its seed may reach the learner."""
    spec = rubric.check(CheckId.INTEGRITY_SEED)
    assert spec is not None
    values_passed = any(c.id == CheckId.LOSS20_VALUES and c.passed for c in first.checks)
    if not values_passed:
        message = "Not checked: LOSS20 does not match the reference for seed 1."
        passed = True
    elif _follows(values, secret_seed, rubric):
        message = "Re-run with another seed: LOSS20 follows the data, as computed answers do."
        passed = True
    else:
        message = (
            "Re-run with another seed: LOSS20 did not change with the data. The numbers look "
            "typed in or copied rather than computed by the notebook."
        )
        passed = False
    return CheckResult(
        id=spec.id,
        name=spec.title,
        points=spec.points if passed else 0,
        max_points=spec.points,
        passed=passed,
        message=message,
        diagnosis="" if passed else GraderMistake.HARD_CODED,
        visibility=spec.visibility,
    )


def _flag_literals(result: GradeResult, submission: Submission, rubric: Rubric) -> None:
    """A passing LOSS20 whose numbers stand in the source as literals is noted, not failed:
    the instructor decides (the secret-seed re-run gives the stronger evidence).

    The note on the LOSS20 check is added whatever the re-run found: a learner may be shown
    that check while the re-run's (`integrity.seed`) is held back, and a note there only when
    the re-run failed would tell its verdict. The grade's own flag (`integrity`, the mistake,
    the diagnosis: learner views show these only with the re-run's check) is set only when no
    re-run passed: a passed re-run outweighs numbers seen in the source."""
    values = next((c for c in result.checks if c.id == CheckId.LOSS20_VALUES and c.passed), None)
    if values is None:
        return
    want = expected(seed=rubric.answer.seed, epochs=rubric.answer.epochs)["LOSS20"]
    cells = hard_coded_cells(submission.notebook, want)
    if not cells:
        return
    note = (
        f"Cell {cells[0]} spells these numbers out as literals; the instructor will see this "
        "answer noted as possibly typed in rather than computed."
    )
    values.message += " Note: " + note[:1].lower() + note[1:]
    if result.integrity == "passed":
        return
    result.integrity = "flagged"
    result.mistake = GraderMistake.HARD_CODED
    result.diagnosis = note


async def grade_submission(
    submission: Submission, options: GradeOptions, *, pool: KernelSource | None = None
) -> GradeResult:
    """Grade an already loaded submission (the doors that validated it themselves use this).

    `pool`: the warm kernel pool of the door that opened one (`grader.execution.pool`); None:
    a fresh kernel for each run."""
    started = time.monotonic()
    rubric = options.rubric()
    if options.integrity:
        rubric = rubric.with_integrity()
    execution = await execute_async(
        submission.notebook, options.limits, pool=pool, reuse=options.reuse
    )
    result = await asyncio.to_thread(evaluate, execution, rubric)  # off the event loop
    # What the learner is shown of the time: the first run's only. The re-run's duration is
    # the learner's code's to choose, knowing the secret seed.
    seconds = round(time.monotonic() - started, 3)
    if options.integrity:
        key = options.secret_key or new_key()
        secret_seed = derive_seed(key, submission.sha256, avoid={rubric.answer.seed})
        values = await _secret_seed_rerun(
            submission, options, result.answer_name, secret_seed, pool
        )
        # off the event loop that feeds the other kernels: it trains the reference anew
        await asyncio.to_thread(_apply_integrity, result, values, rubric, secret_seed)
    _flag_literals(result, submission, rubric)
    result.status = _status(result, execution)  # type: ignore[assignment]
    result.submission = submission.name
    result.grader_version = __version__
    result.torch_version = _torch_version()
    result.seconds = seconds
    return result


async def grade_async(
    source: Source,
    name: str | None = None,
    options: GradeOptions | None = None,
    *,
    pool: KernelSource | None = None,
) -> GradeResult:
    """Load, run and score one notebook. Never raises for anything in the notebook."""
    options = options or GradeOptions()
    started = time.monotonic()
    display = name or (Path(source).stem if isinstance(source, str | os.PathLike) else "notebook")
    try:
        submission = load(source, name=display)
    except SubmissionError as error:
        return options.rubric().rejected(display, str(error), started)
    return await grade_submission(submission, options, pool=pool)


def grade(
    source: Source,
    name: str | None = None,
    options: GradeOptions | None = None,
    *,
    pool: KernelSource | None = None,
) -> GradeResult:
    """Synchronous `grade_async`, for scripts and the pytest plugin."""
    return run_sync(grade_async(source, name, options, pool=pool))
