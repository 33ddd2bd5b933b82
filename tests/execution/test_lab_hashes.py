"""The published versions of the lab ship as sha256 hashes of their code cells (no lab text).

A submission whose first code cells hash, cell by cell, to a known version's hashes is byte
for byte that version's cells, so the warm parent may run *the submission's* copy of them:
`match` hands back the submission's own sources. These tests never hold the published lab's
text: they hash the project's own sample lab (`submissions/lab_blocks.py`) into version files
of their own, and check that the shipped file is well formed. The published notebooks were
checked by hand against the shipped hashes (see the report of item 7).
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from grader.execution.prefix import (
    MIN_CELLS,
    VERSIONS_FILE,
    LabPrefix,
    LabVersion,
    cell_digest,
    known_versions,
    match,
)
from tests.execution.test_prefix import LAB

HEX = re.compile(r"[0-9a-f]{64}")
# The lab's published releases (3.2_mini-batch_gradient_descent_v3.ipynb): cognitiveclass.ai
# 2018 and IBM Skills Network 2020 share every code cell; the Skills Network release of 2023
# (still handed out in 2024 and 2025) changed the last one, the loss plot.
PUBLISHED = ("ibm-2018", "ibm-2023")
ANSWER = "# Practice: Perform mini batch gradient descent with a batch size of 20.\nLOSS20 = [1.0]"


def sha(source: str) -> str:
    return hashlib.sha256(source.encode("utf-8", "surrogatepass")).hexdigest()


def lab_notebook(path: Path, cells: tuple[str, ...] | list[str], answer: str = "") -> Path:
    """A notebook as learners hand it in: markdown between the lab's cells, then the answer."""
    nb = nbformat.v4.new_notebook()
    for source in cells:
        nb.cells += [nbformat.v4.new_markdown_cell("Text."), nbformat.v4.new_code_cell(source)]
    nb.cells += [nbformat.v4.new_code_cell(answer), nbformat.v4.new_code_cell("")]
    nbformat.write(nb, path)
    return path


def runner_sources(path: Path) -> list[str]:
    """What the runner runs, and hands to the pool: the non-empty code cells, in order."""
    nb = nbformat.read(path, as_version=4)
    return [
        str(cell.get("source", ""))
        for cell in nb.cells
        if cell.get("cell_type") == "code" and str(cell.get("source", "")).strip()
    ]


def versions_file(path: Path, **versions: tuple[str, ...] | list[str]) -> Path:
    """A versions file in the shipped format, of hashes computed here."""
    entries = [
        {"name": name, "sha256": [sha(c) for c in cells]} for name, cells in versions.items()
    ]
    path.write_text(json.dumps({"versions": entries}), encoding="utf-8")
    return path


def test_the_shipped_file_holds_hashes_and_no_lab_text() -> None:
    data = json.loads(VERSIONS_FILE.read_text(encoding="utf-8"))
    names = [entry["name"] for entry in data["versions"]]
    assert len(names) == len(set(names)) and {"samples", *PUBLISHED} <= set(names)
    lists = []
    for entry in data["versions"]:
        assert set(entry) <= {"name", "sha256", "source"}, entry["name"]  # no "cells": no text
        digests = entry["sha256"]
        assert len(digests) >= MIN_CELLS, entry["name"]
        assert all(isinstance(d, str) and HEX.fullmatch(d) for d in digests), entry["name"]
        lists.append(tuple(digests))
    assert len(set(lists)) == len(lists)
    assert "def " not in VERSIONS_FILE.read_text(encoding="utf-8")  # no code at all
    loaded = {v.name: v.digests for v in known_versions()}
    assert all(loaded[entry["name"]] == tuple(entry["sha256"]) for entry in data["versions"])


def test_the_published_releases_differ_only_in_the_loss_plot() -> None:
    """What was found: 25 code cells before the exercise, the first 24 alike in all."""
    versions = {v.name: v.digests for v in known_versions()}
    old, new = (versions[name] for name in PUBLISHED)
    assert len(old) == len(new) == 25
    assert old[:24] == new[:24] and old[24] != new[24]
    assert not set(old) & set(versions["samples"])  # the project's own lab is its own text


def test_the_samples_lab_ships_as_the_hashes_of_its_cells() -> None:
    versions = {v.name: v for v in known_versions()}
    assert versions["samples"] == LabVersion("samples", tuple(sha(source) for source in LAB))
    assert [cell_digest(source) for source in LAB] == [sha(source) for source in LAB]


