"""LTI 1.3 AGS score passback end to end: `mbgd-grader serve --lti-config` and a platform.

The platform is written here from the specs (RFC 7523 client assertions as the 1EdTech
Security Framework profiles them, and the AGS Score service), on a loopback port: its token
endpoint verifies each client assertion with the keys it fetches from the tool's
`/.well-known/jwks.json`, with joserfc (not the service's code path), and its scores endpoint
checks the bearer token and the media type and records every Score it is sent.
"""

from __future__ import annotations

import base64
import contextlib
import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import nbformat
import pytest
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, RSAKey
from nbformat.v4 import new_code_cell, new_notebook

from grader.service.signing import decode_secret, sign_headers
from tests.helpers import ServeProcess, free_port, quick_notebook

pytestmark = pytest.mark.slow

WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"lms-to-grader-key-lti-0123456789").decode()
API_TOKEN = "lti-token-" + uuid.uuid4().hex
ISSUER = "https://platform.example.edu"
CLIENT_ID = "mbgd-client-" + uuid.uuid4().hex[:8]
SCOPE = "https://purl.imsglobal.org/spec/lti-ags/scope/score"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
SCORE_TYPE = "application/vnd.ims.lis.v1.score+json"
LOST = 0  # the platform's "status" for a Score it stored without answering


# -- the platform -------------------------------------------------------------------------------


@dataclass
class ScorePost:
    lineitem: str
    query: str
    token: str
    content_type: str
    raw: bytes
    answered: int

    @property
    def score(self) -> dict[str, Any]:
        return json.loads(self.raw)


