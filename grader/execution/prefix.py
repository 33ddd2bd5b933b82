"""The lab's own first cells, as shipped: which versions are known and how a notebook matches one.

Issue 16: nearly every submission starts with the lab's cells unchanged, and those cells are
seeded, so their results are the same for every learner. The warm pool runs them once in a
sandboxed parent (`grader.execution.pool`) and forks each such submission's kernel from it.
This module decides *whether* a notebook may be served that way: its first k code cells (the
non-empty ones, in order, as the runner runs them) must be byte-for-byte the first k code cells
of a known version of the lab. A changed, missing or reordered cell ends the match there; an
unknown lab matches nothing and runs in full.

Known versions are hashes, never text. A version is the sha256 of each of its code cells
(`cell_digest`: nbformat's joined source string, UTF-8), in order, up to where learners start
to differ (the exercise). `lab_versions.json` (package data) ships the lab's published releases
this way, so no lab text is in the repository: "ibm-2018" (cognitiveclass.ai 2018, and the IBM
Skills Network release of 2020, whose code cells are the same bytes) and "ibm-2023" (the Skills
Network release handed out since 2023: only its loss plot differs), and the project's own
sample lab, "samples" (`tests/execution/test_lab_hashes.py` keeps it equal to
`submissions/lab_blocks.py`). A republished lab is one more entry: `python -m
grader.execution.prefix NAME LAB.ipynb [--cells K]` prints it. A course can also name the
notebook it hands out, byte for byte as learners download it: `mbgd-grader grade --lab
lab.ipynb`, or `MBGD_LAB_NOTEBOOKS` (paths joined by the OS path separator) for the service,
the XQueue worker and Celery workers; its cells are hashed the same way when it is read.

`match` hashes a submission's cells and finds the longest known run of hashes it starts with.
The `LabPrefix` it returns carries those cells' sources *from the submission*: a warm parent
is made for the first submission that asks and runs that submission's copy of the cells; every
later submission with the same cells gets the same `LabPrefix.key`, so the same parent.

Why that is safe. Finding a second string with a given sha256 (a second preimage) is not
feasible: none is known, and the best attack is a brute force of about 2**256 tries. So a
submission's cell whose hash is a published cell's hash *is* that published cell, byte for
byte: the lab's own code, as the course wrote it and every learner runs it, only carried here
in the learner's file. Nothing of the learner's is in those cells, not one character: a cell
with a byte changed (a comment, a space, a line ending, a value) no longer hashes the same, and
it and every cell after it run in the learner's own kernel, confined as always. The parent's
state after those cells is therefore the same whichever submission brought them, and what is
still the learner's is only what comes after the prefix (their answer, at least their last
cell) and what their own kernel does with it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import sys
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
_DIGEST = re.compile(r"[0-9a-f]{64}")


def cell_digest(source: str) -> str:
    """The sha256 (hex) of one cell's source, as the runner runs it and as versions ship."""
    return hashlib.sha256(source.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class LabVersion:
    """One known version of the lab: the sha256 of each of its code cells, in order."""

    name: str
    digests: tuple[str, ...]

    @classmethod
    def of(cls, name: str, cells: Sequence[str]) -> LabVersion:
        return cls(name, tuple(cell_digest(source) for source in cells))


@dataclass(frozen=True)
class LabPrefix:
    """The first `len(cells)` code cells of one known lab version, and their identity: the
    cells are a submission's sources whose hashes are the version's (so the lab's, byte for
    byte); `version` names the version they matched."""

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


def code_cells(nb: nbformat.NotebookNode) -> list[tuple[int, nbformat.NotebookNode]]:
    """The cells the runner runs, with their notebook indices: code cells with some source.
    The one rule for it: a lab's cells are counted as a submission's are run."""
    return [
        (index, cell)
        for index, cell in enumerate(nb.cells)
        if cell.get("cell_type") == "code" and str(cell.get("source", "")).strip()
    ]


def _read_lab(path: Path) -> list[str]:
    try:
        if path.stat().st_size > MAX_LAB_BYTES:
            raise LabNotebookError(f"{path}: larger than {MAX_LAB_BYTES // 2**20} MiB")
        nb = nbformat.read(path, as_version=4)
    except (OSError, ValueError) as error:  # nbformat's read errors are ValueErrors
        raise LabNotebookError(f"{path}: not a readable notebook ({error})") from error
    cells = [str(cell.get("source", "")) for _, cell in code_cells(nb)]
    if len(cells) < MIN_CELLS:
        raise LabNotebookError(f"{path}: {len(cells)} code cells, too few to be the lab")
    return cells


def lab_from_notebook(path: Path) -> LabVersion:
    """The lab as a course hands it out: the hashes of the notebook's non-empty code cells, in
    order (the cells the runner runs). Exercise cells left empty are skipped, like in a
    submission, so a learner's filled-in answer is where the match ends."""
    return LabVersion.of(f"notebook:{path.name}", _read_lab(path))


def _entry(entry: object) -> LabVersion | None:
    """One entry of a versions file, or None when it is not a name and MIN_CELLS or more
    lowercase sha256 digests (an entry of text, the old format, is never taken)."""
    if not isinstance(entry, dict):
        return None
    name, digests = entry.get("name"), entry.get("sha256")
    if not isinstance(name, str) or not name or not isinstance(digests, list):
        return None
    if len(digests) < MIN_CELLS:
        return None
    if not all(isinstance(d, str) and _DIGEST.fullmatch(d) for d in digests):
        return None
    return LabVersion(name, tuple(digests))


@cache
def _shipped(path: Path) -> tuple[LabVersion, ...]:
    """The versions of a versions file; a malformed entry is left out with a warning."""
    data = json.loads(path.read_text(encoding="utf-8"))
    versions = []
    for entry in data.get("versions", []) if isinstance(data, dict) else []:
        version = _entry(entry)
        if version is None:
            log.warning("%s: an entry left out (not a name and sha256 digests): %.60r", path, entry)
        else:
            versions.append(version)
    return tuple(versions)


@cache
def _published(paths: str) -> tuple[LabVersion, ...]:
    """The course's own lab notebooks (`MBGD_LAB_NOTEBOOKS`); one that cannot be read is
    left out with a warning: reuse is a speed-up, never a reason to fail a grading."""
    versions = []
    for name in filter(None, paths.split(os.pathsep)):
        try:
            versions.append(lab_from_notebook(Path(name)))
        except LabNotebookError as error:
            log.warning("lab notebook not used for reuse: %s", error)
    return tuple(versions)


def known_versions(path: Path = VERSIONS_FILE) -> tuple[LabVersion, ...]:
    """Every known version of the lab, whole (up to where learners start to differ): the
    shipped ones, then the course's own (`MBGD_LAB_NOTEBOOKS`)."""
    return _shipped(path) + _published(os.environ.get(LAB_NOTEBOOKS_ENV, ""))


def match(
    sources: Sequence[str],
    versions: Sequence[LabVersion] | None = None,
    *,
    min_cells: int = MIN_CELLS,
) -> LabPrefix | None:
    """The longest known prefix that `sources` (a notebook's non-empty code cells, in order)
    begins with, byte for byte; None when it is shorter than `min_cells`.

    Each cell is hashed (`cell_digest`) and compared with the versions' hashes; the prefix
    returned holds the cells of `sources` themselves, which those hashes prove to be the
    version's own (see the module's docstring). The last code cell is never part of it: a
    submission always runs at least one cell of its own, so its kernel is never only the
    parent's."""
    usable = list(sources[:-1])
    digests: list[str] = []  # of usable's first cells, computed as far as a version needs
    best: LabVersion | None = None
    longest = 0
    for version in known_versions() if versions is None else versions:
        k = 0
        for theirs in version.digests[: len(usable)]:
            if k == len(digests):
                digests.append(cell_digest(usable[k]))
            if digests[k] != theirs:
                break
            k += 1
        if k >= min_cells and k > longest:
            best, longest = version, k
    return None if best is None else LabPrefix(best.name, tuple(usable[:longest]))


def prime_code(run: PrefixRun) -> str:
    """The silent execute that gives a forked kernel's fresh probe the parent probe's state
    (`in_kernel/probe.py`: `prime`), so later cells report exactly what a full run reports."""
    return (
        "import sys as _s; "
        f"_s.modules['_mbgd_probe'].prime({int(run.figures)!r}, {list(run.noted)!r}); del _s"
    )


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m grader.execution.prefix NAME LAB.ipynb [--cells K]`: the lab_versions.json
    entry of a lab notebook as handed out (hashes only) on stdout."""
    parser = argparse.ArgumentParser(
        prog="python -m grader.execution.prefix",
        description="Print the lab_versions.json entry (sha256 of each code cell) of a lab.",
    )
    parser.add_argument("name", help="the version's name in lab_versions.json")
    parser.add_argument("notebook", type=Path, help="the lab notebook, as learners get it")
    parser.add_argument(
        "--cells",
        type=int,
        help="keep only the first K code cells (the lab's own, before the exercise)",
    )
    args = parser.parse_args(argv)
    try:
        cells = _read_lab(args.notebook)
    except LabNotebookError as error:
        parser.error(str(error))
    if args.cells is not None:
        if not MIN_CELLS <= args.cells <= len(cells):
            parser.error(f"--cells must be {MIN_CELLS} to {len(cells)} for {args.notebook}")
        cells = cells[: args.cells]
    entry = {"name": args.name, "sha256": list(LabVersion.of(args.name, cells).digests)}
    json.dump(entry, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
