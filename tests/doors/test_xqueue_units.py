"""The XQueue door's rules without kernels or HTTP: messages in, the answer out, the journal,
the backoff. The messages are built as openedx/xqueue's get_submission builds them."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from grader.errors import UsageError
from grader.models import CellRun, CheckResult, Execution, GradeResult, not_graded
from grader.xqueue.client import _session_lost
from grader.xqueue.contract import (
    EDX_SUBMISSIONS,
    XQUEUE,
    ContractError,
    is_empty_queue,
    parse_reply,
    parse_submission,
    payload_points,
    score_body,
    server_from_login_page,
)
from grader.xqueue.feedback import MAX_TRACEBACK_CHARS, message_html
from grader.xqueue.journal import Journal, Pull
from grader.xqueue.worker import SEND_BACKOFF, Backoff, answer_for, choose_file, send_delay


def content(
    header: object = None, body: object = None, files: object = "{}", **extra: object
) -> str:
    """get_submission's content: a JSON string of three JSON strings."""
    header = {"submission_id": 42, "submission_key": "k" * 32} if header is None else header
    body = body if body is not None else {"student_response": "", "grader_payload": ""}
    return json.dumps(
        {
            "xqueue_header": header if isinstance(header, str) else json.dumps(header),
            "xqueue_body": body if isinstance(body, str) else json.dumps(body),
            "xqueue_files": files,
            **extra,
        }
    )


# -- the contract --------------------------------------------------------------------------------


def test_replies_are_read_by_return_code() -> None:
    assert parse_reply({"return_code": 0, "content": "Logged in"}).ok
    empty = parse_reply({"return_code": 1, "content": "Queue 'mbgd' is empty"})
    assert not empty.ok and is_empty_queue(empty)
    assert not is_empty_queue(parse_reply({"return_code": 1, "content": "Queue 'x' not found"}))
    for bad in ({"detail": "CSRF Failed"}, {"return_code": 2}, {"return_code": True}, [], None):
        with pytest.raises(ContractError):
            parse_reply(bad)


def test_a_pulled_submission_keeps_its_header_verbatim_and_reads_its_body() -> None:
    header = '{"submission_id": 42,   "submission_key": "abc"}'  # spacing kept as sent
    info = json.dumps({"anonymous_student_id": "anon-7", "random_seed": 1})
    body = {"student_response": "", "grader_payload": '{"points": 4}', "student_info": info}
    files = json.dumps({"lab.ipynb": "https://s3.example/abc?sig=1"})
    pulled = parse_submission(content(header, body, files))
    assert pulled.header == header and pulled.submission_id == "42"
    assert pulled.files == {"lab.ipynb": "https://s3.example/abc?sig=1"}
    assert pulled.points == 4 and pulled.learner == "anon-7" and pulled.student_response == ""
    # a body that is not JSON reads as empty fields; it can still be answered
    odd = parse_submission(content(body="not json", files="[1, 2]"))
    assert odd.fields == {} and odd.points is None and odd.learner == "" and odd.files == {}


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("not json", "the submission is not valid JSON"),
        (json.dumps([1]), "not a JSON object"),
        (content(header="{"), "xqueue_header is not valid JSON"),
        (content(header={"submission_key": "k"}), "no submission_id"),
        (content(header={"submission_id": 1}), "no submission_key"),
        (content(header={"submission_id": [1], "submission_key": "k"}), "neither a number"),
    ],
)
def test_a_submission_that_cannot_be_answered_is_a_contract_error(text: str, says: str) -> None:
    with pytest.raises(ContractError, match=says):
        parse_submission(text)


@pytest.mark.parametrize(
    ("payload", "points"),
    [
        ('{"points": 5}', 5.0),
        ({"points": 2.5}, 2.5),
        ("", None),
        ("1", None),  # what tutor-xqueue's example sends: not an object
        ('{"points": 0}', None),
        ('{"points": -3}', None),
        ('{"points": true}', None),
        ('{"points": "5"}', None),
        ('{"points": 1e308}', None),
        ({"points": math.inf}, None),
    ],
)
def test_points_come_only_from_a_sane_grader_payload(payload: object, points: float | None) -> None:
    assert payload_points(payload) == points


def test_the_score_body_is_a_number_never_nan_and_whole_numbers_are_integers() -> None:
    body = json.loads(score_body(correct=True, score=7.123456, msg="<p/>"))
    assert body == {"correct": True, "score": 7.1235, "msg": "<p/>"}
    assert json.loads(score_body(correct=False, score=math.nan, msg=""))["score"] == 0
    # edx-submissions before 4.0.2 stored `score` in an IntegerField: int("10.0") fails there
    assert '"score": 10,' in score_body(correct=True, score=10.0, msg="")
    assert '"score": 1,' in score_body(correct=True, score=0.99999, msg="")


