"""`grader.execution.portable`: when the portable kernel is taken, and what it inherits.

No kernel here: the portable path end to end is `tests/doors/test_portable.py` (the plugin
with --mbgd-portable) and the bounds below; the import guards are `tests/test_portability.py`.
"""

from __future__ import annotations

import pytest
from nbformat.v4 import new_code_cell, new_notebook

import grader.execution.portable as portable
import grader.execution.sandbox
from grader.execution.limits import RunLimits
from grader.execution.portable import (
    PORTABLE,
    PortableKernel,
    kernel_environment,
    torch_fits_the_sandbox,
    use_portable,
)
from grader.execution.runner import SandboxUnavailable, execute


@pytest.mark.parametrize(
    ("linux", "bwrap", "limits", "want"),
    [
        (True, "/usr/bin/bwrap", RunLimits(), False),  # the course server: the sandbox
        (True, "/usr/bin/bwrap", RunLimits(portable=True), True),  # --mbgd-portable
        (True, None, RunLimits(), False),  # a server without bubblewrap: rlimits-only
        (True, None, RunLimits(require_sandbox=True), False),  # refused by the sandbox
        (False, None, RunLimits(), True),  # Windows, macOS
        (False, "/opt/bwrap", RunLimits(), True),
    ],
)
def test_which_kernel_a_run_gets(monkeypatch, linux, bwrap, limits, want) -> None:
    monkeypatch.setattr(portable, "sandbox_possible", lambda: linux)
    monkeypatch.setattr(grader.execution.sandbox, "find_bwrap", lambda: bwrap)
    assert use_portable(limits) is want


def test_require_sandbox_refuses_the_portable_kernel_and_says_why(monkeypatch) -> None:
    with pytest.raises(SandboxUnavailable, match="--mbgd-portable.*without one"):
        PortableKernel(RunLimits(portable=True, require_sandbox=True))
    monkeypatch.setattr(portable, "sandbox_possible", lambda: False)
    with pytest.raises(SandboxUnavailable, match=r"full sandbox is required.*on linux"):
        execute(new_notebook(cells=[new_code_cell("x = 1")]), RunLimits(require_sandbox=True))


def test_the_kernel_keeps_the_learners_environment_but_not_the_graders(monkeypatch, tmp_path):
    monkeypatch.setenv("MBGD_SECRET_SEED", "s3cret")
    monkeypatch.setenv("JPY_SESSION_NAME", "harness")
    monkeypatch.setenv("CONDA_PREFIX", "/opt/conda/envs/lab")
    monkeypatch.setenv("OMP_NUM_THREADS", "8")
    env = kernel_environment(tmp_path)
    assert not [k for k in env if k.startswith(("MBGD_", "JPY_"))]
    assert env["CONDA_PREFIX"] == "/opt/conda/envs/lab" and env["PATH"]
    assert env["OMP_NUM_THREADS"] == "1" and env["MPLBACKEND"] == "Agg"  # as on the server
    assert env["IPYTHONDIR"] == str(tmp_path / ".ipython")  # not the learner's profile


@pytest.mark.slow
def test_the_portable_kernel_is_bounded_by_memory_and_message_size() -> None:
    """The bounds the portable path adds without a sandbox (the time budgets are the runner's,
    the same on every path): one kernel per case, each short."""
    huge = (
        "from IPython.display import display\ndisplay({'text/plain': 'x' * (20 << 20)}, raw=True)"
    )
    cases = {
        "message": (huge, RunLimits(portable=True, cell_timeout=30)),
        "memory": (
            "import numpy as np\nkeep = [np.ones(64 << 20, np.uint8) for _ in range(40)]",
            RunLimits(portable=True, cell_timeout=30, memory_mb=1024),
        ),
    }
    runs = {}
    for name, (code, limits) in cases.items():
        cells = [new_code_cell("BEFORE = [1.0]"), new_code_cell(code), new_code_cell("A = [2.0]")]
        runs[name] = execute(new_notebook(cells=cells), limits)
    for ex in runs.values():
        assert ex.sandbox == PORTABLE
        assert ex.fate_cell == 1 and ex.variables["BEFORE"].values == [1.0]
        assert [c.status for c in ex.cells][2] == "not_run" and "A" not in ex.variables
    assert runs["message"].fate == "died"
    assert runs["message"].cells[1].error_name == "ProtocolError"
    assert "larger than 17 MB" in runs["message"].cells[1].error_value
    assert runs["memory"].fate == "oom"


def test_a_cuda_build_of_torch_gets_the_portable_kernel_from_the_learners_door(monkeypatch):
    """This environment's torch is the CPU build the sandbox is made for; a CUDA build (pip's
    default on Linux) cannot be mapped under its address-space limit (seen with
    2.14.1+cu130: "libtorch_cpu.so: failed to map segment"), so the plugin runs it portably."""
    import torch

    assert torch.version.cuda is None and torch_fits_the_sandbox()
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    assert not torch_fits_the_sandbox()
