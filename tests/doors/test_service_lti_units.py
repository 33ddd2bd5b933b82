"""LTI 1.3 parts of the service without a server: the platform config, scores URLs, the
allowlist, the signed client assertion and the Score row."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import sqlite3
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from joserfc import jwt
from joserfc.errors import BadSignatureError
from joserfc.jwk import KeySet, RSAKey

from grader.cli import main
from grader.service.db import Database, NewSubmission
from grader.service.lti import AgsClient, Outcome, already_accepted, build_score, scores_url
from grader.service.lti_config import LtiConfigError, load
from grader.service.score_outbox import ScoreOutbox
from grader.service.settings import Settings, SettingsError, from_environment

WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
# The short key is made and loaded on purpose, to see it refused.
pytestmark = pytest.mark.filterwarnings("ignore:Key size should be:joserfc.errors.SecurityWarning")


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Key files: two RSA private keys, a public key, a short key, an EC key, garbage."""
    folder = tmp_path_factory.mktemp("keys")
    files = {
        "tool": RSAKey.generate_key(2048).as_pem(private=True),
        "other": RSAKey.generate_key(2048).as_pem(private=True),
        "public": RSAKey.generate_key(2048).as_pem(private=False),
        "short": RSAKey.generate_key(1024, auto_kid=False).as_pem(private=True),
        "garbage": b"-----BEGIN PRIVATE KEY-----\nnot base64 at all\n-----END PRIVATE KEY-----\n",
    }
    for name, pem in files.items():
        (folder / f"{name}.pem").write_bytes(pem)
    return {name: folder / f"{name}.pem" for name in files}


def platform_toml(
    issuer: str = "https://moodle.example.edu",
    key: str = "tool.pem",
    key_id: str = "tool-1",
    token_url: str = "https://moodle.example.edu/mod/lti/token.php",
    extra: str = "",
) -> str:
    return (
        "[[platform]]\n"
        f'issuer = "{issuer}"\nclient_id = "client-7"\ndeployment_id = "3"\n'
        f'auth_token_url = "{token_url}"\nprivate_key_file = "{key}"\nkey_id = "{key_id}"\n'
        f"{extra}\n"
    )


def write(keys: dict[str, Path], text: str) -> Path:
    path = keys["tool"].parent / "lti.toml"
    path.write_text(text)
    return path


# -- the config ---------------------------------------------------------------------------------


def test_config_reads_platforms_and_serves_only_public_keys(keys: dict[str, Path]) -> None:
    text = platform_toml() + platform_toml(
        issuer="https://canvas.instructure.com",
        token_url="https://sso.canvaslms.com/login/oauth2/token",
        extra='lineitem_hosts = ["school.instructure.com", "beta.school.edu:8443"]',
    )
    config = load(write(keys, text))
    moodle = config.platform("https://moodle.example.edu")
    canvas = config.platform("https://canvas.instructure.com")
    assert moodle is not None and canvas is not None and config.platform("nope") is None
    assert (moodle.client_id, moodle.deployment_id, moodle.key_id) == ("client-7", "3", "tool-1")
    assert moodle.lineitem_hosts == {"moodle.example.edu:443"}  # the issuer's host by default
    assert canvas.lineitem_hosts == {"school.instructure.com:443", "beta.school.edu:8443"}
    # Both use the same key under the same key_id: the JWK Set lists it once, public half only.
    (jwk,) = config.jwks()["keys"]
    assert jwk["kid"] == "tool-1" and jwk["kty"] == "RSA" and jwk["alg"] == "RS256"
    assert jwk["use"] == "sig" and {"n", "e"} <= set(jwk)
    assert not {"d", "p", "q", "dp", "dq", "qi"} & set(jwk)
    public = RSAKey.import_key(keys["tool"].read_bytes()).as_dict(private=False)
    assert jwk["n"] == public["n"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (platform_toml(key="missing.pem"), "missing.pem' cannot be read"),
        (platform_toml(key="garbage.pem"), "is not an RSA private key in PEM"),
        (platform_toml(key="public.pem"), "holds a public key"),
        (platform_toml(key="short.pem"), "has 1024 bits"),
        (platform_toml() + platform_toml(), "is registered twice"),
        (
            platform_toml() + platform_toml(issuer="https://b.example", key="other.pem"),
            "key_id 'tool-1' names another key",
        ),
        (platform_toml(token_url="http://lms.example.edu/token"), "must be an https:// URL"),
        (platform_toml(extra='colour = "blue"'), "unknown field(s) colour"),
        (platform_toml(extra="lineitem_hosts = [3]"), "must be a list of host names"),
        (platform_toml(issuer="moodle-prod"), "list the hosts of its line items"),
        (platform_toml().replace('client_id = "client-7"\n', ""), "'client_id' must be"),
        ("[platform]\nissuer = 1\n", "one [[platform]] table per registration"),
        ("platform = [1, 2]\n", "one [[platform]] table per registration"),
        ("[[platform]\n", "is not valid TOML"),
    ],
)
def test_bad_configs_say_what_is_wrong(keys: dict[str, Path], text: str, message: str) -> None:
    path = write(keys, text)
    with pytest.raises(LtiConfigError) as caught:
        load(path)
    assert message in str(caught.value)
    assert str(path) in str(caught.value)


