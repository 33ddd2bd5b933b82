"""The platforms' rules without a kernel: which upload is the notebook, the kernel's memory
in a container, Coursera's parts and page size, and a bwrap that cannot sandbox here."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from grader.execution import sandbox
from grader.execution.limits import RunLimits
from grader.grading.rubric import load_rubric
from grader.models import Curve, not_graded
from grader.platforms import coursera, memory
from grader.platforms.uploads import WrongUpload, the_notebook, wrong_upload_result
from reference import expected


def upload(folder: Path, *names: str) -> Path:
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text("{}")
    return folder


def test_the_one_notebook_is_found_wherever_it_sits(tmp_path: Path) -> None:
    folder = upload(tmp_path, "lab/My Lab.ipynb", "data.csv", ".ipynb_checkpoints/x.ipynb")
    assert the_notebook(folder) == folder / "lab" / "My Lab.ipynb"


@pytest.mark.parametrize(
    ("names", "says"),
    [
        ((), ["Nothing was uploaded", ".ipynb"]),
        (("lab.py",), ["lab.py", "Python script", "File > Download > Notebook (.ipynb)"]),
        (("a.ipynb", "b/c.ipynb"), ["exactly one notebook", "has 2", "a.ipynb", "b/c.ipynb"]),
        (("lab.pdf", "notes.txt"), ["No notebook (.ipynb)", "lab.pdf", "notes.txt"]),
    ],
)
def test_anything_but_one_notebook_says_what_to_upload(
    tmp_path: Path, names: tuple[str, ...], says: list[str]
) -> None:
    wrong = the_notebook(upload(tmp_path, *names))
    assert isinstance(wrong, WrongUpload)
    for words in says:
        assert words in wrong.message
    rubric = load_rubric()
    result = wrong_upload_result("submission", wrong, rubric)
    assert result.score == 0 and result.max_score == rubric.max_score
    assert [c.id for c in result.checks] == [spec.id for spec in rubric.checks]
    assert all(not c.passed and wrong.message in c.message for c in result.checks)


def test_a_missing_submission_folder_is_nothing_uploaded(tmp_path: Path) -> None:
    wrong = the_notebook(tmp_path / "absent")
    assert isinstance(wrong, WrongUpload) and "Nothing was uploaded" in wrong.message


@pytest.mark.parametrize(
    ("container_mb", "kernel_mb"),
    [(768, memory.LAB_NEEDS_MB), (1024, 1374), (1536, 1886), (2048, 2048), (4096, 2048)],
)
def test_the_kernel_memory_fits_the_container(container_mb: int, kernel_mb: int) -> None:
    limits = memory.limits_for_container(RunLimits(), container_mb)
    assert limits.memory_mb == kernel_mb
    assert memory.tight(container_mb) == (container_mb < memory.RECOMMENDED_MB)


def test_the_container_limit_is_read_from_cgroup_files(tmp_path: Path) -> None:
    (tmp_path / "memory.max").write_text(f"{768 << 20}\n")
    assert memory.container_memory_mb(tmp_path) == 768
    (tmp_path / "memory.max").write_text("max\n")
    (tmp_path / "memory").mkdir()
    (tmp_path / "memory" / "memory.limit_in_bytes").write_text(f"{1 << 62}\n")
    assert memory.container_memory_mb(tmp_path) is None  # v1's stand-in for no limit
    (tmp_path / "memory" / "memory.limit_in_bytes").write_text(f"{2048 << 20}\n")
    assert memory.container_memory_mb(tmp_path) == 2048


def _config(tmp_path: Path, **data: object) -> Path:
    path = tmp_path / "coursera.json"
    path.write_text(json.dumps(data))
    return path


def test_an_unknown_or_missing_part_is_feedback_and_a_zero(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    (shared / "submission").mkdir(parents=True)
    config = _config(tmp_path, parts=["5ShhY"], rubric=None)
    for env in ({"partId": "other"}, {}):
        assert coursera.run(shared, config, env) == 0
        feedback = json.loads((shared / "feedback.json").read_text())
        assert feedback["fractionalScore"] == 0 and feedback["feedbackType"] == "HTML"
        assert "5ShhY" in feedback["feedback"] and "course staff" in feedback["feedback"]
        assert (shared / "htmlFeedback.html").stat().st_size > 0


def test_a_broken_config_still_writes_feedback(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    config = _config(tmp_path, parts="5ShhY")
    assert coursera.run(shared, config, {"partId": "5ShhY"}) == 1  # the grader's failure
    feedback = json.loads((shared / "feedback.json").read_text())
    assert feedback["fractionalScore"] == 0 and "parts" in feedback["feedback"]


def test_the_page_fits_courseras_limit_with_its_picture() -> None:
    ref = [Curve(label=name, y=values) for name, values in expected().items()]
    result = not_graded("lab", "graded", "", max_score=10).model_copy(
        update={"reference_curves": ref, "learner_curves": ref[-1:], "answer_name": "LOSS20"}
    )
    page = coursera.html_feedback(result)
    assert len(page.encode()) <= coursera.MAX_HTML_BYTES
    assert page.count("<svg") == 1 and "<script" not in page  # the loss curves, inline


def test_a_page_too_big_for_coursera_becomes_its_text_form() -> None:
    result = wrong_upload_result("lab", WrongUpload("x" * 200_000), load_rubric())
    page = coursera.html_feedback(result)
    assert len(page.encode()) <= coursera.MAX_HTML_BYTES
    assert page.startswith("<!doctype html>") and "<pre>Score: 0 / 10" in page


def test_the_config_names_the_parts_and_the_rubric(tmp_path: Path) -> None:
    config = coursera.load_config(_config(tmp_path, parts=["a"], rubric="/grader/rubric.toml"))
    assert config == {"parts": ["a"], "rubric": "/grader/rubric.toml"}
    with pytest.raises(coursera.CourseraConfigError, match="parts"):
        coursera.load_config(_config(tmp_path, parts=[1]))
    with pytest.raises(coursera.CourseraConfigError, match="cannot read"):
        coursera.load_config(tmp_path / "absent.json")


def test_a_bwrap_that_cannot_sandbox_here_is_not_used(tmp_path: Path, monkeypatch) -> None:
    """In a container without namespace privileges bwrap is installed but fails: kernels then
    run as without it (and results say so) instead of every notebook dying at its start."""
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: Creating new namespace failed' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    assert sandbox.find_bwrap() is None
    monkeypatch.setenv("PATH", os.environ["PATH"].split(":", 1)[1])
    real = sandbox.find_bwrap()
    assert real is None or sandbox.bwrap_runs(real)
