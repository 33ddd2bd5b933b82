"""The FastAPI app: signed submissions in, status out; grading and callbacks run beside it.

Intake does the least it can before answering: cap the body, verify the signature, validate
the payload, commit one row, wake a grading slot, answer 202. Everything slow happens in the
dispatcher (grading) and the outbox (callbacks), both fed from the database.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ValidationError

from grader import __version__
from grader.errors import Refused
from grader.service.callback import iso8601
from grader.service.db import Database, NewSubmission
from grader.service.dispatcher import Dispatcher
from grader.service.grading import Grader, make_grader
from grader.service.outbox import Outbox
from grader.service.schemas import (
    Accepted,
    CallbackState,
    Health,
    LtiState,
    Problem,
    SubmissionIn,
    SubmissionState,
)
from grader.service.score_outbox import ScoreOutbox
from grader.service.settings import Settings
from grader.service.signing import SignatureError, verify

DESCRIPTION = """\
Grades learners' notebooks for the PyTorch lab *Mini-Batch Gradient Descent*.

The LMS posts a submission signed as a [Standard Webhook](https://www.standardwebhooks.com)
and hears 202 at once; the signed result comes back to its `callback_url` with the LTI 1.3 AGS
score fields, and can also be polled at `status_url`. With LTI 1.3 platforms registered
(`--lti-config`), a submission's `lti` target gets the AGS Score posted straight to the
platform's gradebook; the tool's public keys are at `/.well-known/jwks.json`.
"""


BEARER = HTTPBearer(auto_error=False, description="The service's MBGD_API_TOKEN.")


class PayloadError(Refused):
    """A malformed payload: answered 422 (or ``status``) naming the field at fault."""

    def __init__(self, field: str | None, msg: str, kind: str, status: int = 422) -> None:
        super().__init__(msg)
        self.loc = ["body"] + ([field] if field else [])
        self.msg, self.kind, self.status = msg, kind, status


def _inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s JSON Schema with its ``$defs`` written in place: the schema goes into the
    OpenAPI document as is, where a ``#/$defs/...`` reference would point at nothing."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    return dict(resolve(schema))


def _problem(status: int, detail: Any, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


async def _read_capped(request: Request, cap: int) -> bytes | None:
    """The body, or None when it is over ``cap`` (decided from Content-Length when given)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > cap:
        return None
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > cap:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _parse_payload(body: bytes, content_type: str) -> SubmissionIn:
    media = content_type.split(";", 1)[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise PayloadError(
            None, f"send application/json, not {media or 'no Content-Type'}", "media", 415
        )
    try:
        data = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise PayloadError(None, f"the body is not valid JSON: {exc}", "json_invalid") from None
    if not isinstance(data, dict):
        raise PayloadError(None, "the body must be a JSON object", "object_type")
    try:
        return SubmissionIn.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or None
        raise PayloadError(field, first["msg"], first["type"]) from None


def _notebook_bytes(payload: SubmissionIn) -> bytes:
    if (payload.notebook is None) == (payload.notebook_base64 is None):
        raise PayloadError(
            "notebook", "give exactly one of notebook (JSON) or notebook_base64", "missing"
        )
    if payload.notebook is not None:
        return json.dumps(payload.notebook).encode("ascii")  # \u escapes survive as text
    assert payload.notebook_base64 is not None
    try:
        return base64.b64decode(re.sub(r"\s+", "", payload.notebook_base64), validate=True)
    except (binascii.Error, ValueError):
        raise PayloadError("notebook_base64", "not valid base64", "base64_invalid") from None


def _safe_name(submission_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", submission_id).strip("._")[:100] or "submission"


def _check_lti(payload: SubmissionIn, settings: Settings) -> str | None:
    """The submission's LTI target as stored (JSON), once its platform and host are known."""
    target = payload.lti
    if target is None:
        return None
    if settings.lti is None:
        raise PayloadError("lti", "LTI is off: the service has no --lti-config", "lti_off")
    platform = settings.lti.platform(target.issuer)
    if platform is None:
        raise PayloadError(
            "lti", f"issuer {target.issuer!r} is not a registered platform", "lti_issuer"
        )
    if not platform.lineitem_allowed(target.lineitem):
        raise PayloadError(
            "lti",
            "lineitem must be an https URL on one of this platform's lineitem_hosts",
            "lti_lineitem_not_allowed",
        )
    return target.model_dump_json()


def _lti_state(row: dict[str, Any]) -> LtiState | None:
    if not row["lti"]:
        return None
    target = json.loads(row["lti"])
    if row["lti_status"] is None:
        return LtiState(status="waiting", **target)
    return LtiState(
        status=row["lti_status"],
        **target,
        attempts=row["lti_attempts"],
        delivered_at=iso8601(row["lti_delivered_at"]) if row["lti_delivered_at"] else None,
        last_status=row["lti_last_status"],
        last_error=row["lti_last_error"] or None,
    )


def _state(row: dict[str, Any]) -> SubmissionState:
    started, finished = row["started_at"], row["finished_at"]
    callback = None
    if row["cb_status"] is not None:
        callback = CallbackState(
            status=row["cb_status"],
            webhook_id=row["cb_webhook_id"],
            attempts=row["cb_attempts"],
            delivered_at=iso8601(row["cb_delivered_at"]) if row["cb_delivered_at"] else None,
            last_status=row["cb_last_status"],
            last_error=row["cb_last_error"] or None,
        )
    done = row["status"] in ("graded", "failed")
    return SubmissionState(
        id=row["id"],
        submission_id=row["submission_id"],
        learner_id=row["learner_id"],
        assignment_id=row["assignment_id"],
        status=row["status"],
        result=json.loads(row["result"]) if row["result"] else None,
        error=row["error"] if done else None,
        attempts=row["attempts"],
        received_at=iso8601(row["received_at"]),
        started_at=iso8601(started) if started else None,
        finished_at=iso8601(finished) if finished and done else None,
        queued_seconds=round(started - row["received_at"], 3) if started else None,
        grading_seconds=round(finished - started, 3) if done and started and finished else None,
        reused_from=row["reused_from"],
        callback=callback,
        lti=_lti_state(row),
    )


def create_app(settings: Settings, grader: Grader | None = None) -> FastAPI:
    """The service; grading and delivery start with the app's lifespan."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = Database(settings.db_path)
        outbox, scores = Outbox(db, settings), ScoreOutbox(db, settings)

        def wake_outboxes() -> None:
            outbox.wake()
            scores.wake()

        dispatcher = Dispatcher(db, settings, grader or make_grader(settings), wake_outboxes)
        app.state.db, app.state.dispatcher = db, dispatcher
        await outbox.start()
        await scores.start()
        await dispatcher.start()
        try:
            yield
        finally:
            await dispatcher.stop()
            await scores.stop()
            await outbox.stop()
            db.close()

    app = FastAPI(
        title="mbgd-grader",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )

    def require_token(
        creds: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)],
    ) -> None:
        challenge = {"WWW-Authenticate": "Bearer"}
        if settings.api_token is None:
            raise HTTPException(401, "the status API is off: set MBGD_API_TOKEN", challenge)
        given = creds.credentials.encode() if creds is not None else b""
        if not hmac.compare_digest(given, settings.api_token.encode()):
            raise HTTPException(401, "missing or wrong bearer token", challenge)

    errors: dict[int | str, dict[str, Any]] = {
        401: {"model": Problem, "description": "Missing or bad signature, stale timestamp."},
        413: {"model": Problem, "description": "Body over the size cap."},
        415: {"model": Problem, "description": "Body is not application/json."},
        422: {"model": Problem, "description": "Malformed payload; `loc` names the field."},
        503: {"model": Problem, "description": "Not stored (database unavailable); retry."},
    }

    @app.post(
        "/v1/submissions",
        status_code=202,
        response_model=Accepted,
        responses=errors,
        summary="Submit a notebook for grading (signed Standard Webhook)",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _inline_schema(SubmissionIn)}},
            }
        },
    )
    async def create_submission(
        request: Request,
        webhook_id: Annotated[str | None, Header()] = None,
        webhook_timestamp: Annotated[str | None, Header()] = None,
        webhook_signature: Annotated[str | None, Header()] = None,
    ) -> Response:
        """Store the submission and answer 202; the same `webhook-id` again gets the same answer."""
        body = await _read_capped(request, settings.max_body_bytes)
        if body is None:
            return _problem(413, f"the body is over the {settings.max_body_bytes} byte cap")
        try:
            msg_id = verify(
                settings.webhook_keys, request.headers, body, tolerance=settings.tolerance
            )
        except SignatureError as exc:
            return _problem(401, str(exc))
        try:
            payload = _parse_payload(body, request.headers.get("content-type", ""))
            notebook = _notebook_bytes(payload)
            url = payload.callback_url
            if url is not None and settings.callback_key is None:
                raise PayloadError(
                    "callback_url", "callbacks are off (no MBGD_CALLBACK_SECRET)", "callback"
                )
            if url is not None and not settings.callback_host_allowed(url):
                raise PayloadError(
                    "callback_url",
                    "must be http(s) to a host on MBGD_CALLBACK_ALLOWED_HOSTS",
                    "callback_not_allowed",
                )
            lti = _check_lti(payload, settings)
        except PayloadError as exc:
            if exc.status != 422:
                return _problem(exc.status, exc.msg)
            return _problem(422, [{"loc": exc.loc, "msg": exc.msg, "type": exc.kind}])
        sub_id = "sub_" + secrets.token_hex(12)
        response = Accepted(
            id=sub_id,
            status="queued",
            status_url=str(request.url_for("get_submission", sub_id=sub_id)),
        ).model_dump_json()
        db: Database = request.app.state.db
        try:
            created, answer = await asyncio.to_thread(
                db.insert,
                NewSubmission(
                    id=sub_id,
                    webhook_id=msg_id,
                    submission_id=payload.submission_id,
                    learner_id=payload.learner_id,
                    assignment_id=payload.assignment_id,
                    callback_url=url,
                    lti=lti,
                    name=_safe_name(payload.submission_id),
                    notebook=notebook,
                    sha256=hashlib.sha256(notebook).hexdigest(),
                    response=response,
                ),
            )
        except sqlite3.Error as exc:  # disk full, locked too long: not stored, so say retry
            return _problem(503, f"could not store the submission ({exc}); retry later")
        if created:
            request.app.state.dispatcher.wake()
        return Response(answer, status_code=202, media_type="application/json")

    @app.get(
        "/v1/submissions/{sub_id}",
        response_model=SubmissionState,
        responses={401: {"model": Problem}, 404: {"model": Problem}},
        dependencies=[Depends(require_token)],
        summary="Where a submission is; its results.json once graded",
    )
    async def get_submission(sub_id: str, request: Request) -> SubmissionState:
        row = await asyncio.to_thread(request.app.state.db.get, sub_id)
        if row is None:
            raise HTTPException(404, f"no submission {sub_id}")
        return _state(row)

    @app.get(
        "/.well-known/jwks.json",
        responses={404: {"model": Problem, "description": "LTI is off (no --lti-config)."}},
        summary="The tool's public keys (JWK Set), for the LTI platforms it is registered on",
    )
    async def jwks() -> JSONResponse:
        """Platforms verify the tool's signed client assertions with these keys."""
        if settings.lti is None:
            raise HTTPException(404, "LTI is off: the service has no --lti-config")
        return JSONResponse(settings.lti.jwks(), headers={"cache-control": "max-age=300"})

    @app.get("/healthz", response_model=Health, summary="Liveness, with queue counts")
    async def healthz(request: Request) -> Health:
        counts = await asyncio.to_thread(request.app.state.db.counts)
        return Health(status="ok", mode=request.app.state.dispatcher.grader.mode, **counts)

    return app
