"""The pull loop: take submissions from an XQueue, grade them, post each answer, lose none.

One task pulls while a grading slot is free (``--jobs``), backing off while the queue is
empty; each pulled submission is journaled (`grader.xqueue.journal`) before it is
downloaded, graded (the local warm pool or Celery workers, the webhook service's two
backends) and answered. A separate sender posts the journaled answers and retries the ones
the server did not take, with backoff; the server's final refusals ("Incorrect key": the
submission was handed out again since) end a row. On start, journaled work comes first.
SIGTERM or SIGINT stops pulling, gives running gradings a grace period, posts what is ready
and exits; whatever was not finished is in the journal for the next start.

edx-submissions hands a submission it has no answer for out again five minutes after its pull,
with the same key, and then at every poll: such a pull is what the worker already holds, so it
is neither graded again nor a reason to poll at once (the pull loop backs off as if the queue
were empty). And it answers an answer for a submission it has already retired (recorded: the
reply to an earlier post was lost, or another worker answered it) with HTTP 500, for ever: two
500s in a row end the row as "presumed taken"; should the server hand the submission out again
with that key, the presumption was wrong (it hands out only what it has not recorded), and the
answer goes again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from grader.models import GradeResult, not_graded
from grader.xqueue.client import (
    AUTO,
    Download,
    LoginFailed,
    ServerError,
    XQueueClient,
    XQueueUnavailable,
)
from grader.xqueue.contract import EDX_SUBMISSIONS, XQUEUE, ContractError, Pulled, score_body
from grader.xqueue.feedback import message_html
from grader.xqueue.journal import Entry, Journal, Pull

if TYPE_CHECKING:
    from grader.pipeline import GradeOptions
    from grader.service.grading import Grader

log = logging.getLogger("grader.xqueue")

MAX_GRADE_ATTEMPTS = 3  # a submission that keeps killing the worker is answered, not looped
DOWNLOAD_ATTEMPTS = 3
HARNESS_RETRY_SECONDS = 5.0
SEND_BACKOFF = (1.0, 300.0)  # put_result retries: first delay, cap
LOGIN_BACKOFF = (1.0, 60.0)
SEND_ON_STOP_SECONDS = 15.0  # a stop's last round of posting answers
# put_result answers after which posting the same answer again cannot help.
FINAL_REFUSALS = ("Incorrect key for submission", "Submission does not exist")
# edx-submissions' HTTP 500 to an answer for a submission it has already retired
RETIRED_500 = "HTTP 500 (edx-submissions: already retired?)"
PRESUMED_TAKEN = "presumed taken"


class Backoff:
    """Exponential delays with jitter, capped; `reset` after a success."""

    def __init__(self, first: float, cap: float) -> None:
        self.first, self.cap, self.failures = first, cap, 0

    def next(self) -> float:
        delay = min(self.cap, self.first * 2**self.failures)
        self.failures = min(self.failures + 1, 32)
        return delay * random.uniform(0.8, 1.0)

    def reset(self) -> None:
        self.failures = 0


def send_delay(attempts: int) -> float:
    """Before the `attempts`-th resend of an answer (1-based)."""
    first, cap = SEND_BACKOFF
    return min(cap, first * 2 ** max(0, attempts - 1))


def answer_for(result: GradeResult, points: float | None, server: str) -> tuple[str, float]:
    """(put_result xqueue_body, the points it gives, for the logs). `correct` is full marks.

    openedx/xqueue: `score` is points, the rubric's, or scaled to the problem's weight when
    the grader_payload names one (``{"points": N}``). edx-submissions: `score` is the
    fraction of the rubric's points, which it multiplies by the problem's weight itself (it
    replaces the grader_payload, so no weight arrives from the course); the message shows the
    rubric's points."""
    correct = result.status == "graded" and 0 < result.max_score <= result.score
    if server == EDX_SUBMISSIONS:
        fraction = result.score / result.max_score if result.max_score > 0 else 0.0
        fraction = min(1.0, max(0.0, fraction))
        return score_body(correct=correct, score=fraction, msg=message_html(result)), result.score
    scale = points / result.max_score if points and result.max_score > 0 else 1.0
    score = result.score * scale
    return score_body(correct=correct, score=score, msg=message_html(result, scale=scale)), score


def choose_file(files: dict[str, str]) -> tuple[str, str] | None:
    """The upload to grade: the first notebook, else the first file (graded as what it is)."""
    notebooks = [(n, u) for n, u in files.items() if n.lower().endswith(".ipynb")]
    candidates = notebooks or list(files.items())
    return candidates[0] if candidates else None


