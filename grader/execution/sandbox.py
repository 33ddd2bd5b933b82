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
`RunLimits.require_sandbox` turns that into `SandboxUnavailable`.

Teardown does not ask the kernel to shut down: it SIGKILLs the process tree and every process
of the leased uid, then deletes the work dir.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import psutil
from pydantic import BaseModel

from grader.errors import Unavailable
from grader.execution import cgroups, kernel_view, seccomp
from grader.execution.uids import UidLease, processes_of_uid, sweep_stale_workdirs

SANDBOXED = "bubblewrap"


class RunLimits(BaseModel):
    """Budgets for one notebook run; JSON-serialisable so it can travel to Celery workers."""

    cell_timeout: float = 60.0  # seconds per cell
    total_timeout: float = 240.0  # seconds for the whole notebook
    memory_mb: int = 2048  # RLIMIT_AS for the kernel
    max_processes: int = 256
    max_file_mb: int = 64
    max_open_files: int = 512
    cpu_seconds: int = 300
    disk_mb: int = 256  # size of the kernel's home (its cwd) and of its /tmp, each
    require_sandbox: bool = False  # no bwrap -> SandboxUnavailable instead of running


class SandboxUnavailable(Unavailable, RuntimeError):
    """bwrap is required (RunLimits.require_sandbox) but cannot be used on this machine."""


def find_bwrap() -> str | None:
    """Path of a usable bwrap, or None. Tests monkeypatch this to exercise the fallback."""
    return shutil.which("bwrap")


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


def rlimits(limits: RunLimits, *, with_nproc: bool) -> list[tuple[str, int]]:
    """(resource name, value) pairs the launcher sets as both soft and hard limit."""
    pairs = [
        ("RLIMIT_AS", limits.memory_mb << 20),
        ("RLIMIT_FSIZE", limits.max_file_mb << 20),
        ("RLIMIT_CPU", int(limits.cpu_seconds)),
        ("RLIMIT_CORE", 0),
        ("RLIMIT_NOFILE", int(limits.max_open_files)),
    ]
    if with_nproc:
        pairs.append(("RLIMIT_NPROC", int(limits.max_processes)))
    return pairs


# Runs as the kernel's first Python code: set rlimits, then become ipykernel.
LAUNCHER = (
    "import json, resource, sys\n"
    "for name, value in json.loads(sys.argv[1]):\n"
    "    resource.setrlimit(getattr(resource, name), (value, value))\n"
    "sys.argv = ['ipykernel'] + sys.argv[2:]\n"
    "if sys.path and sys.path[0] == '': del sys.path[0]\n"
    "from ipykernel.kernelapp import launch_new_instance\n"
    "launch_new_instance()\n"
)

KERNEL_ARGS = [
    "--HistoryManager.enabled=False",
    "--InteractiveShell.xmode=Plain",
    "--InteractiveShell.colors=nocolor",
    "--IPKernelApp.quiet=True",
    "--IPKernelApp.capture_fd_output=False",  # no fd-watching threads; we keep no output
]


def kernel_env(workdir: Path) -> dict[str, str]:
    """The kernel's whole environment: an allowlist, nothing inherited from the harness."""
    return {
        "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(workdir / "home"),
        "USER": "learner",
        "LOGNAME": "learner",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TMPDIR": "/tmp",
        "MPLBACKEND": "Agg",
        "MPLCONFIGDIR": str(workdir / ".mpl"),
        "IPYTHONDIR": str(workdir / "home" / ".ipython"),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",
    }


def connection_info(workdir: Path) -> dict[str, object]:
    """ipc-transport connection info: socket files `<workdir>/k-1..5`, a fresh HMAC key."""
    return {
        "transport": "ipc",
        "ip": str(workdir / "k"),
        "shell_port": 1,
        "iopub_port": 2,
        "stdin_port": 3,
        "control_port": 4,
        "hb_port": 5,
        "key": secrets.token_hex(32),
        "signature_scheme": "hmac-sha256",
        "kernel_name": "",
    }


def ro_binds() -> list[str]:
    """Host paths the kernel needs read-only (besides /usr): Python, the venv, the site dirs
    that `.pth` files add to `sys.path` (`kernel_view.pth_site_dirs`: never the cwd or a source
    checkout), a few /etc bits. What of the grader lies in them is hidden (`bwrap_argv`)."""
    paths = {sys.base_prefix, sys.prefix, os.path.realpath(sys.base_prefix)}
    paths |= set(kernel_view.pth_site_dirs())
    paths |= {p for p in ("/etc/ld.so.cache", "/etc/fonts", "/etc/localtime") if os.path.exists(p)}
    return sorted(p for p in paths if not p.startswith("/usr/") and p != "/usr")


