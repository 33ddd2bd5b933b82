"""grader.execution.runner against real sandboxed kernels: cells, figures, variables, budgets,
teardown.

Each notebook is executed once per session (fixtures) and many things are asserted on the
result. Expected numbers come from `reference`, never typed in.
"""

from __future__ import annotations

import math
import threading
import time

import nbformat
import psutil
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

import grader.execution.runner
import grader.execution.sandbox
import grader.execution.uids
from grader.execution.portable import PORTABLE
from grader.execution.runner import RunLimits, execute
from reference import expected, make_data
from tests.helpers import children_left

pytestmark = pytest.mark.slow
BWRAP = grader.execution.sandbox.find_bwrap() is not None

SETUP = """\
import numpy as np
import matplotlib.pyplot as plt
import torch
torch.manual_seed(1)
X = torch.arange(-3, 3, 0.1).view(-1, 1)
f = 1 * X - 1
Y = f + 0.1 * torch.randn(X.size())
"""

BGD = """\
def forward(x):
    return w * x + b

def criterion(yhat, y):
    return torch.mean((yhat - y) ** 2)

w = torch.tensor(-15.0, requires_grad=True)
b = torch.tensor(-10.0, requires_grad=True)
lr = 0.1
LOSS_BGD = []
for epoch in range(10):
    loss = criterion(forward(X), Y)
    LOSS_BGD.append(loss)
    loss.backward()
    w.data = w.data - lr * w.grad.data
    b.data = b.data - lr * b.grad.data
    w.grad.data.zero_()
    b.grad.data.zero_()
"""

PLOTS = """\
plt.plot(LOSS_BGD, label="Batch Gradient Descent")
plt.xlabel("epoch")
plt.ylabel("cost")
plt.title("losses")
plt.yscale("log")
plt.legend()
plt.show()
plt.subplot(121)
plt.plot(X.numpy(), Y.numpy(), "rx", label="y")
plt.subplot(122)
plt.plot([1, 2, 3])
"""

BIG = """\
BIG = np.arange(25_000)
LONG = list(range(150_000))
NESTED = [[1.5] * 1000] * 1000
LOSS_BGD.append(LOSS_BGD[-1])
del f
"""
PATCHES = """\
import builtins
plt.show = plt.close = lambda *a, **k: None
plt.plot([5, 6])
plt.show()
LAST = [7, 8]
builtins.float = None  # the probe reads LAST with its own builtins
"""


def lab_like_notebook() -> nbformat.NotebookNode:
    return new_notebook(
        cells=[
            new_markdown_cell("# A lab-like notebook"),  # 0
            new_code_cell(SETUP),  # 1
            new_code_cell(BGD),  # 2
            new_markdown_cell("Plot it"),  # 3
            new_code_cell(PLOTS),  # 4: plt.plot of tensors that require grad; 2 figures
            new_code_cell("torch.ones(2) @ torch.ones(3)"),  # 5: error through torch
            new_code_cell("%matplotlib inline\nSPECIAL = [1, float('nan'), float('inf')]"),  # 6
            new_code_cell(""),  # 7: empty, not run
            new_code_cell(BIG),  # 8
            new_code_cell("def g():\n    raise ValueError('deep')\ndef h():\n    g()\nh()"),  # 9
            new_code_cell("plt.plot([0, 1], [1, 0])\nAFTER = (1, 2)"),  # 10
            new_code_cell(PATCHES),  # 11
        ]
    )


def hostile(source: str) -> nbformat.NotebookNode:
    return new_notebook(
        cells=[
            new_code_cell("BEFORE = [1.0, 2.0]"),  # 0
            new_markdown_cell("the bad cell is next"),  # 1
            new_code_cell(source),  # 2
            new_code_cell("AFTER = [3.0]"),  # 3
        ]
    )


@pytest.fixture(scope="session")
def leased_uids() -> list[int]:
    """Spy on the uid leases so tests can look for leftover processes of those uids."""
    uids: list[int] = []
    original = grader.execution.uids.UidLease.__init__

    def spy(self: grader.execution.uids.UidLease) -> None:
        original(self)
        uids.append(self.uid)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(grader.execution.uids.UidLease, "__init__", spy)
        yield uids


@pytest.fixture(scope="session")
def lab_run(leased_uids: list[int]):
    return execute(lab_like_notebook(), RunLimits(cell_timeout=60, total_timeout=120))


def test_cells_run_in_order_and_errors_do_not_stop_the_run(lab_run) -> None:
    assert lab_run.fate == "ok" and lab_run.fate_cell is None
    statuses = {c.index: c.status for c in lab_run.cells}
    assert statuses == {
        1: "ok",
        2: "ok",
        4: "ok",
        5: "error",
        6: "ok",
        8: "ok",
        9: "error",
        10: "ok",
        11: "ok",
    }
    assert all(c.seconds >= 0 for c in lab_run.cells)


