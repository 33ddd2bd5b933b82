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

Warm parents (issue 16): `acquire(limits, cells)` with a notebook's code cells forks its kernel
from a parent that already ran the longest known prefix of the lab those cells start with
(`grader.execution.prefix`), and hands back what the parent's probe recorded for them
(`ForkedKernel.reused`). A parent is made the first time a prefix is asked for (the asking
submission waits about as long as running those cells itself takes), runs only the lab's
cells, lives in a cgroup and uid of its own, and dies with the pool; at most `MAX_PARENTS`
live at once: a new prefix then retires the parent used least recently among those that no
running kernel was forked from (kernels die with their parent), and runs in full only when
every parent is busy. A prefix whose parent could not run its cells is not tried again, and
one whose parent died is made again only a few times: after that, those notebooks run in full.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
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
from grader.execution.prefix import LabPrefix, PrefixRun, match
from grader.execution.probe_reader import PROBE_SETTINGS
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
RUN_TIMEOUT = 600.0  # at most, for a warm parent to run the lab's cells
MAX_PARENTS = 3
MAX_REMAKES = 3
_SOURCE = (Path(__file__).parent / "in_kernel" / "zygote.py").read_text(encoding="utf-8")
_PROBE = (Path(__file__).parent / "in_kernel" / "probe.py").read_text(encoding="utf-8")


class PoolUnavailable(Unavailable, RuntimeError):
    """The warm pool cannot run here (no bwrap, not root) or its zygote failed."""


class ForkedKernel(SandboxedKernel):
    """A kernel forked by the zygote: same interface and teardown as a fresh one."""

    origin = "warm"

    def __init__(self, limits: RunLimits, pool_dir: Path) -> None:
        self._pool_dir = pool_dir
        self._reapers: list[psutil.Process] = []  # the namespace's init and its parent
        self.parent_key: str | None = None  # the warm parent it was forked from, if any
        self.reused: PrefixRun | None = None  # what that parent ran and recorded
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


class WarmParent(ForkedKernel):
    """The process that ran a lab prefix and forks kernels from there (`in_kernel/zygote.py`:
    `prefix_parent`). Handled like a kernel: its own uid, work dir and cgroup, killed with the
    pool; it is never connected to, and no learner code runs in it."""

    origin = "parent"

    def attach(self) -> None:
        """Find the parent (the one process of our uid) and put it in its own cgroup."""
        assert self.uid is not None
        procs = processes_of_uid(self.uid)
        if len(procs) != 1:
            raise PoolUnavailable(f"expected one warm parent for uid {self.uid}: {procs}")
        self._kernel_proc = procs[0]
        self._isolate()
        if self.cgroup is not None:
            self.cgroup.add(procs[0].pid)


def _spawn_key(limits: RunLimits) -> tuple[object, ...]:
    """What a forked kernel is made with: two limits with equal keys get the same sandbox."""
    return (tuple(rlimits(limits, with_nproc=True)), limits.disk_mb)