def server_setting() -> str:
    """MBGD_XQUEUE_SERVER: xqueue, edx-submissions, or auto (told at the first login)."""
    return os.environ.get("MBGD_XQUEUE_SERVER", "").strip().lower() or AUTO


@dataclass
class Settings:
    url: str
    queue: str
    username: str
    password: str
    state: Path
    jobs: int
    broker: str | None
    options: GradeOptions
    poll_max: float = 10.0  # longest pause between two polls of an empty queue
    grace: float = 20.0  # how long a stop waits for running gradings
    server: str = field(default_factory=server_setting)  # "xqueue", "edx-submissions", "auto"


class XQueueWorker:
    """Pulls, grades and answers; `run` until `stop` is set."""

    def __init__(
        self,
        client: XQueueClient,
        journal: Journal,
        grader: Grader,
        options: GradeOptions,
        *,
        queue: str,
        jobs: int,
        poll_max: float = 10.0,
        grace: float = 20.0,
    ) -> None:
        self.client, self.journal, self.grader = client, journal, grader
        self.options, self.queue, self.jobs = options, queue, jobs
        self.poll_max, self.grace = poll_max, grace
        self.todo: deque[str] = deque()
        self.active: dict[str, asyncio.Task[bool]] = {}
        self.freed = asyncio.Event()
        self.wake_sender = asyncio.Event()
        self.stopping = False

    # -- the loop --------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        await self.grader.open()
        sender: asyncio.Task[None] | None = None
        try:
            if not await self._log_in(stop):
                return
            self.journal.send_now()
            self.todo.extend(self.journal.ungraded())
            if self.todo:
                log.info("resuming %d journaled submission(s) first", len(self.todo))
            sender = asyncio.create_task(self._sender(), name="xqueue-sender")
            await self._pull_loop(stop)
        finally:
            await self._shut_down(sender)

    async def _pull_loop(self, stop: asyncio.Event) -> None:
        idle = Backoff(0.25, self.poll_max)
        while not stop.is_set():
            if len(self.active) >= self.jobs:
                self.freed.clear()
                await _wait(self.freed, stop, None)
                continue
            if self.todo:
                self._start(self.todo.popleft())
                continue
            try:
                pulled = await self.client.get_submission(self.queue)
            except ContractError as error:
                log.error("XQueue handed out a submission that cannot be answered: %s", error)
                await _wait(stop, None, idle.next())
                continue
            except (XQueueUnavailable, LoginFailed) as error:
                log.warning("cannot pull from XQueue: %s", error)
                await _wait(stop, None, idle.next())
                continue
            if pulled is None or not self._take(pulled):
                await _wait(stop, None, idle.next())  # nothing new: back off
                continue
            idle.reset()

    def _take(self, pulled: Pulled) -> bool:
        """Journal a pull first; then grade it, or post its known answer again. False: the
        pull was one the worker holds already (nothing new)."""
        sid = pulled.submission_id
        kind = self.journal.record_pull(pulled)
        if kind is Pull.SAME:
            self._held_again(sid)
            return False
        who = f" (learner {pulled.learner})" if pulled.learner else ""
        log.info("pulled submission %s%s", sid, who)
        if kind is Pull.AGAIN and self.journal.get(sid).answer is not None:
            log.info("submission %s was answered before: posting that answer", sid)
            self.wake_sender.set()
        elif sid not in self.active and sid not in self.todo:
            self._start(sid)
        return True

    def _held_again(self, sid: str) -> None:
        """The same pull handed out again (edx-submissions, 5 minutes after it and at every
        poll until the answer is recorded): not graded twice, not posted twice."""
        entry = self.journal.get(sid)
        if entry.answer is None:
            if sid not in self.active and sid not in self.todo:
                self._start(sid)  # held, yet not being graded (cannot happen; harmless)
            why = "still being graded"
        elif entry.answered and (entry.outcome or "").startswith(PRESUMED_TAKEN):
            self.journal.resend(sid)  # it would not be handed out if it had been recorded
            self.wake_sender.set()
            why = "its answer was not recorded after all: posting it again"
        elif entry.answered:
            why = "its answer was taken"
        else:
            why = "its answer is being posted"
        log.info("submission %s handed out again with the same key (%s)", sid, why)

    def _start(self, submission_id: str) -> None:
        if submission_id in self.active:
            return
        task = asyncio.create_task(self._grade_one(submission_id), name=f"grade-{submission_id}")
        self.active[submission_id] = task

        def done(finished: asyncio.Task[bool]) -> None:
            self.active.pop(submission_id, None)
            self.freed.set()
            if finished.cancelled():
                return
            error = finished.exception()
            if error is not None:  # the journal itself failed (a full disk): next start
                log.error("submission %s left in the journal: %r", submission_id, error)
            elif finished.result():
                self.todo.append(submission_id)  # the grader failed: again, after a pause

        task.add_done_callback(done)

    async def _log_in(self, stop: asyncio.Event) -> bool:
        backoff = Backoff(*LOGIN_BACKOFF)
        while not stop.is_set():
            try:
                await self.client.login()
                log.info("logged in to XQueue %s as %s", self.client.base_url, self.client.username)
                return True
            except LoginFailed as error:
                log.error("%s; retrying", error)
            except XQueueUnavailable as error:
                log.warning("cannot reach XQueue to log in: %s", error)
            await _wait(stop, None, backoff.next())
        return False

    async def _shut_down(self, sender: asyncio.Task[None] | None) -> None:
        if self.active:
            log.info("stopping: waiting up to %g s for %d grading(s)", self.grace, len(self.active))
            _, running = await asyncio.wait(set(self.active.values()), timeout=self.grace)
            for task in running:
                task.cancel()
            for task in running:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if running:
                log.info("%d grading(s) stay in the journal for the next start", len(running))
        if sender is not None:
            # Not cancelled mid-post (an answer taken but not marked would be posted twice):
            # told to stop, it posts what is due once more and returns.
            self.stopping = True
            self.wake_sender.set()
            done, _ = await asyncio.wait({sender}, timeout=SEND_ON_STOP_SECONDS)
            if not done:
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sender
        await self.grader.close()

    # -- one submission --------------------------------------------------------------------

    async def _grade_one(self, submission_id: str) -> bool:
        """Grade and journal the answer; True: the grader failed, try again later."""
        attempts = self.journal.start_grading(submission_id)
        entry = self.journal.get(submission_id)
        name = f"xqueue-{submission_id}"
        pulled = entry.pulled()
        try:
            if attempts > MAX_GRADE_ATTEMPTS:
                why = (
                    f"grading was interrupted {attempts - 1} times (the grader stopped while "
                    "running this notebook); it was not graded"
                )
                result = self._not_graded(name, why, "crashed")
            else:
                result = await self._grade(entry, name)
        except asyncio.CancelledError:
            self.journal.forget_attempt(submission_id)  # a shutdown, not the notebook
            raise
        except Exception as error:  # the grader's failure (a bug, no broker), not the learner's
            if attempts < MAX_GRADE_ATTEMPTS:
                log.warning("grading %s failed (attempt %d): %s", name, attempts, error)
                await asyncio.sleep(HARNESS_RETRY_SECONDS)
                return True
            log.exception("grading %s failed for the last time", name)
            why = f"the grader failed: {type(error).__name__}: {error}"
            result = self._not_graded(name, why, "crashed")
        body, score = answer_for(result, pulled.points, self.client.server or XQUEUE)
        self.journal.record_answer(submission_id, body, score)
        log.info("graded %s: %s, %g points", name, result.status, score)
        self.wake_sender.set()
        return False

    async def _grade(self, entry: Entry, name: str) -> GradeResult:
        notebook, problem = entry.notebook, entry.problem
        if notebook is None and problem is None:
            notebook, problem = await self._fetch(entry.pulled())
            self.journal.store_file(entry.submission_id, notebook, problem)
        if problem is not None or notebook is None:
            return self._not_graded(name, problem or "no file", "rejected")
        return await self.grader.grade(notebook, name, f"xqueue:{entry.submission_id}")

    async def _fetch(self, pulled: Pulled) -> tuple[bytes | None, str | None]:
        """(file, None) or (None, why it cannot be graded, for the learner)."""
        choice = choose_file(pulled.files)
        if choice is None:
            if pulled.student_response.strip():  # a notebook pasted into a text box
                return pulled.student_response.encode("utf-8", "replace"), None
            return None, "no file was submitted: upload your notebook (.ipynb)"
        filename, url = choice
        for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
            try:
                return await self.client.download(url), None
            except Download as error:
                if error.final or attempt == DOWNLOAD_ATTEMPTS:
                    log.warning("download of %r failed: %s", url[:200], error)
                    return None, f"the uploaded file {filename!r} could not be read: {error}"
            await asyncio.sleep(2**attempt)
        raise AssertionError("unreachable")

    def _not_graded(self, name: str, why: str, status: str) -> GradeResult:
        rubric = self.options.rubric()
        return not_graded(
            name,
            "rejected" if status == "rejected" else "crashed",
            why,
            max_score=rubric.max_score,
            rubric_name=rubric.name,
            diagnosis=why,
        )

    # -- answers ---------------------------------------------------------------------------

    async def _sender(self) -> None:
        while True:
            try:
                await self._send_due()
            except asyncio.CancelledError:
                raise
            except Exception:  # logged: the sender must survive anything
                log.exception("posting answers failed")
            if self.stopping:
                return
            upcoming = self.journal.next_due()
            pause = 5.0 if upcoming is None else min(5.0, max(0.05, upcoming - time.time()))
            self.wake_sender.clear()
            await _wait(self.wake_sender, None, pause)

    async def _send_due(self) -> None:
        for entry in self.journal.due():
            await self._send(entry)

    async def _send(self, entry: Entry) -> None:
        assert entry.answer is not None
        sid = entry.submission_id
        try:
            reply = await self.client.put_result(entry.header, entry.answer)
        except ServerError as error:
            if error.status != 500 or self.client.server != EDX_SUBMISSIONS:
                self._retry(entry, str(error))
            elif entry.outcome == RETIRED_500:
                outcome = f"{PRESUMED_TAKEN}: two HTTP 500s, edx-submissions' answer when it"
                self.journal.sent(sid, f"{outcome} has recorded an answer already")
                log.warning("answer for %s: %s has recorded an answer already", sid, outcome)
            else:
                self._retry(entry, RETIRED_500)
            return
        except (XQueueUnavailable, LoginFailed) as error:
            self._retry(entry, str(error))
            return
        if reply.ok:
            self.journal.sent(sid, "taken")
            log.info("answer for submission %s taken by XQueue", sid)
        elif isinstance(reply.content, str) and reply.content.startswith(FINAL_REFUSALS):
            self.journal.sent(sid, f"refused: {reply.content}")
            log.warning("XQueue refused the answer for %s for good: %s", sid, reply.content)
        else:
            self._retry(entry, f"put_result: {str(reply.content)[:300]}")

    def _retry(self, entry: Entry, why: str) -> None:
        delay = send_delay(entry.send_attempts + 1)
        attempts = self.journal.retry_send(entry.submission_id, delay, why)
        log.warning(
            "answer for %s not taken (attempt %d): %s; again in %g s",
            entry.submission_id,
            attempts,
            why,
            delay,
        )


