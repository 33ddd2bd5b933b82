"""What of the grader a learner's kernel could see, and the bubblewrap options that hide it.

The kernel's sandbox binds the Python it runs on read-only
(`grader.execution.launch.ro_binds`): the interpreter's prefix, the venv and the site dirs
added by `.pth` files. With a regular install (`pip install .`, a wheel, `--target`), the grader
itself lives in one of those site-packages, so without more a notebook could `from reference
import expected` and compute the right LOSS20 for whatever seed its run uses, or read the rubric
and the sources.

`mask_argv(bound)` finds, from the harness's point of view, where the grader lives:
- the packages `grader` and `reference` as this process imports them (`__spec__` locations);
- every file of every installed distribution named `mbgd-grader` on `sys.path`
  (`importlib.metadata`): its packages, its `.dist-info`, editable-install `.pth` and finder
  files, console scripts;
- the source checkout around an imported package (a `pyproject.toml` next to it), with its
  tests, samples and `.git`;

and, for each of those the kernel could see through a bound path, returns the options that
hide it behind a read-only mount: an empty tmpfs for a directory (a package directory gets
only an `__init__.py` that raises ModuleNotFoundError, so it cannot import as an empty
namespace package either), `/dev/null` for a file (bound `nodev`: it cannot even be opened).
Where a path to hide holds a bound path itself (a venv inside a checkout under a bound
directory), its other entries are hidden one by one instead.

The warm pool's zygote is started with the same options (`grader.execution.launch.bwrap_argv`),
and the kernels it forks copy its mount namespace (their fresh /tmp binds back what of Python
lives under /tmp recursively), so both launch paths hide the same things.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
import sys
from collections.abc import Iterable
from pathlib import Path

PACKAGES = ("grader", "reference")
DISTRIBUTION = "mbgd-grader"
PROJECT_MARKERS = ("pyproject.toml", "setup.py", "setup.cfg", ".git")
SYSTEM_DIRS = ("/usr", "/lib", "/lib64", "/bin", "/sbin")
STUB = Path(__file__).parent / "in_kernel" / "masked_init.py"  # the __init__.py of a hidden package


def _real(path: str | os.PathLike[str]) -> str:
    return os.path.realpath(os.fspath(path))


def _within(path: str, root: str) -> bool:
    """`path` is `root` or below it (both normalised, absolute)."""
    return path == root or path.startswith(root.rstrip("/") + "/")


def _in_site_dir(path: str) -> bool:
    return any(part in ("site-packages", "dist-packages") for part in Path(path).parts)


def package_dirs() -> list[str]:
    """Real paths of the directories this process imports `grader` and `reference` from."""
    found = []
    for name in PACKAGES:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            continue
        if spec is not None:
            found += [_real(p) for p in spec.submodule_search_locations or []]
    return sorted(set(found))


def checkout_roots(packages: Iterable[str] | None = None) -> list[str]:
    """Source checkouts the grader's packages are imported from (editable installs, a tree
    on PYTHONPATH): the nearest ancestor, up to two levels, holding a project marker."""
    roots = set()
    for package in package_dirs() if packages is None else packages:
        if _in_site_dir(package):
            continue  # an installed copy: site-packages is no checkout
        for parent in list(Path(package).parents)[:2]:
            if any((parent / marker).exists() for marker in PROJECT_MARKERS):
                roots.add(str(parent))
                break
    return sorted(roots)


def distribution_paths() -> list[str]:
    """Real paths of what the installed `mbgd-grader` distributions consist of, with their
    top-level package and metadata directories whole (not file by file)."""
    found: set[str] = set()
    prefix = DISTRIBUTION.replace("-", "_").lower()
    seen: set[str] = set()
    for dist in importlib.metadata.distributions(name=DISTRIBUTION):
        meta_dir = getattr(dist, "_path", None)  # PathDistribution: its .dist-info/.egg-info
        key = _real(meta_dir) if meta_dir is not None else repr(dist)
        if key in seen:
            continue
        seen.add(key)
        if meta_dir is not None:
            found.add(_real(meta_dir))
        base = _real(str(dist.locate_file("")))  # a SimplePath: str() is its path
        for item in dist.files or []:
            path = _real(str(dist.locate_file(item)))
            parts = Path(item).parts
            top = parts[0] if parts else ""
            ours = top in PACKAGES or (
                top.lower().startswith(prefix) and top.endswith((".dist-info", ".egg-info"))
            )
            if len(parts) > 1 and ours:
                found.add(os.path.join(base, top))  # the whole package / metadata directory
            elif os.path.exists(path):
                found.add(path)  # a top-level file (.pth, finder), a script, a stray file
    return sorted(found)


def hidden_paths() -> list[str]:
    """Real paths of everything of the grader a learner's kernel must not see."""
    packages = package_dirs()
    return sorted({*packages, *checkout_roots(packages), *distribution_paths()})


