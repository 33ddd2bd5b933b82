"""A byte-level guard between the harness's zmq sockets and a kernel's: bounded messages only.

libzmq bounds what a peer can make us hold only per frame (ZMQ_MAXMSGSIZE) and per whole
message (the receive high-water mark counts messages). A multipart message of thousands of
32 MB frames is therefore assembled in the harness's io thread without limit: measured, one
such message of 60 frames grew the harness by 1.9 GB, and the kernel pays nothing for it
(the same buffer sent zero-copy again and again).

So the harness's shell and iopub sockets do not connect to the kernel: they connect to a
private unix socket of a `ChannelGuard`, which relays bytes to and from the kernel's socket
and reads the kernel's side as ZMTP 3 (greeting, then frames: a flags byte with MORE, LONG,
COMMAND, then a 1- or 8-byte size). It keeps no message, only counters: when one message's
frames add up to more than `MAX_MESSAGE_BYTES` (or `MAX_FRAMES` parts), or the framing is
not ZMTP 3 with the NULL mechanism, it cuts both connections and the kernel is treated as
broken. libzmq drops the partial message it was assembling when the connection goes, so
what a kernel can make the harness hold is bounded by the high-water marks times the cap.
Relaying is flow-controlled both ways (a side that does not read pauses the other), so the
guard itself holds at most a transport buffer per direction.

The portable kernel (`grader.execution.portable`, a learner's own computer) speaks tcp on
loopback, since Windows has no ipc transport: its guard listens on loopback ports the OS picks
and relays to the kernel's ports, with the same framing rules.

Cost: one extra hop through the event loop, and a few Python operations per frame header;
frame bodies are skipped by arithmetic, not looked at.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from grader.execution.probe_reader import MAX_RECORD_BYTES

# The biggest message the harness accepts: a probe record (JSON text inside a JSON string, so
# at worst twice its size once escaped) plus the envelope.
MAX_MESSAGE_BYTES = 2 * MAX_RECORD_BYTES + (1 << 20)
MAX_FRAMES = 1024  # parts of one message; libzmq keeps a 64-byte header per part
MAX_COMMAND_BYTES = 64 << 10  # READY, ERROR, PING, PONG: all tiny
CONNECT_RETRY = 0.01  # seconds between tries while the kernel has not bound its socket yet
WRITE_HIGH_WATER = 256 << 10  # bytes a relay buffers before it pauses the other side
GREETING_BYTES = 64
NULL_MECHANISM = b"NULL" + bytes(16)
LOOPBACK = "127.0.0.1"

_MORE, _LONG, _COMMAND = 0x01, 0x02, 0x04


def _size(data: bytes, pos: int) -> int:
    """The 8-byte network-order size of a LONG frame whose flags byte is at pos."""
    return int.from_bytes(data[pos + 1 : pos + 9], "big")


class Framing:
    """Reads the kernel-to-harness byte stream as ZMTP 3; says what is wrong, if anything."""

    def __init__(
        self,
        max_message: int = MAX_MESSAGE_BYTES,
        max_frames: int = MAX_FRAMES,
        max_command: int = MAX_COMMAND_BYTES,
    ) -> None:
        self.max_message = max_message
        self.max_frames = max_frames
        self.max_command = max_command
        self._greeting: bytearray | None = bytearray()
        self._head = b""  # a frame header split between two reads
        self._body = 0  # bytes of the current frame body still to come
        self._message = 0  # bytes of the current message so far
        self._frames = 0  # parts of the current message so far
        self.messages = 0  # complete messages seen (for tests and measurements)

    def feed(self, data: bytes) -> str | None:
        """Account for the next bytes from the kernel. A reason to cut, or None."""
        pos, end = 0, len(data)
        if self._greeting is not None:
            pos = min(end, GREETING_BYTES - len(self._greeting))
            self._greeting += data[:pos]
            if len(self._greeting) < GREETING_BYTES:
                return None
            problem = self._check_greeting(bytes(self._greeting))
            self._greeting = None
            if problem:
                return problem
        if self._head:  # a frame header split across reads: complete it first
            head = self._head + data[pos : pos + 9]
            need = 9 if head[0] & _LONG else 2
            if len(head) < need:
                self._head = head
                return None
            pos += need - len(self._head)
            self._head = b""
            problem = self._frame(head[0], head[1] if need == 2 else _size(head, 0))
            if problem:
                return problem
        body = self._body
        while True:
            if body:
                step = min(body, end - pos)
                body -= step
                pos += step
                if body:
                    break
            if pos >= end:
                break
            flags = data[pos]
            if flags & _LONG:
                if end - pos < 9:
                    self._head = data[pos:]
                    break
                size = _size(data, pos)
                pos += 9
            else:
                if end - pos < 2:
                    self._head = data[pos:]
                    break
                size = data[pos + 1]
                pos += 2
            problem = self._frame(flags, size)
            if problem:
                return problem
            body = size
        self._body = body
        return None

    def _frame(self, flags: int, size: int) -> str | None:
        """Account for one frame header; its body (size bytes) is skipped by the caller."""
        self._body = size
        if flags & 0xF8:
            return "the kernel broke the ZeroMQ framing (reserved flag bits set)"
        if flags & _COMMAND:
            if size > self.max_command:
                return f"the kernel sent a ZeroMQ command of {size} bytes"
            return None
        self._message += size
        self._frames += 1
        if self._message > self.max_message:
            return f"the kernel sent a message larger than {self.max_message >> 20} MB"
        if self._frames > self.max_frames:
            return f"the kernel sent a message of more than {self.max_frames} parts"
        if not flags & _MORE:
            self._message = self._frames = 0
            self.messages += 1
        return None

    @staticmethod
    def _check_greeting(greeting: bytes) -> str | None:
        if greeting[0] != 0xFF or not greeting[9] & 0x01 or greeting[10] < 3:
            return "the kernel did not speak ZMTP 3 (the ZeroMQ protocol)"
        if greeting[12:32] != NULL_MECHANISM:
            return "the kernel asked for a ZeroMQ security mechanism the grader does not use"
        return None


class _Side(asyncio.Protocol):
    """One end of a relay: what it receives goes to the other end's transport."""

    def __init__(self, guard: ChannelGuard, framing: Framing | None) -> None:
        self.guard = guard
        self.framing = framing
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        # bytes that came before the other end was there (see `data_received`)
        self.early = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        self.guard.side_made(self)

    def data_received(self, data: bytes) -> None:
        if self.framing is not None:
            problem = self.framing.feed(data)
            if problem:
                self.guard.cut(problem)
                return
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.write(data)
            return
        # The other end is not connected yet. `pause_reading()` in `connection_made` does not
        # hold these bytes back on every Python: in early 3.11 releases (Debian 12's 3.11.2, what
        # a course's venv is made of) the selector transport starts reading anyway, and the
        # ZMTP greeting that came early was lost: both ends then waited for ever (issue 22).
        # Keep them (bounded) until `pair` hands them on.
        self.early += data
        if len(self.early) >= WRITE_HIGH_WATER and self.transport is not None:
            self.transport.pause_reading()

    def pair(self, peer: _Side) -> None:
        """Relay to `peer` from now on, first what arrived before it was there."""
        self.peer = peer
        if self.early and peer.transport is not None:
            peer.transport.write(bytes(self.early))
        self.early.clear()
        if self.transport is not None:
            self.transport.resume_reading()

    def pause_writing(self) -> None:  # our write buffer is full: stop reading the peer
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.guard.side_lost(self)


