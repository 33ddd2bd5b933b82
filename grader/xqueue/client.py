"""The XQueue REST contract over HTTP: log in, pull a submission, download its file, answer.

Behaves as Open edX's own external graders (xqueue-watcher) do against both servers that
speak it, openedx/xqueue and edx-submissions' XQueue-compatible API: a Django session cookie
from ``POST /xqueue/login/`` (after a ``GET`` of the same URL, which gives edx-submissions'
CSRF cookie; its token then goes with every POST), redirects not followed, and a lost session
(a redirect to the login page, a 401, a 403 that is not an XQueue answer, or return_code 1
"login_required") answered by logging in again once. Which of the two servers it is (they read
the answer's score differently) is `server`: given, or told from the answer to that ``GET``.

Every body read from the server is bounded in size and time: an answer of the API, and the
learner's uploaded file. The session (cookie, CSRF token) goes only to the XQueue server: a
file elsewhere (a storage bucket's signed URL) is fetched without them, and no download follows
a redirect.
"""

from __future__ import annotations

import asyncio
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
    SERVERS,
    ContractError,
    Pulled,
    Reply,
    is_empty_queue,
    parse_reply,
    parse_submission,
    server_from_login_page,
)

log = logging.getLogger("grader.xqueue")

MAX_ANSWER_BYTES = 4 * 2**20  # an API answer; a submission's text answer rides in it
DOWNLOAD_SECONDS = 60.0  # a whole download, however slowly the bytes come
LOGIN = "/xqueue/login/"
GET_SUBMISSION = "/xqueue/get_submission/"
PUT_RESULT = "/xqueue/put_result/"
CSRF_COOKIES = ("csrftoken", "edx-csrftoken")
REDIRECTS = (301, 302, 303, 307, 308)
AUTO = "auto"
GROUP_HINT = (
    "on edx-submissions the user must be in the Django group 'xqueue' "
    "(LMS admin: Authentication and Authorization > Groups)"
)


class XQueueUnavailable(GraderError):
    """The server could not be reached or answered nonsense: try again later."""


