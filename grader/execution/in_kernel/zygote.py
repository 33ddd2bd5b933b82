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

Warm parents (issue 16). `{"op": "parent"}` forks a parent that will run the first cells of a
known version of the lab: the copy in the first submission whose code cells hash (sha256) to
a version the harness knows (`grader.execution.prefix`), so the lab's own code byte for byte
and nothing of a learner's (a cell with one byte changed does not match and runs in the
learner's own kernel). It leaves the zygote's session, takes the
kernel's rlimits and environment, works in its own dir, and becomes its own leased uid for
real and effective (the harness puts it in a cgroup of its own): it runs the lab with no
effective capabilities. Only its saved uid stays 0, so that the kernels it forks can take back
the zygote's capabilities to build their sandbox exactly as above; no learner code ever runs
in it. It has no seccomp filter, since its kernels still have to mount their own /tmp.
`{"op": "run"}` makes it run the cells in an IPython shell with the probe installed (records
captured, not sent), the cell files named as in a pooled kernel (`/tmp/ipykernel_2/...`), and
torch on one intra-op thread (as every pooled kernel is: nothing of a thread pool is forked);
then the probe is taken out again. A spawn request naming the parent is served by it: the
kernel is forked from the state after the lab's cells, isolates itself as any kernel does and
starts ipykernel on that shell's namespace and history. The parent reseeds nothing of torch:
its generator state is the lab's after those cells, as in a full run.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import random
import select
import signal
import sys
import types
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
RUN_TIMEOUT = 600.0  # a parent running the lab's cells
KERNEL_PID = 2  # a pooled kernel's pid in its own namespace (its cell files are named by it)
MAX_REPLY = 256 << 20

PARENTS: dict[str, tuple[int, int, int]] = {}  # in the zygote: key -> pid, request fd, reply fd
PREFIX: dict[str, Any] = {}  # in a parent: the shell that ran the lab's cells
# IPython's running names of a shell, carried from the parent's shell to its kernels' shells
INPUT_NAMES = ("_i00", "_i", "_ii", "_iii")  # the history manager's
OUTPUT_NAMES = ("_", "__", "___")  # the display hook's

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


def reseed() -> None:
    """Fresh `random` and numpy generators, as a process that imported them itself has: what
    the zygote drew once must not be shared by every kernel forked from it. torch's generator
    needs nothing: it starts from a fixed seed in every process."""
    random.seed()
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed()


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
    if "shell" in PREFIX:  # a warm parent's kernel goes on from the lab's RNG state
        # `random`: every fork on the way reseeded it (it asks os.fork to), and ipykernel's
        # banner draws a tip from it: the probe's `prime` sets the lab's state back last
        lab = types.ModuleType("_mbgd_lab")
        lab.random_state = PREFIX["random"]  # type: ignore[attr-defined]
        sys.modules["_mbgd_lab"] = lab
    else:
        reseed()

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
    if "shell" in PREFIX:
        launch_on_prefix(PREFIX["shell"])
    else:
        from ipykernel.kernelapp import launch_new_instance

        launch_new_instance()
    os._exit(0)


def launch_on_prefix(old: Any) -> None:
    """Start ipykernel on the namespace and history of the shell that ran the lab's cells.

    A new kernel shell is built (the old one is the parent's plain IPython shell) around the
    same namespace dict, so every function and class the lab defined keeps its globals; the
    history and the cell files' numbers are carried over, so `In`, `Out`, the execution count
    and tracebacks through the lab's functions are what a full run has."""
    from ipykernel.kernelapp import IPKernelApp
    from IPython.core.interactiveshell import InteractiveShell

    history = old.history_manager
    count = old.execution_count
    ns = old.user_ns
    hidden = dict(old.user_ns_hidden)  # what %who leaves out: IPython's names, not the lab's
    shown = [name for name in ns if name not in hidden and name not in PREFIX["before"]]
    outputs = {name: ns.get(name, "") for name in OUTPUT_NAMES}
    InteractiveShell.clear_instance()
    app = IPKernelApp.instance(user_ns=ns)
    app.initialize()  # a new shell resets `_`.., `_i`.. and hides every name already in ns
    shell = app.shell
    assert shell is not None
    new = shell.history_manager
    assert new is not None
    new.input_hist_parsed[:] = history.input_hist_parsed
    new.input_hist_raw[:] = history.input_hist_raw
    new.output_hist.update(history.output_hist)
    for name in INPUT_NAMES:  # the next cell's `_i`, `_ii`, `_iii` follow on from these
        setattr(new, name, getattr(history, name))
    for name in OUTPUT_NAMES:  # and its `_`, `__`, `___` from these
        setattr(shell.displayhook, name, getattr(old.displayhook, name))
    ns.update(outputs)
    for name in shown:
        shell.user_ns_hidden.pop(name, None)
    for name, value in hidden.items():  # the display hook tells `_` set by the learner
        if ns.get(name) is value or name not in shell.user_ns_hidden:  # by identity here
            shell.user_ns_hidden[name] = value
    shell.execution_count = count
    # which cell file is "Cell In[n]" in a traceback through a function the lab defined
    shell.compile._filename_map.update(old.compile._filename_map)
    app.start()


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
        if os.geteuid() != 0:  # forked by a warm parent: take the zygote's capabilities back
            os.setresgid(0, 0, 0)
            os.setresuid(0, 0, 0)
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


