"""Issue 12, without kernels: what a kernel sends costs the harness bounded memory and CPU.

- the ZMTP guard's framing reader (`grader.execution.zmtp_guard.Framing`) and a relay between
  real zmq sockets, a thread playing the kernel;
- nbclient keeps no comm, widget or output state in the grader's client;
- the probe reader enforces the probe's caps again, plus caps on everything kept per run;
- the answer search is linear, `evaluate` is fast at the caps and runs off the event loop.
The same bounds against real kernels are in tests/execution/test_runner.py.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from pathlib import Path

import nbformat
import pytest
import zmq
import zmq.asyncio
from hypothesis import given, settings
from hypothesis import strategies as st
from nbformat.v4 import new_code_cell, new_notebook

import grader.pipeline
from grader.execution.kernel_client import CellClient
from grader.execution.probe_reader import (
    CACHED_RECORD_BYTES,
    MAX_AXES,
    MAX_FIGURE_LINES,
    MAX_FIGURE_VALUES,
    MAX_LINES,
    MAX_VALUES,
    ProbeReader,
    new_mime,
)
from grader.execution.zmtp_guard import MAX_MESSAGE_BYTES, Framing, KernelGuard
from grader.grading.checks import evaluate, find_answer
from grader.grading.compare import Tolerance, find_window, starts_with
from grader.grading.rubric import load_rubric
from grader.models import Axes, CellRun, Execution, Figure, Line, Variable
from grader.submission import load
from reference import expected

WANT = expected()["LOSS20"]
TOL = Tolerance(1e-4, 1e-9)

# ---- the ZMTP framing reader -----------------------------------------------------------------

GREETING = b"\xff" + bytes(8) + b"\x7f" + b"\x03\x01" + b"NULL" + bytes(16) + b"\x00" + bytes(31)


def frame(body: bytes, *, more: bool = False, command: bool = False, long: bool = False) -> bytes:
    flags = (1 if more else 0) | (4 if command else 0)
    if long or len(body) > 255:
        return bytes([flags | 2]) + len(body).to_bytes(8, "big") + body
    return bytes([flags, len(body)]) + body


def message(*parts: bytes) -> bytes:
    return b"".join(frame(p, more=i < len(parts) - 1) for i, p in enumerate(parts))


def test_framing_counts_messages_however_the_bytes_are_split() -> None:
    stream = GREETING + frame(b"\x05READY" + bytes(20), command=True)
    stream += message(b"topic", b"<IDS|MSG>", b"x" * 300, b"{}") + message(b"y" * 1000)
    stream += frame(b"z", long=True)
    for step in (1, 2, 7, 9, 64, len(stream)):
        framing = Framing()
        for start in range(0, len(stream), step):
            assert framing.feed(stream[start : start + step]) is None
        assert framing.messages == 3, step


def test_framing_cuts_a_message_over_the_cap_before_it_arrives_whole() -> None:
    framing = Framing(max_message=1000)
    assert framing.feed(GREETING + frame(b"a" * 600, more=True)) is None
    # the next header alone announces the excess: no body byte of it has to arrive
    problem = framing.feed(bytes([3]) + (600).to_bytes(8, "big"))
    assert problem == "the kernel sent a message larger than 0 MB"
    assert "larger than 17 MB" in (
        Framing().feed(GREETING + bytes([2]) + (2**60).to_bytes(8, "big")) or ""
    )
    assert MAX_MESSAGE_BYTES == 17 << 20


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (GREETING + frame(b"", more=True) * 5 + frame(b""), "more than 4 parts"),
        (GREETING + bytes([0x08, 0]), "reserved flag bits"),
        (GREETING + frame(b"x" * 70_000, command=True), "ZeroMQ command of 70000 bytes"),
        (b"\x01\x00" + bytes(62), "did not speak ZMTP 3"),  # ZMTP 1.0: no signature
        (GREETING[:10] + b"\x01" + GREETING[11:], "did not speak ZMTP 3"),  # ZMTP 2.0
        (GREETING[:12] + b"CURVE" + bytes(15) + GREETING[32:], "security mechanism"),
    ],
)
def test_framing_refuses_what_is_not_plain_zmtp3(data: bytes, problem: str) -> None:
    assert problem in (Framing(max_frames=4).feed(data) or "")


def _kernel_side(path: str, plan: list[list[bytes]], ready: threading.Event) -> None:
    """A kernel's iopub: XPUB bound on path, sends each message of plan without copying."""
    context = zmq.Context()
    socket = context.socket(zmq.XPUB)
    socket.bind(f"ipc://{path}")
    socket.setsockopt(zmq.RCVTIMEO, 10_000)
    socket.recv()  # the harness's subscription
    ready.set()
    for parts in plan:
        socket.send_multipart(parts, copy=False)
    time.sleep(1)
    socket.close(linger=0)
    context.term()


