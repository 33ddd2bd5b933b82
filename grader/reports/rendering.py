"""What every report shares: its Jinja environment and how a report file reaches the disk."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jinja2


def environment(filters: Mapping[str, Callable[..., Any]]) -> jinja2.Environment:
    """The templates in grader/reports/templates, autoescaped, with these extra filters.

    Everything a report shows may come from a learner: autoescape is on for every template
    (they are .html.j2, which `select_autoescape` would miss), and an undefined name is an
    error rather than an empty string."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("grader.reports", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(filters)
    return env


def write_atomic(path: Path, text: str) -> None:
    """Write `text` exactly (no newline translation), mode 0644, all or nothing: a reader (a
    browser, an LMS import) never sees half a file, even if the writer is killed."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; a report is meant to be read
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
