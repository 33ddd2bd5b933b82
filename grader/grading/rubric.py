"""The rubric: which checks exist, their points, and how the answer is found and compared.

A rubric is a TOML file so instructors can reweight checks or add aliases without code; the
checks themselves (what each id tests) live in `grader.grading.checks`.
"""

from __future__ import annotations

import tomllib
from importlib.resources import files
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, field_validator

from grader.errors import UsageError
from grader.grading import identity
from grader.models import CheckId

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


class CheckSpec(BaseModel):
    id: str
    title: str
    points: float = Field(ge=0)

    @field_validator("id")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in KNOWN_CHECKS:
            raise ValueError(f"unknown check id {value!r}; known: {', '.join(KNOWN_CHECKS)}")
        return value


class Rubric(BaseModel):
    name: str
    title: str = ""
    answer: AnswerSpec
    checks: list[CheckSpec] = Field(min_length=1)
    plots: PlotsSpec = Field(default_factory=PlotsSpec)
    fingerprint: str = ""  # of the TOML text (grader.grading.identity): in every grade's key

    @property
    def max_score(self) -> float:
        return sum(check.points for check in self.checks)

    def check(self, check_id: str) -> CheckSpec | None:
        return next((c for c in self.checks if c.id == check_id), None)

    def with_integrity(self) -> Rubric:
        """The rubric plus the 0-point `integrity.seed` check, for integrity runs."""
        if self.check(CheckId.INTEGRITY_SEED):
            return self
        extra = CheckSpec(id=CheckId.INTEGRITY_SEED, title="Same code, secret seed", points=0)
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
    return rubric.model_copy(update={"fingerprint": identity.fingerprint(text)})


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
