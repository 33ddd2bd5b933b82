"""`mbgd-grader export gradescope|coursera`: what an instructor uploads to a course platform.

Both packages hold the running grader's own wheel (`wheel.own_wheel`), the rubric and the
scripts of `templates/`, which pin torch to the version this grader runs with (its CPU build).
A rubric is checked here, so a broken one fails on the instructor's machine, not on the
platform's.
"""

from __future__ import annotations

import json
import re
import shlex
import tempfile
import zipfile
from functools import cache
from importlib.metadata import PackageNotFoundError, distribution, version
from pathlib import Path

import jinja2
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from grader import __version__
from grader.errors import UsageError
from grader.grading.rubric import default_rubric_text, load_rubric
from grader.platforms.wheel import own_wheel

RUBRIC_NAME = "rubric.toml"
CONFIG_NAME = "coursera.json"
CONSTRAINTS_NAME = "constraints.txt"
# Coursera's part ids are short alphanumeric strings ("5ShhY").
PART_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class ExportError(UsageError):
    """An export that cannot be written as asked (a bad part id, a folder in the way)."""


@cache
def _templates() -> jinja2.Environment:
    """Shell and Dockerfile templates: no HTML escaping; every value goes through `shell`."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("grader.platforms", "templates"),
        autoescape=False,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    env.filters["shell"] = lambda value: shlex.quote(str(value))
    return env


def torch_requirement() -> str:
    """`torch==X.Y.Z`: the version this grader runs with, without a local tag like `+cpu`."""
    try:
        installed = version("torch")
    except PackageNotFoundError as error:  # pragma: no cover - torch is a dependency
        raise ExportError("torch is not installed: nothing to pin the package to") from error
    return "torch==" + installed.split("+", 1)[0]


def tested_versions() -> dict[str, str]:
    """Every package mbgd-grader depends on, directly or not, at the version installed here
    (local tags like `+cpu` dropped): the platform installs exactly what was tried."""
    found: dict[str, str] = {}
    todo: list[tuple[str, frozenset[str]]] = [("mbgd-grader", frozenset())]
    while todo:
        name, extras = todo.pop()
        try:
            dist = distribution(name)
        except PackageNotFoundError:  # an optional dependency that is not installed
            continue
        key = canonicalize_name(dist.metadata["Name"])
        if key in found:
            continue
        found[key] = dist.version.split("+", 1)[0]
        for line in dist.requires or []:
            requirement = Requirement(line)
            environments = [{"extra": extra} for extra in extras] or [{"extra": ""}]
            marker = requirement.marker
            if marker is None or any(marker.evaluate(env) for env in environments):
                todo.append((requirement.name, frozenset(requirement.extras)))
    found.pop("mbgd-grader", None)
    return dict(sorted(found.items()))


def _constraints() -> str:
    lines = [f"{name}=={pinned}" for name, pinned in tested_versions().items()]
    header = f"# The versions mbgd-grader {__version__} was run with where it was exported.\n"
    return header + "\n".join(lines) + "\n"


def _rubric_bytes(rubric: Path | None) -> bytes:
    """The rubric file's bytes, after checking it parses (the shipped one when None)."""
    load_rubric(rubric)  # RubricError (a UsageError) says what is wrong with it
    if rubric is None:
        return default_rubric_text().encode("utf-8")
    return Path(rubric).read_bytes()


def _render(template: str, wheel: str) -> str:
    return (
        _templates()
        .get_template(template)
        .render(
            version=__version__,
            wheel=wheel,
            rubric=RUBRIC_NAME,
            constraints=CONSTRAINTS_NAME,
            torch_requirement=torch_requirement(),
        )
    )


def _add(archive: zipfile.ZipFile, name: str, data: bytes | str, mode: int = 0o644) -> None:
    """One file at the zip's root, with Unix permissions (run_autograder must be executable)."""
    info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
    info.external_attr = (0o100000 | mode) << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    archive.writestr(info, data)


def export_gradescope(out: Path, rubric: Path | None = None) -> Path:
    """Write Gradescope's autograder zip: setup.sh, run_autograder, the rubric, the wheel and
    the tested versions, all at the root of the archive (unpacked to /autograder/source)."""
    rubric_data = _rubric_bytes(rubric)
    out = Path(out)
    if out.is_dir():
        raise ExportError(f"{out} is a folder; give the zip file to write, e.g. autograder.zip")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mbgd-export-") as tmp:
        wheel = own_wheel(Path(tmp))
        partial = out.with_name(f".{out.name}.partial")
        try:
            with zipfile.ZipFile(partial, "w") as archive:
                _add(archive, "setup.sh", _render("gradescope/setup.sh.j2", wheel.name), 0o755)
                run_autograder = _render("gradescope/run_autograder.j2", wheel.name)
                _add(archive, "run_autograder", run_autograder, 0o755)
                _add(archive, RUBRIC_NAME, rubric_data)
                _add(archive, CONSTRAINTS_NAME, _constraints())
                _add(archive, wheel.name, wheel.read_bytes())
            partial.replace(out)  # all or nothing: never half a zip under the name asked for
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
    return out


OURS = re.compile(
    r"^(Dockerfile|rubric\.toml|coursera\.json|constraints\.txt|mbgd_grader-.*\.whl)$"
)


def export_coursera(out: Path, parts: list[str], rubric: Path | None = None) -> Path:
    """Write Coursera's grader folder: Dockerfile, wheel, rubric, the tested versions and
    coursera.json (the part ids to grade: in the image, as Coursera drops the image's ENV)."""
    if not parts:
        raise ExportError("give at least one --part: the partId of the assignment part to grade")
    bad = [part for part in parts if not PART_ID.match(part)]
    if bad:
        raise ExportError(f"not a Coursera part id: {', '.join(map(repr, bad))}")
    rubric_data = _rubric_bytes(rubric)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    foreign = sorted(p.name for p in out.iterdir() if not OURS.match(p.name))
    if foreign:
        raise ExportError(
            f"{out} holds other files ({', '.join(foreign[:5])}): the whole folder is uploaded, "
            "so export into an empty one"
        )
    for old in out.glob("mbgd_grader-*.whl"):
        old.unlink()
    wheel = own_wheel(out)
    (out / RUBRIC_NAME).write_bytes(rubric_data)
    (out / CONSTRAINTS_NAME).write_text(_constraints(), encoding="utf-8")
    config = {"parts": sorted(set(parts)), "rubric": f"/grader/{RUBRIC_NAME}"}
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (out / "Dockerfile").write_text(_render("coursera/Dockerfile.j2", wheel.name), "utf-8")
    return out
