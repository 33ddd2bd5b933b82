"""The warm pool is passed down, never found in a global; when it fails, the Execution says so.

No kernel runs here: the fresh kernel and the connection to it are stand-ins.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from nbformat.v4 import new_code_cell, new_notebook

from grader.execution import runner
from grader.execution.pool import KernelPool, PoolUnavailable
from grader.execution.runner import RunLimits


class _FreshKernel:
    """Enough of a SandboxedKernel for execute_async to give up on it at once."""

    sandbox = "stand-in"
    origin = "fresh"
    connection: dict[str, object] = {}
    killed_by_us = False

    def __init__(self, limits: RunLimits) -> None:
        self.limits = limits

    def start(self) -> None:
        pass

    def alive(self) -> bool:
        return False

    def log_tail(self, limit: int = 4000) -> str:
        return ""

    def cleanup(self) -> None:
        pass


class _BrokenPool:
    def __init__(self) -> None:
        self.asked = 0

    async def acquire(self, limits: RunLimits, cells: Sequence[str] = ()) -> runner.Kernel:
        self.asked += 1
        raise PoolUnavailable("the zygote did not answer\n(and a long log tail after it)")


@pytest.fixture
def no_fresh_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    async def no_answer(kernel: object) -> None:
        raise RuntimeError("no answer")

    monkeypatch.setattr(runner, "SandboxedKernel", _FreshKernel)
    monkeypatch.setattr(runner, "connect", no_answer)


def test_a_pool_that_fails_is_named_in_the_notes(no_fresh_kernels: None) -> None:
    pool = _BrokenPool()
    ex = runner.execute(new_notebook(cells=[new_code_cell("x = 1")]), pool=pool)
    assert pool.asked == 1 and ex.kernel == "fresh" and ex.fate == "not_started"
    assert ex.notes[0].startswith("the kernel did not start")  # the kernel's own note first
    assert ex.notes[-1] == (
        "the warm pool could not be used (the zygote did not answer); "
        "this run was started from scratch"
    )


def test_without_a_pool_there_is_no_note(no_fresh_kernels: None) -> None:
    ex = runner.execute(new_notebook(cells=[new_code_cell("x = 1")]))
    assert ex.kernel == "fresh" and not any("warm pool" in note for note in ex.notes)


def test_a_closed_pool_refuses_at_once_and_says_why() -> None:
    pool = KernelPool()
    pool.close(why="the warm pool did not start (no bwrap)")
    with pytest.raises(PoolUnavailable, match="did not start"):
        asyncio.run(pool.acquire(RunLimits()))
    assert pool.proc is None  # no zygote was started to answer it
