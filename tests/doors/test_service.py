"""The webhook service end to end: `mbgd-grader serve` on a loopback port, a fake LMS.

The fake LMS is a real HTTP server in this process that receives callbacks and verifies their
Standard Webhooks signatures as an LMS would. Notebooks are graded for real (local kernels);
the burst and restart tests use tiny distinct notebooks so they stay quick on 2 cores.
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import json
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from grader.execution.pool import KernelPool
from grader.service.signing import SignatureError, decode_secret, sign_headers, verify
from tests.helpers import ROOT, SECRET_HUNTER, ServeProcess, free_port

pytestmark = pytest.mark.slow

CORRECT = ROOT / "submissions" / "correct" / "loss20.ipynb"
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"lms-to-grader-key-0123456789abcd").decode()
CALLBACK_SECRET = "whsec_" + base64.b64encode(b"grader-to-lms-key-0123456789abcd").decode()
API_TOKEN = "test-token-" + uuid.uuid4().hex
MAX_BODY = 2 * 1024 * 1024


# -- the fake LMS -------------------------------------------------------------------------------


@dataclass
class Delivery:
    headers: dict[str, str]
    body: dict[str, Any]
    verified: bool
    answered: int


class FakeLMS:
    """Receives callbacks, checks their signatures, can answer 503 a few times first."""

    def __init__(self) -> None:
        self.key = decode_secret(CALLBACK_SECRET)
        self.deliveries: list[Delivery] = []
        self.fail_first: dict[str, int] = {}
        self.cond = threading.Condition()
        lms = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    verify([lms.key], headers, raw)
                    verified = True
                except SignatureError:
                    verified = False
                body = json.loads(raw)
                with lms.cond:
                    left = lms.fail_first.get(body["submission_id"], 0)
                    lms.fail_first[body["submission_id"]] = left - 1
                    status = 503 if left > 0 else (200 if verified else 401)
                    lms.deliveries.append(Delivery(headers, body, verified, status))
                    lms.cond.notify_all()
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/lti/scores"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def for_submission(self, submission_id: str) -> list[Delivery]:
        with self.cond:
            return [d for d in self.deliveries if d.body["submission_id"] == submission_id]

    def wait_for(self, ids: set[str], timeout: float) -> dict[str, list[Delivery]]:
        """Wait until each submission id has an accepted (2xx) callback."""

        def done() -> bool:
            ok = {d.body["submission_id"] for d in self.deliveries if d.answered == 200}
            return ids <= ok

        with self.cond:
            if not self.cond.wait_for(done, timeout=timeout):
                ok = {d.body["submission_id"] for d in self.deliveries if d.answered == 200}
                raise AssertionError(f"no callback in {timeout} s for {sorted(ids - ok)}")
        return {i: self.for_submission(i) for i in ids}


# -- the service, through the CLI ----------------------------------------------------------------


class Service(ServeProcess):
    """`mbgd-grader serve` on a free loopback port, with this file's secrets."""

    def __init__(self, db: Path, log: Path, *, broker: str | None = None, slots: int = 2) -> None:
        args = ["--slots", str(slots)] + (["--broker", broker] if broker else [])
        env = {
            "MBGD_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "MBGD_CALLBACK_SECRET": CALLBACK_SECRET,
            "MBGD_API_TOKEN": API_TOKEN,
            "MBGD_CALLBACK_ALLOWED_HOSTS": "127.0.0.1",
            "MBGD_CALLBACK_BACKOFF": "0.2",
            "MBGD_MAX_BODY_BYTES": str(MAX_BODY),
        }
        super().__init__(db, log, port=free_port(), args=args, env=env)

    def status(self, sub_id: str, token: str | None = API_TOKEN) -> httpx.Response:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        return httpx.get(f"{self.base}/v1/submissions/{sub_id}", headers=headers, timeout=10)


