"""The warm parent of pooled kernels: runs INSIDE the pool's bubblewrap sandbox, as its script.

`grader.execution.pool` starts this source with `python -c` under bwrap (read-only system, no
network, private /tmp holding only the pool dir, capabilities
CAP_SYS_ADMIN/SETUID/SETGID/SETPCAP kept for this trusted code). It imports torch, numpy,
matplotlib (Agg), IPython and ipykernel once, freezes the GC (fewer copy-on-write pages), prints
`{"ready": ...}` and then serves one JSON request per stdin line: spawn a kernel.

A spawn forks an intermediate process that unshares new mount, network, ipc, uts and pid
namespaces and forks a tiny init (pid 1 of the new pid namespace), which forks the kernel
(pid 2). Before any learner code runs, the kernel:
- makes its mounts private, mounts a fresh size-limited tmpfs over /tmp (hiding the pool dir
  and every sibling's work dir), binds back read-only whatever of Python lives under /tmp
  and, writable, only its own work dir, mounts a size-limited tmpfs as its home (cwd) in it
  and a /proc of its own pid ns;
- closes every inherited descriptor (the zygote's pipes included), sends stdio to its log;
- sets rlimits, rebuilds the environment from the allowlist it was sent, reseeds `random`
  and numpy's global RNG;
- drops the capability bounding set, clears groups, becomes its own leased uid/gid
  (which clears its capabilities), sets no_new_privs and installs the harness's seccomp
  filter (`grader.execution.seccomp`: no new user namespaces, no mount/bpf/keyring/io_uring calls);
then writes one byte to the ready pipe and becomes an ipykernel on the ipc connection file.

The zygote exits when its stdin closes (the harness went away); kernels die with it through
PR_SET_PDEATHSIG on both levels.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import random
import select
import signal
import sys
from typing import Any

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8
MS_RDONLY, MS_REMOUNT = 1, 32
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 1, 24, 38
PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2
READY_TIMEOUT = 20.0

libc = ctypes.CDLL(None, use_errno=True)


def check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def mount(source: str, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    check(
        libc.mount(
            source.encode(),
            target.encode(),
            fstype.encode() if fstype else None,
            ctypes.c_ulong(flags),
            data.encode() if data else None,
        ),
        f"mount {target}",
    )


def warm(modules: list[str]) -> None:
    """Import what every kernel needs, once."""
    import matplotlib

    matplotlib.use("Agg")
    for name in modules:
        __import__(name)
    gc.collect()
    gc.freeze()


def bind_back(fd: int, path: str, *, read_only: bool) -> None:
    """Mount what `fd` (opened before /tmp was replaced) at `path` again; closes `fd`."""
    if os.path.isdir(f"/proc/self/fd/{fd}"):
        os.makedirs(path, mode=0o755, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))
    mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC, None)
    if read_only:
        mount("none", path, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, None)
    os.close(fd)


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install_filter(program: bytes) -> None:
    """Load the harness's seccomp program (grader.execution.seccomp) for us and our children."""
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = SockFprog(len(program) // 8, ctypes.cast(buffer, ctypes.c_void_p))
    check(libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0), "seccomp")