def _parent_key(prefix: LabPrefix, limits: RunLimits) -> str:
    """One warm parent per prefix and sandbox (a kernel cannot raise its parent's rlimits)."""
    sandbox = hashlib.sha256(json.dumps(_spawn_key(limits)).encode()).hexdigest()[:12]
    return f"{prefix.key}-{sandbox}"


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
        # key -> the parent and what it ran; None: its parent failed, that prefix runs in full
        self._parents: dict[str, tuple[WarmParent, PrefixRun] | None] = {}
        self._remade: dict[str, int] = {}
        self._last_used: dict[str, float] = {}  # key -> when a kernel was last forked from it
        self._children: dict[str, list[ForkedKernel]] = {}  # key -> kernels forked from it

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

    def _spawn(self, limits: RunLimits, prefix: LabPrefix | None = None) -> ForkedKernel:
        with self._lock:
            try:
                return self._spawn_locked(limits, prefix)
            except PoolUnavailable:
                if self.proc is not None:
                    raise  # the zygote is alive: this spawn failed, the next may not
            return self._spawn_locked(limits, prefix)  # the zygote had died: once more

    def _send(self, request: dict[str, object], timeout: float) -> dict[str, object]:
        """One request to the zygote and its answer; {} when it did not answer in time (the
        zygote is then stopped: a late answer would be read as the next request's)."""
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(request) + "\n").encode())
        self.proc.stdin.flush()
        reply = self._readline(timeout)
        if not reply:
            self._stop_locked()
        return reply

    def _parent_locked(self, limits: RunLimits, prefix: LabPrefix) -> tuple[str, PrefixRun] | None:
        """The warm parent for `prefix` (made now if there is none yet), or None: no reuse."""
        key = _parent_key(prefix, limits)
        if key in self._parents:
            entry = self._parents[key]
            if entry is not None:
                self._last_used[key] = time.monotonic()
            return None if entry is None else (key, entry[1])
        if sum(1 for e in self._parents.values() if e is not None) >= MAX_PARENTS:
            idle = self._idle_parent()
            if idle is None:
                return None
            self._retire_parent(idle)
        assert self.pool_dir is not None
        parent = WarmParent(limits, self.pool_dir)
        self._parents[key] = None  # until it has run its cells
        try:
            request = {k: v for k, v in parent.request().items() if k != "argv"}
            reply = self._send({**request, "op": "parent", "parent": key}, 30.0)
            if not reply.get("ok"):
                raise PoolUnavailable(f"no warm parent: {reply.get('error', 'no answer')}")
            parent.attach()  # into its cgroup before it runs anything
            budget = min(RUN_TIMEOUT, limits.total_timeout)
            run_request: dict[str, object] = {
                "op": "run",
                "parent": key,
                "timeout": budget,
                "cells": list(prefix.cells),
                "probe": _PROBE,
                "settings": PROBE_SETTINGS,
            }
            reply = self._send(run_request, budget + 15.0)
            if not reply.get("ok"):
                raise PoolUnavailable(f"the warm parent failed: {reply.get('error', '')}")
            run = PrefixRun.from_reply(prefix, reply)
            if not run.records:
                raise PoolUnavailable("the warm parent ran none of the lab's cells")
        except (OSError, PoolUnavailable, ValueError, TypeError):
            parent.cleanup()
            if self.proc is not None and self.proc.poll() is None:
                with contextlib.suppress(OSError):
                    self._send({"op": "drop", "parent": key}, 10.0)
            return None
        self._parents[key] = (parent, run)
        self._last_used[key] = time.monotonic()
        return key, run

    def _idle_parent(self) -> str | None:
        """The live parent used least recently of those no kernel forked from it is running
        in (its kernels die with it), or None. A kernel started ahead of need from it has run
        nothing yet: it is dropped with its parent. Issue 22: the first prefixes asked for no
        longer keep every slot for the pool's life while a class mostly uses another.
        Called with the pool's lock held, so nothing is forked from a parent meanwhile."""
        live = [key for key, entry in self._parents.items() if entry is not None]
        for key in sorted(live, key=lambda k: self._last_used.get(k, 0.0)):
            kernels = [k for k in self._children.get(key, []) if k.alive()]
            self._children[key] = kernels
            with self._spare_lock:  # the spare is taken under this lock: decide in one go
                if any(k is not self._spare for k in kernels):
                    continue
                spare, self._spare = (self._spare, None) if kernels else (None, self._spare)
            if spare is not None:
                spare.cleanup()
            return key
        return None

    def _retire_parent(self, key: str) -> None:
        """Stop a parent to make room (not a failure: it is made again when asked for)."""
        entry = self._parents.pop(key, None)
        self._last_used.pop(key, None)
        self._children.pop(key, None)
        if entry is not None:
            entry[0].cleanup()
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self._send({"op": "drop", "parent": key}, 10.0)

    def _spawn_locked(self, limits: RunLimits, prefix: LabPrefix | None = None) -> ForkedKernel:
        self._start_locked(START_TIMEOUT)
        warm = self._parent_locked(limits, prefix) if prefix is not None else None
        if self.proc is None:
            raise PoolUnavailable("the zygote stopped answering")
        if warm is None:
            return self._fork_locked(limits, None)
        try:
            return self._fork_locked(limits, warm)
        except PoolUnavailable:
            self._forget_parent(warm[0])  # it is made again on the next ask (a few times)
            if self.proc is None:
                raise
            return self._fork_locked(limits, None)  # this one runs every cell

    def _fork_locked(self, limits: RunLimits, warm: tuple[str, PrefixRun] | None) -> ForkedKernel:
        """One kernel forked by the zygote, or by the warm parent `warm` names."""
        assert self.proc is not None and self.proc.stdin is not None and self.pool_dir
        kernel = ForkedKernel(limits, self.pool_dir)
        try:
            request = kernel.request()
            if warm is not None:
                request["parent"], kernel.parent_key, kernel.reused = warm[0], warm[0], warm[1]
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
            self.proc.stdin.flush()
            reply = self._readline(30.0)
            if not reply:  # no answer: the zygote is gone or wedged, and a late answer
                self._stop_locked()  # would be read as the next spawn's; start afresh
                raise PoolUnavailable("the zygote did not answer")
            if not reply.get("ok"):
                raise PoolUnavailable(f"spawn failed: {reply.get('error', 'no reply')}")
            kernel.attach()
            if warm is not None:  # kept while they run: the harness's memory stays bounded
                running = [k for k in self._children.get(warm[0], []) if k.alive()]
                self._children[warm[0]] = [*running, kernel]
        except (OSError, PoolUnavailable) as exc:
            kernel.cleanup()
            if self.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=1)  # a zygote that is going away
                if self.proc.poll() is not None:
                    self._stop_locked()
            raise PoolUnavailable(str(exc)) from exc
        return kernel

    def _forget_parent(self, key: str) -> None:
        """A parent that stopped serving (killed, out of CPU time): made anew when next asked
        for, up to MAX_REMAKES times; then that prefix runs in full for the pool's life."""
        entry = self._parents.pop(key, None)
        self._last_used.pop(key, None)
        self._children.pop(key, None)
        if entry is not None:
            entry[0].cleanup()
        self._remade[key] = self._remade.get(key, 0) + 1
        if self._remade[key] > MAX_REMAKES:
            self._parents[key] = None

    async def acquire(self, limits: RunLimits, cells: Sequence[str] = ()) -> ForkedKernel:
        """A started kernel of its own, forked from the warm zygote, or from the warm parent
        of the lab prefix `cells` (a notebook's non-empty code cells) begins with: then its
        `reused` says which of those cells it need not run, and what they recorded.

        The kernel started ahead of need is handed out when it was made for the same
        rlimits and prefix; then the next one is forked in the background, so a submission's
        kernel has usually finished booting before the submission asks for it.
        """
        prefix = match(cells) if cells else None
        kernel = self._take_spare(limits, prefix)
        if kernel is None:
            kernel = await asyncio.to_thread(self._spawn, limits, prefix)
        self._start_refill(limits, prefix)
        return kernel

    def _take_spare(self, limits: RunLimits, prefix: LabPrefix | None) -> ForkedKernel | None:
        with self._spare_lock:
            spare, self._spare = self._spare, None
        if spare is None:
            return None
        same_start = (spare.reused.prefix if spare.reused else None) == prefix
        if spare.alive() and same_start and _spawn_key(spare.limits) == _spawn_key(limits):
            spare.limits = limits  # same sandbox; the time budgets may differ
            return spare
        spare.cleanup()
        return None

    def _start_refill(self, limits: RunLimits, prefix: LabPrefix | None = None) -> None:
        with self._spare_lock:
            busy = self._refill is not None and self._refill.is_alive()
            if not self._keep_spare or self._closed or busy or self._spare is not None:
                return
            self._refill = threading.Thread(
                target=self._make_spare, args=(limits, prefix), daemon=True
            )
            self._refill.start()

    def _make_spare(self, limits: RunLimits, prefix: LabPrefix | None = None) -> None:
        kernel: ForkedKernel | None
        try:
            kernel = self._spawn(limits, prefix)
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
        parents, self._parents = self._parents, {}
        self._children.clear()
        self._last_used.clear()
        for entry in parents.values():  # they die with the zygote; their cgroups and uids here
            if entry is not None:
                entry[0].cleanup()
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
