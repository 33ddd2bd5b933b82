"""Run the sample notebooks and compare what they produce with MANIFEST.toml.

    MPLBACKEND=Agg .venv/bin/python submissions/check_samples.py [PATH-or-glob ...]
    .venv/bin/python submissions/check_samples.py --pipeline      # through grader.pipeline

Default mode runs each notebook with plain nbclient plus a small stand-in for the grader's
probe (figures recorded as data at plt.show() and after each cell, tensors detached for
plotting, JSON-able number lists read back at the end), then scores it with the real
`grader.grading.checks.evaluate` and the default rubric. It also checks every mistake sample's
LOSS20 against `reference.mistake_variants()` (relative 1e-3). `--pipeline` grades with
`grader.pipeline.grade` instead (sandboxed; needs grader.execution.runner).

Hostile samples are skipped unless `--pipeline --hostile`: some are fork and memory bombs
that must only ever run inside the grader's sandbox.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import os
import shutil
import sys
import time
import tomllib
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from grader.grading.checks import evaluate  # noqa: E402
from grader.models import CellRun, Execution, Figure, GradeResult, Variable  # noqa: E402
from grader.grading.rubric import load_rubric  # noqa: E402
from grader.submission import SubmissionError, load  # noqa: E402
from reference import mistake_variants  # noqa: E402

MARK = "@@CHECK_SAMPLES@@"
PRELUDE = r"""
import json as _cs_json, math as _cs_math
import matplotlib as _cs_mpl
_cs_mpl.use("Agg")
import matplotlib.pyplot as _cs_plt
import matplotlib.axes as _cs_axes
import numpy as _cs_np
_cs_figures = []

def _cs_floats(data):
    try:
        return [float(v) for v in _cs_np.asarray(data, dtype=float).ravel()][:5000]
    except Exception:
        return []

def _cs_record(cell):
    for number in _cs_plt.get_fignums():
        figure = _cs_plt.figure(number)
        axes = []
        for ax in figure.axes:
            legend = ax.get_legend()
            axes.append({
                "title": ax.get_title(), "xlabel": ax.get_xlabel(), "ylabel": ax.get_ylabel(),
                "legend": [t.get_text() for t in legend.get_texts()] if legend else [],
                "lines": [{"label": "" if l.get_label().startswith("_") else l.get_label(),
                           "x": _cs_floats(l.get_xdata()), "y": _cs_floats(l.get_ydata())}
                          for l in ax.get_lines()],
            })
        _cs_figures.append({"cell": cell, "axes": axes})
    _cs_plt.close("all")

_cs_show_cell = [-1]
_cs_plt.show = lambda *a, **k: _cs_record(_cs_show_cell[0])
_cs_plot = _cs_axes.Axes.plot

def _cs_detach(value):
    if hasattr(value, "detach"):
        return value.detach()
    if isinstance(value, list):
        return [_cs_detach(v) for v in value]
    return value

def _cs_safe_plot(self, *args, **kwargs):
    return _cs_plot(self, *[_cs_detach(a) for a in args], **kwargs)

_cs_axes.Axes.plot = _cs_safe_plot
"""
DUMP = (
    f"_CS_MARK = {MARK!r}\n"
    r"""
def _cs_dump():
    out = {}
    for name, value in list(globals().items()):
        if name.startswith("_") or isinstance(value, type):
            continue
        try:
            type_name = type(value).__name__
            if hasattr(value, "detach"):
                value = value.detach().numpy()
            if isinstance(value, (list, tuple)):
                flat = [float(v.item() if hasattr(v, "item") else v) for v in value]
            elif type(value).__name__ == "ndarray":
                flat = [float(v) for v in value.ravel()]
            else:
                continue
            out[name] = {"type_name": type_name, "values": flat[:5000], "length": len(flat)}
        except Exception:
            pass
    print(_CS_MARK + _cs_json.dumps({"variables": out, "figures": _cs_figures}))
