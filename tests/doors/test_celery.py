"""Scale-out on real parts: redis-server, two `mbgd-grader worker` processes, one killed.

The killed worker's task must come back (acks_late + Redis visibility timeout) and be graded
by the other worker; the batch must end with every result in its gradebook.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import nbformat
import psutil
import pytest
import redis

from grader.execution.pool import KernelPool
from tests.helpers import ROOT, SUBMISSIONS, cli, db_count, free_port, quick_notebook, read_csv

pytestmark = pytest.mark.slow

VISIBILITY_TIMEOUT = 25  # seconds before a dead worker's task is handed out again
RECEIVED = re.compile(r"Task mbgd_grader\.grade\[([0-9a-f-]+)\] received")
SUCCEEDED = re.compile(r"Task mbgd_grader\.grade\[([0-9a-f-]+)\] succeeded")


def wait_for(condition, timeout: float, what: str, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """Stop a process started in its own session, and everything it started."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(psutil.NoSuchProcess):
        family = psutil.Process(proc.pid).children(recursive=True)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    for child in family:  # kernels live in sessions of their own
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()


@pytest.fixture
def redis_url(tmp_path):
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (Debian package redis-server)")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)

    def up() -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    try:
        wait_for(up, 20, "redis-server")
        yield url
    finally:
        client.close()
        stop(proc)


class Worker:
    def __init__(self, url: str, log: Path) -> None:
        self.log = log
        self.proc = subprocess.Popen(
            [
                *cli(),
                "worker",
                "--broker",
                url,
                "--concurrency",
                "1",
                "--timeout",
                "30",
                "--visibility-timeout",
                str(VISIBILITY_TIMEOUT),
            ],
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def ready(self) -> bool:
        assert self.proc.poll() is None, self.text()[-3000:]
        return " ready." in self.text()

    def received(self) -> set[str]:
        return set(RECEIVED.findall(self.text()))

    def succeeded(self) -> set[str]:
        return set(SUCCEEDED.findall(self.text()))


def test_two_workers_one_killed_every_result_arrives(redis_url, tmp_path):
    folder = tmp_path / "class"
    folder.mkdir()
    variants = ["correct"] * 4 + ["stale_loader"] * 2 + ["crash", "not_json"]
    for k, variant in enumerate(variants):
        (folder / f"{variant}_{k}.ipynb").write_bytes(quick_notebook(variant, f"celery-{k}"))
    # NaN must survive the trip through Celery's JSON and the gradebook.
    shutil.copy(SUBMISSIONS / "hostile" / "nan_loss20.ipynb", folder / "nan_loss20.ipynb")
    # An instructor's rubric (values worth 6, not 5): it travels to the workers as text.
    rubric = tmp_path / "rubric.toml"
    default = (ROOT / "grader" / "grading" / "default_rubric.toml").read_text()
    reweighted = re.sub(r'(id = "loss20.values"\n[^\n]*\npoints = )5', r"\g<1>6", default)
    assert reweighted != default
    rubric.write_text(reweighted)
    out = tmp_path / "reports"
    a = Worker(redis_url, tmp_path / "worker-a.log")
    b = Worker(redis_url, tmp_path / "worker-b.log")
    batch = None
    try:
        wait_for(lambda: a.ready() and b.ready(), 240, "both workers to be ready")
        batch_log = tmp_path / "batch.log"
        batch = subprocess.Popen(
            [*cli(), "grade", str(folder), "--out", str(out), "--broker", redis_url]
            + ["--rubric", str(rubric)],
            stdout=batch_log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

        def a_busy_mid_batch() -> bool:
            assert batch.poll() is None, batch_log.read_text()[-3000:]
            return db_count(out / "gradebook.sqlite") >= 1 and bool(a.received() - a.succeeded())

        wait_for(a_busy_mid_batch, 300, "worker A to hold a task mid-batch")
        lost = a.received() - a.succeeded()
        stop(a.proc, signal.SIGKILL)  # the machine is gone: no goodbye, no ack

        batch.wait(timeout=VISIBILITY_TIMEOUT + 300)
        assert batch.returncode == 0, batch_log.read_text()[-3000:]
    finally:
        for proc in (batch, a.proc, b.proc):
            if proc is not None:
                stop(proc)

    rows = {r["submission"]: r for r in read_csv(out / "gradebook.csv")}
    assert len(rows) == len(variants) + 1 == db_count(out / "gradebook.sqlite")
    nan = rows["nan_loss20"]
    assert (nan["status"], nan["score"], nan["diagnosis"]) == ("graded", "1", "not_finite")
    for k, variant in enumerate(variants):
        row = rows[f"{variant}_{k}"]
        assert row["max_score"] == "11", row
        if variant == "correct":
            assert row["status"] == "graded" and row["score"] == "11", row
            report = json.loads((out / row["feedback"]).with_name("results.json").read_text())
            warm = "warm" if KernelPool.available() else "fresh"  # each worker child's pool
            assert report["extra_data"]["kernel_origin"] == warm, report["extra_data"]
        elif variant == "stale_loader":
            assert row["diagnosis"] == "batch_size_10", row
        elif variant == "crash":
            assert row["diagnosis"] == "no_answer" and row["score"] == "0", row
        else:
            assert row["status"] == "rejected", row
        assert (out / row["feedback"]).is_file()
    # The task the killed worker held was redelivered and graded by the survivor.
    assert lost and lost <= b.succeeded(), (lost, b.text()[-3000:])


def test_a_task_over_its_time_limit_is_a_timeout_result_and_leaves_nothing(redis_url, tmp_path):
    """The limits Celery enforces (not the notebook's own budget) also end as a result."""
    from grader import remote as tasks
    from grader.models import GradeResult
    from grader.pipeline import GradeOptions

    marker = f"mbgd-over-limit-{os.getpid()}"
    slow = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell(
                f"import subprocess, time\nsubprocess.Popen(['sleep', '300', '{marker}'])\n"
                "time.sleep(120)"
            )
        ]
    )
    options = GradeOptions().model_dump_json()  # the notebook may take 60 s per cell
    app = tasks.configure(redis_url)
    worker = Worker(redis_url, tmp_path / "worker.log")
    try:
        wait_for(worker.ready, 240, "the worker to be ready")

        def send(name: str, data: bytes, **limits: int):
            notebook = base64.b64encode(data).decode("ascii")
            args = (name, notebook, options, None)
            return app.send_task(tasks.TASK_NAME, args=args, task_id=name, **limits)

        late = send("too-slow", nbformat.writes(slow).encode(), soft_time_limit=8, time_limit=20)
        result = GradeResult.model_validate(late.get(timeout=120))
        assert result.status == "timeout" and result.score == 0
        assert result.error == "grading took longer than 8 s and was stopped"

        def marker_gone() -> bool:
            procs = psutil.process_iter(["cmdline"])
            return not any(marker in " ".join(p.info["cmdline"] or ()) for p in procs)

        wait_for(marker_gone, 10, "the learner's process to die with its kernel")
        # the worker goes on: the next task is graded as usual
        after = send("after", quick_notebook("correct", "after"))
        graded = GradeResult.model_validate(after.get(timeout=120))
        assert graded.status == "graded" and graded.score == graded.max_score
    finally:
        stop(worker.proc)