async def _wait(event: asyncio.Event, other: asyncio.Event | None, timeout: float | None) -> None:
    """Until `event` (or `other`) is set, or `timeout` seconds have passed."""
    waits = [asyncio.ensure_future(event.wait())]
    if other is not None:
        waits.append(asyncio.ensure_future(other.wait()))
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waits:
            waiter.cancel()


# -- the command -------------------------------------------------------------------------------


def make_grader(settings: Settings) -> Grader:
    """The webhook service's backends: this machine's warm pool, or Celery workers."""
    from grader.service.grading import CeleryGrader, LocalGrader

    if settings.broker:
        return CeleryGrader(settings.broker, settings.options)
    return LocalGrader(settings.options)


def run(settings: Settings) -> None:
    """Run the worker until SIGTERM or SIGINT (a second one stops at once)."""
    journal = Journal(settings.state)
    try:
        asyncio.run(_main(settings, journal))
    finally:
        journal.close()


async def _main(settings: Settings, journal: Journal) -> None:
    client = XQueueClient(
        settings.url, settings.username, settings.password, server=settings.server
    )
    worker = XQueueWorker(
        client,
        journal,
        make_grader(settings),
        settings.options,
        queue=settings.queue,
        jobs=settings.jobs,
        poll_max=settings.poll_max,
        grace=settings.grace,
    )
    stop = asyncio.Event()
    main = asyncio.current_task()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stop.is_set() and main is not None:
            log.warning("second %s: stopping now", signal.Signals(signum).name)
            main.cancel()
            return
        log.info("%s: finishing up (send it again to stop at once)", signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    counts = journal.counts()
    log.info(
        "XQueue worker for queue %r at %s: %d slot(s), journal %s (%d to grade, %d to send)",
        settings.queue,
        settings.url,
        settings.jobs,
        journal.path,
        counts["grading"],
        counts["sending"],
    )
    try:
        await worker.run(stop)
    except asyncio.CancelledError:
        log.warning("stopped; unfinished work stays in the journal")
    finally:
        await client.close()
