"""How a learner's kernel is launched and limited, and how it is torn down.

One `SandboxedKernel` per submission: a fresh work dir (`/tmp/mbgd-XXXXXX`, short enough for
zmq ipc socket paths), a connection file using the ipc transport inside it, and the kernel
process started under bubblewrap when `bwrap` is available:

- new network, pid, ipc, uts (and cgroup) namespaces: no network at all, no view of other
  processes; `--die-with-parent` and `--new-session`;
- read-only `/usr`, Python prefix and venv; private tmpfs `/tmp`; the work dir is the only
  writable place and the only project path visible (the project sources are not bound);
- as root: a per-kernel unprivileged uid/gid leased from `UID_BASE..` (so one learner's
  RLIMIT_NPROC cannot starve a concurrent kernel), via `setpriv` with an empty bounding set
  and no_new_privs. Not root: an unprivileged user namespace instead;
- rlimits set by the launcher just before ipykernel starts: address space, processes, file
  size, CPU seconds, no core dumps;
- environment rebuilt from a small allowlist (never MBGD_* or anything else of ours).

Without bwrap the kernel runs with the same scrubbed environment and rlimits only (no
RLIMIT_NPROC, which would count the harness's own processes), and `describe()` says so;
`RunLimits.require_sandbox` turns that into `SandboxUnavailable`. The runner no longer starts
such a kernel: without bwrap it takes `grader.execution.portable` (issue 17), since a CUDA
build of torch cannot load under RLIMIT_AS.

Teardown does not ask the kernel to shut down: it SIGKILLs the process tree and every process
of the leased uid, then deletes the work dir.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil

from grader.errors import Unavailable
from grader.execution import cgroups, seccomp
from grader.execution.launch import (
    KERNEL_ARGS,
    LAUNCHER,
    bwrap_argv,
    connection_info,
    joining_cgroup,
    kernel_env,
    mpl_cache,
    rlimits,
)
from grader.execution.limits import RunLimits
from grader.execution.uids import UidLease, processes_of_uid, sweep_stale_workdirs

SANDBOXED = "bubblewrap"
log = logging.getLogger(__name__)


class SandboxUnavailable(Unavailable, RuntimeError):
    """bwrap is required (RunLimits.require_sandbox) but cannot be used on this machine."""


def find_bwrap() -> str | None:
    """Path of a usable bwrap, or None. Tests monkeypatch this to exercise the fallback."""
    path = shutil.which("bwrap")
    return path if path and bwrap_runs(path) else None


@functools.cache
def bwrap_runs(path: str) -> bool:
    """Can this bwrap make a kernel's namespaces and size-limited tmpfs here? In a container
    without the privilege to (Docker's defaults, as on course platforms) it is installed but
    every kernel would die at its start: then the kernel runs as without bwrap, and says so."""
    argv = [path, "--unshare-all", "--die-with-parent", "--ro-bind", "/", "/"]
    argv += ["--perms", "1777", "--size", str(1 << 20), "--tmpfs", "/tmp"]
    if os.geteuid() != 0:
        argv += ["--unshare-user"]
    try:
        done = subprocess.run([*argv, "true"], capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError) as error:
        log.warning("bwrap at %s cannot be started (%s): kernels run without it", path, error)
        return False
    if done.returncode != 0:
        why = done.stderr.decode("utf-8", "replace").strip()[-300:]
        log.warning("bwrap at %s cannot sandbox here (%s): kernels run without it", path, why)
    return done.returncode == 0


def describe(bwrap: str | None, cgroup: str = "", seccomp_problem: str = "") -> str:
    """The Execution.sandbox text: bwrap or not, then what else is (not) in force.

    `cgroup` is `KernelCgroup`'s text ("cgroup v1", or "no cgroup: why"); `seccomp_problem`
    is empty when the filter is in force.
    """
    if not bwrap:
        return "rlimits-only (bwrap not found)"
    parts = [SANDBOXED, cgroup if cgroup.startswith("cgroup") else ""]
    parts.append("" if seccomp_problem else "seccomp")
    missing = [text for text in (cgroup, seccomp_problem) if text and not text.startswith("cgroup")]
    text = " + ".join(part for part in parts if part)
    return f"{text} ({'; '.join(missing)})" if missing else text


def isolation_gaps(bwrap: str | None) -> list[str]:
    """What of the full sandbox this machine cannot give a kernel (empty: all of it)."""
    if not bwrap:
        return ["bwrap (bubblewrap) was not found on PATH; install the 'bubblewrap' package"]
    gaps = []
    found = cgroups.locate()
    if isinstance(found, str):
        gaps.append(f"no per-kernel cgroup ({found})")
    problem = seccomp.describe()
    if problem:
        gaps.append(problem)
    return gaps


class SandboxedKernel:
    """One kernel process for one submission, in its own work dir; used once, then killed."""

    origin = "fresh"

    def __init__(self, limits: RunLimits) -> None:
        self.limits = limits
        self.bwrap = find_bwrap()
        gaps = isolation_gaps(self.bwrap)
        if limits.require_sandbox and gaps:
            raise SandboxUnavailable(
                "the full sandbox is required but " + "; ".join(gaps) + " (or run without "
                "--require-sandbox)"
            )
        self.sandbox = describe(self.bwrap)
        self.lease = UidLease() if self.bwrap and os.geteuid() == 0 else None
        self.uid = self.lease.uid if self.lease else None
        if self.uid is not None:
            sweep_stale_workdirs()
        self.workdir = self._new_workdir()
        self.connection = connection_info(self.workdir)
        self.proc: subprocess.Popen[bytes] | None = None
        self.cgroup: cgroups.KernelCgroup | None = None
        self.filtered = False  # the seccomp filter is installed
        self.killed_by_us = False
        self.peak_rss_mb = 0
        self._kernel_proc: psutil.Process | None = None
        self._log_fd = -1

    def _isolate(self) -> None:
        """Make the kernel's own cgroup (memory incl. shmem and tmpfs, processes) and decide
        on the seccomp filter, where the machine allows; `sandbox` then says what is in force."""
        self.cgroup, text = cgroups.new_kernel_cgroup(
            self.limits.memory_mb, self.limits.max_processes
        )
        problem = seccomp.describe() if self.bwrap else ""
        self.filtered = bool(self.bwrap) and not problem
        self.sandbox = describe(self.bwrap, text, problem)

    def _new_workdir(self) -> Path:
        prefix = f"mbgd-{self.uid}-" if self.uid is not None else "mbgd-"
        return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))

    def _prepare_workdir(self) -> None:
        """Font cache, connection file, ownership, and the log file we keep open."""
        work = self.workdir
        mpl = work / ".mpl"
        mpl.mkdir()
        cache = mpl_cache()
        if cache is not None:
            for item in cache.glob("fontlist-*.json"):
                shutil.copy(item, mpl / item.name)
        (work / "home").mkdir()
        conn = work / "kernel.json"
        conn.write_text(json.dumps(self.connection))
        conn.chmod(0o644)
        if self.uid is not None:
            for path in (work, work / "home", mpl, *mpl.iterdir()):
                os.chown(path, self.uid, self.uid)
        work.chmod(0o700)
        # stderr goes to a file we keep open: read back through our fd, never by path.
        self._log_fd = os.open(work / ".kernel.log", os.O_CREAT | os.O_RDWR | os.O_TRUNC, 0o600)

    def _argv(self) -> list[str]:
        work = self.workdir
        conn = work / "kernel.json"
        env = kernel_env(work)
        limits = rlimits(self.limits, with_nproc=self.uid is not None)
        inner = [sys.executable, "-c", LAUNCHER, json.dumps(limits), "-f", str(conn)]
        inner += KERNEL_ARGS
        if self.bwrap:
            argv = bwrap_argv(self.bwrap, work, env, uid=self.uid, disk_mb=self.limits.disk_mb)
            return [*argv, *inner]
        return inner

    def start(self) -> None:
        """Launch the kernel process (returns at once; readiness is the client's job).

        With a cgroup, a shell joins it and then execs the launch, so bwrap and everything
        below it are counted from their first instruction.
        """
        self._prepare_workdir()
        self._isolate()
        argv = self._argv()
        env = None if self.bwrap else kernel_env(self.workdir)
        pass_fds: tuple[int, ...] = ()
        if self.filtered:
            filter_fd = seccomp.program_fd()
            pass_fds = (filter_fd,)
            argv[1:1] = ["--seccomp", str(filter_fd)]
        if self.cgroup is not None:
            argv = joining_cgroup(self.cgroup, argv)
        try:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=self._log_fd,
                stderr=self._log_fd,
                env=env if env is not None else {"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                cwd=self.workdir / "home",
                start_new_session=True,
                close_fds=True,
                pass_fds=pass_fds,
            )
        finally:
            for fd in pass_fds:
                os.close(fd)

    def seal(self) -> None:
        """Once the kernel has bound its sockets and imported pyplot: take the work dir back.

        From then on the kernel can write only to its size-limited home and /tmp, not to the
        host work dir (sockets, connection file, log, font cache), so it cannot fill the disk.
        Needs a uid of its own (root); rlimits-only and user-namespace kernels keep the dir.
        """
        if self.uid is None:
            return
        mpl = self.workdir / ".mpl"
        for path in (self.workdir, mpl, *mpl.iterdir()):
            os.chown(path, 0, 0, follow_symlinks=False)
        self.workdir.chmod(0o711)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def wait_exit(self) -> None:
        """Resolve when the kernel process has exited; meanwhile sample its peak RSS."""
        while self.alive():
            self._sample_memory()
            await asyncio.sleep(0.05)

    def _sample_memory(self) -> None:
        """Track the kernel's peak resident memory (VmHWM), to tell an OOM kill from a crash."""
        if self._kernel_proc is None and self.proc is not None:
            with contextlib.suppress(psutil.Error):
                tree = [psutil.Process(self.proc.pid)]
                tree += tree[0].children(recursive=True)
                self._kernel_proc = tree[-1]
        if self._kernel_proc is not None:
            with contextlib.suppress(OSError, ValueError):
                status = Path(f"/proc/{self._kernel_proc.pid}/status").read_text()
                for line in status.splitlines():
                    if line.startswith("VmHWM:"):
                        self.peak_rss_mb = max(self.peak_rss_mb, int(line.split()[1]) >> 10)

    def looks_out_of_memory(self) -> bool:
        """After a death: was it a memory kill? The cgroup's OOM record says so for certain;
        without one, a SIGKILL from outside near the memory cap is taken as one."""
        if self.cgroup is not None and self.cgroup.oom_kills() > 0:
            return True
        tail = self.log_tail(2000)
        if any(s in tail for s in ("bad_alloc", "Cannot allocate memory", "MemoryError")):
            return True
        near_cap = self.peak_rss_mb >= 0.8 * self.limits.memory_mb
        return self.exit_signal() == signal.SIGKILL and not self.killed_by_us and near_cap

    def exit_signal(self) -> int | None:
        """The signal that ended the kernel, if it was killed by one."""
        if self.proc is None or self.proc.returncode is None:
            return None
        code = self.proc.returncode
        if code < 0:
            return -code
        if self.bwrap and code > 128:  # bwrap reports 128 + signal of its child
            return code - 128
        return None

    def log_tail(self, limit: int = 4000) -> str:
        """The last bytes the kernel wrote to stdout/stderr (read via our own fd)."""
        if self._log_fd < 0:
            return ""
        try:
            size = os.fstat(self._log_fd).st_size
            os.lseek(self._log_fd, max(0, size - limit), os.SEEK_SET)
            return os.read(self._log_fd, limit).decode("utf-8", "replace")
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL the kernel's whole tree and everything running as its uid. Idempotent.

        With a cgroup, everything in it is killed (nothing can leave it). Otherwise, under
        bwrap the victim is the pid namespace's init (the outer bwrap's child): the kernel
        then kills and reaps everything inside the namespace, the outer bwrap exits and we
        reap it, so nothing is left as an orphan or zombie.
        """
        if self.cgroup is not None:
            if self.alive():
                self.killed_by_us = True
            self.cgroup.kill()
        if self.proc is not None and self.proc.poll() is None:
            self.killed_by_us = True
            with contextlib.suppress(psutil.Error):
                root = psutil.Process(self.proc.pid)
                inner = root.children() if self.bwrap else root.children(recursive=True)
                for proc in inner:
                    with contextlib.suppress(psutil.Error):
                        proc.send_signal(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=1)  # bwrap exits by itself once its child is gone
            if self.proc.poll() is None:
                self.proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=5)
        if self.uid is not None and self.cgroup is None:
            for proc in processes_of_uid(self.uid):  # anything that escaped the tree
                with contextlib.suppress(psutil.Error):
                    proc.send_signal(signal.SIGKILL)

    def cleanup(self) -> None:
        """Kill, delete the work dir and the cgroup, release the uid."""
        self.kill()
        if self.cgroup is not None:
            self.cgroup.remove()
            self.cgroup = None
        if self._log_fd >= 0:
            os.close(self._log_fd)
            self._log_fd = -1
        shutil.rmtree(self.workdir, ignore_errors=True)
        if self.lease is not None:
            self.lease.release()