def test_the_guard_relays_small_messages_and_cuts_a_huge_multipart(tmp_path: Path) -> None:
    big = bytes(4 << 20)
    plan = [[b"topic", b"%d" % i] for i in range(200)] + [[big] * 8] + [[b"after"]]

    async def run() -> tuple[list[list[bytes]], str | None, bool]:
        connection = {
            "transport": "ipc",
            "ip": str(tmp_path / "k"),
            "shell_port": 1,
            "iopub_port": 2,
        }
        guard = KernelGuard(connection)
        await guard.start()
        context = zmq.asyncio.Context()
        sub = context.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(f"ipc://{guard.connection['ip']}-2")
        await asyncio.sleep(0.1)  # the kernel has not bound yet: the guard keeps trying
        ready = threading.Event()
        kernel = threading.Thread(target=_kernel_side, args=(str(tmp_path / "k-2"), plan, ready))
        kernel.start()
        got = []
        try:
            while True:
                got.append(await asyncio.wait_for(sub.recv_multipart(), 1))
        except TimeoutError:
            pass
        assert guard.directory is not None  # ipc: the guard's sockets live in a dir of its own
        problem, refused = guard.problem, not (guard.directory / "g-2").exists()
        guard.close()
        sub.close(linger=0)
        context.term()
        kernel.join()
        return got, problem, refused

    assert 8 * len(big) > MAX_MESSAGE_BYTES
    got, problem, refused = asyncio.run(run())
    assert got == [[b"topic", b"%d" % i] for i in range(200)]  # all small ones, in order
    assert problem == "the kernel sent a message larger than 17 MB"
    assert refused  # the listening socket is gone: zmq cannot reconnect around the cut


# ---- nbclient keeps nothing ------------------------------------------------------------------


def test_the_client_keeps_no_comm_widget_or_output_state() -> None:
    reader = ProbeReader(new_mime())
    nb = new_notebook(cells=[new_code_cell("x = 1")])
    client = CellClient(nb, reader, km=None, allow_errors=True, timeout=None)
    cell = nb.cells[0]
    cell.outputs = []
    state = {"_model_module": "@jupyter-widgets/output", "_model_name": "OutputModel", "v": 1}
    for msg_type in ("comm_open", "comm_msg"):
        content = {
            "comm_id": "c1",
            "target_name": "jupyter.widget",
            "data": {"state": state, "buffer_paths": [["v"]]},
            "execution_count": 7,
        }
        msg = {"msg_type": msg_type, "content": content, "buffers": [b"x" * 1000]}
        msg["header"] = {"msg_type": msg_type}
        client.process_message(msg, cell, 0)
    record = json.dumps({"kind": "variables", "set": {}, "deleted": []})
    client.process_message(
        {
            "msg_type": "display_data",
            "header": {"msg_type": "display_data"},
            "parent_header": {"msg_id": "p"},
            "content": {"data": {reader.mime: record}, "metadata": {}, "transient": {}},
        },
        cell,
        0,
    )
    client.process_message(
        {"msg_type": "clear_output", "parent_header": {"msg_id": "p"}, "content": {"wait": False}},
        cell,
        0,
    )
    assert client.widget_state == {} and client.widget_buffers == {}
    assert client.comm_objects == {} and cell.outputs == []
    assert "execution_count" not in cell or cell.execution_count is None
    assert reader.finish() == []  # the record was read, not dropped