def test_the_environment_and_the_cli_refuse_a_bad_config_at_start(keys: dict[str, Path]) -> None:
    path = write(keys, platform_toml(key="missing.pem"))
    env = {"MBGD_WEBHOOK_SECRET": WEBHOOK_SECRET, "MBGD_LTI_CONFIG": str(path)}
    with pytest.raises(SettingsError, match="cannot be read"):
        from_environment(env=env)
    assert from_environment(env={"MBGD_WEBHOOK_SECRET": WEBHOOK_SECRET}).lti is None
    result = CliRunner().invoke(
        main,
        ["serve", "--lti-config", str(path), "--db", str(path.parent / "never.db")],
        env={"MBGD_WEBHOOK_SECRET": WEBHOOK_SECRET},
    )
    assert result.exit_code == 2 and "missing.pem' cannot be read" in result.output
    assert not (path.parent / "never.db").exists()


# -- URLs and the allowlist ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lineitem", "scores"),
    [
        ("https://lms.example/api/lti/courses/3/line_items/7",
         "https://lms.example/api/lti/courses/3/line_items/7/scores"),
        ("https://lms.example/api/lti/courses/3/line_items/7/",
         "https://lms.example/api/lti/courses/3/line_items/7/scores"),
        ("https://lms.example/mod/lti/services.php/2/lineitems/9/lineitem?type_id=1",
         "https://lms.example/mod/lti/services.php/2/lineitems/9/lineitem/scores?type_id=1"),
        ("https://lms.example:8443/li/7?a=1&b=%2F#frag",
         "https://lms.example:8443/li/7/scores?a=1&b=%2F"),
    ],
)  # fmt: skip
def test_scores_url_appends_to_the_path_before_the_query(lineitem: str, scores: str) -> None:
    assert scores_url(lineitem) == scores


