"""Report folders written behind the grading, on a thread of their own.

Drawing a submission's feedback picture is the slowest part of its reports (a few tenths of
a second of matplotlib). Done inline, it stalls the event loop that feeds the kernels, so
the other jobs' kernels sit idle at their next cell. The batch hands each finished grade
here instead and moves on; the gradebook row is written first, so a report lost to a kill is
rewritten on the next run.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from grader.models import GradeResult


class BackgroundReports:
    """One writer thread; at most `backlog` grades wait for it (then `submit` blocks)."""

    def __init__(self, errors: list[str], backlog: int = 8) -> None:
        self._errors = errors  # list.append is atomic: safe from the writer thread
        self._room = threading.BoundedSemaphore(backlog)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reports")

    def submit(self, submission: str, result: GradeResult, folder: Path) -> None:
        self._room.acquire()
        future = self._pool.submit(write_or_note, submission, result, folder, self._errors)
        future.add_done_callback(self._release)

    def _release(self, _: Future[None]) -> None:
        self._room.release()

    def close(self) -> None:
        """Wait until every submitted report is on disk."""
        self._pool.shutdown(wait=True)

    def __enter__(self) -> BackgroundReports:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_or_note(submission: str, result: GradeResult, folder: Path, errors: list[str]) -> None:
    """Reports for one submission; a failure here is the grader's and must not stop a batch."""
    from grader.report import write_reports

    try:
        write_reports(result, folder)
    except Exception as error:  # noqa: BLE001
        errors.append(f"{submission}: writing its reports failed: {error!r}")