def test_errors_are_short_plain_tracebacks(lab_run) -> None:
    cells = {c.index: c for c in lab_run.cells}
    torch_error, deep = cells[5], cells[9]
    assert torch_error.error_name == "RuntimeError"
    assert "\x1b[" not in torch_error.traceback and "\x1b[" not in deep.traceback
    assert deep.error_name == "ValueError" and deep.error_value == "deep"
    assert "deep" in deep.traceback and "h()" in deep.traceback
    assert len(torch_error.traceback) <= 4000 and len(torch_error.traceback.splitlines()) <= 30


def test_variables_are_data_with_their_cell(lab_run) -> None:
    v = lab_run.variables
    ref = expected()["LOSS_BGD"]
    assert v["LOSS_BGD"].type_name == "list"
    assert v["LOSS_BGD"].values == pytest.approx([*ref, ref[-1]], rel=1e-6)
    assert v["LOSS_BGD"].length == 11 and v["LOSS_BGD"].cell == 8  # changed again in cell 8
    data = make_data(1)
    assert v["X"].values == pytest.approx(data.X.flatten().tolist())
    assert v["Y"].values == pytest.approx(data.Y.flatten().tolist())
    assert v["X"].cell == 1 and v["X"].length == 60 and v["X"].type_name == "Tensor"
    assert "f" not in v  # deleted in cell 8
    assert v["BIG"].length == 25_000 and len(v["BIG"].values) == 10_000
    assert v["BIG"].values[:3] == [0.0, 1.0, 2.0]
    assert v["LONG"].length == 150_000 and v["LONG"].values[-1] == 9_999.0
    assert "NESTED" not in v  # a million Python numbers: not read after every cell
    special = v["SPECIAL"].values
    assert special[0] == 1.0 and math.isnan(special[1]) and special[2] == math.inf
    assert v["AFTER"].type_name == "tuple" and v["AFTER"].cell == 10
    assert v["LAST"].values == [7.0, 8.0] and v["LAST"].cell == 11
    assert "lr" not in v and "In" not in v  # plain scalars and IPython's own are not answers


def test_figures_are_recorded_as_data_per_cell(lab_run) -> None:
    figs = lab_run.figures
    assert [f.cell for f in figs] == [4, 4, 10, 11]  # cell 11 patched plt.show, float
    loss_ax = figs[0].axes[0]
    assert loss_ax.title == "losses" and loss_ax.xlabel == "epoch" and loss_ax.ylabel == "cost"
    assert loss_ax.yscale == "log" and loss_ax.legend == ["Batch Gradient Descent"]
    line = loss_ax.lines[0]
    assert line.label == "Batch Gradient Descent"
    assert line.y == pytest.approx(expected()["LOSS_BGD"], rel=1e-6)
    assert line.x == [float(i) for i in range(10)]
    left, right = figs[1].axes
    assert left.lines[0].label == "y" and len(left.lines[0].x) == 60
    assert right.lines[0].y == [1.0, 2.0, 3.0] and right.lines[0].label == ""
    assert figs[2].axes[0].lines[0].y == [1.0, 0.0]
    assert figs[3].axes[0].lines[0].y == [5.0, 6.0]
    assert any("detached" in n and "cell 4" in n for n in lab_run.notes)


def test_execution_reports_sandbox_and_phases(lab_run) -> None:
    if BWRAP:
        assert lab_run.sandbox.startswith("bubblewrap")
    else:
        assert lab_run.sandbox == PORTABLE
    for name in ("kernel_start", "probe", "cells", "extraction", "teardown"):
        assert lab_run.phases[name] >= 0
    assert lab_run.phases["teardown"] < 2.0  # no graceful shutdown
    assert lab_run.seconds >= sum(lab_run.phases.values()) - 0.01


def test_input_notebook_is_not_modified() -> None:
    nb = new_notebook(cells=[new_code_cell("x = [1]")])
    before = nbformat.writes(nb)
    execute(nb, RunLimits(cell_timeout=30, total_timeout=60))
    assert nbformat.writes(nb) == before


# ---- seed override (integrity re-runs) ------------------------------------------------------

SEEDED = [new_code_cell(SETUP), new_code_cell("HARD = [0.5, 0.25]")]


def test_seed_override_reseeds_learner_code() -> None:
    # without an override the same code gives make_data(1): see test_variables_are_data...
    ex = execute(new_notebook(cells=SEEDED), RunLimits(), seed_override=7)
    assert ex.variables["Y"].values == pytest.approx(make_data(7).Y.flatten().tolist())
    assert ex.variables["Y"].values != pytest.approx(make_data(1).Y.flatten().tolist())
    assert ex.variables["HARD"].values == [0.5, 0.25]  # hard-coded numbers do not move


