"""The wheel of the mbgd-grader that is running: what a platform package installs, so the
grader a course uploads is exactly the one the instructor tried.

From a source checkout (an editable install, `make setup`) the wheel is built from the
sources with pip, offline (no build isolation: setuptools is already installed). From an
installed wheel (`pip install mbgd-grader`) there are no sources: the installed files, as the
install record lists them, are packed into a wheel again.
"""

from __future__ import annotations

import base64
import hashlib
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from importlib.metadata import Distribution, PackageNotFoundError, distribution
from pathlib import Path

from grader.errors import Unavailable

DIST_NAME = "mbgd-grader"
# What setuptools needs of a checkout to build the wheel (pyproject.toml names them all).
SOURCE_ITEMS = ("pyproject.toml", "README.md", "grader", "reference")
# Install-time files of a dist-info that are not part of a wheel.
NOT_IN_WHEEL = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"}


class WheelError(Unavailable, RuntimeError):
    """The running package's wheel cannot be built or packed here (the message says why)."""


def source_checkout() -> Path | None:
    """The checkout the running `grader` package is imported from, if it is one."""
    root = Path(__file__).resolve().parents[2]
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file():
        return None
    text = pyproject.read_text(encoding="utf-8")
    return root if re.search(r'^name\s*=\s*"mbgd-grader"', text, re.M) else None


def own_wheel(dest: Path) -> Path:
    """Write the running package's wheel into `dest` and return its path."""
    dest.mkdir(parents=True, exist_ok=True)
    root = source_checkout()
    if root is not None:
        return build_from_source(root, dest)
    try:
        dist = distribution(DIST_NAME)
    except PackageNotFoundError as error:
        raise WheelError("mbgd-grader is neither installed nor run from its sources") from error
    return repack_installed(dist, dest)


def build_from_source(root: Path, dest: Path) -> Path:
    """`pip wheel --no-deps` of a copy of the sources (the build leaves `build/` and an
    egg-info behind; in a copy, two exports at once and the checkout stay clean)."""
    with tempfile.TemporaryDirectory(prefix="mbgd-wheel-") as tmp:
        copy = Path(tmp, "src")
        copy.mkdir()
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
        for item in SOURCE_ITEMS:
            src = root / item
            if src.is_dir():
                shutil.copytree(src, copy / item, ignore=ignore)
            else:
                shutil.copy2(src, copy / item)
        out = Path(tmp, "out")
        argv = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
        argv += ["--no-index", "--quiet", "--wheel-dir", str(out), str(copy)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
        wheels = sorted(out.glob("mbgd_grader-*.whl"))
        if done.returncode != 0 or len(wheels) != 1:
            tail = (done.stderr or done.stdout).strip()[-2000:]
            raise WheelError(f"building the mbgd-grader wheel failed: {tail}")
        target = dest / wheels[0].name
        shutil.copy2(wheels[0], target)
        return target


def _record_hash(data: bytes) -> str:
    digest = hashlib.sha256(data).digest()
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _wheel_tag(dist: Distribution) -> str:
    """The first `Tag:` of the install's WHEEL file (this package is pure: py3-none-any)."""
    tags = re.findall(r"^Tag:\s*(\S+)", dist.read_text("WHEEL") or "", re.M)
    return tags[0] if tags else "py3-none-any"


def repack_installed(dist: Distribution, dest: Path) -> Path:
    """A wheel of an installed distribution, from the files its RECORD lists.

    Left out: bytecode, console scripts (pip writes them anew from entry_points.txt) and the
    files an installer adds. The new RECORD carries each file's hash and size."""
    files = [f for f in dist.files or [] if not str(f).startswith("..")]
    if not any(str(f).startswith("grader/") for f in files):
        raise WheelError(
            "the installed mbgd-grader lists no package files (an editable install without "
            "its sources?); install it from a wheel or run from its checkout"
        )
    name = dist.metadata["Name"].replace("-", "_")
    version = dist.version
    info = f"{name}-{version}.dist-info"
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / f"{name}-{version}-{_wheel_tag(dist)}.whl"
    record: list[str] = []
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as whl:
        ordered = sorted(files, key=lambda f: (str(f).startswith(info), str(f)))
        for file in ordered:
            path = str(file)
            if "__pycache__" in path or path.endswith(".pyc"):
                continue
            if path.startswith(info + "/") and path.split("/", 1)[1] in NOT_IN_WHEEL:
                continue
            data = Path(str(file.locate())).read_bytes()
            whl.writestr(path, data)
            record.append(f"{path},{_record_hash(data)},{len(data)}")
        record.append(f"{info}/RECORD,,")
        whl.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return target