def test_lineitems_are_allowed_only_on_their_platforms_hosts(keys: dict[str, Path]) -> None:
    text = platform_toml() + platform_toml(
        issuer="https://canvas.instructure.com",
        token_url="http://127.0.0.1:9/token",  # plain http is fine to this machine
        extra='lineitem_hosts = ["school.instructure.com", "127.0.0.1:8123"]',
    )
    config = load(write(keys, text))
    moodle = config.platform("https://moodle.example.edu")
    canvas = config.platform("https://canvas.instructure.com")
    assert moodle is not None and canvas is not None
    assert moodle.lineitem_allowed("https://moodle.example.edu/mod/lti/services.php/2/lineitems/9")
    assert moodle.lineitem_allowed("https://MOODLE.example.edu:443/x")
    refused = [
        "https://school.instructure.com/api/lti/courses/1/line_items/2",  # another platform's
        "https://moodle.example.edu:8443/x",  # another port
        "http://moodle.example.edu/x",  # not TLS
        "https://admin:pw@moodle.example.edu/x",  # credentials
        "https://moodle.example.edu.evil.test/x",
        "file:///etc/passwd",
        "not a url",
    ]
    assert not [url for url in refused if moodle.lineitem_allowed(url)]
    assert canvas.lineitem_allowed("https://school.instructure.com/api/lti/courses/1/line_items/2")
    assert canvas.lineitem_allowed("http://127.0.0.1:8123/lineitems/1")
    assert not canvas.lineitem_allowed("http://127.0.0.1:8124/lineitems/1")
    assert not canvas.lineitem_allowed("https://canvas.instructure.com/x")  # not listed


def test_only_4xx_other_than_401_and_429_is_final() -> None:
    finals = {s for s in (200, 204, 301, 400, 401, 403, 404, 409, 422, 429, 500, 503)
              if Outcome(status=s, error="").final}  # fmt: skip
    assert finals == {400, 403, 404, 409, 422}
    assert not Outcome(status=None, error="ConnectError").final
    assert Outcome(status=201, error="").delivered and not Outcome(status=None, error="").delivered


# -- the client assertion and the Score ---------------------------------------------------------


def test_client_assertion_is_rs256_with_the_claims_lti_asks_for(keys: dict[str, Path]) -> None:
    config = load(write(keys, platform_toml()))
    platform = config.platform("https://moodle.example.edu")
    assert platform is not None
    ags = AgsClient(client=None)  # type: ignore[arg-type]  # signing needs no HTTP
    jwks = KeySet.import_key_set(config.jwks())
    tokens = [jwt.decode(ags.client_assertion(platform), jwks) for _ in range(3)]
    for token in tokens:
        assert token.header["alg"] == "RS256" and token.header["kid"] == "tool-1"
        claims = token.claims
        assert claims["iss"] == claims["sub"] == "client-7"
        assert claims["aud"] == "https://moodle.example.edu/mod/lti/token.php"
        assert claims["iat"] <= time.time() + 1 and 0 < claims["exp"] - claims["iat"] <= 300
    assert len({t.claims["jti"] for t in tokens}) == 3
    impostor = RSAKey.generate_key(2048, parameters={"kid": "tool-1"})
    other = KeySet.import_key_set({"keys": [impostor.as_dict(private=False)]})
    with pytest.raises(BadSignatureError):
        jwt.decode(ags.client_assertion(platform), other)


def test_score_row_goes_to_the_launch_user_with_the_ags_fields() -> None:
    target = {"issuer": "https://lms.example", "lineitem": "https://lms.example/li/1",
              "user_id": "launch-sub-42"}  # fmt: skip
    row = {"lti": json.dumps(target), "learner_id": "lms-internal-9"}
    score = build_score(row, score=7.5, max_score=10, comment="7.5/10. Fine", finished_at=1.5e9)
    assert score is not None and score.issuer == target["issuer"]
    assert score.lineitem == target["lineitem"]
    body = json.loads(score.body)
    assert body == {
        "userId": "launch-sub-42",
        "scoreGiven": 7.5,
        "scoreMaximum": 10,
        "activityProgress": "Completed",
        "gradingProgress": "FullyGraded",
        "timestamp": "2017-07-14T02:40:00.000+00:00",
        "comment": "7.5/10. Fine",
    }
    failed = build_score(row, score=None, max_score=None, comment="Not graded", finished_at=0)
    assert failed is not None
    body = json.loads(failed.body)
    assert body["gradingProgress"] == "Failed" and "scoreGiven" not in body
    assert build_score({"lti": None}, score=1, max_score=1, comment="", finished_at=0) is None