_cs_dump()
"""
)


def record_cell(index: int) -> nbformat.NotebookNode:
    return nbformat.v4.new_code_cell(f"_cs_show_cell[0] = {index + 1}\n_cs_record({index})")


def run_plain(path: Path, timeout: int) -> tuple[GradeResult, dict[str, Variable]]:
    """nbclient + the stand-in probe, scored by grader.grading.checks."""
    submission = load(path)
    nb = submission.notebook
    staged = nbformat.v4.new_notebook(metadata=nb.metadata)
    staged.cells.append(nbformat.v4.new_code_cell(PRELUDE + "\n_cs_show_cell[0] = 0"))
    origin: dict[int, int] = {}
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        origin[len(staged.cells)] = index
        staged.cells.append(nbformat.v4.new_code_cell(cell.source))
        staged.cells.append(record_cell(index))
    staged.cells.append(nbformat.v4.new_code_cell(DUMP))
    client = NotebookClient(
        staged,
        timeout=timeout,
        allow_errors=True,
        interrupt_on_timeout=True,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    started = time.monotonic()
    client.execute()
    cells = []
    for staged_index, index in origin.items():
        errors = [o for o in staged.cells[staged_index].outputs if o.output_type == "error"]
        if errors:
            status = "timeout" if errors[0].ename == "KeyboardInterrupt" else "error"
            cells.append(
                CellRun(
                    index=index,
                    status=status,
                    error_name=errors[0].ename,
                    error_value=errors[0].evalue[:200],
                )
            )
        else:
            cells.append(CellRun(index=index, status="ok"))
    text = "".join(o.get("text", "") for o in staged.cells[-1].outputs)
    dumped = (
        json.loads(text.split(MARK, 1)[1]) if MARK in text else {"variables": {}, "figures": []}
    )
    variables = {
        name: Variable(name=name, type_name=v["type_name"], values=v["values"], length=v["length"])
        for name, v in dumped["variables"].items()
    }
    execution = Execution(
        fate="ok",
        sandbox="none (check_samples stand-in probe)",
        cells=cells,
        figures=[Figure.model_validate(f) for f in dumped["figures"]],
        variables=variables,
        seconds=round(time.monotonic() - started, 2),
    )
    result = evaluate(execution, load_rubric())
    result.submission = path.stem
    return result, variables


def run_pipeline(path: Path, hostile: bool) -> GradeResult:
    from grader.pipeline import GradeOptions, grade
    from grader.execution.limits import RunLimits

    # Hostile samples include fork and memory bombs: never without bubblewrap.
    options = GradeOptions(limits=RunLimits(require_sandbox=hostile))
    return grade(path, options=options)


def compare(entry: dict, result: GradeResult, variables: dict[str, Variable] | None) -> list[str]:
    """What differs between the manifest's expectation and this result."""
    problems = []
    if result.status != entry["status"]:
        problems.append(f"status {result.status} != {entry['status']}")
    if not math.isclose(result.score, entry["score"], abs_tol=1e-6):
        problems.append(f"score {result.score} != {entry['score']}")
    if result.status in ("graded", "timeout") and entry.get("checks"):
        got = {c.id: "pass" if c.passed else "fail" for c in result.checks}
        for check_id, want in entry["checks"].items():
            if want not in ("partial", "any") and got.get(check_id) != want:
                problems.append(f"{check_id} {got.get(check_id)} != {want}")
    if "answer_name" in entry and result.answer_name != (entry["answer_name"] or None):
        problems.append(f"answer_name {result.answer_name} != {entry['answer_name']}")
    if "integrity" in entry and result.integrity != entry["integrity"]:
        problems.append(f"integrity {result.integrity} != {entry['integrity']}")
    values_check = next((c for c in result.checks if c.id == "loss20.values"), None)
    if "diagnosis" in entry and values_check is not None:
        got_diagnosis = values_check.diagnosis if not values_check.passed else ""
        if got_diagnosis != entry["diagnosis"]:
            problems.append(f"diagnosis {got_diagnosis!r} != {entry['diagnosis']!r}")
    variants = mistake_variants()
    if variables is not None and entry.get("diagnosis") in variants:
        answer = variables.get(entry.get("answer_name") or "LOSS20")
        variant = variants[entry["diagnosis"]]
        if (
            answer is None
            or len(answer.values) < len(variant)
            or not all(
                math.isclose(g, w, rel_tol=1e-3)
                for g, w in zip(answer.values, variant, strict=False)
            )
        ):
            problems.append(f"LOSS20 does not match mistake variant {entry['diagnosis']}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("patterns", nargs="*", help="manifest paths or globs (default: all)")
    parser.add_argument("--pipeline", action="store_true", help="grade with grader.pipeline")
    parser.add_argument("--hostile", action="store_true", help="include hostile (--pipeline)")
    parser.add_argument("--timeout", type=int, default=60, help="per-cell seconds (plain mode)")
    args = parser.parse_args(argv)
    os.environ.setdefault("MPLBACKEND", "Agg")
    manifest = tomllib.loads((HERE / "MANIFEST.toml").read_text())["sample"]
    failures = 0
    for entry in manifest:
        path = HERE / entry["path"]
        if args.patterns and not any(fnmatch.fnmatch(entry["path"], p) for p in args.patterns):
            continue
        if "hostile" in entry and not (args.pipeline and args.hostile):
            continue
        if "generate" in entry:
            continue  # generated at test time by the lead's end-to-end test
        if "hostile" in entry and not shutil.which("bwrap"):
            print(f"skip {entry['path']}: hostile samples need bubblewrap")
            continue
        started = time.monotonic()
        variables = None
        try:
            if args.pipeline:
                result = run_pipeline(path, "hostile" in entry)
            else:
                result, variables = run_plain(path, args.timeout)
        except SubmissionError as error:
            result = GradeResult(
                submission=path.stem, status="rejected", score=0, max_score=10, error=error.message
            )
        problems = compare(entry, result, variables)
        failures += bool(problems)
        verdict = "ok  " if not problems else "FAIL"
        seconds = time.monotonic() - started
        print(
            f"{verdict} {entry['path']:45} {result.status:8} {result.score:5} "
            f"{seconds:5.1f}s {'; '.join(problems)}",
            flush=True,
        )
        if problems:
            for check in result.checks:
                print(f"       {check.id}: {check.passed} {check.diagnosis} {check.message[:150]}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
