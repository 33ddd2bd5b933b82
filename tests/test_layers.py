"""The import rules of docs/architecture.md, read from the sources: layers, in-kernel code, cycles.

Every `import` counts, including those inside functions (a lazy import is still a
dependency). Runs in a fraction of a second; no module is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

GRADER = Path(__file__).resolve().parents[1] / "grader"
CORE = {"grader", "grader.models", "grader.errors"}
DOORS = {
    "grader.batch",
    "grader.gradebook",
    "grader.progress",
    "grader.remote",
    "grader.pytest_plugin",
    "grader.cli",
    "grader.service",
    "grader.xqueue",
    "grader.platforms",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(GRADER.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def grader_imports(path: Path) -> set[str]:
    """The grader modules `path` imports (`from grader.x import y` counts as grader.x.y when
    that is a module, else grader.x)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("grader")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if not node.module.startswith("grader"):
                continue
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in MODULES else node.module)
    return found


MODULES = {module_name(path) for path in GRADER.rglob("*.py")}
IMPORTS = {module_name(path): grader_imports(path) for path in GRADER.rglob("*.py")}


def _within(name: str, packages: set[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


@pytest.mark.parametrize(
    ("layer", "allowed"),
    [
        ("grader.execution", {"grader.execution"} | CORE),
        ("grader.grading", {"grader.grading"} | CORE),
        ("grader.reports", {"grader.reports"} | CORE),
        ("grader.models", {"grader"}),
    ],
)
def test_a_layer_imports_only_what_it_may(layer: str, allowed: set[str]) -> None:
    wrong = {
        (module, dep)
        for module, deps in IMPORTS.items()
        if _within(module, {layer})
        for dep in deps
        if not _within(dep, allowed)
    }
    assert not wrong, sorted(wrong)


def test_code_that_runs_in_the_kernel_imports_nothing_of_the_grader() -> None:
    inside = {m: d for m, d in IMPORTS.items() if m.startswith("grader.execution.in_kernel")}
    assert len(inside) >= 3
    assert all(not deps for deps in inside.values()), inside


def test_the_core_does_not_reach_into_the_doors() -> None:
    core = ("grader.pipeline", "grader.submission", "grader.models")
    wrong = {(m, d) for m in core for d in IMPORTS[m] if _within(d, DOORS)}
    assert not wrong, sorted(wrong)


def test_the_platform_packages_use_the_core_not_the_other_doors() -> None:
    """grader.platforms grades through the pipeline and writes its own files: it does not
    lean on the batch, the service or the plugin (cli imports it, not the other way)."""
    platforms = {m: d for m, d in IMPORTS.items() if _within(m, {"grader.platforms"})}
    assert platforms
    wrong = {
        (m, d)
        for m, deps in platforms.items()
        for d in deps
        if _within(d, DOORS - {"grader.platforms"})
    }
    assert not wrong, sorted(wrong)


def test_no_import_cycles_between_modules() -> None:
    graph = {m: {d for d in deps if d in IMPORTS and d != m} for m, deps in IMPORTS.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    # a package's __init__ re-exporting its own modules is not a cycle of design
    real = [c for c in cycles if not any(c[0].startswith(x + ".") for x in c if x != c[0])]
    assert not real, real
