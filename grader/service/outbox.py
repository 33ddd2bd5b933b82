"""Callback delivery from the durable outbox: signed, retried with backoff, at least once.

Every row is sent with the same body and ``webhook-id`` on every attempt (a fresh
``webhook-timestamp`` and signature each time, as Standard Webhooks wants). 2xx is delivered;
410 Gone and hosts no longer on the allowlist are given up at once; anything else (errors,
timeouts, 5xx, redirects, which are never followed) is retried after
``backoff * 2**attempt`` seconds with jitter, capped, until ``callback_max_attempts``.
The loop that schedules the rows (`DeliveryLoop`) also delivers the LTI Scores
(`grader.service.score_outbox`), from their own table.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from typing import Any

import httpx

from grader import __version__
from grader.service.db import Database
from grader.service.settings import Settings
from grader.service.signing import sign_headers
from grader.service.wake import wait_for_wake

log = logging.getLogger("grader.service.outbox")

CONCURRENCY = 8


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Seconds before retry number ``attempt`` (1-based): exponential, jittered, capped."""
    delay = min(cap, base * 2 ** (attempt - 1))
    return delay * random.uniform(0.75, 1.25)


class DeliveryLoop:
    """Delivers the due rows of one outbox table, a few at a time; ``wake()`` on a new row.

    Subclasses say how one row is attempted (`_attempt`); the loop owns the schedule: which
    rows are due, how many are in flight, and when to look again.
    """

    table = "outbox"
    name = "callback-outbox"

    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        self._wake = asyncio.Event()
        self._inflight: set[int] = set()
        self._sem = asyncio.Semaphore(CONCURRENCY)
        self._task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None
        self._stopping = False

    def wake(self) -> None:
        self._wake.set()

    async def start(self) -> None:
        self._client = httpx.AsyncClient(
            follow_redirects=False,  # a redirect could point anywhere: never follow it
            timeout=self.settings.callback_timeout,
            trust_env=False,  # no proxies from the environment
            headers={"user-agent": f"mbgd-grader/{__version__}"},
        )
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        """End the loop (rows in flight are cancelled, and stay due in the database).

        The flag, not the cancel alone, ends it (see `grader.service.wake`)."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._client is not None:
            await self._client.aclose()

    async def _run(self) -> None:
        running: set[asyncio.Task[None]] = set()
        try:
            while not self._stopping:
                self._wake.clear()
                room = CONCURRENCY * 2 - len(self._inflight)
                try:
                    rows = (
                        await asyncio.to_thread(
                            self.db.due_callbacks, room, set(self._inflight), self.table
                        )
                        if room > 0
                        else []
                    )
                except Exception:  # logged: keep delivering after a transient DB error
                    log.exception("%s: could not read due rows", self.name)
                    rows = []
                for row in rows:
                    self._inflight.add(row["seq"])
                    task = asyncio.create_task(self._deliver(row))
                    running.add(task)
                    task.add_done_callback(running.discard)
                if rows:
                    await asyncio.sleep(0)
                    continue
                next_at = await asyncio.to_thread(self.db.next_callback_at, self.table)
                wait = 2.0
                if next_at is not None and next_at > time.time():
                    wait = max(0.05, min(2.0, next_at - time.time()))
                if self._stopping:
                    break
                await wait_for_wake(self._wake, wait)
        finally:
            for task in running:
                task.cancel()

    async def _deliver(self, row: Any) -> None:
        seq = row["seq"]
        try:
            async with self._sem:
                await self._attempt(row)
        except Exception:
            log.exception("%s: delivery of row %s failed unexpectedly", self.name, seq)
        finally:
            self._inflight.discard(seq)
            self._wake.set()

    async def _attempt(self, row: Any) -> None:
        raise NotImplementedError


class Outbox(DeliveryLoop):
    """Signed callbacks to each submission's ``callback_url``."""

    async def _attempt(self, row: Any) -> None:
        seq, url, attempt = row["seq"], row["url"], row["attempts"] + 1
        if not self.settings.callback_host_allowed(url):
            await asyncio.to_thread(
                self.db.callback_done,
                seq,
                status="dead",
                http_status=None,
                error="callback host is not on MBGD_CALLBACK_ALLOWED_HOSTS",
            )
            return
        if self.settings.callback_key is None:
            await asyncio.to_thread(
                self.db.callback_retry,
                seq,
                at=time.time() + 60,
                http_status=None,
                error="MBGD_CALLBACK_SECRET is not set; callbacks wait until it is",
            )
            return
        body = bytes(row["body"])
        headers = sign_headers(self.settings.callback_key, row["webhook_id"], body)
        headers["content-type"] = "application/json"
        status: int | None = None
        try:
            assert self._client is not None
            response = await self._client.post(url, content=body, headers=headers)
            status = response.status_code
            error = f"HTTP {status}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
        if status is not None and 200 <= status < 300:
            await asyncio.to_thread(
                self.db.callback_done, seq, status="delivered", http_status=status, error=""
            )
            log.info("callback %s delivered (attempt %d)", row["webhook_id"], attempt)
            return
        if status == 410 or attempt >= self.settings.callback_max_attempts:
            log.warning("callback %s given up after %d attempts: %s", seq, attempt, error)
            await asyncio.to_thread(
                self.db.callback_done, seq, status="dead", http_status=status, error=error
            )
            return
        delay = backoff_delay(
            attempt, self.settings.callback_backoff, self.settings.callback_backoff_cap
        )
        log.info("callback %s attempt %d: %s; retry in %.1f s", seq, attempt, error, delay)
        await asyncio.to_thread(
            self.db.callback_retry, seq, at=time.time() + delay, http_status=status, error=error
        )
