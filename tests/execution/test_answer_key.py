"""Issue 12: the grader's answer key, rubric and sources stay out of a learner's kernel.

Tested from a regular install, as a course deploys the grader: a throwaway venv with this
project pip-installed from a wheel (no dependencies; they resolve from the test venv's
site-packages through a `.pth` line: nothing is downloaded, torch is not reinstalled), run
from a folder where the source checkout is not importable. There, `grader` and `reference`
live in the venv's site-packages, which the sandbox binds into every kernel.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from grader.execution.pool import KernelPool
from tests.helpers import ROOT

SAMPLE = ROOT / "submissions" / "hostile" / "answer_key.ipynb"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs the bubblewrap sandbox"),
]

# Run inside a sandbox made by the installed grader's bwrap_argv (a fresh kernel's launch).
FRESH_PROBE = r"""
import glob, importlib, json, os, sys
seen = {"imported": [], "readable": {}}
for name in ("reference", "grader"):
    try:
        importlib.import_module(name)
        seen["imported"].append(name)
    except ImportError:
        pass
for place in sys.path:
    for pattern in ("grader/*", "reference/*", "mbgd_grader*", "mbgd_grader*/*", "*mbgd_grader*"):
        for path in glob.glob(os.path.join(place, pattern)):
            try:
                with open(path, "rb") as handle:
                    seen["readable"][path] = handle.read().decode("utf-8", "replace")
            except OSError:
                pass
print(json.dumps(seen))
"""

# Run by the installed grader (outside any sandbox): where it lives and what it launches.
HARNESS = r"""
import json, shutil, subprocess, sys, tempfile
from pathlib import Path
import grader, reference
from grader.execution.launch import bwrap_argv, kernel_env
from grader.execution.sandbox import find_bwrap
work = Path(tempfile.mkdtemp(prefix="mbgd-test-", dir="/tmp"))
(work / "home").mkdir()
argv = bwrap_argv(find_bwrap(), work, kernel_env(work), uid=None, disk_mb=64)
done = subprocess.run([*argv, sys.executable, "-c", sys.argv[1]], capture_output=True, text=True)
shutil.rmtree(work, ignore_errors=True)
print(json.dumps({
    "grader": grader.__file__, "reference": reference.__file__,
    "stub": (Path(grader.__file__).parent / "execution/in_kernel/masked_init.py").read_text(),
    "sandboxed": json.loads(done.stdout or "null"), "stderr": done.stderr[-2000:],
}))
"""


@pytest.fixture(scope="session")
def regular_install(tmp_path_factory) -> Path:
    """The python of a throwaway venv holding a wheel-installed mbgd-grader."""
    work = tmp_path_factory.mktemp("regular-install")
    src = work / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("grader", "reference"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    venv = work / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # the dependencies (torch, ipykernel, ...) from the test venv, as a .pth-added site dir
    Path(purelib, "_mbgd_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    wheels = work / "dist"
    build = [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(wheels)]
    subprocess.run([*build, str(src)], check=True, timeout=300, cwd=work)
    (wheel,) = wheels.glob("mbgd_grader-*.whl")
    install = [*pip, "install", "--no-deps", "--no-index", "--target", purelib, str(wheel)]
    subprocess.run(install, check=True, timeout=300, cwd=work)
    return python


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MBGD_SECRET_SEED")}


@pytest.fixture(scope="session")
def fresh_launch(regular_install) -> dict:
    cwd = regular_install.parents[2]  # the throwaway folder, not the checkout
    command = [regular_install, "-c", HARNESS, FRESH_PROBE]
    done = subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=_env(), timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


@pytest.fixture(scope="session")
def graded(regular_install) -> dict:
    """The hostile answer-key notebook graded by the installed grader, with --integrity."""
    work = regular_install.parents[2]
    folder, out = work / "class", work / "reports"
    folder.mkdir()
    shutil.copy(SAMPLE, folder / SAMPLE.name)
    command = [regular_install, "-m", "grader.cli", "grade", str(folder), "--out", str(out)]
    command += ["--jobs", "1", "--integrity", "--cell-timeout", "60", "--timeout", "120"]
    done = subprocess.run(
        command, capture_output=True, text=True, cwd=work, env=_env(), timeout=600
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    with sqlite3.connect(out / "gradebook.sqlite") as db:
        (text,) = db.execute("SELECT result FROM submissions").fetchone()
    return json.loads(text)


def test_the_install_is_a_regular_one_outside_the_checkout(fresh_launch, regular_install):
    venv = regular_install.parents[1]
    for name in ("grader", "reference"):
        assert Path(fresh_launch[name]).is_relative_to(venv), fresh_launch[name]
        assert not Path(fresh_launch[name]).is_relative_to(ROOT)


def test_a_fresh_kernel_cannot_import_or_read_the_grader(fresh_launch):
    seen = fresh_launch["sandboxed"]
    assert seen is not None, fresh_launch["stderr"]
    assert seen["imported"] == []
    # all that is left readable: the stub that makes the imports fail
    readable = {path: text for path, text in seen["readable"].items() if text}
    assert readable, "the probe found nothing: did the install end up elsewhere?"
    for path, text in readable.items():
        assert path.endswith("/__init__.py") and text == fresh_launch["stub"], path


def test_the_answer_key_notebook_gets_no_full_marks(graded):
    found = graded["execution"]["variables"]["FOUND"]
    seen = json.loads(bytes(int(v) for v in found["values"]).decode())
    assert seen["packages"], "the notebook did not look where the install put the grader"
    assert seen["imports"] == [] and seen["rubric"] == [], seen
    assert seen["sources"] == [] and seen["record"] == [], seen
    checks = {c["id"]: c for c in graded["checks"]}
    assert not checks["loss20.values"]["passed"]
    assert graded["score"] < graded["max_score"]
    if KernelPool.available():  # the grade ran in a kernel forked from the warm zygote
        assert graded["execution"]["kernel"] == "warm"