def bwrap_argv(
    bwrap: str,
    workdir: Path,
    env: dict[str, str],
    *,
    uid: int | None,
    disk_mb: int | None,
    caps: tuple[str, ...] = ("CAP_SETUID", "CAP_SETGID"),
    die_with_parent: bool = True,
) -> list[str]:
    """bubblewrap options (and setpriv to `uid` when given) up to the command it runs.

    As root, `caps` are kept for the command (setpriv needs SETUID/SETGID); not as root, an
    unprivileged user namespace is used instead and `uid` must be None. With `disk_mb`,
    /tmp and `<workdir>/home` (the kernel's cwd) are tmpfs of that size.
    """
    argv = [bwrap, "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts"]
    argv += ["--unshare-cgroup-try", "--new-session", "--hostname", "mbgd"]
    if die_with_parent:
        argv += ["--die-with-parent"]
    if os.geteuid() != 0:
        argv += ["--unshare-user"]
    else:
        for cap in caps:
            argv += ["--cap-add", cap]
    argv += ["--ro-bind", "/usr", "/usr", "--proc", "/proc", "--dev", "/dev"]
    for name in ("lib", "lib64", "bin", "sbin"):
        if os.path.islink(f"/{name}"):
            argv += ["--symlink", os.readlink(f"/{name}"), f"/{name}"]
        elif os.path.isdir(f"/{name}"):
            argv += ["--ro-bind", f"/{name}", f"/{name}"]
    size = ["--size", str(disk_mb << 20)] if disk_mb else []
    argv += ["--perms", "1777", *size, "--tmpfs", "/tmp"]
    made = {"/", "/tmp", "/usr", "/proc", "/dev"}
    binds = ro_binds()
    for path in [*binds, str(workdir)]:
        parents = list(Path(path).parents)[::-1][1:]  # bwrap would create these 0700
        for parent in map(str, parents):
            if parent not in made:
                made.add(parent)
                argv += ["--perms", "0755", "--dir", parent]
        bind = "--bind" if path == str(workdir) else "--ro-bind"
        argv += [bind, path, path]
        made.add(path)
    # the grader's own packages, rubric, sources and install record, wherever the binds
    # show them: behind empty read-only mounts (issue 12; forked kernels inherit these)
    argv += kernel_view.mask_argv(binds)
    home = workdir / "home" if disk_mb else workdir
    if disk_mb:
        argv += ["--perms", "0777", *size, "--tmpfs", str(home)]
    argv += ["--clearenv", "--chdir", str(home)]
    for key, value in env.items():
        argv += ["--setenv", key, value]
    if uid is not None:
        argv += [shutil.which("setpriv") or "/usr/bin/setpriv", f"--reuid={uid}", f"--regid={uid}"]
        argv += ["--clear-groups", "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs"]
    return argv


def joining_cgroup(cgroup: cgroups.KernelCgroup, argv: list[str]) -> list[str]:
    """`argv` behind a shell that first moves itself into the cgroup, then execs it."""
    files = [str(path) for path in cgroup.procs_files]
    join = " && ".join(f'echo $$ > "${i + 1}"' for i in range(len(files)))
    return ["/bin/sh", "-c", f'{join} && shift {len(files)} && exec "$@"', "sh", *files, *argv]


_mpl_lock = threading.Lock()


def mpl_cache() -> Path | None:
    """A matplotlib font cache built once per machine, copied into each work dir.

    Without it every fresh kernel rebuilds the font list (~1 s) on its first pyplot import.
    """
    with _mpl_lock:
        try:
            import matplotlib

            target = Path(tempfile.gettempdir()) / f"mbgd-mplcache-{matplotlib.__version__}"
            if not any(target.glob("fontlist-*.json")):
                tmp = Path(tempfile.mkdtemp(prefix="mbgd-mplbuild-"))
                subprocess.run(
                    [sys.executable, "-c", "import matplotlib.font_manager"],
                    env={**kernel_env(tmp), "MPLCONFIGDIR": str(tmp)},
                    timeout=120,
                    check=True,
                    capture_output=True,
                )
                with contextlib.suppress(OSError):
                    os.replace(tmp, target)
                shutil.rmtree(tmp, ignore_errors=True)
            return target if any(target.glob("fontlist-*.json")) else None
        except (OSError, subprocess.SubprocessError, ImportError):
            return None


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