@pytest.mark.parametrize(
    ("status", "data", "server"),
    [
        (200, {"return_code": 1, "content": "login_required"}, XQUEUE),  # its log_in view
        (200, {"return_code": 0, "content": ""}, EDX_SUBMISSIONS),  # sets the CSRF cookie
        (405, {"detail": 'Method "GET" not allowed.'}, EDX_SUBMISSIONS),  # before that (4.0.0)
        (200, {"return_code": 1, "content": "Incorrect login credentials"}, None),
        (404, {"detail": "Not found."}, None),
        (200, None, None),  # a proxy's page
        (502, None, None),
    ],
)
def test_the_server_is_told_from_its_answer_to_get_login(
    status: int, data: object, server: str | None
) -> None:
    assert server_from_login_page(status, data) == server


def test_a_lost_session_is_told_from_an_answer_that_refuses() -> None:
    refused = parse_reply({"return_code": 1, "content": "Incorrect key for submission"})
    assert _session_lost(302, None)  # openedx/xqueue: login_required redirects
    assert _session_lost(401, None)
    assert _session_lost(403, None)  # DRF: {"detail": ...}, no XQueue answer
    assert _session_lost(200, parse_reply({"return_code": 1, "content": "login_required"}))
    assert not _session_lost(403, refused)  # edx-submissions' stale key: final, not a login
    assert not _session_lost(200, refused)
    assert not _session_lost(200, parse_reply({"return_code": 1, "content": "Queue 'q' is empty"}))


# -- the message the learner sees ----------------------------------------------------------------

HOSTILE = "<script>alert('x')</script> & \x00\x1b[31m\ud800 ]]> <!-- &nbsp;"


def hostile_result() -> GradeResult:
    checks = [
        CheckResult(
            id="loss20.values",
            name="LOSS20 values <b>",
            points=1,
            max_points=5,
            passed=False,
            message=HOSTILE * 100,
        ),
        CheckResult(
            id="plot.legend", name="Legend", points=1, max_points=1, passed=True, message=""
        ),
    ]
    cells = [
        CellRun(
            index=3,
            status="error",
            error_name="ValueError",
            error_value=HOSTILE,
            traceback=HOSTILE * 500,
        )
    ]
    execution = Execution(fate="ok", sandbox="test", cells=cells, notes=[HOSTILE])
    return GradeResult(
        submission="x",
        status="graded",
        score=2,
        max_score=10,
        checks=checks,
        answer_name="LOSS20" + HOSTILE,
        diagnosis=HOSTILE,
        execution=execution,
    )


def test_the_message_is_one_well_formed_bounded_fragment_whatever_the_learner_wrote() -> None:
    msg = message_html(hostile_result())
    root = ET.fromstring(msg)  # what older LMS versions do (lxml's etree.fromstring)
    assert root.tag == "div"
    assert not list(root.iter("script")) and not list(root.iter("b"))
    text = "".join(root.itertext())
    assert "<script>alert('x')</script> &" in text  # shown as text, escaped in the markup
    assert "Score: 2 / 10" in text and "ValueError" in text
    assert "\x00" not in msg and "\x1b" not in msg and "\ud800" not in msg
    assert len(msg) < 16_000
    assert max(len(pre.text or "") for pre in root.iter("pre")) <= MAX_TRACEBACK_CHARS + 1


def test_answers_are_points_scaled_to_the_problem_and_correct_only_at_full_marks() -> None:
    result = hostile_result()
    body, score = answer_for(result, None, XQUEUE)
    assert score == 2 and json.loads(body)["score"] == 2 and not json.loads(body)["correct"]
    body, score = answer_for(result, 5.0, XQUEUE)
    assert score == 1.0 and "Score: 1 / 5" in "".join(
        ET.fromstring(json.loads(body)["msg"]).itertext()
    )
    full = result.model_copy(update={"score": 10.0})
    assert json.loads(answer_for(full, None, XQUEUE)[0])["correct"] is True
    rejected = not_graded("x", "rejected", "a PDF document", max_score=10)
    body, score = answer_for(rejected, 3.0, XQUEUE)
    assert score == 0 and "a PDF document" in json.loads(body)["msg"]


def test_edx_submissions_gets_the_fraction_it_multiplies_by_the_problems_points() -> None:
    result = hostile_result()  # 2 of 10
    body, points = answer_for(result, None, EDX_SUBMISSIONS)
    assert json.loads(body)["score"] == 0.2 and points == 2
    assert "Score: 2 / 10" in "".join(ET.fromstring(json.loads(body)["msg"]).itertext())
    full = result.model_copy(update={"score": 10.0})
    assert json.loads(answer_for(full, 5.0, EDX_SUBMISSIONS)[0])["score"] == 1
    over = result.model_copy(update={"score": 12.0})  # never more than all of it
    assert json.loads(answer_for(over, None, EDX_SUBMISSIONS)[0])["score"] == 1
    rejected = not_graded("x", "rejected", "a PDF document", max_score=0)
    assert json.loads(answer_for(rejected, None, EDX_SUBMISSIONS)[0])["score"] == 0


