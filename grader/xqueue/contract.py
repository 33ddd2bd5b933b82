"""The XQueue messages, read and written without I/O (openedx/xqueue and edx-submissions).

Every reply of the pull interface is ``{"return_code": 0 | 1, "content": ...}``. A pulled
submission's `content` is itself a JSON string holding three JSON strings: `xqueue_header`
(``submission_id`` and the pull's ``submission_key``; echoed back verbatim), `xqueue_body`
(``student_response``, ``grader_payload``, ``student_info``) and `xqueue_files` (file name ->
URL of the upload). The answer is posted as the form fields `xqueue_header` and `xqueue_body`,
the latter ``{"correct": bool, "score": number, "msg": html}``.

The two servers read `score` differently, so the worker must know which one it talks to:

- openedx/xqueue (`XQUEUE`) relays the body to the LMS, whose CodeResponse takes `score` as
  points, capped at the problem's weight (the input's ``points``, 1 by default);
- edx-submissions (`EDX_SUBMISSIONS`, the XQueue API Open edX uses now) stores
  ``round(score * points_possible)`` (4.0.2 and later; points_possible is the problem's
  weight), so `score` is a fraction 0..1 there. It also replaces the course's
  grader_payload with ``{"grader": <its "grader" key>}``.

They answer ``GET /xqueue/login/`` differently, which tells them apart
(`server_from_login_page`).

What the server sends is not trusted: anything that does not have this shape is a
`ContractError` naming the part, never a ``KeyError`` deep in the worker.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field
from typing import Any

from grader.errors import Refused

MAX_POINTS = 1_000_000.0  # a problem's weight from grader_payload: bounded, positive
XQUEUE = "xqueue"
EDX_SUBMISSIONS = "edx-submissions"
SERVERS = (XQUEUE, EDX_SUBMISSIONS)


class ContractError(Refused):
    """A message that does not follow the XQueue contract; the text names what is wrong."""


@dataclass(frozen=True)
class Reply:
    """One answer of the XQueue API: `ok` is return_code 0; `content` is what came with it."""

    ok: bool
    content: Any


@dataclass(frozen=True)
class Pulled:
    """A submission as `get_submission` handed it out."""

    header: str  # exactly as received: put_result must echo it
    submission_id: str
    body: str  # the xqueue_body JSON string, as received
    files: dict[str, str] = field(default_factory=dict)  # file name -> URL

    @functools.cached_property
    def fields(self) -> dict[str, Any]:
        """The body's fields; a body that is not a JSON object reads as none."""
        try:
            data = json.loads(self.body)
        except (TypeError, ValueError, RecursionError):
            return {}
        return data if isinstance(data, dict) else {}

    @property
    def student_response(self) -> str:
        value = self.fields.get("student_response")
        return value if isinstance(value, str) else ""

    @property
    def points(self) -> float | None:
        """The problem's weight when the course put ``{"points": N}`` in its grader_payload.

        The LMS caps a score at the weight of the problem's input (``points="N"``, 1 by
        default), so a course that cannot make it the rubric's maximum names it here and the
        score is scaled to it."""
        return payload_points(self.fields.get("grader_payload"))

    @property
    def learner(self) -> str:
        """The anonymous student id, for the logs and the result's name (may be empty)."""
        info = self.fields.get("student_info")
        if isinstance(info, str):
            try:
                info = json.loads(info)
            except (ValueError, RecursionError):
                info = None
        value = info.get("anonymous_student_id") if isinstance(info, dict) else None
        return str(value)[:64] if isinstance(value, str | int) else ""


def parse_reply(data: Any) -> Reply:
    """An API answer, decoded JSON: ``{"return_code": 0|1, "content": ...}``."""
    if not isinstance(data, dict) or "return_code" not in data:
        raise ContractError("the answer has no return_code")
    code = data["return_code"]
    if isinstance(code, bool) or code not in (0, 1):
        raise ContractError(f"the answer's return_code is {code!r}, not 0 or 1")
    return Reply(ok=code == 0, content=data.get("content"))


