"""The grader installed into a venv of the distribution's own Python (issue 22).

Courses make their venvs of `/usr/bin/python3` (Gradescope's setup.sh, the Coursera image,
`make grade PYTHON=/usr/bin/python3`). Debian 12's 3.11.2 started reading a unix socket even
when the protocol paused it in `connection_made`, so the ZMTP guard lost the harness's greeting
and every kernel ended `not_started`: fresh kernels, the warm pool and the learner's portable
kernel alike. The platform runs (tests/platforms/test_*_run.py) grade on such a venv too; here:
the guard's relay under that interpreter, the batch CLI on both kernel sources, and the
learner's pytest plugin on the portable (tcp) kernel.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from grader.platforms.wheel import own_wheel
from tests.helpers import (
    MANIFEST,
    ROOT,
    SUBMISSIONS,
    install_for_real,
    read_csv,
    system_python,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap (bwrap)"),
]

SAMPLES = ("correct/loss20.ipynb", "mistakes/stale_loader.ipynb", "broken/unsolved.ipynb")


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A venv of the system Python with the grader's wheel installed by pip."""
    python = system_python()
    work = tmp_path_factory.mktemp("system-python")
    wheel = own_wheel(work / "dist")
    install_for_real(wheel, work / "venv", python=python)
    bin_python = work / "venv" / "bin" / "python"
    done = subprocess.run(
        [str(bin_python), "-c", "import sys; print(sys.base_prefix)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(done.stdout.strip()) == Path(python).resolve().parent.parent  # e.g. /usr
    return work / "venv"


def pytest_in(venv: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """pytest run by the venv's own interpreter."""
    argv = [str(venv / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider", *args]
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=600, check=False)


def test_the_guard_relays_under_the_system_python(venv: Path) -> None:
    """No kernel: the guard's relay test, run by that interpreter (failed there before)."""
    done = pytest_in(venv, ROOT, "tests/execution/test_bounds.py", "-k", "guard")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert " passed" in done.stdout


@pytest.fixture(scope="module")
def batch_runs(venv: Path, tmp_path_factory) -> dict[str, dict[str, dict]]:
    """The samples graded by the venv's CLI, from the warm pool and in fresh kernels:
    per source and sample, the gradebook row and `extra_data` of its results.json."""
    folder = tmp_path_factory.mktemp("samples")
    for sample in SAMPLES:
        target = folder / sample
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SUBMISSIONS / sample, target)
    runs: dict[str, dict[str, dict]] = {}
    for source, pool in (("warm", "1"), ("fresh", "0")):
        out = tmp_path_factory.mktemp(f"reports-{source}")
        done = subprocess.run(
            [str(venv / "bin" / "mbgd-grader"), "grade", str(folder), "--out", str(out)]
            + ["--jobs", "2", "--cell-timeout", "60"],
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "MBGD_WARM_POOL": pool},
            check=False,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        runs[source] = {}
        for row in read_csv(out / "gradebook.csv"):
            extra = json.loads((out / row["submission"] / "results.json").read_text())
            runs[source][row["submission"]] = {**row, **extra["extra_data"]}
    return runs


@pytest.mark.parametrize("source", ["warm", "fresh"])
@pytest.mark.parametrize("sample", SAMPLES)
def test_the_system_python_venv_grades_as_the_manifest_says(
    batch_runs: dict[str, dict[str, dict]], source: str, sample: str
) -> None:
    got = batch_runs[source][sample.removesuffix(".ipynb")]
    want = next(entry for entry in MANIFEST if entry["path"] == sample)
    assert (got["status"], float(got["score"])) == (want["status"], want["score"]), got
    assert got["mistake"] == want["diagnosis"], got
    assert got["kernel_origin"] == source, got
    assert got["sandbox"].startswith("bubblewrap"), got


def test_the_learners_plugin_on_the_system_python(venv: Path, tmp_path: Path) -> None:
    """The learner's door, on the portable kernel (tcp on loopback, guarded the same way)."""
    notebook = tmp_path / "my_lab.ipynb"
    shutil.copyfile(SUBMISSIONS / "correct" / "loss20.ipynb", notebook)
    done = pytest_in(venv, tmp_path, "--mbgd-notebook", str(notebook), "--mbgd-portable")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "10/10" in done.stdout or "10.0/10" in done.stdout, done.stdout[-4000:]
