"""Where grading happens: in this process's kernel pool, or on Celery workers.

Both backends take notebook bytes and a display name and return a `GradeResult`; the
dispatcher does not care which one it talks to. Neither raises for a learner's notebook
(`grade_async` turns it into a "rejected" or "crashed" result); an exception here means the
harness itself failed, and the dispatcher retries.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import threading
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from grader.models import GradeResult

if TYPE_CHECKING:
    from grader.execution.pool import KernelPool
    from grader.service.settings import Settings

T = TypeVar("T")


class Grader(Protocol):
    mode: str

    def fingerprint(self) -> str: ...

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def grade(self, notebook: bytes, name: str, key: str = "") -> GradeResult: ...


class _LoopThread:
    """An event loop in a daemon thread, so grading's synchronous stretches (parsing, checks,
    reports) never stall the loop that answers the LMS."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="grading-loop", daemon=True).start()

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            future.cancel()  # cancels the grading task in its loop: kernels are shut down
            raise


class _OptionsGrader:
    """What both backends share: the grading options and their fingerprint (cached)."""

    options: Any

    @functools.cached_property
    def _fingerprint(self) -> str:
        """With a notebook's sha256, what names its grade in the cache (grading.identity)."""
        from grader.grading.identity import grading_fingerprint

        return grading_fingerprint(self.options.rubric().fingerprint, self.options.integrity)

    def fingerprint(self) -> str:
        return self._fingerprint


class LocalGrader(_OptionsGrader):
    """Grade in-process with `grader.pipeline.grade_async` (a kernel per slot, forked from
    this process's warm pool where there is one)."""

    mode = "local"

    def __init__(self, options: Any = None) -> None:
        from grader.pipeline import GradeOptions

        self.options = options or GradeOptions()
        self.pool: KernelPool | None = None
        self._thread = _LoopThread()

    async def open(self) -> None:
        """Warm kernels for this process's grading (started in the background)."""
        from grader.execution.pool import open_pool

        self.pool = open_pool(wait=False)

    async def close(self) -> None:
        pool, self.pool = self.pool, None
        if pool is not None:
            await asyncio.to_thread(pool.close)

    async def grade(self, notebook: bytes, name: str, key: str = "") -> GradeResult:
        from grader.pipeline import grade_async

        job = grade_async(notebook, name, self.options, pool=self.pool)
        return await self._thread.run(job)


class CeleryGrader(_OptionsGrader):
    """Send `grader.remote`' grading task to Celery workers and await it without blocking.

    The task id is derived from the submission, so after a restart the service first looks
    for a result a worker delivered while it was down before sending the task again.
    """

    mode = "celery"

    def __init__(self, broker: str, options: Any = None, *, poll: float = 0.5) -> None:
        from grader import remote as tasks
        from grader.pipeline import GradeOptions

        self.options = options or GradeOptions()
        self.poll = poll
        self.app = tasks.configure(broker, total_timeout=self.options.limits.total_timeout)
        self.budget = tasks.task_budget(self.options.limits.total_timeout, self.options.integrity)

    async def open(self) -> None:
        """Nothing to start here: the workers keep the warm kernels."""

    async def close(self) -> None:
        """Nothing to stop."""

    async def grade(self, notebook: bytes, name: str, key: str = "") -> GradeResult:
        from grader import remote as tasks

        tid = tasks.task_id(name, f"service:{key}:{self.fingerprint()}")
        pending = self.app.AsyncResult(tid)
        if not await asyncio.to_thread(pending.ready):
            soft, hard = self.budget
            pending = await asyncio.to_thread(
                self.app.send_task,
                tasks.TASK_NAME,
                args=(
                    name,
                    base64.b64encode(notebook).decode("ascii"),
                    self.options.model_dump_json(),
                ),
                task_id=tid,
                soft_time_limit=soft,
                time_limit=hard,
            )
        deadline = time.monotonic() + self.budget[1] * 2 + 60  # queueing plus one retry
        while not await asyncio.to_thread(pending.ready):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no worker finished task {tid} in time")
            await asyncio.sleep(self.poll)
        try:
            value = await asyncio.to_thread(pending.get, timeout=30, propagate=True)
        finally:
            await asyncio.to_thread(pending.forget)
        return GradeResult.model_validate(value)


def make_grader(settings: Settings) -> Grader:
    """The local pool, or Celery workers behind ``settings.broker``; either way a notebook may
    run for ``settings.grade_timeout`` seconds in total."""
    from grader.execution.limits import RunLimits
    from grader.pipeline import GradeOptions

    options = GradeOptions(limits=RunLimits(total_timeout=settings.grade_timeout))
    if settings.broker:
        return CeleryGrader(settings.broker, options)
    return LocalGrader(options)
