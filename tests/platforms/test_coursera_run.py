"""The Coursera grader as Coursera runs its image: the exported folder at /grader, the wheel
installed by pip at /opt/mbgd, the learner's file alone in a read-only /shared/submission/,
`partId` (with `filename` and `userId`) as the whole environment (Coursera drops the image's
ENV, PATH included), a non-root uid and no network. Each run is its own bubblewrap namespace
with a temporary folder bound at /shared; the grader's own sandbox nests inside it.

Each submission is graded once (a module fixture, all at once).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from grader.grading.rubric import load_rubric
from grader.platforms.coursera import MAX_HTML_BYTES
from tests.helpers import (
    MANIFEST,
    SUBMISSIONS,
    cli,
    install_for_real,
    mountpoints,
    system_python,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap (bwrap)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="binding /shared and switching uid need root"),
]

MISTAKE = "mistakes/stale_loader.ipynb"
LEARNER_UID = 65534  # nobody: Coursera runs graders without root
PARTS = ("5ShhY", "Zb6wb")

SUBMITTED: dict[str, dict[str, str | bytes | Path]] = {
    # the file arrives renamed to the part's suggested name; `filename` is the learner's own
    "mistake": {
        "partId": "Zb6wb",
        "filename": "Mini-Batch GD.ipynb",
        "file": SUBMISSIONS / MISTAKE,
    },
    "unknown part": {"partId": "Xy9Zq", "filename": "lab.ipynb", "file": SUBMISSIONS / MISTAKE},
    "script": {"partId": "5ShhY", "filename": "lab.py", "file": b"LOSS20 = []\n"},
}


def interpreter_reachable() -> list[str]:
    """bwrap options that let the learner uid reach this Python (an image has it in /usr;
    a checkout's may sit under a folder only root may enter, like /root): that folder
    becomes an empty tmpfs with only the interpreter's prefix bound into it. (Unreached, a
    pyenv build's RUNPATH fails and the loader quietly takes the system's libpython.)"""
    prefix = Path(sys.base_prefix).resolve()
    closed = next((p for p in reversed(prefix.parents) if not os.stat(p).st_mode & 0o001), None)
    if closed is None:
        return []
    argv = ["--perms", "0755", "--tmpfs", str(closed)]
    for parent in reversed(prefix.parents):  # bwrap would make the folders in between 0700
        if parent.is_relative_to(closed) and parent != closed:
            argv += ["--perms", "0755", "--dir", str(parent)]
    return [*argv, "--ro-bind", str(prefix), str(prefix)]


@dataclass
class Run:
    code: int
    log: str
    feedback: dict
    page: bytes


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Run]:
    work = tmp_path_factory.mktemp("coursera")
    image = work / "grader"
    argv = [*cli(), "export", "coursera", "--out", str(image)]
    for part in PARTS:
        argv += ["--part", part]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    # the venv's own path must be reachable by the learner uid (its scripts name it)
    opt = Path(tempfile.mkdtemp(prefix="mbgd-coursera-venv-"))
    opt.chmod(0o755)
    try:
        (wheel,) = image.glob("*.whl")
        install_for_real(wheel, opt / "venv", python=system_python())  # the image's python3
        started: dict[str, tuple[subprocess.Popen, Path]] = {}
        with mountpoints("/shared", "/grader", "/opt/mbgd"):
            for path in ("/shared", "/grader", "/opt/mbgd"):
                Path(path).mkdir(exist_ok=True)
            for case, sub in SUBMITTED.items():
                shared = work / case.replace(" ", "-")
                (shared / "submission").mkdir(parents=True)
                target = shared / "submission" / "lab.ipynb"
                file = sub["file"]
                if isinstance(file, Path):
                    shutil.copyfile(file, target)
                else:
                    target.write_bytes(file)  # type: ignore[arg-type]
                os.chown(shared, LEARNER_UID, LEARNER_UID)
                argv = ["bwrap", "--dev-bind", "/", "/", *interpreter_reachable()]
                argv += ["--unshare-net", "--die-with-parent"]
                argv += ["--bind", str(shared), "/shared"]
                argv += ["--ro-bind", str(shared / "submission"), "/shared/submission"]
                argv += ["--ro-bind", str(image), "/grader"]
                argv += ["--bind", str(opt / "venv"), "/opt/mbgd", "--clearenv"]
                for key in ("partId", "filename"):
                    argv += ["--setenv", key, str(sub[key])]
                argv += ["--setenv", "userId", "learner-17", "--chdir", "/", "--"]
                argv += ["setpriv", f"--reuid={LEARNER_UID}", f"--regid={LEARNER_UID}"]
                argv += ["--clear-groups", "/opt/mbgd/bin/mbgd-grader", "coursera"]
                argv += ["--config", "/grader/coursera.json"]
                log = shared.parent / f"{shared.name}.log"
                with log.open("wb") as out:
                    proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
                started[case] = (proc, shared)
            results = {}
            for case, (proc, shared) in started.items():
                code = proc.wait(timeout=600)
                log = (shared.parent / f"{shared.name}.log").read_text()
                feedback = json.loads((shared / "feedback.json").read_text())
                page = (shared / "htmlFeedback.html").read_bytes()
                results[case] = Run(code, log, feedback, page)
    finally:
        shutil.rmtree(opt, ignore_errors=True)
    return results


@pytest.mark.parametrize("case", list(SUBMITTED))
def test_every_submission_gets_feedback_in_courseras_format(
    runs: dict[str, Run], case: str
) -> None:
    run = runs[case]
    assert run.code == 0, run.log
    feedback = run.feedback
    assert set(feedback) == {"fractionalScore", "feedback", "feedbackType"}
    score = feedback["fractionalScore"]
    assert isinstance(score, float | int) and not isinstance(score, bool) and 0 <= score <= 1
    assert isinstance(feedback["feedback"], str) and feedback["feedback"]
    assert feedback["feedbackType"] == "HTML"
    assert len(run.page) <= MAX_HTML_BYTES < 64 * 1024
    text = run.page.decode("utf-8")
    assert text.lstrip().lower().startswith("<!doctype html")
    assert not re.search(r"<script|<link|(src|href)=\"https?:", text, re.I)  # self-contained


def test_a_notebook_is_graded_as_everywhere_else(runs: dict[str, Run]) -> None:
    sample = next(s for s in MANIFEST if s["path"] == MISTAKE)
    run = runs["mistake"]
    max_score = load_rubric().max_score
    assert run.feedback["fractionalScore"] == pytest.approx(sample["score"] / max_score)
    page = run.page.decode()
    assert "<svg" in page  # the loss curves, inline
    assert "batch size 10" in page or "batch_size_10" in page
    assert "bubblewrap" in page or "rlimits-only" in page  # what isolation was in force
    assert "learner-17" in run.log and "graded" in run.log  # the staff's container log


def test_an_unknown_part_is_told_not_crashed(runs: dict[str, Run]) -> None:
    run = runs["unknown part"]
    assert run.feedback["fractionalScore"] == 0
    for words in ("Xy9Zq", "5ShhY", "Zb6wb", "course staff"):
        assert words in run.feedback["feedback"]
        assert words in run.page.decode()


def test_a_script_is_told_to_upload_the_notebook(runs: dict[str, Run]) -> None:
    run = runs["script"]
    assert run.feedback["fractionalScore"] == 0
    assert "lab.py" in run.feedback["feedback"] and ".ipynb" in run.feedback["feedback"]
