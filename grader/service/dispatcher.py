"""Grading slots: pull queued submissions from the database, grade, record, queue deliveries.

The database is the queue. Intake only commits a row and wakes the slots; a slot claims the
oldest queued row, grades it, and writes the result, its callback and its LTI Score in one
transaction. A notebook whose content was graded before under the same rubric is answered
from that grade (learners resubmit unchanged work often). A row that keeps killing the
service (its attempts counter grows with every claim, restarts included) is marked failed
instead of looping.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import traceback
from collections.abc import Callable
from typing import Any

from grader.errors import GraderError
from grader.models import GradeResult
from grader.service import callback, lti
from grader.service.db import Database
from grader.service.grading import Grader
from grader.service.settings import Settings
from grader.service.wake import wait_for_wake

log = logging.getLogger("grader.service")

HARNESS_RETRY_DELAY = 5.0
REUSABLE = ("graded", "rejected")


def _results_json(result: GradeResult) -> dict[str, Any]:
    """results.json (Gradescope's schema: each test carries its check's visibility for the LMS
    to honour; the top-level output holds only what every learner may see). Without the
    picture: drawing takes a few tenths of a second of this event loop, and every stored row
    and callback would carry ~40 KB more; the table of numbers is there."""
    from grader.reports.feedback import gradescope_json

    return gradescope_json(result, plot=False)


def _comment(result: GradeResult) -> str:
    """One line for the LMS gradebook, which learners read: the headline to read first.

    Drawn from what every learner may see now (`grader.reports.learner_view`): checks the
    rubric marks hidden (or shown after the due date / when published) are left out, and
    then the points are those of the checks shown. The AGS score itself stays the grade;
    when learners see it is the LMS's to decide (results.json says each check's visibility)."""
    from grader.reports.learner_view import learner_view

    view = learner_view(result)
    shown = view.result
    headline = shown.diagnosis or shown.error
    if view.complete:
        return f"{shown.score:g}/{shown.max_score:g}. {headline}".strip()
    held = f"{view.withheld} more check{'s' if view.withheld != 1 else ''} not shown"
    return f"{shown.score:g}/{shown.max_score:g} on the checks shown ({held}). {headline}".strip()


class Dispatcher:
    """A fixed number of grading slots fed from the database."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        grader: Grader,
        on_callback: Callable[[], None] = lambda: None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.grader = grader
        self.on_callback = on_callback
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._fingerprint: str | None = None
        self._stopping = False

    def wake(self) -> None:
        """Intake committed a row: let an idle slot pick it up now rather than at its next poll."""
        self._wake.set()

    async def start(self) -> None:
        requeued = await asyncio.to_thread(self.db.requeue_running)
        if requeued:
            log.warning("resuming %d submission(s) that were running at the last stop", requeued)
        self._fingerprint = await asyncio.to_thread(self.grader.fingerprint)
        await self.grader.open()
        self._tasks = [
            asyncio.create_task(self._slot(i), name=f"grading-slot-{i}")
            for i in range(self.settings.slots)
        ]

    async def stop(self) -> None:
        """End every slot (a row being graded stays "running" and is requeued at the next
        start); the flag, not the cancel alone, ends an idle one (`grader.service.wake`)."""
        self._stopping = True
        self._wake.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.grader.close()

    async def _slot(self, number: int) -> None:
        while not self._stopping:
            try:
                row = await asyncio.to_thread(self.db.claim)
            except Exception:  # logged: a locked or full disk must not kill the slot
                log.exception("slot %d: could not claim work", number)
                row = None
            if row is None:
                if not self._stopping:
                    self._wake.clear()
                    await wait_for_wake(self._wake, 1.0)
                continue
            try:
                await self._process(row)
            except asyncio.CancelledError:
                raise  # shutting down: the row stays "running" and is requeued at next start
            except Exception:  # logged: the slot must survive anything
                log.exception("slot %d: unexpected failure on %s", number, row["id"])
                await asyncio.to_thread(
                    self.db.retry_later, row["id"], HARNESS_RETRY_DELAY, traceback.format_exc()
                )

    async def _process(self, row: Any) -> None:
        sub_id = row["id"]
        if row["attempts"] > self.settings.max_grade_attempts:
            error = (
                f"grading was interrupted {row['attempts'] - 1} times (the grader crashed or "
                "was restarted while running this notebook); it was not graded"
            )
            await self._fail(row, error)
            return
        assert self._fingerprint is not None
        cached = await asyncio.to_thread(self.db.cached_grade, row["sha256"], self._fingerprint)
        if cached is not None:
            result = GradeResult.model_validate_json(cached["grade"])
            # A timeout or a dead kernel may have been the machine's fault: grade again.
            if result.status in REUSABLE:
                result.submission = row["name"]
                await self._record(row, result, reused_from=cached["id"])
                return
        started = time.monotonic()
        try:
            result = await self.grader.grade(bytes(row["notebook"]), row["name"], sub_id)
        except asyncio.CancelledError:
            raise
        except GraderError as exc:  # the grader's own failure (no kernel, no sandbox ...)
            log.warning("grading %s failed (attempt %d): %s", sub_id, row["attempts"], exc)
            await self._grader_failed(row, exc)
            return
        # Anything else is a bug in the harness or in a library under it (or an error a worker
        # raised, re-raised here): logged with its traceback, and the row is retried, then
        # failed, never lost or retried forever.
        except Exception as exc:
            log.exception("grading %s failed (attempt %d)", sub_id, row["attempts"])
            await self._grader_failed(row, exc)
            return
        log.info("graded %s in %.1f s: %s", sub_id, time.monotonic() - started, result.status)
        await self._record(row, result)

    async def _grader_failed(self, row: Any, exc: Exception) -> None:
        """Not the learner's doing: try again later, or give up after the last attempt."""
        if row["attempts"] >= self.settings.max_grade_attempts:
            await self._fail(row, f"the grader failed: {type(exc).__name__}: {exc}")
        else:
            await asyncio.to_thread(
                self.db.retry_later, row["id"], HARNESS_RETRY_DELAY, f"{type(exc).__name__}: {exc}"
            )

    async def _record(self, row: Any, result: GradeResult, reused_from: str | None = None) -> None:
        finished = time.time()
        results = _results_json(result)
        cb = None
        if row["callback_url"]:
            cb = callback.build(
                row,
                results=results,
                score=result.score,
                max_score=result.max_score,
                comment=_comment(result),
                error=result.error or None,
                finished_at=finished,
            )
        score = lti.build_score(
            row,
            score=result.score,
            max_score=result.max_score,
            comment=_comment(result),
            finished_at=finished,
        )
        await asyncio.to_thread(
            self.db.finish,
            row["id"],
            status="graded",
            fingerprint=self._fingerprint,
            grade=result.model_dump_json(),
            result=json.dumps(results),
            error=result.error or None,
            reused_from=reused_from,
            callback=cb,
            score=score,
            finished_at=finished,
        )
        if cb is not None or score is not None:
            self.on_callback()

    async def _fail(self, row: Any, error: str) -> None:
        finished = time.time()
        cb = None
        if row["callback_url"]:
            cb = callback.build(
                row,
                results=None,
                score=None,
                max_score=None,
                comment=f"Not graded: {error}",
                error=error,
                finished_at=finished,
            )
        score = lti.build_score(
            row, score=None, max_score=None, comment=f"Not graded: {error}", finished_at=finished
        )
        await asyncio.to_thread(
            self.db.finish,
            row["id"],
            status="failed",
            fingerprint=self._fingerprint,
            grade=None,
            result=None,
            error=error,
            callback=cb,
            score=score,
            finished_at=finished,
        )
        if cb is not None or score is not None:
            self.on_callback()
