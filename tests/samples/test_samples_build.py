"""The sample submissions: MANIFEST.toml agrees with the files, and build_samples.py rebuilds them.

Executing the samples is the lead's end-to-end test; these checks are fast and run no kernel.
"""

from __future__ import annotations

import importlib.util
import math
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

from grader.grading.rubric import load_rubric
from grader.submission import SubmissionError, load
from reference import mistake_variants
from tests.helpers import SUBMISSIONS

STATUSES = {"graded", "rejected", "timeout", "crashed"}
VERDICTS = {"pass", "fail", "partial", "any"}  # any: only for 0-point checks
GRADER_DIAGNOSES = {
    "",
    "data_changed",
    "too_few_epochs",
    "appended_to_wrong_list",
    "no_answer",
    "not_finite",
    "hard_coded",
    "unknown",
}


@pytest.fixture(scope="module")
def build() -> ModuleType:
    sys.path.insert(0, str(SUBMISSIONS))
    spec = importlib.util.spec_from_file_location("build_samples", SUBMISSIONS / "build_samples.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def manifest() -> list[dict]:
    return tomllib.loads((SUBMISSIONS / "MANIFEST.toml").read_text())["sample"]


def test_every_notebook_has_one_entry_and_every_entry_a_file(
    manifest: list[dict], build: ModuleType
) -> None:
    paths = [entry["path"] for entry in manifest]
    assert len(paths) == len(set(paths)), "duplicate manifest paths"
    on_disk = {str(p.relative_to(SUBMISSIONS)) for p in SUBMISSIONS.rglob("*.ipynb")}
    generated = {entry["path"] for entry in manifest if "generate" in entry}
    assert on_disk == set(paths) - generated
    for entry in manifest:
        if "generate" in entry:
            assert entry["generate"] in build.GENERATORS, entry["path"]
            assert not (SUBMISSIONS / entry["path"]).exists(), "generated samples are not committed"


def test_entries_are_well_formed_and_scores_add_up(manifest: list[dict]) -> None:
    rubric = load_rubric()
    points = {check.id: check.points for check in rubric.checks}
    variants = mistake_variants()
    for entry in manifest:
        where = entry["path"]
        assert entry["status"] in STATUSES, where
        assert entry.get("note", "").strip(), f"{where}: every sample says why it exists"
        assert 0 <= entry["score"] <= rubric.max_score, where
        diagnosis = entry.get("diagnosis", "")
        assert diagnosis in variants or diagnosis in GRADER_DIAGNOSES, f"{where}: {diagnosis}"
        checks = entry.get("checks", {})
        if entry["status"] == "rejected":
            assert entry["score"] == 0 and not checks, where
            continue
        if entry["status"] != "graded" and not checks:
            continue
        assert set(checks) == set(points), f"{where}: checks must name every rubric check"
        assert set(checks.values()) <= VERDICTS, where
        assert all(points[c] == 0 for c, verdict in checks.items() if verdict == "any"), where
        floor = sum(points[c] for c, verdict in checks.items() if verdict == "pass")
        partial = sum(points[c] for c, verdict in checks.items() if verdict == "partial")
        if partial:
            assert floor < entry["score"] < floor + partial, where
        else:
            assert math.isclose(entry["score"], floor), f"{where}: {entry['score']} != {floor}"


def test_mistake_samples_name_their_variant(manifest: list[dict]) -> None:
    variants = mistake_variants()
    named = {e["diagnosis"] for e in manifest if e["path"].startswith("mistakes/")}
    required = {
        "batch_size_10",
        "batch_size_30",
        "weights_not_reset",
        "loss_after_epoch",
        "noisy_targets",
        "shuffled_loader",
        "batch_losses_summed",
        "batch_losses_appended",
        "sum_criterion",
        "batch_gd",
    }
    assert required <= named
    assert required <= set(variants)


def test_hostile_entries_say_what_they_attack(manifest: list[dict]) -> None:
    hostile = [e for e in manifest if e["path"].startswith("hostile/")]
    assert len(hostile) >= 25
    for entry in hostile:
        assert entry.get("hostile", "").strip(), entry["path"]
        for key in ("integrity", "integrity_rerun"):
            assert entry.get(key, "flagged") in {"not_checked", "passed", "flagged"}
    assert all(e["path"].startswith("hostile/") for e in manifest if "hostile" in e)


def test_build_is_byte_identical(build: ModuleType) -> None:
    """Rendering every sample again gives the committed bytes (so ids etc. are fixed)."""
    assert build.write_all(check=True) == [], "run submissions/build_samples.py and commit"


def test_samples_load_or_are_rejected_as_the_manifest_says(manifest: list[dict]) -> None:
    for entry in manifest:
        if "generate" in entry:
            continue
        path = SUBMISSIONS / entry["path"]
        if entry["status"] == "rejected":
            with pytest.raises(SubmissionError):
                load(path)
        else:
            submission = load(path)
            assert submission.name == path.stem


def test_generators_write_what_the_manifest_promises(
    manifest: list[dict], build: ModuleType, tmp_path: Path
) -> None:
    generated = [entry for entry in manifest if "generate" in entry]
    assert {e["generate"] for e in generated} == set(build.GENERATORS)
    for entry in generated:
        out = tmp_path / Path(entry["path"]).name
        build.GENERATORS[entry["generate"]](out)
        assert out.stat().st_size > 0, entry["path"]
        if entry["status"] == "rejected":
            with pytest.raises(SubmissionError):
                load(out)
        out.unlink()
