"""The sandbox holds: no network, no files outside the work dir, no harness secrets, limits.

One notebook probes each wall from its own cell; it runs once per session in a real
bubblewrap kernel and each test asserts on the status of the cell that tried.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import threading
from pathlib import Path

import pytest
from nbformat.v4 import new_code_cell, new_notebook

import grader.execution.sandbox
import grader.execution.uids
from grader.execution import cgroups
from grader.execution.runner import RunLimits, SandboxUnavailable, execute

pytestmark = pytest.mark.slow
needs_bwrap = pytest.mark.skipif(
    grader.execution.sandbox.find_bwrap() is None, reason="bwrap (bubblewrap) is not installed"
)
PROJECT = Path(__file__).resolve().parents[1]
LIMITS = RunLimits(cell_timeout=20, total_timeout=60, memory_mb=1536, max_file_mb=8, disk_mb=16)


class Listener:
    """A TCP listener on the host's loopback that records every connection it accepts."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[object] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, addr = self.sock.accept()
            except TimeoutError:
                continue
            self.accepted.append(addr)
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.sock.close()


def probe_cells(port: int, secret_files: list[Path]) -> dict[str, str]:
    """name -> source; every cell should fail (or assert) if a wall is missing."""
    return {
        "control": "import os\nassert os.environ['MPLBACKEND'] == 'Agg'\nOK = [1]",
        "loopback": (
            "import socket\n"
            f"socket.create_connection(('127.0.0.1', {port}), timeout=3).close()\n"
            "REACHED = [1]"
        ),
        "interfaces": "import socket\nassert [n for _, n in socket.if_nameindex()] == ['lo']",
        **{
            f"read_{i}": f"SECRET_{i} = list(open({str(path)!r}, 'rb').read())"
            for i, path in enumerate(secret_files)
        },
        "env": (
            "import os\n"
            "leaks = [k for k in os.environ if k.startswith(('MBGD', 'JPY'))]\n"
            "assert not leaks, leaks\n"
            "assert os.environ['HOME'] == os.getcwd()"
        ),
        "uid": "import os\nassert os.getuid() != 0 and os.geteuid() != 0\nUID = [os.getuid()]",
        "write_system": "open('/usr/mbgd-owned', 'w')",
        "write_workdir": "open('mine.txt', 'w').write('x' * 100)\nWROTE = [1]",
        "file_size": "open('big.bin', 'wb').write(b'0' * (9 << 20))",
        "disk_full": ("for i in range(4):\n    open(f'part{i}.bin', 'wb').write(b'0' * (7 << 20))"),
        "tmp_full": (
            "for i in range(4):\n    open(f'/tmp/part{i}.bin', 'wb').write(b'0' * (7 << 20))"
        ),
        "host_dir": ("import os\nopen(os.path.join(os.path.dirname(os.getcwd()), 'x.bin'), 'wb')"),
        "processes": (
            "import os\nPIDS = [int(p) for p in os.listdir('/proc') if p.isdigit()]\n"
            "assert len(PIDS) < 10, PIDS"
        ),
        "rlimits": (
            "import resource\n"
            "LIMITS = [resource.getrlimit(getattr(resource, n))[0] for n in "
            "('RLIMIT_AS', 'RLIMIT_FSIZE', 'RLIMIT_CPU', 'RLIMIT_NPROC', 'RLIMIT_NOFILE')]"
        ),
        "userns": (
            "import ctypes, os\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            "assert libc.unshare(0x10000000 | 0x00020000) == 0, os.strerror(ctypes.get_errno())\n"
            "NEWUSER = [1]"
        ),
        "memory": "import numpy as np\nHOG = np.ones(2 * 1024**3 // 8)",
    }


@pytest.fixture(scope="session")
def walls():
    """Run the probing notebook once: (Execution, {name: CellRun}, listener, secret files)."""
    listener = Listener()
    token = secrets.token_hex(8)
    secret_files = [Path(f"/tmp/mbgd-secret-{token}"), PROJECT / f".secret-{token}"]
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
