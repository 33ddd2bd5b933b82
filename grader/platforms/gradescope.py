"""`mbgd-grader gradescope`: the grading run of Gradescope's autograder, once per submission.

Gradescope's contract (gradescope-autograders.readthedocs.io, "Autograder Specifications"):
the learner's files are in `/autograder/submission/`, `/autograder/submission_metadata.json`
describes the submission, and `/autograder/results/results.json` must exist when
`run_autograder` ends, or the learner sees "The autograder failed to execute correctly".
So a results.json is written whatever happens: the grade, a score of 0 with what to upload,
or the grader's own failure. What Gradescope keeps of stdout is shown to instructors only.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grader.execution.limits import RunLimits
from grader.models import grader_failed
from grader.platforms.memory import container_memory_mb, limits_for_container, tight
from grader.platforms.uploads import grade_upload
from grader.reports.feedback import gradescope_json
from grader.reports.rendering import write_atomic

ROOT = Path("/autograder")
MAX_METADATA_BYTES = 1 << 20


@dataclass(frozen=True)
class Layout:
    """Where Gradescope puts things, under one root (a test binds another folder there)."""

    root: Path = ROOT

    @property
    def submission(self) -> Path:
        return self.root / "submission"

    @property
    def metadata(self) -> Path:
        return self.root / "submission_metadata.json"

    @property
    def results(self) -> Path:
        return self.root / "results" / "results.json"


def submission_metadata(layout: Layout) -> dict[str, Any]:
    """submission_metadata.json, or {} when it is missing, too big or not a JSON object."""
    try:
        with layout.metadata.open("rb") as handle:
            raw = handle.read(MAX_METADATA_BYTES + 1)
        data = json.loads(raw) if len(raw) <= MAX_METADATA_BYTES else None
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def run(layout: Layout, rubric: Path | None = None, limits: RunLimits | None = None) -> int:
    """Grade the submission and write results.json; 0, or 1 when the grader itself failed."""
    meta = submission_metadata(layout)
    assignment = meta.get("assignment")
    if not isinstance(assignment, dict):
        assignment = {}
    print(
        f"Gradescope submission {meta.get('id', '?')} of assignment "
        f"{assignment.get('title', '?')!r}, created {meta.get('created_at', '?')}",
        flush=True,
    )
    container_mb = container_memory_mb()
    limits = limits or limits_for_container(RunLimits(), container_mb)
    print(
        f"Container memory {container_mb or 'unlimited'} MB; kernel limits: memory "
        f"{limits.memory_mb} MB, {limits.total_timeout:g} s in all",
        flush=True,
    )
    if container_mb is not None and tight(container_mb):
        print(
            "Note: this container's memory leaves a notebook little room beyond the lab "
            "itself; raise it in the assignment's Autograder Settings (1.5 GB or more).",
            flush=True,
        )
    result = grade_upload(layout.submission, str(rubric) if rubric else None, limits)
    try:
        data = gradescope_json(result)
    except Exception as error:  # noqa: BLE001 - a bug here must still leave a results.json
        result = grader_failed(result.submission, error)
        data = {"score": 0.0, "output": result.error, "tests": []}
    layout.results.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(layout.results, json.dumps(data, indent=2, allow_nan=False) + "\n")
    print(f"{result.status}: {result.score:g} / {result.max_score:g}", flush=True)
    if result.error:
        print(result.error, file=sys.stderr, flush=True)
    return 1 if result.status == "crashed" and result.execution is None else 0
