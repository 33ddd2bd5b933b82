"""Reading what a remote peer answers (an LMS's token endpoint, an XQueue server) with a cap:
the body is streamed and refused as soon as it passes the cap, so a peer cannot make the
harness hold more than it asked for."""

from __future__ import annotations

import httpx

from grader.errors import GraderError


class TooLarge(GraderError):
    """A body passed its cap while it was read."""


async def read_capped(response: httpx.Response, cap: int) -> bytes:
    """The body of a streamed `response`, or TooLarge as soon as it passes `cap` bytes."""
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        raise TooLarge(f"{int(declared)} bytes")
    chunks, size = [], 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > cap:
            raise TooLarge(f"more than {cap} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
