"""The instructors' door: `mbgd-grader grade FOLDER` on real notebooks and real kernels.

The bulk of the notebooks are the lab's arithmetic without its slow figure-drawing helper
(`lab_notebook` below), so that grading 40 of them twice stays within the test budget; a few
real samples from `submissions/` are mixed in. Expected numbers come from `reference`.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import math
import os
import shutil
import signal
import sqlite3
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import nbformat
import psutil
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from grader.batch import BatchError, discover
from grader.gradebook import Gradebook
from grader.grading.integrity import derive_seed
from grader.models import Curve, GradeResult, Item
from reference import expected
from tests.helpers import (
    PLOT,
    SUBMISSIONS,
    cli,
    db_count,
    grade_cli,
    quick_notebook,
    read_csv,
)
from tests.lab_replica import BGD, DATA_CLASS, SETUP, loader_run

# -- notebooks -------------------------------------------------------------------------------


def lab_notebook(variant: str, tag: str) -> bytes:
    """The lab's arithmetic (`tests.lab_replica`, no plot_error_surfaces) with one learner
    variant; `tag` varies a comment so every copy has its own content hash."""
    if variant == "not_json":
        return f"this is not a notebook ({tag})\n".encode()
    cells = [f"# submission {tag}\nSEED = 1\nEPOCHS = 10\nimport matplotlib.pyplot as plt"]
    cells += [SETUP, BGD, DATA_CLASS]
    cells += [loader_run("LOSS_SGD", 1), loader_run("LOSS_MINI5", 5), loader_run("LOSS_MINI10", 10)]
    if variant in ("correct", "no_plot"):
        cells.append(loader_run("LOSS20", 20))
    elif variant == "stale_loader":
        cells.append(loader_run("LOSS20", 20, new_loader=False))
    elif variant == "weights_not_reset":
        cells.append(loader_run("LOSS20", 20, reset=False))
    elif variant == "crash":
        cells.append("LOSS20 = []\nraise RuntimeError('learner code crashed here')")
    elif variant == "copied":  # seed-1 numbers smuggled in: no literals in the source
        blob = base64.b64encode(json.dumps(expected()["LOSS20"]).encode()).decode()
        cells.append(f'import base64, json\nLOSS20 = json.loads(base64.b64decode("{blob}"))')
    else:
        raise ValueError(variant)
    if variant != "no_plot":
        cells.append(PLOT)
    nb = new_notebook(cells=[new_code_cell(c) for c in cells])
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    return nbformat.writes(nb).encode()


MIX = {  # variant -> copies in the 40-notebook folder
    "correct": 12,
    "no_plot": 6,
    "stale_loader": 6,
    "weights_not_reset": 6,
    "crash": 6,
    "not_json": 2,
}
REAL_SAMPLES = ["correct/loss20.ipynb"]


def make_folder(root: Path) -> Path:
    """40 submissions: short lab notebooks of every kind, two real samples, one hostile name."""
    root.mkdir(parents=True, exist_ok=True)
    n = 0
    for variant, copies in MIX.items():
        for k in range(copies):
            sub = root / ("mistakes" if variant in ("stale_loader", "weights_not_reset") else "")
            sub.mkdir(exist_ok=True)
            notebook = quick_notebook(variant, f"{variant}-{k}")
            (sub / f"{variant}_{k:02d}.ipynb").write_bytes(notebook)
            n += 1
    for sample in REAL_SAMPLES:
        source = SUBMISSIONS / sample
        if source.exists():
            (root / "real").mkdir(exist_ok=True)
            shutil.copy(source, root / "real" / source.name)
            n += 1
    # A learner whose file name is a spreadsheet formula.
    (root / "=HYPERLINK(1).ipynb").write_bytes(quick_notebook("correct", "formula"))
    n += 1
    while n < 40:
        (root / f"extra_{n}.ipynb").write_bytes(quick_notebook("correct", f"extra-{n}"))
        n += 1
    return root


def verdicts(rows: list[dict[str, str]]) -> dict[str, tuple]:
    """What must not depend on how the run went: everything but timings."""
    return {r["submission"]: tuple(v for k, v in r.items() if k != "seconds") for r in rows}


@pytest.fixture(scope="module")
def folder40(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("class") / "submissions")


@pytest.fixture(scope="module")
def clean_run(folder40, tmp_path_factory):
    out = tmp_path_factory.mktemp("clean") / "reports"
    started = time.monotonic()
    proc = grade_cli(str(folder40), "--out", str(out), "--jobs", "2")
    proc.seconds = time.monotonic() - started  # type: ignore[attr-defined]
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


# -- tests -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_clean_run_grades_every_notebook(clean_run, folder40):
    out, proc = clean_run
    rows = read_csv(out / "gradebook.csv")
    assert len(rows) == 40 == db_count(out / "gradebook.sqlite")
    by_id = {r["submission"]: r for r in rows}
    full = float(rows[0]["max_score"])

    for k in range(MIX["correct"]):
        row = by_id[f"correct_{k:02d}"]
        assert row["status"] == "graded"
        assert float(row["score"]) == full, row
        assert row["answer_name"] == "LOSS20"
    for k in range(MIX["no_plot"]):
        row = by_id[f"no_plot_{k:02d}"]
        assert float(row["loss20.values"]) > 0
        assert float(row["score"]) < full
        assert float(row["plot.loss20"]) == 0
    for k in range(MIX["stale_loader"]):
        row = by_id[f"mistakes/stale_loader_{k:02d}"]
        assert row["diagnosis"] == "batch_size_10", row
        assert float(row["loss20.values"]) == 0
    for k in range(MIX["weights_not_reset"]):
        assert by_id[f"mistakes/weights_not_reset_{k:02d}"]["diagnosis"] == "weights_not_reset"
    for k in range(MIX["crash"]):
        row = by_id[f"crash_{k:02d}"]
        assert float(row["loss20.values"]) == 0
        assert row["diagnosis"] == "no_answer" and row["answer_name"] == ""
    for k in range(MIX["not_json"]):
        assert by_id[f"not_json_{k:02d}"]["status"] == "rejected"

    # Per-check points add up to the score; every row links to a report that exists.
    checks = [c for c in rows[0] if "." in c and c not in ("max_score",)]
    assert "loss20.values" in checks and "plot.legend" in checks
    for row in rows:
        points = sum(float(row[c]) for c in checks if row[c])
        assert points == pytest.approx(float(row["score"])), row
        report = out / row["feedback"]
        assert report.is_file(), report
        assert (report.parent / "results.json").is_file()
        results = json.loads((report.parent / "results.json").read_text())
        assert results["score"] == pytest.approx(float(row["score"]))

    # The hostile file name: kept as the learner id, neutralised for spreadsheets.
    hostile = next(r for r in rows if "HYPERLINK" in r["submission"])
    assert hostile["submission"].startswith("'=") and hostile["learner"].startswith("'=")
    assert float(hostile["score"]) == full
    # Folders under the given root are part of the id, not a learner.
    assert "mistakes/stale_loader_00" in by_id
    # Exit line and class table.
    assert "40 submissions: 40 graded now, 0 unchanged" in proc.stderr
    assert "Pass rate per check" in proc.stdout


@pytest.mark.slow
def test_kill_midway_then_resume_matches_clean_run(clean_run, folder40, tmp_path):
    clean_out, _ = clean_run
    out = tmp_path / "reports"
    db = out / "gradebook.sqlite"
    log = (tmp_path / "killed.log").open("w")
    proc = subprocess.Popen(
        [*cli(), "grade", str(folder40), "--out", str(out), "--jobs", "2"],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    descendants: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 400
        while db_count(db) < 13:
            assert proc.poll() is None, "the batch ended before it could be killed"
            assert time.monotonic() < deadline, "no progress within 400 s"
            with contextlib.suppress(psutil.NoSuchProcess):
                descendants = psutil.Process(proc.pid).children(recursive=True)
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        for child in descendants:  # kernels run in their own sessions
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        log.close()
    at_kill = db_count(db)
    assert 13 <= at_kill < 40

    resumed = grade_cli(str(folder40), "--out", str(out), "--jobs", "2")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"{40 - at_kill} graded now, {at_kill} unchanged" in resumed.stderr
    assert db_count(db) == 40
    rows = read_csv(out / "gradebook.csv")
    assert len(rows) == 40
    assert verdicts(rows) == verdicts(read_csv(clean_out / "gradebook.csv"))

    # A changed notebook is graded again; the others are not.
    fixed = folder40 / "crash_00.ipynb"
    fixed.write_bytes(quick_notebook("correct", "crash-0-fixed"))
    again = grade_cli(str(folder40), "--out", str(out), "--jobs", "2")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "1 graded now, 39 unchanged" in again.stderr
    row = next(r for r in read_csv(out / "gradebook.csv") if r["submission"] == "crash_00")
    assert row["status"] == "graded" and float(row["score"]) == float(row["max_score"])
    assert db_count(db) == 40


@pytest.mark.slow
def test_integrity_flags_copied_numbers_and_keeps_the_seed_secret(tmp_path):
    folder = tmp_path / "class"
    folder.mkdir()
    for variant in ("correct", "copied"):
        (folder / f"{variant}.ipynb").write_bytes(lab_notebook(variant, variant))
    out = tmp_path / "reports"
    env = {k: v for k, v in os.environ.items() if k != "MBGD_SECRET_SEED"}
    args = [*cli(), "grade", str(folder), "--out", str(out), "--integrity", "--jobs", "2"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["submission"]: r for r in read_csv(out / "gradebook.csv")}
    assert rows["correct"]["integrity"] == "passed"
    assert rows["correct"]["score"] == rows["correct"]["max_score"]
    # Right numbers for seed 1, so full marks for the values; only the secret seed tells.
    assert rows["copied"]["loss20.values"] == "5"
    assert rows["copied"]["integrity"] == "flagged"
    assert rows["copied"]["diagnosis"] == "hard_coded"

    with sqlite3.connect(out / "gradebook.sqlite") as conn:
        (key,) = conn.execute(
            "SELECT value FROM meta WHERE name = 'integrity_secret_seed'"
        ).fetchone()
    assert len(key) == 64  # a key drawn for this gradebook; each notebook's seed comes from it
    seeds = [
        str(derive_seed(key, hashlib.sha256(path.read_bytes()).hexdigest(), avoid={1}))
        for path in folder.glob("*.ipynb")
    ]
    shown = [proc.stdout, proc.stderr, (out / "gradebook.csv").read_text()]
    shown += [p.read_text() for p in out.rglob("*.json")]
    shown += [p.read_text() for p in out.rglob("*.html")]
    for secret in (key, *seeds):
        assert not any(secret in text for text in shown), "the secret seed leaked"
    assert "copied" in (out / "summary.html").read_text()

    # Resuming reuses the recorded seed, so nothing is graded twice.
    again = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 0
    assert "0 graded now, 2 unchanged" in again.stderr


def test_gradebook_round_trips_nan_and_replaces_a_regraded_row(tmp_path):
    curve = Curve(label="LOSS20", y=[float("nan"), float("inf"), 1.0])
    first = GradeResult(
        submission="a", status="graded", score=1, max_score=10, learner_curves=[curve]
    )
    item = Item("a", "a", Path("a.ipynb"), "a", "0" * 64, key="k1")
    with Gradebook(tmp_path / "gradebook.sqlite") as book:
        book.put(item, first)
        (stored,) = book.rows()
        assert stored.item == item and math.isnan(stored.result.learner_curves[0].y[0])
        assert stored.result.learner_curves[0].y[1] == math.inf
        book.put(replace(item, key="k2"), first.model_copy(update={"score": 7.0}))
        (stored,) = book.rows()
        assert (stored.item.key, stored.result.score, book.count()) == ("k2", 7.0, 1)


def test_discover_names_learners_and_report_folders(tmp_path):
    root = tmp_path / "submitted"
    for rel in [
        "alice/ps1/lab.ipynb",
        "bob/ps1/lab.ipynb",
        "carol.ipynb",
        "summary.html.ipynb",
        "we ird;name.ipynb",
        ".ipynb_checkpoints/carol-checkpoint.ipynb",
        "alice/.hidden/x.ipynb",
        "notes.txt",
        "texts/readme.txt",
    ]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("{}")
    (root / "link.ipynb").symlink_to(root / "carol.ipynb")
    items = {i.submission: i for i in discover([root], "first-dir")}
    assert set(items) == {"alice/ps1/lab", "bob/ps1/lab", "carol", "summary.html", "we ird;name"}
    assert items["alice/ps1/lab"].learner == "alice"
    assert items["carol"].learner == "carol"
    assert items["carol"].report_dir == "carol"
    assert items["summary.html"].report_dir == "_summary.html"  # never the class summary
    assert items["we ird;name"].report_dir == "we_ird_name"
    assert len({i.report_dir for i in items.values()}) == len(items)
    by_path = {i.submission: i.learner for i in discover([root], "path")}
    assert by_path["alice/ps1/lab"] == "alice/ps1/lab"
    # One notebook given directly, twice: two submissions, two folders.
    twice = discover([root / "carol.ipynb", root / "carol.ipynb"])
    assert [i.submission for i in twice] == ["carol", "carol~2"]
    assert twice[0].report_dir != twice[1].report_dir
    with pytest.raises(BatchError, match="no notebooks"):
        discover([root / "texts"])


NOT_UTF8 = [b"caf\xe9.ipynb", b"caf\xe8.ipynb", b"caf\\xe9.ipynb", b"l\xe9arner/lab.ipynb"]


def not_utf8_folder(root: Path, notebooks: dict[bytes, bytes]) -> Path:
    """A class folder whose names are bytes that are not UTF-8 (made through bytes paths)."""
    for name, content in notebooks.items():
        path = os.path.join(os.fsencode(root), name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(content)
    return root


def test_names_that_are_not_utf8_are_unique_stable_text_everywhere(tmp_path):
    """No kernel: found, stored, read back, reported and summed up under their shown names
    (the bytes as \\xNN), while the files are read by their own names."""
    from grader.grading.rubric import load_rubric
    from grader.reports.feedback import write_reports
    from grader.reports.summary import write_summary
    from grader.submission import read_capped

    root = not_utf8_folder(tmp_path / "class", {name: b"{}" for name in NOT_UTF8})
    items = discover([root], "first-dir")
    ids = [i.submission for i in items]
    assert len(set(ids)) == len(ids) == len(NOT_UTF8)
    assert {"caf\\xe9", "caf\\xe8", "l\\xe9arner/lab"} <= set(ids)
    assert [i.submission for i in discover([root], "first-dir")] == ids  # stable
    assert len({i.report_dir.lower() for i in items}) == len(items)
    for item in items:
        for text in (item.submission, item.learner, item.report_dir):
            text.encode("utf-8")  # strict: no lone surrogate left
        assert read_capped(item.path) == b"{}"
    assert next(i for i in items if "arner" in i.submission).learner == "l\\xe9arner"

    out, rubric = tmp_path / "out", load_rubric()
    with Gradebook(out / "gradebook.sqlite") as book:
        for item in items:
            book.put(item, rubric.rejected(item.submission, "not a notebook", time.monotonic()))
        entries = book.rows()
    assert {entry.item for entry in entries} == set(items)  # the file names exactly, too
    for entry in entries:
        write_reports(entry.result, out / entry.report_dir)
    write_summary(entries, out)
    assert sorted(r["submission"] for r in read_csv(out / "gradebook.csv")) == sorted(ids)
    summary = (out / "summary.html").read_text(encoding="utf-8")
    for entry in entries:
        assert entry.submission in summary
        data = json.loads((out / entry.report_dir / "results.json").read_text(encoding="utf-8"))
        assert data["extra_data"]["submission"] == entry.submission


@pytest.mark.slow
def test_a_folder_with_names_that_are_not_utf8_is_graded_whole(tmp_path):
    notebooks = {
        b"caf\xe9.ipynb": quick_notebook("correct", "cafe"),
        b"l\xe9arner/lab.ipynb": quick_notebook("not_json", "learner"),
    }
    root, out = not_utf8_folder(tmp_path / "class", notebooks), tmp_path / "out"
    proc = grade_cli(str(root), "--out", str(out), "--jobs", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {row["submission"]: row for row in read_csv(out / "gradebook.csv")}
    assert set(rows) == {"caf\\xe9", "l\\xe9arner/lab"}
    cafe = rows["caf\\xe9"]
    assert cafe["status"] == "graded" and cafe["score"] == cafe["max_score"]
    assert rows["l\\xe9arner/lab"]["status"] == "rejected"
    for row in rows.values():
        assert (out / row["feedback"]).is_file()
    assert (out / "summary.html").is_file() and db_count(out / "gradebook.sqlite") == 2
    assert "2 submissions: 2 graded now" in proc.stderr


def test_usage_errors_exit_2(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert grade_cli(str(tmp_path / "missing")).returncode == 2
    proc = grade_cli(str(empty), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and "no notebooks" in proc.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("this is = = not toml")
    (empty / "a.ipynb").write_bytes(quick_notebook("correct", "a"))
    proc = grade_cli(str(empty), "--rubric", str(bad), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and "rubric" in proc.stderr


def test_releasing_checks_redraws_learners_pages_without_regrading(tmp_path):
    """A check marked after_due_date is left off the learner's page; the rubric's [release]
    changes only the pages: the grade (its key) stays, the page is redrawn once. Graded by
    the real checks on a hand-built Execution, stored as the batch stores it: no kernel."""
    from grader.batch import keyed, run_batch
    from grader.grading.checks import evaluate
    from grader.grading.rubric import default_rubric_text, load_rubric
    from grader.pipeline import GradeOptions
    from reference import mistake_variants
    from tests.helpers import lab_execution

    text = default_rubric_text().replace(
        'id = "loss20.values"\n', 'id = "loss20.values"\nvisibility = "after_due_date"\n'
    )
    rubric_file = tmp_path / "rubric.toml"
    rubric_file.write_text(text)
    folder, out = tmp_path / "class", tmp_path / "out"
    folder.mkdir()
    (folder / "ada.ipynb").write_text(nbformat.writes(new_notebook()))
    options = GradeOptions(rubric_path=str(rubric_file))
    (item,) = keyed(discover([folder]), options)
    wrong = {**expected(), "LOSS20": mistake_variants()["batch_size_10"]}
    result = evaluate(lab_execution(variables=wrong), load_rubric(rubric_file))
    result.submission = item.submission
    out.mkdir()
    with Gradebook(out / "gradebook.sqlite") as book:
        book.put(item, result)
    page = out / item.report_dir / "feedback.html"

    def run() -> str:
        outcome = run_batch([folder], out, GradeOptions(rubric_path=str(rubric_file)), jobs=1)
        assert (outcome.graded, outcome.skipped, outcome.harness_errors) == (0, 1, [])
        return page.read_text()

    before = run()  # its reports were missing: written now, for learners
    assert "loss20.values" not in before and "batch size 10" not in before
    assert "1 more check (5 points)" in " ".join(before.split())
    report = json.loads((page.parent / "results.json").read_text())  # the platform's copy
    values = next(t for t in report["tests"] if t["extra_data"]["id"] == "loss20.values")
    assert values["visibility"] == "after_due_date" and values["status"] == "failed"
    assert report["score"] == result.score == 5

    page.write_text("untouched")  # an unchanged release leaves the pages alone
    assert run() == "untouched"

    rubric_file.write_text(text + "\n[release]\nafter_due_date = true\n")
    assert keyed(discover([folder]), options)[0].key == item.key  # the same grade
    after = run()
    assert "loss20.values" in after and "batch size 10" in after
    assert "not your final score" not in after
