"""Per-kernel cgroups and the seccomp filter, without a kernel: parsing, limits, kill, OOM.

The live tests make real cgroups on this machine (as root, where cgroups are writable) and
put plain processes in them, so each rule is seen to hold in a second or two.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from grader.execution import cgroups, seccomp
from grader.execution.launch import joining_cgroup
from grader.execution.sandbox import describe

V1_CGROUP = """\
9:name=systemd:/
8:pids:/
4:memory:/process_api/abc
0::/
"""
V1_MOUNTINFO = """\
30 25 0:26 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
34 30 0:30 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
37 30 0:33 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
38 30 0:34 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
V2_MOUNTINFO = "29 23 0:26 /kubepods/pod1 /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n"


def test_own_groups_are_read_per_controller() -> None:
    groups = cgroups.own_groups(V1_CGROUP)
    assert groups["memory"] == "/process_api/abc" and groups["pids"] == "/"
    assert groups["name=systemd"] == "/" and groups[""] == "/"


def test_mounts_and_paths_below_a_namespace_root() -> None:
    mounts = cgroups._mounts(V1_MOUNTINFO)
    assert [(m.fstype, str(m.point)) for m in mounts] == [
        ("cgroup", "/sys/fs/cgroup/memory"),
        ("cgroup", "/sys/fs/cgroup/pids"),
        ("cgroup2", "/sys/fs/cgroup/unified"),
    ]
    assert "memory" in mounts[0].options
    (v2,) = cgroups._mounts(V2_MOUNTINFO)
    assert v2.root == "/kubepods/pod1"
    assert cgroups._inside(v2, "/elsewhere") is None  # not below this mount's root


def test_v2_layout_found_in_a_fake_hierarchy(tmp_path: Path) -> None:
    """A delegated v2 group whose controllers are already enabled for its children."""
    own = tmp_path / "pod1" / "harness"
    own.mkdir(parents=True)
    (own / "cgroup.controllers").write_text("cpu memory pids\n")
    (own / "cgroup.subtree_control").write_text("")
    mount = cgroups.Mount(tmp_path / "pod1", "/pod1", "cgroup2", frozenset())
    found = cgroups._v2("/pod1/harness", [mount])
    assert found == cgroups.Hierarchy(2, own, own)
    assert (own / "cgroup.subtree_control").read_text() == "+memory +pids"
    # A second harness process already moved into the leaf uses the delegated parent.
    leaf = own / cgroups.HARNESS_LEAF
    leaf.mkdir()
    (leaf / "cgroup.controllers").write_text("memory pids\n")
    (own / "cgroup.subtree_control").write_text("memory pids")
    assert cgroups._v2("/pod1/harness/mbgd-harness", [mount]) == cgroups.Hierarchy(2, own, own)
    (own / "cgroup.controllers").write_text("cpu\n")
    assert "not available" in cgroups._v2("/pod1/harness", [mount])


def test_the_sandbox_text_says_what_is_missing() -> None:
    assert describe(None) == "rlimits-only (bwrap not found)"
    assert describe("/usr/bin/bwrap", "cgroup v2") == "bubblewrap + cgroup v2 + seccomp"
    text = describe("/usr/bin/bwrap", "no cgroup: not root", "no seccomp filter (gone)")
    assert text == "bubblewrap (no cgroup: not root; no seccomp filter (gone))"


live = pytest.mark.skipif(
    isinstance(cgroups.locate(), str), reason=f"no writable cgroups here: {cgroups.locate()}"
)


def _in_group(group: cgroups.KernelCgroup, code: str) -> subprocess.Popen[bytes]:
    argv = joining_cgroup(group, [sys.executable, "-c", code])
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


@live
def test_memory_no_process_holds_is_counted_and_oom_is_recorded() -> None:
    """memfd pages are in no address space (RLIMIT_AS misses them); the group counts them."""
    group = cgroups.KernelCgroup(cgroups.locate(), memory_mb=128, max_pids=16)
    try:
        code = (
            "import os\nheld = []\nfor _ in range(8):\n"
            "    fd = os.memfd_create('x'); os.posix_fallocate(fd, 0, 32 << 20); held.append(fd)\n"
            "print('survived')"
        )
        process = _in_group(group, code)
        output, _ = process.communicate(timeout=60)
        assert process.returncode == -9 and b"survived" not in output
        assert group.oom_kills() == 1
        assert 100 <= group.peak_mb() <= 128
    finally:
        group.remove()
    assert not any(path.exists() for path in group.dirs)


@live
def test_processes_are_capped_and_all_killed() -> None:
    group = cgroups.KernelCgroup(cgroups.locate(), memory_mb=256, max_pids=8)
    try:
        code = (
            "import os, time\nn = 0\ntry:\n    for _ in range(50):\n"
            "        if os.fork() == 0:\n            time.sleep(60); os._exit(0)\n"
            "        n += 1\nexcept OSError:\n    pass\nprint(n, flush=True)\ntime.sleep(60)"
        )
        process = _in_group(group, code)
        assert process.stdout is not None
        forked = int(process.stdout.readline())
        assert forked == 7  # the parent and 7 children fill pids.max = 8
        assert len(group.members()) == 8
        group.kill()
        assert process.wait(timeout=10) == -9 and group.members() == []
    finally:
        group.remove()


@live
def test_stale_groups_of_a_dead_harness_are_swept() -> None:
    hierarchy = cgroups.locate()
    assert isinstance(hierarchy, cgroups.Hierarchy)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], **_OUT)
    stale = hierarchy.memory / f"{cgroups.PREFIX}{int(dead.stdout)}-feedbeef"
    mine = cgroups.KernelCgroup(hierarchy, memory_mb=64, max_pids=4)
    stale.mkdir()
    try:
        cgroups.sweep_stale(hierarchy)
        assert not stale.exists() and mine.memory.exists()
    finally:
        mine.remove()
        if stale.exists():
            stale.rmdir()


_OUT = {"capture_output": True, "text": True, "check": True}


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bwrap is not installed")
def test_seccomp_refuses_new_user_namespaces_only() -> None:
    """Under the filter (as bwrap loads it) unshare(CLONE_NEWUSER) fails, threads still start."""
    code = (
        "import ctypes, os, threading\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "print(libc.unshare(0x10000000), ctypes.get_errno())\n"
        "t = threading.Thread(target=print, args=('thread',)); t.start(); t.join()"
    )
    fd = seccomp.program_fd()
    try:
        argv = ["bwrap", "--dev-bind", "/", "/", "--seccomp", str(fd)]
        if os.geteuid() != 0:
            argv.insert(1, "--unshare-user")
        done = subprocess.run([*argv, sys.executable, "-c", code], pass_fds=(fd,), **_OUT)
    finally:
        os.close(fd)
    assert done.stdout.split() == ["-1", "1", "thread"]  # EPERM, and threads still start
    unfiltered = subprocess.run([sys.executable, "-c", code], **_OUT)
    assert unfiltered.stdout.split()[0] == "0"  # the call works without the filter
