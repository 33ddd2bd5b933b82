"""A kernel for a learner's own computer (Windows, macOS or Linux): no sandbox, no Linux calls.

Issue 17: on a learner's machine the notebook is their own code on their own computer, so the
sandbox (bubblewrap, cgroups, seccomp, uids, the ipc transport, the forked warm pool) is not
needed, and most of it does not exist there. `PortableKernel` starts ipykernel the way
jupyter_client does on every OS (`launch_kernel`, a connection file on tcp loopback with a
fresh HMAC key) in a fresh, empty work dir, and gives the runner the same `Kernel` interface
as `SandboxedKernel`, so the cells, the probe, the Execution and everything after it are the
same code on every path.

What stays bounded without the sandbox: the runner's per-cell and per-notebook deadlines and
every cap on what the kernel sends (message size, probe records); the kernel tree's resident
memory is sampled (psutil works on all three OSes) and the kernel is killed, as "oom", when it
passes `RunLimits.memory_mb`; the kernel exits with the harness (jupyter_client's parent
watch) and is killed, with its children, at the end. Not bounded here: processes, open files,
disk and network, which only the sandbox limits.

`use_portable(limits)` is the one rule for when this path is taken.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Coroutine
from pathlib import Path
from typing import IO, Any, TypeVar

import psutil
from jupyter_client.connect import write_connection_file
from jupyter_client.launcher import launch_kernel

from grader.execution.launch import KERNEL_ARGS
from grader.execution.limits import RunLimits
from grader.execution.sandbox import SandboxUnavailable

PORTABLE = "portable kernel"  # Execution.sandbox: a plain kernel, no sandbox
MEMORY_SAMPLE = 0.1  # seconds between two looks at the kernel tree's memory
KILL_WAIT = 5.0  # seconds a killed kernel has to be gone
# What the kernel does not inherit from the harness's environment: the grader's own settings
# and secrets, and Jupyter's wiring of the harness itself.
DROPPED_ENV = ("MBGD_", "JPY_", "IPY_", "PYTEST_")
# The sandboxed kernel's settings that make the numbers the same (one thread, a headless
# matplotlib) or keep the learner's own IPython start-up files out of the run.
KERNEL_ENV = {
    "MPLBACKEND": "Agg",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYDEVD_DISABLE_FILE_VALIDATION": "1",
}
OOM_SIGNS = ("bad_alloc", "Cannot allocate memory", "MemoryError")
T = TypeVar("T")


def sandbox_possible() -> bool:
    """Whether this OS can run the sandboxed kernel at all (Linux only)."""
    return sys.platform.startswith("linux")


def use_portable(limits: RunLimits) -> bool:
    """The portable kernel when asked for (`RunLimits.portable`: `--mbgd-portable`, or the
    pytest plugin on a learner's Linux machine without bubblewrap or with a CUDA torch), and
    on an OS the sandbox does not run on.

    A server door (CLI, service, XQueue, platforms) on Linux without a usable bubblewrap keeps
    the rlimits-only `SandboxedKernel`: learner code there is hostile, and the portable kernel
    bounds neither processes nor files. (It cannot map a CUDA build of torch under its 2 GB
    RLIMIT_AS; servers install the CPU build, as `make` and the exported packages do.)"""
    return limits.portable or not sandbox_possible()


def run_sync(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run`, with a selector event loop on Windows: pyzmq's asyncio sockets need
    `add_reader`, which Windows' default proactor loop lacks (pyzmq then starts a selector
    thread of its own and warns about it in the learner's pytest summary)."""
    factory = asyncio.SelectorEventLoop if sys.platform == "win32" else None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def torch_fits_the_sandbox() -> bool:
    """Whether this environment's torch can be imported under the sandbox's address-space
    limit: a CPU build can (the course's); a CUDA or ROCm build maps more than the 2 GB of
    `RunLimits.memory_mb` before its first line runs ("failed to map segment"), so the
    learners' door runs such a torch in the portable kernel instead of failing every cell."""
    import torch

    version = torch.version
    return getattr(version, "cuda", None) is None and getattr(version, "hip", None) is None


def kernel_environment(workdir: Path) -> dict[str, str]:
    """The learner's own environment (PATH, conda's variables: torch needs them on Windows),
    less the grader's variables, plus the settings that make the run like the server's."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(DROPPED_ENV)}
    env.update(KERNEL_ENV)
    env["IPYTHONDIR"] = str(workdir / ".ipython")  # beside the kernel's cwd, not in it
    return env


class PortableKernel:
    """One ipykernel process for one notebook, launched as jupyter_client launches kernels."""

    origin = "fresh"
    sandbox = PORTABLE

    def __init__(self, limits: RunLimits) -> None:
        if limits.require_sandbox:
            where = "--mbgd-portable was asked for" if limits.portable else f"on {sys.platform}"
            raise SandboxUnavailable(
                f"the full sandbox is required but {where} the notebook would run without one "
                "(the sandbox needs Linux with bubblewrap; or run without --require-sandbox)"
            )
        self.limits = limits
        self.workdir = Path(tempfile.mkdtemp(prefix="mbgd-"))
        self.home = self.workdir / "home"
        self.home.mkdir()
        path, info = write_connection_file(
            str(self.workdir / "kernel.json"),
            ip="127.0.0.1",
            transport="tcp",
            key=secrets.token_hex(32).encode(),
        )
        self.connection_file = path
        self.connection: dict[str, object] = dict(info)
        self.proc: subprocess.Popen[bytes] | None = None
        self.killed_by_us = False
        self.over_memory = False
        self.peak_rss_mb = 0
        self._log: IO[bytes] | None = None

    def start(self) -> None:
        """Launch the kernel (returns at once; the client waits for it to answer)."""
        self._log = open(self.workdir / "kernel.log", "w+b")  # noqa: SIM115 - kept for log_tail
        argv = [sys.executable, "-m", "ipykernel_launcher", "-f", self.connection_file]
        self.proc = launch_kernel(
            [*argv, *KERNEL_ARGS],
            stdin=subprocess.DEVNULL,
            stdout=self._log.fileno(),
            stderr=self._log.fileno(),
            env=kernel_environment(self.workdir),
            cwd=str(self.home),
        )

    def seal(self) -> None:
        """Nothing to take back: the work dir is the learner's own machine's temp dir."""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _tree(self) -> list[psutil.Process]:
        if self.proc is None:
            return []
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return []

    def _resident_mb(self) -> int:
        total = 0
        for proc in self._tree():
            with contextlib.suppress(psutil.Error):
                total += proc.memory_info().rss
        return total >> 20

    async def wait_exit(self) -> None:
        """Resolve when the kernel has exited; kill it when its tree passes the memory budget
        (no rlimit or cgroup here: sampling is what all three OSes allow)."""
        while self.alive():
            used = await asyncio.to_thread(self._resident_mb)
            self.peak_rss_mb = max(self.peak_rss_mb, used)
            if used > self.limits.memory_mb:
                self.over_memory = True  # the budget killed it: on the learner's account
                self._kill_tree()
                return
            await asyncio.sleep(MEMORY_SAMPLE)

    def looks_out_of_memory(self) -> bool:
        if self.over_memory:
            return True
        return any(sign in self.log_tail(2000) for sign in OOM_SIGNS)

    def log_tail(self, limit: int = 4000) -> str:
        """The last bytes the kernel wrote to stdout/stderr."""
        if self._log is None or self._log.closed:
            return ""
        try:
            size = os.fstat(self._log.fileno()).st_size
            self._log.seek(max(0, size - limit))
            return self._log.read(limit).decode("utf-8", "replace")
        except OSError:
            return ""

    def kill(self) -> None:
        """Kill the kernel and every process it started. Idempotent."""
        if self.alive():
            self.killed_by_us = True
        self._kill_tree()

    def _kill_tree(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        tree = self._tree()
        for proc in reversed(tree):  # children first, so none is left to an orphan's fate
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(tree, timeout=KILL_WAIT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=KILL_WAIT)

    def cleanup(self) -> None:
        """Kill, close the log, delete the work dir."""
        self.kill()
        if self._log is not None:
            self._log.close()
        shutil.rmtree(self.workdir, ignore_errors=True)
