"""The callback an LMS receives: results.json plus the LTI 1.3 AGS score fields.

The body is built once, when the grade is recorded, and stored in the outbox as bytes: every
retry (and every retry after a restart) sends the same bytes under the same ``webhook-id``,
so the LMS can drop repeats by id.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from grader.service.db import Callback

EVENT_GRADED = "submission.graded"
EVENT_FAILED = "submission.failed"


def iso8601(timestamp: float) -> str:
    """AGS wants ISO 8601 with sub-second precision and a time zone."""
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")


def ags_score(
    *,
    learner_id: str,
    score: float | None,
    max_score: float | None,
    comment: str,
    timestamp: float,
) -> dict[str, Any]:
    """An AGS ``Score`` object; without a score it reports a failed grading."""
    body: dict[str, Any] = {"userId": learner_id}
    if score is not None and max_score is not None:
        body["scoreGiven"] = score
        body["scoreMaximum"] = max_score
    body["activityProgress"] = "Completed"
    body["gradingProgress"] = "FullyGraded" if score is not None else "Failed"
    body["timestamp"] = iso8601(timestamp)
    body["comment"] = comment[:4000]
    return body


def webhook_id(sub_id: str, content: Any) -> str:
    """A stable id for one result of one submission: same inputs, same id, after any restart."""
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), default=str)
    digest = hashlib.sha256(f"{sub_id}:{canonical}".encode()).hexdigest()
    return f"msg_{digest[:32]}"


def build(
    row: Any,
    *,
    results: dict[str, Any] | None,
    score: float | None,
    max_score: float | None,
    comment: str,
    error: str | None,
    finished_at: float,
) -> Callback:
    """The outbox row for a finished submission (``row`` is its database row)."""
    event = EVENT_GRADED if results is not None else EVENT_FAILED
    content = {
        "type": event,
        "id": row["id"],
        "submission_id": row["submission_id"],
        "learner_id": row["learner_id"],
        "assignment_id": row["assignment_id"],
        "status": "graded" if results is not None else "failed",
        "error": error,
        "result": results,
        "score": ags_score(
            learner_id=row["learner_id"],
            score=score,
            max_score=max_score,
            comment=comment,
            timestamp=finished_at,
        ),
    }
    body = json.dumps(content, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return Callback(webhook_id=webhook_id(row["id"], content), url=row["callback_url"], body=body)
