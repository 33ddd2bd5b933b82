"""The gradebook: one SQLite row per submission, written the moment its grade is known.

SQLite in WAL mode with one transaction per result means a Ctrl-C or a `kill -9` of the
batch loses only the submissions that were still being graded. Each row carries the key
(content hash + rubric fingerprint + grader version + integrity key) its grade was computed
under, so a re-run skips what is unchanged and re-grades a changed notebook.

A row is an `Entry` (`grader.models`): the `Item` (who, which file, its report folder, sha256
and grade key) and its `GradeResult`.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

from grader.grading.identity import grade_key
from grader.models import Entry, GradeResult, Item

__all__ = ["SECRET_SEED", "Gradebook", "grade_key"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS submissions (
    submission TEXT PRIMARY KEY,   -- unique id in the batch: path relative to its root
    learner    TEXT NOT NULL,
    source     TEXT NOT NULL,      -- the file that was graded (its bytes if not UTF-8)
    report_dir TEXT NOT NULL,      -- relative to the output folder
    key        TEXT NOT NULL,      -- grader.grading.identity.grade_key()
    sha256     TEXT NOT NULL,      -- of the notebook bytes
    status     TEXT NOT NULL,
    score      REAL NOT NULL,
    max_score  REAL NOT NULL,
    integrity  TEXT NOT NULL,
    seconds    REAL NOT NULL,
    graded_at  TEXT NOT NULL,
    result     TEXT NOT NULL       -- the GradeResult as JSON
);
CREATE INDEX IF NOT EXISTS submissions_key ON submissions (key);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

# The integrity key (grader.grading.integrity). The name is from when it held the one secret seed of
# every submission; such a gradebook's number is now its key.
SECRET_SEED = "integrity_secret_seed"


def _source(path: Path) -> str | bytes:
    """The graded file's name for its column: text, or its bytes when the name is not UTF-8
    (SQLite text cannot hold it; a BLOB keeps it exactly)."""
    name = str(path)
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(path)
    return name


class Gradebook:
    """The SQLite gradebook of one output folder. Use from one thread."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL is durable across a crash of this process (kill -9); only power loss can
        # roll back the last transactions, and those submissions are simply graded again.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Gradebook:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def put(self, item: Item, result: GradeResult) -> None:
        """Store (or replace) the grade of one submission in its own transaction."""
        now = datetime.now(UTC).isoformat(timespec="seconds")
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute(
                "INSERT OR REPLACE INTO submissions VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    item.submission,
                    item.learner,
                    _source(item.path),
                    item.report_dir,
                    item.key,
                    item.sha256,
                    result.status,
                    result.score,
                    result.max_score,
                    result.integrity,
                    result.seconds,
                    now,
                    # json.dumps keeps NaN and Infinity (a learner's loss can be either);
                    # pydantic's JSON would turn them into null and fail to read back.
                    json.dumps(result.model_dump()),
                ),
            )

    def rows(self, submissions: Iterable[str] | None = None) -> list[Entry]:
        """Stored rows that can be read, in submission order; only the given ones when asked."""
        cursor = self._db.execute(
            "SELECT submission, learner, source, report_dir, key, sha256, graded_at, result "
            "FROM submissions ORDER BY submission"
        )
        wanted = None if submissions is None else set(submissions)
        rows = []
        for sub, learner, source, report_dir, key, sha, graded_at, result in cursor:
            if wanted is not None and sub not in wanted:
                continue
            try:
                parsed = GradeResult.model_validate_json(result)
            except ValueError:  # written by another grader version: grade it again
                continue
            path = Path(os.fsdecode(source) if isinstance(source, bytes) else source)
            item = Item(sub, learner, path, report_dir, sha, key)
            rows.append(Entry(item, parsed, graded_at))
        return rows

    def count(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM submissions").fetchone()[0]

    def get_meta(self, name: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else row[0]

    def set_meta(self, name: str, value: str) -> None:
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (name, value))