def read_line(fd: int, timeout: float | None) -> bytes:
    """One reply line from a pipe, within `timeout` (TimeoutError) and MAX_REPLY bytes."""
    import time

    deadline = None if timeout is None else time.monotonic() + timeout
    buf = bytearray()
    while not buf.endswith(b"\n"):
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            raise TimeoutError("no answer in time")
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            raise TimeoutError("no answer in time")
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            raise EOFError("the other end went away")
        buf += chunk
        if len(buf) > MAX_REPLY:
            raise ValueError("answer too long")
    return bytes(buf)


def write_line(fd: int, payload: dict[str, Any]) -> None:
    data = memoryview((json.dumps(payload) + "\n").encode())
    while data:
        data = data[os.write(fd, data) :]


def start_parent(req: dict[str, Any]) -> dict[str, Any]:
    """Fork a warm parent for `req["parent"]` (see the module docstring); wait until it is set
    up (the harness then moves it into its cgroup and asks it to run the lab's cells)."""
    key = str(req["parent"])
    drop_parent(key)
    requests_r, requests_w = os.pipe()
    replies_r, replies_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(requests_w)
        os.close(replies_r)
        try:
            prefix_parent(req, requests_r, replies_w)
        finally:
            os._exit(70)
    os.close(requests_r)
    os.close(replies_w)
    PARENTS[key] = (pid, requests_w, replies_r)
    return ask_parent(key, None, READY_TIMEOUT)


def ask_parent(key: str, req: dict[str, Any] | None, timeout: float) -> dict[str, Any]:
    """Send one request to a parent (None: only read) and return its answer; a parent that
    does not answer in time is dropped."""
    if key not in PARENTS:
        return {"ok": False, "error": "no such warm parent"}
    _, requests_w, replies_r = PARENTS[key]
    try:
        if req is not None:
            write_line(requests_w, req)
        reply = json.loads(read_line(replies_r, timeout))
    except (OSError, EOFError, TimeoutError, ValueError) as exc:
        drop_parent(key)
        return {"ok": False, "error": f"the warm parent failed: {exc!r}"}
    return reply if isinstance(reply, dict) else {"ok": False, "error": "bad answer"}


def drop_parent(key: str) -> dict[str, Any]:
    entry = PARENTS.pop(key, None)
    if entry is not None:
        pid, requests_w, replies_r = entry
        os.close(requests_w)
        os.close(replies_r)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return {"ok": True}


