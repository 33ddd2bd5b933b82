"""LTI Score delivery from the durable outbox: the same Score bytes on every attempt.

A Score row is written with its result, in the same transaction, so a kill -9 at any moment
leaves either no result or a result whose Score will be posted. Every attempt sends the same
bytes (the AGS ``timestamp`` inside them is the grading time, fixed when the row was written,
so a platform that saw the first post keeps one result). 2xx is delivered, and so is Open edX's
400 "Score already exists for the provided timestamp" (an earlier post of these very bytes was
stored, its answer lost: `lti.already_accepted`). A 401 or 403 makes the client post again at
once with a new access token (`AgsClient.post_score`); a 4xx other than 401 and 429 after that
is final (the line item is gone, the user is not in the course, the new token was refused
too ...) and shown in ``GET /v1/submissions/{id}``; anything else is retried with backoff (at
least ``Retry-After`` for a 429) until ``callback_max_attempts``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from grader.service.lti import AgsClient
from grader.service.outbox import DeliveryLoop, backoff_delay

log = logging.getLogger("grader.service.lti")


class ScoreOutbox(DeliveryLoop):
    """Posts AGS Scores to the platforms named in ``settings.lti``."""

    table = "lti_outbox"
    name = "lti-score-outbox"
    _ags: AgsClient | None = None

    async def start(self) -> None:
        await super().start()
        assert self._client is not None
        self._ags = AgsClient(self._client)

    async def _finish(self, seq: int, status: str, http_status: int | None, error: str) -> None:
        await asyncio.to_thread(
            self.db.callback_done,
            seq,
            status=status,
            http_status=http_status,
            error=error,
            table=self.table,
        )

    async def _attempt(self, row: Any) -> None:
        seq, issuer, lineitem = row["seq"], row["issuer"], row["lineitem"]
        attempt = row["attempts"] + 1
        lti = self.settings.lti
        platform = lti.platform(issuer) if lti is not None else None
        if platform is None:
            error = f"issuer {issuer!r} is not registered in the LTI config (any more)"
            await self._finish(seq, "dead", None, error)
            return
        if not platform.lineitem_allowed(lineitem):
            error = "the line item's host is not among this platform's lineitem_hosts"
            await self._finish(seq, "dead", None, error)
            return
        assert self._ags is not None
        outcome = await self._ags.post_score(platform, lineitem, bytes(row["body"]))
        if outcome.delivered:
            await self._finish(seq, "delivered", outcome.status, outcome.error)
            log.info(
                "score for %s posted to %s (attempt %d)%s",
                row["submission"],
                issuer,
                attempt,
                f": {outcome.error}" if outcome.error else "",
            )
            return
        if outcome.final or attempt >= self.settings.callback_max_attempts:
            log.warning("score %s given up after %d attempts: %s", seq, attempt, outcome.error)
            await self._finish(seq, "dead", outcome.status, outcome.error)
            return
        delay = backoff_delay(
            attempt, self.settings.callback_backoff, self.settings.callback_backoff_cap
        )
        if outcome.retry_after is not None:
            delay = max(delay, outcome.retry_after)
        log.info("score %s attempt %d: %s; retry in %.1f s", seq, attempt, outcome.error, delay)
        await asyncio.to_thread(
            self.db.callback_retry,
            seq,
            at=time.time() + delay,
            http_status=outcome.status,
            error=outcome.error,
            table=self.table,
        )
