"""Where a URL points, as the allowlists compare it: ``host:port``, or nothing for a URL that
may not be called at all (not http(s), no host, credentials in it)."""

from __future__ import annotations

from urllib.parse import urlsplit


def host_port(url: str) -> str | None:
    """``host:port`` of an http(s) URL without credentials, or None when it is not one."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    if parts.username or parts.password:
        return None
    port = port or (443 if parts.scheme == "https" else 80)
    return f"{parts.hostname.lower()}:{port}"
