"""The service's request and response bodies, as they appear in /openapi.json."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Status = Literal["queued", "running", "graded", "failed"]


class LtiTarget(BaseModel):
    """Where the LTI 1.3 AGS Score goes: the launch's platform, line item and user."""

    model_config = ConfigDict(extra="forbid")

    issuer: str = Field(
        min_length=1, max_length=2048, description="The launch's `iss`: a registered platform."
    )
    lineitem: str = Field(
        min_length=1,
        max_length=2048,
        description="The AGS claim's `lineitem` URL; the Score is posted to `{lineitem}/scores`.",
    )
    user_id: str = Field(
        min_length=1, max_length=256, description="The launch's `sub`: the AGS `userId`."
    )

    @field_validator("issuer", "lineitem", "user_id")
    @classmethod
    def _encodable(cls, value: str) -> str:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("must be valid Unicode text (no lone surrogates)") from None
        return value


class SubmissionIn(BaseModel):
    """What the LMS posts. Exactly one of ``notebook`` and ``notebook_base64``."""

    model_config = ConfigDict(extra="ignore", coerce_numbers_to_str=True)

    submission_id: str = Field(min_length=1, max_length=256, description="The LMS's own id.")
    learner_id: str = Field(
        min_length=1, max_length=256, description="Becomes AGS `userId` in the callback."
    )
    assignment_id: str | None = Field(default=None, max_length=256)
    notebook: dict[str, Any] | None = Field(
        default=None, description="The .ipynb file's JSON, as an object."
    )
    notebook_base64: str | None = Field(
        default=None, description="The .ipynb file's bytes, base64-encoded."
    )
    callback_url: str | None = Field(
        default=None,
        max_length=2048,
        description="Where to POST the signed result; its host must be allowed by the service.",
    )
    lti: LtiTarget | None = Field(
        default=None,
        description="Post the grade to this LTI 1.3 platform's gradebook (AGS), instead of or "
        "besides `callback_url`.",
    )

    @field_validator("submission_id", "learner_id", "assignment_id", "callback_url")
    @classmethod
    def _encodable(cls, value: str | None) -> str | None:
        """JSON can smuggle lone surrogates (``\\ud800``); they cannot be stored or echoed."""
        if value is not None:
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("must be valid Unicode text (no lone surrogates)") from None
        return value


class Accepted(BaseModel):
    """The 202 answer: the submission is stored and will be graded."""

    id: str
    status: Status
    status_url: str


class CallbackState(BaseModel):
    status: Literal["pending", "delivered", "dead"]
    webhook_id: str
    attempts: int
    delivered_at: str | None = None
    last_status: int | None = None
    last_error: str | None = None


class LtiState(BaseModel):
    """The AGS Score's delivery: ``dead`` means given up, ``last_error`` says why."""

    status: Literal["waiting", "pending", "delivered", "dead"]
    issuer: str
    lineitem: str
    user_id: str
    attempts: int = 0
    delivered_at: str | None = None
    last_status: int | None = None
    last_error: str | None = None


class SubmissionState(BaseModel):
    """``GET /v1/submissions/{id}``: where a submission is, and its results.json once graded."""

    id: str
    submission_id: str
    learner_id: str
    assignment_id: str | None = None
    status: Status
    result: dict[str, Any] | None = Field(
        default=None,
        description=(
            "results.json in Gradescope's schema. Each of `tests[]` carries its check's "
            "`visibility` from the rubric (`visible`, `hidden`, `after_due_date`, "
            "`after_published`): show a learner only what it allows; the top-level `output` "
            "and the AGS comment already leave out every check that is not `visible`."
        ),
    )
    error: str | None = None
    attempts: int
    received_at: str
    started_at: str | None = None
    finished_at: str | None = None
    queued_seconds: float | None = None
    grading_seconds: float | None = None
    reused_from: str | None = Field(
        default=None,
        description="Another submission with the same notebook whose grade was reused.",
    )
    callback: CallbackState | None = None
    lti: LtiState | None = None


class Health(BaseModel):
    status: Literal["ok"]
    mode: str
    queued: int
    running: int
    graded: int
    failed: int
    callbacks_pending: int
    scores_pending: int = 0


class ErrorItem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class Problem(BaseModel):
    """Every error answer: ``detail`` is a sentence, or a list naming the fields at fault."""

    detail: str | list[ErrorItem]
