"""Throughput of grading the solved lab (issue 5): notebooks per minute, memory, phases.

    .venv/bin/python benchmarks/throughput.py [--n 16] [--baseline-n 16] [--notebook PATH]

Three ways over N copies of the same solved notebook, measured in one run:
  (a) serial nbclient, default inline backend, graceful shutdown (how nbgrader autogrades);
  (b) `mbgd-grader grade --jobs 1`, the real command (warm pool, gradebook, reports);
  (c) the same with `--jobs 2`.
For (b) and (c) two rates: the whole command (its one-off start: imports, the warm pool,
the class summary) and the steady rate between the first and the last report written, which
is what a class of hundreds sees. Ratios to (a) use the steady rate. Also printed: peak memory
(RSS and PSS summed over this process and all its descendants: harness, zygote, kernels) and
the mean per-phase seconds of (c), read back from the gradebook.

Then the floor: the same cells exec'd in a plain Python process that has already imported
torch and pyplot (Agg; `plt.show` closes the figures, as ours does): no kernel, no sandbox,
no grading. That is the learner's own work, which no harness can take away; that CPU time
divided by the cores is the best any grader can do, and the last line says what ratio to (a)
that allows.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat
import psutil

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_NOTEBOOK = ROOT / "submissions" / "correct" / "loss20.ipynb"


class MemoryWatch:
    """Samples RSS and PSS of this process tree in the background; keeps the peaks (MB)."""

    def __init__(self, interval: float = 1.0) -> None:
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

    @property
    def peaks(self) -> tuple[float, float]:
        return self.peak_rss, self.peak_pss

    def __enter__(self) -> MemoryWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Row:
    label: str
    n: int
    wall: float  # the whole run
    steady: float  # seconds per notebook once running
    rss: float
    pss: float


def baseline(paths: list[Path]) -> float:
    """(a): nbclient as nbgrader uses it; returns wall seconds for all notebooks."""
    from nbclient import NotebookClient

    started = time.monotonic()
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        NotebookClient(nb, timeout=600, kernel_name="python3", allow_errors=True).execute()
    return time.monotonic() - started


def cli(
    folder: Path, out: Path, jobs: int, env: dict[str, str] | None = None
) -> tuple[float, float, list[dict]]:
    """(b)/(c): the real `mbgd-grader grade`; wall seconds, steady s/notebook, the results."""
    command = [sys.executable, "-m", "grader.cli", "grade", str(folder), "--out", str(out)]
    command += ["--jobs", str(jobs)]
    started = time.monotonic()
    subprocess.run(command, check=True, capture_output=True, cwd=ROOT, env=env)
    wall = time.monotonic() - started
    written = sorted(p.stat().st_mtime for p in out.glob("*/results.json"))
    steady = (written[-1] - written[0]) / (len(written) - 1)
    with sqlite3.connect(out / "gradebook.sqlite") as db:
        results = [json.loads(text) for (text,) in db.execute("SELECT result FROM submissions")]
    return wall, steady, results


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
    """CPU seconds of the notebook's own cells, exec'd `runs` times in one plain process.

    A cell that fails in plain Python (the lab's plot of tensors that require grad, which the
    grader's probe detaches) is cut short, so the floor is, if anything, too low.
    """
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


def phases_of(results: list[dict]) -> dict[str, float]:
    """Mean seconds per phase of the kernel run, plus the grading around it."""
    executions = [r["execution"] for r in results if r.get("execution")]
    names = sorted({k for ex in executions for k in ex["phases"]})
    means = {k: statistics.mean(ex["phases"].get(k, 0.0) for ex in executions) for k in names}
    around = [r["seconds"] - sum(r["execution"]["phases"].values()) for r in results]
    means["grading (load, checks)"] = statistics.mean(around)
    return means


def summary_of(result: dict) -> tuple:
    """What must be identical across modes: score, every check, the graded numbers."""
    loss20 = result["execution"]["variables"].get("LOSS20", {}).get("values")
    checks = tuple((c["id"], c["points"], c["passed"]) for c in result["checks"])
    return result["score"], checks, tuple(loss20 or ())


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
    folder = tmp / "class"
    folder.mkdir()
    data = args.notebook.read_bytes()
    paths = []
    for i in range(max(args.n, args.baseline_n or 0)):
        path = folder / f"copy{i:03d}.ipynb"
        path.write_bytes(data)
        paths.append(path)
    cores = psutil.cpu_count()
    print(f"notebook: {args.notebook}  copies: {args.n}  cores: {cores}")

    rows: list[Row] = []
    if not args.skip_baseline:
        n = args.baseline_n or args.n
        with MemoryWatch() as mem:
            seconds = baseline(paths[:n])
        rows.append(Row("(a) nbclient inline, serial", n, seconds, seconds / n, *mem.peaks))
        print(f"  (a) done: {seconds / n:.1f} s per notebook", flush=True)
    for extra in paths[args.n :]:
        extra.unlink()

    outcomes: dict[int, list[dict]] = {}
    for label, jobs in (("(b) mbgd-grader --jobs 1", 1), ("(c) mbgd-grader --jobs 2", 2)):
        with MemoryWatch() as mem:
            wall, steady, results = cli(folder, tmp / f"out{jobs}", jobs)
        rows.append(Row(label, args.n, wall, steady, *mem.peaks))
        outcomes[jobs] = results
        print(f"  {label} done: {steady:.2f} s per notebook once running", flush=True)

    base = rows[0].steady if not args.skip_baseline else None
    print(
        f"\n{'mode':30} {'N':>3} {'wall s':>7} {'nb/min':>7} {'steady':>7} {'nb/min':>7}"
        f" {'x (a)':>6} {'RSS MB':>7} {'PSS MB':>7}"
    )
    print(f"{'':30} {'':>3} {'(whole run)':>15} {'(s/nb, once running)':>15}")
    for row in rows:
        ratio = f"{base / row.steady:.1f}" if base else "-"
        print(
            f"{row.label:30} {row.n:3d} {row.wall:7.1f} {60 * row.n / row.wall:7.1f}"
            f" {row.steady:7.2f} {60 / row.steady:7.1f} {ratio:>6} {row.rss:7.0f} {row.pss:7.0f}"
        )
    print("\nper-notebook phases of (c), mean seconds:")
    for name, value in phases_of(outcomes[2]).items():
        print(f"  {name:24} {value:7.3f}")
    print(f"  {'imports':24} {0:7.3f}   (done once by the warm parent: in 'whole run' only)")
    kernels = {r["execution"]["kernel"] for r in outcomes[1] + outcomes[2]}
    same = {summary_of(r) for r in outcomes[1] + outcomes[2]}
    print(f"\nkernels used: {', '.join(sorted(kernels))}")
    print(f"identical results across (b) and (c): {'yes' if len(same) == 1 else 'NO'}")

    floor = learner_floor(args.notebook, runs=args.floor_runs)
    mean = statistics.mean(floor)
    print(
        f"\nfloor, the learner's own cells in plain Python: {mean:.2f} s CPU per notebook "
        f"(min {min(floor):.2f}, {len(floor)} runs)"
    )
    best = mean / cores
    line = f"best possible on {cores} cores with a harness that cost nothing: {best:.2f} s/nb"
    if base:
        line += f" = {base / best:.1f}x (a)"
    print(line)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
