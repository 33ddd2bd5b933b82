"""The batch's live progress on the console: done/total, rate, ETA and failures so far."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from grader.models import PROBLEM_STATUSES, GradeResult, Item

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID


class ConsoleProgress:
    """A live bar on stderr (done/total, rate, ETA, failures so far); silent off a terminal."""

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        self.failures = 0
        self.done = 0
        self.graded_now = 0
        self.started = time.monotonic()
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def start(self, total: int, skipped: int) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.done = skipped
        self.started = time.monotonic()
        if skipped:
            self.console.print(
                f"{skipped} of {total} already in the gradebook (unchanged): skipped",
                highlight=False,
            )
        if not self.console.is_terminal:
            return
        progress = self._progress = Progress(
            TextColumn("[bold]grading"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[failures]}"),
            console=self.console,
            transient=False,
        )
        progress.start()
        self._task = progress.add_task(
            "grading", total=total, completed=skipped, rate="", failures=""
        )

    def advance(self, item: Item, result: GradeResult) -> None:
        self.done += 1
        if result.status in PROBLEM_STATUSES:
            self.failures += 1
        if self._progress is None or self._task is None:
            return
        # Over the whole run: an instant rejection must not make the rate jump.
        self.graded_now += 1
        per_minute = 60 * self.graded_now / max(time.monotonic() - self.started, 1e-3)
        rate = f"{per_minute:.1f}/min"
        failures = f"[red]{self.failures} failed" if self.failures else "0 failed"
        self._progress.update(self._task, advance=1, rate=rate, failures=failures)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