def post(
    base: str,
    payload: dict[str, Any] | bytes,
    *,
    msg_id: str | None = None,
    at: float | None = None,
    secret: str = WEBHOOK_SECRET,
    content_type: str = "application/json",
    client: httpx.Client | None = None,
) -> httpx.Response:
    """POST a submission signed the way an LMS would."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    headers = sign_headers(decode_secret(secret), msg_id or f"msg_{uuid.uuid4().hex}", body, now=at)
    headers["content-type"] = content_type
    send = client.post if client is not None else httpx.post
    return send(f"{base}/v1/submissions", content=body, headers=headers, timeout=30)


def tiny_notebook(tag: str, code: str = "LOSS20 = [1.0, 2.0, 3.0]") -> dict[str, Any]:
    """A small, distinct notebook: quick to grade, graded low."""
    cell = {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None}
    return {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {},
        "cells": [{**cell, "id": "c1", "source": f"# {tag}\n{code}\n"}],
    }


def submission(
    sid: str, notebook: dict[str, Any] | None = None, *, raw: bytes | None = None, **extra: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {"submission_id": sid, "learner_id": f"learner-{sid}", **extra}
    if raw is not None:
        body["notebook_base64"] = base64.b64encode(raw).decode()
    else:
        body["notebook"] = notebook if notebook is not None else tiny_notebook(sid)
    return body


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lms() -> Iterator[FakeLMS]:
    fake = FakeLMS()
    yield fake
    fake.server.shutdown()


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    tmp = tmp_path_factory.mktemp("service")
    svc = Service(tmp / "service.db", tmp / "service.log")
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def correct_lab(service: Service, lms: FakeLMS) -> dict[str, Any]:
    """The correct lab graded once through the service; several tests read its callback."""
    assert CORRECT.exists(), "the correct sample notebook is missing"
    answer = post(
        service.base,
        submission(
            "correct-1", raw=CORRECT.read_bytes(), assignment_id="mbgd", callback_url=lms.url
        ),
    )
    assert answer.status_code == 202, answer.text
    deliveries = lms.wait_for({"correct-1"}, timeout=180)["correct-1"]
    return {"answer": answer.json(), "deliveries": deliveries}


# -- intake: signatures and payload errors --------------------------------------------------------


def test_health_and_openapi(service: Service) -> None:
    health = service.health()
    assert health["status"] == "ok" and health["mode"] == "local"
    schema = httpx.get(f"{service.base}/openapi.json", timeout=10).json()
    post_op = schema["paths"]["/v1/submissions"]["post"]
    assert set(post_op["responses"]) >= {"202", "401", "413", "415", "422"}
    body_schema = post_op["requestBody"]["content"]["application/json"]["schema"]
    assert {"submission_id", "learner_id", "notebook", "notebook_base64"} <= set(
        body_schema["properties"]
    )
    assert "/v1/submissions/{sub_id}" in schema["paths"]


def test_bad_signatures_and_replayed_timestamps_get_401(service: Service, lms: FakeLMS) -> None:
    payload = submission("sig-1", callback_url=lms.url)
    wrong = "whsec_" + base64.b64encode(b"not-the-lms-key-0123456789abcdef").decode()
    cases = {
        "wrong secret": post(service.base, payload, secret=wrong),
        "replay 6 min old": post(service.base, payload, at=time.time() - 360),
        "10 min in the future": post(service.base, payload, at=time.time() + 600),
    }
    for name, answer in cases.items():
        assert answer.status_code == 401, name
    assert "no webhook-signature matches" in cases["wrong secret"].json()["detail"]
    assert "old" in cases["replay 6 min old"].json()["detail"]
    body = json.dumps(payload).encode()
    headers = sign_headers(decode_secret(WEBHOOK_SECRET), "msg_tamper", body)
    tampered = body.replace(b"learner-sig-1", b"learner-sig-2")
    answer = httpx.post(
        f"{service.base}/v1/submissions",
        content=tampered,
        headers={**headers, "content-type": "application/json"},
    )
    assert answer.status_code == 401
    unsigned = httpx.post(f"{service.base}/v1/submissions", json=payload)
    assert unsigned.status_code == 401 and "missing header" in unsigned.json()["detail"]
    time.sleep(1.0)
    assert lms.for_submission("sig-1") == []  # nothing refused was graded


@pytest.mark.parametrize(
    ("payload", "status", "field"),
    [
        ({"learner_id": "x", "notebook": {}}, 422, "submission_id"),
        ({"submission_id": "x", "notebook": {}}, 422, "learner_id"),
        ({"submission_id": "x", "learner_id": "y"}, 422, "notebook"),
        (
            {"submission_id": "x", "learner_id": "y", "notebook": {}, "notebook_base64": ""},
            422,
            "notebook",
        ),
        ({"submission_id": "x", "learner_id": "y", "notebook": [1]}, 422, "notebook"),
        (
            {"submission_id": "x", "learner_id": "y", "notebook_base64": "%%%"},
            422,
            "notebook_base64",
        ),
        (
            {
                "submission_id": "x",
                "learner_id": "y",
                "notebook": {},
                "callback_url": "http://169.254.169.254/",
            },
            422,
            "callback_url",
        ),
        (
            {
                "submission_id": "x",
                "learner_id": "y",
                "notebook": {},
                "callback_url": "file:///etc/passwd",
            },
            422,
            "callback_url",
        ),
        (b'{"submission_id": "\\ud800", "learner_id": "y", "notebook": {}}', 422, "submission_id"),
        (b"{not json", 422, None),
        (b"[1, 2]", 422, None),
        (b'{"submission_id": NaN}', 422, None),
    ],
)
def test_malformed_payloads_name_the_field(
    service: Service, payload: Any, status: int, field: str | None
) -> None:
    answer = post(service.base, payload)
    assert answer.status_code == status, answer.text
    (error,) = answer.json()["detail"]
    assert error["loc"][0] == "body" and error["msg"]
    if field is not None:
        assert error["loc"][1] == field


def test_wrong_media_type_is_415(service: Service) -> None:
    answer = post(service.base, submission("m-1"), content_type="text/plain")
    assert answer.status_code == 415 and "application/json" in answer.json()["detail"]


def _raw_request(port: int, head: bytes, body_chunks: Iterable[bytes] = ()) -> bytes:
    """Send a request by hand and return the response head, without finishing the body."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(head)
        try:
            for chunk in body_chunks:
                sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before we were done: that is the point
        return sock.recv(65536)