# ---- the probe reader's caps ------------------------------------------------------------------


def _figure_record(axes: int = 1, lines: int = 1, values: int = 10, label: str = "l") -> str:
    line = {"label": label, "x": [], "y": [1.5] * values}
    ax = {"title": label, "legend": [label], "lines": [line] * lines}
    return json.dumps({"kind": "figure", "axes": [ax] * axes})


def _feed(reader: ProbeReader, text: str, cell: int = 1) -> None:
    reader.feed({"msg_type": "display_data", "content": {"data": {reader.mime: text}}}, cell)


def test_probe_reader_enforces_the_probe_caps_and_run_totals() -> None:
    reader = ProbeReader(new_mime())
    _feed(reader, _figure_record(axes=MAX_AXES + 1))
    _feed(reader, _figure_record(lines=MAX_LINES + 1))
    _feed(reader, _figure_record(values=MAX_VALUES + 1))
    too_long = {"L": {"type_name": "list", "values": [1.0] * (MAX_VALUES + 1), "length": 1}}
    _feed(reader, json.dumps({"kind": "variables", "set": too_long, "deleted": []}))
    assert reader.figures == [] and reader.variables == {}
    _feed(reader, _figure_record(lines=MAX_LINES, values=MAX_VALUES, label="x" * 5000))
    kept = reader.figures[0].axes[0]
    assert len(kept.lines) == MAX_LINES and len(kept.title) == 500
    assert len(kept.lines[0].label) == 500 and len(kept.legend[0]) == 500
    # 50 lines of 10,000 values per figure: the run's value total is reached after 2 figures
    for _ in range(3):
        _feed(reader, _figure_record(lines=MAX_LINES, values=MAX_VALUES))
    assert len(reader.figures) == MAX_FIGURE_VALUES // (MAX_LINES * MAX_VALUES)
    # empty lines cost no values, but the run's line total holds
    for _ in range(8):
        _feed(reader, _figure_record(axes=MAX_AXES, lines=MAX_LINES, values=0))
    assert sum(len(a.lines) for f in reader.figures for a in f.axes) <= MAX_FIGURE_LINES
    assert reader.finish()[0].endswith("probe record(s) were malformed or too large and ignored")


def test_records_a_class_repeats_are_read_alike_into_models_of_their_own() -> None:
    """The same record text in two runs (the lab's own figures, a replayed prefix) is decoded
    once, but each run gets its own models: changing one run's does not touch the other's."""
    variables = {"L": {"type_name": "list", "values": [1.0, math.nan, math.inf], "length": 3}}
    records = [
        _figure_record(lines=2, values=240, label="data"),
        json.dumps({"kind": "variables", "set": variables, "deleted": []}),
    ]
    first, second = ProbeReader(new_mime()), ProbeReader(new_mime())
    for reader, cell in ((first, 3), (second, 7)):
        for text in records:
            _feed(reader, "".join(text), cell)  # a new string each time, as from a message
    assert first.figures[0].axes == second.figures[0].axes
    assert (first.figures[0].cell, second.figures[0].cell) == (3, 7)
    first.figures[0].axes[0].lines[0].y[0] = -1.0
    first.variables["L"].values.append(2.0)
    assert second.figures[0].axes[0].lines[0].y[0] == 1.5
    assert second.variables["L"].values[:1] == [1.0] and len(second.variables["L"].values) == 3
    assert first.finish() == second.finish() == []
    # a cached record is still held to the caps of the run that receives it
    record = _figure_record(axes=10, lines=MAX_LINES, values=0)
    assert len(record) <= CACHED_RECORD_BYTES  # decoded once, read 12 times
    small = ProbeReader(new_mime())
    for _ in range(12):
        _feed(small, record)
    assert len(small.figures) == MAX_FIGURE_LINES // (10 * MAX_LINES) and small.finish()


# ---- the answer search and evaluate -------------------------------------------------------------


def naive_find_window(got: list[float], want: list[float], tol: Tolerance) -> int | None:
    """The former implementation (quadratic: a slice per offset), as the specification."""
    for offset in range(0, len(got) - len(want) + 1):
        if starts_with(got[offset:], want, tol):
            return offset
    return None


