"""summary.html, the instructor's picture of the class: parsed, then rendered by Chromium.

One small class is graded for real (short notebooks of every kind, a time-out, an unreadable
file, a hard-coded answer and a learner whose file name is HTML); the page must agree with
gradebook.csv and render without console errors.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from reference import expected
from tests.helpers import grade_cli, quick_notebook, read_csv

pytestmark = pytest.mark.slow

HOSTILE = "<img src=x onerror=alert(1)>"
CLASS = {  # learner -> variant
    "ada": "correct",
    "grace": "correct",
    "alan": "no_plot",
    "barbara": "stale_loader",
    "edsger": "stale_loader",
    "john": "stale_loader",
    "donald": "weights_not_reset",
    "ken": "crash",
    "linus": "not_json",
    HOSTILE: "correct",
}


def _notebook(*sources: str) -> bytes:
    return nbformat.writes(new_notebook(cells=[new_code_cell(s) for s in sources])).encode()


@pytest.fixture(scope="module")
def class_reports(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("summary")
    folder = root / "class"
    folder.mkdir()
    for learner, variant in CLASS.items():
        (folder / f"{learner}.ipynb").write_bytes(quick_notebook(variant, learner))
    (folder / "margaret.ipynb").write_bytes(_notebook("import time\nwhile True: time.sleep(0.1)"))
    (folder / "frances.ipynb").write_bytes(_notebook(f"LOSS20 = {expected()['LOSS20']!r}"))
    out = root / "reports"
    proc = grade_cli(str(folder), "--out", str(out), "--jobs", "2", "--timeout", "25")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


class Page(HTMLParser):
    """Just enough structure: elements with their attributes, and text under an id."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.stack: list[str] = []
        self.text_by_id: dict[str, list[str]] = {}

    def handle_starttag(self, tag, attrs):
        attributes = {k: v or "" for k, v in attrs}
        self.elements.append((tag, attributes))
        if tag not in ("meta", "br", "img", "input", "link", "rect", "line"):
            self.stack.append(attributes.get("id", ""))

    def handle_endtag(self, tag):
        if tag not in ("meta", "br", "img", "input", "link", "rect", "line") and self.stack:
            self.stack.pop()

    def handle_data(self, data):
        for element_id in self.stack:
            if element_id:
                self.text_by_id.setdefault(element_id, []).append(data)

    def all(self, tag: str, **attrs: str) -> list[dict[str, str]]:
        return [
            a
            for t, a in self.elements
            if t == tag and all(a.get(k.replace("_", "-")) == v for k, v in attrs.items())
        ]

    def text(self, element_id: str) -> str:
        return " ".join(" ".join(self.text_by_id.get(element_id, [])).split())


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text())
    return page


def test_summary_agrees_with_the_gradebook(class_reports):
    rows = read_csv(class_reports / "gradebook.csv")
    page = parse(class_reports / "summary.html")
    by_learner = {r["learner"]: r for r in rows}
    assert len(rows) == len(CLASS) + 2

    # The histogram: one bar per score, counts adding up to the class.
    bars = page.all("rect", **{"class": "hist-bar"})
    assert page.all("svg", id="score-histogram") and bars
    assert sum(int(b["data-count"]) for b in bars) == len(rows)
    max_score = float(rows[0]["max_score"])
    assert len(bars) == int(max_score) + 1  # whole points 0..10
    full = sum(1 for r in rows if float(r["score"]) == max_score)
    assert int(bars[-1]["data-count"]) == full

    # Pass rate per check, as counted from the CSV.
    rates = page.text("check-rates")
    for check in ("loss20.present", "loss20.values", "plot.loss20", "plot.legend"):
        passed = sum(1 for r in rows if float(r[check] or 0) > 0)
        assert page.all("div", **{"class": "rate", "data_check": check})
        assert f"{passed}/{len(rows)}" in rates, (check, rates)

    # Most common diagnoses with their counts, most frequent first.
    counts = Counter(r["diagnosis"] for r in rows if r["diagnosis"])
    shown = [a["data-diagnosis"] for a in page.all("tr") if "data-diagnosis" in a]
    assert shown[0] == counts.most_common(1)[0][0] == "batch_size_10"
    assert set(shown) == set(counts)
    assert "3 batch size 10" in page.text("diagnoses")

    # Problems: the time-out and the unreadable file; the hard-coded answer is flagged.
    assert by_learner["margaret"]["status"] == "timeout"
    assert by_learner["linus"]["status"] == "rejected"
    assert by_learner["frances"]["integrity"] == "flagged"
    problems = page.text("problems")
    for learner in ("margaret", "linus", "frances"):
        assert learner in problems
    assert "ada" not in problems

    # Every learner links to a feedback page that exists; the HTML file name stays text.
    links = [a["href"] for a in page.all("a")]
    for row in rows:
        assert row["feedback"] in {unquote(h) for h in links}
        assert (class_reports / row["feedback"]).is_file()
    assert not page.all("img"), "a learner's file name became markup"
    assert HOSTILE in page.text("learners")


def test_summary_renders_in_chromium(class_reports, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (Debian package chromium)")
    flags = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--enable-logging=stderr",
        "--v=0",
    ]
    url = (class_reports / "summary.html").as_uri()
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    console = [line for line in dom.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, "console messages:\n" + "\n".join(console)
    # The histogram is in the rendered DOM, and the sorting script ran without errors.
    assert 'id="score-histogram"' in dom.stdout
    assert dom.stdout.count('class="hist-bar"') == 11

    shot = tmp_path / "summary.png"
    run = subprocess.run(
        [*flags, "--hide-scrollbars", f"--screenshot={shot}", "--window-size=1280,1600", url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert shot.stat().st_size > 20_000  # a page with content, not a blank one
    if keep := os.environ.get("MBGD_SCREENSHOT_DIR"):
        shutil.copy(shot, Path(keep) / "summary.png")