def test_body_over_the_cap_is_413_before_it_is_read(service: Service) -> None:
    # Content-Length over the cap: refused from the headers alone, no body byte sent.
    head = (
        f"POST /v1/submissions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {MAX_BODY + 1}\r\n\r\n"
    ).encode()
    started = time.monotonic()
    assert _raw_request(service.port, head).startswith(b"HTTP/1.1 413")
    assert time.monotonic() - started < 10
    # Chunked, no length announced: refused once the cap is passed, not after the whole body.
    head = (
        b"POST /v1/submissions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    piece = b"x" * 65536
    chunks = (b"%x\r\n%s\r\n" % (len(piece), piece) for _ in range(MAX_BODY // len(piece) + 8))
    assert _raw_request(service.port, head, chunks).startswith(b"HTTP/1.1 413")


def test_status_api_needs_the_bearer_token(service: Service) -> None:
    answer = post(service.base, submission("auth-1"))
    assert answer.status_code == 202
    sub_id = answer.json()["id"]
    assert service.status(sub_id, token=None).status_code == 401
    assert service.status(sub_id, token="wrong").status_code == 401
    assert service.status("sub_does_not_exist").status_code == 404
    state = service.status(sub_id).json()
    assert state["id"] == sub_id and state["status"] in ("queued", "running", "graded")
    assert state["learner_id"] == "learner-auth-1" and state["received_at"]


# -- grading and callbacks ----------------------------------------------------------------------


def test_correct_lab_gets_a_signed_10_of_10_callback_with_ags_fields(
    service: Service, correct_lab: dict[str, Any]
) -> None:
    answer = correct_lab["answer"]
    assert answer["status"] == "queued" and answer["status_url"].endswith(answer["id"])
    (delivery,) = correct_lab["deliveries"]
    assert delivery.verified and delivery.headers["webhook-id"].startswith("msg_")
    body = delivery.body
    assert body["type"] == "submission.graded" and body["id"] == answer["id"]
    assert (body["submission_id"], body["learner_id"], body["assignment_id"]) == (
        "correct-1",
        "learner-correct-1",
        "mbgd",
    )
    score = body["score"]
    assert score["userId"] == "learner-correct-1"
    assert score["scoreGiven"] == score["scoreMaximum"] == 10
    assert score["activityProgress"] == "Completed"
    assert score["gradingProgress"] == "FullyGraded"
    assert score["timestamp"].endswith("+00:00") and score["comment"].startswith("10/10")
    result = body["result"]
    assert result["score"] == 10 and result["extra_data"]["max_score"] == 10
    warm = "warm" if KernelPool.available() else "fresh"  # the service keeps a warm pool
    assert result["extra_data"]["kernel_origin"] == warm
    assert all(t["status"] == "passed" for t in result["tests"])
    # The status API tells the same story, with timings.
    state = httpx.get(
        answer["status_url"], headers={"authorization": f"Bearer {API_TOKEN}"}, timeout=10
    ).json()
    assert state["status"] == "graded" and state["result"] == result
    assert state["grading_seconds"] > 0 and state["queued_seconds"] >= 0
    assert state["callback"]["status"] == "delivered"
    assert state["callback"]["webhook_id"] == delivery.headers["webhook-id"]


def test_not_a_notebook_is_accepted_and_the_learner_hears_why(
    service: Service, lms: FakeLMS
) -> None:
    answer = post(
        service.base, submission("pdf-1", raw=b"%PDF-1.7 a scanned essay", callback_url=lms.url)
    )
    assert answer.status_code == 202
    (delivery,) = lms.wait_for({"pdf-1"}, timeout=60)["pdf-1"]
    score = delivery.body["score"]
    assert delivery.verified and score["scoreGiven"] == 0 and score["scoreMaximum"] == 10
    assert score["gradingProgress"] == "FullyGraded"
    assert "PDF" in score["comment"]
    assert delivery.body["result"]["extra_data"]["status"] == "rejected"


LEAKER = SECRET_HUNTER


def test_learner_code_cannot_read_the_service_secrets(service: Service, lms: FakeLMS) -> None:
    answer = post(
        service.base, submission("leak-1", tiny_notebook("leak", LEAKER), callback_url=lms.url)
    )
    assert answer.status_code == 202
    (delivery,) = lms.wait_for({"leak-1"}, timeout=90)["leak-1"]
    text = json.dumps(delivery.body).lower()
    # The cell ran, its error reached the learner's report, and it found nothing to leak.
    assert "leak {}" in text
    for secret in (WEBHOOK_SECRET, CALLBACK_SECRET, API_TOKEN):
        assert secret.removeprefix("whsec_").lower() not in text


# Hostile notebooks that attack the grader's host rather than their own grade (issue 12).
SERVICE_HOSTILE = ("memfd_bomb", "children_memory", "userns_tmpfs", "comm_flood", "multipart_flood")
SERVICE_RSS_LIMIT = 1 << 30


@pytest.mark.skipif(not KernelPool.available(), reason="the hostile corpus runs only sandboxed")
def test_hostile_notebooks_do_not_stop_the_service(service: Service, lms: FakeLMS) -> None:
    """While memory bombs grade, /healthz keeps answering and an honest learner is graded."""
    ids = {f"hostile-{name}": name for name in SERVICE_HOSTILE}
    for sid, name in ids.items():
        raw = (ROOT / "submissions" / "hostile" / f"{name}.ipynb").read_bytes()
        assert post(service.base, submission(sid, raw=raw, callback_url=lms.url)).status_code == 202
    honest = submission("hostile-honest", tiny_notebook("honest"), callback_url=lms.url)
    assert post(service.base, honest).status_code == 202
    waits, done, peak_rss = [], set(), 0
    deadline = time.monotonic() + 240
    while done != {*ids, "hostile-honest"} and time.monotonic() < deadline:
        peak_rss = max(peak_rss, psutil.Process(service.proc.pid).memory_info().rss)
        started = time.monotonic()
        assert httpx.get(f"{service.base}/healthz", timeout=5).status_code == 200
        waits.append(time.monotonic() - started)
        done = {sid for sid in (*ids, "hostile-honest") if lms.for_submission(sid)}
        time.sleep(0.5)
    got = lms.wait_for({*ids, "hostile-honest"}, timeout=5)
    assert max(waits) < 2.0, waits
    assert peak_rss < SERVICE_RSS_LIMIT  # 2.5 GB of comm buffers and a 3.2 GB message sent
    for sid in ids:
        result = got[sid][-1].body["result"]
        assert result["score"] == 10, (sid, result["output"])
    memfd = got["hostile-memfd_bomb"][-1].body["result"]
    assert "ran out of memory" in json.dumps(memfd["tests"])
    assert got["hostile-honest"][-1].body["score"]["gradingProgress"] == "FullyGraded"
    assert service.proc.poll() is None


def test_duplicate_delivery_grades_once_and_calls_back_once(service: Service, lms: FakeLMS) -> None:
    payload = submission("dup-1", callback_url=lms.url)
    first = post(service.base, payload, msg_id="msg_dup_1")
    # The LMS retries the same message later: same id, new timestamp and signature.
    again = post(service.base, payload, msg_id="msg_dup_1", at=time.time() + 2)
    assert first.status_code == again.status_code == 202
    assert first.json() == again.json()
    lms.wait_for({"dup-1"}, timeout=90)
    time.sleep(2.0)
    assert len(lms.for_submission("dup-1")) == 1


def test_failed_callbacks_are_retried_with_the_same_webhook_id(
    service: Service, lms: FakeLMS
) -> None:
    lms.fail_first["retry-1"] = 2
    answer = post(service.base, submission("retry-1", callback_url=lms.url))
    deliveries = lms.wait_for({"retry-1"}, timeout=90)["retry-1"]
    assert [d.answered for d in deliveries] == [503, 503, 200]
    assert len({d.headers["webhook-id"] for d in deliveries}) == 1
    assert len({json.dumps(d.body, sort_keys=True) for d in deliveries}) == 1
    assert all(d.verified for d in deliveries)
    callback = service.status(answer.json()["id"]).json()["callback"]
    assert callback["status"] == "delivered" and callback["attempts"] == 3


def test_burst_of_50_all_answered_at_once_all_called_back(service: Service, lms: FakeLMS) -> None:
    # 6 distinct notebooks, each submitted by 8 or 9 learners: 6 gradings on 2 slots, 50 answers.
    ids = [f"burst-{n}" for n in range(50)]
    payloads = [
        submission(sid, tiny_notebook(f"variant {n % 6}"), callback_url=lms.url)
        for n, sid in enumerate(ids)
    ]
    running_seen: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            running_seen.append(service.health()["running"])
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()

    def timed(payload: dict[str, Any]) -> tuple[int, float, str]:
        started = time.monotonic()
        answer = post(service.base, payload, client=client)
        return answer.status_code, time.monotonic() - started, answer.json().get("id", "")

    with (
        httpx.Client(limits=httpx.Limits(max_connections=10)) as client,
        concurrent.futures.ThreadPoolExecutor(max_workers=10) as pool,
    ):
        answers = list(pool.map(timed, payloads))
    called_back_when_all_answered = len(
        {d.body["submission_id"] for d in lms.deliveries} & set(ids)
    )
    assert [a[0] for a in answers] == [202] * 50
    latencies = sorted(a[1] for a in answers)
    assert latencies[25] < 2.0 and latencies[-1] < 10.0, f"intake waited: {latencies}"
    assert called_back_when_all_answered < 50
    try:
        got = lms.wait_for(set(ids), timeout=200)
    finally:
        stop.set()
        watcher.join(5)
    assert max(running_seen) == 2, "the two grading slots never ran together"
    scores: dict[int, set[float]] = {}
    for n, sid in enumerate(ids):
        assert len(got[sid]) == 1 and got[sid][0].verified
        scores.setdefault(n % 6, set()).add(got[sid][0].body["score"]["scoreGiven"])
    assert all(len(s) == 1 for s in scores.values())
    reused = [service.status(a[2]).json()["reused_from"] for a in answers]
    assert sum(r is not None for r in reused) == 44  # each notebook content graded once


# -- the OpenAPI schema, fuzzed -------------------------------------------------------------------


def _send_case(case: Any, base: str) -> httpx.Response:
    """Send a generated request, signed like the LMS's unless the case brings its own headers."""
    kwargs = case.as_transport_kwargs(
        base_url=base, headers={"authorization": f"Bearer {API_TOKEN}"}
    )
    if "json" in kwargs:
        body = json.dumps(kwargs.pop("json")).encode()
    else:
        data = kwargs.pop("data", b"") or b""
        body = data.encode() if isinstance(data, str) else bytes(data)
    headers = dict(kwargs.get("headers") or {})
    if case.method.upper() == "POST" and "webhook-signature" not in (case.headers or {}):
        headers.update(sign_headers(decode_secret(WEBHOOK_SECRET), f"msg_{uuid.uuid4().hex}", body))
    return httpx.request(
        case.method,
        kwargs["url"],
        params=kwargs.get("params"),
        headers=headers,
        content=body,
        timeout=30,
    )


def test_openapi_schema_fuzzed_without_server_errors(service: Service) -> None:
    """schemathesis generates requests from the live /openapi.json: no 5xx, and every answer
    has a documented status, content type and body shape."""
    schema = schemathesis.openapi.from_url(f"{service.base}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/submissions", "/v1/submissions/{sub_id}"}
    statuses: list[int] = []
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
        def check(case: Any) -> None:
            response = _send_case(case, service.base)
            statuses.append(response.status_code)
            case.validate_response(
                response,
                checks=[
                    not_a_server_error,
                    status_code_conformance,
                    content_type_conformance,
                    response_schema_conformance,
                ],
            )

        check()
    assert statuses and max(statuses) < 500
    # The fuzzing reached past the signature check: payload validation (422) or acceptance
    # (202) answered; which of them random examples hit varies from run to run.
    assert {202, 422} & set(statuses)


# -- durability: kill -9 in the middle of grading -------------------------------------------------


def test_kill_9_mid_grading_then_restart_loses_nothing(tmp_path: Path, lms: FakeLMS) -> None:
    db = tmp_path / "crash.db"
    ids = [f"crash-{n}" for n in range(4)]
    svc = Service(db, tmp_path / "crash.log")
    try:
        for n, sid in enumerate(ids):
            # The first two hold their slots for a while, so the kill lands mid-grading.
            code = "import time\ntime.sleep(3)\nLOSS20 = [1.0]" if n < 2 else f"LOSS20 = [{n}.0]"
            payload = submission(sid, tiny_notebook(f"crash {n}", code), callback_url=lms.url)
            assert post(svc.base, payload).status_code == 202
        deadline = time.monotonic() + 60
        while True:
            health = svc.health()
            if health["running"] >= 1 and health["queued"] >= 1:
                break
            assert time.monotonic() < deadline, f"never saw running and queued work: {health}"
            time.sleep(0.1)
    finally:
        svc.kill9()
    with contextlib.closing(sqlite3.connect(db)) as conn:
        states = dict(conn.execute("SELECT submission_id, status FROM submissions").fetchall())
    assert set(states) == set(ids), "an accepted submission is not in the database"
    assert "running" in states.values() and "queued" in states.values()

    again = Service(db, tmp_path / "crash.log")
    try:
        got = lms.wait_for(set(ids), timeout=150)
        time.sleep(1.0)  # let any repeat arrive before counting
        for sid in ids:
            deliveries = lms.for_submission(sid)
            assert all(d.verified for d in deliveries)
            assert len({d.headers["webhook-id"] for d in deliveries}) == 1, sid
            assert len({d.body["score"]["scoreGiven"] for d in deliveries}) == 1, sid
            assert got[sid][0].body["score"]["gradingProgress"] == "FullyGraded"
        crashed = [
            again.status(got[sid][0].body["id"]).json()
            for sid, state in states.items()
            if state == "running"
        ]
        assert all(s["status"] == "graded" and s["attempts"] == 2 for s in crashed)
    finally:
        again.stop()


# -- scale-out: the same flow on Celery workers behind Redis --------------------------------------


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1) as s:
            s.sendall(b"PING\r\n")
            if s.recv(16).startswith(b"+PONG"):
                break
        assert time.monotonic() < deadline, "redis-server did not start"
        time.sleep(0.1)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def celery_worker(redis_url: str, tmp_path: Path) -> Iterator[subprocess.Popen]:
    exe = Path(sys.executable).with_name("mbgd-grader")
    log = (tmp_path / "worker.log").open("ab")
    proc = subprocess.Popen(
        [str(exe), "worker", "--broker", redis_url, "--concurrency", "2"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    yield proc
    children = psutil.Process(proc.pid).children(recursive=True)
    proc.terminate()  # warm shutdown
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.kill()
    log.close()


def test_same_flow_with_a_broker_and_a_real_worker(
    tmp_path: Path, lms: FakeLMS, redis_url: str, celery_worker: subprocess.Popen
) -> None:
    svc = Service(tmp_path / "broker.db", tmp_path / "broker.log", broker=redis_url, slots=4)
    try:
        assert svc.health()["mode"] == "celery"
        correct = submission(
            "broker-correct", raw=CORRECT.read_bytes(), assignment_id="mbgd", callback_url=lms.url
        )
        assert post(svc.base, correct, msg_id="msg_broker_1").status_code == 202
        assert post(svc.base, correct, msg_id="msg_broker_1").status_code == 202  # a repeat
        tiny = submission("broker-tiny", callback_url=lms.url)
        assert post(svc.base, tiny).status_code == 202
        assert post(svc.base, tiny, at=time.time() - 400).status_code == 401
        waiting = {"broker-correct", "broker-tiny"}
        if KernelPool.available():  # a memory bomb on the worker: graded, the worker goes on
            raw = (ROOT / "submissions" / "hostile" / "memfd_bomb.ipynb").read_bytes()
            bomb = submission("broker-memfd", raw=raw, callback_url=lms.url)
            assert post(svc.base, bomb).status_code == 202
            waiting.add("broker-memfd")
        got = lms.wait_for(waiting, timeout=180)
        (delivery,) = got["broker-correct"]
        score = delivery.body["score"]
        assert delivery.verified and score["scoreGiven"] == score["scoreMaximum"] == 10
        assert (
            score["gradingProgress"] == "FullyGraded"
            and score["userId"] == "learner-broker-correct"
        )
        assert delivery.body["result"]["score"] == 10
        warm = "warm" if KernelPool.available() else "fresh"  # each worker child's pool
        assert delivery.body["result"]["extra_data"]["kernel_origin"] == warm
        assert got["broker-tiny"][0].body["score"]["scoreGiven"] < 10
        if "broker-memfd" in got:
            result = got["broker-memfd"][0].body["result"]
            assert result["score"] == 10 and "ran out of memory" in json.dumps(result["tests"])
        assert celery_worker.poll() is None
    finally:
        svc.stop()