def test_a_match_hands_back_the_submission_s_own_cells(tmp_path: Path) -> None:
    """The parent runs the first matching submission's copy of the lab's cells: the sources
    `match` returns are that submission's strings, and equal to the lab's byte for byte."""
    versions = known_versions(versions_file(tmp_path / "v.json", lab=LAB))
    sources = runner_sources(lab_notebook(tmp_path / "learner.ipynb", LAB, ANSWER))
    found = match(sources, versions)
    assert found is not None and found.version == "lab"
    assert found.cells == LAB
    assert all(mine is theirs for mine, theirs in zip(found.cells, sources, strict=False))


def test_two_learners_with_the_lab_s_cells_share_one_parent(tmp_path: Path) -> None:
    versions = known_versions(versions_file(tmp_path / "v.json", lab=LAB))
    first = match(runner_sources(lab_notebook(tmp_path / "a.ipynb", LAB, ANSWER)), versions)
    second = match(
        runner_sources(lab_notebook(tmp_path / "b.ipynb", LAB, "LOSS20 = [2.0]")), versions
    )
    assert first is not None and second is not None
    assert first == second and first.key == second.key == LabPrefix("any", LAB).key


def test_one_byte_off_is_not_the_lab_s_cell(tmp_path: Path) -> None:
    versions = known_versions(versions_file(tmp_path / "v.json", lab=LAB))
    for changed in (LAB[7] + "\n", LAB[7].replace("30", "31", 1), LAB[7].replace("\n", "\r\n")):
        cells = [*LAB[:7], changed, *LAB[8:]]
        found = match(runner_sources(lab_notebook(tmp_path / "c.ipynb", cells, ANSWER)), versions)
        assert found is not None and found.cells == LAB[:7]


def test_hashes_are_of_the_joined_source_as_the_runner_reads_it(tmp_path: Path) -> None:
    """A notebook stores a cell's source as a list of lines (or one string): nbformat joins
    them, and that joined string is what is hashed, as the runner runs it."""
    cells = []
    for source in LAB:
        lines = source.splitlines(keepends=True)
        cells.append({"cell_type": "code", "metadata": {}, "outputs": [], "source": lines})
    cells.append({"cell_type": "code", "metadata": {}, "outputs": [], "source": [ANSWER]})
    for cell in cells:
        cell["execution_count"] = None
    raw = {"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 4}
    path = tmp_path / "lines.ipynb"
    path.write_text(json.dumps(raw), encoding="utf-8")
    versions = known_versions(versions_file(tmp_path / "v.json", lab=LAB))
    found = match(runner_sources(path), versions)
    assert found is not None and found.cells == LAB


def test_a_malformed_entry_is_left_out_and_the_rest_kept(tmp_path: Path, caplog) -> None:
    good = {"name": "lab", "sha256": [sha(c) for c in LAB]}
    bad = [
        {"name": "text", "cells": list(LAB)},  # the old format: lab text is never trusted
        {"name": "short", "sha256": [sha(c) for c in LAB[:3]]},
        {"name": "upper", "sha256": [sha(c).upper() for c in LAB]},
        {"name": "not-hex", "sha256": ["z" * 64] * len(LAB)},
        {"sha256": [sha(c) for c in LAB]},
        "nonsense",
    ]
    path = tmp_path / "v.json"
    path.write_text(json.dumps({"versions": [*bad, good]}), encoding="utf-8")
    assert [v.name for v in known_versions(path)] == ["lab"]
    assert "left out" in caplog.text


def test_the_tool_writes_a_version_entry_from_a_lab_notebook(tmp_path: Path) -> None:
    """`python -m grader.execution.prefix NAME LAB.ipynb [--cells K]`: the entry to add to
    lab_versions.json for a republished lab, hashes only."""
    lab = lab_notebook(tmp_path / "lab.ipynb", LAB, "# Practice: your code here\n")
    done = subprocess.run(
        [sys.executable, "-m", "grader.execution.prefix", "republished", str(lab)],
        capture_output=True,
        text=True,
        check=True,
    )
    entry = json.loads(done.stdout)
    assert entry["name"] == "republished"
    # every non-empty code cell, the exercise's starter included: a learner's answer ends the
    # match there anyway; --cells keeps only the lab's own
    assert entry["sha256"] == [sha(c) for c in [*LAB, "# Practice: your code here\n"]]
    assert "def " not in done.stdout
    done = subprocess.run(
        [sys.executable, "-m", "grader.execution.prefix", "r", str(lab), "--cells", "5"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(done.stdout)["sha256"] == [sha(c) for c in LAB[:5]]


@pytest.mark.parametrize("cells", ["2", "999"])
def test_the_tool_refuses_a_count_the_notebook_cannot_give(tmp_path: Path, cells: str) -> None:
    lab = lab_notebook(tmp_path / "lab.ipynb", LAB)
    done = subprocess.run(
        [sys.executable, "-m", "grader.execution.prefix", "r", str(lab), "--cells", cells],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "--cells" in done.stderr and not done.stdout