special = st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0, 1e308, -1e308])
values = st.lists(st.one_of(st.sampled_from(WANT[:4]), special, st.floats()), max_size=40)


@settings(max_examples=300, deadline=None)
@given(values, st.lists(st.one_of(st.sampled_from(WANT[:4]), special), min_size=0, max_size=4))
def test_find_window_agrees_with_the_former_implementation(got, want) -> None:
    got = [*got[:7], *want, *got[7:]] if len(got) % 2 else got  # often plant the window
    assert find_window(got, want, TOL) == naive_find_window(got, want, TOL)


def test_find_window_is_fast_on_near_misses() -> None:
    near_miss = (WANT[:9] + [12345.0]) * 1000  # every tenth offset matches 9 of 10 values
    started = time.perf_counter()
    for _ in range(200):
        assert find_window(near_miss, WANT, TOL) is None
    assert time.perf_counter() - started < 2.0  # was about 0.1 s per call
    assert find_window([*near_miss, *WANT], WANT, TOL) == len(near_miss)


def capped_execution() -> Execution:
    """As much as the probe reader lets through, all of it near-misses of the reference."""
    near = (WANT[:9] + [12345.0]) * (MAX_VALUES // 10)
    variables = {
        f"V{i}": Variable(name=f"V{i}", type_name="list", values=near, length=len(near))
        for i in range(200)
    }
    curves = [Line(y=values[:9] + [1.0]) for values in expected().values()] * 10
    full = Figure(cell=1, axes=[Axes(lines=curves)] + [Axes() for _ in range(MAX_AXES - 1)])
    figures = [full] * (MAX_FIGURE_LINES // MAX_LINES)
    figures += [Figure(cell=1, axes=[Axes()] * MAX_AXES)] * (500 - len(figures))
    cells = [CellRun(index=0, status="ok")]
    return Execution(fate="ok", sandbox="x", cells=cells, variables=variables, figures=figures)


def test_evaluate_is_fast_at_the_caps() -> None:
    execution, rubric = capped_execution(), load_rubric()
    evaluate(execution, rubric)  # the reference's caches
    started = time.perf_counter()
    result = evaluate(execution, rubric)
    assert time.perf_counter() - started < 3.0  # 24 s before the search was made linear
    assert result.answer_name is None and result.score == 0


def test_answers_are_found_by_alias_value_and_window_as_before() -> None:
    rubric = load_rubric()

    def var(name: str, values: list[float]) -> Variable:
        return Variable(name=name, type_name="list", values=values, length=len(values))

    by_value = find_answer({"mine": var("mine", [*WANT, 1.0])}, rubric, WANT)
    assert by_value.name == "mine" and not by_value.by_alias
    window = find_answer({"LOSS_MINI10": var("LOSS_MINI10", [9.0, 8.0, *WANT])}, rubric, WANT)
    assert window.window == ("LOSS_MINI10", 2) and window.name is None
    alias = find_answer({"LOSS20": var("LOSS20", [1.0])}, rubric, WANT)
    assert alias.name == "LOSS20" and alias.by_alias


def test_the_pipeline_evaluates_off_the_event_loop(monkeypatch) -> None:
    threads: dict[str, int] = {}

    async def fake_execute(nb, limits, seed_override=None, pool=None, reuse=True):
        threads["loop"] = threading.get_ident()
        return Execution(fate="ok", sandbox="x", cells=[CellRun(index=0, status="ok")])

    def spy(execution, rubric):
        threads["evaluate"] = threading.get_ident()
        return evaluate(execution, rubric)

    monkeypatch.setattr(grader.pipeline, "execute_async", fake_execute)
    monkeypatch.setattr(grader.pipeline, "evaluate", spy)
    nb = nbformat.writes(new_notebook(cells=[new_code_cell("x = 1")])).encode()
    result = asyncio.run(
        grader.pipeline.grade_submission(load(nb, "n"), grader.pipeline.GradeOptions())
    )
    assert result.status == "graded" and threads["evaluate"] != threads["loop"]
