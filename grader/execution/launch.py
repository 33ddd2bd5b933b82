"""The command that starts a fresh kernel: bubblewrap options, rlimits, environment, connection.

`bwrap_argv` also starts the warm pool's zygote (grader.execution.pool), so what a kernel can
see is the same on both paths; `joining_cgroup` puts a launch in the kernel's cgroup before
its first instruction.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from grader.execution import cgroups, kernel_view
from grader.execution.limits import RunLimits


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
