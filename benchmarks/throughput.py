"""Throughput of grading the solved lab (issue 5): notebooks per minute, memory, phases.

    .venv/bin/python benchmarks/throughput.py [--n 16] [--baseline-n 16] [--notebook PATH]

Three ways over N copies of the same solved notebook:
  (a) serial nbclient, default inline backend, graceful shutdown (how nbgrader autogrades);
  (b) our grading (`grader.pipeline.grade_async`, warm pool) one notebook at a time;
  (c) the same with 2 concurrent jobs.
Prints rates, ratios to (a), the peak memory (RSS and PSS summed over this process and all
its descendants: harness, zygote, kernels) and the mean per-phase seconds of (c). The warm
pool's one-off start is reported separately; it is paid once per worker, not per notebook.

Then the floor: the same cells exec'd in a plain Python process that has already imported
torch and pyplot (Agg; `plt.show` closes the figures, as ours does): no kernel, no sandbox,
no grading. That is the learner's own work, which no harness can take away; half of it per
notebook is the best any grader can do on two cores, and the last line says what ratio to (a)
that allows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import nbformat
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from grader.pool import KernelPool, set_default_pool  # noqa: E402
from grader.run import RunLimits, execute_async  # noqa: E402

DEFAULT_NOTEBOOK = ROOT / "submissions" / "correct" / "loss20.ipynb"


class MemoryWatch:
    """Samples RSS and PSS of this process tree in the background; keeps the peaks (MB)."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.peak_rss = 0.0
        self.peak_pss = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            rss = pss = 0
            for proc in [me, *me.children(recursive=True)]:
                try:
                    info = proc.memory_full_info()
                except psutil.Error:
                    continue
                rss += info.rss
                pss += getattr(info, "pss", info.rss)
            self.peak_rss = max(self.peak_rss, rss / 2**20)
            self.peak_pss = max(self.peak_pss, pss / 2**20)
            self._stop.wait(self.interval)

    def __enter__(self) -> MemoryWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def baseline(paths: list[Path]) -> float:
    """(a): nbclient as nbgrader uses it; returns wall seconds for all notebooks."""
    from nbclient import NotebookClient

    started = time.monotonic()
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        NotebookClient(nb, timeout=600, kernel_name="python3", allow_errors=True).execute()
    return time.monotonic() - started


async def ours(paths: list[Path], jobs: int) -> tuple[float, list]:
    """(b)/(c): grade with `jobs` concurrent notebooks; returns wall seconds and results."""
    try:
        from grader.pipeline import grade_async
    except ImportError:  # the pipeline is not there yet: execution only
        grade_async = None
    gate = asyncio.Semaphore(jobs)
    limits = RunLimits()

    async def one(path: Path):
        async with gate:
            if grade_async is not None:
                return await grade_async(str(path))
            return await execute_async(nbformat.read(path, as_version=4), limits)

    started = time.monotonic()
    results = await asyncio.gather(*(one(p) for p in paths))
    return time.monotonic() - started, list(results)


FLOOR_SCRIPT = r"""
import json, sys, time
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy, torch, torch.utils.data
from mpl_toolkits import mplot3d
cells, runs = json.loads(sys.stdin.read())
code = [compile(c, f"cell{i}", "exec") for i, c in enumerate(cells)]
plt.show = lambda *a, **k: plt.close("all")
seconds = []
for _ in range(runs):
    namespace = {"__name__": "__main__"}
    started = time.process_time()
    for cell in code:
        try:
            exec(cell, namespace)
        except Exception:
            pass
    plt.close("all")
    seconds.append(time.process_time() - started)
print(json.dumps(seconds))
"""


