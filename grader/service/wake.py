"""Waiting for a wake-up with a time limit, in the service's loops that a shutdown cancels.

Not `asyncio.wait_for(event.wait(), timeout)`: on Python 3.11 a cancel that lands in the same
turn as the event being set (a row arriving, a delivery ending) is lost inside `wait_for`, and
a loop that relies on that cancel to end goes on for ever while its `stop()` waits for it.
`asyncio.timeout` lets the cancel through; the loops also check a stop flag of their own.
"""

from __future__ import annotations

import asyncio
import contextlib


async def wait_for_wake(event: asyncio.Event, seconds: float) -> None:
    """Return when `event` is set or `seconds` have passed; a cancel is never swallowed."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()