# ---- hostile cells: budgets, deaths, teardown ----------------------------------------------

HOSTILE = {
    "infinite_loop": ("while True:\n    pass", "timeout", "timeout"),
    "swallows_interrupt": (
        "import time\nwhile True:\n    try:\n        time.sleep(5)\n    except KeyboardInterrupt:\n"
        "        pass",
        "timeout",
        "timeout",
    ),
    "os_exit": ("import os\nos._exit(1)", "died", "died"),
    "child_processes": (
        "import subprocess\nsubprocess.Popen(['sleep', '1000'], start_new_session=True)\n"
        "while True:\n    pass",
        "timeout",
        "timeout",
    ),
}
LIMITS = RunLimits(cell_timeout=2.0, total_timeout=20.0)


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_cell_ends_in_budget_against_the_right_cell(name: str, leased_uids) -> None:
    source, status, fate = HOSTILE[name]
    started = time.monotonic()
    ex = execute(hostile(source), LIMITS)
    elapsed = time.monotonic() - started
    assert ex.fate == fate and ex.fate_cell == 2
    assert [(c.index, c.status) for c in ex.cells] == [(0, "ok"), (2, status), (3, "not_run")]
    if status == "timeout":
        assert LIMITS.cell_timeout <= ex.cells[1].seconds < LIMITS.cell_timeout + 1.0
    assert elapsed < ex.phases["kernel_start"] + ex.phases["probe"] + LIMITS.cell_timeout + 3
    assert ex.phases["teardown"] < 2.0
    assert ex.variables["BEFORE"].values == [1.0, 2.0] and "AFTER" not in ex.variables
    # nothing left behind: no child of ours, no process of any uid we leased
    assert children_left() == []
    if BWRAP and grader.execution.sandbox.os.geteuid() == 0:
        assert leased_uids, "as root, the bubblewrap path leases a uid per kernel"
    assert [p for uid in leased_uids for p in grader.execution.uids.processes_of_uid(uid)] == []


def test_total_budget_stops_the_notebook() -> None:
    cells = [new_code_cell("import time\ntime.sleep(1.5)") for _ in range(4)]
    ex = execute(new_notebook(cells=cells), RunLimits(cell_timeout=10, total_timeout=2.5))
    assert [c.status for c in ex.cells] == ["ok", "timeout", "not_run", "not_run"]
    assert ex.fate == "timeout" and ex.fate_cell == 1
    assert any("notebook time limit" in n for n in ex.notes)


# ---- the probe channel is untrusted ---------------------------------------------------------


def record(mime: str, text: object) -> dict:
    return {"msg_type": "display_data", "content": {"data": {mime: text}}}


def test_probe_reader_accepts_only_valid_json_records_of_this_run() -> None:
    from grader.execution.probe_reader import MAX_RECORD_BYTES, ProbeReader, new_mime

    mime = new_mime()
    reader = ProbeReader(mime)
    assert not reader.wants(record(new_mime(), "{}"))  # another run's MIME type
    assert not reader.wants({"msg_type": "stream", "content": {"text": "hi"}})
    good = '{"kind": "variables", "set": {"L": {"type_name": "list", "values": [1, NaN, '
    good += 'Infinity], "length": 3}}, "deleted": []}'
    for text in [
        good,
        "not json",
        '{"kind": "pickle", "data": "gASV"}',
        '{"kind": "variables", "set": {"bad name": {"type_name": "x", "values": [], "length": 0}}}',
        '{"kind": "variables", "set": {"W": {"type_name": "list", "values": ["a"], "length": 1}}}',
        '{"kind": "figure", "axes": [{"lines": [{"x": "nope"}]}]}',
        "[" * 10 + "]" * 10,
        "x" * (MAX_RECORD_BYTES + 1),
        42,
    ]:
        msg = record(mime, text)
        assert reader.wants(msg)
        reader.feed(msg, cell=3)
    assert set(reader.variables) == {"L"}
    values = reader.variables["L"].values
    assert values[0] == 1.0 and math.isnan(values[1]) and values[2] == math.inf
    assert reader.variables["L"].cell == 3 and reader.figures == []
    # every text but the first is dropped; the one with a bad name keeps only its good names
    assert reader.finish() == ["7 probe record(s) were malformed or too large and ignored"]


# ---- issue 12: what the kernel sends costs the harness bounded memory and time ----------------

