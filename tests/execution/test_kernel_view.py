"""grader.execution.kernel_view without kernels: which paths get hidden, and how (issue 12)."""

from __future__ import annotations

import os
import site
import sys
from pathlib import Path

from grader.execution import kernel_view


def _tree(root: Path) -> dict[str, Path]:
    """A prefix with a regular install, and a checkout holding its own venv."""
    prefix = root / "prefix"
    sp = prefix / "lib" / "site-packages"
    for package in ("grader", "reference", "torch"):
        (sp / package).mkdir(parents=True)
        (sp / package / "__init__.py").write_text("")
    (sp / "mbgd_grader-1.0.dist-info").mkdir()
    (sp / "mbgd_grader-1.0.dist-info" / "RECORD").write_text("grader/__init__.py,,\n")
    (sp / "__editable__.mbgd_grader-1.0.pth").write_text("import finder\n")
    checkout = root / "opt" / "mbgd"
    (checkout / "grader").mkdir(parents=True)
    (checkout / "tests").mkdir()
    (checkout / "pyproject.toml").write_text("")
    venv = checkout / ".venv"
    (venv / "lib").mkdir(parents=True)
    link = root / "linked-prefix"
    link.symlink_to(prefix)
    return {"prefix": prefix, "sp": sp, "checkout": checkout, "venv": venv, "link": link}


def test_what_a_bound_path_shows_is_hidden_and_nothing_else(tmp_path, monkeypatch):
    t = _tree(tmp_path)
    sp = t["sp"]
    hidden = [
        sp / "grader",
        sp / "reference",
        sp / "mbgd_grader-1.0.dist-info",
        sp / "__editable__.mbgd_grader-1.0.pth",
        tmp_path / "elsewhere" / "grader",  # not visible: nothing to do
    ]
    monkeypatch.setattr(kernel_view, "hidden_paths", lambda: sorted(map(str, hidden)))
    masks = kernel_view.masks([str(t["prefix"]), str(t["link"])])
    seen_as = [str(t["prefix"] / "lib" / "site-packages"), str(t["link"] / "lib" / "site-packages")]
    for base in seen_as:  # under the prefix and under the symlink bound as a path of its own
        for name in ("grader", "reference", "mbgd_grader-1.0.dist-info"):
            assert os.path.join(base, name) in masks
    assert not any("torch" in m or "elsewhere" in m for m in masks)

    argv = kernel_view.mask_argv([str(t["prefix"])])
    package = str(sp / "reference")
    at = argv.index(package)
    assert argv[at - 1 : at + 5] == [
        "--tmpfs",
        package,
        "--ro-bind",
        str(kernel_view.STUB),
        package + "/__init__.py",
        "--remount-ro",
    ]
    meta = str(sp / "mbgd_grader-1.0.dist-info")
    assert argv[argv.index(meta) - 1 :][:4] == ["--tmpfs", meta, "--remount-ro", meta]
    pth = str(sp / "__editable__.mbgd_grader-1.0.pth")
    assert argv[argv.index(pth) - 2 :][:3] == ["--ro-bind", "/dev/null", pth]


def test_a_checkout_under_a_bound_path_is_hidden_around_its_venv(tmp_path, monkeypatch):
    t = _tree(tmp_path)
    checkout = t["checkout"]
    monkeypatch.setattr(kernel_view, "hidden_paths", lambda: [str(checkout)])
    bound = [str(tmp_path / "opt"), str(t["venv"])]  # the checkout is visible, its venv bound
    masks = kernel_view.masks(bound)
    assert sorted(masks) == sorted(
        str(checkout / name) for name in ("grader", "tests", "pyproject.toml")
    )
    assert kernel_view.masks([str(tmp_path / "opt")]) == [str(checkout)]  # no venv: all of it


def test_the_stub_makes_a_package_unimportable():
    text = kernel_view.STUB.read_text()
    namespace = {"__name__": "reference"}
    try:
        exec(compile(text, "__init__.py", "exec"), namespace)
    except ModuleNotFoundError as error:
        assert error.name == "reference"
    else:
        raise AssertionError("the stub imported")


def test_pth_dirs_are_bound_but_never_the_cwd_or_a_checkout(tmp_path, monkeypatch):
    t = _tree(tmp_path)
    sp, checkout = t["sp"], t["checkout"]
    deps, cwd = tmp_path / "deps" / "site-packages", tmp_path / "work"
    deps.mkdir(parents=True)
    cwd.mkdir()
    (sp / "deps.pth").write_text(f"# deps\n{deps}\n{cwd}\n{checkout}\n{checkout / 'grader'}\n")
    (sp / "other.pth").write_text(f"import os\n{tmp_path}\n")  # holds the cwd: refused
    monkeypatch.setattr(site, "getsitepackages", lambda: [str(sp)])
    on_path = [str(p) for p in (deps, cwd, checkout, checkout / "grader", tmp_path)]
    monkeypatch.setattr(sys, "path", [*sys.path, *on_path])
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(kernel_view, "checkout_roots", lambda packages=None: [str(checkout)])
    assert kernel_view.pth_site_dirs() == [str(deps)]