def test_an_older_database_gains_the_lti_column(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    Database(path).close()
    with sqlite3.connect(path) as conn:  # as a database from before LTI looked
        conn.execute("DROP TABLE lti_outbox")
        conn.execute("ALTER TABLE submissions DROP COLUMN lti")
    Database(path).close()
    with sqlite3.connect(path) as conn:
        columns = {r[1] for r in conn.execute("PRAGMA table_info(submissions)")}
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert "lti" in columns and "lti_outbox" in tables


def test_without_lti_config_lti_targets_are_refused_and_there_is_no_jwks() -> None:
    """Intake answers before it touches the database, so the app runs without its lifespan."""
    from grader.service.app import create_app
    from grader.service.signing import decode_secret, sign_headers

    app = create_app(from_environment(env={"MBGD_WEBHOOK_SECRET": WEBHOOK_SECRET}))
    target = {"issuer": "https://lms.example", "lineitem": "https://lms.example/li/1",
              "user_id": "u"}  # fmt: skip
    body = json.dumps(
        {"submission_id": "s", "learner_id": "l", "notebook": {}, "lti": target}
    ).encode()
    headers = sign_headers(decode_secret(WEBHOOK_SECRET), "msg_lti_off", body)
    headers["content-type"] = "application/json"

    async def ask() -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://grader") as client:
            jwks = await client.get("/.well-known/jwks.json")
            return jwks, await client.post("/v1/submissions", content=body, headers=headers)

    jwks, answer = asyncio.run(ask())
    assert jwks.status_code == 404 and "no --lti-config" in jwks.json()["detail"]
    assert answer.status_code == 422
    (error,) = answer.json()["detail"]
    assert error["loc"] == ["body", "lti"] and "no --lti-config" in error["msg"]


# -- delivery from the outbox, against a loopback platform (no kernel) ---------------------------

SCORE_SCOPE = "https://purl.imsglobal.org/spec/lti-ags/scope/score"
SCORE_TYPE = "application/vnd.ims.lis.v1.score+json"
# What Open edX's lti-consumer-xblock answers, word for word (its LtiAgsScoreSerializer and
# Lti1p3ApiAuthentication, rendered by DRF as compact JSON in the Score media type).
EDX_SCORE_EXISTS = "Score already exists for the provided timestamp"
EDX_SCORE_OLDER = "Score timestamp can only be updated to a later point in time"
EDX_BAD_TOKEN = "Invalid token signature."
EDX_NO_SCOPE = "You do not have permission to perform this action."


@dataclasses.dataclass
class Post:
    """One Score POST the platform received, and what it answered (None: no answer)."""

    item: str
    when: float
    bearer: str
    raw: bytes
    answered: int | None


class ScriptedPlatform:
    """A token endpoint and line items answering from a script; records what it is sent.

    ``openedx=True`` answers as Open edX's lti-consumer-xblock does instead of from the script:
    every token request gets a new token (``oe-1``, ``oe-2`` ...); a Score sent with a token it
    does not know (revoked, expired, signed with a key it rotated away) gets 403
    ``{"detail":"Invalid token signature."}`` (DRF turns the authentication failure into 403
    because the authentication class sends no ``WWW-Authenticate``), one without the score
    scope 403 ``{"detail":"You do not have permission to perform this action."}``; it keeps
    one Score per line item and ``userId``: the same ``timestamp`` again is 400
    ``{"timestamp":["Score already exists for the provided timestamp"]}``, an earlier one 400
    "... later point in time", anything else is stored and echoed with 201. A line item in
    ``lose_answer`` stores its next Score and closes the connection without answering.
    """

    def __init__(self, token_status: int = 200, *, openedx: bool = False) -> None:
        self.posts: list[Post] = []
        self.script: dict[str, list[tuple[int, dict[str, str]]]] = {}
        self.token_status = token_status
        self.openedx = openedx
        self.token_requests = 0
        self.tokens: dict[str, str] = {}  # Open edX: the valid tokens and their scopes
        self.grant_scope = SCORE_SCOPE
        self.scores: dict[tuple[str, str], dict[str, Any]] = {}  # Open edX: (item, userId)
        self.lose_answer: set[str] = set()
        self.lock = threading.Lock()
        platform = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length", "0")))
                headers: dict[str, str] = {}
                if self.path == "/token":
                    status, body = platform.token()
                elif platform.openedx:
                    status, body = platform.openedx_score(self.path, self.headers, raw)
                    headers = {"content-type": SCORE_TYPE}
                    if status == 0:  # stored, and the answer is lost on the way back
                        self.close_connection = True
                        return
                else:
                    item = self.path.split("/")[-2]
                    script = platform.script.get(item) or [(200, {})]
                    status, headers = script.pop(0) if len(script) > 1 else script[0]
                    body = b"{}"
                    platform.record(item, self.headers, raw, status)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def record(self, item: str, headers: Any, raw: bytes, status: int | None) -> None:
        bearer = headers.get("authorization", "")
        with self.lock:
            self.posts.append(Post(item, time.monotonic(), bearer, raw, status))

    def token(self) -> tuple[int, bytes]:
        with self.lock:
            self.token_requests += 1
            if self.token_status != 200:
                return self.token_status, b'{"error": "invalid_client"}'
            if not self.openedx:
                return 200, b'{"access_token": "t1", "token_type": "Bearer", "expires_in": 3600}'
            token = f"oe-{self.token_requests}"
            self.tokens[token] = self.grant_scope
        body = {"access_token": token, "token_type": "bearer", "expires_in": 3600,
                "scope": self.grant_scope}  # fmt: skip
        return 200, json.dumps(body).encode()

    def revoke_tokens(self) -> None:
        with self.lock:
            self.tokens.clear()

    def openedx_score(self, path: str, headers: Any, raw: bytes) -> tuple[int, bytes]:
        """LtiAgsLineItemViewset.scores: authentication, the score scope, the serializer."""
        item = path.split("/")[-2]
        status, body = self._openedx_answer(item, headers, raw)
        if status == 201 and item in self.lose_answer:
            self.lose_answer.discard(item)
            status = 0
        self.record(item, headers, raw, status or None)
        return status, json.dumps(body, separators=(",", ":")).encode()

    def _openedx_answer(self, item: str, headers: Any, raw: bytes) -> tuple[int, Any]:
        auth = headers.get("authorization", "").split()
        with self.lock:
            if len(auth) != 2 or auth[0].lower() != "bearer" or auth[1] not in self.tokens:
                return 403, {"detail": EDX_BAD_TOKEN}
            if SCORE_SCOPE not in self.tokens[auth[1]].split():
                return 403, {"detail": EDX_NO_SCOPE}
            if headers.get("content-type") != SCORE_TYPE:
                return 415, {"detail": "Unsupported media type in request."}
            score = json.loads(raw)
            errors = {
                field: ["This field is required."]
                for field in ("timestamp", "activityProgress", "gradingProgress", "userId")
                if field not in score
            }
            if score.get("scoreGiven") is not None and not score.get("scoreMaximum"):
                errors["scoreMaximum"] = [
                    "scoreMaximum is a required field when providing a scoreGiven value."
                ]
            if errors:
                return 400, errors
            when = datetime.fromisoformat(score["timestamp"])
            existing = self.scores.get((item, score["userId"]))
            if existing is not None and existing["when"] > when:
                return 400, {"timestamp": [EDX_SCORE_OLDER]}
            if existing is not None and existing["when"] == when:
                return 400, {"timestamp": [EDX_SCORE_EXISTS]}
            self.scores[(item, score["userId"])] = {**score, "when": when}
            return 201, score

    def posts_to(self, item: str) -> list[Post]:
        with self.lock:
            return [p for p in self.posts if p.item == item]


def outbox_settings(keys: dict[str, Path], *platforms: ScriptedPlatform) -> Settings:
    text = "".join(
        platform_toml(
            issuer=p.base, token_url=f"{p.base}/token", extra=f'lineitem_hosts = ["{p.base}"]'
        )
        for p in platforms
    )
    return dataclasses.replace(
        from_environment(env={"MBGD_WEBHOOK_SECRET": WEBHOOK_SECRET}),
        lti=load(write(keys, text)),
        callback_backoff=0.05,
        callback_backoff_cap=0.2,
    )


def queue_score(
    db: Database,
    sub_id: str,
    issuer: str,
    host: str,
    *,
    user: str = "u",
    finished_at: float = 0,
    item: str | None = None,
) -> None:
    """A graded submission whose Score goes to ``{host}/li/{item or sub_id}``, due now."""
    target = {"issuer": issuer, "lineitem": f"{host}/li/{item or sub_id}", "user_id": user}
    sub = NewSubmission(
        id=sub_id, webhook_id=f"w-{sub_id}", submission_id=sub_id, learner_id="l",
        assignment_id=None, callback_url=None, name=sub_id, notebook=b"{}", sha256=sub_id,
        response="{}", lti=json.dumps(target),
    )  # fmt: skip
    db.insert(sub)
    assert db.claim() is not None
    score = build_score(
        db.get(sub_id), score=1, max_score=10, comment="", finished_at=finished_at or time.time()
    )
    db.finish(sub_id, status="graded", fingerprint="f", grade="{}", result="{}", error=None,
              score=score)  # fmt: skip


async def drain(db: Database, outbox: ScoreOutbox, items: list[str], until: Any = None) -> None:
    """Waits until every item is delivered or dead (or ``until()`` holds)."""

    def done() -> bool:
        if until is not None:
            return bool(until())
        return all(db.get(i)["lti_status"] in ("delivered", "dead") for i in items)

    outbox.wake()
    deadline = time.monotonic() + 20
    while not done():
        assert time.monotonic() < deadline, [
            {k: v for k, v in db.get(i).items() if k.startswith("lti")} for i in items
        ]
        await asyncio.sleep(0.05)


async def stop(outbox: ScoreOutbox) -> None:
    """Stops the outbox once no delivery is under way and its loop is waiting again.

    On Python 3.11, ``asyncio.wait_for`` loses a cancel that lands just as the event it waits
    on is set (a delivery that ends sets it), and ``DeliveryLoop.stop`` then waits forever.
    """
    deadline = time.monotonic() + 10
    while outbox._inflight and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.2)
    await outbox.stop()


