"""Harness CPU per notebook that is not the learner's (issue 16): reports and the message path.

    .venv/bin/python benchmarks/harness_cpu.py [--n 6] [--notebook PATH] [--baseline-rev REV]

Grades the solved lab once for real (warm pool, sandbox where available) to get a real
GradeResult and the probe records its kernel sent, then measures, in this one process and
run, each change against the way it was done before (CPU seconds, `time.process_time`):

  picture    the feedback picture: matplotlib PNG as drawn before (the module at
             --baseline-rev, read with `git show`) against the SVG drawn now;
  page       the whole feedback page (feedback_html) now;
  hand-over  what the batch pickles to the report-writer process: the whole result as
             before, the result without the kernel's figures and variables now;
  records    the probe records of one run read by a ProbeReader: decoding every record
             (before; the decode cache cleared for each run) against decoding each distinct
             record once per process (now);
  harness    N copies graded one after another in this process: CPU of the event-loop
             thread and of the whole harness process per notebook, and the wall time from
             asking for a kernel to the probe in place, for the record (no baseline: what
             is left there is spread thin, see below).

Tried and not kept: waiting on shell and iopub together (a zmq Poller) instead of the
message loops' timed polls of each channel in turn measured the same event-loop CPU (41 vs
44 ms per notebook, interleaved, same run): the timed polls cost nothing worth changing.

Timings on a shared machine are noisy: ratios are of medians over repeats, measured together.
"""

from __future__ import annotations

import argparse
import asyncio
import pickle
import statistics
import subprocess
import time
import types
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_NOTEBOOK = ROOT / "submissions" / "correct" / "loss20.ipynb"
BASELINE_REV = "6a369fd"  # the last commit that drew the picture with matplotlib


def cpu(fn: Callable[[], object], repeat: int) -> float:
    """Median CPU seconds of one call."""
    times = []
    for _ in range(repeat):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times)


def baseline_module(path: str, rev: str) -> types.ModuleType | None:
    """The module at `path` as it was at `rev`, loaded as a module of its own (it imports
    today's modules for what it uses); None without git or that revision."""
    try:
        source = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{rev}:{path}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        print(f"  (no baseline for {path}: git show {rev} failed: {error})")
        return None
    module = types.ModuleType(f"baseline_{Path(path).stem}")
    exec(compile(source, f"{rev}:{path}", "exec"), module.__dict__)
    return module


def line(name: str, before: float | None, after: float, unit: str = "ms") -> None:
    scale = 1000 if unit == "ms" else 1
    text = f"  {name:<11}"
    if before is not None:
        ratio = before / after if after > 0 else float("inf")
        text += f"before {before * scale:9.2f} {unit}   now {after * scale:9.3f} {unit}"
        text += f"   {ratio:7.1f}x less"
    else:
        text += f"now {after * scale:9.2f} {unit}"
    print(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=6, help="notebooks graded for the last line")
    parser.add_argument("--notebook", type=Path, default=DEFAULT_NOTEBOOK)
    parser.add_argument("--baseline-rev", default=BASELINE_REV)
    args = parser.parse_args()

    from grader.execution import probe_reader
    from grader.execution.pool import warm_pool
    from grader.models import GradeResult
    from grader.pipeline import GradeOptions, grade_async
    from grader.reports.feedback import feedback_html
    from grader.reports.plot import curves_svg
    from grader.reports.writer import for_reports

    source = args.notebook.read_bytes()
    records: list[str] = []
    feed = probe_reader.ProbeReader.feed

    def recording_feed(self: probe_reader.ProbeReader, msg: dict, cell: int) -> None:
        records.append(msg["content"]["data"][self.mime])
        feed(self, msg, cell)

    with warm_pool() as pool:

        async def one(name: str) -> GradeResult:
            return await grade_async(source, name, GradeOptions(), pool=pool)

        probe_reader.ProbeReader.feed = recording_feed  # type: ignore[method-assign]
        try:
            result = asyncio.run(one("first"))
        finally:
            probe_reader.ProbeReader.feed = feed  # type: ignore[method-assign]

        print(
            f"{args.notebook.name}: score {result.score}/{result.max_score}, "
            f"{len(records)} probe records ({sum(map(len, records)) / 1e3:.0f} kB)"
        )
        label = f"your {result.answer_name}" if result.answer_name else None
        old = baseline_module("grader/reports/plot.py", args.baseline_rev)
        if old is not None:
            old.curves_png(result.learner_curves, result.reference_curves, label)  # warm up
        curves_svg(result.learner_curves, result.reference_curves, label)
        svg = cpu(lambda: curves_svg(result.learner_curves, result.reference_curves, label), 20)
        png = (
            cpu(lambda: old.curves_png(result.learner_curves, result.reference_curves, label), 5)
            if old is not None
            else None
        )
        print("per notebook, CPU (median):")
        line("picture", png, svg)
        line("page", None, cpu(lambda: feedback_html(result), 20))
        slim = for_reports(result)
        line(
            "hand-over",
            cpu(lambda: pickle.dumps(result), 20),
            cpu(lambda: pickle.dumps(for_reports(result)), 20),
        )
        print(
            f"  {'':<11}pickled: {len(pickle.dumps(result)) / 1e3:.0f} kB before, "
            f"{len(pickle.dumps(slim)) / 1e3:.1f} kB now"
        )

        def read(cold: bool) -> None:
            if cold:
                probe_reader._decode_cached.cache_clear()
            reader = probe_reader.ProbeReader("m")
            for text in records:
                reader.feed({"msg_type": "display_data", "content": {"data": {"m": text}}}, 1)

        read(cold=False)
        line("records", cpu(lambda: read(cold=True), 20), cpu(lambda: read(cold=False), 20))

        async def many() -> tuple[float, float, list[float]]:
            thread, process, waits = time.thread_time(), time.process_time(), []
            for k in range(args.n):
                graded = await one(f"copy{k}")
                if graded.execution is not None:
                    phases = graded.execution.phases
                    waits.append(phases.get("probe", 0.0) + phases.get("kernel_start", 0.0))
            return time.thread_time() - thread, time.process_time() - process, waits

        loop_cpu, harness_cpu, waits = asyncio.run(many())
        print(f"{args.n} solved-lab copies graded one after another in this process, per notebook:")
        line("event loop", None, loop_cpu / args.n)
        line("harness", None, harness_cpu / args.n)
        line("wait", None, statistics.median(waits))
        print("  (harness: every thread of this process, the kernel's CPU is not in it;")
        print("   wait: wall time from asking for a kernel to the probe in place, median)")


if __name__ == "__main__":
    main()