# A socket: a unix socket's path (the ipc transport), or (host, port) on tcp (the portable
# kernel's transport, `grader.execution.portable`; port 0 when listening: the OS picks one).
Endpoint = str | tuple[str, int]


class ChannelGuard:
    """Relays one channel between the harness's socket (a private unix socket, or a port on
    loopback for a tcp kernel) and the kernel's."""

    def __init__(
        self,
        listen: Endpoint,
        upstream: Endpoint,
        framing: Framing | None = None,
        on_cut: Callable[[str], None] | None = None,
    ) -> None:
        self.listen = listen
        self.upstream = upstream
        self.framing = framing or Framing()
        self.problem: str | None = None
        self._on_cut = on_cut
        self._server: asyncio.AbstractServer | None = None
        self._harness: _Side | None = None
        self._kernel: _Side | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._closed = False

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if isinstance(self.listen, tuple):
            host, port = self.listen
            self._server = await loop.create_server(lambda: _Side(self, None), host, port)
            self.listen = (host, int(self._server.sockets[0].getsockname()[1]))
        else:
            self._server = await loop.create_unix_server(lambda: _Side(self, None), self.listen)

    async def _open_upstream(self, kernel: _Side) -> None:
        loop = asyncio.get_running_loop()
        if isinstance(self.upstream, tuple):
            await loop.create_connection(lambda: kernel, *self.upstream)
        else:
            await loop.create_unix_connection(lambda: kernel, self.upstream)

    def side_made(self, side: _Side) -> None:
        if side.framing is not None:  # the kernel's end: _connect_upstream pairs it
            return
        assert side.transport is not None
        if self._harness is not None or self._closed:
            side.transport.abort()  # one harness connection per kernel: no reconnect after a cut
            return
        self._harness = side
        side.transport.pause_reading()  # until the kernel's end is there to take its bytes
        self._connecting = asyncio.ensure_future(self._connect_upstream(side))

    async def _connect_upstream(self, harness: _Side) -> None:
        """Reach the kernel's socket (it may still be booting); the harness waits meanwhile."""
        kernel = _Side(self, self.framing)
        while not self._closed:
            try:
                await self._open_upstream(kernel)
                break
            except OSError:
                await asyncio.sleep(CONNECT_RETRY)
        if self._closed:
            if kernel.transport is not None:
                kernel.transport.abort()
            return
        self._kernel = kernel
        if harness.transport is None:
            self.close()
            return
        harness.pair(kernel)
        kernel.pair(harness)

    def cut(self, problem: str) -> None:
        """The kernel broke a rule: drop both connections; the harness treats it as broken."""
        if self.problem is None:
            self.problem = problem
            if self._on_cut is not None:
                self._on_cut(problem)
        self.close()

    def side_lost(self, side: _Side) -> None:
        if side is self._harness or side is self._kernel:
            self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
        for side in (self._harness, self._kernel):
            if side is not None and side.transport is not None:
                side.transport.abort()
        if self._server is not None:
            self._server.close()
        if isinstance(self.listen, str):
            with contextlib.suppress(OSError):
                Path(self.listen).unlink()


