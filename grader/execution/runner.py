"""Execute one notebook in a fresh sandboxed kernel and report what happened as an Execution.

nbclient runs the learner's cells one at a time in a kernel from `grader.execution.sandbox` (or
from a warm `grader.execution.pool.KernelPool`, or, on a learner's own computer, from
`grader.execution.portable`: same cells, probe and Execution, no sandbox), with the in-kernel probe
(`grader.execution.probe_reader`) installed silently first so cell indices stay the learner's.
Budgets are enforced here, not by nbclient: each cell races its timeout and the kernel process's
exit, so a hung cell becomes "timeout" and a dead kernel "died" (or "oom"), always against the
cell that caused it; later cells are then "not_run". Errors do not stop the run. Teardown is a
SIGKILL of the kernel's process tree and uid, never a graceful shutdown.

Everything the kernel sends costs bounded memory and time (issue 12; the client is in
`kernel_client`): only shell and iopub are opened, with small receive queues, through a
`grader.execution.zmtp_guard.KernelGuard` that cuts a kernel whose message passes 17 MB (a cut
is a "died" cell, a ProtocolError saying why); the client keeps no outputs, comm or widget
state; stdin is never offered, so `input()` fails at once; and every wait on the kernel has a
deadline that is checked for every message read, so a flood cannot hold a loop open past it.

A notebook that begins with a known version of the lab's own cells may get a kernel forked
from a warm parent that already ran them (issue 16, `grader.execution.prefix`, the pool): then
those cells are not run again, the parent's probe records for them are read here as if the
kernel had just sent them (through the same untrusted-input reader), the fresh probe is primed
with the parent probe's state, and `Execution.reused_cells` names them. `reuse=False`, or a
seed override (the integrity re-run: the lab's seed cell must see that seed), runs everything.

`execute_async` never raises for anything the notebook does; only `SandboxUnavailable` (when
`require_sandbox` is set and bwrap is missing, or the run would be portable) and genuine
harness bugs escape.
"""

from __future__ import annotations

import asyncio
import copy
import re
from collections.abc import Sequence
from time import monotonic
from typing import Any, Literal, Protocol

import nbformat
import zmq
import zmq.asyncio
from nbclient.exceptions import DeadKernelError

from grader.execution.kernel_client import (
    CellClient,
    GuardedKernelClient,
    Kernel,
    connect,
    run_silent,
)
from grader.execution.limits import RunLimits
from grader.execution.pool import PoolUnavailable
from grader.execution.portable import PortableKernel, run_sync, use_portable
from grader.execution.prefix import PrefixRun, code_cells, prime_code
from grader.execution.probe_reader import (
    FLUSH_CODE,
    INPUT_MESSAGE,
    ProbeReader,
    install_code,
    new_mime,
)
from grader.execution.sandbox import SandboxedKernel, SandboxUnavailable
from grader.models import CellRun, Execution

__all__ = ["RunLimits", "SandboxUnavailable", "execute", "execute_async"]

PROBE_TIMEOUT = 60.0
SKIP_TAG = "skip-execution"  # nbclient's default: a cell tagged so is not run
SKIPPED = "\x00 skipped for its tag"  # such a cell, to the lab matcher: no lab cell reads so
FLUSH_TIMEOUT = 15.0
CANCEL_TIMEOUT = 5.0  # seconds we wait for a cancelled nbclient task to unwind
TRACEBACK_LINES = 30
TRACEBACK_CHARS = 4000
TRACEBACK_SCAN = 64 << 10  # characters of a (possibly huge) traceback looked at
POOL_REASON_CHARS = 160  # of why the warm pool failed, in a note the learner may read
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


class KernelSource(Protocol):
    """Something that hands out started kernels (the warm pool); raises PoolUnavailable when
    it cannot (the notebook then runs in a fresh kernel, and its Execution says so)."""

    async def acquire(self, limits: RunLimits, cells: Sequence[str] = ()) -> Kernel: ...


