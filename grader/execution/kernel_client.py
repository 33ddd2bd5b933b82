"""Talking to one kernel: a client on shell and iopub only, behind the ZMTP guard.

`connect(kernel)` opens the two channels the harness reads (stdin, control and heartbeat are
never opened, so a kernel cannot fill them) with small receive queues, through the kernel's
`KernelGuard`, and waits until the kernel answers. `CellClient` is nbclient keeping nothing
but the probe's records; `run_silent` runs the harness's own code (the probe, the final
read) with a deadline checked for every message read.
"""

from __future__ import annotations

import asyncio
import contextlib
from queue import Empty
from time import monotonic
from typing import Any, Protocol, cast

import nbformat
import zmq
import zmq.asyncio
from jupyter_client.asynchronous import AsyncKernelClient
from jupyter_client.connect import KernelConnectionInfo
from nbclient import NotebookClient

from grader.execution.probe_reader import ProbeReader
from grader.execution.zmtp_guard import MAX_MESSAGE_BYTES, KernelGuard

KERNEL_START_TIMEOUT = 60.0
READY_RETRY = 1.0  # seconds before asking a silent kernel for its info again
RECEIVE_QUEUE = 4  # whole messages zmq may hold for us per channel (each <= MAX_MESSAGE_BYTES)


class Kernel(Protocol):
    """What run needs from a kernel: `SandboxedKernel` or a pool's forked kernel."""

    sandbox: str
    origin: str  # "fresh" or "warm"
    connection: dict[str, object]
    killed_by_us: bool

    def alive(self) -> bool: ...
    def seal(self) -> None: ...
    async def wait_exit(self) -> None: ...
    def looks_out_of_memory(self) -> bool: ...
    def log_tail(self, limit: int = 4000) -> str: ...
    def cleanup(self) -> None: ...


class GuardedKernelClient(AsyncKernelClient):
    """A client whose liveness is the kernel process's, not the (slow) heartbeat's.

    Only shell and iopub are ever opened (through the kernel's `KernelGuard`, when it has
    one): nothing reads stdin, control or heartbeat, so a kernel cannot fill them.
    """

    guard: KernelGuard | None = None

    def bind(self, kernel: Kernel, guard: KernelGuard | None) -> None:
        self._mbgd_kernel = kernel
        self.guard = guard

    @property
    def broken(self) -> str | None:
        """Why the guard cut this kernel off (a message over the cap, bad framing), if it did."""
        return self.guard.problem if self.guard is not None else None

    async def _async_is_alive(self) -> bool:
        return self._mbgd_kernel.alive() and self.broken is None

    is_alive = _async_is_alive

    def start_channels(self, *args: Any, **kwargs: Any) -> None:
        super().start_channels(shell=True, iopub=True, stdin=False, hb=False, control=False)

    def stop_channels(self) -> None:
        """Close what was opened (the base class would create the other channels to stop them)."""
        for channel in (self._shell_channel, self._iopub_channel):
            if channel is not None:
                channel.close()
        if self.guard is not None:
            self.guard.close()


class CellClient(NotebookClient):
    """nbclient that routes probe records to the reader and keeps nothing else.

    Outputs, comm and widget state (nbclient keeps every comm message's binary buffers, in
    base64, for the whole run: 2 GB sent grew the harness by 2.1 GB), output-widget hooks,
    timings and execution counts copied into the cells: none of it is part of an Execution,
    and all of it is the kernel's to inflate.
    """

    def __init__(self, nb: nbformat.NotebookNode, reader: ProbeReader, **kw: Any) -> None:
        super().__init__(nb, record_timing=False, store_widget_state=False, **kw)
        self.reader = reader
        self.last_reply: dict[str, Any] | None = None
        self.on_cell_executed = self._remember_reply

    def _remember_reply(self, **kw: Any) -> None:
        self.last_reply = kw.get("execute_reply")

    def process_message(
        self, msg: dict[str, Any], cell: nbformat.NotebookNode, cell_index: int
    ) -> nbformat.NotebookNode | None:
        content = msg.get("content")
        if isinstance(content, dict):
            content.pop("execution_count", None)  # nbclient would keep it in the cell
        return super().process_message(msg, cell, cell_index)

    def output(self, outs: list, msg: dict, display_id: str | None, cell_index: int) -> None:
        if self.reader.wants(msg):
            self.reader.feed(msg, cell_index)
        return None  # outputs are not part of an Execution; keeping them costs memory

    def clear_output(self, outs: list, msg: dict, cell_index: int) -> None:
        return None  # no outputs kept, nothing to clear

    def handle_comm_msg(self, outs: list, msg: dict, cell_index: int) -> None:
        return None  # no comm, widget or buffer state: the grader is not a frontend


