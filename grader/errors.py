"""The grader's own exceptions: one base, so a door can tell them from bugs and libraries' errors.

Every exception the grader raises on purpose derives from `GraderError`; its message is written
for whoever has to act on it (a learner, an instructor, an operator, an LMS). Anything else
that escapes a grader function (a `KeyError`, a library's exception) is a bug or an accident.

    GraderError
    ├── UsageError             what was asked for cannot be done as given: exit code 2, 4xx
    │   ├── BatchError              grader.batch: a missing path, a folder without notebooks
    │   ├── RubricError             grader.grading.rubric: a rubric file that cannot be used
    │   └── SettingsError           grader.service.settings: the service cannot start so
    ├── Refused                what was sent is refused; the message is safe to show the sender
    │   ├── SubmissionError         grader.submission: not a gradable notebook (the learner's)
    │   ├── SignatureError          grader.service.signing: a webhook that must be refused
    │   └── PayloadError            grader.service.app: a malformed webhook payload
    ├── Unavailable            the machine cannot do it here and now; the learner is not at fault
    │   ├── SandboxUnavailable      grader.execution.sandbox: bwrap required but not usable
    │   ├── SeccompUnavailable      grader.execution.seccomp: no system-call filter
    │   ├── PoolUnavailable         grader.execution.pool: no warm pool (a fresh kernel is used)
    │   └── InfrastructureError     grader.remote: no kernel on a worker; Celery retries the task
    └── the learners' door's own (grader.pytest_plugin): GraderFailed (the grader failed on a
        notebook, reported on its items) and CheckFailed (a rubric check did not pass)

The subclasses that were `ValueError`s or `RuntimeError`s before this base existed still are,
so code catching those keeps working. Each class stays importable from the module named above.
"""

from __future__ import annotations


class GraderError(Exception):
    """Raised by the grader on purpose; the message says what happened, for a person."""


class UsageError(GraderError):
    """What was asked for cannot be done as given (a path, a rubric, a setting)."""


class Refused(GraderError):
    """Input the grader refuses; the message says why and is safe to show to its sender."""


class Unavailable(GraderError):
    """Something the grader needs is not available on this machine; not the learner's fault."""