def deliver(db: Database, settings: Settings, items: list[str], until: Any = None) -> None:
    """Runs a Score outbox (a new one: no cached token) until ``drain`` returns."""

    async def run() -> None:
        outbox = ScoreOutbox(db, settings)
        await outbox.start()
        try:
            await drain(db, outbox, items, until)
        finally:
            await stop(outbox)

    asyncio.run(run())


def test_score_outbox_retries_waits_and_gives_up_as_the_platform_says(
    keys: dict[str, Path], tmp_path: Path
) -> None:
    good, broken = ScriptedPlatform(), ScriptedPlatform(token_status=400)
    good.script = {
        "busy": [(429, {"retry-after": "1"}), (200, {})],
        "deleted": [(404, {})],
        "flaky": [(502, {}), (500, {}), (201, {})],
    }
    settings = outbox_settings(keys, good, broken)
    db = Database(tmp_path / "scores.db")
    targets = {
        "busy": good.base,
        "deleted": good.base,
        "flaky": good.base,
        "refused": broken.base,  # its token endpoint says invalid_client
        "forgotten": "https://no-longer-registered.example",
    }
    for item, issuer in targets.items():
        queue_score(db, item, issuer, broken.base if issuer == broken.base else good.base)
    deliver(
        db,
        settings,
        list(targets),
        until=lambda: (
            db.get("busy")["lti_status"] != "pending" and db.get("refused")["lti_attempts"] >= 2
        ),
    )
    state = {item: db.get(item) for item in targets}
    assert state["busy"]["lti_status"] == "delivered" and state["busy"]["lti_attempts"] == 2
    busy = [p.when for p in good.posts_to("busy")]
    assert busy[1] - busy[0] >= 0.9  # Retry-After: 1 was honoured (backoff alone is 0.05 s)
    assert state["flaky"]["lti_status"] == "delivered" and state["flaky"]["lti_attempts"] == 3
    assert state["deleted"]["lti_status"] == "dead" and state["deleted"]["lti_last_status"] == 404
    assert len(good.posts_to("deleted")) == 1  # final: never again
    refused = state["refused"]
    assert refused["lti_status"] == "pending" and refused["lti_last_status"] is None
    assert "token endpoint answered HTTP 400" in refused["lti_last_error"]
    assert "invalid_client" in refused["lti_last_error"] and broken.posts == []  # no token
    assert state["forgotten"]["lti_status"] == "dead"
    assert "not registered" in state["forgotten"]["lti_last_error"]
    assert {p.bearer for p in good.posts} == {"Bearer t1"}  # one token, cached
    db.close()
    good.server.shutdown()
    broken.server.shutdown()


