"""The XQueue REST contract over HTTP: log in, pull a submission, download its file, answer.

Behaves as Open edX's own external graders (xqueue-watcher) do against both servers that
speak it, openedx/xqueue and edx-submissions' XQueue-compatible API: a Django session cookie
from ``POST /xqueue/login/`` (after a ``GET`` of the same URL, which gives edx-submissions'
CSRF cookie; its token then goes with every POST), redirects not followed, and a lost session
(a redirect to the login page, a 401, a 403 that is not an XQueue answer, or return_code 1
"login_required") answered by logging in again once. Every body read from the server is
bounded: an answer of the API, and the learner's uploaded file.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx

from grader.errors import GraderError
from grader.service.capped import TooLarge, read_capped
from grader.submission import DEFAULT_MAX_BYTES
from grader.xqueue.contract import (
    ContractError,
    Pulled,
    Reply,
    is_empty_queue,
    parse_reply,
    parse_submission,
)

log = logging.getLogger("grader.xqueue")

MAX_ANSWER_BYTES = 4 * 2**20  # an API answer; a submission's text answer rides in it
LOGIN = "/xqueue/login/"
GET_SUBMISSION = "/xqueue/get_submission/"
PUT_RESULT = "/xqueue/put_result/"
CSRF_COOKIES = ("csrftoken", "edx-csrftoken")


class XQueueUnavailable(GraderError):
    """The server could not be reached or answered nonsense: try again later."""


class LoginFailed(GraderError):
    """The server refused the credentials (or could not be logged in to)."""


class Download(GraderError):
    """The learner's file could not be fetched; `final` says whether retrying can help."""

    def __init__(self, message: str, *, final: bool) -> None:
        super().__init__(message)
        self.final = final


class XQueueClient:
    """One logged-in session with an XQueue server; methods raise `XQueueUnavailable` for
    anything a later retry may fix."""

    def __init__(
        self,
        base_url: str,
        username: str,
        password: str,
        *,
        timeout: float = 30.0,
        max_file_bytes: int = DEFAULT_MAX_BYTES,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"the XQueue URL must be http(s)://host[:port], not {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.username, self.password = username, password
        self.max_file_bytes = max_file_bytes
        self.http = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout, connect=10.0),
            follow_redirects=False,
            transport=transport,
            headers={"user-agent": "mbgd-grader-xqueue"},
        )

    async def close(self) -> None:
        await self.http.aclose()

    # -- the API ---------------------------------------------------------------------------

    async def login(self) -> None:
        """A fresh session (and CSRF token, where the server has one)."""
        self.http.cookies.clear()
        self.http.headers.pop("x-csrftoken", None)
        try:
            await self._send("GET", LOGIN)  # edx-submissions sets its CSRF cookie here
        except XQueueUnavailable as error:
            log.debug("login page prefetch failed (older server?): %s", error)
        headers = {"referer": self.base_url + LOGIN}
        token = self._csrf_token()
        if token:
            headers["x-csrftoken"] = token
        status, data = await self._send(
            "POST",
            LOGIN,
            data={"username": self.username, "password": self.password},
            headers=headers,
        )
        reply = _reply_or_none(data)
        if reply is None:
            raise XQueueUnavailable(f"login answered HTTP {status} without an XQueue answer")
        if not reply.ok:
            raise LoginFailed(f"XQueue refused the login as {self.username!r}: {reply.content}")
        self.http.headers["referer"] = self.base_url + "/"
        token = self._csrf_token()
        if token:
            self.http.headers["x-csrftoken"] = token

    async def get_submission(self, queue: str) -> Pulled | None:
        """The next submission of `queue`, or None when it is empty.

        A submission whose content breaks the contract raises ContractError; one the server
        refuses to hand out for another reason (an unknown queue) raises XQueueUnavailable."""
        reply = await self._call("GET", GET_SUBMISSION, params={"queue_name": queue})
        if reply.ok:
            return parse_submission(reply.content)
        if is_empty_queue(reply):
            return None
        raise XQueueUnavailable(f"get_submission: {str(reply.content)[:300]}")

    async def put_result(self, header: str, body: str) -> Reply:
        """Post one answer; the server's Reply says whether it took it (return_code 1 with
        "Incorrect key for submission": the submission was handed out again since)."""
        return await self._call(
            "POST", PUT_RESULT, data={"xqueue_header": header, "xqueue_body": body}
        )

    async def download(self, url: str) -> bytes:
        """An uploaded file, at most `max_file_bytes`; a relative URL (a Django storage's
        MEDIA_URL) is on the XQueue server. Raises Download."""
        target = urljoin(self.base_url + "/", url)
        if urlsplit(target).scheme not in ("http", "https"):
            raise Download(f"the file's address is not http(s): {url[:200]!r}", final=True)
        try:
            async with self.http.stream("GET", target, follow_redirects=True) as response:
                if response.status_code >= 500 or response.status_code in (408, 429):
                    raise Download(f"HTTP {response.status_code}", final=False)
                if response.status_code != 200:
                    raise Download(f"HTTP {response.status_code}", final=True)
                return await read_capped(response, self.max_file_bytes)
        except TooLarge:
            mib = self.max_file_bytes / 2**20
            raise Download(f"the file is larger than {mib:g} MiB", final=True) from None
        except httpx.HTTPError as error:
            raise Download(f"{type(error).__name__}: {error}"[:300], final=False) from None

    # -- plumbing --------------------------------------------------------------------------

    def _csrf_token(self) -> str | None:
        for name in CSRF_COOKIES:
            value = self.http.cookies.get(name)
            if value:
                return value
        return None

    async def _call(self, method: str, path: str, **kwargs: Any) -> Reply:
        """An API call as a Reply; logs in again once when the session is gone."""
        for attempt in (1, 2):
            status, data = await self._send(method, path, **kwargs)
            reply = _reply_or_none(data)
            if _session_lost(status, reply):
                if attempt == 2:
                    raise XQueueUnavailable(f"{path}: still not logged in after a new login")
                log.info("XQueue session lost (HTTP %d on %s): logging in again", status, path)
                await self.login()
                continue
            if reply is None:
                raise XQueueUnavailable(f"{path}: HTTP {status} without an XQueue answer")
            return reply
        raise AssertionError("unreachable")

    async def _send(
        self, method: str, path: str, *, headers: Mapping[str, str] | None = None, **kwargs: Any
    ) -> tuple[int, Any]:
        """(status, decoded JSON body or None); 5xx and network errors: XQueueUnavailable."""
        try:
            async with self.http.stream(method, path, headers=headers, **kwargs) as response:
                raw = await read_capped(response, MAX_ANSWER_BYTES)
                status = response.status_code
        except TooLarge as error:
            raise XQueueUnavailable(f"{path}: the answer is too large ({error})") from None
        except httpx.HTTPError as error:
            raise XQueueUnavailable(f"{path}: {type(error).__name__}: {error}") from None
        if status >= 500:
            raise XQueueUnavailable(f"{path}: HTTP {status}")
        try:
            data = json.loads(raw) if raw else None
        except (ValueError, RecursionError):
            data = None
        return status, data


def _reply_or_none(data: Any) -> Reply | None:
    try:
        return parse_reply(data)
    except ContractError:
        return None


def _session_lost(status: int, reply: Reply | None) -> bool:
    """Django's login_required redirects; DRF answers 401/403 with {"detail": ...}; xqueue's
    login view answers GET with return_code 1 "login_required"."""
    if status in (301, 302, 303, 307, 308, 401):
        return True
    if status == 403:
        return reply is None
    return reply is not None and not reply.ok and reply.content == "login_required"
