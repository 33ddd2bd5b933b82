"""What the per-kernel cgroup and the seccomp filter cost (issue 12): same class, with and without.

    .venv/bin/python benchmarks/isolation.py [--n 12] [--rounds 2] [--notebook PATH]

Runs the real `mbgd-grader grade --jobs 2` over N copies of the solved lab, alternating
"without" (MBGD_CGROUPS=0 MBGD_SECCOMP=0: bubblewrap and rlimits only, as before) and "with"
(the default), `--rounds` times each, interleaved so that the machine's drift hits both
alike. Prints the steady seconds per notebook (between the first and the last report
written) and the whole-run seconds of each run, then the ratio of the medians: the cost of
the added isolation per notebook.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import DEFAULT_NOTEBOOK, cli

MODES = {
    "without": {"MBGD_CGROUPS": "0", "MBGD_SECCOMP": "0"},
    "with": {},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=12, help="copies of the notebook per run")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each mode")
    parser.add_argument("--notebook", type=Path, default=DEFAULT_NOTEBOOK)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mbgd-bench-iso-"))
    folder = tmp / "class"
    folder.mkdir()
    for i in range(args.n):
        (folder / f"copy{i:03d}.ipynb").write_bytes(args.notebook.read_bytes())
    steady: dict[str, list[float]] = {mode: [] for mode in MODES}
    whole: dict[str, list[float]] = {mode: [] for mode in MODES}
    for round_ in range(args.rounds):
        for mode, extra in MODES.items():
            out = tmp / f"out-{mode}-{round_}"
            wall, per_notebook, results = cli(folder, out, 2, env={**os.environ, **extra})
            sandboxes = {r["execution"]["sandbox"] for r in results}
            steady[mode].append(per_notebook)
            whole[mode].append(wall / args.n)
            print(
                f"  {mode:8} round {round_ + 1}: {per_notebook:.3f} s/nb steady, "
                f"{wall / args.n:.3f} s/nb whole run; sandbox: {', '.join(sorted(sandboxes))}",
                flush=True,
            )
    print(f"\n{'':8} {'steady s/nb':>12} {'whole s/nb':>11}   (medians of {args.rounds} runs)")
    for mode in MODES:
        middle, overall = statistics.median(steady[mode]), statistics.median(whole[mode])
        print(f"{mode:8} {middle:12.3f} {overall:11.3f}")
    cost = statistics.median(steady["with"]) / statistics.median(steady["without"]) - 1
    cost_whole = statistics.median(whole["with"]) / statistics.median(whole["without"]) - 1
    print(f"\nisolation cost per notebook: {cost:+.1%} steady, {cost_whole:+.1%} whole run")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
