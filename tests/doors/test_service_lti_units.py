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
from grader.service.lti import AgsClient, Outcome, build_score, scores_url
from grader.service.lti_config import LtiConfigError, load
from grader.service.score_outbox import ScoreOutbox
from grader.service.settings import SettingsError, from_environment

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


class ScriptedPlatform:
    """A token endpoint and line items answering from a script; records what it is sent."""

    def __init__(self, token_status: int = 200) -> None:
        self.posts: list[tuple[str, float, str]] = []  # (line item, when, bearer token)
        self.script: dict[str, list[tuple[int, dict[str, str]]]] = {}
        self.token_status = token_status
        platform = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", "0")))
                headers: dict[str, str] = {}
                if self.path == "/token":
                    status = platform.token_status
                    body = b'{"access_token": "t1", "token_type": "Bearer", "expires_in": 3600}'
                    if status != 200:
                        body = b'{"error": "invalid_client"}'
                else:
                    item = self.path.split("/")[-2]
                    bearer = self.headers.get("authorization", "")
                    platform.posts.append((item, time.monotonic(), bearer))
                    script = platform.script.get(item) or [(200, {})]
                    status, headers = script.pop(0) if len(script) > 1 else script[0]
                    body = b"{}"
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


def test_score_outbox_retries_waits_and_gives_up_as_the_platform_says(
    keys: dict[str, Path], tmp_path: Path
) -> None:
    good, broken = ScriptedPlatform(), ScriptedPlatform(token_status=400)
    good.script = {
        "busy": [(429, {"retry-after": "1"}), (200, {})],
        "deleted": [(404, {})],
        "flaky": [(502, {}), (500, {}), (201, {})],
    }
    text = "".join(
        platform_toml(
            issuer=p.base, token_url=f"{p.base}/token", extra=f'lineitem_hosts = ["{p.base}"]'
        )
        for p in (good, broken)
    )
    settings = dataclasses.replace(
        from_environment(env={"MBGD_WEBHOOK_SECRET": WEBHOOK_SECRET}),
        lti=load(write(keys, text)),
        callback_backoff=0.05,
        callback_backoff_cap=0.2,
    )
    db = Database(tmp_path / "scores.db")
    targets = {
        "busy": good.base,
        "deleted": good.base,
        "flaky": good.base,
        "refused": broken.base,  # its token endpoint says invalid_client
        "forgotten": "https://no-longer-registered.example",
    }
    for n, (item, issuer) in enumerate(targets.items()):
        host = broken.base if issuer == broken.base else good.base
        target = {"issuer": issuer, "lineitem": f"{host}/li/{item}", "user_id": "u"}
        sub = NewSubmission(
            id=item, webhook_id=f"w{n}", submission_id=item, learner_id="l", assignment_id=None,
            callback_url=None, name=item, notebook=b"{}", sha256=item, response="{}",
            lti=json.dumps(target),
        )  # fmt: skip
        db.insert(sub)
        assert db.claim() is not None
        score = build_score(
            db.get(item), score=1, max_score=10, comment="", finished_at=time.time()
        )
        db.finish(item, status="graded", fingerprint="f", grade="{}", result="{}", error=None,
                  score=score)  # fmt: skip

    async def deliver() -> None:
        outbox = ScoreOutbox(db, settings)
        await outbox.start()
        try:
            deadline = time.monotonic() + 20
            while db.get("busy")["lti_status"] == "pending" or (
                db.get("refused")["lti_attempts"] < 2
            ):
                assert time.monotonic() < deadline, [
                    {k: v for k, v in db.get(i).items() if k.startswith("lti")} for i in targets
                ]
                await asyncio.sleep(0.05)
        finally:
            await outbox.stop()

    asyncio.run(deliver())
    state = {item: db.get(item) for item in targets}
    assert state["busy"]["lti_status"] == "delivered" and state["busy"]["lti_attempts"] == 2
    busy = [when for item, when, _ in good.posts if item == "busy"]
    assert busy[1] - busy[0] >= 0.9  # Retry-After: 1 was honoured (backoff alone is 0.05 s)
    assert state["flaky"]["lti_status"] == "delivered" and state["flaky"]["lti_attempts"] == 3
    assert state["deleted"]["lti_status"] == "dead" and state["deleted"]["lti_last_status"] == 404
    assert [item for item, _, _ in good.posts].count("deleted") == 1  # final: never again
    refused = state["refused"]
    assert refused["lti_status"] == "pending" and refused["lti_last_status"] is None
    assert "token endpoint answered HTTP 400" in refused["lti_last_error"]
    assert "invalid_client" in refused["lti_last_error"] and broken.posts == []  # no token
    assert state["forgotten"]["lti_status"] == "dead"
    assert "not registered" in state["forgotten"]["lti_last_error"]
    assert {bearer for _, _, bearer in good.posts} == {"Bearer t1"}  # one token, cached
    db.close()
    good.server.shutdown()
    broken.server.shutdown()
