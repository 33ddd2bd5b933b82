"""The sandbox holds: no network, no files outside the work dir, no harness secrets, limits.

One notebook probes each wall from its own cell; it runs once per session in a real
bubblewrap kernel and each test asserts on the status of the cell that tried.
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

import pytest
from nbformat.v4 import new_code_cell, new_notebook

import grader.execution.sandbox
import grader.execution.uids
from grader.execution import cgroups
from grader.execution.portable import PORTABLE
from grader.execution.runner import RunLimits, SandboxUnavailable, execute
from tests.helpers import ROOT, Listener, probe_cells

pytestmark = pytest.mark.slow
needs_bwrap = pytest.mark.skipif(
    grader.execution.sandbox.find_bwrap() is None, reason="bwrap (bubblewrap) is not installed"
)
LIMITS = RunLimits(cell_timeout=20, total_timeout=60, memory_mb=1536, max_file_mb=8, disk_mb=16)


@pytest.fixture(scope="session")
def walls():
    """Run the probing notebook once: (Execution, {name: CellRun}, listener, secret files)."""
    listener = Listener()
    token = secrets.token_hex(8)
    secret_files = [Path(f"/tmp/mbgd-secret-{token}"), ROOT / f".secret-{token}"]
    for path in secret_files:
        path.write_text("top secret")
    os.environ["MBGD_TEST_SECRET"] = token
    try:
        cells = probe_cells(listener.port, secret_files)
        nb = new_notebook(cells=[new_code_cell(src) for src in cells.values()])
        ex = execute(nb, LIMITS)
    finally:
        del os.environ["MBGD_TEST_SECRET"]
        for path in secret_files:
            path.unlink()
        listener.close()
    by_name = dict(zip(cells, ex.cells, strict=True))
    return ex, by_name, listener, secret_files


@needs_bwrap
def test_notebook_ran_sandboxed(walls) -> None:
    ex, cell, _, _ = walls
    assert ex.sandbox.startswith("bubblewrap") and ex.fate == "ok"
    if not isinstance(cgroups.locate(), str):  # where the machine has them, they are used
        assert ex.sandbox == f"bubblewrap + {cgroups.locate().describe()} + seccomp"
    assert cell["control"].status == "ok" and ex.variables["OK"].values == [1.0]


@needs_bwrap
def test_no_network_not_even_host_loopback(walls) -> None:
    ex, cell, listener, _ = walls
    assert cell["loopback"].status == "error"
    assert cell["loopback"].error_name in {"ConnectionRefusedError", "OSError", "TimeoutError"}
    assert listener.accepted == [] and "REACHED" not in ex.variables
    assert cell["interfaces"].status == "ok"


@needs_bwrap
def test_files_outside_the_work_dir_are_invisible(walls) -> None:
    ex, cell, _, files = walls
    for i in range(len(files)):
        assert cell[f"read_{i}"].status == "error"
        assert cell[f"read_{i}"].error_name == "FileNotFoundError"
        assert f"SECRET_{i}" not in ex.variables
    assert cell["write_system"].status == "error"
    assert cell["write_system"].error_name in {"OSError", "PermissionError"}
    assert cell["write_workdir"].status == "ok" and ex.variables["WROTE"].values == [1.0]


@needs_bwrap
def test_environment_is_scrubbed(walls) -> None:
    _, cell, _, _ = walls
    assert cell["env"].status == "ok", cell["env"].error_value


@needs_bwrap
def test_unprivileged_uid_and_own_pid_namespace(walls) -> None:
    ex, cell, _, _ = walls
    assert cell["uid"].status == "ok", cell["uid"].error_value
    if os.geteuid() == 0:
        uid = ex.variables["UID"].values[0]
        assert (
            grader.execution.uids.UID_BASE
            <= uid
            < grader.execution.uids.UID_BASE + grader.execution.uids.UID_SLOTS
        )
    assert cell["processes"].status == "ok", cell["processes"].error_value


@needs_bwrap
def test_rlimits_are_in_force(walls) -> None:
    ex, cell, _, _ = walls
    as_, fsize, cpu, nproc, nofile = ex.variables["LIMITS"].values
    assert as_ == LIMITS.memory_mb << 20 and fsize == LIMITS.max_file_mb << 20
    assert cpu == LIMITS.cpu_seconds and nofile == LIMITS.max_open_files
    if os.geteuid() == 0:
        assert nproc == LIMITS.max_processes
    assert cell["file_size"].status == "error"  # 9 MB > max_file_mb
    for name in ("disk_full", "tmp_full"):  # 28 MB > disk_mb in home (cwd) and /tmp
        assert cell[name].status == "error" and "No space left" in cell[name].error_value
    if os.geteuid() == 0:  # the host work dir is taken back once the kernel is up
        assert (
            cell["host_dir"].status == "error" and cell["host_dir"].error_name == "PermissionError"
        )
    assert cell["memory"].status == "error" and cell["memory"].error_name == "MemoryError"
    assert "HOG" not in ex.variables


@needs_bwrap
def test_no_new_user_namespace(walls) -> None:
    """unshare(CLONE_NEWUSER) would give capabilities back (and mounts of any size)."""
    _, cell, _, _ = walls
    assert cell["userns"].status == "error"
    assert "Operation not permitted" in cell["userns"].error_value


@needs_bwrap
def test_without_cgroups_the_full_sandbox_is_refused(monkeypatch) -> None:
    monkeypatch.setattr(cgroups, "locate", lambda refresh=False: "turned off for this test")
    with pytest.raises(SandboxUnavailable, match="no per-kernel cgroup.*turned off"):
        execute(new_notebook(cells=[new_code_cell("x = [1]")]), RunLimits(require_sandbox=True))
    ex = execute(new_notebook(cells=[new_code_cell("x = [1]")]), LIMITS)
    assert ex.sandbox == "bubblewrap + seccomp (no cgroup: turned off for this test)"
    assert ex.variables["x"].values == [1.0]


def test_without_bwrap_runs_rlimits_only_or_refuses(monkeypatch) -> None:
    """A server without bubblewrap keeps resource limits (learner code there is hostile);
    only the learner's own door takes the portable kernel (tests/execution/test_portable.py).
    --require-sandbox refuses."""
    monkeypatch.setattr(grader.execution.sandbox, "find_bwrap", lambda: None)
    with pytest.raises(SandboxUnavailable, match="bwrap"):
        execute(new_notebook(cells=[new_code_cell("x = [1]")]), RunLimits(require_sandbox=True))
    monkeypatch.setenv("MBGD_TEST_SECRET", "x")
    cells = [
        "import os\nleaks = [k for k in os.environ if k.startswith('MBGD')]\nassert not leaks",
        "import resource\nAS = [resource.getrlimit(resource.RLIMIT_AS)[0]]",
    ]
    ex = execute(new_notebook(cells=[new_code_cell(c) for c in cells]), LIMITS)
    assert ex.sandbox.startswith("rlimits-only") and "bwrap not found" in ex.sandbox
    assert [c.status for c in ex.cells] == ["ok", "ok"]
    assert ex.variables["AS"].values == [float(LIMITS.memory_mb << 20)]
    # the learner's door on the same machine: the portable kernel, in an empty work dir
    portable = execute(
        new_notebook(cells=[new_code_cell("import os\nHOME_FILES = [len(os.listdir('.'))]")]),
        LIMITS.model_copy(update={"portable": True}),
    )
    assert portable.sandbox == PORTABLE and portable.variables["HOME_FILES"].values == [0.0]


@pytest.mark.skipif(os.geteuid() != 0, reason="uid leases exist only as root")
def test_stale_work_dirs_are_swept_but_live_ones_kept() -> None:
    lease = grader.execution.uids.UidLease()  # a live kernel's uid: its dir must survive
    stale_uid = next(
        u
        for u in range(grader.execution.uids.UID_BASE + 1, grader.execution.uids.UID_BASE + 100)
        if u != lease.uid and not grader.execution.uids.processes_of_uid(u)
    )
    live = Path(f"/tmp/mbgd-{lease.uid}-sweeptest")
    stale = Path(f"/tmp/mbgd-{stale_uid}-sweeptest")
    try:
        for path in (live, stale):
            (path / "home").mkdir(parents=True)
        removed = grader.execution.uids.sweep_stale_workdirs(force=True)
        assert stale in removed and not stale.exists()
        assert live.exists() and live not in removed
    finally:
        lease.release()
        for path in (live, stale):
            shutil.rmtree(path, ignore_errors=True)