@dataclass
class Platform:
    """Token endpoint + line items; answers per line item can be scripted.

    ``openedx``: the scores endpoint answers as Open edX's lti-consumer-xblock does: 403
    ``{"detail":"Invalid token signature."}`` for a token it does not accept (not 401), and
    400 ``{"timestamp":["Score already exists for the provided timestamp"]}`` for a Score
    whose user and line item already have one with that timestamp. A line item in
    ``lose_answer`` keeps its next accepted Score and closes the connection unanswered.
    """

    jwks_url: str = ""
    assertions: list[dict[str, Any]] = field(default_factory=list)
    refused_assertions: list[str] = field(default_factory=list)
    tokens: set[str] = field(default_factory=set)
    posts: list[ScorePost] = field(default_factory=list)
    answer: dict[str, Callable[[], tuple[int, bytes]]] = field(default_factory=dict)
    expires_in: int = 3600
    openedx: bool = False
    stored: dict[tuple[str, str], str] = field(default_factory=dict)  # Open edX: timestamps
    lose_answer: set[str] = field(default_factory=set)
    revoke_on_next_post: bool = False  # the tokens issued so far stop working then
    cond: threading.Condition = field(default_factory=threading.Condition)

    def start(self) -> None:
        platform = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length", "0")))
                parts = urlsplit(self.path)
                if parts.path == "/token":
                    status, body = platform.token(raw)
                elif parts.path.endswith("/scores"):
                    status, body = platform.score(parts.path, parts.query, self.headers, raw)
                else:
                    status, body = 404, b"{}"
                if status == LOST:
                    self.close_connection = True  # stored, but no answer comes back
                    return
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def token(self, raw: bytes) -> tuple[int, bytes]:
        """RFC 6749 client credentials with an RFC 7523 assertion, checked as LTI asks."""
        form = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
        try:
            assert form.get("grant_type") == "client_credentials", form
            assert form.get("client_assertion_type") == ASSERTION_TYPE, form
            assert SCOPE in form.get("scope", "").split(), form
            keys = KeySet.import_key_set(httpx.get(self.jwks_url, timeout=10).json())
            decoded = jwt.decode(form["client_assertion"], keys, algorithms=["RS256"])
            claims = decoded.claims
            assert decoded.header["alg"] == "RS256", decoded.header
            assert claims["iss"] == claims["sub"] == CLIENT_ID, claims
            assert claims["aud"] in (f"{self.base}/token", [f"{self.base}/token"]), claims
            assert claims["exp"] > time.time() and claims["exp"] - time.time() <= 600, claims
            with self.cond:
                assert claims["jti"] not in {a["jti"] for a in self.assertions}, "jti reused"
                self.assertions.append(claims)
        except (AssertionError, JoseError, KeyError, ValueError) as exc:
            with self.cond:
                self.refused_assertions.append(repr(exc))
            return 400, json.dumps({"error": "invalid_client"}).encode()
        token = uuid.uuid4().hex
        with self.cond:
            self.tokens.add(token)
        body = {"access_token": token, "token_type": "Bearer", "scope": SCOPE}
        body["expires_in"] = self.expires_in
        return 200, json.dumps(body).encode()

    def score(self, path: str, query: str, headers: Any, raw: bytes) -> tuple[int, bytes]:
        lineitem = path.removesuffix("/scores").rsplit("/", 1)[-1]
        auth = headers.get("authorization", "")
        token = auth.removeprefix("Bearer ")
        content_type = headers.get("content-type", "")
        with self.cond:
            if self.revoke_on_next_post:
                self.revoke_on_next_post = False
                self.tokens.clear()
            if not auth.startswith("Bearer ") or token not in self.tokens:
                status, body = 401, b'{"error": "invalid_token"}'
                if self.openedx:
                    status, body = 403, b'{"detail":"Invalid token signature."}'
            elif content_type != SCORE_TYPE:
                status, body = 415, b'{"error": "unsupported media type"}'
            elif lineitem in self.answer:
                status, body = self.answer[lineitem]()
            elif self.openedx:
                status, body = self.openedx_score(lineitem, raw)
            else:
                status, body = 200, b"{}"
            self.posts.append(ScorePost(lineitem, query, token, content_type, raw, status))
            self.cond.notify_all()
        return status, body

    def openedx_score(self, lineitem: str, raw: bytes) -> tuple[int, bytes]:
        """One Score per (line item, userId); the same timestamp again is refused."""
        score = json.loads(raw)
        key = (lineitem, score["userId"])
        if self.stored.get(key) == score["timestamp"]:
            return 400, b'{"timestamp":["Score already exists for the provided timestamp"]}'
        self.stored[key] = score["timestamp"]
        if lineitem in self.lose_answer:
            self.lose_answer.discard(lineitem)
            return LOST, b""
        return 201, raw

    def posts_to(self, lineitem: str) -> list[ScorePost]:
        with self.cond:
            return [p for p in self.posts if p.lineitem == lineitem]

    def wait(self, what: Callable[[], bool], timeout: float, why: str) -> None:
        with self.cond:
            if not self.cond.wait_for(what, timeout=timeout):
                raise AssertionError(f"{why} within {timeout} s; posts: {self.posts}")

    def revoke_tokens(self) -> None:
        with self.cond:
            self.tokens.clear()


# -- the service -------------------------------------------------------------------------------


class Service(ServeProcess):
    """`mbgd-grader serve --lti-config` as a subprocess on a fixed loopback port."""

    def __init__(self, db: Path, log: Path, config: Path, port: int) -> None:
        env = {
            "MBGD_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "MBGD_API_TOKEN": API_TOKEN,
            "MBGD_CALLBACK_BACKOFF": "0.2",
            "MBGD_CALLBACK_BACKOFF_CAP": "1",
        }
        args = ["--slots", "1", "--lti-config", str(config)]
        super().__init__(db, log, port=port, args=args, env=env)

    def state(self, sub_id: str) -> dict[str, Any]:
        headers = {"authorization": f"Bearer {API_TOKEN}"}
        answer = httpx.get(f"{self.base}/v1/submissions/{sub_id}", headers=headers, timeout=10)
        assert answer.status_code == 200, answer.text
        return answer.json()

    def submit(self, sid: str, notebook: bytes, **extra: Any) -> httpx.Response:
        payload = {
            "submission_id": sid,
            "learner_id": f"lms-{sid}",
            "notebook_base64": base64.b64encode(notebook).decode(),
            **extra,
        }
        body = json.dumps(payload).encode()
        headers = sign_headers(decode_secret(WEBHOOK_SECRET), f"msg_{uuid.uuid4().hex}", body)
        headers["content-type"] = "application/json"
        return httpx.post(f"{self.base}/v1/submissions", content=body, headers=headers, timeout=30)


