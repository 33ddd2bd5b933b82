"""Running one notebook in a kernel the learner cannot get out of.

`runner.execute_async` drives nbclient against a kernel from `sandbox` (fresh: bubblewrap,
a leased uid from `uids`, a cgroup from `cgroups`, the filter from `seccomp`, hiding the
grader as `kernel_view` says), from the warm `pool`, or, on a learner's own computer, the
plain kernel of `portable` (no sandbox, nothing Linux-only); `zmtp_guard` stands between the
kernel's sockets and the harness, and `probe_reader` turns the probe's records into models.
What runs inside the kernel or the warm parent, and is never imported here, is in
`in_kernel/`. Imports only `grader.models` and `grader.errors` from the rest of the grader.
"""
