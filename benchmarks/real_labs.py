"""Reuse for real learners (issue 16, item 7): a class of real-looking notebooks, with and without.

    .venv/bin/python benchmarks/real_labs.py FOLDER [--jobs 2] [--cell-timeout 60] [--rounds 1]
                                             [--lab LAB.ipynb ...]

FOLDER holds the class: learners' notebooks of the published lab (any release), kept outside
the repository (no lab text is committed; build them from the published notebooks with
learners' answers filled in). Before anything runs, each notebook is matched against the
known versions (`grader.execution.prefix`: the shipped hashes, plus any `--lab`), which says
what reuse can do for it. Then the real command `mbgd-grader grade --jobs N` grades the
folder twice in this one run, as `benchmarks/throughput.py` does: with `--no-reuse` (every cell
runs in the learner's kernel) and as shipped (kernels forked from a warm parent that already ran
the lab's own cells). `--rounds R` repeats the pair (alternating which goes first) and sums.

Printed: per known version, how many notebooks match it and how many of their cells; the
reuse rate (notebooks whose kernel started from a warm parent, and cells not run again); the
whole-run and steady times of both modes and their ratio (no-reuse / reuse: above 1 is a
speed-up); peak memory; and whether the two modes gave the same grades and the same
Executions (field by field, timing and the reuse marker aside), naming any that differ.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import nbformat
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import MemoryWatch, cli, summary_of

from grader.execution.prefix import LAB_NOTEBOOKS_ENV, match
from grader.submission import notebooks_under

TIMING = {"seconds", "phases", "reused_cells"}


def comparable(execution: dict[str, Any] | None) -> dict[str, Any] | None:
    """An Execution (as stored in the gradebook) without its timing and the reuse marker."""
    if execution is None:
        return None
    data = {k: v for k, v in execution.items() if k not in TIMING}
    data["cells"] = [{k: v for k, v in c.items() if k != "seconds"} for c in data["cells"]]
    return data


def predicted(folder: Path) -> tuple[dict[str, tuple[str, int]], int]:
    """Per notebook (relative path): the known version it starts with and how many cells
    (("-", 0): none, or unreadable); and the number of notebooks."""
    found: dict[str, tuple[str, int]] = {}
    paths = notebooks_under(folder)
    for path in paths:
        name = str(path.relative_to(folder))
        try:
            nb = nbformat.read(path, as_version=4)
        except Exception:  # noqa: BLE001 - not a notebook: the grader rejects it
            found[name] = ("-", 0)
            continue
        sources = [
            str(c.get("source", ""))
            for c in nb.cells
            if c.get("cell_type") == "code" and str(c.get("source", "")).strip()
        ]
        prefix = match(sources)
        found[name] = (prefix.version, len(prefix.cells)) if prefix else ("-", 0)
    return found, len(paths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="the class: learners' notebooks of the lab")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--cell-timeout", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=1, help="pairs of runs, summed")
    parser.add_argument("--lab", type=Path, action="append", default=[], help="as `grade --lab`")
    args = parser.parse_args()
    if not args.folder.is_dir():
        parser.error(f"{args.folder} is not a folder")
    env = None
    if args.lab:
        env = dict(os.environ)
        env[LAB_NOTEBOOKS_ENV] = os.pathsep.join(str(p.resolve()) for p in args.lab)
        os.environ[LAB_NOTEBOOKS_ENV] = env[LAB_NOTEBOOKS_ENV]  # for `predicted` too

    found, n = predicted(args.folder)
    if not n:
        parser.error(f"no notebooks under {args.folder}")
    cores, load = psutil.cpu_count() or 1, psutil.getloadavg()[0]
    print(f"class: {args.folder}  notebooks: {n}  cores: {cores}  load: {load:.1f}")
    versions = Counter(version for version, _ in found.values())
    for version, count in versions.most_common():
        cells = Counter(k for v, k in found.values() if v == version)
        spread = ", ".join(f"{k} cells x{c}" for k, c in sorted(cells.items(), reverse=True))
        print(f"  {version:12} {count:3} notebooks" + (f"  ({spread})" if version != "-" else ""))

    extra = ("--cell-timeout", str(args.cell_timeout))
    modes = {"--no-reuse": ("--no-reuse",), "reuse": ()}
    wall = dict.fromkeys(modes, 0.0)
    steady = dict.fromkeys(modes, 0.0)
    peak = dict.fromkeys(modes, 0.0)
    results: dict[str, list[dict]] = {}
    tmp = Path(tempfile.mkdtemp(prefix="mbgd-real-"))
    try:
        for round_ in range(args.rounds):
            order = list(modes) if round_ % 2 == 0 else list(reversed(modes))
            for mode in order:
                out = tmp / f"out-{round_}-{mode.strip('-')}"
                with MemoryWatch() as mem:
                    w, s, res = cli(
                        args.folder, out, args.jobs, env=env, extra=(*extra, *modes[mode])
                    )
                wall[mode] += w
                steady[mode] += s
                peak[mode] = max(peak[mode], mem.peaks[1])
                results.setdefault(mode, res)
                print(f"  round {round_ + 1} {mode:10} {w:7.1f} s whole run", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    full, reused = results["--no-reuse"], results["reuse"]
    executions = [r["execution"] for r in reused if r.get("execution")]
    forked = [ex for ex in executions if ex.get("reused_cells")]
    cells_run = sum(len(ex["cells"]) for ex in executions)
    cells_reused = sum(len(ex["reused_cells"]) for ex in executions)
    expected = sum(1 for _, k in found.values() if k)
    ran = len(executions)
    print(
        f"\nreuse rate: {len(forked)}/{ran} notebooks run started from a warm parent "
        f"({len(forked) / max(ran, 1):.0%}; {expected} of all {n} match a known version, "
        f"{n - ran} not run: rejected), {cells_reused}/{cells_run} code cells not run again "
        f"({cells_reused / max(cells_run, 1):.0%})"
    )
    missed = sorted(
        r["submission"]
        for r in reused
        if r.get("execution")
        and not r["execution"].get("reused_cells")
        and found.get(f"{r['submission']}.ipynb", ("-", 0))[1]
    )
    for name in missed:  # e.g. more distinct prefixes than the pool keeps warm parents for
        version, k = found[f"{name}.ipynb"]
        print(f"  could reuse {k} cells of {version} but ran in full: {name}")
    rounds = args.rounds
    print(f"{'mode':12} {'s/nb whole run':>15} {'s/nb steady':>12} {'PSS MB':>7}")
    for mode in modes:
        print(
            f"{mode:12} {wall[mode] / rounds / n:15.2f} {steady[mode] / rounds:12.2f}"
            f" {peak[mode]:7.0f}"
        )
    print(
        f"speed ratio (--no-reuse / reuse): {wall['--no-reuse'] / wall['reuse']:.2f}x whole run, "
        f"{steady['--no-reuse'] / steady['reuse']:.2f}x steady"
    )
    same_grades = sorted(map(summary_of, full)) == sorted(map(summary_of, reused))
    print(f"identical scores, checks and LOSS20 with and without reuse: {same_grades}")
    by_name = {r["submission"]: r for r in full}
    differ = [
        r["submission"]
        for r in reused
        if comparable(r.get("execution")) != comparable(by_name[r["submission"]].get("execution"))
    ]
    print(f"identical Executions (timing aside): {n - len(differ)}/{n}")
    for name in differ:
        print(f"  differs: {name}")


if __name__ == "__main__":
    main()
