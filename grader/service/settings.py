"""Service settings: flags for where things live, the environment for secrets.

Secrets never come from flags (they would show in `ps` and shell history). Everything else has
a default that works on a laptop: SQLite next to the current directory, the local kernel pool.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from grader.errors import UsageError
from grader.execution.limits import RunLimits
from grader.service.hosts import host_port
from grader.service.signing import DEFAULT_TOLERANCE, parse_secrets

if TYPE_CHECKING:
    from grader.service.lti_config import LtiConfig

ENV_WEBHOOK_SECRET = "MBGD_WEBHOOK_SECRET"
ENV_CALLBACK_SECRET = "MBGD_CALLBACK_SECRET"
ENV_API_TOKEN = "MBGD_API_TOKEN"
ENV_ALLOWED_HOSTS = "MBGD_CALLBACK_ALLOWED_HOSTS"
DEFAULT_GRADE_TIMEOUT: float = RunLimits.model_fields["total_timeout"].default


class SettingsError(UsageError, ValueError):
    """The service cannot start as configured; the text says what to set."""


@dataclass(frozen=True)
class Settings:
    """Everything the service needs, read once at start-up."""

    webhook_keys: list[bytes]
    callback_key: bytes | None = None
    api_token: str | None = None
    allowed_hosts: frozenset[str] = field(default_factory=frozenset)
    db_path: Path = Path("mbgd-service.sqlite3")
    broker: str | None = None
    slots: int = field(default_factory=lambda: os.cpu_count() or 1)
    max_body_bytes: int = 16 * 1024 * 1024  # a 10 MiB notebook, base64-encoded, plus fields
    tolerance: int = DEFAULT_TOLERANCE  # seconds a webhook's timestamp may be off
    max_grade_attempts: int = 3  # a notebook that kills the service this often is failed
    callback_timeout: float = 10.0
    callback_backoff: float = 2.0  # first retry after ~2 s, then doubling
    callback_backoff_cap: float = 3600.0
    callback_max_attempts: int = 15  # about a day and a half with the defaults
    # Seconds one notebook may run in total (its RunLimits.total_timeout), locally or on a
    # worker; in broker mode it also sizes the task's time limits and the wait for its answer.
    grade_timeout: float = DEFAULT_GRADE_TIMEOUT
    # LTI 1.3 platform registrations (--lti-config / MBGD_LTI_CONFIG): None when LTI is off.
    lti: LtiConfig | None = None

    def callback_host_allowed(self, url: str) -> bool:
        """True when ``url`` is http(s) to a host (or host:port) on the allowlist."""
        where = host_port(url)
        if where is None:
            return False
        host = where.rsplit(":", 1)[0]
        return host in self.allowed_hosts or where in self.allowed_hosts


def db_path_from_url(url: str) -> Path:
    """``sqlite:///relative.db``, ``sqlite:////abs.db`` or a plain path -> a file path."""
    if "://" not in url:
        return Path(url)
    scheme, rest = url.split("://", 1)
    if scheme != "sqlite":
        raise SettingsError(f"--db: only sqlite:///PATH is supported, not {scheme}://")
    if not rest.startswith("/") or rest == "/":
        raise SettingsError("--db: write sqlite:///relative/path.db or sqlite:////abs/path.db")
    return Path(rest[1:])


def _env_float(env: dict[str, str], name: str, default: float) -> float:
    value = env.get(name)
    if value is None or value == "":
        return default
    try:
        return float(value)
    except ValueError:
        raise SettingsError(f"{name} must be a number, not {value!r}") from None


def from_environment(
    *,
    db: str | None = None,
    broker: str | None = None,
    slots: int | None = None,
    lti_config: str | None = None,
    env: dict[str, str] | None = None,
) -> Settings:
    """Settings from CLI values plus ``MBGD_*`` environment variables; explain what is missing."""
    env = dict(os.environ if env is None else env)
    raw_webhook = env.get(ENV_WEBHOOK_SECRET, "")
    if not raw_webhook.strip():
        raise SettingsError(
            f"set {ENV_WEBHOOK_SECRET} to the LMS's signing secret (whsec_<base64>); "
            "several secrets separated by spaces are accepted during a key rotation"
        )
    try:
        webhook_keys = parse_secrets(raw_webhook)
        callback_keys = parse_secrets(env.get(ENV_CALLBACK_SECRET, ""))
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
    lti = None
    lti_path = lti_config or env.get("MBGD_LTI_CONFIG", "")
    if lti_path:
        from grader.service.lti_config import LtiConfigError, load

        try:
            lti = load(lti_path)
        except LtiConfigError as exc:
            raise SettingsError(str(exc)) from None
    hosts = frozenset(
        h.strip().lower() for h in env.get(ENV_ALLOWED_HOSTS, "").split(",") if h.strip()
    )
    default: dict[str, Any] = {f.name: f.default for f in fields(Settings)}  # the fields above
    default_slots = os.cpu_count() or 1
    if broker:
        default_slots = max(16, default_slots)  # the workers grade; slots only wait for them
    return Settings(
        webhook_keys=webhook_keys,
        callback_key=callback_keys[0] if callback_keys else None,
        api_token=env.get(ENV_API_TOKEN) or None,
        allowed_hosts=hosts,
        db_path=db_path_from_url(db or env.get("MBGD_DB", "") or str(default["db_path"])),
        broker=broker or None,
        slots=slots or int(_env_float(env, "MBGD_SLOTS", default_slots)),
        max_body_bytes=int(_env_float(env, "MBGD_MAX_BODY_BYTES", default["max_body_bytes"])),
        callback_backoff=_env_float(env, "MBGD_CALLBACK_BACKOFF", default["callback_backoff"]),
        callback_backoff_cap=_env_float(
            env, "MBGD_CALLBACK_BACKOFF_CAP", default["callback_backoff_cap"]
        ),
        callback_max_attempts=int(
            _env_float(env, "MBGD_CALLBACK_MAX_ATTEMPTS", default["callback_max_attempts"])
        ),
        callback_timeout=_env_float(env, "MBGD_CALLBACK_TIMEOUT", default["callback_timeout"]),
        grade_timeout=_env_float(env, "MBGD_GRADE_TIMEOUT", default["grade_timeout"]),
        lti=lti,
    )