async def connect(kernel: Kernel) -> tuple[GuardedKernelClient, zmq.asyncio.Context]:
    """A client on the kernel's shell and iopub only, through a guard, with small queues."""
    guard = KernelGuard(kernel.connection) if KernelGuard.supports(kernel.connection) else None
    if guard is not None:
        await guard.start()
    context = zmq.asyncio.Context()
    context.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)  # per frame; the guard: per message
    context.setsockopt(zmq.RCVHWM, RECEIVE_QUEUE)
    context.setsockopt(zmq.LINGER, 0)
    kc = GuardedKernelClient(context=context)
    kc.bind(kernel, guard)
    info = guard.connection if guard is not None else kernel.connection
    kc.load_connection_info(cast(KernelConnectionInfo, info))  # launch.connection_info()'s keys
    try:
        kc.start_channels()
        await asyncio.wait_for(
            wait_ready(kc, kernel, monotonic() + KERNEL_START_TIMEOUT), KERNEL_START_TIMEOUT
        )
    except BaseException:
        kc.stop_channels()
        context.destroy(linger=0)
        raise
    return kc, context


async def wait_ready(kc: GuardedKernelClient, kernel: Kernel, deadline: float) -> None:
    """Return once the kernel answers kernel_info on shell AND its iopub reaches us.

    jupyter_client's `wait_for_ready` does the same but then idles 0.2 s to "flush" iopub,
    a third of a warm kernel's start; we need no flush, since every reader here matches
    messages to its own request. iopub messages sent before our subscription took effect are
    lost, so a request whose status we do not hear soon after its reply is asked again.
    """
    asked: set[str] = set()
    reply: dict[str, Any] | None = None
    heard_iopub = False
    next_ask = 0.0
    while reply is None or not heard_iopub:
        if not kernel.alive():
            raise RuntimeError("the kernel died before answering")
        if kc.broken:
            raise RuntimeError(kc.broken)
        if monotonic() > deadline:
            raise TimeoutError("the kernel did not answer in time")
        if monotonic() >= next_ask:
            asked.add(kc.kernel_info())
            next_ask = monotonic() + READY_RETRY
        if reply is None:
            with contextlib.suppress(Empty):
                msg = await kc.get_shell_msg(timeout=0.01)
                if msg["parent_header"].get("msg_id") in asked:
                    reply = msg
                    next_ask = min(next_ask, monotonic() + 0.05)
        if not heard_iopub:
            with contextlib.suppress(Empty):
                msg = await kc.get_iopub_msg(timeout=0.01)
                heard_iopub = msg["parent_header"].get("msg_id") in asked
    kc._handle_kernel_info_reply(reply)


async def run_silent(
    kc: GuardedKernelClient,
    kernel: Kernel,
    code: str,
    timeout: float,
    reader: ProbeReader | None,
    cell: int,
) -> dict[str, Any]:
    """Run code silently (no history, no hooks), feed its records to reader, return the reply.

    Raises TimeoutError when the reply and idle status do not both arrive in time or the
    kernel dies meanwhile. The deadline holds however many messages the kernel sends: it is
    checked for every message read, not only when the channels fall silent.
    """
    msg_id = kc.execute(code, silent=True, store_history=False, allow_stdin=False)
    deadline = monotonic() + timeout
    reply: dict[str, Any] | None = None
    idle = False
    while reply is None or not idle:
        if monotonic() > deadline or not kernel.alive():
            raise TimeoutError("no reply from the kernel")
        if kc.broken:
            raise TimeoutError(kc.broken)
        if reply is None:
            with contextlib.suppress(Empty):
                msg = await kc.get_shell_msg(timeout=0.02)
                if msg["parent_header"].get("msg_id") == msg_id:
                    reply = msg
        while not idle and monotonic() <= deadline:
            try:
                msg = await kc.get_iopub_msg(timeout=0.02)
            except Empty:
                break
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if reader is not None and reader.wants(msg):
                reader.feed(msg, cell)
            state = msg["content"].get("execution_state")
            idle = msg["msg_type"] == "status" and state == "idle"
    return reply
