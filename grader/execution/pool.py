"""A warm pool: kernels forked from a parent that already imported torch, numpy and pyplot.

Issue 5: most of a fresh kernel's cost is fixed (interpreter start, importing torch and pyplot).
`KernelPool` pays it once. It starts `grader.execution.in_kernel.zygote` under bubblewrap (the
same read-only system, no network, scrubbed environment as a fresh kernel, plus the capabilities
the zygote needs to build each child's sandbox) and asks it for one forked kernel per
submission. Every forked kernel gets, before any learner code runs, its own mount, network, ipc,
uts and pid namespaces, a fresh /tmp with only its own work dir in it, its own leased uid,
rlimits and environment (see `grader.execution.in_kernel.zygote`). A kernel is used once and
killed, so nothing a learner does (globals, monkeypatches, files, threads) reaches the next one.

    pool = KernelPool()
    pool.start()                        # a few seconds, once; from a long-lived thread
    ex = await execute_async(nb, limits, pool=pool)
    pool.close()

There is no pool by default: a door that grades many notebooks opens one (`open_pool`, or
`warm_pool()` for the length of a command) and passes it down (`pipeline.grade(...,
pool=pool)`). The pool needs Linux, root and bwrap (`KernelPool.available()`), and never
serves a portable run (`grader.execution.portable`); without them
`open_pool` gives None and every notebook gets a fresh kernel. When a pool that was opened
cannot hand out a kernel (its zygote does not start, a spawn fails), `execute_async` starts a
fresh kernel instead and says so in the Execution's notes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil

from grader.errors import Unavailable
from grader.execution import seccomp
from grader.execution.launch import (
    KERNEL_ARGS,
    bwrap_argv,
    kernel_env,
    mpl_cache,
    rlimits,
    ro_binds,
)
from grader.execution.limits import RunLimits
from grader.execution.sandbox import SandboxedKernel, find_bwrap
from grader.execution.uids import processes_of_uid

WARM_MODULES = [
    "numpy",
    "torch",
    "torch.utils.data",
    "matplotlib.pyplot",
    "mpl_toolkits.mplot3d",
    "IPython",
    "ipykernel.kernelapp",
    "ipykernel.ipkernel",
    "ipykernel.zmqshell",
    "ipykernel.debugger",  # pulls in debugpy: ~0.4 s per kernel otherwise
]
ZYGOTE_CAPS = ("CAP_SYS_ADMIN", "CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP")
START_TIMEOUT = 180.0
_SOURCE = (Path(__file__).parent / "in_kernel" / "zygote.py").read_text(encoding="utf-8")


class PoolUnavailable(Unavailable, RuntimeError):
    """The warm pool cannot run here (no bwrap, not root) or its zygote failed."""


class ForkedKernel(SandboxedKernel):
    """A kernel forked by the zygote: same interface and teardown as a fresh one."""

    origin = "warm"

    def __init__(self, limits: RunLimits, pool_dir: Path) -> None:
        self._pool_dir = pool_dir
        self._reapers: list[psutil.Process] = []  # the namespace's init and its parent
        super().__init__(limits)

    def _new_workdir(self) -> Path:
        return Path(tempfile.mkdtemp(prefix="w", dir=self._pool_dir))

    def request(self) -> dict[str, object]:
        """The spawn request for the zygote (prepares the work dir and connection file)."""
        self._prepare_workdir()
        assert self.uid is not None
        return {
            "workdir": str(self.workdir),
            "uid": self.uid,
            "disk_mb": self.limits.disk_mb,
            "rlimits": rlimits(self.limits, with_nproc=True),
            "env": kernel_env(self.workdir),
            "argv": ["-f", str(self.workdir / "kernel.json"), *KERNEL_ARGS],
        }

    def attach(self) -> None:
        """Find the kernel's host pid: the one process running as our leased uid."""
        assert self.uid is not None
        procs = processes_of_uid(self.uid)
        if len(procs) != 1:
            raise PoolUnavailable(f"expected one kernel process for uid {self.uid}: {procs}")
        self._kernel_proc = procs[0]
        init = procs[0].parent()  # pid 1 of the kernel's namespace
        self._reapers = [p for p in (init, init.parent() if init else None) if p is not None]
        self._isolate()
        if self.cgroup is not None:  # before any learner code: the kernel waits for a request
            for proc in (*self._reapers, self._kernel_proc):
                self.cgroup.add(proc.pid)

    def alive(self) -> bool:
        proc = self._kernel_proc
        if proc is None:
            return False
        try:
            return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def exit_signal(self) -> int | None:
        return None  # the zygote reaps the kernel; its exit status does not reach us

    def kill(self) -> None:
        if self.alive():
            self.killed_by_us = True
        if self.cgroup is not None:
            self.cgroup.kill()
        if self._kernel_proc is not None:  # its namespace's init then ends, taking all with it
            with contextlib.suppress(psutil.Error):
                self._kernel_proc.kill()
            # wait until the kernel and the processes that reap it are gone
            psutil.wait_procs([self._kernel_proc, *self._reapers], timeout=5)
        if self.uid is not None and self.cgroup is None:
            for proc in processes_of_uid(self.uid):
                with contextlib.suppress(psutil.Error):
                    proc.kill()