_swept = False


def _sweep_stale_dirs() -> None:
    """Remove the socket dirs of harnesses that were killed hard (their pid is gone); once."""
    global _swept
    if _swept:
        return
    _swept = True
    for path in Path("/tmp").glob("mbgd-guard-*-*"):
        owner = path.name.split("-")[2]
        if owner.isdigit() and not Path(f"/proc/{owner}").exists():
            shutil.rmtree(path, ignore_errors=True)


class KernelGuard:
    """The guards of one kernel's shell and iopub channels, and the connection info to use.

    The harness's client connects with `connection` (private unix sockets); stdin, control
    and heartbeat are never opened, so they get no guard.
    """

    CHANNELS = ("shell", "iopub")

    def __init__(self, connection: dict[str, object]) -> None:
        self.problem: str | None = None
        self.broken = asyncio.Event()
        self.guards: dict[str, ChannelGuard] = {}
        self.directory: Path | None = None
        self.connection = dict(connection)  # final once started (tcp ports are picked then)
        if connection.get("transport") == "tcp":
            for channel in self.CHANNELS:
                kernel = (str(connection["ip"]), int(str(connection[f"{channel}_port"])))
                self.guards[channel] = ChannelGuard((LOOPBACK, 0), kernel, on_cut=self._cut)
            return
        _sweep_stale_dirs()
        self.directory = Path(tempfile.mkdtemp(prefix=f"mbgd-guard-{os.getpid()}-", dir="/tmp"))
        base = str(self.directory / "g")
        self.connection = {**connection, "transport": "ipc", "ip": base}
        for channel in self.CHANNELS:
            port = connection[f"{channel}_port"]
            upstream = f"{connection['ip']}-{port}"
            self.guards[channel] = ChannelGuard(f"{base}-{port}", upstream, on_cut=self._cut)

    @staticmethod
    def supports(connection: dict[str, object]) -> bool:
        return connection.get("transport") in ("ipc", "tcp")

    def _cut(self, problem: str) -> None:
        if self.problem is None:
            self.problem = problem
            self.broken.set()

    async def start(self) -> None:
        try:
            for channel, guard in self.guards.items():
                await guard.start()
                if isinstance(guard.listen, tuple):
                    host, port = guard.listen
                    self.connection.update({"ip": host, f"{channel}_port": port})
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for guard in self.guards.values():
            guard.close()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
