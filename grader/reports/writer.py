"""Report folders written behind the grading, in a process of their own.

Whatever a report costs (the feedback picture was a few tenths of a second of matplotlib;
it is now a few milliseconds of SVG text), none of it runs on the event loop that feeds the
kernels: the batch hands each finished grade to one writer process and moves on. Only what a
report shows crosses over (not the kernel's recorded figures and variables, ~100 kB per
notebook of the solved lab). The gradebook row is written first, so a report lost to a kill
is rewritten on the next run; if the writer process cannot run, reports are written inline.
"""

from __future__ import annotations

import multiprocessing
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from grader.models import ALWAYS_SHOWN, GradeResult, Reveal


class BackgroundReports:
    """One writer process; at most `backlog` grades wait for it (then `submit` blocks).

    `reveal`: which checks the learners' pages show (`grader.reports.feedback.write_reports`).
    """

    def __init__(self, errors: list[str], backlog: int = 8, reveal: Reveal = ALWAYS_SHOWN) -> None:
        self._errors = errors  # list.append is atomic: safe from the callback thread
        self._reveal = reveal
        self._room = threading.BoundedSemaphore(backlog)
        # spawn, not fork: the harness has threads (zmq, the warm pool) that fork would copy
        context = multiprocessing.get_context("spawn")
        self._pool: ProcessPoolExecutor | None = ProcessPoolExecutor(1, mp_context=context)

    def submit(self, submission: str, result: GradeResult, folder: Path) -> None:
        if self._pool is not None:
            self._room.acquire()
            try:
                future = self._pool.submit(
                    write_reports_or_say, for_reports(result), folder, self._reveal
                )
            except (BrokenProcessPool, RuntimeError):
                self._room.release()
                self._pool = None
            else:
                future.add_done_callback(
                    lambda done: self._finished(done, submission, result, folder)
                )
                return
        write_or_note(submission, result, folder, self._errors, self._reveal)

    def _finished(
        self, done: Future[str], submission: str, result: GradeResult, folder: Path
    ) -> None:
        self._room.release()
        try:
            problem = done.result()
        except BrokenProcessPool:  # the writer died (killed): this one is written here
            write_or_note(submission, result, folder, self._errors, self._reveal)
            return
        except Exception as error:  # noqa: BLE001 - e.g. the result could not be pickled
            problem = repr(error)
        note_problem(submission, problem, self._errors)

    def close(self) -> None:
        """Wait until every submitted report is on disk."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def __enter__(self) -> BackgroundReports:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def for_reports(result: GradeResult) -> GradeResult:
    """The result without what no report shows: the kernel's recorded figures and variables
    (the checks have read them; the picture is drawn from the curves)."""
    if result.execution is None:
        return result
    execution = result.execution.model_copy(update={"figures": [], "variables": {}})
    return result.model_copy(update={"execution": execution})


def write_reports_or_say(result: GradeResult, folder: Path, reveal: Reveal = ALWAYS_SHOWN) -> str:
    """In the writer process: write, and return what went wrong ("" when nothing did)."""
    from grader.reports.feedback import write_reports

    try:
        write_reports(result, folder, reveal=reveal)
    except Exception as error:  # noqa: BLE001
        return repr(error)
    return ""


def write_or_note(
    submission: str,
    result: GradeResult,
    folder: Path,
    errors: list[str],
    reveal: Reveal = ALWAYS_SHOWN,
) -> None:
    """Reports for one submission, here; a failure is the grader's and must not stop a batch."""
    note_problem(submission, write_reports_or_say(result, folder, reveal), errors)


def note_problem(submission: str, problem: str, errors: list[str]) -> None:
    if problem:
        errors.append(f"{submission}: writing its reports failed: {problem}")
