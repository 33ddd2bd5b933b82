"""LTI 1.3 Assignment and Grade Services: post a Score to a platform's line item.

The tool authenticates with OAuth 2 client credentials and a signed JWT client assertion
(``private_key_jwt``, RFC 7523, as the 1EdTech Security Framework asks): Authlib builds and
signs the assertion, this module sends it, keeps the access token per platform until it
expires, and POSTs the Score to ``{lineitem}/scores``. A Score refused with 401 or 403 (Open
edX's lti-consumer-xblock answers a token it no longer accepts with 403) is posted once more
at once with a new token. Everything a platform sends back is read with a size cap; redirects
are never followed.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from authlib.oauth2.rfc6749.parameters import prepare_token_request
from authlib.oauth2.rfc6749.wrappers import OAuth2Token
from authlib.oauth2.rfc7523 import private_key_jwt_sign
from authlib.oauth2.rfc7523.client import ASSERTION_TYPE

from grader.service.callback import ags_score
from grader.service.capped import TooLarge, read_capped
from grader.service.db import LtiScore
from grader.service.lti_config import Platform

SCOPE_SCORE = "https://purl.imsglobal.org/spec/lti-ags/scope/score"
SCORE_MEDIA_TYPE = "application/vnd.ims.lis.v1.score+json"
ASSERTION_LIFETIME = 300  # seconds: the assertion is used at once, a short life limits replay
TOKEN_LEEWAY = 30  # seconds before its expiry that a cached token is renewed
MAX_TOKEN_RESPONSE = 64 * 1024
MAX_ERROR_TEXT = 300
TOKEN_REFUSED = (401, 403)
# Open edX (lti-consumer-xblock, LtiAgsScoreSerializer.validate_timestamp): the line item
# already holds a Score for this user with exactly this timestamp. Rendered by DRF as
# {"timestamp":["Score already exists for the provided timestamp"]}, word for word since 2020.
OPENEDX_SCORE_EXISTS = "Score already exists for the provided timestamp"


class TokenError(Exception):
    """The platform's token endpoint did not give us an access token; the text says why."""


def scores_url(lineitem: str) -> str:
    """The Score endpoint of a line item: ``/scores`` appended to its path, before any query.

    AGS line item URLs may carry a query (``.../lineitems/7?type_id=1``); the scores URL keeps
    it after the new path segment. A fragment is never sent.
    """
    parts = urlsplit(lineitem)
    path = parts.path.rstrip("/") + "/scores"
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def already_accepted(status: int, body: bytes) -> bool:
    """Whether a refusal says the platform already holds this very Score.

    Only Open edX's answer to a Score whose user and line item already have a Score with the
    same ``timestamp``: 400 and a JSON body that is exactly
    ``{"timestamp": ["Score already exists for the provided timestamp"]}`` (any spacing). The
    outbox re-posts a Score byte for byte, the same ``timestamp`` included (see
    `build_score`), so that answer means an earlier post of it was stored and only its answer
    was lost. Anything more in the body (another field refused, another message) means the
    Score was refused for another reason and is not taken as delivered.
    """
    if status != 400:
        return False
    try:
        data = json.loads(body)
    except ValueError:
        return False
    return data == {"timestamp": [OPENEDX_SCORE_EXISTS]}


@dataclass(frozen=True)
class Outcome:
    """One attempt to post a Score: the HTTP status (None when none came) and what it means.

    ``already``: the platform refused the post because it already holds this Score (see
    `already_accepted`); that is delivered too, and ``error`` says so.
    """

    status: int | None
    error: str
    retry_after: float | None = None
    already: bool = False

    @property
    def delivered(self) -> bool:
        return self.already or (self.status is not None and 200 <= self.status < 300)

    @property
    def final(self) -> bool:
        """A 4xx other than 401 (token) and 429 (slow down): sending again cannot help.

        `AgsClient.post_score` has already tried a new token after a 401 or 403, so a 403
        here came with a fresh token too.
        """
        status = self.status
        if self.already or status is None:
            return False
        return 400 <= status < 500 and status not in (401, 429)


def _retry_after(value: str | None) -> float | None:
    if value is None or not value.strip().isdigit():
        return None
    return float(min(int(value.strip()), 3600))


