"""The webhook service's parts without a server: signatures, settings, database, callbacks."""

from __future__ import annotations

import base64
import json
import sqlite3
import time
from collections.abc import Coroutine
from typing import Any

import pytest

from grader.service import callback
from grader.service.db import Callback, Database, NewSubmission
from grader.service.outbox import backoff_delay
from grader.service.settings import SettingsError, db_path_from_url, from_environment
from grader.service.signing import (
    SignatureError,
    decode_secret,
    parse_secrets,
    sign_headers,
    signature,
    verify,
)

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
OTHER = "whsec_" + base64.b64encode(b"o" * 32).decode()


def test_signature_matches_the_standard_webhooks_test_vector() -> None:
    # The vector published with the Standard Webhooks reference libraries.
    key = decode_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    sig = signature(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}')
    assert sig == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_verify_accepts_fresh_signed_messages_and_names_the_id() -> None:
    key = decode_secret(SECRET)
    headers = sign_headers(key, "msg_1", b"{}")
    assert verify([key], headers, b"{}") == "msg_1"


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda h, b: (h, b + b" "), "no webhook-signature matches"),
        (lambda h, b: ({**h, "webhook-id": "msg_2"}, b), "no webhook-signature matches"),
        (lambda h, b: ({**h, "webhook-signature": "v2,abc"}, b), "no 'v1,<base64>'"),
        (lambda h, b: ({k: v for k, v in h.items() if k != "webhook-id"}, b), "webhook-id"),
        (lambda h, b: ({**h, "webhook-timestamp": "soon"}, b), "not an integer"),
    ],
)
def test_verify_refuses_tampering_with_a_reason(mutate, reason: str) -> None:
    key = decode_secret(SECRET)
    headers, body = mutate(sign_headers(key, "msg_1", b'{"a":1}'), b'{"a":1}')
    with pytest.raises(SignatureError, match=reason):
        verify([key], headers, body)


def test_verify_refuses_stale_and_future_timestamps_even_when_signed() -> None:
    key = decode_secret(SECRET)
    now = time.time()
    old = sign_headers(key, "msg_1", b"{}", now=now - 301)
    future = sign_headers(key, "msg_1", b"{}", now=now + 301)
    with pytest.raises(SignatureError, match="old"):
        verify([key], old, b"{}", now=now)
    with pytest.raises(SignatureError, match="future"):
        verify([key], future, b"{}", now=now)
    assert verify([key], sign_headers(key, "m", b"{}", now=now - 290), b"{}", now=now) == "m"


def test_key_rotation_several_signatures_and_several_secrets() -> None:
    new, old = decode_secret(SECRET), decode_secret(OTHER)
    headers = sign_headers(old, "msg_r", b"x")
    fresh = signature(new, "msg_r", headers["webhook-timestamp"], b"x")
    both = f"{fresh} {headers['webhook-signature']}"
    # The sender signs with both keys; we only know the new one.
    assert verify([new], {**headers, "webhook-signature": both}, b"x") == "msg_r"
    # We accept two secrets while the sender still uses the old one.
    assert verify(parse_secrets(f"{SECRET} {OTHER}"), headers, b"x") == "msg_r"
    with pytest.raises(SignatureError):
        verify([new], headers, b"x")


def test_secrets_must_be_base64() -> None:
    with pytest.raises(ValueError, match="whsec_"):
        decode_secret("whsec_not base64!")
    with pytest.raises(ValueError, match="16 bytes"):
        decode_secret("whsec_" + base64.b64encode(b"short").decode())


def test_settings_need_a_webhook_secret_and_parse_the_allowlist(tmp_path) -> None:
    with pytest.raises(SettingsError, match="MBGD_WEBHOOK_SECRET"):
        from_environment(env={})
    settings = from_environment(
        db=f"sqlite:///{tmp_path}/s.db",
        env={
            "MBGD_WEBHOOK_SECRET": SECRET,
            "MBGD_CALLBACK_SECRET": OTHER,
            "MBGD_CALLBACK_ALLOWED_HOSTS": "lms.example.edu, 127.0.0.1:9000",
        },
    )
    assert settings.db_path == tmp_path / "s.db"
    allowed = settings.callback_host_allowed
    assert allowed("https://lms.example.edu/grades")
    assert allowed("http://LMS.example.edu:8080/x")  # a bare host allows any port
    assert allowed("http://127.0.0.1:9000/cb")
    assert not allowed("http://127.0.0.1:9001/cb")  # host:port allows that port only
    assert not allowed("http://169.254.169.254/latest/meta-data")
    assert not allowed("file:///etc/passwd")
    assert not allowed("https://user:pw@lms.example.edu/")
    assert not allowed("https://lms.example.edu.evil.com/")
    assert not allowed("http://[::1/")