COMM_FLOOD = """\
kernel = get_ipython().kernel
buffer = bytes(16 * 2**20)
for i in range(64):  # 1 GB of widget buffers, zero-copy: only the receiver pays
    content = {"comm_id": f"c{i}", "target_name": "jupyter.widget",
               "data": {"state": {"v": i}, "buffer_paths": [["v"]]}}
    kernel.session.send(kernel.iopub_socket, "comm_msg", content, parent=kernel.get_parent(),
                        buffers=[buffer], ident=b"comm")
"""
MULTIPART_FLOOD = """\
import time
kernel = get_ipython().kernel
part = bytes(32 * 2**20)  # one message of 40 parts: 1.3 GB that libzmq would assemble
kernel.session.send(kernel.iopub_socket, "stream", {"name": "stdout", "text": "x"},
                    parent=kernel.get_parent(), buffers=[part] * 40, ident=b"stream")
time.sleep(2)
"""
IOPUB_FLOOD = """\
import threading
kernel = get_ipython().kernel
kernel._publish_status = lambda *args, **kwargs: None  # never "idle" again
def flood():
    parent = {"msg_id": "not-the-graders", "msg_type": "execute_request"}
    while True:
        kernel.session.send(kernel.iopub_socket, "stream", {"name": "stdout", "text": "x"},
                            parent=parent, ident=b"stream")
threading.Thread(target=flood, daemon=True).start()
"""


class PeakRss:
    """The growth of this process's resident memory while the block runs (sampled)."""

    def __enter__(self) -> PeakRss:
        self.process = psutil.Process()
        self.base = self.peak = self.process.memory_info().rss
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.01)

    def __exit__(self, *exc: object) -> None:
        self.running = False
        self.thread.join()
        self.growth = self.peak - self.base


def test_input_and_getpass_fail_at_once_with_a_clear_message() -> None:
    cells = [
        new_code_cell("BEFORE = [1.0]"),
        new_code_cell("epochs = int(input('How many epochs? '))"),
        new_code_cell("import getpass\nsecret = getpass.getpass()"),
        new_code_cell("AFTER = [2.0]"),
    ]
    ex = execute(new_notebook(cells=cells), RunLimits(cell_timeout=20, total_timeout=60))
    assert ex.fate == "ok" and [c.status for c in ex.cells] == ["ok", "error", "error", "ok"]
    for run in ex.cells[1:3]:
        assert run.error_name == "StdinNotImplementedError" and run.seconds < 2
        assert run.error_value == (
            "input() is not available when the notebook is graded: remove the call or give "
            "the value directly"
        )
        assert "input() is not available" in run.traceback
    assert ex.variables["AFTER"].values == [2.0]


def test_comm_and_multipart_floods_leave_the_harness_small() -> None:
    cells = [
        new_code_cell("BEFORE = [1.0]"),
        new_code_cell(COMM_FLOOD),  # nbclient kept it all: +1.3 GB
        new_code_cell(MULTIPART_FLOOD),  # libzmq assembled it all: +1.3 GB
        new_code_cell("AFTER = [2.0]"),
    ]
    with PeakRss() as rss:
        ex = execute(new_notebook(cells=cells), RunLimits(cell_timeout=30, total_timeout=90))
    assert rss.growth < 300 << 20, rss.growth >> 20
    assert [c.status for c in ex.cells] == ["ok", "ok", "died", "not_run"]
    assert ex.fate == "died" and ex.fate_cell == 2
    died = ex.cells[2]
    assert died.error_name == "ProtocolError" and died.seconds < 10
    assert died.error_value.startswith("the kernel sent a message larger than 17 MB")
    assert any("while running cell 2, the kernel sent a message larger than" in n for n in ex.notes)
    assert ex.variables["BEFORE"].values == [1.0] and "AFTER" not in ex.variables


def test_an_iopub_flood_cannot_hold_a_read_past_its_deadline(monkeypatch) -> None:
    monkeypatch.setattr(grader.execution.runner, "FLUSH_TIMEOUT", 3.0)
    cells = [new_code_cell("BEFORE = [1.0]"), new_code_cell(IOPUB_FLOOD)]
    started = time.monotonic()
    ex = execute(new_notebook(cells=cells), RunLimits(cell_timeout=10, total_timeout=40))
    elapsed = time.monotonic() - started
    # before, the final read drained iopub until it fell silent, which it never did, and
    # looked at its deadline only then: with no idle status coming, it never returned
    assert elapsed < ex.phases["kernel_start"] + ex.phases["probe"] + 10 + 3.0 + 5
    assert 3.0 <= ex.phases["extraction"] < 3.0 + 2
    assert any("final read of variables failed" in note for note in ex.notes)
    assert ex.variables["BEFORE"].values == [1.0]