def _spawn_key(limits: RunLimits) -> tuple[object, ...]:
    """What a forked kernel is made with: two limits with equal keys get the same sandbox."""
    return (tuple(rlimits(limits, with_nproc=True)), limits.disk_mb)


class KernelPool:
    """Hands out kernels forked from one warm, sandboxed zygote. Thread- and task-safe."""

    def __init__(self, modules: list[str] | None = None, *, spare: bool = True) -> None:
        self.modules = list(modules or WARM_MODULES)
        self.proc: subprocess.Popen[bytes] | None = None
        self.pool_dir: Path | None = None
        self._lock = threading.Lock()
        self._log: Path | None = None
        self._keep_spare = spare
        self._spare: ForkedKernel | None = None  # started ahead of need, never used yet
        self._spare_lock = threading.Lock()
        self._refill: threading.Thread | None = None
        self._closed = False
        self._closed_why = ""  # after close(): why acquire fails (until start() again)

    @staticmethod
    def available() -> bool:
        linux = sys.platform.startswith("linux")  # os.geteuid: POSIX only
        return linux and find_bwrap() is not None and os.geteuid() == 0

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start the zygote and wait until it has imported everything. Idempotent."""
        with self._spare_lock:
            self._closed = False
        with self._lock:
            self._start_locked(timeout)

    def _start_locked(self, timeout: float) -> None:
        if self._closed:  # closed by its door, or retired: no zygote comes back to life
            raise PoolUnavailable(self._closed_why or "the warm pool was closed")
        if self.proc is not None and self.proc.poll() is None:
            return
        self._stop_locked()  # a dead zygote: clear it away before starting a new one
        bwrap = find_bwrap()
        if bwrap is None or not self.available():
            raise PoolUnavailable("the warm pool needs Linux, bwrap and root")
        self.pool_dir = Path(tempfile.mkdtemp(prefix="mbgd-p", dir="/tmp"))
        self.pool_dir.chmod(0o700)
        home = self.pool_dir / "zygote"
        (home / ".mpl").mkdir(parents=True)
        (home / "home").mkdir()
        cache = mpl_cache()
        if cache is not None:
            for item in cache.glob("fontlist-*.json"):
                shutil.copy(item, home / ".mpl" / item.name)
        self._log = self.pool_dir / "zygote.log"
        env = kernel_env(home)
        argv = bwrap_argv(
            bwrap,
            self.pool_dir,
            env,
            uid=None,
            disk_mb=None,
            caps=ZYGOTE_CAPS,
            die_with_parent=False,
        )
        # what of Python lives under /tmp: each kernel's fresh /tmp must bind it back
        under_tmp = [p for p in ro_binds() if p.startswith("/tmp/")]
        try:
            syscall_filter = seccomp.program().hex()
        except seccomp.SeccompUnavailable:
            syscall_filter = ""  # kernels say so in their sandbox text
        config = json.dumps(
            {"modules": self.modules, "ro_under_tmp": under_tmp, "seccomp": syscall_filter}
        )
        argv += [sys.executable, "-c", _SOURCE, config]
        with open(self._log, "wb") as log:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                start_new_session=True,
            )
        line = self._readline(timeout)
        if not line.get("ready"):
            self._stop_locked()
            raise PoolUnavailable(f"the zygote did not start: {self.log_tail()}")

    def _readline(self, timeout: float) -> dict[str, object]:
        assert self.proc is not None and self.proc.stdout is not None
        stdout = self.proc.stdout
        result: list[bytes] = []
        reader = threading.Thread(target=lambda: result.append(stdout.readline()))
        reader.daemon = True
        reader.start()
        reader.join(timeout)
        if not result or not result[0]:
            return {}
        try:
            reply = json.loads(result[0])
        except ValueError:
            return {}
        return reply if isinstance(reply, dict) else {}

    def log_tail(self, limit: int = 2000) -> str:
        if self._log is None or not self._log.exists():
            return ""
        return self._log.read_bytes()[-limit:].decode("utf-8", "replace")

    def _spawn(self, limits: RunLimits) -> ForkedKernel:
        with self._lock:
            try:
                return self._spawn_locked(limits)
            except PoolUnavailable:
                if self.proc is not None:
                    raise  # the zygote is alive: this spawn failed, the next may not
            return self._spawn_locked(limits)  # the zygote had died: once more, restarted

    def _spawn_locked(self, limits: RunLimits) -> ForkedKernel:
        self._start_locked(START_TIMEOUT)
        assert self.proc is not None and self.proc.stdin is not None and self.pool_dir
        kernel = ForkedKernel(limits, self.pool_dir)
        try:
            self.proc.stdin.write((json.dumps(kernel.request()) + "\n").encode())
            self.proc.stdin.flush()
            reply = self._readline(30.0)
            if not reply:  # no answer: the zygote is gone or wedged, and a late answer
                self._stop_locked()  # would be read as the next spawn's; start afresh
                raise PoolUnavailable("the zygote did not answer")
            if not reply.get("ok"):
                raise PoolUnavailable(f"spawn failed: {reply.get('error', 'no reply')}")
            kernel.attach()
        except (OSError, PoolUnavailable) as exc:
            kernel.cleanup()
            if self.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=1)  # a zygote that is going away
                if self.proc.poll() is not None:
                    self._stop_locked()
            raise PoolUnavailable(str(exc)) from exc
        return kernel

    async def acquire(self, limits: RunLimits) -> ForkedKernel:
        """A started kernel of its own, forked from the warm zygote.

        The kernel started ahead of need is handed out when it was made for the same
        rlimits; then the next one is forked in the background, so a submission's kernel
        has usually finished booting before the submission asks for it.
        """
        kernel = self._take_spare(limits)
        if kernel is None:
            kernel = await asyncio.to_thread(self._spawn, limits)
        self._start_refill(limits)
        return kernel

    def _take_spare(self, limits: RunLimits) -> ForkedKernel | None:
        with self._spare_lock:
            spare, self._spare = self._spare, None
        if spare is None:
            return None
        if spare.alive() and _spawn_key(spare.limits) == _spawn_key(limits):
            spare.limits = limits  # same sandbox; the time budgets may differ
            return spare
        spare.cleanup()
        return None

    def _start_refill(self, limits: RunLimits) -> None:
        with self._spare_lock:
            busy = self._refill is not None and self._refill.is_alive()
            if not self._keep_spare or self._closed or busy or self._spare is not None:
                return
            self._refill = threading.Thread(target=self._make_spare, args=(limits,), daemon=True)
            self._refill.start()

    def _make_spare(self, limits: RunLimits) -> None:
        kernel: ForkedKernel | None
        try:
            kernel = self._spawn(limits)
        except (PoolUnavailable, OSError, RuntimeError):
            return  # no spare this time; acquire forks on demand
        with self._spare_lock:
            if self._spare is None and not self._closed:
                self._spare, kernel = kernel, None
        if kernel is not None:
            kernel.cleanup()

    def _settle_refill(self) -> None:
        """Wait for a spare being forked right now, if any."""
        with self._spare_lock:
            refill = self._refill
        if refill is not None:
            refill.join(timeout=60)

    def spare_processes(self) -> list[psutil.Process]:
        """The processes of the kernel started ahead of need (after any refill in flight)."""
        self._settle_refill()
        with self._spare_lock:
            spare = self._spare
        if spare is None or spare._kernel_proc is None:
            return []
        return [spare._kernel_proc, *spare._reapers]

    def _drop_spare(self) -> None:
        self._settle_refill()
        with self._spare_lock:
            spare, self._spare = self._spare, None
        if spare is not None:
            spare.cleanup()

    def _stop_locked(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(OSError):
                if self.proc.stdin is not None:
                    self.proc.stdin.close()
            if self.proc.poll() is None:
                with contextlib.suppress(psutil.Error):
                    for child in psutil.Process(self.proc.pid).children():
                        child.kill()
            self.proc.kill()
            self.proc.wait(timeout=10)
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self.proc = None
        if self.pool_dir is not None:
            shutil.rmtree(self.pool_dir, ignore_errors=True)
            self.pool_dir = None

    def close(self, why: str = "") -> None:
        """Stop the zygote (its kernels die with it) and delete the pool dir. Until `start()`
        is called again, `acquire` raises PoolUnavailable(why) at once."""
        with self._spare_lock:
            self._closed = True
            self._closed_why = why
        self._drop_spare()
        with self._lock:
            self._stop_locked()

    def __enter__(self) -> KernelPool:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_pool(*, wait: bool = True) -> KernelPool | None:
    """Start a warm pool for the caller to pass down, where the sandbox allows one.

    Returns None (every notebook then gets a fresh kernel, with identical results, only
    slower) without root and bwrap, with MBGD_WARM_POOL=0, or when the zygote does not start.
    `wait=False` starts it in the background, for hosts that must not block while torch
    imports (a Celery pool child must report alive within seconds); a notebook that arrives
    meanwhile waits for the pool rather than starting a kernel of its own. If that start
    fails, the pool is closed and each later notebook runs in a fresh kernel, with a note.
    The caller closes the pool.
    """
    if os.environ.get("MBGD_WARM_POOL", "1") == "0" or not KernelPool.available():
        return None
    pool = KernelPool()
    if not wait:
        starter = threading.Thread(target=_start_or_retire, args=(pool,), daemon=True)
        starter.start()
        return pool
    return pool if _start_or_retire(pool) else None


def _start_or_retire(pool: KernelPool) -> bool:
    try:
        pool.start()
        return True
    except PoolUnavailable as exc:
        pool.close(why=f"the warm pool did not start ({exc})")
        return False


@contextlib.contextmanager
def warm_pool() -> Iterator[KernelPool | None]:
    """A pool for the lifetime of a command (`open_pool`, then closed); None where there is
    none. Doors that grade many notebooks in one process (the batch CLI, the pytest plugin)
    wrap their work in this and pass the pool down.
    """
    pool = open_pool(wait=True)
    try:
        yield pool
    finally:
        if pool is not None:
            pool.close()
