"""Which grade is this: the one recipe for the keys that say two grades are the same.

A grade depends on the notebook's bytes (their sha256), the rubric (as data: checks, points,
titles, tolerances, each check's visibility; not its comments, nor its `[release]` table,
which only says what learners' pages show), the grader's version, whether the integrity
re-run is on and, when it is, the integrity key. Same inputs, same verdict: a grade with the
same key need not be computed again.

- `fingerprint(text)` – 16 hex digits of a text; of the rubric's graded part (canonical
  JSON, `grader.grading.rubric`) it is `Rubric.fingerprint`.
- `grading_fingerprint(rubric.fingerprint, integrity)` – everything but the notebook and the
  key: the service's cache looks a grade up by (sha256, this), its Celery task ids carry it.
- `grade_key(sha256, grading_fingerprint, version, key)` – one grade: the batch's gradebook
  rows and Celery task ids (the service never runs the integrity re-run, so its pair above
  names the same grades).

These values are stored (gradebooks, the service's database): changing a recipe makes every
stored grade look stale, and it is graded again.
"""

from __future__ import annotations

import hashlib

from grader import __version__
from grader.grading.integrity import key_digest


def fingerprint(text: str) -> str:
    """16 hex digits of the text's sha256."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def grading_fingerprint(rubric_fingerprint: str, integrity: bool) -> str:
    """What a stored result depends on besides the notebook: the rubric (its `fingerprint`),
    grader version, integrity on or off."""
    return fingerprint(f"{rubric_fingerprint}|{__version__}|integrity={integrity}")


def grade_key(
    sha256: str, grading_fingerprint: str, grader_version: str, secret: str | None
) -> str:
    """The identity of a grade: the same key means the same verdict, so it need not be redone.

    `grading_fingerprint`: of the rubric and options (above); `secret`: the integrity key,
    None without --integrity (it enters as a digest only)."""
    integrity = "off" if secret is None else f"key={key_digest(str(secret))}"
    text = f"{sha256}\n{grading_fingerprint}\n{grader_version}\n{integrity}"
    return hashlib.sha256(text.encode()).hexdigest()
