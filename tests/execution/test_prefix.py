"""Which notebooks may start from a warm parent (issue 16): rules only, no kernel.

Only an exact prefix of a known lab version qualifies: a changed, reordered or missing cell
ends the match there, an unknown lab matches nothing, and the learner's last cell is never
part of it. Versions are hashes of the lab's cells (`tests/execution/test_lab_hashes.py`).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from grader.execution.prefix import (
    LAB_NOTEBOOKS_ENV,
    MIN_CELLS,
    LabNotebookError,
    LabPrefix,
    LabVersion,
    PrefixRun,
    known_versions,
    lab_from_notebook,
    match,
    prime_code,
)
from tests.helpers import SUBMISSIONS, cli

_spec = importlib.util.spec_from_file_location("lab_blocks", SUBMISSIONS / "lab_blocks.py")
assert _spec is not None and _spec.loader is not None
lab_blocks = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("lab_blocks", lab_blocks)  # its dataclasses look themselves up there
_spec.loader.exec_module(lab_blocks)

LAB = tuple(c.source for c in lab_blocks.lab_cells() if c.kind == "code" and c.source.strip())
ANSWER = "LOSS20 = [1.0, 2.0]"


def _sources(path: Path) -> list[str]:
    nb = nbformat.read(path, as_version=4)
    return [str(c.source) for c in nb.cells if c.cell_type == "code" and str(c.source).strip()]


def test_the_shipped_versions_include_the_samples_lab_exactly() -> None:
    versions = {v.name: v for v in known_versions()}
    assert versions["samples"] == LabVersion.of("samples", LAB)


def test_the_whole_lab_then_an_answer_matches_the_whole_lab() -> None:
    found = match([*LAB, ANSWER])
    assert found is not None and found.cells == LAB and found.version == "samples"


def test_the_last_cell_is_always_the_learners() -> None:
    found = match(list(LAB))  # nothing after the lab: its last cell runs in the kernel
    assert found is not None and found.cells == LAB[:-1]


def test_a_changed_cell_ends_the_match_before_it() -> None:
    changed = list(LAB)
    changed[9] = changed[9] + " "  # one byte
    found = match([*changed, ANSWER])
    assert found is not None and found.cells == LAB[:9]


def test_reordered_cells_end_the_match() -> None:
    swapped = list(LAB)
    swapped[5], swapped[6] = swapped[6], swapped[5]
    found = match([*swapped, ANSWER])
    assert found is not None and found.cells == LAB[:5]


def test_a_seed_changed_early_leaves_too_little_to_reuse() -> None:
    sources = _sources(SUBMISSIONS / "mistakes" / "data_seed.ipynb")
    assert sources[2] != LAB[2]  # the seed cell
    assert match(sources) is None  # two cells: fewer than MIN_CELLS


def test_an_unknown_lab_matches_nothing() -> None:
    assert match(["import numpy as np", *LAB, ANSWER]) is None


def test_a_republished_version_is_one_more_entry() -> None:
    cells = (*LAB[:3], "# the data, now with a comment\n" + LAB[3])
    republished = LabVersion.of("republished", cells)
    mine = [*cells, *LAB[4:], ANSWER]
    found = match(mine, [*known_versions(), republished])
    assert found is not None and found.version == "republished" and len(found.cells) == 4
    assert match(mine) is None  # against the shipped versions only: 3 cells, too few
    assert MIN_CELLS > 3


def test_keys_tell_apart_exactly_the_sources() -> None:
    a, b = LabPrefix("x", LAB[:5]), LabPrefix("y", LAB[:5])
    assert a.key == b.key  # same sources, same parent, whatever the version is called
    assert LabPrefix("x", LAB[:6]).key != a.key
    assert LabPrefix("x", ("ab", "c")).key != LabPrefix("x", ("a", "bc")).key


@pytest.mark.parametrize(
    "reply",
    [
        {},
        {"cells": "nonsense"},
        {"cells": [{"seconds": 1.0, "records": ["{}"]}, {"seconds": 1.0, "records": [3]}]},
    ],
)
def test_a_malformed_parent_reply_reuses_only_well_formed_cells(reply: dict) -> None:
    run = PrefixRun.from_reply(LabPrefix("samples", LAB), reply)
    assert len(run.prefix.cells) == len(run.records) <= 1
    assert run.prefix.cells == LAB[: len(run.records)]


def test_the_prime_code_carries_only_the_probe_state() -> None:
    run = PrefixRun(LabPrefix("samples", LAB), figures=7, noted=["it's 'quoted'\n"])
    code = prime_code(run)
    assert code.startswith("import sys as _s; _s.modules['_mbgd_probe'].prime(7, ")
    assert compile(code, "<prime>", "exec")  # a quoted note cannot break out of the call


def _lab_notebook(path: Path, cells: list[str]) -> Path:
    """A lab notebook as a course hands it out: markdown between the code, an empty exercise."""
    nb = nbformat.v4.new_notebook()
    for source in cells:
        nb.cells += [nbformat.v4.new_markdown_cell("Some text."), nbformat.v4.new_code_cell(source)]
    nb.cells.append(nbformat.v4.new_code_cell("# Practice: your code here\n"))
    nb.cells.append(nbformat.v4.new_code_cell(""))
    nbformat.write(nb, path)
    return path


def test_the_course_s_own_lab_notebook_is_a_known_version(tmp_path, monkeypatch) -> None:
    """`--lab` / MBGD_LAB_NOTEBOOKS: the notebook the course hands out is matched like the
    shipped versions, from its own cells; one that cannot be read is left out, not fatal."""
    republished = [*LAB[:3], "# the data, now with a comment\n" + LAB[3], *LAB[4:]]
    lab = _lab_notebook(tmp_path / "lab v2.ipynb", republished)
    broken = tmp_path / "broken.ipynb"
    broken.write_text("{ not json")
    mine = [*republished, "# Practice: your code here\n" + ANSWER]
    assert match(mine) is None  # 3 cells of the shipped lab: too few
    monkeypatch.setenv(LAB_NOTEBOOKS_ENV, os.pathsep.join([str(broken), str(lab)]))
    found = match(mine)
    assert found is not None and found.version == "notebook:lab v2.ipynb"
    assert found.cells == tuple(republished)  # up to the answer: the submission's, as the file's
    assert [v.name for v in known_versions()][-1] == "notebook:lab v2.ipynb"


def test_a_lab_notebook_that_cannot_be_the_lab_is_a_clear_usage_error(tmp_path) -> None:
    """No kernel: `grade --lab` checks the file before any grading starts."""
    short = _lab_notebook(tmp_path / "short.ipynb", ["import torch"])
    broken = tmp_path / "broken.ipynb"
    broken.write_text("{ not json")
    for bad, why in ((short, "too few to be the lab"), (broken, "not a readable notebook")):
        with pytest.raises(LabNotebookError, match=why):
            lab_from_notebook(bad)
        run = subprocess.run(
            [
                *cli(),
                "grade",
                str(SUBMISSIONS / "correct"),
                "--lab",
                str(bad),
                "--out",
                str(tmp_path / "out"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 2 and "--lab" in run.stderr and why in run.stderr, run.stderr
        assert not (tmp_path / "out" / "gradebook.sqlite").exists()  # nothing was graded
