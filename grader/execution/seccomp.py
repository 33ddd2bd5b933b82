"""The system-call filter every sandboxed kernel runs under: no new user namespaces, and no
kernel interfaces this lab never needs.

Inside its namespaces a kernel has no capabilities, but `unshare(CLONE_NEWUSER | CLONE_NEWNS)`
gives them back inside a new user namespace, where it could mount a tmpfs of any size or
reach kernel code that is otherwise out of bounds. The filter refuses that (`unshare`/`clone`
with CLONE_NEWUSER, `setns`) with EPERM; `clone3` answers ENOSYS, since its flags cannot be
inspected by seccomp, and glibc then falls back to `clone`, as it does under Docker's filter.
Mount and module syscalls, keyrings, bpf, perf events, userfaultfd and io_uring (the usual
entry points of kernel exploits) are refused as well.

The program is built once by the harness with libseccomp (through `pyseccomp`) and installed
in both launch paths: bwrap's `--seccomp FD` for a fresh kernel, and `prctl(PR_SET_SECCOMP)`
by the zygote's kernel child just before it becomes ipykernel
(grader/execution/in_kernel/zygote.py).
"""

from __future__ import annotations

import errno
import functools
import os
import tempfile

from grader.errors import Unavailable

CLONE_NEWUSER = 0x10000000

DENIED = (
    "setns",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "fsopen",
    "fsmount",
    "fsconfig",
    "fspick",
    "move_mount",
    "open_tree",
    "mount_setattr",
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
    "keyctl",
    "add_key",
    "request_key",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "open_by_handle_at",
    "name_to_handle_at",
    "swapon",
    "swapoff",
    "reboot",
    "acct",
    "quotactl",
)


class SeccompUnavailable(Unavailable, RuntimeError):
    """libseccomp (or its Python binding) is missing: kernels run without the filter."""


@functools.cache
def program() -> bytes:
    """The BPF program (struct sock_filter[]), as bwrap's --seccomp and prctl take it."""
    if os.environ.get("MBGD_SECCOMP", "1") == "0":
        raise SeccompUnavailable("turned off (MBGD_SECCOMP=0)")
    try:
        import pyseccomp as sc
    except (ImportError, OSError) as exc:  # the binding, or libseccomp.so itself
        raise SeccompUnavailable(f"libseccomp is not available: {exc}") from exc
    rules = sc.SyscallFilter(defaction=sc.ALLOW)
    newuser = sc.Arg(0, sc.MASKED_EQ, CLONE_NEWUSER, CLONE_NEWUSER)
    rules.add_rule(sc.ERRNO(errno.EPERM), "unshare", newuser)
    rules.add_rule(sc.ERRNO(errno.EPERM), "clone", newuser)
    rules.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    for name in DENIED:
        try:
            rules.add_rule(sc.ERRNO(errno.EPERM), name)
        except (OSError, ValueError, RuntimeError):
            continue  # not a syscall on this architecture
    with tempfile.TemporaryFile() as out:
        rules.export_bpf(out)
        out.seek(0)
        return out.read()


def describe() -> str:
    """What results say about the filter: empty when it is in force."""
    try:
        program()
    except SeccompUnavailable as exc:
        return f"no seccomp filter ({exc})"
    return ""


def program_fd() -> int:
    """A readable fd holding the program, for bwrap's `--seccomp FD` (the caller closes it)."""
    read_end, write_end = os.pipe()
    data = program()
    if len(data) > 60_000:  # a pipe buffer holds 64 KiB: bwrap reads it after we have written
        os.close(read_end)
        os.close(write_end)
        raise SeccompUnavailable("the seccomp program is too large for a pipe")
    os.write(write_end, data)
    os.close(write_end)
    return read_end