def shorten_traceback(lines: list[str]) -> str:
    """Plain text, no ANSI, at most a few frames' worth of lines and characters."""
    text = "\n".join(str(line) for line in lines)
    if len(text) > TRACEBACK_SCAN:  # keep the head and the tail: what is shown comes from them
        text = text[: TRACEBACK_SCAN // 8] + "\n" + text[-(TRACEBACK_SCAN - TRACEBACK_SCAN // 8) :]
    text = _ANSI.sub("", text)
    rows = text.splitlines()
    if len(rows) > TRACEBACK_LINES:
        rows = [*rows[:2], "    ...", *rows[-(TRACEBACK_LINES - 3) :]]
    text = "\n".join(rows)
    return text if len(text) <= TRACEBACK_CHARS else "..." + text[-TRACEBACK_CHARS:]


async def _ready_kernel(
    limits: RunLimits, pool: KernelSource | None, notes: list[str], cells: Sequence[str] = ()
) -> tuple[Kernel, GuardedKernelClient | None, zmq.asyncio.Context | None, str]:
    """A started kernel and a client that heard it answer, or the kernel and why not.

    A warm kernel can die between being handed out and answering (its zygote was killed,
    say): that is the pool's failure, not the learner's, so it is replaced once.
    """
    for attempt in range(2):
        kernel = await _start_kernel(limits, pool, notes, cells)
        try:
            kc, context = await connect(kernel)
            return kernel, kc, context, ""
        except (RuntimeError, TimeoutError) as exc:
            error = str(exc)
        except BaseException:  # cancelled: the caller never sees this kernel
            kernel.cleanup()
            raise
        if kernel.origin != "warm" or attempt == 1:
            break
        kernel.cleanup()
    return kernel, None, None, error


async def _never() -> None:
    await asyncio.Event().wait()


async def _run_cell(
    client: CellClient,
    kernel: Kernel,
    kc: GuardedKernelClient,
    cell: nbformat.NotebookNode,
    index: int,
    budget: float,
) -> CellRun:
    started = monotonic()
    client.last_reply = None
    task = asyncio.ensure_future(client.async_execute_cell(cell, index))
    exited = asyncio.ensure_future(kernel.wait_exit())
    cut = asyncio.ensure_future(kc.guard.broken.wait() if kc.guard is not None else _never())
    done, _ = await asyncio.wait(
        {task, exited, cut}, timeout=max(budget, 0.0), return_when=asyncio.FIRST_COMPLETED
    )
    seconds = round(monotonic() - started, 4)
    for pending in (task, exited, cut):
        if not pending.done():
            pending.cancel()
            await asyncio.wait({pending}, timeout=CANCEL_TIMEOUT)
            if pending.done() and not pending.cancelled():
                pending.exception()  # retrieved: nbclient turns a cancel into DeadKernelError
    if kc.broken:
        return CellRun(
            index=index,
            status="died",
            seconds=seconds,
            error_name="ProtocolError",
            error_value=f"{kc.broken}: the grader stopped listening to it",
        )
    if task in done and task.exception() is None and kernel.alive():
        reply: dict[str, Any] = client.last_reply or {}
        content = reply.get("content", {})
        if content.get("status", "ok") == "ok":
            return CellRun(index=index, status="ok", seconds=seconds)
        name = str(content.get("ename", "Error"))[:200]
        value = str(content.get("evalue", ""))[:2000]
        if name == "StdinNotImplementedError":  # input() or getpass(): nobody will answer
            value = INPUT_MESSAGE
        return CellRun(
            index=index,
            status="error",
            seconds=seconds,
            error_name=name,
            error_value=value,
            traceback=shorten_traceback(list(content.get("traceback", []))),
        )
    exc = task.exception() if task in done else None
    if exc is not None and not isinstance(exc, DeadKernelError) and kernel.alive():
        # The learner broke the kernel's side of the protocol (e.g. patched json.dumps), so
        # its messages are garbage: the kernel is as good as dead.
        return CellRun(
            index=index,
            status="died",
            seconds=seconds,
            error_name="ProtocolError",
            error_value=f"the kernel sent a malformed message ({type(exc).__name__}: {exc})"[:500],
        )
    if not done:
        return CellRun(index=index, status="timeout", seconds=seconds)
    return CellRun(index=index, status="died", seconds=seconds)


async def _run_cells(
    client: CellClient,
    kernel: Kernel,
    kc: GuardedKernelClient,
    nb: nbformat.NotebookNode,
    limits: RunLimits,
    ex: Execution,
    reused: PrefixRun | None = None,
) -> int | None:
    """Run every code cell; fill ex.cells, ex.fate, ex.fate_cell. Returns last cell run.

    The cells `reused` covers are not run: their runs and records come from the warm parent,
    and the time they took there counts against the notebook's budget as if they ran here."""
    spent = sum(reused.seconds) if reused else 0.0
    deadline = monotonic() + limits.total_timeout - spent
    last = None
    skip = len(reused.records) if reused else 0
    for ordinal, (index, cell) in enumerate(code_cells(nb)):
        if ordinal < skip:
            assert reused is not None
            ex.cells.append(CellRun(index=index, status="ok", seconds=reused.seconds[ordinal]))
            ex.reused_cells.append(index)
            last = index
            continue
        if ex.fate != "ok":
            ex.cells.append(CellRun(index=index, status="not_run"))
            continue
        budget = min(limits.cell_timeout, deadline - monotonic())
        run = await _run_cell(client, kernel, kc, cell, index, budget)
        ex.cells.append(run)
        last = index
        if run.status == "timeout":
            ex.fate, ex.fate_cell = "timeout", index
            which = "cell" if budget >= limits.cell_timeout else "notebook"
            seconds = limits.cell_timeout if which == "cell" else limits.total_timeout
            ex.notes.append(f"cell {index} exceeded the {which} time limit ({seconds:g} s)")
        elif run.status == "died" and run.error_name == "ProtocolError":
            ex.fate, ex.fate_cell = "died", index
            ex.notes.append(f"while running cell {index}, {run.error_value}")
        elif run.status == "died":
            ex.fate = "oom" if kernel.looks_out_of_memory() else "died"
            ex.fate_cell = index
            what = "ran out of memory" if ex.fate == "oom" else "died"
            ex.notes.append(f"the kernel {what} while running cell {index}")
    return last


def _reusable_sources(nb: nbformat.NotebookNode) -> list[str]:
    """The sources of the cells `_run_cells` runs, to match against the known labs; a cell
    nbclient skips for its tag stands as a text no lab cell is, so the match ends before it
    (a warm parent runs every cell of its prefix: a skipped lab cell must not be run on the
    learner's behalf)."""
    sources = []
    for _, cell in code_cells(nb):
        tags = cell.get("metadata", {}).get("tags", [])
        skipped = isinstance(tags, str | list | tuple) and SKIP_TAG in tags  # nbclient's test
        sources.append(SKIPPED if skipped else str(cell.get("source", "")))
    return sources


def _replay(reader: ProbeReader, reused: PrefixRun, nb: nbformat.NotebookNode) -> None:
    """Feed the parent's records for the reused cells to `reader`, each against its cell."""
    for (index, _), records in zip(code_cells(nb), reused.records, strict=False):
        for text in records:
            reader.feed(
                {"msg_type": "display_data", "content": {"data": {reader.mime: text}}}, index
            )


def pool_note(problem: PoolUnavailable) -> str:
    """The Execution's note when the pool it was given could not hand out a kernel."""
    reason = (str(problem).strip().splitlines() or ["no reason given"])[0][:POOL_REASON_CHARS]
    return f"the warm pool could not be used ({reason}); this run was started from scratch"


async def _start_kernel(
    limits: RunLimits, pool: KernelSource | None, notes: list[str], cells: Sequence[str] = ()
) -> Kernel:
    """A started kernel: forked from `pool` when one is given, else a fresh one. A fresh one
    too when the pool fails (the run is as sound, only slower): that goes into `notes`.
    The portable kernel (`grader.execution.portable.use_portable`) never comes from a pool.

    `cells`: the notebook's code cells, when a kernel that already ran a known lab prefix of
    them is welcome (its `reused` then says how many, and must agree with them)."""
    portable = use_portable(limits)
    if pool is not None and not portable:
        try:
            pooled = await (pool.acquire(limits, cells) if cells else pool.acquire(limits))
            reused: PrefixRun | None = getattr(pooled, "reused", None)
            if reused is None or list(reused.prefix.cells) == list(cells[: len(reused.records)]):
                return pooled
            pooled.cleanup()  # not this notebook's prefix: never trust it, run in full
            return await pool.acquire(limits)
        except PoolUnavailable as problem:
            notes.append(pool_note(problem))
    kernel: PortableKernel | SandboxedKernel = (
        PortableKernel(limits) if portable else SandboxedKernel(limits)
    )
    try:
        kernel.start()
    except BaseException:
        kernel.cleanup()
        raise
    return kernel


async def execute_async(
    nb: nbformat.NotebookNode,
    limits: RunLimits | None = None,
    *,
    seed_override: int | None = None,
    pool: KernelSource | None = None,
    reuse: bool = True,
) -> Execution:
    """Run the notebook's code cells in a kernel of its own, forked from `pool` when one is
    given, else fresh; never raises for learner behaviour.

    `reuse`: a pooled kernel may start from a warm parent that ran the lab's own first cells
    (never with `seed_override`); False runs every cell here."""
    limits = limits or RunLimits()
    nb = nbformat.from_dict(copy.deepcopy(dict(nb)))
    started = monotonic()
    phases: dict[str, float] = {}
    reader = ProbeReader(new_mime())
    mark = monotonic()
    pool_notes: list[str] = []  # last among the notes: readers look for the kernel's own first
    wanted = reuse and seed_override is None and pool is not None
    cells = _reusable_sources(nb) if wanted else []
    kernel, kc, context, error = await _ready_kernel(limits, pool, pool_notes, cells)
    reused: PrefixRun | None = getattr(kernel, "reused", None) if cells else None
    origin: Literal["fresh", "warm"] = "warm" if kernel.origin == "warm" else "fresh"
    ex = Execution(fate="not_started", sandbox=kernel.sandbox, kernel=origin)

    def phase(name: str) -> None:
        nonlocal mark
        now = monotonic()
        phases[name] = round(now - mark, 4)
        mark = now

    try:
        if kc is None:
            tail = kernel.log_tail(800).strip()
            ex.notes.append(f"the kernel did not start: {error}" + (f"\n{tail}" if tail else ""))
            ex.cells = [
                CellRun(index=i, status="not_run")
                for i, c in enumerate(nb.cells)
                if c.get("cell_type") == "code" and str(c.get("source", "")).strip()
            ]
            return ex
        phase("kernel_start")
        ex.fate = "ok"
        seed = None if seed_override is None else int(seed_override)
        code = install_code(reader.mime, seed)
        try:
            reply = await run_silent(kc, kernel, code, PROBE_TIMEOUT, reader, 0)
        except TimeoutError:
            reply = {"content": {"status": "error", "ename": "Timeout", "evalue": ""}}
        if reply["content"].get("status") != "ok":
            ex.notes.append(
                "probe could not be installed: "
                f"{reply['content'].get('ename', '')} {reply['content'].get('evalue', '')}"
            )
        if reused is not None:
            try:
                reply = await run_silent(kc, kernel, prime_code(reused), PROBE_TIMEOUT, reader, 0)
            except TimeoutError:
                reply = {"content": {"status": "error", "ename": "Timeout", "evalue": ""}}
            if reply["content"].get("status") != "ok":
                ex.notes.append("the probe could not take over from the warm parent")
            _replay(reader, reused, nb)
        kernel.seal()
        phase("probe")
        client = CellClient(
            nb, reader, km=None, allow_errors=True, timeout=None, skip_cells_with_tag=SKIP_TAG
        )
        client.kc = kc
        last = await _run_cells(client, kernel, kc, nb, limits, ex, reused)
        phase("cells")
        if ex.fate == "ok" and last is not None and kernel.alive():
            try:
                await run_silent(kc, kernel, FLUSH_CODE, FLUSH_TIMEOUT, reader, last)
            except Exception as exc:  # noqa: BLE001 - timeout, or a kernel the learner broke
                why = f": {kc.broken}" if kc.broken else ""
                ex.notes.append(f"the final read of variables failed ({type(exc).__name__}){why}")
        ex.figures, ex.variables = reader.figures, reader.variables
        ex.notes = reader.notes + ex.notes + reader.finish()
        phase("extraction")
    finally:
        if kc is not None:
            kc.stop_channels()
        kernel.cleanup()
        if context is not None:
            context.destroy(linger=0)
        phase("teardown")
        ex.notes.extend(pool_notes)
        ex.phases = phases
        ex.seconds = round(monotonic() - started, 4)
    return ex


def execute(
    nb: nbformat.NotebookNode,
    limits: RunLimits | None = None,
    *,
    seed_override: int | None = None,
    pool: KernelSource | None = None,
    reuse: bool = True,
) -> Execution:
    """Synchronous wrapper around `execute_async` (runs its own event loop)."""
    return run_sync(execute_async(nb, limits, seed_override=seed_override, pool=pool, reuse=reuse))
