"""Scale-out: the Celery app, its one grading task, and the batch side that feeds it.

Settings chosen so that nothing is lost: a task is acknowledged only after it finished
(`acks_late`), a worker that dies mid-task gets its task redelivered (`reject_on_worker_lost`,
and Redis' visibility timeout for a worker killed outright), each worker process holds one
task at a time (prefetch 1), every task has soft and hard time limits, and only
infrastructure errors are retried: a learner's crash or timeout is a result, not a retry.
Messages are JSON only, never pickle: the notebook travels as base64 text.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from celery import Celery
from celery.backends.base import BaseKeyValueStoreBackend
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from celery.exceptions import TimeoutError as ResultsPending
from celery.signals import worker_process_init, worker_process_shutdown

from grader.errors import Unavailable
from grader.execution.limits import RunLimits
from grader.models import GradeResult, Item, Sink, grader_failed, not_graded
from grader.submission import read_capped

if TYPE_CHECKING:
    from celery import Task

    from grader.execution.pool import KernelPool
    from grader.pipeline import GradeOptions

TASK_NAME = "mbgd_grader.grade"
# Sizes a worker's time limits when it is not told the batches' --timeout.
DEFAULT_TOTAL_TIMEOUT: float = RunLimits.model_fields["total_timeout"].default
MARGIN_SECONDS = 20.0  # kernel start, checks and reports on top of the notebook's own budget
WINDOW = 256  # tasks in flight at once: bounds Redis memory when grading 30,000 notebooks

app = Celery("mbgd_grader", set_as_current=False)


class InfrastructureError(Unavailable):
    """The grader, not the learner, failed (no kernel, no sandbox): worth a retry elsewhere."""


# The warm kernel pool of this worker pool child (None: fresh kernels). A Celery child is a
# process whose life starts and ends with the two signals below, and a task can be handed
# nothing but its JSON arguments: the child's pool lives here, and the task passes it down.
_child_pool: KernelPool | None = None


@worker_process_init.connect
def _warm_up(**_: object) -> None:
    """Each pool child grades with its own warm kernel pool, started in the background:
    Celery kills a child that takes more than a few seconds to report alive."""
    from grader.execution.pool import open_pool

    global _child_pool
    _child_pool = open_pool(wait=False)


@worker_process_shutdown.connect
def _cool_down(**_: object) -> None:
    global _child_pool
    pool, _child_pool = _child_pool, None
    if pool is not None:
        pool.close()


def task_budget(total_timeout: float, integrity: bool) -> tuple[int, int]:
    """(soft, hard) time limits of one task: the notebook runs once, or twice with integrity."""
    runs = 2 if integrity else 1
    hard = int(runs * total_timeout + MARGIN_SECONDS)
    return hard - 5, hard


def configure(
    broker_url: str,
    *,
    total_timeout: float = DEFAULT_TOTAL_TIMEOUT,
    visibility_timeout: float | None = None,
) -> Celery:
    """Point the app at `broker_url` (Redis; results go to the same server)."""
    soft, hard = task_budget(total_timeout, integrity=True)
    if visibility_timeout is None:
        # Longer than any task may run, so a live worker's task is never handed out twice;
        # a killed worker's task comes back this long after it was taken.
        visibility_timeout = hard + 10
    app.conf.update(
        broker_url=broker_url,
        result_backend=broker_url,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        worker_max_tasks_per_child=100,
        task_soft_time_limit=soft,
        task_time_limit=hard,
        result_expires=7 * 24 * 3600,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": int(visibility_timeout),
            "unacked_restore_interval": 2,  # look for orphaned tasks every 2 s ...
            "unacked_restore_throttle": 1,  # ... really every 2 s, not every 20
        },
    )
    return app


@app.task(
    name=TASK_NAME,
    bind=True,
    autoretry_for=(InfrastructureError, OSError),
    retry_backoff=2,
    retry_backoff_max=60,
    retry_jitter=True,
    max_retries=3,
)
def grade_task(
    self: Task,
    name: str,
    notebook_b64: str,
    options_json: str,
    rubric_toml: str | None = None,
) -> dict:
    """Grade one notebook; returns the GradeResult as JSON-ready data."""
    from grader.pipeline import GradeOptions, grade

    options = GradeOptions.model_validate_json(options_json)
    if rubric_toml is not None:
        # The batch's --rubric file is on the batch's machine: it travels as text.
        options = options.model_copy(update={"rubric_path": str(_local_rubric(rubric_toml))})
    data = base64.b64decode(notebook_b64, validate=True)
    try:
        result = grade(data, name, options, pool=_child_pool)
    except SoftTimeLimitExceeded:
        # the limit in force: the sender's for this task (headers: [hard, soft]), else ours
        _, soft = self.request.timelimit or (None, None)
        soft = soft or app.conf.task_soft_time_limit
        stopped = f"grading took longer than {float(soft):g} s and was stopped"
        result = not_graded(name, "timeout", stopped)
    if result.execution is not None and result.execution.fate == "not_started":
        raise InfrastructureError(f"kernel did not start: {result.error or result.diagnosis}")
    # Python mode keeps NaN and Infinity as floats; the JSON serializer writes them as the
    # NaN/Infinity constants, which json mode would have turned into null.
    return result.model_dump()


def _local_rubric(text: str) -> Path:
    """The rubric text as a file on this worker, named by its content (written once)."""
    digest = hashlib.sha256(text.encode()).hexdigest()[:24]
    path = Path(tempfile.gettempdir()) / f"mbgd-rubric-{digest}.toml"
    if not path.exists():
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".toml")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    return path


# -- batch side ------------------------------------------------------------------------------


def task_id(submission: str, key: str) -> str:
    """Deterministic, so a resumed batch finds results that arrived while it was away."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"mbgd-grader:{key}:{submission}"))


