"""What several test modules share: paths, the samples' manifest, notebook builders, the
CLI, and probes of the sandbox. The one place a test module imports helpers from; fixtures
stay in conftest.py, data helpers in lab_replica.py and numpy_twin.py (see tests/README.md).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import nbformat
import psutil
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from grader.grading.rubric import Rubric, default_rubric_text, parse_rubric
from grader.models import (
    Axes,
    CellRun,
    Execution,
    Figure,
    GradeResult,
    KernelFate,
    Line,
    Variable,
)
from reference import METHODS, expected, make_data, mistake_variants

ROOT = Path(__file__).resolve().parents[1]  # the checkout
SUBMISSIONS = ROOT / "submissions"

# -- the samples' manifest (submissions/MANIFEST.toml) ---------------------------------------

MANIFEST: list[dict] = tomllib.loads((SUBMISSIONS / "MANIFEST.toml").read_text())["sample"]


def verdict_holds(verdict: str, passed: bool, points: float, max_points: float) -> bool:
    """pass / fail / partial (failed, some points) / any (0-point checks that may go either way)."""
    if verdict == "any":
        return max_points == 0
    if verdict == "partial":
        return not passed and 0 < points < max_points
    return passed == (verdict == "pass")


LAB_SAMPLE_FOLDERS = ("correct/", "mistakes/", "broken/")
# Hostile samples a learner could plausibly hand in: the learners' door is tested on them too.
HOSTILE_FOR_LEARNERS = (
    "hostile/xss_labels.ipynb",
    "hostile/hard_coded.ipynb",
    "hostile/nan_loss20.ipynb",
    "hostile/zip_notebook.ipynb",
    "hostile/invalid_utf8.ipynb",
)


def lab_samples() -> list[dict]:
    return [s for s in MANIFEST if s["path"].startswith(LAB_SAMPLE_FOLDERS)]


def learner_samples() -> list[dict]:
    """What the shared CLI run grades: the lab samples plus the learner-like hostile ones."""
    return lab_samples() + [s for s in MANIFEST if s["path"] in HOSTILE_FOR_LEARNERS]


@dataclass
class GradedSamples:
    """`learner_samples()` graded by `mbgd-grader grade` (the instructors' door), once."""

    folder: Path  # the copies that were graded
    out: Path  # the CLI's output folder
    returncode: int
    log: str
    results: dict[str, GradeResult]  # manifest path -> result

    def report(self, path: str) -> dict:
        """results.json of one sample, as the CLI wrote it."""
        return json.loads((self.out / path.removesuffix(".ipynb") / "results.json").read_text())


# -- notebooks -------------------------------------------------------------------------------

PLOT = """\
plt.plot(LOSS_BGD, label = "Batch Gradient Descent")
plt.plot(LOSS_SGD, label = "Stochastic Gradient Descent")
plt.plot(LOSS_MINI5, label = "Mini-Batch Gradient Descent, Batch size: 5")
plt.plot(LOSS_MINI10, label = "Mini-Batch Gradient Descent, Batch size: 10")
plt.plot(LOSS20, label = "Mini-Batch Gradient Descent, Batch size: 20")
plt.legend()
plt.show()
"""


# The same lab in float64 numpy on the lab's data (embedded: torch is not imported), so a
# notebook runs in about a second; the grader's tolerance accepts float64 against float32.
QUICK_SETUP = """\
import numpy as np
import matplotlib.pyplot as plt
X = np.array({x})
Y = np.array({y})
F = 1 * X - 1  # the lab's Data class trains on the line, not on the noisy Y
lr = 0.1

def mse(w, b, x, y):
    return float(np.mean((w * x + b - y) ** 2))

def step(w, b, x, y):
    r = w * x + b - y
    return w - lr * float(np.mean(2 * r * x)), b - lr * float(np.mean(2 * r))

def minibatch(size, w=-15.0, b=-10.0):
    losses = []
    for epoch in range(10):
        losses.append(mse(w, b, X, Y))
        for i in range(0, 60, size):
            w, b = step(w, b, X[i:i + size], F[i:i + size])
    return losses, w, b

w, b = -15.0, -10.0
LOSS_BGD = []
for epoch in range(10):
    LOSS_BGD.append(mse(w, b, X, Y))
    w, b = step(w, b, X, Y)
LOSS_SGD = minibatch(1)[0]
LOSS_MINI5 = minibatch(5)[0]
LOSS_MINI10, w10, b10 = minibatch(10)
"""

QUICK_LOSS20 = {
    "correct": "LOSS20 = minibatch(20)[0]",
    "no_plot": "LOSS20 = minibatch(20)[0]",
    "stale_loader": "LOSS20 = minibatch(10)[0]",
    "weights_not_reset": "LOSS20 = minibatch(20, w10, b10)[0]",
    "crash": "LOSS20 = []\nraise RuntimeError('learner code crashed here')",
}


def quick_notebook(variant: str, tag: str) -> bytes:
    """A short learner notebook of one variant; `tag` varies a comment (and the hash)."""
    if variant == "not_json":
        return f"this is not a notebook ({tag})\n".encode()
    data = make_data(1)
    setup = QUICK_SETUP.format(x=data.X.flatten().tolist(), y=data.Y.flatten().tolist())
    cells = [f"# submission {tag}\n" + setup, QUICK_LOSS20[variant]]
    if variant != "no_plot":
        cells.append(PLOT)
    nb = new_notebook(cells=[new_code_cell(c) for c in cells])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    return nbformat.writes(nb).encode()


# -- running the CLI -------------------------------------------------------------------------


def cli() -> list[str]:
    script = Path(sys.executable).with_name("mbgd-grader")
    return [str(script)] if script.exists() else [sys.executable, "-m", "grader.cli"]


def grade_cli(*args: str, timeout: float = 600, env: dict | None = None):
    return subprocess.run(
        [*cli(), "grade", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def db_count(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return conn.execute("SELECT COUNT(*) FROM submissions").fetchone()[0]
    except sqlite3.OperationalError:  # created but the table is not there yet
        return 0


# -- kernels and the sandbox -----------------------------------------------------------------


def children_left() -> list[psutil.Process]:
    """Our live child processes, but for multiprocessing's resource tracker: the batch's report
    writer (tested elsewhere in this session) starts one that lives as long as we do."""
    left = []
    for proc in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if proc.status() != "zombie" and "resource_tracker" not in " ".join(proc.cmdline()):
                left.append(proc)
    return left


class Listener:
    """A TCP listener on the host's loopback that records every connection it accepts."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[object] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, addr = self.sock.accept()
            except TimeoutError:
                continue
            self.accepted.append(addr)
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.sock.close()


def probe_cells(port: int, secret_files: list[Path]) -> dict[str, str]:
    """name -> source; every cell should fail (or assert) if a wall is missing."""
    return {
        "control": "import os\nassert os.environ['MPLBACKEND'] == 'Agg'\nOK = [1]",
        "loopback": (
            "import socket\n"
            f"socket.create_connection(('127.0.0.1', {port}), timeout=3).close()\n"
            "REACHED = [1]"
        ),
        "interfaces": "import socket\nassert [n for _, n in socket.if_nameindex()] == ['lo']",
        **{
            f"read_{i}": f"SECRET_{i} = list(open({str(path)!r}, 'rb').read())"
            for i, path in enumerate(secret_files)
        },
        "env": (
            "import os\n"
            "leaks = [k for k in os.environ if k.startswith(('MBGD', 'JPY'))]\n"
            "assert not leaks, leaks\n"
            "assert os.environ['HOME'] == os.getcwd()"
        ),
        "uid": "import os\nassert os.getuid() != 0 and os.geteuid() != 0\nUID = [os.getuid()]",
        "write_system": "open('/usr/mbgd-owned', 'w')",
        "write_workdir": "open('mine.txt', 'w').write('x' * 100)\nWROTE = [1]",
        "file_size": "open('big.bin', 'wb').write(b'0' * (9 << 20))",
        "disk_full": ("for i in range(4):\n    open(f'part{i}.bin', 'wb').write(b'0' * (7 << 20))"),
        "tmp_full": (
            "for i in range(4):\n    open(f'/tmp/part{i}.bin', 'wb').write(b'0' * (7 << 20))"
        ),
        "host_dir": ("import os\nopen(os.path.join(os.path.dirname(os.getcwd()), 'x.bin'), 'wb')"),
        "processes": (
            "import os\nPIDS = [int(p) for p in os.listdir('/proc') if p.isdigit()]\n"
            "assert len(PIDS) < 10, PIDS"
        ),
        "rlimits": (
            "import resource\n"
            "LIMITS = [resource.getrlimit(getattr(resource, n))[0] for n in "
            "('RLIMIT_AS', 'RLIMIT_FSIZE', 'RLIMIT_CPU', 'RLIMIT_NPROC', 'RLIMIT_NOFILE')]"
        ),
        "userns": (
            "import ctypes, os\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            "assert libc.unshare(0x10000000 | 0x00020000) == 0, os.strerror(ctypes.get_errno())\n"
            "NEWUSER = [1]"
        ),
        "memory": "import numpy as np\nHOG = np.ones(2 * 1024**3 // 8)",
    }


# -- hand-built Executions, for the grading rules without kernels ----------------------------

LEGEND_LABELS = {  # the labels the lab notebook gives its five lines
    "LOSS_BGD": "Batch Gradient Descent",
    "LOSS_SGD": "Stochastic Gradient Descent",
    "LOSS_MINI5": "Mini-Batch Gradient Descent, Batch size: 5",
    "LOSS_MINI10": "Mini-Batch Gradient Descent, Batch size: 10",
    "LOSS20": "Mini-Batch Gradient Descent, Batch size: 20",
}


def variable(name: str, values: list[float], cell: int | None = 1) -> Variable:
    """A list the probe found in the kernel's globals."""
    return Variable(name=name, type_name="list", values=list(values), length=len(values), cell=cell)


def comparison_axes(
    curves: dict[str, list[float]], labels: dict[str, str] | None = None, legend: bool = True
) -> Axes:
    """One axes with a line per curve, labelled as the lab does unless `labels` says otherwise."""
    labels = LEGEND_LABELS if labels is None else labels
    lines = [Line(label=labels.get(n, ""), x=list(range(len(y))), y=y) for n, y in curves.items()]
    shown = [line.label for line in lines if line.label] if legend else []
    return Axes(xlabel="epoch", ylabel="loss", legend=shown, lines=lines)


def lab_execution(
    seed: int = 1,
    variables: dict[str, list[float]] | None = None,
    figures: list[Figure] | None = None,
    cells: list[CellRun] | None = None,
    fate: KernelFate = "ok",
) -> Execution:
    """What a correct lab notebook leaves behind (its five lists, X and Y, one figure of all
    five methods with a legend), with `variables`, `figures` or `cells` replaced."""
    want = expected(seed=seed)
    if variables is None:
        data = make_data(seed)
        variables = {name: want[name] for name in METHODS}
        variables |= {"X": data.X.flatten().tolist(), "Y": data.Y.flatten().tolist()}
    if figures is None:
        figures = [Figure(cell=2, axes=[comparison_axes(want)])]
    if cells is None:
        cells = [CellRun(index=i, status="ok") for i in range(3)]
    return Execution(
        fate=fate,
        sandbox="hand-built",
        cells=cells,
        figures=figures,
        variables={name: variable(name, values) for name, values in variables.items()},
    )


# -- per-check visibility (tests/reports, tests/grading) ---------------------------------------


def rubric_with(**visibility: str) -> Rubric:
    """The default rubric with some checks' visibility set (check id -> visibility)."""
    text = default_rubric_text()
    for check_id, value in visibility.items():
        anchor = f'id = "{check_id}"\n'
        assert anchor in text
        text = text.replace(anchor, f'{anchor}visibility = "{value}"\n')
    return parse_rubric(text)


_WANT = expected()
# Pairs of notebooks that differ in one check only: (check id, passing Execution, failing one)
WRONG_LOSS20 = {**_WANT, "LOSS20": mistake_variants()["batch_size_10"]}
PAIRS = {
    "loss20.values": (lab_execution(), lab_execution(variables=WRONG_LOSS20)),
    "notebook.runs": (
        lab_execution(),
        lab_execution(
            cells=[
                CellRun(index=0, status="ok"),
                CellRun(
                    index=1,
                    status="error",
                    error_name="NameError",
                    error_value="name 'oops' is not defined",
                    traceback="Traceback (most recent call last):\nNameError: oops",
                ),
                CellRun(index=2, status="ok"),
            ]
        ),
    ),
    "plot.legend": (
        lab_execution(),
        lab_execution(figures=[Figure(cell=2, axes=[comparison_axes(_WANT, legend=False)])]),
    ),
}


# -- course platforms (tests/platforms) --------------------------------------------------------


EXECUTION_TIMING = {"seconds", "phases"}  # timing fields of an Execution, and of each cell run


def comparable(execution: Execution) -> dict:
    """The Execution without its timing fields and the reuse marker (`reused_cells`): what
    must be the same whether a run started from a warm parent or ran every cell."""
    data = execution.model_dump(exclude=EXECUTION_TIMING | {"reused_cells"})
    for cell in data["cells"]:
        del cell["seconds"]
    return data


SYSTEM_PYTHON = os.environ.get("MBGD_SYSTEM_PYTHON", "/usr/bin/python3")


def system_python() -> str:
    """The distribution's own Python, what courses make their venvs of (Gradescope's
    setup.sh, the Coursera image, `make PYTHON=/usr/bin/python3`): issue 22 found the grader
    grading nobody there. Its venvs borrow the tested dependencies (`install_for_real`), so
    it must be the same minor version as this one. Missing in CI: a failure, not a skip."""
    found = (
        subprocess.run(
            [SYSTEM_PYTHON, "-c", "import sys; print(*sys.version_info[:2])"],
            capture_output=True,
            text=True,
            check=False,
        )
        if os.access(SYSTEM_PYTHON, os.X_OK)
        else None
    )
    problem = ""
    if found is None or found.returncode != 0:
        problem = f"{SYSTEM_PYTHON} cannot run (install Debian's python3)"
    elif found.stdout.split() != [str(n) for n in sys.version_info[:2]]:
        problem = f"{SYSTEM_PYTHON} is Python {found.stdout.strip()}, the tests run on another"
    if problem and os.environ.get("CI"):
        pytest.fail(problem)
    if problem:
        pytest.skip(problem)
    return SYSTEM_PYTHON


def install_for_real(wheel: Path, venv: Path, python: str = sys.executable) -> Path:
    """A fresh venv of `python` with `wheel` installed by pip, as a course's image installs
    it; offline, so its dependencies are this environment's tested ones, reached through a
    `.pth` line (a path in a .pth is not a site dir: the checkout's editable finder stays
    out). Returns the venv's `mbgd-grader`."""
    subprocess.run([python, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next(venv.glob("lib/python3*/site-packages"))
    tested = next(p for p in map(Path, sys.path) if p.name == "site-packages" and p.is_dir())
    (site / "zz_tested_dependencies.pth").write_text(f"{tested}\n")
    pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python")]
    subprocess.run([*pip, "install", "--quiet", "--no-deps", "--no-index", str(wheel)], check=True)
    return venv / "bin" / "mbgd-grader"


@contextlib.contextmanager
def mountpoints(*paths: str):
    """bwrap makes the mount points it binds to in the real root (/autograder, /shared,
    /opt/mbgd); remove the ones it made (empty) afterwards."""
    made = [Path(p) for p in paths if not os.path.lexists(p)]
    try:
        yield
    finally:
        for path in reversed(made):
            with contextlib.suppress(OSError):
                path.rmdir()


def tree_memory_peak_mb(proc: subprocess.Popen, every: float = 0.1) -> Callable[[], int]:
    """Start sampling the proportional set size (shared pages split among their users, so a
    sum that counts each page once) of `proc` and all its descendants; the returned call
    stops and gives the peak in MB."""
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(proc.pid)
            while not stop.is_set() and proc.poll() is None:
                total = 0
                for member in [root, *root.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):
                        total += member.memory_full_info().pss
                peak[0] = max(peak[0], total >> 20)
                stop.wait(every)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()

    def done() -> int:
        stop.set()
        thread.join()
        return peak[0]

    return done


def markdown_text(markdown: str) -> str:
    """What a reader sees of results.json's Markdown once rendered (CommonMark, as Gradescope's
    `output_format: "md"`), tags removed: the grader's escapes undone."""
    import html
    import re

    from markdown_it import MarkdownIt

    return html.unescape(re.sub(r"<[^>]+>", "", MarkdownIt().render(markdown))).strip()


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a door's process (a crash), then reap the kernels it orphaned (test hygiene)."""
    children = psutil.Process(proc.pid).children(recursive=True)
    proc.kill()
    proc.wait(10)
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.kill()


# A learner cell that hunts for the grader's secrets (MBGD_* variables) in its own
# environment and in every process it can read; it raises with whatever it found.
SECRET_HUNTER = """import glob, os
found = [repr({k: v for k, v in os.environ.items() if k.startswith("MBGD")})]
for path in glob.glob("/proc/*/environ"):
    try:
        data = open(path, "rb").read()
    except OSError:
        continue
    if b"MBGD_" in data:
        found.append(data.decode("latin-1"))
raise RuntimeError("LEAK " + " ".join(found))
"""


def free_port() -> int:
    """A loopback port free right now (for a server the test starts next)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServeProcess:
    """`mbgd-grader serve` as a subprocess on a loopback port, ready when /healthz answers.

    `args` are the command's options besides --port and --db; `env` is added to this
    process's environment (the secrets and knobs each test file sets)."""

    def __init__(
        self, db: Path, log: Path, *, port: int, args: list[str], env: dict[str, str]
    ) -> None:
        self.db, self.log_path, self.port = db, log, port
        self.base = f"http://127.0.0.1:{port}"
        cmd = [*cli(), "serve", "--port", str(port), "--db", f"sqlite:///{db}", *args]
        self.log = log.open("ab")
        self.proc = subprocess.Popen(
            cmd, env={**os.environ, **env}, stdout=self.log, stderr=subprocess.STDOUT
        )
        self._wait_ready(90)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"service exited early:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base}/healthz", timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        raise AssertionError(f"service not ready in {timeout} s:\n{self.log_tail()}")

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def health(self) -> dict:
        return httpx.get(f"{self.base}/healthz", timeout=10).json()

    def kill9(self) -> None:
        """SIGKILL the service; then reap the kernels it orphaned (test hygiene only)."""
        kill_tree(self.proc)
        self.log.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill9()
                return
        self.log.close()
