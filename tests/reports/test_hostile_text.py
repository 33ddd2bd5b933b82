"""Learner text in the two formats other programs interpret: the gradebook CSV (spreadsheets)
and results.json's Markdown (Gradescope, an LMS, GitHub-flavoured renderers).

The CSV is read back with Python's csv module and also line by line, as a spreadsheet that
breaks rows at any line break (even inside quotes) would: no cell and no such row starts a
formula. The Markdown is rendered by two real GFM-like renderers (cmark-gfm, GitHub's own
parser, with its autolink, table and strikethrough extensions; markdown-it with linkify on,
IP addresses included): nothing but paragraphs, line breaks and text comes out, and the
text read is the text written.
"""

from __future__ import annotations

import csv
import html
import io
import re
from pathlib import Path

import pytest

from grader.models import Entry, GradeResult, Item
from grader.reports.feedback import md_escape
from grader.reports.summary import gradebook_csv

FORMULA_STARTS = ("=", "+", "-", "@", "\t")
HOSTILE_FIELDS = [
    "=HYPERLINK(1)",
    "ok\r=1+1",
    "ok\n+cmd|' /C calc'!A0",
    "ok\r\n-2+3",
    "ok\r@SUM(1)",
    "ok\r\tx",
    "a\r\rb\n\n=c",
    "ok\u2028=1",
    "ok\x0b=1",
    "ok\x0c=1",
    "ok\x85=1",
    "\r=1",
]


def _entry(text: str, n: int) -> Entry:
    result = GradeResult(
        submission=text,
        status="graded",
        score=1,
        max_score=2,
        diagnosis=text,
        answer_name=text,
        mistake=text,
    )
    item = Item(submission=text, learner=text, path=Path("x"), report_dir=f"r{n}", sha256="0")
    return Entry(item, result)


def test_no_cell_and_no_row_of_the_gradebook_csv_starts_a_formula():
    text = gradebook_csv([_entry(t, n) for n, t in enumerate(HOSTILE_FIELDS)])
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert len(rows) == 1 + len(HOSTILE_FIELDS)  # no field broke its row
    for row, hostile in zip(rows[1:], HOSTILE_FIELDS, strict=True):
        for field in (row[0], row[1], row[-7], row[-6], row[-5]):
            # each line of the cell is the learner's, an apostrophe before a formula start
            want = [
                ("'" + line if line[:1] in FORMULA_STARTS else line)
                for line in hostile.splitlines()
            ]
            assert field.split("\n") == want, (hostile, field)
    # a spreadsheet that breaks rows at any line break, quotes or not
    for line in re.split(r"\r\n|[\r\n\x0b\x0c\x1c-\x1e\x85\u2028\u2029]", text):
        assert not line.lstrip('"').startswith(FORMULA_STARTS), repr(line)


# -- Markdown ---------------------------------------------------------------------------------

HOSTILE_MARKDOWN = [
    "Title\n===",
    "Title\n---",
    "Title\n~~~",
    "~~~\nfenced\n~~~",
    "```python\nfenced\n```",
    "# heading",
    "   ## heading",
    "        indented code",
    "> quote",
    "- item\n+ item\n* item",
    "1. item\n2) item",
    "* * *\n___",
    "| a | b |\n|---|---|\n| 1 | 2 |",
    "[link](http://evil.example/x) ![img](http://evil.example/x.png) [ref][x]\n\n[x]: /u",
    "<http://evil.example> <a@b.co> <script>alert(1)</script> <b>bold</b>",
    "see http://10.0.0.1/x and https://192.168.1.1:8080/a?b=c#d then //10.0.0.2/y",
    "the service at 127.0.0.1:8000/admin or 10.0.0.1",
    "www.evil.example and evil.example.com and file.py",
    "mail user@example.com or user.name+tag@sub.example.co.uk or mailto:a@b.co",
    "ftp://1.2.3.4/f and javascript:alert(1)",
    "~~strike~~ *em* **strong** _u_ `code` $x^2$ [^1] :smile:",
    "&lt;b&gt; &amp; &#64; &copy; \\* \\",
    "a line ending in two spaces  \nthen a backslash\\\nend",
]


def _renderers() -> dict:
    cmarkgfm = pytest.importorskip("cmarkgfm")
    markdown_it = pytest.importorskip("markdown_it")
    pytest.importorskip("linkify_it")
    gfm_like = markdown_it.MarkdownIt("gfm-like")
    gfm_like.linkify.set({"fuzzy_ip": True, "fuzzy_email": True, "fuzzy_link": True})
    return {
        "cmark-gfm": lambda text: cmarkgfm.github_flavored_markdown_to_html(text),
        "markdown-it gfm-like": gfm_like,
    }


def _visible(rendered: str) -> str:
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", rendered)).replace("\u2060", "").split())


@pytest.mark.parametrize("hostile", HOSTILE_MARKDOWN)
def test_escaped_learner_text_renders_as_that_text_and_nothing_else(hostile):
    escaped = md_escape(hostile)
    renderers = _renderers()
    want = " ".join(hostile.split())
    # cmark-gfm: only paragraphs and line breaks
    rendered = renderers["cmark-gfm"](escaped)
    assert set(re.findall(r"</?([a-zA-Z0-9]+)", rendered)) <= {"p", "br"}, rendered
    assert _visible(rendered) == want
    # markdown-it: only paragraphs, line breaks and text tokens
    md = renderers["markdown-it gfm-like"]
    tokens = md.parse(escaped)
    kinds = {t.type for t in tokens} | {c.type for t in tokens for c in (t.children or [])}
    assert kinds <= {
        "paragraph_open",
        "paragraph_close",
        "inline",
        "text",
        "text_special",
        "softbreak",
        "hardbreak",
    }, (kinds, escaped)
    assert _visible(md.render(escaped)) == want
