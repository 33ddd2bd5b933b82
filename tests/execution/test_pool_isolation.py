"""The warm pool: one learner's kernel leaves nothing for the next; results match fresh kernels.

All tests share one pool (started once per session). The lab itself runs once fresh and once
pooled, and the two Executions must agree on everything but timings.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from pathlib import Path

import nbformat
import psutil
import pytest
from nbformat.v4 import new_code_cell, new_notebook

import grader.execution.sandbox
import grader.execution.uids
from grader.execution.pool import KernelPool
from grader.execution.runner import RunLimits, execute, execute_async
from grader.models import Execution
from reference import make_data
from tests.helpers import SUBMISSIONS, Listener, children_left, probe_cells

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not KernelPool.available(), reason="the warm pool needs bwrap and root"),
]
LAB = SUBMISSIONS / "correct" / "loss20.ipynb"
LIMITS = RunLimits(cell_timeout=60, total_timeout=180)


@pytest.fixture(scope="module")  # gone before other modules count the processes left behind
def pool():
    with KernelPool() as warm:
        yield warm


def as_text(values: list[float]) -> str:
    return "".join(chr(int(v)) for v in values)


FIRST = """\
import builtins, json, os, subprocess, sys, threading, time
import matplotlib, matplotlib.axes, matplotlib.pyplot as plt, torch
SECRET = [42.0]
torch.manual_seed = lambda seed: None
torch.randn = lambda *a, **k: torch.zeros(*a)
plt.plot = lambda *a, **k: None
matplotlib.axes.Axes.plot = lambda *a, **k: []
sys.modules['numpy'].pi = 3
for path in ('/tmp/leak.txt', 'leak.txt', os.path.expanduser('~/.leak')):
    open(path, 'w').write('from the first learner')
