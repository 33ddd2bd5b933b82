"""LTI 1.3 platform registrations: who may receive scores, with which key, at which hosts.

An administrator registers the tool on each platform (Canvas, Moodle, Open edX ...) and writes
what the platform gave back into a TOML file, one ``[[platform]]`` table each::

    [[platform]]
    issuer = "https://canvas.instructure.com"
    client_id = "10000000000001"
    deployment_id = "1:abc"
    auth_token_url = "https://sso.canvaslms.com/login/oauth2/token"
    private_key_file = "keys/tool.pem"        # relative to this file
    key_id = "mbgd-2026"
    lineitem_hosts = ["school.instructure.com"]  # default: the issuer's host

Everything is checked when the service starts (a missing or unreadable key, a key that is not
an RSA private key, a duplicate issuer, a URL that is not https): a mistake here would
otherwise surface hours later as scores that never arrive. The allowlist comes from the same
file, per platform, so a platform's access token is only ever sent to that platform's hosts.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from joserfc.errors import JoseError
from joserfc.jwk import RSAKey

from grader.errors import UsageError
from grader.service.hosts import host_port

ENV_LTI_CONFIG = "MBGD_LTI_CONFIG"
MIN_KEY_BITS = 2048
LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})
REQUIRED = ("issuer", "client_id", "deployment_id", "auth_token_url", "private_key_file", "key_id")
OPTIONAL = ("lineitem_hosts",)


class LtiConfigError(UsageError, ValueError):
    """The LTI configuration cannot be used; the text names the file, platform and field."""


def _secure(url: str) -> bool:
    """LTI 1.3 runs over TLS; plain http is allowed only to this machine (tests, a tunnel)."""
    parts = urlsplit(url)
    return parts.scheme == "https" or (
        parts.scheme == "http" and (parts.hostname or "").lower() in LOOPBACK
    )


@dataclass(frozen=True)
class Platform:
    """One registration of the tool on one platform (an LMS), keyed by its ``issuer``."""

    issuer: str
    client_id: str
    deployment_id: str
    auth_token_url: str
    key_id: str
    private_key: RSAKey
    lineitem_hosts: frozenset[str]  # host:port, where this platform's line items live

    def lineitem_allowed(self, url: str) -> bool:
        """True when ``url`` is http(s) to one of this platform's line-item hosts."""
        hp = host_port(url)
        return hp is not None and _secure(url) and hp in self.lineitem_hosts


@dataclass(frozen=True)
class LtiConfig:
    """Every platform registration, read once at start-up."""

    path: Path
    platforms: dict[str, Platform]

    def platform(self, issuer: str) -> Platform | None:
        return self.platforms.get(issuer)

    def jwks(self) -> dict[str, Any]:
        """The tool's public keys as a JWK Set (one per ``key_id``), for the platforms."""
        keys: dict[str, dict[str, Any]] = {}
        for platform in self.platforms.values():
            keys[platform.key_id] = platform.private_key.as_dict(private=False)
        return {"keys": list(keys.values())}


def _text(where: str, table: dict[str, Any], name: str) -> str:
    value = table.get(name)
    if not isinstance(value, str) or not value.strip():
        raise LtiConfigError(f"{where}: '{name}' must be a non-empty string")
    return value.strip()


def _url(where: str, table: dict[str, Any], name: str) -> str:
    value = _text(where, table, name)
    if host_port(value) is None or not _secure(value):
        raise LtiConfigError(
            f"{where}: '{name}' must be an https:// URL (http:// only to localhost), not {value!r}"
        )
    return value