def _cwd() -> str | None:
    try:
        return _real(os.getcwd())
    except OSError:
        return None


def pth_site_dirs() -> list[str]:
    """Directories that `.pth` files in this interpreter's site-packages add to `sys.path`.

    The kernel's interpreter reads the same `.pth` files (they are in its bound prefix), so it
    puts these directories on its `sys.path` too and needs them bound, or it cannot import
    what lives there (torch, say). Never the working directory or a source checkout, nor a
    directory holding either.
    """
    import site

    try:
        sites = site.getsitepackages()
    except AttributeError:  # some embedded interpreters have no getsitepackages
        sites = []
    on_path = {_real(p) for p in sys.path if p and os.path.isabs(p)}
    found = set()
    for sitedir in sites:
        with contextlib.suppress(OSError):
            names = sorted(n for n in os.listdir(sitedir) if n.endswith(".pth"))
            for name in names:
                with contextlib.suppress(OSError, UnicodeDecodeError):
                    lines = Path(sitedir, name).read_text(encoding="utf-8").splitlines()
                    for line in lines:
                        line = line.strip()
                        if not line or line.startswith(("#", "import ", "import\t")):
                            continue
                        path = _real(os.path.join(sitedir, line))
                        if path in on_path and os.path.isdir(path):
                            found.add(path)
    cwd, checkouts = _cwd(), checkout_roots()
    return sorted(
        p
        for p in found
        if p != "/"
        and (cwd is None or not _within(cwd, p))  # not the cwd, nor a directory holding it
        and not any(_within(c, p) or _within(p, c) for c in checkouts)
    )


def visible_roots(bound: Iterable[str]) -> list[str]:
    """The read-only paths the kernel sees: the system directories bubblewrap binds (real
    directories, not symlinks into /usr) and `bound`."""
    roots = [d for d in SYSTEM_DIRS if os.path.isdir(d) and not os.path.islink(d)]
    return sorted({*roots, *(os.path.normpath(b) for b in bound)})


def _sandbox_paths(real: str, roots: list[str]) -> list[str]:
    """Where the kernel sees host path `real`: under each bound root that holds it."""
    seen = []
    for root in roots:
        real_root = _real(root)
        if _within(real, real_root):
            rel = os.path.relpath(real, real_root)
            seen.append(root if rel == "." else os.path.join(root, rel))
    return seen


def _cover(path: str, roots: list[str]) -> list[str]:
    """Paths that hide `path` in the sandbox while keeping every bound root under it."""
    inside = [r for r in roots if _within(r, path)]
    if not inside:
        return [path]
    if path in inside:
        return []  # bound itself (the Python the kernel runs on): cannot be hidden
    covered = []
    with contextlib.suppress(OSError):
        for entry in sorted(os.scandir(path), key=lambda e: e.name):
            if entry.is_symlink() or not (entry.is_dir() or entry.is_file()):
                continue  # a mount would follow the link; sockets and fifos hold nothing
            covered += _cover(entry.path, inside)
    return covered


def masks(bound: Iterable[str]) -> list[str]:
    """Sandbox paths to hide, given the paths bound read-only besides the system dirs."""
    roots = visible_roots(bound)
    targets = set()
    for real in hidden_paths():
        for seen in _sandbox_paths(real, roots):
            targets.update(_cover(seen, roots))
    # an outer directory hidden whole makes its inner entries moot
    ordered = sorted(targets)
    return [t for t in ordered if not any(t != o and _within(t, o) for o in ordered)]


def mask_argv(bound: Iterable[str]) -> list[str]:
    """bubblewrap options, to follow the binds, that hide the grader from the kernel."""
    argv: list[str] = []
    for path in masks(bound):
        if os.path.isdir(path):
            argv += ["--tmpfs", path]
            if os.path.basename(path) in PACKAGES and STUB.is_file():
                argv += ["--ro-bind", str(STUB), os.path.join(path, "__init__.py")]
            argv += ["--remount-ro", path]
        elif os.path.exists(path):
            argv += ["--ro-bind", "/dev/null", path]
    return argv