def is_empty_queue(reply: Reply) -> bool:
    """`get_submission` on an empty queue: return_code 1 with "Queue '<name>' is empty"."""
    return not reply.ok and isinstance(reply.content, str) and reply.content.endswith("is empty")


def server_from_login_page(status: int, data: Any) -> str | None:
    """Which server answered ``GET /xqueue/login/`` (decoded JSON `data`), or None.

    openedx/xqueue's log_in view answers a GET with return_code 1 "login_required";
    edx-submissions' XQueueViewSet answers it with return_code 0 (and its CSRF cookie), or,
    before it took GETs (4.0.0), with DRF's 405 ``{"detail": ...}``."""
    try:
        reply = parse_reply(data)
    except ContractError:
        reply = None
    if status == 200 and reply is not None:
        if not reply.ok and reply.content == "login_required":
            return XQUEUE
        if reply.ok:
            return EDX_SUBMISSIONS
    if status == 405 and isinstance(data, dict) and "detail" in data:
        return EDX_SUBMISSIONS
    return None


def _json_text(value: Any, what: str) -> Any:
    if not isinstance(value, str):
        raise ContractError(f"{what} is not a JSON string")
    try:
        return json.loads(value)
    except (ValueError, RecursionError):
        raise ContractError(f"{what} is not valid JSON") from None


def parse_submission(content: Any) -> Pulled:
    """The `content` of a successful `get_submission` answer."""
    payload = _json_text(content, "the submission")
    if not isinstance(payload, dict):
        raise ContractError("the submission is not a JSON object")
    header_text = payload.get("xqueue_header")
    header = _json_text(header_text, "xqueue_header")
    if not isinstance(header, dict) or "submission_id" not in header:
        raise ContractError("xqueue_header has no submission_id")
    if "submission_key" not in header:
        raise ContractError("xqueue_header has no submission_key")
    submission_id = header["submission_id"]
    if isinstance(submission_id, bool) or not isinstance(submission_id, int | str):
        raise ContractError("xqueue_header's submission_id is neither a number nor a string")
    body = payload.get("xqueue_body")
    if not isinstance(body, str):
        body = json.dumps(body) if isinstance(body, dict) else ""
    try:
        files = parse_files(payload.get("xqueue_files"))
    except ContractError:  # answered as "no file": the header is good, so it can be answered
        files = {}
    return Pulled(
        header=str(header_text),
        submission_id=str(submission_id)[:128],
        body=body,
        files=files,
    )


def parse_files(value: Any) -> dict[str, str]:
    """xqueue_files: a JSON string (or, leniently, an object) of file name -> URL."""
    if value in (None, ""):
        return {}
    files = _json_text(value, "xqueue_files") if isinstance(value, str) else value
    if not isinstance(files, dict):
        raise ContractError("xqueue_files is not an object of file name -> URL")
    return {str(name): url for name, url in files.items() if isinstance(url, str)}


def payload_points(payload: Any) -> float | None:
    """``points`` of a grader_payload (a JSON string, as the LMS sends it, or an object)."""
    if isinstance(payload, str):
        try:
            payload = json.loads(payload)
        except (ValueError, RecursionError):
            return None
    if not isinstance(payload, dict):
        return None
    points = payload.get("points")
    if isinstance(points, bool) or not isinstance(points, int | float):
        return None
    return float(points) if math.isfinite(points) and 0 < points <= MAX_POINTS else None


def score_body(*, correct: bool, score: float, msg: str) -> str:
    """The xqueue_body of put_result: the score as the server reads it (points for
    openedx/xqueue, a fraction for edx-submissions: see the module's doc), and the message.
    A whole number goes as an integer (edx-submissions before 4.0.2 refused ``10.0``)."""
    if not math.isfinite(score) or score < 0:
        score = 0.0
    rounded = round(score, 4)
    number: float | int = int(rounded) if rounded.is_integer() else rounded
    return json.dumps({"correct": bool(correct), "score": number, "msg": msg})
