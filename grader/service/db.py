"""The service's SQLite database: the queue, the results and the callback outbox in one file.

The database is the source of truth. A submission is committed (WAL, synchronous=FULL) before
the LMS hears 202; grading slots claim queued rows; a result, its callback and its LTI Score are
written in one transaction. After a crash, rows left "running" go back to "queued" and
undelivered callbacks and Scores are sent again, so nothing accepted is ever lost.

One connection, guarded by a lock, used from worker threads (``asyncio.to_thread``): SQLite
serialises writers anyway and each statement here takes well under a millisecond.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS submissions (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    id            TEXT NOT NULL UNIQUE,
    webhook_id    TEXT NOT NULL UNIQUE,
    submission_id TEXT NOT NULL,
    learner_id    TEXT NOT NULL,
    assignment_id TEXT,
    callback_url  TEXT,
    lti           TEXT,
    name          TEXT NOT NULL,
    notebook      BLOB NOT NULL,
    sha256        TEXT NOT NULL,
    response      TEXT NOT NULL,
    status        TEXT NOT NULL DEFAULT 'queued',
    attempts      INTEGER NOT NULL DEFAULT 0,
    available_at  REAL NOT NULL DEFAULT 0,
    fingerprint   TEXT,
    grade         TEXT,
    result        TEXT,
    error         TEXT,
    reused_from   TEXT,
    received_at   REAL NOT NULL,
    started_at    REAL,
    finished_at   REAL
);
CREATE INDEX IF NOT EXISTS submissions_status ON submissions(status, seq);
CREATE INDEX IF NOT EXISTS submissions_sha ON submissions(sha256, status);
CREATE TABLE IF NOT EXISTS outbox (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    submission      TEXT NOT NULL UNIQUE REFERENCES submissions(id),
    webhook_id      TEXT NOT NULL,
    url             TEXT NOT NULL,
    body            BLOB NOT NULL,
    status          TEXT NOT NULL DEFAULT 'pending',
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    created_at      REAL NOT NULL,
    delivered_at    REAL,
    last_status     INTEGER,
    last_error      TEXT
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox(status, next_attempt_at);
CREATE TABLE IF NOT EXISTS lti_outbox (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    submission      TEXT NOT NULL UNIQUE REFERENCES submissions(id),
    issuer          TEXT NOT NULL,
    lineitem        TEXT NOT NULL,
    body            BLOB NOT NULL,
    status          TEXT NOT NULL DEFAULT 'pending',
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    created_at      REAL NOT NULL,
    delivered_at    REAL,
    last_status     INTEGER,
    last_error      TEXT
);
CREATE INDEX IF NOT EXISTS lti_outbox_due ON lti_outbox(status, next_attempt_at);
"""
# The two delivery queues: signed callbacks to callback_url, and LTI AGS Scores.
OUTBOXES = ("outbox", "lti_outbox")
# Columns added after a database may have been created: (table, column, declaration).
ADDED_COLUMNS = (("submissions", "lti", "TEXT"),)


@dataclass(frozen=True)
class NewSubmission:
    """What intake stores: everything needed to grade and answer, decided before the 202."""

    id: str
    webhook_id: str
    submission_id: str
    learner_id: str
    assignment_id: str | None
    callback_url: str | None
    name: str
    notebook: bytes
    sha256: str
    response: str  # the exact JSON answered with 202, returned again for a repeated webhook-id
    lti: str | None = None  # JSON {"issuer", "lineitem", "user_id"}: where the Score goes


@dataclass(frozen=True)
class Callback:
    """One outbox row to write with a result."""

    webhook_id: str
    url: str
    body: bytes


@dataclass(frozen=True)
class LtiScore:
    """One AGS Score to post with a result: the platform, the line item, the exact bytes."""

    issuer: str
    lineitem: str
    body: bytes


