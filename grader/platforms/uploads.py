"""What a learner uploaded to a platform: the one notebook to grade, or what to upload instead.

Platforms hand the grader a folder of whatever the learner chose to upload. The lab is one
notebook; anything else (nothing, a `.py` export, two notebooks) is answered with a score of
0 and a sentence that tells the learner what to upload, never with a crash.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from grader.execution.limits import RunLimits
from grader.grading.rubric import Rubric, load_rubric
from grader.models import GradeResult, grader_failed
from grader.submission import notebooks_under

HOW_TO_DOWNLOAD = "in Jupyter: File > Download > Notebook (.ipynb)"
MAX_LISTED = 5


@dataclass(frozen=True)
class WrongUpload:
    """The upload cannot be graded as the lab; `message` tells the learner what to upload."""

    message: str


def _visible_files(folder: Path) -> list[str]:
    """Names (relative to `folder`) of the regular files a learner can see they uploaded."""
    names: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            path = Path(dirpath, name)
            if not name.startswith(".") and path.is_file() and not path.is_symlink():
                names.append(str(path.relative_to(folder)))
    return names


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_LISTED])
    return shown + (f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else "")


def script_instead(filename: str) -> WrongUpload:
    """A `.py` (or other script export) where the notebook was expected."""
    return WrongUpload(
        f"You uploaded {filename}, a Python script, not a notebook: the lab is graded from "
        f"your notebook. Upload the .ipynb file ({HOW_TO_DOWNLOAD})."
    )


def the_notebook(folder: Path) -> Path | WrongUpload:
    """The one notebook in `folder` (searched like every door searches folders), or why not."""
    folder = Path(folder)
    notebooks = notebooks_under(folder) if folder.is_dir() else []
    if len(notebooks) == 1:
        return notebooks[0]
    if len(notebooks) > 1:
        names = [str(p.relative_to(folder)) for p in notebooks]
        return WrongUpload(
            f"Upload exactly one notebook: this submission has {len(names)} "
            f"({_listing(names)}). Submit again with only your lab notebook."
        )
    files = _visible_files(folder) if folder.is_dir() else []
    scripts = [name for name in files if name.endswith(".py")]
    if scripts:
        return script_instead(_listing(scripts))
    if files:
        return WrongUpload(
            f"No notebook (.ipynb) was uploaded (found {_listing(files)}). Upload your lab "
            f"notebook ({HOW_TO_DOWNLOAD})."
        )
    return WrongUpload(f"Nothing was uploaded. Upload your lab notebook ({HOW_TO_DOWNLOAD}).")


def wrong_upload_result(name: str, wrong: WrongUpload, rubric: Rubric) -> GradeResult:
    """The graded result of an upload that is not the one notebook: every check at zero."""
    return rubric.rejected(name, wrong.message, time.monotonic())


def grade_upload(folder: Path, rubric: str | None, limits: RunLimits) -> GradeResult:
    """The result for what is in the submission folder; never raises (a broken rubric or a
    grader bug is a "crashed" result: the learner still gets their platform's result file).

    The grading core (and torch with it) is imported only when there is a notebook to grade:
    a wrong upload is answered in a second."""
    picked = the_notebook(folder)
    name = picked.stem if isinstance(picked, Path) else "submission"
    try:
        if isinstance(picked, WrongUpload):
            return wrong_upload_result(name, picked, load_rubric(rubric))
        from grader.pipeline import GradeOptions, grade

        return grade(picked, name, GradeOptions(rubric_path=rubric, limits=limits))
    except Exception as error:  # noqa: BLE001 - whatever it is, a result is written
        return grader_failed(name, error)
