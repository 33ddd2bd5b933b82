"""Harness side of the in-kernel probe: the code we inject and the reader of its records.

The probe itself lives in `grader.execution.in_kernel.probe` (a normal module so it is linted
and tested, but it only ever runs inside the learner's kernel). This module builds the one
silent execute that installs it and turns the records it publishes back into validated models.

Everything that comes back is untrusted: a record is read only from a display_data message
carrying this run's random MIME type, is size-capped before parsing, parsed with `json.loads`
(never pickle; NaN and infinities are allowed tokens) and validated into the pydantic models.
Anything malformed is dropped and counted in a note rather than trusted or raised.

A class sends the same records over and over (the lab's own cells draw the same figures for
every learner, and a reused prefix replays them), so decoded records are kept by their text
(`_decode`, a small bounded cache of short records): JSON is parsed once per distinct record
per process; validation into fresh models still happens for every run, so no two results
share a model object.

The probe's own caps (values per variable or line, lines per axes, axes per figure, figures,
variables) are enforced here again, plus caps on everything kept for one run (lines, values),
so what the checks later walk is bounded whatever the kernel sends: a record over any of them
is dropped whole. Short texts (titles, labels, legend entries, type names) are cut.
"""

from __future__ import annotations

import json
import secrets
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from grader.models import Axes, Figure, Variable

MAX_RECORD_BYTES = 8 << 20  # one figure/variables record
MAX_TOTAL_BYTES = 64 << 20  # everything one run may send us
MAX_FIGURES = 500
MAX_AXES = 20  # per figure
MAX_LINES = 50  # per axes
MAX_LEGEND = 50  # legend entries per axes
MAX_VALUES = 10_000  # per variable, and per line's x or y
MAX_VARIABLES = 200
MAX_FIGURE_LINES = 5_000  # lines kept over all figures of a run
MAX_FIGURE_VALUES = 1_000_000  # x and y values kept over all figures of a run
MAX_TEXT = 500  # characters of a title, label, legend entry
MAX_NOTES = 20
CACHED_RECORD_BYTES = 32 << 10  # records up to this size are decoded once per process ...
CACHED_RECORDS = 512  # ... and this many are kept: at most 16 MB of text (a few times that
# decoded); the solved lab sends ~60 distinct records of ~5 kB
INPUT_MESSAGE = (
    "input() is not available when the notebook is graded: remove the call or give the "
    "value directly"
)
PROBE_SETTINGS = {  # what the probe inside the kernel is told (`install`)
    "MAX_VALUES": MAX_VALUES,
    "MAX_CANDIDATES": MAX_VARIABLES,
    "MAX_LINES": MAX_LINES,
    "MAX_AXES": MAX_AXES,
    "MAX_FIGURES": MAX_FIGURES,
    "MAX_RECORD_CHARS": MAX_RECORD_BYTES,
    "INPUT_MESSAGE": INPUT_MESSAGE,
}
_SOURCE = (Path(__file__).parent / "in_kernel" / "probe.py").read_text(encoding="utf-8")


def new_mime() -> str:
    """A MIME type unique to one run, so stray output cannot be mistaken for a record."""
    return f"application/x-mbgd-probe-{secrets.token_hex(8)}+json"


def install_code(mime: str, seed_override: int | None) -> str:
    """Source for the silent execute that installs the probe without touching user globals."""
    return (
        "def _mbgd_boot(src, mime, seed, settings):\n"
        "    import builtins\n"
        "    ns = {'__name__': '_mbgd_probe_src', 'get_ipython': get_ipython,\n"
        "          '__builtins__': dict(vars(builtins))}  # later patches of builtins miss us\n"
        "    exec(compile(src, '<mbgd-probe>', 'exec'), ns)\n"
        "    ns['install'](mime, seed, settings)\n"
        f"_mbgd_boot({_SOURCE!r}, {mime!r}, {seed_override!r}, {PROBE_SETTINGS!r})\n"
        "del _mbgd_boot\n"
    )


FLUSH_CODE = "import sys as _s; _s.modules['_mbgd_probe'].flush(); del _s"


@lru_cache(maxsize=CACHED_RECORDS)
def _decode_cached(text: str) -> Any:
    return json.loads(text)


def _decode(text: str) -> Any:
    """json.loads, remembered for short texts. The value is shared between callers: it is
    only read (validated into new models), never changed."""
    if len(text) <= CACHED_RECORD_BYTES:
        return _decode_cached(text)
    return json.loads(text)


class ProbeReader:
    """Accumulates the probe's records for one run, attributing each to a notebook cell."""

    def __init__(self, mime: str) -> None:
        self.mime = mime
        self.figures: list[Figure] = []
        self.variables: dict[str, Variable] = {}
        self.notes: list[str] = []
        self._bytes = 0
        self._dropped = 0
        self._lines = 0  # kept in self.figures
        self._values = 0  # kept in self.figures

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
            record = _decode(text)
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
        raw_axes = record.get("axes", [])
        if len(self.figures) >= MAX_FIGURES or not isinstance(raw_axes, list):
            self._dropped += 1
            return
        lines = values = 0
        if len(raw_axes) > MAX_AXES:
            raise ValueError("too many axes")
        for ax in raw_axes:
            ax_lines = ax.get("lines", [])
            if len(ax_lines) > MAX_LINES or len(ax.get("legend", [])) > MAX_LEGEND:
                raise ValueError("too many lines")
            for line in ax_lines:
                size_x, size_y = len(line.get("x", [])), len(line.get("y", []))
                if max(size_x, size_y) > MAX_VALUES:
                    raise ValueError("too many values")
                values += size_x + size_y
            lines += len(ax_lines)
        if self._lines + lines > MAX_FIGURE_LINES or self._values + values > MAX_FIGURE_VALUES:
            self._dropped += 1
            return
        axes = [_short_texts(Axes.model_validate(ax)) for ax in raw_axes]
        self.figures.append(Figure(cell=cell, axes=axes))
        self._lines += lines
        self._values += values

    def _variables(self, record: dict[str, Any], cell: int) -> None:
        changed = dict(record.get("set", {}))
        for raw in changed.values():
            if len(raw.get("values", [])) > MAX_VALUES:
                raise ValueError("too many values")
        for name in record.get("deleted", []):
            self.variables.pop(str(name), None)
        for name, raw in changed.items():
            if not isinstance(name, str) or not name.isidentifier():
                continue
            if name not in self.variables and len(self.variables) >= MAX_VARIABLES:
                continue
            variable = Variable.model_validate({**raw, "name": name, "cell": cell})
            variable.type_name = variable.type_name[:40]
            self.variables[name] = variable

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


def _short_texts(axes: Axes) -> Axes:
    """Titles, labels and legend entries cut to MAX_TEXT characters (the probe cuts them too).

    A model's attribute assignment is slow next to a length test, and texts are nearly always
    short: only what is too long is assigned."""
    for name in ("title", "xlabel", "ylabel", "yscale"):
        if len(getattr(axes, name)) > MAX_TEXT:
            setattr(axes, name, getattr(axes, name)[:MAX_TEXT])
    if any(len(text) > MAX_TEXT for text in axes.legend):
        axes.legend = [text[:MAX_TEXT] for text in axes.legend]
    for line in axes.lines:
        if len(line.label) > MAX_TEXT:
            line.label = line.label[:MAX_TEXT]
    return axes