def test_db_urls() -> None:
    assert str(db_path_from_url("sqlite:////var/lib/x.db")) == "/var/lib/x.db"
    assert str(db_path_from_url("sqlite:///rel.db")) == "rel.db"
    with pytest.raises(SettingsError, match="sqlite"):
        db_path_from_url("postgres://host/db")


def _submission(n: int, webhook_id: str, sha: str = "s") -> NewSubmission:
    return NewSubmission(
        id=f"sub_{n}",
        webhook_id=webhook_id,
        submission_id=str(n),
        learner_id="l",
        assignment_id=None,
        callback_url="http://127.0.0.1/cb",
        name=str(n),
        notebook=b"{}",
        sha256=sha,
        response=json.dumps({"id": f"sub_{n}"}),
    )


def test_database_dedupes_webhook_ids_and_survives_reopen(tmp_path) -> None:
    db = Database(tmp_path / "q.db")
    assert db.insert(_submission(1, "msg_a")) == (True, '{"id": "sub_1"}')
    assert db.insert(_submission(2, "msg_a")) == (False, '{"id": "sub_1"}')
    assert db.insert(_submission(3, "msg_b", sha="s")) == (True, '{"id": "sub_3"}')
    assert db.insert(_submission(4, "msg_c", sha="t"))[0]
    first = db.claim()
    assert first is not None and first["id"] == "sub_1" and first["attempts"] == 1
    # sub_3 has the same notebook as the running sub_1: it waits to reuse that grade.
    second = db.claim()
    assert second is not None and second["id"] == "sub_4"
    assert db.claim() is None
    db.close()
    # A crash: what was running is queued again, with its attempts remembered.
    db = Database(tmp_path / "q.db")
    assert db.requeue_running() == 2
    assert db.counts()["queued"] == 3
    assert db.claim()["attempts"] == 2  # type: ignore[index]
    conn = sqlite3.connect(tmp_path / "q.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_result_and_callback_are_written_together_and_once(tmp_path) -> None:
    db = Database(tmp_path / "o.db")
    db.insert(_submission(1, "msg_a"))
    db.claim()
    cb = Callback(webhook_id="msg_x", url="http://127.0.0.1/cb", body=b"{}")
    db.finish(
        "sub_1", status="graded", fingerprint="f", grade="{}", result="{}", error=None, callback=cb
    )
    db.finish(
        "sub_1", status="graded", fingerprint="f", grade="{}", result="{}", error=None, callback=cb
    )
    due = db.due_callbacks(10, set())
    assert [r["webhook_id"] for r in due] == ["msg_x"]
    assert db.due_callbacks(10, {due[0]["seq"]}) == []
    db.callback_retry(due[0]["seq"], at=time.time() + 60, http_status=500, error="HTTP 500")
    assert db.due_callbacks(10, set()) == []
    state = db.get("sub_1")
    assert state is not None and state["status"] == "graded" and state["cb_attempts"] == 1


def test_backoff_grows_and_is_capped() -> None:
    delays = [backoff_delay(n, 2.0, 100.0) for n in range(1, 12)]
    assert 1.5 <= delays[0] <= 2.5
    assert 12 <= delays[3] <= 20
    assert max(delays) <= 125


def test_callback_body_carries_ags_fields_and_a_stable_id() -> None:
    row = {
        "id": "sub_1",
        "submission_id": "42",
        "learner_id": "u7",
        "assignment_id": "a",
        "callback_url": "http://127.0.0.1/cb",
    }
    args = dict(
        results={"score": 7.0},
        score=7.0,
        max_score=10.0,
        comment="7/10.",
        error=None,
        finished_at=1_700_000_000.0,
    )
    one, two = callback.build(row, **args), callback.build(row, **args)
    assert one == two and one.webhook_id.startswith("msg_")
    body = json.loads(one.body)
    assert body["score"] == {
        "userId": "u7",
        "scoreGiven": 7.0,
        "scoreMaximum": 10.0,
        "activityProgress": "Completed",
        "gradingProgress": "FullyGraded",
        "timestamp": "2023-11-14T22:13:20.000+00:00",
        "comment": "7/10.",
    }
    failed = json.loads(callback.build(row, **{**args, "results": None, "score": None}).body)
    assert failed["score"]["gradingProgress"] == "Failed" and "scoreGiven" not in failed["score"]


def test_a_notebook_that_keeps_killing_the_grader_is_failed_with_a_callback(tmp_path) -> None:
    import asyncio

    from grader.service.dispatcher import Dispatcher
    from grader.service.grading import LocalGrader

    settings = from_environment(
        db=str(tmp_path / "p.db"),
        env={"MBGD_WEBHOOK_SECRET": SECRET, "MBGD_CALLBACK_SECRET": OTHER},
    )
    db = Database(settings.db_path)
    db.insert(_submission(1, "msg_a"))
    for _ in range(settings.max_grade_attempts):  # claimed, then the service died, each time
        assert db.claim() is not None
        db.requeue_running()
    row = db.claim()
    assert row is not None and row["attempts"] == settings.max_grade_attempts + 1
    dispatcher = Dispatcher(db, settings, LocalGrader())
    dispatcher._fingerprint = "f"

    asyncio.run(dispatcher._process(row))
    state = db.get("sub_1")
    assert (
        state is not None
        and state["status"] == "failed"
        and "interrupted 3 times" in state["error"]
    )
    (due,) = db.due_callbacks(10, set())
    body = json.loads(due["body"])
    assert body["type"] == "submission.failed" and body["result"] is None
    assert body["score"]["gradingProgress"] == "Failed" and "scoreGiven" not in body["score"]


def test_the_lms_gets_each_checks_visibility_and_learners_text_without_hidden_ones(
    tmp_path,
) -> None:
    """A grade whose values check the rubric hides, recorded as the dispatcher records it
    (real checks on a hand-built Execution: no kernel): the stored results.json and the
    callback give every check with its visibility and the whole score, and the texts a
    learner reads (top-level output, AGS comment) say nothing of the hidden check."""
    import asyncio

    from grader.grading.checks import evaluate
    from grader.grading.rubric import default_rubric_text, parse_rubric
    from grader.service.dispatcher import Dispatcher
    from grader.service.grading import LocalGrader
    from reference import expected, mistake_variants
    from tests.helpers import lab_execution

    anchor = 'id = "loss20.values"\n'
    rubric = parse_rubric(default_rubric_text().replace(anchor, anchor + 'visibility = "hidden"\n'))
    wrong = {**expected(), "LOSS20": mistake_variants()["batch_size_10"]}
    result = evaluate(lab_execution(variables=wrong), rubric)
    settings = from_environment(
        db=str(tmp_path / "v.db"),
        env={"MBGD_WEBHOOK_SECRET": SECRET, "MBGD_CALLBACK_SECRET": OTHER},
    )
    db = Database(settings.db_path)
    db.insert(_submission(1, "msg_a"))
    row = db.claim()
    dispatcher = Dispatcher(db, settings, LocalGrader())
    dispatcher._fingerprint = "f"
    asyncio.run(dispatcher._record(row, result))

    state = db.get("sub_1")
    assert state is not None
    stored = json.loads(state["result"])
    (due,) = db.due_callbacks(10, set())
    body = json.loads(due["body"])
    assert body["result"] == stored
    assert {t["extra_data"]["id"]: t["visibility"] for t in stored["tests"]} == {
        c.id: c.visibility for c in rubric.checks
    }
    assert stored["score"] == body["score"]["scoreGiven"] == 5 == result.score
    hidden = next(t for t in stored["tests"] if t["extra_data"]["id"] == "loss20.values")
    assert hidden["visibility"] == "hidden" and "batch size 10" in hidden["output"]
    comment = body["score"]["comment"]
    assert comment == "5/5 on the checks shown (1 more check not shown). " + (
        "Every check shown here passed."
    )
    for learners_text in (comment, stored["output"]):
        assert "batch size 10" not in learners_text and "10 /" not in learners_text
    assert "data:image" not in due["body"].decode()  # no picture in the service's records


def test_outbox_gives_up_on_410_and_never_follows_redirects(tmp_path) -> None:
    import asyncio
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from grader.service.outbox import Outbox

    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            hits.append(self.path)
            self.rfile.read(int(self.headers["content-length"]))
            if self.path == "/gone":
                self.send_response(410)
            else:  # a redirect towards somewhere the grader must not go
                self.send_response(307)
                self.send_header("location", "http://169.254.169.254/latest/meta-data")
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    settings = from_environment(
        db=str(tmp_path / "cb.db"),
        env={
            "MBGD_WEBHOOK_SECRET": SECRET,
            "MBGD_CALLBACK_SECRET": OTHER,
            "MBGD_CALLBACK_ALLOWED_HOSTS": "127.0.0.1",
            "MBGD_CALLBACK_BACKOFF": "30",
        },
    )
    db = Database(settings.db_path)
    urls = [base + "/gone", base + "/moved", base.replace("127.0.0.1", "localhost") + "/off-list"]
    for n, url in enumerate(urls, start=1):
        db.insert(_submission(n, f"msg_{n}"))
        db.claim()
        cb = Callback(webhook_id=f"msg_cb{n}", url=url, body=b"{}")
        db.finish(
            f"sub_{n}",
            status="graded",
            fingerprint="f",
            grade="{}",
            result="{}",
            error=None,
            callback=cb,
        )

    async def deliver() -> None:
        outbox = Outbox(db, settings)
        await outbox.start()
        try:
            for _ in range(100):
                if len(hits) >= 2 and not outbox._inflight:
                    break
                await asyncio.sleep(0.05)
        finally:
            await outbox.stop()

    asyncio.run(deliver())
    server.shutdown()
    gone, moved = db.get("sub_1"), db.get("sub_2")
    assert gone is not None and gone["cb_status"] == "dead" and gone["cb_last_status"] == 410
    assert moved is not None and moved["cb_status"] == "pending" and moved["cb_last_status"] == 307
    assert sorted(hits) == ["/gone", "/moved"]  # one attempt each, the redirect not followed
    off_list = db.get("sub_3")  # the allowlist changed since intake: never sent
    assert off_list is not None and off_list["cb_status"] == "dead"
    assert "ALLOWED_HOSTS" in off_list["cb_last_error"]


def test_the_signatures_load_neither_fastapi_nor_the_grading_core() -> None:
    import subprocess
    import sys

    code = (
        "import sys, grader.service.signing\n"
        "heavy = {'fastapi', 'grader.service.app', 'grader.pipeline', 'torch'} & set(sys.modules)\n"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


async def _ends(stop: Coroutine[Any, Any, None], seconds: float = 10) -> bool:
    """Does `stop` end within `seconds`? Waits without cancelling it (a timeout that cancels
    would end a hung stop() itself); a hung one is then cancelled, which does get through."""
    import asyncio

    stopping = asyncio.ensure_future(stop)
    done, _ = await asyncio.wait({stopping}, timeout=seconds)
    if not done:
        stopping.cancel()
        await asyncio.wait({stopping}, timeout=seconds)
    return bool(done)


def test_stop_ends_the_delivery_loop_even_when_a_wake_lands_with_the_cancel(tmp_path) -> None:
    """On Python 3.11, `asyncio.wait_for` returns instead of raising when the cancel lands in
    the same turn as what it waits for (a row arriving, a delivery ending): the service's
    shutdown then waited for the loop for ever. Now it ends within a wait."""
    import asyncio

    from grader.service.outbox import Outbox

    settings = from_environment(
        db=str(tmp_path / "stop.db"),
        env={"MBGD_WEBHOOK_SECRET": SECRET, "MBGD_CALLBACK_SECRET": OTHER},
    )
    db = Database(settings.db_path)

    async def wake_then_stop() -> None:
        outbox = Outbox(db, settings)
        await outbox.start()
        await asyncio.sleep(0.2)  # the loop waits for a wake now
        outbox.wake()
        assert await _ends(outbox.stop()), "stop() did not end the delivery loop"

    for _ in range(3):
        asyncio.run(wake_then_stop())


def test_stop_ends_every_grading_slot_even_when_a_wake_lands_with_the_cancel(
    tmp_path, monkeypatch
) -> None:
    """The dispatcher's idle slots wait the same way: a submission's intake in the turn the
    service shuts down must not keep a slot (and the shutdown) going."""
    import asyncio

    from grader.service.dispatcher import Dispatcher
    from grader.service.grading import LocalGrader

    monkeypatch.setenv("MBGD_WARM_POOL", "0")  # no zygote: the slots stay idle
    settings = from_environment(
        db=str(tmp_path / "slots.db"),
        env={"MBGD_WEBHOOK_SECRET": SECRET, "MBGD_CALLBACK_SECRET": OTHER},
    )
    db = Database(settings.db_path)

    async def wake_then_stop() -> None:
        dispatcher = Dispatcher(db, settings, LocalGrader())
        await dispatcher.start()
        await asyncio.sleep(0.3)  # every slot waits for a wake now
        dispatcher.wake()
        assert await _ends(dispatcher.stop()), "stop() did not end the grading slots"

    asyncio.run(wake_then_stop())