@dataclass
class Setup:
    platform: Platform
    start: Callable[[], Service]
    db: Path
    service: Service | None = None

    def lti(self, lineitem: str, user: str) -> dict[str, str]:
        url = f"{self.platform.base}/api/lti/courses/7/line_items/{lineitem}?type=notebook"
        return {"issuer": ISSUER, "lineitem": url, "user_id": user}

    @property
    def svc(self) -> Service:
        assert self.service is not None
        return self.service


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("lti")
    platform = Platform()
    platform.start()
    (tmp / "tool.pem").write_bytes(RSAKey.generate_key(2048).as_pem(private=True))
    config = tmp / "lti.toml"
    config.write_text(
        "[[platform]]\n"
        f'issuer = "{ISSUER}"\nclient_id = "{CLIENT_ID}"\ndeployment_id = "1"\n'
        f'auth_token_url = "{platform.base}/token"\nprivate_key_file = "tool.pem"\n'
        f'key_id = "tool-2026"\nlineitem_hosts = ["{platform.base.removeprefix("http://")}"]\n'
    )
    port = free_port()
    platform.jwks_url = f"http://127.0.0.1:{port}/.well-known/jwks.json"
    made = Setup(
        platform, lambda: Service(tmp / "lti.db", tmp / "service.log", config, port), tmp / "lti.db"
    )
    made.service = made.start()
    yield made
    made.svc.stop()
    platform.server.shutdown()


# Every test sends this one notebook (a short correct lab): it is graded once, in the kill
# test, and the later submissions reuse its grade.
NOTEBOOK = quick_notebook("correct", "lti")
# Holds the service's only grading slot long enough for a kill to land mid-grading.
SLOW_CELL = "import time\ntime.sleep(4)\nLOSS20 = [1.0, 2.0]"


# -- tests --------------------------------------------------------------------------------------


def test_jwks_holds_the_public_key_only(setup: Setup) -> None:
    keys = httpx.get(setup.platform.jwks_url, timeout=10).json()["keys"]
    assert [k["kid"] for k in keys] == ["tool-2026"]
    assert keys[0]["kty"] == "RSA" and keys[0]["alg"] == "RS256" and "d" not in keys[0]


def test_intake_refuses_unknown_platforms_and_foreign_lineitems(setup: Setup) -> None:
    cases = {
        "an unregistered issuer": {**setup.lti("1", "u"), "issuer": "https://other.example"},
        "a lineitem elsewhere": {**setup.lti("1", "u"), "lineitem": "https://evil.example/li/1"},
        "a missing user_id": {"issuer": ISSUER, "lineitem": setup.lti("1", "u")["lineitem"]},
    }
    for why, target in cases.items():
        answer = setup.svc.submit("refused", b"{}", lti=target)
        assert answer.status_code == 422, why
        loc = answer.json()["detail"][0]["loc"]
        assert loc[0] == "body" and loc[1].startswith("lti"), why


