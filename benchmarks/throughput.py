"""Throughput of grading (issues 5 and 16): whole-run and steady ratios to serial nbclient.

    .venv/bin/python benchmarks/throughput.py [--n 40] [--baseline-n 8] [--notebook PATH]
                                             [--skip-mixed] [--skip-baseline]

Two classes, each measured in this one run, against (a) serial nbclient with its default
inline backend and graceful shutdown (how nbgrader autogrades), timed per notebook:
  - N copies of the solved lab (`--notebook`), and
  - the mixed set: every lab sample in submissions/ (correct, mistakes, broken), with a
    20 s cell timeout on every side (one sample loops forever).
Each class is graded by the real command `mbgd-grader grade --jobs 2` twice: (b) with
`--no-reuse` (every cell runs in the learner's kernel) and (c) as shipped (kernels forked from
a warm parent that already ran the lab's own first cells; issue 16). For (b) and (c) two
rates: the whole command (its start-up: imports, the warm pool, the class summary, included)
and the steady rate between the first and the last report written. Both are printed as
ratios to (a). Also: peak memory (RSS and PSS summed over this process tree), the share of
submissions that reused a prefix, whether (b) and (c) gave identical results, and the mean
per-phase seconds of (c).

Then the floor: the solved lab's cells exec'd in a plain Python process that has already
imported torch and pyplot (Agg; `plt.show` closes the figures): no kernel, no sandbox, no
grading. Without reuse every cell is the learner's work; with reuse only the cells after the
lab's prefix are. That CPU time divided by the cores is the best any grader can do, and the
last lines say what ratio to (a) that allows, both ways.
"""

from __future__ import annotations

import argparse
import contextlib
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


def baseline(paths: list[Path], cell_timeout: int = 600) -> float:
    """(a): nbclient as nbgrader uses it; returns wall seconds for all notebooks.

    A file nbformat cannot read costs nothing here; a notebook whose kernel dies or whose cell
    times out costs what it took until then (nbgrader would move on too)."""
    from nbclient import NotebookClient

    started = time.monotonic()
    for path in paths:
        try:
            nb = nbformat.read(path, as_version=4)
        except Exception:  # noqa: BLE001 - not a notebook: nothing to run
            continue
        client = NotebookClient(nb, timeout=cell_timeout, kernel_name="python3", allow_errors=True)
        with contextlib.suppress(Exception):  # a dead kernel or a cell over its timeout
            client.execute()
    return time.monotonic() - started


def cli(
    folder: Path,
    out: Path,
    jobs: int,
    env: dict[str, str] | None = None,
    extra: tuple[str, ...] = (),
) -> tuple[float, float, list[dict]]:
    """(b)/(c): the real `mbgd-grader grade`; wall seconds, steady s/notebook, the results."""
    command = [sys.executable, "-m", "grader.cli", "grade", str(folder), "--out", str(out)]
    command += ["--jobs", str(jobs), *extra]
    started = time.monotonic()
    subprocess.run(command, check=True, capture_output=True, cwd=ROOT, env=env)
    wall = time.monotonic() - started
    written = sorted(p.stat().st_mtime for p in out.glob("**/results.json"))
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
cells, runs, reused = json.loads(sys.stdin.read())
code = [compile(c, f"cell{i}", "exec") for i, c in enumerate(cells)]
plt.show = lambda *a, **k: plt.close("all")
seconds = []
for _ in range(runs):
    namespace = {"__name__": "__main__"}
    started = time.process_time()
    for i, cell in enumerate(code):
        if i == reused:
            prefix = time.process_time() - started
        try:
            exec(cell, namespace)
        except Exception:
            pass
    plt.close("all")
    total = time.process_time() - started
    seconds.append([total, total - prefix])
