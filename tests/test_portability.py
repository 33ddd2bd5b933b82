"""The package on a learner's computer (issue 17): nothing Linux-only, nothing of the extras.

The imports happen in a fresh interpreter whose import system refuses some modules, as on a
machine that lacks them, so what this interpreter already imported cannot hide a missing
guard. No kernel runs here.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib

import pytest

from grader import TESTED_TORCH
from tests.helpers import ROOT

# Modules Windows lacks (and pyseccomp, which is installed on Linux only), and the os
# functions that exist on POSIX only.
LINUX_ONLY = ("resource", "fcntl", "termios", "pty", "tty", "pyseccomp", "grp", "_posixshmem")
POSIX_ONLY_OS = ("fork", "forkpty", "geteuid", "getuid", "setsid", "killpg", "setpgid")
# What the extras bring: the service's and Celery's libraries.
EXTRAS = (
    "fastapi",
    "starlette",
    "uvicorn",
    "httpx",
    "celery",
    "kombu",
    "redis",
    "authlib",
    "joserfc",
)
# Runs inside the learner's kernel or the Linux warm pool's sandbox, never imported by the
# harness: masked_init raises on import by design, zygote is the pool's Linux-only script.
NOT_IMPORTED = {"grader.execution.in_kernel.masked_init", "grader.execution.in_kernel.zygote"}

# Installed first in the child interpreter. The Linux-only modules and os functions are refused
# to the package's own modules only (`import` goes through `builtins.__import__` even for a
# module already loaded): a library's Linux backend (psutil's imports `resource`) is what that
# library replaces with its Windows one there, not something the package can guard. The
# extras are refused to everyone while `state["extras"]` is off: not installed at all.
BLOCKER = """
import builtins, importlib.abc, json, os, sys
LINUX_ONLY = set(json.loads(sys.argv[1]))
EXTRAS = set(json.loads(sys.argv[3]))
OURS = ("grader", "reference")
state = {"extras": False}
real_import = builtins.__import__

def ours(module):
    return any(module == p or module.startswith(p + ".") for p in OURS)

def refused(name, importer):
    top = name.split(".")[0]
    return (top in LINUX_ONLY and ours(importer)) or (top in EXTRAS and not state["extras"])

def guarded_import(name, globals=None, locals=None, fromlist=(), level=0):
    if level == 0 and refused(name, (globals or {}).get("__name__", "")):
        raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
    return real_import(name, globals, locals, fromlist, level)

class Blocker(importlib.abc.MetaPathFinder):  # importlib.import_module does not use __import__
    def find_spec(self, name, path=None, target=None):
        if refused(name, ""):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
        return None

def posix_only(name, function):
    def call(*args, **kwargs):
        if ours(sys._getframe(1).f_globals.get("__name__", "")):
            raise AttributeError(f"module 'os' has no attribute {name!r}")
        return function(*args, **kwargs)
    return call

builtins.__import__ = guarded_import
sys.meta_path.insert(0, Blocker())
for name in json.loads(sys.argv[2]):
    setattr(os, name, posix_only(name, getattr(os, name)))
"""

CHECKS = """
import importlib
from click.testing import CliRunner
seen = {"doors": {}, "failed": {}}
# 1. a learner's install: no extras. The doors a learner uses, and what the others say.
import grader.cli, grader.pytest_plugin, grader.batch, grader.pipeline
for args in (["serve"], ["worker", "--broker", "redis://127.0.0.1:1/0"],
             ["grade", "submissions/correct/loss20.ipynb", "--broker", "redis://127.0.0.1:1/0"],
             ["xqueue", "--url", "http://127.0.0.1:1", "--queue", "q"]):
    result = CliRunner().invoke(grader.cli.main, args)
    seen["doors"][args[0]] = [result.exit_code, result.output]
seen["extras_loaded"] = sorted({m.split(".")[0] for m in sys.modules} & EXTRAS)
# 2. with the extras: every module, still without anything Linux-only
state["extras"] = True
for name in MODULES:
    try:
        importlib.import_module(name)
    except Exception as error:
        seen["failed"][name] = f"{type(error).__name__}: {error}"
seen["imported"] = sorted(m for m in MODULES if m in sys.modules)
from grader.execution.limits import RunLimits
from grader.execution.portable import use_portable
from grader.execution.pool import KernelPool, open_pool
sys.platform = "win32"  # last: what the doors decide on Windows, without calling POSIX code
seen["portable"] = use_portable(RunLimits())
seen["pool"] = [KernelPool.available(), open_pool()]
print(json.dumps(seen))
"""


def package_modules() -> list[str]:
    names = []
    for package in ("grader", "reference"):
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            if name not in NOT_IMPORTED:
                names.append(name)
    return names


@pytest.fixture(scope="module")
def blocked() -> dict:
    """One interpreter (torch is imported once): first without the extras, then with them,
    Linux-only modules refused to the package throughout."""
    modules = package_modules()
    code = BLOCKER + f"MODULES = {modules!r}\n" + CHECKS
    args = [json.dumps(LINUX_ONLY), json.dumps(POSIX_ONLY_OS), json.dumps(EXTRAS)]
    done = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_every_module_imports_without_the_linux_only_modules(blocked) -> None:
    modules = package_modules()
    assert len(modules) > 40 and "grader.execution.portable" in modules
    assert blocked["failed"] == {}
    assert blocked["imported"] == sorted(modules)
    assert blocked["portable"] is True
    assert blocked["pool"] == [False, None]  # no warm pool, asked without os.geteuid


def test_the_doors_a_learner_uses_do_not_load_the_extras(blocked) -> None:
    assert blocked["extras_loaded"] == []
    for command, extra in (
        ("serve", "service"),
        ("worker", "celery"),
        ("grade", "celery"),
        ("xqueue", "xqueue"),
    ):
        code, text = blocked["doors"][command]
        assert code == 2, (command, text)  # a usage error, not a traceback
        assert f"install mbgd-grader[{extra}]" in text, (command, text)
        assert f"pip install 'mbgd-grader[{extra}]'" in text, (command, text)
        assert "Traceback" not in text


def test_the_tested_torch_is_the_constraints_pin_and_a_range_is_required() -> None:
    pins = dict(
        line.split("==", 1)
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    assert pins["torch"] == TESTED_TORCH
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    torch = next(d for d in project["dependencies"] if re.match(r"torch\b", d))
    assert ">=" in torch and "==" not in torch  # a learner's own torch is kept
    lower = re.search(r">=\s*([\d.]+)", torch)
    assert lower and tuple(map(int, lower[1].split("."))) <= (2, 2)
    upper = re.search(r"<\s*([\d.]+)", torch)
    assert upper is None or int(upper[1].split(".")[0]) >= 3  # no tight ceiling
    extras = project["optional-dependencies"]
    service = " ".join(extras["service"])
    assert {"fastapi", "uvicorn", "httpx"} <= set(re.findall(r"[a-z]+", service))
    assert any(d.startswith("celery") for d in extras["celery"])
    leaked = [d for d in project["dependencies"] if re.match(r"(fastapi|uvicorn|celery|redis)", d)]
    assert not leaked
