"""Harness side of the in-kernel probe: the code we inject and the reader of its records.

The probe itself lives in `grader.kernel_probe` (a normal module so it is linted and tested,
but it only ever runs inside the learner's kernel). This module builds the one silent execute
that installs it and turns the records it publishes back into validated models.

Everything that comes back is untrusted: a record is read only from a display_data message
carrying this run's random MIME type, is size-capped before parsing, parsed with `json.loads`
(never pickle; NaN and infinities are allowed tokens) and validated into the pydantic models.
Anything malformed is dropped and counted in a note rather than trusted or raised.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from grader.models import Axes, Figure, Variable

MAX_RECORD_BYTES = 8 << 20  # one figure/variables record
MAX_TOTAL_BYTES = 64 << 20  # everything one run may send us
MAX_FIGURES = 500
MAX_VARIABLES = 200
MAX_NOTES = 20
_SOURCE = Path(__file__).with_name("kernel_probe.py").read_text(encoding="utf-8")


def new_mime() -> str:
    """A MIME type unique to one run, so stray output cannot be mistaken for a record."""
    return f"application/x-mbgd-probe-{secrets.token_hex(8)}+json"


def install_code(mime: str, seed_override: int | None) -> str:
    """Source for the silent execute that installs the probe without touching user globals."""
    return (
        "def _mbgd_boot(src, mime, seed):\n"
        "    import builtins\n"
        "    ns = {'__name__': '_mbgd_probe_src', 'get_ipython': get_ipython,\n"
        "          '__builtins__': dict(vars(builtins))}  # later patches of builtins miss us\n"
        "    exec(compile(src, '<mbgd-probe>', 'exec'), ns)\n"
        "    ns['install'](mime, seed)\n"
        f"_mbgd_boot({_SOURCE!r}, {mime!r}, {seed_override!r})\n"
        "del _mbgd_boot\n"
    )


FLUSH_CODE = "import sys as _s; _s.modules['_mbgd_probe'].flush(); del _s"


class ProbeReader:
    """Accumulates the probe's records for one run, attributing each to a notebook cell."""

    def __init__(self, mime: str) -> None:
        self.mime = mime
        self.figures: list[Figure] = []
        self.variables: dict[str, Variable] = {}
        self.notes: list[str] = []
        self._bytes = 0
        self._dropped = 0

    def wants(self, msg: dict[str, Any]) -> bool:
        """True if this iopub message is one of our records (the caller then drops it)."""
        if msg.get("msg_type") != "display_data":
            return False
        data = msg.get("content", {}).get("data")
        return isinstance(data, dict) and self.mime in data

    def feed(self, msg: dict[str, Any], cell: int) -> None:
        """Read one record published while `cell` was running."""
        text = msg["content"]["data"][self.mime]
        if not isinstance(text, str) or len(text) > MAX_RECORD_BYTES:
            self._dropped += 1
            return
        self._bytes += len(text)
        if self._bytes > MAX_TOTAL_BYTES:
            self._dropped += 1
            return
        try:
            record = json.loads(text)
            kind = record.get("kind")
            if kind == "figure":
                self._figure(record, cell)
            elif kind == "variables":
                self._variables(record, cell)
            elif kind == "note":
                self._note(str(record.get("text", ""))[:500], cell)
            else:
                self._dropped += 1
        except (ValueError, TypeError, AttributeError, ValidationError):
            self._dropped += 1

    def _figure(self, record: dict[str, Any], cell: int) -> None:
        if len(self.figures) >= MAX_FIGURES:
            self._dropped += 1
            return
        axes = [Axes.model_validate(ax) for ax in record.get("axes", [])]
        self.figures.append(Figure(cell=cell, axes=axes))

    def _variables(self, record: dict[str, Any], cell: int) -> None:
        for name in record.get("deleted", []):
            self.variables.pop(str(name), None)
        for name, raw in dict(record.get("set", {})).items():
            if not isinstance(name, str) or not name.isidentifier():
                continue
            if name not in self.variables and len(self.variables) >= MAX_VARIABLES:
                continue
            self.variables[name] = Variable.model_validate({**raw, "name": name, "cell": cell})

    def _note(self, text: str, cell: int) -> None:
        if len(self.notes) < MAX_NOTES and text:
            line = f"{text} (cell {cell})"
            if not any(n.startswith(text) for n in self.notes):
                self.notes.append(line)

    def finish(self) -> list[str]:
        """Notes about the probe channel itself (dropped records)."""
        if self._dropped:
            return [f"{self._dropped} probe record(s) were malformed or too large and ignored"]
        return []