def learner_floor(path: Path, runs: int) -> list[float]:
    """CPU seconds of the notebook's own cells, exec'd `runs` times in one plain process."""
    nb = nbformat.read(path, as_version=4)
    cells = [
        "\n".join(ln for ln in c.source.splitlines() if not ln.lstrip().startswith(("%", "!")))
        for c in nb.cells
        if c.cell_type == "code"
    ]
    done = subprocess.run(
        [sys.executable, "-c", FLOOR_SCRIPT],
        input=json.dumps([cells, runs]),
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def phases_of(results: list) -> dict[str, float]:
    executions = [getattr(r, "execution", r) for r in results]
    names = sorted({k for ex in executions if ex for k in ex.phases})
    return {k: statistics.mean(ex.phases.get(k, 0.0) for ex in executions if ex) for k in names}


def summary_of(result) -> tuple:
    """What must be identical across modes: score and the graded numbers."""
    ex = getattr(result, "execution", result)
    loss20 = ex.variables.get("LOSS20") if ex else None
    return (getattr(result, "score", None), tuple(loss20.values) if loss20 else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=16, help="copies for (b) and (c)")
    parser.add_argument("--baseline-n", type=int, default=None, help="copies for (a); default N")
    parser.add_argument("--notebook", type=Path, default=DEFAULT_NOTEBOOK)
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--floor-runs", type=int, default=8, help="plain-Python runs")
    args = parser.parse_args()
    if not args.notebook.exists():
        parser.error(f"{args.notebook} not found (build it: submissions/build_samples.py)")
    tmp = Path(tempfile.mkdtemp(prefix="mbgd-bench-"))
    data = args.notebook.read_bytes()
    paths = []
    for i in range(max(args.n, args.baseline_n or 0)):
        path = tmp / f"copy{i:03d}.ipynb"
        path.write_bytes(data)
        paths.append(path)
    cores = psutil.cpu_count()
    print(f"notebook: {args.notebook.relative_to(ROOT)}  copies: {args.n}  cores: {cores}")

    rows: list[tuple[str, int, float, float, float]] = []
    if not args.skip_baseline:
        n = args.baseline_n or args.n
        with MemoryWatch() as mem:
            seconds = baseline(paths[:n])
        rows.append(("(a) nbclient inline, serial", n, seconds, mem.peak_rss, mem.peak_pss))
        print(f"  (a) done: {seconds / n:.1f} s per notebook", flush=True)

    pool = KernelPool()
    started = time.monotonic()
    pool.start()
    pool_start = time.monotonic() - started
    set_default_pool(pool)
    outcomes = {}
    try:
        for label, jobs in (("(b) ours, 1 job", 1), ("(c) ours, 2 jobs", 2)):
            with MemoryWatch() as mem:
                seconds, results = asyncio.run(ours(paths[: args.n], jobs))
            rows.append((label, args.n, seconds, mem.peak_rss, mem.peak_pss))
            outcomes[jobs] = results
            print(f"  {label} done: {seconds / args.n:.2f} s per notebook", flush=True)
    finally:
        set_default_pool(None)
        pool.close()

    base_rate = 60 * rows[0][1] / rows[0][2] if not args.skip_baseline else None
    print(f"\nwarm pool start (once per worker): {pool_start:.1f} s\n")
    print(
        f"{'mode':32} {'N':>3} {'wall s':>8} {'nb/min':>8} {'x (a)':>7} {'RSS MB':>8} {'PSS MB':>8}"
    )
    for label, n, seconds, rss, pss in rows:
        rate = 60 * n / seconds
        ratio = f"{rate / base_rate:.1f}" if base_rate else "-"
        print(f"{label:32} {n:3d} {seconds:8.1f} {rate:8.1f} {ratio:>7} {rss:8.0f} {pss:8.0f}")
    print("\nper-notebook phases of (c), mean seconds:")
    for name, value in phases_of(outcomes[2]).items():
        print(f"  {name:14} {value:7.3f}")
    same = {summary_of(r) for r in outcomes[1] + outcomes[2]}
    print(f"\nidentical results across (b) and (c): {'yes' if len(same) == 1 else 'NO'} {same}")

    floor = learner_floor(args.notebook, runs=args.floor_runs)
    mean = statistics.mean(floor)
    print(
        f"\nfloor, the learner's own cells in plain Python: {mean:.2f} s CPU per notebook "
        f"(min {min(floor):.2f}, {len(floor)} runs)"
    )
    best = mean / cores
    line = f"best possible on {cores} cores with a harness that cost nothing: {best:.2f} s/nb"
    if base_rate:
        line += f" = {(rows[0][2] / rows[0][1]) / best:.1f}x (a)"
    print(line)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