# -- Open edX (lti-consumer-xblock) ---------------------------------------------------------------


def test_openedx_403_for_a_revoked_token_fetches_one_new_token_and_delivers(
    keys: dict[str, Path], tmp_path: Path
) -> None:
    """Open edX answers a token it no longer accepts with 403, not 401: the cached token is
    dropped and the same Score posted again at once with a new one, in the same attempt;
    Scores refused together share that one new token."""
    edx = ScriptedPlatform(openedx=True)
    settings = outbox_settings(keys, edx)
    db = Database(tmp_path / "edx.db")
    items = ["second", "third", "fourth"]

    async def run() -> None:
        outbox = ScoreOutbox(db, settings)
        await outbox.start()
        try:
            queue_score(db, "first", edx.base, edx.base)
            await drain(db, outbox, ["first"])
            assert db.get("first")["lti_status"] == "delivered" and edx.token_requests == 1
            edx.revoke_tokens()  # e.g. the platform's key was rotated: oe-1 is not valid now
            for item in items:
                queue_score(db, item, edx.base, edx.base)
            await drain(db, outbox, items)
        finally:
            await stop(outbox)

    asyncio.run(run())
    for item in items:
        state = db.get(item)
        assert state["lti_status"] == "delivered", state
        assert state["lti_attempts"] == 1 and state["lti_last_status"] == 201
        *refused, accepted = edx.posts_to(item)
        assert [p.answered for p in refused] in ([], [403]) and accepted.answered == 201
        assert all(p.bearer == "Bearer oe-1" for p in refused)
        assert accepted.bearer == "Bearer oe-2" and len({p.raw for p in refused + [accepted]}) == 1
    assert edx.token_requests == 2  # one new token for all of them
    assert set(edx.scores) == {(item, "u") for item in ["first", *items]}
    db.close()
    edx.server.shutdown()


