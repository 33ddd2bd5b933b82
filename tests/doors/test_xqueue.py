"""The XQueue door end to end: `mbgd-grader xqueue` against a minimal XQueue on loopback.

The fake XQueue is written here from the published contract (openedx/xqueue's
submission_queue views and edx-submissions' XQueueViewSet): a Django-style session cookie
from POST /xqueue/login/, get_submission handing out one queued submission with a fresh
pull key, put_result checking header and key and recording the answer, uploads served
under /files/. It can play either server, as their code does:

- openedx/xqueue ("xqueue"): a lost session is a 302 to the login page; the answer's score
  is points, which the LMS caps at the problem's weight; grader_payload is the course's.
- edx-submissions ("submissions", 4.0.2 and later): a lost session is a 403 without an
  XQueue answer, and so is a user outside the Django group "xqueue"; POSTs need the CSRF
  token its GET /xqueue/login/ hands out; grader_payload is replaced by {"grader": ...};
  the score is a 0..1 fraction it multiplies by the problem's points_possible (rounded);
  a pulled submission not answered within `rehand_after` (5 minutes there) is handed out
  again with the same key at every poll; an answer for a submission it already retired is
  an HTTP 500 (its status cannot move from "retired").

It can also expire every session, refuse answers with 503, and record an answer without
sending the reply (a reply lost on the way).

The client tests and the worker tests with a stub grader need no kernel; the slow ones grade
real notebooks in a real `mbgd-grader xqueue` process, kill it with SIGKILL mid-grading, and
restart it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import nbformat
import pytest
from nbformat.v4 import new_code_cell

from grader.models import GradeResult
from grader.pipeline import GradeOptions
from grader.xqueue.client import Download, LoginFailed, XQueueClient
from grader.xqueue.journal import Journal
from grader.xqueue.worker import XQueueWorker
from tests.helpers import MANIFEST, SECRET_HUNTER, SUBMISSIONS, kill_tree, quick_notebook

USER, PASSWORD, QUEUE = "mbgd-grader", "s3cret-" + secrets.token_hex(4), "mbgd-lab"
MAX_FILE = 10 * 2**20  # grader.submission.DEFAULT_MAX_BYTES, the worker's download cap


# -- the fake XQueue ---------------------------------------------------------------------------


@dataclass
class Put:
    submission_id: str
    key: str
    raw_body: str
    status: int  # what the fake answered: 200 taken, 503 refused, 200/403 with return_code 1,
    # 500 already retired (edx-submissions)

    @property
    def body(self) -> dict[str, Any]:
        return json.loads(self.raw_body)

    @property
    def taken(self) -> bool:
        return self.status == 200 and self.key != "stale"


@dataclass
class Queued:
    submission_id: str
    files: dict[str, str]  # name -> URL
    body: dict[str, Any]
    handed_out: int = 0
    key: str = ""
    points_possible: int = 1  # the problem's weight (the LMS's block.max_score())
    pulled_at: float = 0.0
    retired: bool = False


@dataclass
class FakeXQueue:
    """A minimal XQueue; `style` is "xqueue" (openedx/xqueue) or "submissions"."""

    style: str = "xqueue"
    waiting: list[Queued] = field(default_factory=list)
    handed: dict[str, Queued] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    puts: list[Put] = field(default_factory=list)
    sessions: set[str] = field(default_factory=set)
    refuse: dict[str, int] = field(default_factory=dict)  # submission id -> 503s left
    expire_after_first_put: bool = False
    rehand_after: float = 300.0  # edx-submissions: pulled, unanswered -> handed out again
    in_group: bool = True  # edx-submissions: the user is in the Django group "xqueue"
    lose_reply: set[str] = field(default_factory=set)  # answers recorded, no reply sent
    scores: dict[str, tuple[float, int]] = field(default_factory=dict)  # what the LMS stores
    file_requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    routes: dict[str, Any] = field(default_factory=dict)  # path -> handler(request handler)
    logins: int = 0
    polls: int = 0

    def __post_init__(self) -> None:
        self.cond = threading.Condition()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def add(
        self,
        sid: str,
        files: dict[str, bytes | None],
        payload: Any = "",
        *,
        points_possible: int = 1,
    ) -> None:
        """Queue a submission; a file given as None has a URL that answers 404."""
        urls = {}
        for name, data in files.items():
            path = f"/files/{sid}/{name}"
            if data is not None:
                self.files[path] = data
            urls[name] = path if sid.endswith("r") else self.url + path  # relative, absolute
        info: dict[str, Any] = {"anonymous_student_id": f"anon-{sid}"}
        if self.style == "submissions":
            # The LMS keeps only the payload's "grader"; edx-submissions sends that alone.
            course = json.loads(payload) if isinstance(payload, str) and payload else payload
            grader = course.get("grader", "") if isinstance(course, dict) else ""
            payload = {"grader": grader}
            info.update(submission_time=str(int(time.time())), random_seed=1)
        else:
            info["submission_time"] = "20261130150000"
        body = {
            "student_response": "",
            "grader_payload": payload if isinstance(payload, str) else json.dumps(payload),
            "student_info": json.dumps(info),
        }
        with self.cond:
            self.waiting.append(Queued(sid, urls, body, points_possible=points_possible))

    def expire_sessions(self) -> None:
        with self.cond:
            self.sessions.clear()

    def taken(self, sid: str) -> list[Put]:
        with self.cond:
            return [p for p in self.puts if p.submission_id == sid and p.taken]

    def attempts(self, sid: str) -> list[Put]:
        with self.cond:
            return [p for p in self.puts if p.submission_id == sid]

    def wait_until(self, what: Any, timeout: float, why: str) -> None:
        with self.cond:
            if not self.cond.wait_for(what, timeout=timeout):
                raise AssertionError(f"{why} within {timeout} s; puts: {self.puts}")

    def wait_taken(self, sids: set[str], timeout: float) -> dict[str, Put]:
        self.wait_until(lambda: all(self.taken(s) for s in sids), timeout, f"answers for {sids}")
        return {s: self.taken(s)[0] for s in sids}

    # the three views, as Django would answer them

    def reply(self, ok: bool, content: Any) -> dict[str, Any]:
        return {"return_code": 0 if ok else 1, "content": content}

    def get_submission(self, queue: str) -> dict[str, Any]:
        with self.cond:
            self.polls += 1
            if queue != QUEUE:
                return self.reply(False, f"Queue '{queue}' not found")
            now = time.monotonic()
            late = [
                q
                for q in self.handed.values()
                if self.style == "submissions"
                and not q.retired
                and now - q.pulled_at > self.rehand_after
            ]
            if late:  # status "pulled" too long: out again, same key, status_time unchanged
                item = min(late, key=lambda q: q.pulled_at)
            elif not self.waiting:
                return self.reply(False, f"Queue '{queue}' is empty")
            else:
                item = self.waiting.pop(0)
                item.key = secrets.token_hex(16)
                item.pulled_at = now
            item.handed_out += 1
            self.handed[item.submission_id] = item
        header = {"submission_id": int(item.submission_id.rstrip("r")), "submission_key": item.key}
        content = {
            "xqueue_header": json.dumps(header),
            "xqueue_body": json.dumps(item.body),
            "xqueue_files": json.dumps(item.files),
        }
        return self.reply(True, json.dumps(content))

    def put_result(self, form: dict[str, str]) -> tuple[int, dict[str, Any] | None]:
        """(HTTP status, the XQueue answer); None: an HTML error page (0: no reply at all)."""
        header = json.loads(form["xqueue_header"])
        body = json.loads(form["xqueue_body"])  # the LMS's _parse_score_msg: a JSON object
        assert set(body) == {"correct", "score", "msg"}, body
        number = str(header["submission_id"])
        with self.cond:
            item = self.handed.get(number) or self.handed.get(number + "r")
            if item is None:
                return 404, self.reply(False, "Submission does not exist")
            sid = item.submission_id
            if self.refuse.get(sid, 0) > 0:
                self.refuse[sid] -= 1
                self.puts.append(Put(sid, header["submission_key"], form["xqueue_body"], 503))
                self.cond.notify_all()
                return 503, {}
            if header["submission_key"] != item.key:
                self.puts.append(Put(sid, "stale", form["xqueue_body"], 403))
                self.cond.notify_all()
                return 403, self.reply(False, "Incorrect key for submission")
            if item.retired and self.style == "submissions":
                # set_score, then update_status("retired") from "retired": ValueError, and
                # update_status("retry") in its handler raises again: Django's 500 page.
                self.puts.append(Put(sid, "retired", form["xqueue_body"], 500))
                self.cond.notify_all()
                return 500, None
            self.puts.append(Put(sid, item.key, form["xqueue_body"], 200))
            score, possible = float(body["score"]), item.points_possible
            if self.style == "submissions":  # 4.0.2: round(score * points_possible)
                self.scores[sid] = (round(score * possible), possible)
            else:  # the LMS's CodeResponse: points, capped at the problem's weight
                self.scores[sid] = (max(0.0, min(score, possible)), possible)
            item.retired = True
            if self.expire_after_first_put:
                self.expire_after_first_put = False
                self.sessions.clear()
            self.cond.notify_all()
            if sid in self.lose_reply:
                self.lose_reply.discard(sid)
                return 0, None
        return 200, self.reply(True, "")


def _handler(fake: FakeXQueue) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _cookies(self) -> dict[str, str]:
            jar = SimpleCookie(self.headers.get("cookie", ""))
            return {k: v.value for k, v in jar.items()}

        def _send(self, status: int, data: Any, cookies: dict[str, str] | None = None) -> None:
            raw = json.dumps(data).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(raw)))
            for name, value in (cookies or {}).items():
                self.send_header("set-cookie", f"{name}={value}; Path=/; HttpOnly")
            self.end_headers()
            self.wfile.write(raw)

        def _logged_in(self) -> bool:
            with fake.cond:
                return self._cookies().get("sessionid") in fake.sessions

        def _not_in_group(self) -> bool:
            """edx-submissions' IsXQueueUser: a DRF 403 for a user outside group "xqueue"."""
            if fake.style != "submissions" or fake.in_group:
                return False
            self._send(403, {"detail": "You do not have permission to perform this action."})
            return True

        def _refuse_login(self) -> None:
            if fake.style == "xqueue":  # django's login_required
                self.send_response(302)
                self.send_header("location", f"/xqueue/login/?next={self.path}")
                self.send_header("content-length", "0")
                self.end_headers()
            else:  # DRF's SessionAuthentication
                self._send(403, {"detail": "Authentication credentials were not provided."})

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            path = unquote(url.path)
            if url.path == "/xqueue/login/":
                if fake.style == "submissions":
                    self._send(200, fake.reply(True, ""), {"csrftoken": secrets.token_hex(16)})
                else:
                    self._send(200, fake.reply(False, "login_required"))
            elif url.path == "/xqueue/get_submission/":
                if not self._logged_in():
                    return self._refuse_login()
                if self._not_in_group():
                    return None
                queue = parse_qs(url.query).get("queue_name", [""])[0]
                self._send(200, fake.get_submission(queue))
            elif path in fake.routes or path in fake.files:
                with fake.cond:
                    fake.file_requests.append(
                        (path, {k.lower(): v for k, v in self.headers.items()})
                    )
                if path in fake.routes:
                    return fake.routes[path](self)
                data = fake.files[path]
                self.send_response(200)
                if len(data) < MAX_FILE:  # the big one comes without a length
                    self.send_header("content-length", str(len(data)))
                self.end_headers()
                with contextlib.suppress(OSError):  # a client that stops reading
                    for start in range(0, len(data), 65536):
                        self.wfile.write(data[start : start + 65536])
                self.close_connection = True
            else:
                self._send(404, {"detail": "Not found."})

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("content-length", "0")))
            form = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
            if self.path == "/xqueue/login/":
                if form.get("username") == USER and form.get("password") == PASSWORD:
                    session = secrets.token_hex(16)
                    with fake.cond:
                        fake.sessions.add(session)
                        fake.logins += 1
                    return self._send(200, fake.reply(True, "Logged in"), {"sessionid": session})
                status = 401 if fake.style == "submissions" else 200
                return self._send(status, fake.reply(False, "Incorrect login credentials"))
            if self.path != "/xqueue/put_result/":
                return self._send(404, {"detail": "Not found."})
            if not self._logged_in():
                return self._refuse_login()
            if fake.style == "submissions":  # DRF enforces CSRF for session-authenticated POSTs
                token = self._cookies().get("csrftoken")
                if not token or self.headers.get("x-csrftoken") != token:
                    return self._send(403, {"detail": "CSRF Failed: CSRF token missing."})
            if self._not_in_group():
                return None
            status, data = fake.put_result(form)
            if status == 0:  # recorded, and the reply is lost on the way
                self.close_connection = True
            elif data is None:
                page = b"<h1>Server Error (500)</h1>"
                self.send_response(status)
                self.send_header("content-type", "text/html")
                self.send_header("content-length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)
            else:
                self._send(status, data)

    return Handler


@pytest.fixture(params=["xqueue", "submissions"])
def fake(request: pytest.FixtureRequest) -> Iterator[FakeXQueue]:
    server = FakeXQueue(style=request.param)
    yield server
    server.close()


# -- the client, without kernels ----------------------------------------------------------------


@contextlib.asynccontextmanager
async def client_of(fake: FakeXQueue, password: str = PASSWORD) -> AsyncIterator[XQueueClient]:
    """A client of the fake server as the worker's user, closed afterwards."""
    client = XQueueClient(fake.url, USER, password)
    try:
        yield client
    finally:
        await client.close()


def test_client_pulls_downloads_and_answers_and_logs_in_again(fake: FakeXQueue) -> None:
    notebook = quick_notebook("correct", "client")
    fake.add("7", {"notes.txt": b"x", "lab.ipynb": notebook}, {"points": 3})
    fake.add("8r", {"lab.ipynb": notebook})  # a relative file URL, as Django storage gives

    async def scenario() -> None:
        async with client_of(fake) as client:
            await client.login()
            assert (
                client.server == {"xqueue": "xqueue", "submissions": "edx-submissions"}[fake.style]
            )  # told from the answer to GET /xqueue/login/
            first = await client.get_submission(QUEUE)
            assert first is not None and first.submission_id == "7"
            assert first.learner == "anon-7"
            # edx-submissions replaces the course's grader_payload with {"grader": ...}
            assert first.points == (3 if fake.style == "xqueue" else None)
            assert list(first.files) == ["notes.txt", "lab.ipynb"]
            assert await client.download(first.files["lab.ipynb"]) == notebook
            fake.expire_sessions()  # the session is gone: the client logs in again by itself
            second = await client.get_submission(QUEUE)
            assert second is not None and second.submission_id == "8"
            assert await client.download(second.files["lab.ipynb"]) == notebook
            assert await client.get_submission(QUEUE) is None  # empty
            fake.expire_sessions()
            answer = json.dumps({"correct": True, "score": 3, "msg": "<p>ok</p>"})
            reply = await client.put_result(first.header, answer)
            assert reply.ok, reply
            stale = first.header.replace(fake.handed["7"].key, "0" * 32)
            refused = await client.put_result(stale, answer)
            assert not refused.ok and refused.content == "Incorrect key for submission"

    asyncio.run(scenario())
    assert fake.logins == 3
    assert [p.raw_body for p in fake.taken("7")] == [
        json.dumps({"correct": True, "score": 3, "msg": "<p>ok</p>"})
    ]


def test_client_bounds_downloads_and_names_what_failed(fake: FakeXQueue) -> None:
    fake.add("9", {"huge.ipynb": b"{" + b" " * MAX_FILE, "gone.ipynb": None})

    async def scenario() -> None:
        async with client_of(fake) as client:
            await client.login()
            pulled = await client.get_submission(QUEUE)
            assert pulled is not None
            with pytest.raises(Download, match="larger than 10 MiB") as big:
                await client.download(pulled.files["huge.ipynb"])
            assert big.value.final
            with pytest.raises(Download, match="HTTP 404") as gone:
                await client.download(pulled.files["gone.ipynb"])
            assert gone.value.final
            with pytest.raises(Download, match="not http") as odd:
                await client.download("file:///etc/passwd")
            assert odd.value.final

    asyncio.run(scenario())


def test_wrong_password_is_a_clear_login_failure(fake: FakeXQueue) -> None:
    async def scenario() -> None:
        async with client_of(fake, "wrong") as client:
            with pytest.raises(LoginFailed, match="Incorrect login credentials"):
                await client.login()

    asyncio.run(scenario())


def test_a_user_outside_the_xqueue_group_is_told_so() -> None:
    """edx-submissions lets any user log in, then answers 403 to one outside group "xqueue"."""
    fake = FakeXQueue(style="submissions", in_group=False)

    async def scenario() -> None:
        async with client_of(fake) as client:
            await client.login()
            with pytest.raises(LoginFailed, match="group 'xqueue'"):
                await client.get_submission(QUEUE)

    try:
        asyncio.run(scenario())
    finally:
        fake.close()


def test_downloads_carry_the_session_to_the_xqueue_server_only_and_follow_no_redirect(
    fake: FakeXQueue,
) -> None:
    other = FakeXQueue(style=fake.style)  # another host: a storage, or anywhere a URL points
    other.files["/files/x/b.ipynb"] = b"B"
    fake.add("11", {"a.ipynb": b"A"})

    def moved(handler: Any) -> None:
        handler.send_response(302)
        handler.send_header("location", other.url + "/files/x/b.ipynb")
        handler.send_header("content-length", "0")
        handler.end_headers()

    fake.routes["/files/11/moved.ipynb"] = moved

    async def scenario() -> None:
        async with client_of(fake) as client:
            await client.login()
            pulled = await client.get_submission(QUEUE)
            assert pulled is not None
            assert await client.download(pulled.files["a.ipynb"]) == b"A"
            assert await client.download(other.url + "/files/x/b.ipynb") == b"B"
            with pytest.raises(Download, match="redirect") as redirected:
                await client.download(fake.url + "/files/11/moved.ipynb")
            assert redirected.value.final

    try:
        asyncio.run(scenario())
        (own, _) = fake.file_requests
        assert own[0] == "/files/11/a.ipynb"
        assert "sessionid=" in own[1].get("cookie", "")  # its own files: the session goes
        assert "x-csrftoken" not in own[1]  # a GET needs no CSRF token
        (elsewhere,) = other.file_requests  # once: the redirect to it was not followed
        assert "cookie" not in elsewhere[1] and "x-csrftoken" not in elsewhere[1]
        assert "referer" not in elsewhere[1]
    finally:
        other.close()


def test_a_download_has_a_total_deadline_not_only_a_size_cap(fake: FakeXQueue) -> None:
    """A server that sends a byte now and then never trips a read timeout."""

    def drip(handler: Any) -> None:
        handler.send_response(200)
        handler.send_header("content-length", "60")
        handler.end_headers()
        with contextlib.suppress(OSError):
            for _ in range(60):
                handler.wfile.write(b" ")
                handler.wfile.flush()
                time.sleep(0.1)
        handler.close_connection = True

    fake.routes["/files/drip.ipynb"] = drip

    async def scenario() -> None:
        async with client_of(fake) as client:
            client.download_timeout = 1.0
            started = time.monotonic()
            with pytest.raises(Download, match="took longer than 1 s") as slow:
                await client.download("/files/drip.ipynb")
            assert time.monotonic() - started < 3
            assert not slow.value.final  # a slow network may be quicker next time

    asyncio.run(scenario())


# -- the worker against the fake with a stub grader (no kernels) -----------------------------------


class StubGrader:
    """Grades without a kernel: the points per submission name, after `seconds`."""

    mode = "stub"

    def __init__(self, points: dict[str, float], seconds: float = 0.0) -> None:
        self.points, self.seconds = points, seconds
        self.calls: list[str] = []

    def fingerprint(self) -> str:
        return "stub"

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def grade(self, notebook: bytes, name: str, key: str = "") -> GradeResult:
        self.calls.append(name)
        await asyncio.sleep(self.seconds)
        return GradeResult(submission=name, status="graded", score=self.points[name], max_score=10)


def drive(fake: FakeXQueue, state: Path, grader: StubGrader, until: Any, timeout: float) -> None:
    """Run the worker in this process until `until()` holds (or `timeout`), then stop it."""

    async def scenario() -> None:
        client = XQueueClient(fake.url, USER, PASSWORD)
        journal = Journal(state)
        worker = XQueueWorker(
            client, journal, grader, GradeOptions(), queue=QUEUE, jobs=2, poll_max=0.5, grace=1
        )
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        deadline = time.monotonic() + timeout
        try:
            while not until() and time.monotonic() < deadline and not task.done():
                await asyncio.sleep(0.05)
        finally:
            stop.set()
            await task
            await client.close()
            journal.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("style", ["xqueue", "submissions"])
def test_full_marks_are_stored_as_full_marks_on_either_server(style: str, tmp_path: Path) -> None:
    """Classic XQueue's LMS reads points; edx-submissions multiplies a 0..1 fraction by the
    problem's points_possible: 10/10 must not become 100/10 there."""
    fake = FakeXQueue(style=style)
    fake.add("401", {"lab.ipynb": b"{}"}, points_possible=10)
    fake.add("402", {"lab.ipynb": b"{}"}, points_possible=10)
    grader = StubGrader({"xqueue-401": 10, "xqueue-402": 7})
    try:
        drive(fake, tmp_path, grader, lambda: fake.taken("401") and fake.taken("402"), 20)
        assert fake.scores == {"401": (10, 10), "402": (7, 10)}
    finally:
        fake.close()


def test_a_submission_handed_out_again_with_the_same_key_is_graded_once_without_spinning(
    tmp_path: Path,
) -> None:
    """edx-submissions hands a pulled, unanswered submission out again after 5 minutes, with
    the same key, at every poll until it is answered."""
    fake = FakeXQueue(style="submissions", rehand_after=0.2)
    fake.add("301", {"lab.ipynb": b"{}"}, points_possible=10)
    grader = StubGrader({"xqueue-301": 10}, seconds=2.0)
    try:
        drive(fake, tmp_path, grader, lambda: fake.taken("301"), 20)
        assert grader.calls == ["xqueue-301"]
        assert fake.handed["301"].handed_out >= 2  # it did come back while being graded
        assert fake.polls < 40, fake.polls  # backed off: not a poll per millisecond
        assert [p.status for p in fake.attempts("301")] == [200]
        assert fake.scores["301"] == (10, 10)
    finally:
        fake.close()


def test_an_answer_the_server_already_retired_is_done_not_posted_forever(tmp_path: Path) -> None:
    """The reply to an answer edx-submissions recorded is lost: posting it again is answered
    HTTP 500 (the submission is retired) for ever; the worker ends the row instead."""
    fake = FakeXQueue(style="submissions")
    fake.add("302", {"lab.ipynb": b"{}"}, points_possible=10)
    fake.lose_reply.add("302")
    grader = StubGrader({"xqueue-302": 7})

    def done() -> bool:
        rows = journal_rows(tmp_path) if (tmp_path / "journal.sqlite3").exists() else {}
        return "302" in rows and rows["302"]["answered_at"] is not None

    try:
        drive(fake, tmp_path, grader, done, 20)
        row = journal_rows(tmp_path)["302"]
        assert row["answered_at"] is not None, row["outcome"]
        assert row["outcome"].startswith("presumed taken"), row["outcome"]
        assert [p.status for p in fake.attempts("302")] == [200, 500, 500]
        assert fake.scores["302"] == (7, 10)
    finally:
        fake.close()


# -- the worker, end to end (kernels) ------------------------------------------------------------


def sample(path: str) -> dict[str, Any]:
    return next(s for s in MANIFEST if s["path"] == path)


def sleepy_notebook(seconds: float) -> bytes:
    """A quick lab notebook that first sleeps, so a kill lands while it is being graded."""
    nb = nbformat.reads(quick_notebook("correct", "sleepy").decode(), as_version=4)
    nb.cells.insert(0, new_code_cell(f"import time\ntime.sleep({seconds})"))
    return nbformat.writes(nb).encode()


LEAKER = SECRET_HUNTER


def leaker_notebook() -> bytes:
    """Learner code that looks for the worker's XQueue credentials and shows what it found."""
    nb = nbformat.v4.new_notebook(cells=[new_code_cell(LEAKER)])
    return nbformat.writes(nb).encode()


class Worker:
    """`mbgd-grader xqueue` as a subprocess."""

    def __init__(self, url: str, state: Path, log: Path) -> None:
        exe = Path(sys.executable).with_name("mbgd-grader")
        cmd = [str(exe), "xqueue", "--url", url, "--queue", QUEUE, "--jobs", "2"]
        cmd += ["--state", str(state), "--poll-max", "0.5", "--timeout", "120"]
        env = {**os.environ, "MBGD_XQUEUE_USER": USER, "MBGD_XQUEUE_PASSWORD": PASSWORD}
        self.log_path, self.log = log, log.open("ab")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def kill9(self) -> None:
        """SIGKILL; then reap the kernels it orphaned (test hygiene only)."""
        kill_tree(self.proc)
        self.log.close()

    def stop(self, timeout: float = 60) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.kill9()
            self.log.close()


def journal_rows(state: Path) -> dict[str, sqlite3.Row]:
    with contextlib.closing(sqlite3.connect(state / "journal.sqlite3")) as db:
        db.row_factory = sqlite3.Row
        return {r["submission_id"]: r for r in db.execute("SELECT * FROM pulled")}


@dataclass
class Run:
    fake: FakeXQueue
    answers: dict[str, Put]
    killed_rows: dict[str, sqlite3.Row]
    refused_body: str
    exit_code: int
    final_rows: dict[str, sqlite3.Row]
    log: str


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """One queue through the worker: killed with SIGKILL mid-grading, restarted, stopped."""
    work = tmp_path_factory.mktemp("xqueue")
    state, log = work / "state", work / "worker.log"
    fake = FakeXQueue(style="submissions", expire_after_first_put=True)
    correct = (SUBMISSIONS / "correct/loss20.ipynb").read_bytes()
    fake.add("101", {"lab.ipynb": correct}, points_possible=10)
    stale = (SUBMISSIONS / "mistakes/stale_loader.ipynb").read_bytes()
    # A problem worth 5: the course's {"points": 5} never arrives (edx-submissions replaces
    # grader_payload); the fraction sent is multiplied by the problem's 5 there.
    files: dict[str, bytes | None] = {"readme.txt": b"hi", "my lab.ipynb": stale}
    fake.add("102r", files, {"points": 5}, points_possible=5)
    fake.add("103", {"essay.pdf": b"%PDF-1.7 a scanned essay"})
    fake.add("104", {"huge.ipynb": b"{" + b" " * MAX_FILE})
    fake.add("105", {"lab.ipynb": None})
    fake.add("108", {"lab.ipynb": leaker_notebook()})
    fake.add("106", {"lab.ipynb": quick_notebook("stale_loader", "answer refused")})
    fake.refuse["106"] = 10**6  # graded before the kill, its answer not taken
    fake.add("107", {"lab.ipynb": sleepy_notebook(3)})  # being graded at the kill
    worker = Worker(fake.url, state, log)
    try:
        fake.wait_taken({"101", "102r", "103", "104", "105", "108"}, timeout=240)
        fake.wait_until(lambda: fake.attempts("106") and "107" in fake.handed, 60, "106 refused")
        assert not fake.taken("107"), "107 was answered before the kill"
    finally:
        worker.kill9()
    killed_rows = journal_rows(state)
    refused_body = fake.attempts("106")[0].raw_body
    fake.refuse["106"] = 0
    again = Worker(fake.url, state, log)
    try:
        answers = fake.wait_taken({"101", "102r", "103", "104", "105", "106", "107", "108"}, 120)
        time.sleep(1.0)  # let any repeat arrive before counting
    finally:
        code = again.stop()
    yield Run(fake, answers, killed_rows, refused_body, code, journal_rows(state), again.tail())
    fake.close()


def well_formed(msg: str) -> ET.Element:
    """What older LMS versions do with a msg: parse it as XML (lxml's etree.fromstring)."""
    return ET.fromstring(msg)


@pytest.mark.slow
def test_lab_notebooks_get_the_graders_points(run: Run) -> None:
    """On edx-submissions: the score as a fraction, stored as that part of the problem's
    points; the message shows the rubric's points."""
    correct, mistake = run.answers["101"].body, run.answers["102r"].body
    want = sample("correct/loss20.ipynb")
    assert want["score"] == 10 and correct["score"] == 1 and correct["correct"] is True
    assert run.fake.scores["101"] == (10, 10)
    root = well_formed(correct["msg"])
    assert "Score: 10 / 10" in "".join(root.itertext())
    want = sample("mistakes/stale_loader.ipynb")
    assert mistake["score"] == pytest.approx(want["score"] / 10), mistake["msg"]
    assert run.fake.scores["102r"] == (round(want["score"] / 10 * 5), 5)
    assert not mistake["correct"]
    text = "".join(well_formed(mistake["msg"]).itertext())
    assert f"Score: {want['score']:g} / 10" in text and "batch" in text.lower()
    assert run.fake.logins >= 2, "the expired session was not renewed"


@pytest.mark.slow
def test_files_that_cannot_be_graded_get_an_answer_that_says_why(run: Run) -> None:
    reasons = {"103": "PDF", "104": "larger than 10 MiB", "105": "HTTP 404"}
    for sid, reason in reasons.items():
        body = run.answers[sid].body
        assert body["score"] == 0 and body["correct"] is False, sid
        assert reason in "".join(well_formed(body["msg"]).itertext()), (sid, body["msg"])


@pytest.mark.slow
def test_learner_code_cannot_read_the_xqueue_password(run: Run) -> None:
    body = run.answers["108"].body
    text = "".join(well_formed(body["msg"]).itertext())
    assert "LEAK" in text, body["msg"]  # the learner's error is shown ...
    assert PASSWORD not in body["msg"] and "MBGD_XQUEUE" not in body["msg"]  # ... not the secret


@pytest.mark.slow
def test_kill_9_mid_grading_then_restart_every_score_arrives_unchanged(run: Run) -> None:
    before = run.killed_rows
    assert before["107"]["answer"] is None, "107 was not mid-grading at the kill"
    assert before["106"]["answer"] is not None and before["106"]["answered_at"] is None
    # The answer that was refused before the kill is the one taken after it, byte for byte.
    assert run.answers["106"].raw_body == run.refused_body == before["106"]["answer"]
    assert run.answers["106"].body["score"] < 1
    sleepy = run.answers["107"].body
    assert sleepy["correct"] is True and sleepy["score"] == 1
    well_formed(sleepy["msg"])
    for sid in run.answers:  # once, or again identical (killed between its post and its note)
        assert len({p.raw_body for p in run.fake.taken(sid)}) == 1, sid
    assert len(run.fake.taken("107")) == 1
    assert run.fake.handed["107"].handed_out == 1  # finished from the journal, not re-pulled


@pytest.mark.slow
def test_sigterm_stops_the_worker_cleanly_with_nothing_left(run: Run) -> None:
    assert run.exit_code == 0, run.log
    assert all(r["answered_at"] is not None for r in run.final_rows.values())
    assert {r["outcome"] for r in run.final_rows.values()} == {"taken"}
    assert all(r["notebook"] is None for r in run.final_rows.values())  # files not kept