print(json.dumps(seconds))
"""


def learner_floor(path: Path, runs: int) -> tuple[list[float], list[float]]:
    """CPU seconds of the notebook's own cells, exec'd `runs` times in one plain process:
    all of them, and only those after the lab prefix a warm parent runs (issue 16).

    A cell that fails in plain Python (the lab's plot of tensors that require grad, which the
    grader's probe detaches) is cut short, so the floor is, if anything, too low.
    """
    from grader.execution.prefix import match

    nb = nbformat.read(path, as_version=4)
    sources = [str(c.source) for c in nb.cells if c.cell_type == "code" and c.source.strip()]
    prefix = match(sources)
    cells = [
        "\n".join(ln for ln in c.splitlines() if not ln.lstrip().startswith(("%", "!")))
        for c in sources
    ]
    done = subprocess.run(
        [sys.executable, "-c", FLOOR_SCRIPT],
        input=json.dumps([cells, runs, len(prefix.cells) if prefix else 0]),
        capture_output=True,
        text=True,
        check=True,
    )
    pairs = json.loads(done.stdout.strip().splitlines()[-1])
    return [p[0] for p in pairs], [p[1] for p in pairs]


def phases_of(results: list[dict]) -> dict[str, float]:
    """Mean seconds per phase of the kernel run, plus the grading around it."""
    executions = [r["execution"] for r in results if r.get("execution")]
    names = sorted({k for ex in executions for k in ex["phases"]})
    means = {k: statistics.mean(ex["phases"].get(k, 0.0) for ex in executions) for k in names}
    around = [
        r["seconds"] - sum(r["execution"]["phases"].values()) for r in results if r.get("execution")
    ]
    means["grading (load, checks)"] = statistics.mean(around)
    return means


def summary_of(result: dict) -> tuple:
    """What must be identical across modes: score, every check, the graded numbers."""
    execution = result.get("execution") or {"variables": {}}  # none: the file was rejected
    loss20 = execution["variables"].get("LOSS20", {}).get("values")
    checks = tuple((c["id"], c["points"], c["passed"]) for c in result["checks"])
    return result["submission"], result["score"], checks, tuple(loss20 or ())


def reuse_share(results: list[dict]) -> float:
    """The share of graded submissions whose kernel started from a warm parent."""
    runs = [r["execution"] for r in results if r.get("execution")]
    return sum(1 for ex in runs if ex.get("reused_cells")) / max(len(results), 1)


def mixed_samples() -> list[Path]:
    """The lab samples (correct, mistakes, broken) as listed in submissions/MANIFEST.toml."""
    import tomllib

    manifest = tomllib.loads((ROOT / "submissions" / "MANIFEST.toml").read_text())["sample"]
    folders = ("correct/", "mistakes/", "broken/")
    return [ROOT / "submissions" / s["path"] for s in manifest if s["path"].startswith(folders)]


def measure(
    name: str, folder: Path, n: int, base: float | None, extra: tuple[str, ...], tmp: Path
) -> list[dict]:
    """(b) and (c) over `folder`; prints one table; returns (c)'s results."""
    rows: list[Row] = []
    outcomes: dict[str, list[dict]] = {}
    for label, flags in (
        ("(b) --jobs 2 --no-reuse", ("--no-reuse",)),
        ("(c) --jobs 2 (reuse)", ()),
    ):
        with MemoryWatch() as mem:
            out = tmp / f"out-{name}-{len(rows)}"
            wall, steady, results = cli(folder, out, 2, extra=(*extra, *flags))
        rows.append(Row(label, n, wall, steady, *mem.peaks))
        outcomes[label] = results
        print(f"  {name} {label} done: {wall / n:.2f} s per notebook, whole run", flush=True)
    print(f"\n{name}: N={n}" + (f", (a) {base:.2f} s per notebook" if base else ""))
    print(
        f"{'mode':26} {'wall s':>7} {'s/nb':>6} {'x (a)':>6} {'steady':>7} {'x (a)':>6}"
        f" {'reused':>7} {'RSS MB':>7} {'PSS MB':>7}"
    )
    print(f"{'':26} {'(whole run)':>20} {'(s/nb, once running)':>21}")
    for row, results in zip(rows, outcomes.values(), strict=True):
        whole = row.wall / row.n
        ratio_w = f"{base / whole:.1f}" if base else "-"
        ratio_s = f"{base / row.steady:.1f}" if base else "-"
        print(
            f"{row.label:26} {row.wall:7.1f} {whole:6.2f} {ratio_w:>6} {row.steady:7.2f}"
            f" {ratio_s:>6} {reuse_share(results):7.0%} {row.rss:7.0f} {row.pss:7.0f}"
        )
    first, second = outcomes.values()
    same = sorted(map(summary_of, first)) == sorted(map(summary_of, second))
    print(f"identical scores, checks and LOSS20 with and without reuse: {'yes' if same else 'NO'}")
    return list(second)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=40, help="copies of the solved lab")
    parser.add_argument("--baseline-n", type=int, default=8, help="copies for (a)")
    parser.add_argument("--notebook", type=Path, default=DEFAULT_NOTEBOOK)
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--skip-mixed", action="store_true", help="only the solved lab")
    parser.add_argument("--floor-runs", type=int, default=8, help="plain-Python runs")
    args = parser.parse_args()
    if not args.notebook.exists():
        parser.error(f"{args.notebook} not found (build it: submissions/build_samples.py)")
    tmp = Path(tempfile.mkdtemp(prefix="mbgd-bench-"))
    folder = tmp / "class"
    folder.mkdir()
    data = args.notebook.read_bytes()
    paths = []
    for i in range(args.n):
        path = folder / f"copy{i:03d}.ipynb"
        path.write_bytes(data)
        paths.append(path)
    cores = psutil.cpu_count() or 1
    load = psutil.getloadavg()[0]
    print(f"notebook: {args.notebook}  copies: {args.n}  cores: {cores}  load: {load:.1f}")

    base = None
    if not args.skip_baseline:
        k = min(args.baseline_n, args.n)
        with MemoryWatch():
            base = baseline(paths[:k]) / k
        print(f"  (a) solved lab: {base:.2f} s per notebook (serial nbclient, {k} copies)")
    results = measure("solved lab", folder, args.n, base, (), tmp)
    print("per-notebook phases of (c), mean seconds:")
    for name, value in phases_of(results).items():
        print(f"  {name:24} {value:7.3f}")

    if not args.skip_mixed:
        mixed = tmp / "mixed"
        samples = mixed_samples()
        for sample in samples:
            target = mixed / sample.relative_to(ROOT / "submissions")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(sample, target)
        mixed_base = None
        if not args.skip_baseline:
            mixed_base = baseline(samples, cell_timeout=20) / len(samples)
            print(f"  (a) mixed set: {mixed_base:.2f} s per notebook (serial nbclient)")
        measure("mixed set", mixed, len(samples), mixed_base, ("--cell-timeout", "20"), tmp)

    total, after = learner_floor(args.notebook, runs=args.floor_runs)
    for label, floor in (("without reuse", total), ("with reuse", after)):
        mean = statistics.mean(floor)
        best = mean / cores
        line = (
            f"floor {label:13}: the learner's cells in plain Python take {mean:.2f} s CPU "
            f"(min {min(floor):.2f}, {len(floor)} runs): {best:.2f} s/nb on {cores} cores"
        )
        if base:
            line += f" = {base / best:.0f}x (a)"
        print(line)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
