"""The rubric: which checks exist, their points, and how the answer is found and compared.

A rubric is a TOML file so instructors can reweight checks or add aliases without code; the
checks themselves (what each id tests) live in `grader.grading.checks`.
"""

from __future__ import annotations

import json
import time
import tomllib
from datetime import UTC, date, datetime
from importlib.resources import files
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, field_validator

from grader.errors import UsageError
from grader.grading import identity
from grader.models import (
    ALWAYS_SHOWN,
    VISIBILITIES,
    CheckId,
    CheckResult,
    GradeResult,
    GraderMistake,
    Reveal,
    Visibility,
    not_graded,
)

KNOWN_CHECKS = tuple(CheckId)  # a rubric may name these (their values); see grader.models


class RubricError(UsageError, ValueError):
    """A rubric file that cannot be used; the message says which key is wrong."""


class AnswerSpec(BaseModel):
    aliases: list[str] = Field(min_length=1)
    epochs: int = Field(default=10, ge=1, le=1000)
    seed: int = 1
    rtol: float = Field(default=1e-4, gt=0, lt=1)
    atol: float = Field(default=1e-9, ge=0)


class PlotsSpec(BaseModel):
    """How the plot checks judge a plotted line."""

    model_config = ConfigDict(extra="forbid")

    # False: a line counts only when its data match the reference within tolerance.
    # True: the learner's own (possibly wrong) list counts too, so one mistake in LOSS20
    # costs the values check only.
    accept_learner_values: StrictBool = False


class ReleaseSpec(BaseModel):
    """When checks marked `after_due_date` / `after_published` reach the learners' views that
    this grader draws itself (the pytest plugin, feedback pages). Gradescope decides that on
    its own from the assignment's dates; this table is for everywhere else.

    Not part of the grade's identity (`Rubric.fingerprint`): releasing re-renders learners'
    pages, it does not re-run their notebooks."""

    model_config = ConfigDict(extra="forbid")

    # true: released now; a date-time with a zone: released from that moment on.
    after_due_date: StrictBool | datetime = False
    after_published: StrictBool = False

    @field_validator("after_due_date", mode="before")
    @classmethod
    def _zoned(cls, value: Any) -> Any:
        if isinstance(value, datetime) and value.utcoffset() is None:
            raise ValueError(
                f"{value.isoformat()} has no time zone; write it as e.g. "
                f"{value.strftime('%Y-%m-%dT%H:%M:%S')}Z (UTC) or with +01:00"
            )
        if isinstance(value, date) and not isinstance(value, datetime):
            raise ValueError(
                f"{value.isoformat()} is a day, not a moment; write e.g. "
                f"{value.isoformat()}T23:59:00Z"
            )
        return value

    def revealed(self, now: datetime | None = None) -> Reveal:
        """What a learner may see at `now` (default: this moment)."""
        shown: set[Visibility] = set(ALWAYS_SHOWN)
        due = self.after_due_date
        if due is True or (isinstance(due, datetime) and (now or datetime.now(UTC)) >= due):
            shown.add("after_due_date")
        if self.after_published:
            shown.add("after_published")
        return frozenset(shown)


class CheckSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    title: str
    points: float = Field(ge=0)
    visibility: Visibility = "visible"  # when learners see it: see default_rubric.toml

    @field_validator("id")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in KNOWN_CHECKS:
            raise ValueError(f"unknown check id {value!r}; known: {', '.join(KNOWN_CHECKS)}")
        return value

    @field_validator("visibility", mode="before")
    @classmethod
    def _visibility(cls, value: Any) -> Any:
        if value not in VISIBILITIES:
            raise ValueError(f"unknown visibility {value!r}; use one of {', '.join(VISIBILITIES)}")
        return value


class Rubric(BaseModel):
    name: str
    title: str = ""
    answer: AnswerSpec
    checks: list[CheckSpec] = Field(min_length=1)
    plots: PlotsSpec = Field(default_factory=PlotsSpec)
    release: ReleaseSpec = Field(default_factory=ReleaseSpec)
    fingerprint: str = ""  # of what decides a grade (`_graded_part`): in every grade's key

    @property
    def max_score(self) -> float:
        return sum(check.points for check in self.checks)

    def revealed(self, now: datetime | None = None) -> Reveal:
        """The visibilities learners' views show now (see `ReleaseSpec`)."""
        return self.release.revealed(now)

    def check(self, check_id: str) -> CheckSpec | None:
        return next((c for c in self.checks if c.id == check_id), None)

    def rejected(self, name: str, reason: str, started: float) -> GradeResult:
        """The graded result of an upload that is no notebook of the lab: every check at zero,
        each saying why (so a learner's page and a platform's result file still list them)."""
        checks = [
            CheckResult(
                id=spec.id,
                name=spec.title,
                points=0,
                max_points=spec.points,
                passed=False,
                message=f"Not graded: {reason}",
                visibility=spec.visibility,
            )
            for spec in self.checks
        ]
        return not_graded(
            name,
            "rejected",
            reason,
            checks=checks,
            max_score=self.max_score,
            rubric_name=self.name,
            diagnosis=reason,
            mistake=GraderMistake.NOT_A_NOTEBOOK,
            seconds=round(time.monotonic() - started, 3),
        )

    def with_integrity(self) -> Rubric:
        """The rubric plus the 0-point `integrity.seed` check, for integrity runs. It re-checks
        LOSS20's numbers, so learners see it when they see the values check (its visibility),
        unless the rubric lists it itself."""
        if self.check(CheckId.INTEGRITY_SEED):
            return self
        values = self.check(CheckId.LOSS20_VALUES)
        extra = CheckSpec(
            id=CheckId.INTEGRITY_SEED,
            title="Same code, secret seed",
            points=0,
            visibility=values.visibility if values else "visible",
        )
        return self.model_copy(update={"checks": [*self.checks, extra]})


def parse_rubric(text: str) -> Rubric:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise RubricError(f"rubric is not valid TOML: {error}") from error
    try:
        rubric = Rubric.model_validate(data)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors()
        )
        raise RubricError(f"rubric is not usable: {problems}") from error
    ids = [check.id for check in rubric.checks]
    if len(ids) != len(set(ids)):
        raise RubricError("rubric lists a check id twice")
    return rubric.model_copy(update={"fingerprint": identity.fingerprint(_graded_part(data))})


def _graded_part(data: dict[str, Any]) -> str:
    """The rubric as data, without `[release]`: what a stored grade depends on (points, ids,
    titles, tolerances, each check's visibility). Comments and layout do not count, and
    releasing checks to learners does not make every stored grade stale."""
    graded = {key: value for key, value in data.items() if key != "release"}
    return json.dumps(graded, sort_keys=True, separators=(",", ":"), default=str)


def default_rubric_text() -> str:
    return files("grader.grading").joinpath("default_rubric.toml").read_text(encoding="utf-8")


def load_rubric(path: str | Path | None = None) -> Rubric:
    """The rubric at `path`, or the default one shipped with the package."""
    if path is None:
        return parse_rubric(default_rubric_text())
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise RubricError(f"cannot read rubric {path}: {error.strerror}") from error
    return parse_rubric(text)
