"""The lab's own first cells, as shipped: which versions are known and how a notebook matches one.

Issue 16: nearly every submission starts with the lab's cells unchanged, and those cells are
seeded, so their results are the same for every learner. The warm pool runs them once in a
sandboxed parent (`grader.execution.pool`) and forks each such submission's kernel from it.
This module decides *whether* a notebook may be served that way: its first k code cells (the
non-empty ones, in order, as the runner runs them) must be byte-for-byte the first k code cells
of a known version of the lab. A changed, missing or reordered cell ends the match there; an
unknown lab matches nothing and runs in full.

The known versions live in `lab_versions.json` (package data), one list of code-cell sources
per published version of the lab; `tests/execution/test_prefix.py` keeps the "samples" version
equal to `submissions/lab_blocks.py`. A course adds the notebook it hands out, byte for byte as
learners download it: `mbgd-grader grade --lab lab.ipynb`, or `MBGD_LAB_NOTEBOOKS` (paths
joined by the OS path separator) for the service, the XQueue worker and Celery workers. Those
cells come from the instructor's file, never from a submission: a learner's notebook only ever
*matches* them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import nbformat

VERSIONS_FILE = Path(__file__).with_name("lab_versions.json")
LAB_NOTEBOOKS_ENV = "MBGD_LAB_NOTEBOOKS"
MAX_LAB_BYTES = 20 * 1024 * 1024
log = logging.getLogger(__name__)
# A shorter common prefix (imports, a class definition) costs less to run than a parent costs
# to keep: below this many cells a submission simply runs from the zygote.
MIN_CELLS = 4


@dataclass(frozen=True)
class LabPrefix:
    """The first `len(cells)` code cells of one known lab version, and their identity."""

    version: str
    cells: tuple[str, ...]

    @property
    def key(self) -> str:
        """A hash of exactly these sources: two prefixes share a warm parent iff keys match."""
        digest = hashlib.sha256()
        for source in self.cells:
            raw = source.encode("utf-8", "surrogatepass")
            digest.update(len(raw).to_bytes(8, "big") + raw)
        return digest.hexdigest()[:32]


@dataclass
class PrefixRun:
    """What the warm parent recorded while it ran a prefix: per cell, its seconds and the
    probe's records (JSON texts, read by the harness as untrusted like any kernel's); and the
    probe's state after the last cell (figures counted, notes sent), to carry on from."""

    prefix: LabPrefix
    seconds: list[float] = field(default_factory=list)
    records: list[list[str]] = field(default_factory=list)
    figures: int = 0
    noted: list[str] = field(default_factory=list)

    @classmethod
    def from_reply(cls, prefix: LabPrefix, reply: dict[str, Any]) -> PrefixRun:
        """The parent's reply, as far as it is well formed: the prefix is cut to the cells
        that ran to the end without an error (the rest then runs in the learner's kernel)."""
        run = cls(prefix=prefix)
        for cell in list(reply.get("cells") or [])[: len(prefix.cells)]:
            records = cell.get("records") if isinstance(cell, dict) else None
            if not isinstance(records, list) or not all(isinstance(r, str) for r in records):
                break
            run.seconds.append(float(cell.get("seconds", 0.0)))
            run.records.append(records)
        state = reply.get("probe")
        state = state if isinstance(state, dict) else {}
        run.figures = int(state.get("figures", 0))
        run.noted = [str(n) for n in state.get("noted", []) if isinstance(n, str)]
        run.prefix = LabPrefix(prefix.version, prefix.cells[: len(run.records)])
        return run


class LabNotebookError(ValueError):
    """A lab notebook given with --lab cannot be read; the text says which and why."""


def lab_from_notebook(path: Path) -> LabPrefix:
    """The lab as a course hands it out: the notebook's non-empty code cells, in order (the
    cells the runner runs). Exercise cells left empty are skipped, like in a submission, so a
    learner's filled-in answer is where the match ends."""
    try:
        if path.stat().st_size > MAX_LAB_BYTES:
            raise LabNotebookError(f"{path}: larger than {MAX_LAB_BYTES // 2**20} MiB")
        nb = nbformat.read(path, as_version=4)
    except (OSError, ValueError) as error:  # nbformat's read errors are ValueErrors
        raise LabNotebookError(f"{path}: not a readable notebook ({error})") from error
    cells = tuple(
        str(cell.get("source", ""))
        for cell in nb.cells
        if cell.get("cell_type") == "code" and str(cell.get("source", "")).strip()
    )
    if len(cells) < MIN_CELLS:
        raise LabNotebookError(f"{path}: {len(cells)} code cells, too few to be the lab")
    return LabPrefix(f"notebook:{path.name}", cells)


@cache
def _shipped(path: Path) -> tuple[LabPrefix, ...]:
    data = json.loads(path.read_text(encoding="utf-8"))
    return tuple(
        LabPrefix(str(entry["name"]), tuple(str(s) for s in entry["cells"]))
        for entry in data["versions"]
    )


@cache
def _published(paths: str) -> tuple[LabPrefix, ...]:
    """The course's own lab notebooks (`MBGD_LAB_NOTEBOOKS`); one that cannot be read is
    left out with a warning: reuse is a speed-up, never a reason to fail a grading."""
    versions = []
    for name in filter(None, paths.split(os.pathsep)):
        try:
            versions.append(lab_from_notebook(Path(name)))
        except LabNotebookError as error:
            log.warning("lab notebook not used for reuse: %s", error)
    return tuple(versions)


def known_versions(path: Path = VERSIONS_FILE) -> tuple[LabPrefix, ...]:
    """Every known version of the lab, whole (up to where learners start to differ): the
    shipped ones, then the course's own (`MBGD_LAB_NOTEBOOKS`)."""
    return _shipped(path) + _published(os.environ.get(LAB_NOTEBOOKS_ENV, ""))


def match(
    sources: Sequence[str],
    versions: Sequence[LabPrefix] | None = None,
    *,
    min_cells: int = MIN_CELLS,
) -> LabPrefix | None:
    """The longest known prefix that `sources` (a notebook's non-empty code cells, in order)
    begins with, byte for byte; None when it is shorter than `min_cells`.

    The last code cell is never part of it: a submission always runs at least one cell of
    its own, so its kernel is never only the parent's."""
    best: LabPrefix | None = None
    usable = list(sources[:-1])
    for version in known_versions() if versions is None else versions:
        k = 0
        for mine, theirs in zip(usable, version.cells, strict=False):
            if mine != theirs:
                break
            k += 1
        if k >= min_cells and (best is None or k > len(best.cells)):
            best = LabPrefix(version.version, version.cells[:k])
    return best


def prime_code(run: PrefixRun) -> str:
    """The silent execute that gives a forked kernel's fresh probe the parent probe's state
    (`in_kernel/probe.py`: `prime`), so later cells report exactly what a full run reports."""
    return (
        "import sys as _s; "
        f"_s.modules['_mbgd_probe'].prime({int(run.figures)!r}, {list(run.noted)!r}); del _s"
    )