def test_scores_arrive_unchanged_after_kill_9_mid_delivery_and_mid_grading(
    setup: Setup,
) -> None:
    """Killed while the platform still answers 503 for one submission and a second one is
    being graded: after the restart the first Score is posted again, byte for byte the same,
    and accepted; the second is graded again and its Score arrives once."""
    platform = setup.platform
    platform.answer["crash"] = lambda: (503, b'{"error": "maintenance"}')
    target = setup.lti("crash", "launch-sub-crash")
    answer = setup.svc.submit("crash-1", NOTEBOOK, lti=target)
    assert answer.status_code == 202, answer.text
    sub_id = answer.json()["id"]
    slow = nbformat.writes(new_notebook(cells=[new_code_cell(SLOW_CELL)])).encode()
    answer = setup.svc.submit("crash-2", slow, lti=setup.lti("mid", "launch-sub-mid"))
    assert answer.status_code == 202, answer.text
    mid_id = answer.json()["id"]
    platform.wait(lambda: bool(platform.posts_to("crash")), 120, "no Score posted")
    deadline = time.monotonic() + 60
    while setup.svc.health()["running"] < 1:  # the slow one holds the only slot
        assert time.monotonic() < deadline, "the second submission never started grading"
        time.sleep(0.1)
    setup.svc.kill9()  # mid-delivery of the first, mid-grading of the second
    with contextlib.closing(sqlite3.connect(setup.db)) as conn:
        (left,) = conn.execute("SELECT status FROM lti_outbox").fetchone()
        (running,) = conn.execute(
            "SELECT status FROM submissions WHERE submission_id = 'crash-2'"
        ).fetchone()
    assert left == "pending" and running == "running"
    del platform.answer["crash"]  # the platform is back
    setup.service = setup.start()
    platform.wait(
        lambda: any(p.answered == 200 for p in platform.posts_to("crash")), 60, "no Score accepted"
    )
    posts = platform.posts_to("crash")
    assert [p.answered for p in posts][-1] == 200 and 503 in [p.answered for p in posts]
    assert len({p.raw for p in posts}) == 1  # every post sent the same Score
    assert all(p.content_type == SCORE_TYPE and p.query == "type=notebook" for p in posts)
    score = posts[-1].score
    assert score["userId"] == "launch-sub-crash"  # the launch's sub, not the LMS's learner id
    assert score["scoreGiven"] == score["scoreMaximum"] == 10
    assert score["activityProgress"] == "Completed"
    assert score["gradingProgress"] == "FullyGraded"
    assert score["timestamp"].endswith("+00:00") and score["comment"].startswith("10/10")
    state = setup.svc.state(sub_id)
    assert state["status"] == "graded" and state["attempts"] == 1  # graded once
    assert state["result"]["score"] == 10
    lti = state["lti"]
    assert lti["status"] == "delivered" and lti["last_status"] == 200
    # A post the kill cut off before its answer was recorded is not counted: at least once.
    assert 1 <= lti["attempts"] <= len(posts) and lti["user_id"] == "launch-sub-crash"
    assert platform.refused_assertions == []
    assert {p.token for p in posts} <= platform.tokens
    # The one killed mid-grading: graded again after the restart, its Score posted once.
    platform.wait(lambda: bool(platform.posts_to("mid")), 120, "no Score for the regraded one")
    time.sleep(1.0)  # let any repeat arrive before counting
    (mid,) = platform.posts_to("mid")
    mid_state = setup.svc.state(mid_id)
    assert mid_state["status"] == "graded" and mid_state["attempts"] == 2
    assert mid.answered == 200 and mid.score["userId"] == "launch-sub-mid"
    assert mid.score["scoreGiven"] == mid_state["result"]["score"]
    assert mid.score["gradingProgress"] == "FullyGraded"


def test_a_400_is_final_and_shown_in_the_status(setup: Setup) -> None:
    platform = setup.platform
    platform.answer["gone"] = lambda: (400, b'{"error": "user is not enrolled"}')
    tokens_before = len(platform.assertions)
    answer = setup.svc.submit("gone-1", NOTEBOOK, lti=setup.lti("gone", "sub-gone"))
    assert answer.status_code == 202
    sub_id = answer.json()["id"]
    deadline = time.monotonic() + 60
    while (lti := setup.svc.state(sub_id)["lti"])["status"] in ("waiting", "pending"):
        assert time.monotonic() < deadline, lti
        time.sleep(0.2)
    assert lti["status"] == "dead" and lti["last_status"] == 400 and lti["attempts"] == 1
    assert "user is not enrolled" in lti["last_error"]
    assert setup.svc.state(sub_id)["reused_from"] is not None  # graded once, in the crash test
    time.sleep(0.5)  # no retry comes
    (post,) = platform.posts_to("gone")
    assert post.score["userId"] == "sub-gone" and post.score["scoreGiven"] == 10
    assert len(platform.assertions) == tokens_before  # the cached token was used