class AgsClient:
    """Posts Scores for every registered platform; one cached access token per platform."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self._tokens: dict[str, OAuth2Token] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def forget_token(self, platform: Platform, token: str | None = None) -> None:
        """The platform refused ``token`` (any cached one if None): the next use fetches anew.

        A cached token other than ``token`` is kept: another post has already replaced it.
        """
        cached = self._tokens.get(platform.issuer)
        if cached is not None and (token is None or cached["access_token"] == token):
            del self._tokens[platform.issuer]

    def client_assertion(self, platform: Platform) -> str:
        """A fresh signed JWT: iss = sub = client_id, aud = the token URL, unique jti."""
        return str(
            private_key_jwt_sign(
                platform.private_key,
                client_id=platform.client_id,
                token_endpoint=platform.auth_token_url,
                alg="RS256",
                header={"kid": platform.key_id, "typ": "JWT"},
                expires_in=ASSERTION_LIFETIME,
            )
        )

    async def token(self, platform: Platform, refused: str | None = None) -> str:
        """A valid access token for ``platform``: the cached one, or a new one.

        ``refused``: a token the platform just refused; it is never returned again (a new one
        is fetched unless another post has already put a new one in the cache).
        """
        lock = self._locks.setdefault(platform.issuer, asyncio.Lock())
        async with lock:  # many scores due at once share one token request
            if refused is not None:
                self.forget_token(platform, refused)
            cached = self._tokens.get(platform.issuer)
            if cached is not None and not cached.is_expired(leeway=TOKEN_LEEWAY):
                return str(cached["access_token"])
            token = await self._fetch_token(platform)
            self._tokens[platform.issuer] = token
            return str(token["access_token"])

    async def _fetch_token(self, platform: Platform) -> OAuth2Token:
        body = prepare_token_request(
            "client_credentials",
            scope=SCOPE_SCORE,
            client_assertion_type=ASSERTION_TYPE,
            client_assertion=self.client_assertion(platform),
        )
        headers = {
            "content-type": "application/x-www-form-urlencoded",
            "accept": "application/json",
        }
        try:
            async with self.client.stream(
                "POST", platform.auth_token_url, content=body.encode("ascii"), headers=headers
            ) as response:
                raw = await read_capped(response, MAX_TOKEN_RESPONSE)
                status = response.status_code
        except TooLarge as too_large:
            raise TokenError(f"the token endpoint sent {too_large}") from None
        except httpx.HTTPError as exc:
            raise TokenError(f"token endpoint: {type(exc).__name__}: {exc}"[:500]) from None
        text = raw.decode("utf-8", "replace")
        if status != 200:
            raise TokenError(f"token endpoint answered HTTP {status}: {text[:MAX_ERROR_TEXT]}")
        try:
            data = json.loads(text)
        except ValueError:
            raise TokenError("token endpoint: the answer is not JSON") from None
        if not isinstance(data, dict) or not isinstance(data.get("access_token"), str):
            raise TokenError("token endpoint: the answer has no access_token")
        if str(data.get("token_type", "bearer")).lower() != "bearer":
            raise TokenError(f"token endpoint: token_type {data.get('token_type')!r}, not Bearer")
        expires_in = data.get("expires_in")
        if expires_in is not None and not isinstance(expires_in, int):
            data.pop("expires_in")  # unusable: rely on the platform's 401 to renew it
        data.pop("expires_at", None)
        return OAuth2Token.from_dict(data)

    async def post_score(self, platform: Platform, lineitem: str, score: bytes) -> Outcome:
        """One attempt: token, then POST; never raises for what the platform does.

        A 401 or 403 drops the token and posts the same bytes once more with a new one (Open
        edX answers 403 to a token it no longer accepts, e.g. after its key was rotated); a
        refusal of the new token too is returned as it is (a 403 is then final).
        """
        try:
            token = await self.token(platform)
        except TokenError as exc:
            return Outcome(status=None, error=str(exc))
        outcome = await self._post(token, lineitem, score)
        if outcome.status not in TOKEN_REFUSED:
            return outcome
        try:
            token = await self.token(platform, refused=token)
        except TokenError as exc:
            return Outcome(status=None, error=f"{outcome.error}; then {exc}"[:500])
        outcome = await self._post(token, lineitem, score)
        if outcome.status in TOKEN_REFUSED:
            self.forget_token(platform, token)
            error = f"{outcome.error} (refused with a new access token too)"
            return replace(outcome, error=error)
        return outcome

    async def _post(self, token: str, lineitem: str, score: bytes) -> Outcome:
        headers = {
            "authorization": f"Bearer {token}",
            "content-type": SCORE_MEDIA_TYPE,
        }
        try:
            async with self.client.stream(
                "POST", scores_url(lineitem), content=score, headers=headers
            ) as response:
                status = response.status_code
                retry_after = _retry_after(response.headers.get("retry-after"))
                detail = b""
                if status >= 300:
                    async for chunk in response.aiter_bytes():
                        detail += chunk
                        if len(detail) > MAX_ERROR_TEXT:
                            break
        except httpx.HTTPError as exc:
            return Outcome(status=None, error=f"{type(exc).__name__}: {exc}"[:500])
        error = "" if 200 <= status < 300 else f"HTTP {status}"
        text = detail[:MAX_ERROR_TEXT].decode("utf-8", "replace").strip()
        if text:
            error += f": {text}"
        if len(detail) <= MAX_ERROR_TEXT and already_accepted(status, detail):
            error = f"the platform already had this Score ({error})"
            return Outcome(status=status, error=error, already=True)
        return Outcome(status=status, error=error, retry_after=retry_after)


def score_body(score: dict[str, Any]) -> bytes:
    """The bytes posted, fixed once: every retry, after any restart, sends the same Score.

    They are stored in the outbox row with the result and never built again, so a re-post
    carries the same ``timestamp``: a platform that stored the first post keeps one Score,
    and Open edX's "Score already exists for the provided timestamp" can be taken as
    delivered (`already_accepted`).
    """
    return json.dumps(score, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def build_score(
    row: Any, *, score: float | None, max_score: float | None, comment: str, finished_at: float
) -> LtiScore | None:
    """The Score row for a finished submission with an LTI target (``row``: its database row).

    ``userId`` is the launch's ``sub`` from the target, not the LMS's own learner id. The
    ``timestamp`` is ``finished_at``, the moment the result was recorded, written into the
    body here once: the outbox posts these bytes on every attempt and after every restart, so
    every re-post of this Score has the same timestamp (which is what makes a re-post safe,
    and Open edX's duplicate-timestamp answer mean "delivered"). A submission graded again
    (killed mid-grading) gets a new row only if the first result was never recorded.
    """
    if not row["lti"]:
        return None
    target = json.loads(row["lti"])
    body = ags_score(
        learner_id=target["user_id"],
        score=score,
        max_score=max_score,
        comment=comment,
        timestamp=finished_at,
    )
    return LtiScore(issuer=target["issuer"], lineitem=target["lineitem"], body=score_body(body))
