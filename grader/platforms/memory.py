"""The kernel's memory budget inside a platform's container, whose memory limit covers the
grading harness and the learner's kernel together.

`RunLimits.memory_mb` is the kernel's address-space limit (RLIMIT_AS: virtual memory), and
also its cgroup's limit where the grader may make cgroups (rarely inside a platform's
container). Measured on the solved lab in the Gradescope layout (README, "Gradescope"): the
harness peaks at ~400 MB, the kernel at ~290 MB resident but ~1130 MB of address space (torch
maps far more than it touches). So a container of C MB leaves the kernel about C - 450 MB
resident, which is an address space of about C - 450 + 800 MB. Below the lab's own need the
budget stays at that need: a tighter limit would fail every correct notebook, so the
container's limit is then what stops a runaway notebook, and the run says to raise it.
"""

from __future__ import annotations

from pathlib import Path

from grader.execution.cgroups import own_groups
from grader.execution.limits import RunLimits

HARNESS_MB = 450  # the grading process: python, torch (the reference), matplotlib, reports
UNBACKED_MB = 800  # a torch kernel's address space that is never resident
LAB_NEEDS_MB = 1280  # the solved lab's kernel peaks at ~1130 MB of address space
RECOMMENDED_MB = 1536  # README: what to set on a platform
NO_LIMIT = 1 << 50  # cgroup v1 says "no limit" with a huge number

CGROUP = Path("/sys/fs/cgroup")


def _read_limit(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if not text.isdigit() or int(text) >= NO_LIMIT:
        return None  # "max" (v2) or the v1 stand-in for no limit
    return int(text) >> 20


def container_memory_mb(cgroup_root: Path = CGROUP) -> int | None:
    """The memory limit this process lives under, in MB (a container's), or None.

    Inside a container the container's own cgroup is mounted at the root of the hierarchy;
    outside one, /proc/self/cgroup names ours. The smallest limit found is the one that bites.
    """
    candidates = [cgroup_root / "memory.max", cgroup_root / "memory" / "memory.limit_in_bytes"]
    try:
        groups = own_groups(Path("/proc/self/cgroup").read_text())
    except OSError:
        groups = {}
    if "" in groups:  # v2
        candidates.append(cgroup_root / groups[""].lstrip("/") / "memory.max")
    if "memory" in groups:  # v1
        candidates.append(
            cgroup_root / "memory" / groups["memory"].lstrip("/") / "memory.limit_in_bytes"
        )
    found = [mb for mb in map(_read_limit, candidates) if mb is not None]
    return min(found) if found else None


def kernel_memory_mb(container_mb: int, default_mb: int) -> int:
    """The kernel's memory_mb in a container of `container_mb` (see the module's text)."""
    fits = container_mb - HARNESS_MB + UNBACKED_MB
    return max(LAB_NEEDS_MB, min(default_mb, fits))


def tight(container_mb: int) -> bool:
    """Less than RECOMMENDED_MB: the lab fits, but a notebook that uses a few hundred MB more
    than the lab's own ~300 MB meets the container's limit, which ends the whole run."""
    return container_mb < RECOMMENDED_MB


def limits_for_container(limits: RunLimits, container_mb: int | None = None) -> RunLimits:
    """`limits` with the kernel's memory fitted to the container this process runs in."""
    container_mb = container_mb if container_mb is not None else container_memory_mb()
    if container_mb is None:
        return limits
    memory = kernel_memory_mb(container_mb, limits.memory_mb)
    return limits.model_copy(update={"memory_mb": memory})
