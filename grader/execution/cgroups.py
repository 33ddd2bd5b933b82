"""One cgroup per kernel: memory and processes counted for all of a kernel's processes together.

rlimits are per process. A learner's memory that lives in no address space (`memfd_create`,
shared memory, files on a tmpfs) or is spread over several children, each under RLIMIT_AS,
escapes them; a cgroup counts all of it (anonymous memory, shmem and tmpfs pages, page
cache), caps the number of processes, and records an OOM kill so a memory death is a fact,
not a guess. Teardown reads the group's member list instead of scanning every process.

Both layouts are supported, as found on the machine:
- cgroup v2 (production Linux): one group per kernel under the harness's own cgroup. The
  "no internal processes" rule means a cgroup that has member processes cannot hand its
  controllers to children, so the harness first moves the processes of its own cgroup into a
  leaf `mbgd-harness` (what container runtimes do for their init), then enables `memory` and
  `pids` for the children.
- cgroup v1 (these machines, many CI hosts): a group in the `memory` and one in the `pids`
  hierarchy, each below the harness's own group there.

Where neither can be used (not root, no delegation, controllers missing) `locate()` returns
the reason, results say so, and `RunLimits.require_sandbox` refuses to grade.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

PREFIX = "mbgd-k-"
HARNESS_LEAF = "mbgd-harness"
KILL_ROUNDS = 50  # SIGKILL sweeps over the member list before giving up on an empty group


@dataclass(frozen=True)
class Hierarchy:
    """Where kernel groups are made: one parent per controller (the same dir on v2)."""

    version: int
    memory: Path
    pids: Path

    def describe(self) -> str:
        return f"cgroup v{self.version}"


def own_groups(text: str) -> dict[str, str]:
    """`/proc/self/cgroup` as {controller: path}; the v2 line is under the key ""."""
    groups: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            for controller in parts[1].split(",") if parts[1] else [""]:
                groups[controller] = parts[2]
    return groups


@dataclass(frozen=True)
class Mount:
    point: Path
    root: str  # the path of the hierarchy that is mounted there (a cgroup namespace's root)
    fstype: str
    options: frozenset[str]


def _mounts(text: str) -> list[Mount]:
    """The cgroup mounts in `/proc/self/mountinfo`."""
    found = []
    for line in text.splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        options = frozenset(tail[2].split(","))
        found.append(Mount(Path(fields[4]), fields[3], tail[0], options))
    return found


def _inside(mount: Mount, group: str) -> Path | None:
    """The directory of `group` (a path in the hierarchy) below this mount, if it is there."""
    root = mount.root.rstrip("/")
    if group != root and not group.startswith(root + "/"):
        return None
    path = mount.point / group[len(root) :].lstrip("/")
    return path if path.is_dir() else None


def _v1(groups: dict[str, str], mounts: list[Mount]) -> Hierarchy | str:
    dirs: dict[str, Path] = {}
    for controller in ("memory", "pids"):
        if controller not in groups:
            return f"no {controller} controller"
        for mount in mounts:
            if mount.fstype == "cgroup" and controller in mount.options:
                path = _inside(mount, groups[controller])
                if path is not None:
                    dirs[controller] = path
                    break
        else:
            return f"the {controller} cgroup of this process is not mounted"
    if not all(os.access(path, os.W_OK) for path in dirs.values()):
        return "cgroups are not writable (run as root or delegate a cgroup)"
    return Hierarchy(1, dirs["memory"], dirs["pids"])


def _v2(group: str, mounts: list[Mount]) -> Hierarchy | str:
    for mount in mounts:
        if mount.fstype != "cgroup2":
            continue
        own = _inside(mount, group)
        if own is None:
            continue
        available = set((own / "cgroup.controllers").read_text().split())
        if not {"memory", "pids"} <= available:
            return "the memory and pids controllers are not available in cgroup v2 here"
        if not os.access(own, os.W_OK):
            return "cgroups are not writable (run as root or delegate a cgroup)"
        parent = own.parent
        if own.name == HARNESS_LEAF and {"memory", "pids"} <= _enabled(parent):
            return Hierarchy(2, parent, parent)  # a harness before us delegated already
        return _delegate_v2(own)
    return "the cgroup v2 hierarchy of this process is not mounted"


def _enabled(group: Path) -> set[str]:
    """The controllers a v2 group hands to its children."""
    try:
        return set((group / "cgroup.subtree_control").read_text().split())
    except OSError:
        return set()


def _delegate_v2(own: Path) -> Hierarchy | str:
    """Enable memory and pids for children of `own`, moving its processes to a leaf first."""
    want = "+memory +pids"
    try:
        (own / "cgroup.subtree_control").write_text(want)
    except OSError as exc:
        if exc.errno != errno.EBUSY:
            return f"cannot enable cgroup controllers: {exc.strerror}"
        leaf = own / HARNESS_LEAF
        try:
            leaf.mkdir(exist_ok=True)
            for pid in (own / "cgroup.procs").read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    (leaf / "cgroup.procs").write_text(pid)
            (own / "cgroup.subtree_control").write_text(want)
        except OSError as exc2:
            return f"cannot enable cgroup controllers: {exc2.strerror}"
    return Hierarchy(2, own, own)


_lock = threading.Lock()
_located: Hierarchy | str | None = None


def locate(refresh: bool = False) -> Hierarchy | str:
    """Where this process can make kernel cgroups, or why it cannot (cached per process)."""
    global _located
    with _lock:
        if _located is None or refresh:
            _located = _locate()
            if isinstance(_located, Hierarchy):
                sweep_stale(_located)
        return _located


def _locate() -> Hierarchy | str:
    if os.environ.get("MBGD_CGROUPS", "1") == "0":
        return "turned off (MBGD_CGROUPS=0)"
    try:
        groups = own_groups(Path("/proc/self/cgroup").read_text())
        mounts = _mounts(Path("/proc/self/mountinfo").read_text())
    except OSError:
        return "no cgroups on this system"
    if "memory" in groups and "pids" in groups:
        return _v1(groups, mounts)
    if "" in groups:
        try:
            return _v2(groups[""], mounts)
        except OSError as exc:
            return f"cgroup v2 unusable: {exc.strerror}"
    return "no memory and pids cgroup controllers"


def sweep_stale(hierarchy: Hierarchy) -> None:
    """Remove kernel groups left by a harness that was killed hard (its pid is gone)."""
    for parent in {hierarchy.memory, hierarchy.pids}:
        for path in parent.glob(f"{PREFIX}*"):
            owner = path.name.removeprefix(PREFIX).split("-")[0]
            if owner.isdigit() and not _pid_alive(int(owner)):
                with contextlib.suppress(OSError):
                    _kill_members(path)
                    path.rmdir()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _members(path: Path) -> list[int]:
    try:
        return [int(pid) for pid in (path / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


def _kill_members(path: Path) -> None:
    """SIGKILL everything in the group until it is empty (a fork bomb keeps forking)."""
    kill_file = path / "cgroup.kill"
    if kill_file.exists():
        with contextlib.suppress(OSError):
            kill_file.write_text("1")
    for _ in range(KILL_ROUNDS):
        members = _members(path)
        if not members:
            return
        for pid in members:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)


class KernelCgroup:
    """The group of one kernel: limits set before anything runs in it; removed at teardown."""

    def __init__(self, hierarchy: Hierarchy, memory_mb: int, max_pids: int) -> None:
        self.hierarchy = hierarchy
        name = f"{PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        self.memory = hierarchy.memory / name
        self.pids = hierarchy.pids / name
        self.dirs = list(dict.fromkeys([self.memory, self.pids]))
        for path in self.dirs:
            path.mkdir()
        try:
            self._set_limits(memory_mb << 20, max_pids)
        except OSError:
            self.remove()
            raise

    def _set_limits(self, memory: int, max_pids: int) -> None:
        if self.hierarchy.version == 2:
            (self.memory / "memory.max").write_text(str(memory))
            with contextlib.suppress(FileNotFoundError):  # no swap accounting: no swap to use
                (self.memory / "memory.swap.max").write_text("0")
        else:
            (self.memory / "memory.limit_in_bytes").write_text(str(memory))
            with contextlib.suppress(FileNotFoundError):
                (self.memory / "memory.memsw.limit_in_bytes").write_text(str(memory))
        (self.pids / "pids.max").write_text(str(max_pids))

    @property
    def procs_files(self) -> list[Path]:
        """Where a pid is written to join the group (one file per hierarchy)."""
        return [path / "cgroup.procs" for path in self.dirs]

    def add(self, pid: int) -> None:
        for path in self.procs_files:
            path.write_text(str(pid))

    def members(self) -> list[int]:
        return sorted({pid for path in self.dirs for pid in _members(path)})

    def oom_kills(self) -> int:
        """How many processes of the group the kernel's OOM killer has killed."""
        name = "memory.events" if self.hierarchy.version == 2 else "memory.oom_control"
        try:
            for line in (self.memory / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            pass
        return 0

    def peak_mb(self) -> int:
        """The group's peak memory use, where the kernel records one."""
        name = "memory.peak" if self.hierarchy.version == 2 else "memory.max_usage_in_bytes"
        try:
            return int((self.memory / name).read_text()) >> 20
        except (OSError, ValueError):
            return 0

    def kill(self) -> None:
        for path in self.dirs:
            _kill_members(path)

    def remove(self) -> None:
        """Kill what is left, then delete the group (retried while the last exits settle)."""
        self.kill()
        for path in self.dirs:
            for _ in range(100):
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    _kill_members(path)
                    time.sleep(0.01)


def new_kernel_cgroup(memory_mb: int, max_pids: int) -> tuple[KernelCgroup | None, str]:
    """A group for one kernel and the text results show, or None and why not."""
    found = locate()
    if isinstance(found, str):
        return None, f"no cgroup: {found}"
    try:
        return KernelCgroup(found, memory_mb, max_pids), found.describe()
    except OSError as exc:
        return None, f"no cgroup: {exc.strerror or exc}"