class ServerError(XQueueUnavailable):
    """The server answered 5xx; `status` says which."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


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
        server: str = AUTO,
        timeout: float = 30.0,
        max_file_bytes: int = DEFAULT_MAX_BYTES,
        download_timeout: float = DOWNLOAD_SECONDS,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"the XQueue URL must be http(s)://host[:port], not {base_url!r}")
        if server != AUTO and server not in SERVERS:
            raise ValueError(f"the XQueue server is one of {AUTO}, {', '.join(SERVERS)}")
        self.base_url = base_url.rstrip("/")
        self.origin = _origin(httpx.URL(self.base_url))
        self.username, self.password = username, password
        # openedx/xqueue or edx-submissions; None until the first login tells (server="auto")
        self.server: str | None = None if server == AUTO else server
        self.max_file_bytes = max_file_bytes
        self.download_timeout = download_timeout
        self.api_timeout = 2 * timeout  # a whole API call
        self._csrf: str | None = None  # sent with POSTs only, to the XQueue server only
        common: dict[str, Any] = {
            "timeout": httpx.Timeout(timeout, connect=10.0),
            "follow_redirects": False,
            "transport": transport,
            "headers": {"user-agent": "mbgd-grader-xqueue"},
        }
        self.http = httpx.AsyncClient(base_url=self.base_url, **common)
        self.elsewhere = httpx.AsyncClient(**common)  # files on other hosts: no session

    async def close(self) -> None:
        await self.http.aclose()
        await self.elsewhere.aclose()

    # -- the API ---------------------------------------------------------------------------

    async def login(self) -> None:
        """A fresh session (and CSRF token, where the server has one); the first one also
        tells which server this is, unless it was given."""
        self.http.cookies.clear()
        self._csrf = None
        try:
            # edx-submissions sets its CSRF cookie here; the answer tells the servers apart
            seen = server_from_login_page(*await self._send("GET", LOGIN))
        except XQueueUnavailable as error:
            if self.server is None:
                raise XQueueUnavailable(
                    f"cannot tell which XQueue server this is: {error}"
                ) from None
            log.debug("login page prefetch failed: %s", error)
            seen = None
        self._settle_server(seen)
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
        self._csrf = self._csrf_token()

    def _settle_server(self, seen: str | None) -> None:
        if self.server is None:
            if seen is None:
                raise LoginFailed(
                    f"cannot tell whether {self.base_url} is openedx/xqueue or edx-submissions "
                    f"from its answer to GET {LOGIN}: name it (MBGD_XQUEUE_SERVER)"
                )
            self.server = seen
            log.info("the XQueue server at %s is %s", self.base_url, seen)
        elif seen is not None and seen != self.server:
            log.warning(
                "the XQueue server was named %s, but it answers GET %s as %s does",
                self.server,
                LOGIN,
                seen,
            )

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
        """An uploaded file, at most `max_file_bytes`, within `download_timeout` seconds in
        all; a relative URL (a Django storage's MEDIA_URL) is on the XQueue server. Raises
        Download.

        The session cookie goes only to the XQueue server itself (same scheme, host and
        port), the CSRF token never (a GET needs none). A redirect is not followed, even to
        the same host: the storages XQueue uses give a file's own URL, so a redirect is
        either a misconfiguration or a way to send the worker, and what it carries, to an
        address nobody chose; refusing costs nothing that works."""
        try:
            target = httpx.URL(urljoin(self.base_url + "/", url))
        except (httpx.InvalidURL, ValueError):
            target = None
        if target is None or target.scheme not in ("http", "https") or not target.host:
            raise Download(f"the file's address is not http(s): {url[:200]!r}", final=True)
        own = _origin(target) == self.origin
        client = self.http if own else self.elsewhere
        if not own:
            client.cookies.clear()  # nothing a storage set for an earlier file goes back
        try:
            async with asyncio.timeout(self.download_timeout):
                return await self._fetch(client, target)
        except TimeoutError:
            raise Download(
                f"the download took longer than {self.download_timeout:g} s", final=False
            ) from None

    async def _fetch(self, client: httpx.AsyncClient, target: httpx.URL) -> bytes:
        try:
            async with client.stream("GET", target) as response:
                status = response.status_code
                if status in REDIRECTS:
                    where = httpx.URL(response.headers.get("location", "")).host or "here"
                    raise Download(
                        f"HTTP {status}: the file's address redirects (to {where}), "
                        "and redirects are not followed",
                        final=True,
                    )
                if status >= 500 or status in (408, 429):
                    raise Download(f"HTTP {status}", final=False)
                if status != 200:
                    raise Download(f"HTTP {status}", final=True)
                return await read_capped(response, self.max_file_bytes)
        except TooLarge:
            mib = self.max_file_bytes / 2**20
            raise Download(f"the file is larger than {mib:g} MiB", final=True) from None
        except (httpx.HTTPError, httpx.InvalidURL) as error:
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
                if attempt == 2 and status == 403 and isinstance(data, dict):
                    # DRF's answer to a logged-in user its permission class refuses
                    detail = str(data.get("detail", ""))[:200]
                    raise LoginFailed(
                        f"{path}: HTTP 403 for {self.username!r} after a fresh login "
                        f"({detail}); {GROUP_HINT}"
                    )
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
        """(status, decoded JSON body or None); 5xx (ServerError), network errors and an
        answer slower than `api_timeout` in all: XQueueUnavailable."""
        sent = dict(headers or {})
        if method == "POST" and self._csrf:
            sent.setdefault("x-csrftoken", self._csrf)
            sent.setdefault("referer", self.base_url + "/")
        try:
            async with asyncio.timeout(self.api_timeout):
                async with self.http.stream(method, path, headers=sent, **kwargs) as response:
                    raw = await read_capped(response, MAX_ANSWER_BYTES)
                    status = response.status_code
        except TimeoutError:
            raise XQueueUnavailable(f"{path}: no answer within {self.api_timeout:g} s") from None
        except TooLarge as error:
            raise XQueueUnavailable(f"{path}: the answer is too large ({error})") from None
        except httpx.HTTPError as error:
            raise XQueueUnavailable(f"{path}: {type(error).__name__}: {error}") from None
        if status >= 500:
            raise ServerError(f"{path}: HTTP {status}", status)
        try:
            data = json.loads(raw) if raw else None
        except (ValueError, RecursionError):
            data = None
        return status, data


def _origin(url: httpx.URL) -> tuple[str, str, int]:
    """Scheme, host and port (the default one when none is written)."""
    port = url.port or {"http": 80, "https": 443}.get(url.scheme, 0)
    return url.scheme, url.host.lower(), port


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