def test_a_401_drops_the_token_and_an_expired_token_is_renewed(setup: Setup) -> None:
    platform = setup.platform
    platform.wait(lambda: bool(platform.tokens), 1, "no token was issued before")
    platform.revoke_tokens()  # the platform forgot the token the service has cached
    platform.expires_in = 31  # the next token is renewed 30 s before it expires: after 1 s
    tokens_before = len(platform.assertions)
    answer = setup.svc.submit("renew-1", NOTEBOOK, lti=setup.lti("renew", "sub-renew"))
    assert answer.status_code == 202
    platform.wait(
        lambda: any(p.answered == 200 for p in platform.posts_to("renew")), 60, "not accepted"
    )
    first, second = platform.posts_to("renew")
    assert (first.answered, second.answered) == (401, 200)
    assert first.token != second.token and second.token in platform.tokens
    assert first.raw == second.raw
    assert len(platform.assertions) == tokens_before + 1 and platform.refused_assertions == []
    state = setup.svc.state(answer.json()["id"])
    # One attempt: the 401 was followed at once by a post with a new token.
    assert state["lti"]["status"] == "delivered" and state["lti"]["attempts"] == 1
    # The new token's life (as the service counts it) is over: the next Score fetches another
    # one first, with no 401 on the way.
    time.sleep(1.5)
    answer = setup.svc.submit("expiry-1", NOTEBOOK, lti=setup.lti("expiry", "sub-expiry"))
    assert answer.status_code == 202
    platform.wait(lambda: bool(platform.posts_to("expiry")), 60, "not posted")
    (post,) = platform.posts_to("expiry")
    assert post.answered == 200 and post.token not in (first.token, second.token)
    assert len(platform.assertions) == tokens_before + 2 and platform.refused_assertions == []


def test_open_edx_403_for_a_revoked_token_and_a_lost_answer_both_end_delivered(
    setup: Setup,
) -> None:
    """As against Open edX's lti-consumer-xblock: the token the Score comes with is answered
    with 403 (not 401), so a new one is fetched; the Score is stored but the answer lost; the
    re-post (the same bytes) is answered 400 "Score already exists for the provided
    timestamp": delivered."""
    platform = setup.platform
    platform.openedx = True
    platform.expires_in = 3600
    try:
        # The token the first post brings (cached, or new if the one cached ran out) is
        # refused: e.g. the platform's key was replaced just then.
        platform.revoke_on_next_post = True
        platform.lose_answer.add("edx")
        answer = setup.svc.submit("edx-1", NOTEBOOK, lti=setup.lti("edx", "sub-edx"))
        assert answer.status_code == 202
        sub_id = answer.json()["id"]
        deadline = time.monotonic() + 60
        while (lti := setup.svc.state(sub_id)["lti"])["status"] in ("waiting", "pending"):
            assert time.monotonic() < deadline, (lti, platform.posts_to("edx"))
            time.sleep(0.2)
    finally:
        platform.openedx = False
    assert lti["status"] == "delivered" and lti["last_status"] == 400, lti
    assert lti["attempts"] == 2 and "already had this Score" in lti["last_error"]
    refused, lost, again = platform.posts_to("edx")
    assert (refused.answered, lost.answered, again.answered) == (403, LOST, 400)
    assert refused.token != lost.token == again.token and lost.token in platform.tokens
    assert refused.raw == lost.raw == again.raw  # the same Score, the same timestamp
    assert platform.stored == {("edx", "sub-edx"): lost.score["timestamp"]}
    assert platform.refused_assertions == []