def test_the_notebook_is_chosen_among_the_uploads() -> None:
    assert choose_file({"a.txt": "u1", "Lab.IPYNB": "u2", "b.ipynb": "u3"}) == ("Lab.IPYNB", "u2")
    assert choose_file({"essay.pdf": "u"}) == ("essay.pdf", "u")
    assert choose_file({}) is None


# -- backoff -------------------------------------------------------------------------------------


def test_backoff_grows_is_capped_and_resets() -> None:
    backoff = Backoff(0.5, 4.0)
    delays = [backoff.next() for _ in range(8)]
    assert all(0.4 <= d <= 4.0 for d in delays)
    assert delays[0] <= 0.5 and delays[3] >= 0.8 * 4.0 and delays[-1] <= 4.0
    backoff.reset()
    assert backoff.next() <= 0.5
    assert send_delay(1) == SEND_BACKOFF[0] and send_delay(100) == SEND_BACKOFF[1]
    assert [send_delay(n) for n in (1, 2, 3)] == [1.0, 2.0, 4.0]


# -- the journal ---------------------------------------------------------------------------------


def test_the_journal_keeps_pulls_answers_and_one_worker(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    try:
        with pytest.raises(UsageError, match="in use by another XQueue worker"):
            Journal(tmp_path)
        first = parse_submission(content({"submission_id": 1, "submission_key": "a"}))
        assert journal.record_pull(first) is Pull.NEW
        assert journal.ungraded() == ["1"]
        assert journal.start_grading("1") == 1
        journal.store_file("1", b"{}", None)
        journal.record_answer("1", '{"score": 3}', 3)
        journal.record_answer("1", '{"score": 9}', 9)  # written once: a repeat changes nothing
        (due,) = journal.due()
        assert due.answer == '{"score": 3}' and journal.ungraded() == []
        assert due.notebook is None  # graded: the file is not kept
        assert journal.retry_send("1", 60, "HTTP 503") == 1 and journal.due() == []
        journal.sent("1", "taken")
        assert journal.counts() == {"grading": 0, "sending": 0, "answered": 1}
        # Handed out again with the same key (edx-submissions, 5 minutes after a pull it
        # has not recorded an answer for): nothing changes, nothing is posted again.
        assert journal.record_pull(first) is Pull.SAME
        assert journal.due() == [] and journal.get("1").outcome == "taken"
        # Handed out again under a new key: the same answer goes again, with the new header.
        again = parse_submission(content({"submission_id": 1, "submission_key": "b"}))
        assert journal.record_pull(again) is Pull.AGAIN
        (due,) = journal.due()
        assert due.header == again.header and due.answer == '{"score": 3}'
        journal.sent("1", "presumed taken")
        journal.resend("1")  # the worker's call when a presumption proves wrong
        (due,) = journal.due()
        assert due.answer == '{"score": 3}' and due.outcome is None
    finally:
        journal.close()
    reopened = Journal(tmp_path)  # the lock goes with the worker
    reopened.close()


# -- the command ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "env", "server"),
    [
        ([], None, "auto"),
        ([], " edx-submissions ", "edx-submissions"),  # MBGD_XQUEUE_SERVER as before
        (["--server", "xqueue"], "edx-submissions", "xqueue"),  # the option wins
        (["--server", "EDX-Submissions"], None, "edx-submissions"),
        (["--server", "auto"], "xqueue", "auto"),
    ],
)
def test_the_server_option_reaches_the_settings(
    monkeypatch: pytest.MonkeyPatch, option: list[str], env: str | None, server: str
) -> None:
    import logging

    from click.testing import CliRunner

    import grader.cli
    from grader.xqueue import worker

    ran: list[worker.Settings] = []
    monkeypatch.setattr(worker, "run", ran.append)
    monkeypatch.setattr(logging.getLogger("httpx"), "level", logging.getLogger("httpx").level)
    monkeypatch.setenv("MBGD_XQUEUE_USER", "grader")
    monkeypatch.setenv("MBGD_XQUEUE_PASSWORD", "secret")
    if env is None:
        monkeypatch.delenv("MBGD_XQUEUE_SERVER", raising=False)
    else:
        monkeypatch.setenv("MBGD_XQUEUE_SERVER", env)
    args = ["xqueue", "--url", "https://xqueue.example.org", "--queue", "mbgd", *option]
    done = CliRunner().invoke(grader.cli.main, args)
    assert done.exit_code == 0, done.output
    assert [s.server for s in ran] == [server]
    refused = CliRunner().invoke(grader.cli.main, [*args, "--server", "edx"])
    assert refused.exit_code == 2 and "'edx' is not one of" in refused.output
    assert len(ran) == 1
