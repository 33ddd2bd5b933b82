"""The budgets of one notebook run: the one place their defaults live.

Doors build their help texts and settings from these fields; JSON-serialisable, so the same
limits travel to Celery workers.
"""

from __future__ import annotations

from pydantic import BaseModel


class RunLimits(BaseModel):
    """Budgets for one notebook run; JSON-serialisable so it can travel to Celery workers."""

    cell_timeout: float = 60.0  # seconds per cell
    total_timeout: float = 240.0  # seconds for the whole notebook
    memory_mb: int = 2048  # RLIMIT_AS for the kernel (portable kernel: its sampled RSS)
    max_processes: int = 256
    max_file_mb: int = 64
    max_open_files: int = 512
    cpu_seconds: int = 300
    disk_mb: int = 256  # size of the kernel's home (its cwd) and of its /tmp, each
    require_sandbox: bool = False  # no bwrap -> SandboxUnavailable instead of running
    # the portable kernel (grader.execution.portable) even where the sandbox could run; the
    # learner's door (`--mbgd-portable`); taken anyway on an OS other than Linux
    portable: bool = False