threading.Thread(target=time.sleep, args=(1000,), name='leftover', daemon=False).start()
subprocess.Popen(['sleep', '1000'], start_new_session=True)
WD = [ord(c) for c in os.path.dirname(os.getcwd())]
UID = [os.getuid()]
"""
BREAKS_THE_KERNEL = (
    "import builtins, json\njson.dumps = lambda *a, **k: '\"forged\"'\nbuiltins.len = 0"
)

SECOND = """\
import os, threading
import matplotlib.pyplot as plt, numpy as np, torch
assert 'SECRET' not in globals()
assert np.pi > 3.14
assert len([1, 2]) == 2
torch.manual_seed(1)
X = torch.arange(-3, 3, 0.1).view(-1, 1)
f = 1 * X - 1
Y = f + 0.1 * torch.randn(X.size())
plt.plot([1, 2], [3, 4], label='mine')
plt.legend()
plt.show()
assert not os.path.exists('/tmp/leak.txt') and not os.path.exists({first_wd!r})
assert not os.path.exists('leak.txt') and not os.path.exists(os.path.expanduser('~/.leak'))
assert 'leftover' not in [t.name for t in threading.enumerate()]
cmdlines = [open(f'/proc/{{p}}/cmdline', 'rb').read() for p in os.listdir('/proc') if p.isdigit()]
assert not [c for c in cmdlines if c.startswith(b'sleep')], cmdlines
work = os.path.dirname(os.getcwd())  # cwd is <work dir>/home
assert os.listdir(os.path.dirname(work)) == [os.path.basename(work)]  # no siblings
UID = [os.getuid()]
"""


def test_second_learner_sees_nothing_of_the_first(pool: KernelPool) -> None:
    cells = [new_code_cell(FIRST), new_code_cell(BREAKS_THE_KERNEL), new_code_cell("B = [1]")]
    first = execute(new_notebook(cells=cells), LIMITS, pool=pool)
    assert first.cells[0].status == "ok", first.cells[0].error_value
    # A kernel whose messaging is broken either crashes or stops answering (then the cell
    # budget stops it): either way that cell ends the run, and nothing of it reaches the next.
    assert first.fate in ("died", "timeout") and first.fate_cell == 1
    assert first.cells[1].status == first.fate
    assert first.cells[2].status == "not_run"
    first_wd = as_text(first.variables["WD"].values)
    first_uid = int(first.variables["UID"].values[0])
    assert not Path(first_wd).exists()  # work dir deleted
    assert grader.execution.uids.processes_of_uid(first_uid) == []  # threads and children are gone

    source = SECOND.format(first_wd=first_wd)
    second = execute(new_notebook(cells=[new_code_cell(source)]), LIMITS, pool=pool)
    assert second.cells[0].status == "ok", second.cells[0].traceback
    assert second.variables["Y"].values == pytest.approx(make_data(1).Y.flatten().tolist())
    assert second.figures[0].axes[0].lines[0].y == [3.0, 4.0]
    assert second.figures[0].axes[0].legend == ["mine"]
    assert int(second.variables["UID"].values[0]) not in (0, first_uid)


def test_pooled_kernels_keep_the_sandbox_walls(pool: KernelPool) -> None:
    listener = Listener()
    secret = Path(f"/tmp/mbgd-secret-{secrets.token_hex(6)}")
    secret.write_text("top secret")
    os.environ["MBGD_TEST_SECRET"] = "x"
    try:
        cells = probe_cells(listener.port, [secret])
        nb = new_notebook(cells=[new_code_cell(src) for src in cells.values()])
        limits = RunLimits(cell_timeout=20, memory_mb=1536, max_file_mb=8, disk_mb=16)
        ex = execute(nb, limits, pool=pool)
    finally:
        del os.environ["MBGD_TEST_SECRET"]
        secret.unlink()
        listener.close()
    status = {name: run.status for name, run in zip(cells, ex.cells, strict=True)}
    assert ex.sandbox.startswith("bubblewrap") and ex.kernel == "warm"
    assert status["control"] == status["env"] == status["uid"] == status["processes"] == "ok"
    assert status["loopback"] == status["read_0"] == status["write_system"] == "error"
    assert listener.accepted == []
    assert status["file_size"] == status["memory"] == "error"
    assert status["disk_full"] == status["tmp_full"] == status["host_dir"] == "error"
    assert ex.variables["LIMITS"].values[0] == 1536 << 20


@pytest.mark.parametrize(
    ("source", "status"), [("while True:\n    pass", "timeout"), ("import os\nos._exit(3)", "died")]
)
def test_pooled_hostile_cells_end_in_budget(pool: KernelPool, source: str, status: str) -> None:
    nb = new_notebook(cells=[new_code_cell("A = [1]"), new_code_cell(source), new_code_cell("1")])
    started = time.monotonic()
    ex = execute(nb, RunLimits(cell_timeout=2, total_timeout=10), pool=pool)
    assert time.monotonic() - started < 6
    assert [c.status for c in ex.cells] == ["ok", status, "not_run"]
    assert ex.fate == status and ex.fate_cell == 1
    spare = {p.pid for p in pool.spare_processes()}
    assert len(spare) == 3  # the next kernel, started ahead of need, its init and intermediate
    zygote_tree = psutil.Process(pool.proc.pid).children(recursive=True)
    # bwrap's init and the zygote; of the kernel that ran the cells, nothing
    assert len({p.pid for p in zygote_tree} - spare) == 2
    mine = {p.pid for p in children_left()}
    assert mine == {pool.proc.pid} | {p.pid for p in zygote_tree}


def test_a_dead_zygote_is_replaced(pool: KernelPool) -> None:
    old = pool.proc.pid
    for proc in psutil.Process(old).children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):  # killing one may end another
            proc.kill()
    ex = execute(new_notebook(cells=[new_code_cell("A = [1]")]), LIMITS, pool=pool)
    assert ex.fate == "ok" and ex.variables["A"].values == [1.0]
    assert pool.proc is not None and pool.proc.pid != old and pool.proc.poll() is None


def test_a_kernel_forked_from_a_warm_parent_keeps_the_walls(pool: KernelPool) -> None:
    """Issue 16: after the lab's own cells, run in a warm parent, the learner's cells meet the
    same walls as in any pooled kernel; the parent itself runs without root or capabilities,
    as a uid of its own, in a cgroup of its own."""
    lab = [c for c in nbformat.read(LAB, as_version=4).cells if c.cell_type == "code"][:25]
    listener = Listener()
    secret = Path(f"/tmp/mbgd-secret-{secrets.token_hex(6)}")
    secret.write_text("top secret")
    try:
        cells = probe_cells(listener.port, [secret])
        nb = new_notebook(cells=[*lab, *(new_code_cell(src) for src in cells.values())])
        limits = RunLimits(cell_timeout=20, memory_mb=1536, max_file_mb=8, disk_mb=16)
        ex = execute(nb, limits, pool=pool)
    finally:
        secret.unlink()
        listener.close()
    assert ex.reused_cells == list(range(25))
    status = {name: run.status for name, run in zip(cells, ex.cells[25:], strict=True)}
    assert status["control"] == status["env"] == status["uid"] == status["processes"] == "ok"
    assert status["loopback"] == status["read_0"] == status["write_system"] == "error"
    assert status["userns"] == "error" and listener.accepted == []
    assert status["file_size"] == status["memory"] == "error"
    assert status["disk_full"] == status["tmp_full"] == status["host_dir"] == "error"
    assert "Y" in ex.variables and ex.variables["Y"].cell == 3  # the lab's data, from its cell
    parents = [entry[0] for entry in pool._parents.values() if entry is not None]
    assert parents
    for parent in parents:
        proc = parent._kernel_proc
        assert proc is not None and proc.is_running()
        assert proc.uids().real == proc.uids().effective == parent.uid != 0
        assert parent.uid != int(ex.variables["UID"].values[0])
        status_text = Path(f"/proc/{proc.pid}/status").read_text()
        assert "CapEff:\t0000000000000000" in status_text
        assert "\nThreads:\t1\n" in status_text  # nothing of a thread pool is forked
        if parent.cgroup is not None:
            assert parent.cgroup.members() == [proc.pid]


def comparable(ex: Execution) -> dict:
    """Everything but timings, where the kernel came from and which cells it did not run."""
    data = ex.model_dump(exclude={"seconds", "phases", "kernel", "reused_cells"})
    for cell in data["cells"]:
        cell.pop("seconds")
    return data


def test_results_are_identical_with_and_without_the_pool(pool: KernelPool) -> None:
    nb = nbformat.read(LAB, as_version=4)
    nb.cells.append(new_code_cell("import torch\ntorch.ones(2) @ torch.ones(3)"))
    # the history and a traceback through a function the lab defined (issue 16: the pooled
    # kernel is forked after the lab's cells, from a warm parent that ran them)
    nb.cells.append(new_code_cell("H = [len(In), len(Out), len(_ih)]\ncriterion(None, 1)"))
    fresh = execute(nb, LIMITS)
    pooled = __import__("asyncio").run(execute_async(nb, LIMITS, pool=pool))
    assert fresh.fate == "ok" and len(fresh.figures) > 40 and "LOSS20" in fresh.variables
    assert (fresh.kernel, pooled.kernel) == ("fresh", "warm")
    assert pooled.reused_cells and not fresh.reused_cells  # forked after the lab's cells
    assert "Cell In[" in pooled.cells[-1].traceback and "in criterion" in pooled.cells[-1].traceback
    assert comparable(pooled) == comparable(fresh)


def test_the_secret_seed_rerun_never_starts_from_the_labs_prefix(pool: KernelPool) -> None:
    """The lab's seed cell must see the override: a warm parent ran it with seed 1."""
    nb = nbformat.read(LAB, as_version=4)
    ex = __import__("asyncio").run(execute_async(nb, LIMITS, pool=pool, seed_override=7))
    assert ex.fate == "ok" and ex.reused_cells == []
    assert ex.variables["Y"].values == pytest.approx(make_data(7).Y.flatten().tolist())