def become_kernel(req: dict[str, Any], ready_fd: int) -> None:
    """In pid 2 of the new namespace: isolate, drop privileges, run ipykernel. Never returns."""
    workdir, uid = req["workdir"], int(req["uid"])
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "pdeathsig")
    mount("none", "/", None, MS_REC | MS_PRIVATE, None)
    # Held open across the new /tmp, which hides them: the work dir, and Python itself when
    # it lives under /tmp (a venv in a checkout there).
    kept = [(workdir, os.open(workdir, os.O_PATH), False)]
    kept += [(path, os.open(path, os.O_PATH), True) for path in req.get("ro_under_tmp", [])]
    size = f"size={int(req['disk_mb'])}m"
    mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"mode=1777,{size}")
    for path, fd, read_only in kept:
        bind_back(fd, path, read_only=read_only)
    home = os.path.join(workdir, "home")
    mount("tmpfs", home, "tmpfs", MS_NOSUID | MS_NODEV, f"mode=0700,uid={uid},gid={uid},{size}")
    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)
    libc.sethostname(b"mbgd", 4)

    null = os.open("/dev/null", os.O_RDWR)
    log = os.open(os.path.join(workdir, ".kernel.log"), os.O_WRONLY | os.O_APPEND)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.closerange(3, ready_fd)
    os.closerange(ready_fd + 1, 65536)

    import resource

    for name, value in req["rlimits"]:
        resource.setrlimit(getattr(resource, name), (value, value))
    os.environ.clear()
    os.environ.update(req["env"])
    os.chdir(home)
    random.seed()
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed()

    with open("/proc/sys/kernel/cap_last_cap") as fh:
        last_cap = int(fh.read())
    for cap in range(last_cap + 1):
        check(libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), "drop capability")
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    if req.get("seccomp"):
        install_filter(bytes.fromhex(req["seccomp"]))
    os.write(ready_fd, b"1")
    os.close(ready_fd)

    if sys.path and sys.path[0] == "":
        del sys.path[0]
    sys.argv = ["ipykernel", *req["argv"]]
    from ipykernel.kernelapp import launch_new_instance

    launch_new_instance()
    os._exit(0)


def namespace_init(req: dict[str, Any], ready_fd: int) -> None:
    """Pid 1 of the kernel's pid namespace: fork the kernel, reap, end with it. Never returns.

    The kernel must not be pid 1 itself: init ignores signals it has no handler for, so a
    learner's `os.kill(os.getpid(), SIGKILL)` would do nothing in a pooled kernel while it
    kills a fresh one. When this process exits, the kernel takes every process left in the
    namespace with it.
    """
    code = 70
    try:
        check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "pdeathsig")
        pid = os.fork()
        if pid == 0:
            try:
                become_kernel(req, ready_fd)
            except BaseException as exc:  # report to the kernel log if we got that far
                os.write(2, f"kernel setup failed: {exc!r}\n".encode())
            os._exit(71)
        os.close(ready_fd)
        null = os.open("/dev/null", os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.closerange(3, 65536)
        while True:
            try:
                done, status = os.wait()
            except ChildProcessError:
                break
            if done == pid:
                code = os.waitstatus_to_exitcode(status)
                break
    finally:
        os._exit(code if code >= 0 else 128 - code)


def intermediate(req: dict[str, Any], ready_fd: int) -> None:
    """Child of the zygote: new namespaces, fork the kernel, wait for it. Never returns."""
    code = 70
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "pdeathsig")
        os.setsid()
        flags = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWPID
        check(libc.unshare(flags), "unshare")
        pid = os.fork()
        if pid == 0:
            namespace_init(req, ready_fd)
        os.close(ready_fd)
        null = os.open("/dev/null", os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.closerange(3, 65536)
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
    finally:
        os._exit(code if code >= 0 else 128 - code)


def spawn(req: dict[str, Any]) -> dict[str, Any]:
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        intermediate(req, write_fd)
    os.close(write_fd)
    try:
        ready, _, _ = select.select([read_fd], [], [], READY_TIMEOUT)
        got = os.read(read_fd, 1) if ready else b""
    finally:
        os.close(read_fd)
    if got != b"1":
        return {"ok": False, "error": "the kernel did not come up (see its log)"}
    return {"ok": True}


def main() -> None:
    config = json.loads(sys.argv[1])
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped automatically
    warm(config["modules"])
    out = sys.stdout
    out.write(json.dumps({"ready": True, "pid": os.getpid()}) + "\n")
    out.flush()
    for line in sys.stdin:
        try:
            trusted = {key: config[key] for key in ("ro_under_tmp", "seccomp")}
            req = {**json.loads(line), **trusted}
            reply = spawn(req)
        except Exception as exc:  # a bad request must not take the zygote down
            reply = {"ok": False, "error": repr(exc)}
        out.write(json.dumps(reply) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