def _decode(item: Item, meta: dict) -> tuple[GradeResult, bool]:
    """(result, persist) from a finished task's meta; harness failures are not persisted."""
    error = meta.get("result")
    if meta["status"] == "SUCCESS":
        try:
            return GradeResult.model_validate(error), True
        except ValueError as invalid:  # a worker running another grader version
            return grader_failed(item.submission, invalid), False
    if isinstance(error, TimeLimitExceeded):
        killed = "grading hit the worker's hard time limit and was killed"
        return not_graded(item.submission, "timeout", killed), True
    if not isinstance(error, BaseException):
        error = RuntimeError(f"task ended {meta['status']}: {error!r}")
    return grader_failed(item.submission, error), False


def grade_remote(items: list[Item], options: GradeOptions, broker_url: str, sink: Sink) -> None:
    """Send `items` to Celery workers, at most WINDOW at a time; `sink` each result."""
    configure(broker_url, total_timeout=options.limits.total_timeout)
    soft, hard = task_budget(options.limits.total_timeout, options.integrity)
    options_json = options.model_dump_json()
    rubric_toml = None
    if options.rubric_path:
        rubric_toml = Path(options.rubric_path).read_text(encoding="utf-8")
    by_id = {task_id(i.submission, i.key): i for i in items}
    backend = app.backend
    if not isinstance(backend, BaseKeyValueStoreBackend):  # configure() sets Redis
        raise TypeError(f"results need a key-value backend, not {type(backend).__name__}")
    waiting = list(reversed(list(by_id)))
    inflight: set[str] = set()

    def finish(tid: str, meta: dict) -> None:
        if tid not in inflight:
            return  # a duplicate delivery of something already collected
        inflight.discard(tid)
        result, persist = _decode(by_id[tid], meta)
        sink(by_id[tid], result, persist)
        with contextlib.suppress(Exception):
            app.AsyncResult(tid).forget()

    # Results that workers finished while no batch was listening (a resumed run).
    inflight.update(by_id)
    with contextlib.suppress(ResultsPending):
        for tid, meta in backend.get_many(list(by_id), timeout=0):
            finish(tid, meta)
    waiting = [t for t in waiting if t in inflight]
    inflight.clear()

    while waiting or inflight:
        while waiting and len(inflight) < WINDOW:
            tid = waiting.pop()
            item = by_id[tid]
            notebook = base64.b64encode(read_capped(item.path)).decode("ascii")
            app.send_task(
                TASK_NAME,
                args=(item.submission, notebook, options_json, rubric_toml),
                task_id=tid,
                soft_time_limit=soft,
                time_limit=hard,
            )
            inflight.add(tid)
        with contextlib.suppress(ResultsPending):
            for tid, meta in backend.get_many(list(inflight), timeout=1.0, interval=0.25):
                finish(tid, meta)


def run_worker(
    broker_url: str,
    *,
    concurrency: int,
    total_timeout: float = DEFAULT_TOTAL_TIMEOUT,
    visibility_timeout: float | None = None,
    loglevel: str = "INFO",
) -> None:
    """Run a worker in this process until it is stopped (blocks)."""
    configure(broker_url, total_timeout=total_timeout, visibility_timeout=visibility_timeout)
    import grader.pipeline  # noqa: F401 - import torch once, before the pool forks

    app.worker_main(
        [
            "worker",
            f"--concurrency={concurrency}",
            "--pool=prefork",
            f"--hostname=mbgd-{os.getpid()}@%h",
            "--without-gossip",
            "--without-mingle",
            f"--loglevel={loglevel}",
        ]
    )
