"""Cheap evidence that an answer was typed in rather than computed.

The strong defence is the integrity re-run with a secret seed (`grader.pipeline`); this scan
needs no second run: a notebook whose source holds most of the expected losses as number
literals did not compute them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence

import nbformat

NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")
SIGNIFICANT_DIGITS = 4
MIN_MATCHES = 5


def _key(value: float) -> str | None:
    if not math.isfinite(value) or value == 0:
        return None
    return f"{value:.{SIGNIFICANT_DIGITS - 1}e}"


def literal_keys(sources: Iterable[str]) -> set[str]:
    keys = set()
    for source in sources:
        for token in NUMBER.findall(source):
            try:
                key = _key(float(token))
            except (ValueError, OverflowError):
                continue
            if key:
                keys.add(key)
    return keys


def hard_coded_cells(notebook: nbformat.NotebookNode, values: Sequence[float]) -> list[int]:
    """Code cells whose literals spell out at least MIN_MATCHES of the expected values."""
    wanted = {key for key in map(_key, values) if key}
    cells = []
    for index, cell in enumerate(notebook.cells):
        if cell.get("cell_type") != "code" or not isinstance(cell.get("source"), str):
            continue
        if len(wanted & literal_keys([cell.source])) >= min(MIN_MATCHES, len(wanted)):
            cells.append(index)
    return cells