def prefix_parent(req: dict[str, Any], requests: int, replies: int) -> None:
    """A warm parent: set up, then serve run and spawn requests until its pipe closes."""
    os.setsid()
    workdir, uid = req["workdir"], int(req["uid"])
    null = os.open("/dev/null", os.O_RDWR)
    log = os.open(os.path.join(workdir, ".kernel.log"), os.O_WRONLY | os.O_APPEND)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    keep = sorted((requests, replies))
    os.closerange(3, keep[0])
    os.closerange(keep[0] + 1, keep[1])
    os.closerange(keep[1] + 1, 65536)
    import resource

    for name, value in req["rlimits"]:
        resource.setrlimit(getattr(resource, name), (value, value))
    os.environ.clear()
    os.environ.update(req["env"])
    os.chdir(os.path.join(workdir, "home"))
    reseed()  # the lab's cells start from fresh generators; its kernels then keep their state
    os.setgroups([])
    os.setresgid(uid, uid, 0)
    os.setresuid(uid, uid, 0)  # no effective capabilities from here on (see the docstring)
    # after the uid change, which clears it: the parent dies with the zygote
    check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "pdeathsig")
    check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    write_line(replies, {"ok": True})
    while True:
        try:
            line = read_line(requests, None)
        except (EOFError, OSError, ValueError):
            os._exit(0)
        try:
            request = json.loads(line)
            reply = run_prefix(request) if request.get("op") == "run" else spawn(request)
        except Exception as exc:  # a bad request must not take the parent down
            reply = {"ok": False, "error": repr(exc)}
        write_line(replies, reply)


def run_prefix(req: dict[str, Any]) -> dict[str, Any]:
    """Run the lab's cells in a shell of our own with the probe installed; keep the shell."""
    if "shell" in PREFIX:
        return {"ok": False, "error": "this parent already ran its cells"}
    import builtins
    import tempfile
    import time

    import ipykernel.compiler as compiler
    import matplotlib.axes
    import matplotlib.pyplot as plt
    import torch
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    if torch.get_num_threads() != 1:
        return {"ok": False, "error": "torch would use more than one intra-op thread"}
    config = Config()
    config.HistoryManager.enabled = False
    config.InteractiveShell.xmode = "Plain"
    config.InteractiveShell.colors = "nocolor"
    shell = InteractiveShell.instance(config=config, compiler_class=compiler.XCachingCompiler)
    PREFIX["before"] = set(shell.user_ns)  # a new shell's own names, not the lab's
    records: list[str] = []
    mime = "application/x-mbgd-parent+json"

    def capture(data: dict[str, Any], metadata: Any = None, **kw: Any) -> None:
        if isinstance(data, dict) and isinstance(data.get(mime), str):
            records.append(data[mime])

    shell.display_pub.publish = capture  # type: ignore[method-assign,assignment]
    ns: dict[str, Any] = {
        "__name__": "_mbgd_probe_src",
        "get_ipython": shell.get_ipython,
        "__builtins__": dict(vars(builtins)),
    }
    exec(compile(req["probe"], "<mbgd-probe>", "exec"), ns)
    axes = matplotlib.axes.Axes
    methods = {name: vars(axes).get(name) for name in ns["PLOT_METHODS"]}
    show = plt.show
    ns["install"](mime, None, req["settings"])
    tmp_directory = compiler.get_tmp_directory
    cell_dir = os.path.join(tempfile.gettempdir(), f"ipykernel_{KERNEL_PID}")
    compiler.get_tmp_directory = lambda: cell_dir
    cells = []
    try:
        for source in req["cells"]:
            records.clear()
            started = time.monotonic()
            result = shell.run_cell(source, store_history=True)
            seconds = round(time.monotonic() - started, 4)
            if not result.success:
                break
            cells.append({"seconds": seconds, "records": list(records)})
    finally:
        compiler.get_tmp_directory = tmp_directory
        probe = sys.modules.pop("_mbgd_probe")
        state = probe.snapshot()
        shell.events.unregister("post_run_cell", probe.flush)
        for name, method in methods.items():
            if method is None:
                if name in vars(axes):
                    delattr(axes, name)
            else:
                setattr(axes, name, method)
        plt.show = show
    PREFIX["shell"] = shell
    PREFIX["random"] = random.getstate()  # every fork reseeds `random` in the child
    return {"ok": True, "cells": cells, "probe": state}


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
            op, parent = req.get("op", "spawn"), req.get("parent")
            if op == "parent":
                reply = start_parent(req)
            elif op == "drop":
                reply = drop_parent(str(parent))
            elif op == "run":
                budget = min(float(req.get("timeout", RUN_TIMEOUT)), RUN_TIMEOUT)
                reply = ask_parent(str(parent), req, budget)
            elif parent is not None:
                reply = ask_parent(str(parent), req, READY_TIMEOUT + 5)
            else:
                reply = spawn(req)
        except Exception as exc:  # a bad request must not take the zygote down
            reply = {"ok": False, "error": repr(exc)}
        out.write(json.dumps(reply) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