def _load_key(where: str, path: Path, key_id: str) -> RSAKey:
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise LtiConfigError(
            f"{where}: private_key_file {str(path)!r} cannot be read: {exc.strerror}"
        ) from None
    try:
        key = RSAKey.import_key(pem, parameters={"kid": key_id, "use": "sig", "alg": "RS256"})
    except (JoseError, ValueError, TypeError) as exc:
        raise LtiConfigError(
            f"{where}: private_key_file {str(path)!r} is not an RSA private key in PEM: {exc}"
        ) from None
    if not key.is_private:
        raise LtiConfigError(
            f"{where}: private_key_file {str(path)!r} holds a public key; the tool needs its "
            "private key (the platform gets the public half from /.well-known/jwks.json)"
        )
    bits = key.raw_value.key_size
    if bits < MIN_KEY_BITS:
        raise LtiConfigError(
            f"{where}: the key in {str(path)!r} has {bits} bits; LTI asks for {MIN_KEY_BITS}+"
        )
    return key


def _platform(where: str, table: dict[str, Any], base: Path) -> Platform:
    unknown = sorted(set(table) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise LtiConfigError(f"{where}: unknown field(s) {', '.join(unknown)}")
    issuer = _text(where, table, "issuer")
    where = f"{where} (issuer {issuer!r})"
    token_url = _url(where, table, "auth_token_url")
    key_id = _text(where, table, "key_id")
    key_path = base / Path(_text(where, table, "private_key_file")).expanduser()
    raw_hosts = table.get("lineitem_hosts")
    if raw_hosts is None:
        issuer_host = host_port(issuer)
        if issuer_host is None:
            raise LtiConfigError(
                f"{where}: the issuer is not a URL; list the hosts of its line items in "
                "'lineitem_hosts'"
            )
        hosts = frozenset({issuer_host})
    else:
        if not isinstance(raw_hosts, list) or not all(
            isinstance(h, str) and h.strip() for h in raw_hosts
        ):
            raise LtiConfigError(f"{where}: 'lineitem_hosts' must be a list of host names")
        hosts = frozenset(_normal_host(where, h) for h in raw_hosts)
    return Platform(
        issuer=issuer,
        client_id=_text(where, table, "client_id"),
        deployment_id=_text(where, table, "deployment_id"),
        auth_token_url=token_url,
        key_id=key_id,
        private_key=_load_key(where, key_path, key_id),
        lineitem_hosts=hosts,
    )


def _normal_host(where: str, host: str) -> str:
    """``host`` or ``host:port`` (or a URL) as ``host:port``; https's 443 when no port."""
    text = host.strip().lower()
    hp = host_port(text if "://" in text else f"https://{text}")
    if hp is None:
        raise LtiConfigError(f"{where}: {host!r} in 'lineitem_hosts' is not a host name")
    return hp


def load(path: str | Path) -> LtiConfig:
    """Read and check the registrations in ``path``; `LtiConfigError` says what is wrong."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise LtiConfigError(f"LTI config {str(path)!r} cannot be read: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise LtiConfigError(f"LTI config {str(path)!r} is not valid TOML: {exc}") from None
    tables = data.get("platform")
    if (
        not isinstance(tables, list)
        or not tables
        or not all(isinstance(t, dict) for t in tables)
        or set(data) != {"platform"}
    ):
        raise LtiConfigError(
            f"LTI config {str(path)!r}: write one [[platform]] table per registration "
            "(and nothing else at the top level)"
        )
    platforms: dict[str, Platform] = {}
    key_of: dict[str, Platform] = {}
    for n, table in enumerate(tables, 1):
        platform = _platform(f"{path}: [[platform]] #{n}", table, path.parent)
        if platform.issuer in platforms:
            raise LtiConfigError(
                f"{path}: [[platform]] #{n}: issuer {platform.issuer!r} is registered twice "
                "(a platform has one registration per tool here)"
            )
        other = key_of.get(platform.key_id)
        if other is not None and other.private_key.as_dict() != platform.private_key.as_dict():
            raise LtiConfigError(
                f"{path}: [[platform]] #{n}: key_id {platform.key_id!r} names another key "
                f"than for {other.issuer!r}; give each key its own key_id"
            )
        platforms[platform.issuer] = platform
        key_of[platform.key_id] = platform
    return LtiConfig(path=path, platforms=platforms)
