"""Issue 22: starting from a warm parent never changes what a notebook sees, so never a grade.

Each case runs one notebook twice in the same in-process warm pool, from the lab's warm parent
and with `reuse=False`, and compares the Executions field by field (timing aside). The cases
are what the first version of reuse got wrong:

- a lab cell tagged `skip-execution` is skipped by a real run: reuse must stop before it;
- a course lab that seeds numpy and `random`: a forked kernel must keep the lab's state;
- IPython's running names (`_`, `__`, `___`, `_i`, `_ii`, `_iii`, `%who`'s list);
- with every parent slot taken by prefixes seen early, a later prefix still gets a parent.

A notebook's last cell raises `RuntimeError(<what it saw>)`, so the facts travel in the
Execution's `error_value` and are compared with everything else.
"""

from __future__ import annotations

import asyncio
import copy
import os
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell

from grader.execution import pool as pool_module
from grader.execution.limits import RunLimits
from grader.execution.pool import KernelPool
from grader.execution.prefix import LAB_NOTEBOOKS_ENV, match
from grader.execution.runner import SKIP_TAG, execute_async
from grader.models import Execution
from tests.helpers import SUBMISSIONS, comparable

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not KernelPool.available(), reason="the warm pool needs bwrap and root"),
]

LIMITS = RunLimits(cell_timeout=60, total_timeout=240)

SAW = """\
import hashlib as _hashlib, re as _re
_ip = get_ipython()
_seen = {
    "_": repr(_), "__": repr(__), "___": repr(___),
    "_i": _i, "_ii": _ii, "_iii": _iii,
    "who": sorted(_ip.run_line_magic("who_ls", "")),
    "hidden": sorted(k for k in _ip.user_ns_hidden if k in _ip.user_ns),
    "count": _ip.execution_count, "In": len(In), "Out": sorted(Out),
}
_text = _re.sub(r" at 0x[0-9a-f]+", "", repr(_seen))
raise RuntimeError(_hashlib.sha256(_text.encode()).hexdigest()[:16] + " " + _text[:300])
"""
DRAWS = "import random\nraise RuntimeError(repr((np.random.rand(), random.random())))"


def lab() -> nbformat.NotebookNode:
    """The sample lab's own cells (the known 'samples' version), without an answer."""
    nb = nbformat.read(SUBMISSIONS / "correct" / "loss20.ipynb", as_version=4)
    code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.source.strip()]
    prefix = match([nb.cells[i].source for i in code])
    assert prefix is not None
    nb.cells = nb.cells[: code[len(prefix.cells) - 1] + 1]
    return nb


def with_cells(nb: nbformat.NotebookNode, *sources: str) -> nbformat.NotebookNode:
    nb = copy.deepcopy(nb)
    nb.cells += [new_code_cell(source) for source in sources]
    return nb


@pytest.fixture(scope="module")
def pool() -> Iterator[KernelPool]:
    with KernelPool() as started:
        yield started


def run(pool: KernelPool, nb: nbformat.NotebookNode, *, reuse: bool) -> Execution:
    return asyncio.run(execute_async(nb, LIMITS, pool=pool, reuse=reuse))


def both(pool: KernelPool, nb: nbformat.NotebookNode) -> tuple[Execution, Execution]:
    """(from the warm parent, every cell run); the first must really have reused cells."""
    reused, full = run(pool, nb, reuse=True), run(pool, nb, reuse=False)
    assert reused.reused_cells and not full.reused_cells
    return reused, full


def last_error(execution: Execution) -> str:
    return next(c.error_value for c in reversed(execution.cells) if c.error_name)


def test_ipythons_running_names_are_a_full_runs(pool: KernelPool) -> None:
    reused, full = both(pool, with_cells(lab(), "3 + 4", SAW))
    assert "'_': '7'" in last_error(full)  # the facts are there to compare
    assert comparable(reused) == comparable(full), (last_error(reused), last_error(full))


def test_a_lab_cell_tagged_skip_execution_ends_the_reused_prefix(pool: KernelPool) -> None:
    nb = with_cells(lab(), "print(forward(torch.tensor(1.0), 1.0, 0.0))")
    code = [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]
    tagged = next(n for n, c in enumerate(code) if "def forward" in c.source)
    assert tagged >= 4  # still a prefix long enough to reuse before it
    code[tagged].metadata["tags"] = [SKIP_TAG]
    reused, full = both(pool, nb)
    assert len(reused.reused_cells) == tagged
    assert last_error(full).startswith("name 'forward' is not defined")
    assert comparable(reused) == comparable(full)


@pytest.fixture
def seeded_course_lab(tmp_path: Path) -> Iterator[nbformat.NotebookNode]:
    """The course's own lab (`MBGD_LAB_NOTEBOOKS`) with numpy and `random` seeded early."""
    nb = lab()
    nb.cells.insert(2, new_code_cell("import random\nrandom.seed(7)\nnp.random.seed(7)"))
    path = tmp_path / "course-lab.ipynb"
    nbformat.write(nb, path)
    before = os.environ.get(LAB_NOTEBOOKS_ENV)
    os.environ[LAB_NOTEBOOKS_ENV] = str(path)
    try:
        yield nb
    finally:
        if before is None:
            del os.environ[LAB_NOTEBOOKS_ENV]
        else:
            os.environ[LAB_NOTEBOOKS_ENV] = before


def test_a_labs_own_seeding_of_numpy_and_random_survives_the_fork(
    pool: KernelPool, seeded_course_lab: nbformat.NotebookNode
) -> None:
    reused, full = both(pool, with_cells(seeded_course_lab, DRAWS))
    assert comparable(reused) == comparable(full), (last_error(reused), last_error(full))


def test_a_later_prefix_gets_a_parent_when_early_ones_hold_every_slot(
    pool: KernelPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pool_module, "MAX_PARENTS", 1)
    whole = lab()
    code = [i for i, c in enumerate(whole.cells) if c.cell_type == "code" and c.source.strip()]
    early = copy.deepcopy(whole)
    early.cells[code[6]].source += "\n# changed by this learner"  # a 6-cell prefix
    first = run(pool, with_cells(early, "x = 1"), reuse=True)
    later = run(pool, with_cells(whole, "x = 2"), reuse=True)
    assert len(first.reused_cells) == 6
    assert len(later.reused_cells) == len(code)  # the first parent made room
    again = run(pool, with_cells(early, "x = 3"), reuse=True)
    assert len(again.reused_cells) == 6
    for _ in range(3):
        run(pool, with_cells(early, "x = 4"), reuse=True)
    # the pool remembers the kernels a parent has running, not every kernel it ever forked
    assert max(len(kernels) for kernels in pool._children.values()) <= 2  # one ran, a spare