def test_openedx_403_with_a_new_token_too_is_final_and_shown(
    keys: dict[str, Path], tmp_path: Path
) -> None:
    """A new token refused as well is not tried again: the Score is dead, the platform's
    answer shown. Here Open edX's permission check refuses it: the platform grants tokens
    without the score scope."""
    edx = ScriptedPlatform(openedx=True)
    edx.grant_scope = "https://purl.imsglobal.org/spec/lti-ags/scope/lineitem.readonly"
    settings = outbox_settings(keys, edx)
    db = Database(tmp_path / "edx.db")
    queue_score(db, "noscope", edx.base, edx.base)
    deliver(db, settings, ["noscope"])
    time.sleep(0.3)  # no retry comes
    state = db.get("noscope")
    assert state["lti_status"] == "dead" and state["lti_last_status"] == 403
    assert state["lti_attempts"] == 1
    assert EDX_NO_SCOPE in state["lti_last_error"] and "new access token" in state["lti_last_error"]
    first, second = edx.posts_to("noscope")
    assert (first.answered, second.answered) == (403, 403)
    assert (first.bearer, second.bearer) == ("Bearer oe-1", "Bearer oe-2")
    assert edx.token_requests == 2 and edx.scores == {}
    db.close()
    edx.server.shutdown()