class Database:
    """Thread-safe access to the service's SQLite file."""

    def __init__(self, path: Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(
            str(path), isolation_level=None, check_same_thread=False, timeout=30.0
        )
        self._conn.row_factory = sqlite3.Row
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            self._conn.executescript(SCHEMA)
            for table, column, declaration in ADDED_COLUMNS:
                have = {r["name"] for r in self._conn.execute(f"PRAGMA table_info({table})")}
                if column not in have:  # a database from before the column existed
                    self._conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # -- intake ---------------------------------------------------------------------------
    def insert(self, sub: NewSubmission) -> tuple[bool, str]:
        """Store a submission unless its webhook-id was seen; return (created, response)."""
        with self._lock, self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            cur = self._conn.execute(
                "INSERT INTO submissions (id, webhook_id, submission_id, learner_id,"
                " assignment_id, callback_url, lti, name, notebook, sha256, response,"
                " received_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT(webhook_id) DO NOTHING",
                (
                    sub.id,
                    sub.webhook_id,
                    sub.submission_id,
                    sub.learner_id,
                    sub.assignment_id,
                    sub.callback_url,
                    sub.lti,
                    sub.name,
                    sub.notebook,
                    sub.sha256,
                    sub.response,
                    time.time(),
                ),
            )
            if cur.rowcount == 1:
                return True, sub.response
            row = self._conn.execute(
                "SELECT response FROM submissions WHERE webhook_id = ?", (sub.webhook_id,)
            ).fetchone()
            return False, row["response"]

    # -- grading --------------------------------------------------------------------------
    def requeue_running(self) -> int:
        """After a restart: whatever was being graded when we died is queued again."""
        with self._lock, self._conn:
            cur = self._conn.execute(
                "UPDATE submissions SET status = 'queued', available_at = 0"
                " WHERE status = 'running'"
            )
            return cur.rowcount

    def claim(self) -> sqlite3.Row | None:
        """Take the oldest queued row whose notebook is not being graded right now.

        Skipping contents already in a slot lets a repeat wait for that grade and reuse it.
        """
        now = time.time()
        with self._lock, self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            row = self._conn.execute(
                "SELECT seq FROM submissions s WHERE status = 'queued' AND available_at <= ?"
                " AND NOT EXISTS (SELECT 1 FROM submissions r"
                "   WHERE r.status = 'running' AND r.sha256 = s.sha256)"
                " ORDER BY seq LIMIT 1",
                (now,),
            ).fetchone()
            if row is None:
                return None
            claimed = self._conn.execute(
                "UPDATE submissions SET status = 'running', attempts = attempts + 1,"
                " started_at = ? WHERE seq = ? RETURNING *",
                (now, row["seq"]),
            ).fetchall()  # step RETURNING to the end before the commit
            return claimed[0]

    def cached_grade(self, sha256: str, fingerprint: str) -> sqlite3.Row | None:
        """A finished grade of the same notebook under the same rubric, if there is one."""
        with self._lock:
            return self._conn.execute(
                "SELECT id, grade FROM submissions WHERE sha256 = ? AND fingerprint = ?"
                " AND status = 'graded' AND reused_from IS NULL ORDER BY seq LIMIT 1",
                (sha256, fingerprint),
            ).fetchone()

    def retry_later(self, sub_id: str, delay: float, error: str) -> None:
        """The harness failed on this row: queue it again after ``delay`` seconds."""
        with self._lock, self._conn:
            self._conn.execute(
                "UPDATE submissions SET status = 'queued', available_at = ?, error = ?"
                " WHERE id = ? AND status = 'running'",
                (time.time() + delay, error, sub_id),
            )

    def finish(
        self,
        sub_id: str,
        *,
        status: str,
        fingerprint: str | None,
        grade: str | None,
        result: str | None,
        error: str | None,
        reused_from: str | None = None,
        callback: Callback | None = None,
        score: LtiScore | None = None,
        finished_at: float | None = None,
    ) -> None:
        """Record the outcome and queue its callback and its LTI Score, atomically."""
        now = time.time() if finished_at is None else finished_at
        with self._lock, self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.execute(
                "UPDATE submissions SET status = ?, fingerprint = ?, grade = ?, result = ?,"
                " error = ?, reused_from = ?, finished_at = ? WHERE id = ?",
                (status, fingerprint, grade, result, error, reused_from, now, sub_id),
            )
            if callback is not None:
                self._conn.execute(
                    "INSERT INTO outbox (submission, webhook_id, url, body, next_attempt_at,"
                    " created_at) VALUES (?,?,?,?,?,?) ON CONFLICT(submission) DO NOTHING",
                    (sub_id, callback.webhook_id, callback.url, callback.body, now, now),
                )
            if score is not None:
                self._conn.execute(
                    "INSERT INTO lti_outbox (submission, issuer, lineitem, body, next_attempt_at,"
                    " created_at) VALUES (?,?,?,?,?,?) ON CONFLICT(submission) DO NOTHING",
                    (sub_id, score.issuer, score.lineitem, score.body, now, now),
                )

    # -- callbacks and LTI Scores (``table``: one of OUTBOXES) ------------------------------
    def due_callbacks(
        self, limit: int, exclude: set[int], table: str = "outbox"
    ) -> list[sqlite3.Row]:
        assert table in OUTBOXES
        with self._lock:
            rows = self._conn.execute(
                f"SELECT * FROM {table} WHERE status = 'pending' AND next_attempt_at <= ?"
                " ORDER BY next_attempt_at LIMIT ?",
                (time.time(), limit + len(exclude)),
            ).fetchall()
        return [r for r in rows if r["seq"] not in exclude][:limit]

    def next_callback_at(self, table: str = "outbox") -> float | None:
        assert table in OUTBOXES
        with self._lock:
            row = self._conn.execute(
                f"SELECT MIN(next_attempt_at) AS t FROM {table} WHERE status = 'pending'"
            ).fetchone()
        return row["t"]

    def callback_done(
        self,
        seq: int,
        *,
        status: str,
        http_status: int | None,
        error: str,
        table: str = "outbox",
    ) -> None:
        """Delivered, or given up ('dead'): either way no more attempts."""
        assert table in OUTBOXES
        with self._lock, self._conn:
            self._conn.execute(
                f"UPDATE {table} SET status = ?, attempts = attempts + 1, delivered_at = ?,"
                " last_status = ?, last_error = ? WHERE seq = ?",
                (status, time.time() if status == "delivered" else None, http_status, error, seq),
            )

    def callback_retry(
        self,
        seq: int,
        *,
        at: float,
        http_status: int | None,
        error: str,
        table: str = "outbox",
    ) -> None:
        assert table in OUTBOXES
        with self._lock, self._conn:
            self._conn.execute(
                f"UPDATE {table} SET attempts = attempts + 1, next_attempt_at = ?,"
                " last_status = ?, last_error = ? WHERE seq = ?",
                (at, http_status, error, seq),
            )

    # -- reading --------------------------------------------------------------------------
    def get(self, sub_id: str) -> dict[str, Any] | None:
        """A submission with its callback state, for the status endpoint."""
        with self._lock:
            row = self._conn.execute(
                "SELECT s.id, s.submission_id, s.learner_id, s.assignment_id, s.status,"
                " s.attempts, s.result, s.error, s.reused_from, s.received_at, s.started_at,"
                " s.finished_at, o.status AS cb_status, o.attempts AS cb_attempts,"
                " o.webhook_id AS cb_webhook_id, o.delivered_at AS cb_delivered_at,"
                " o.last_status AS cb_last_status, o.last_error AS cb_last_error,"
                " l.status AS lti_status, l.attempts AS lti_attempts, l.lineitem AS lti_lineitem,"
                " l.delivered_at AS lti_delivered_at, l.last_status AS lti_last_status,"
                " l.last_error AS lti_last_error, s.lti,"
                " s.callback_url FROM submissions s LEFT JOIN outbox o ON o.submission = s.id"
                " LEFT JOIN lti_outbox l ON l.submission = s.id"
                " WHERE s.id = ?",
                (sub_id,),
            ).fetchone()
        return dict(row) if row is not None else None

    def counts(self) -> dict[str, int]:
        """How many submissions are in each state, and how many callbacks and Scores wait."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT status, COUNT(*) AS n FROM submissions GROUP BY status"
            ).fetchall()
            pending = self._conn.execute(
                "SELECT COUNT(*) AS n FROM outbox WHERE status = 'pending'"
            ).fetchone()
            scores = self._conn.execute(
                "SELECT COUNT(*) AS n FROM lti_outbox WHERE status = 'pending'"
            ).fetchone()
        counts = {s: 0 for s in ("queued", "running", "graded", "failed")}
        counts.update({r["status"]: r["n"] for r in rows})
        counts["callbacks_pending"] = pending["n"]
        counts["scores_pending"] = scores["n"]
        return counts