def test_openedx_a_score_posted_again_after_its_answer_was_lost_is_delivered(
    keys: dict[str, Path], tmp_path: Path
) -> None:
    """The platform stored the Score but its answer never came back (the connection dropped;
    a kill -9 after the POST is the same for the outbox): the same bytes, with the same
    timestamp, are posted again, and Open edX's 400 "Score already exists for the provided
    timestamp" means the Score is there. Any other 400 stays final."""
    edx = ScriptedPlatform(openedx=True)
    edx.lose_answer = {"lost"}
    settings = outbox_settings(keys, edx)
    db = Database(tmp_path / "edx.db")
    queue_score(db, "lost", edx.base, edx.base, user="learner-1", finished_at=1.7e9)
    deliver(db, settings, ["lost"])
    state = db.get("lost")
    assert state["lti_status"] == "delivered" and state["lti_last_status"] == 400, state
    assert state["lti_attempts"] == 2 and "already" in state["lti_last_error"]
    first, second = edx.posts_to("lost")
    assert (first.answered, second.answered) == (None, 400)
    assert first.raw == second.raw  # byte for byte: the timestamp is the grading time
    assert json.loads(first.raw)["timestamp"] == "2023-11-14T22:13:20.000+00:00"
    stored = edx.scores[("lost", "learner-1")]
    assert stored["scoreGiven"] == 1 and stored["timestamp"] == json.loads(first.raw)["timestamp"]
    # A newer Score for the same learner and line item is there: an older one is refused with
    # another 400 ("... later point in time"), which is final and shown, not taken as delivered.
    queue_score(db, "newer", edx.base, edx.base, user="learner-2", finished_at=1.8e9, item="li")
    deliver(db, settings, ["newer"])
    queue_score(db, "older", edx.base, edx.base, user="learner-2", finished_at=1.6e9, item="li")
    deliver(db, settings, ["older"])
    assert db.get("newer")["lti_status"] == "delivered"
    older = db.get("older")
    assert older["lti_status"] == "dead" and older["lti_last_status"] == 400
    assert EDX_SCORE_OLDER in older["lti_last_error"] and older["lti_attempts"] == 1
    db.close()
    edx.server.shutdown()


@pytest.mark.parametrize(
    ("status", "body", "already"),
    [
        (400, b'{"timestamp":["Score already exists for the provided timestamp"]}', True),
        (400, b'{ "timestamp" : [ "Score already exists for the provided timestamp" ] }\n', True),
        (400, b'{"timestamp":["Score timestamp can only be updated to a later point in time"]}',
         False),
        (400, b'{"timestamp":["Score already exists for the provided timestamp"],'
              b'"userId":["This field is required."]}', False),
        (400, b'{"timestamp":["Score already exists for the provided timestamp","x"]}', False),
        (400, b'{"timestamp":"Score already exists for the provided timestamp"}', False),
        (400, b'{"detail":"Score already exists for the provided timestamp"}', False),
        (400, b'{"timestamp":["score already exists for the provided timestamp."]}', False),
        (400, b"Score already exists for the provided timestamp", False),
        (400, b'{"timestamp":["Score already exists for the provided time', False),
        (409, b'{"timestamp":["Score already exists for the provided timestamp"]}', False),
        (422, b'{"timestamp":["Score already exists for the provided timestamp"]}', False),
    ],
)  # fmt: skip
def test_only_open_edx_s_duplicate_timestamp_answer_counts_as_already_accepted(
    status: int, body: bytes, already: bool
) -> None:
    assert already_accepted(status, body) is already
