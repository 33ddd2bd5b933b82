"""What the worker pulled and has not answered yet, on disk (SQLite), so a crash loses nothing.

XQueue hands a pulled submission out again only after minutes (SUBMISSION_PROCESSING_DELAY
in openedx/xqueue, under a new key; five in edx-submissions, under the same key, and then at
every poll until it is answered). So a worker that is killed mid-grading must remember what
it held: every pull is written here before anything else happens to it, the downloaded file
before grading, the answer (the exact put_result body) before it is posted. On start the
worker grades what has no answer and posts what was not taken, so a restart posts the same
answer, or the first one.

A row is keyed by XQueue's submission id. A submission handed out again under a new key
updates its header and keeps its file and answer: the score stays the same. Handed out
again with the same header, nothing changes (`Pull.SAME`): it is what the worker holds.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from grader.errors import UsageError
from grader.xqueue.contract import Pulled, parse_files

SCHEMA = """
CREATE TABLE IF NOT EXISTS pulled (
    submission_id TEXT PRIMARY KEY,
    header TEXT NOT NULL,            -- the latest pull's header: what put_result echoes
    body TEXT NOT NULL,              -- xqueue_body as received
    files TEXT NOT NULL,             -- xqueue_files (name -> URL) as JSON
    pulled_at REAL NOT NULL,
    notebook BLOB,                   -- the downloaded file, once fetched
    problem TEXT,                    -- or why it could not be (then graded as such)
    grade_attempts INTEGER NOT NULL DEFAULT 0,
    answer TEXT,                     -- the put_result xqueue_body, once graded
    graded_at REAL,
    score REAL,                      -- the points the answer gives, for the logs
    send_attempts INTEGER NOT NULL DEFAULT 0,
    next_send REAL,
    answered_at REAL,                -- taken by the server (or given up: see outcome)
    outcome TEXT
);
CREATE INDEX IF NOT EXISTS pulled_open ON pulled (answered_at, answer);
"""
KEEP_ANSWERED_SECONDS = 7 * 24 * 3600


class Pull(enum.Enum):
    """What a pull was to the journal."""

    NEW = "new"  # never seen: grade it
    AGAIN = "again"  # seen, handed out again under a new key: the header is the new one
    SAME = "same"  # seen with this very header (edx-submissions re-hands the same key)


@dataclass(frozen=True)
class Entry:
    """One journaled submission."""

    submission_id: str
    header: str
    body: str
    files: str
    notebook: bytes | None
    problem: str | None
    grade_attempts: int
    answer: str | None
    send_attempts: int
    answered: bool = False  # taken by the server (or ended: see outcome)
    outcome: str | None = None  # "taken", "refused: ...", the last failure, ...

    def pulled(self) -> Pulled:
        return Pulled(self.header, self.submission_id, self.body, parse_files(self.files))


class Journal:
    """The state folder's journal; one worker at a time (a lock file says so)."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        import fcntl  # POSIX only: imported here so the package imports on Windows

        self._lock = os.open(folder / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock)
            raise UsageError(
                f"{folder} is in use by another XQueue worker; give each worker its own --state"
            ) from None
        self.path = folder / "journal.sqlite3"
        self.db = sqlite3.connect(self.path, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")  # a row we answer from must survive a crash
        self.db.executescript(SCHEMA)
        self.db.execute(
            "DELETE FROM pulled WHERE answered_at IS NOT NULL AND answered_at < ?",
            (time.time() - KEEP_ANSWERED_SECONDS,),
        )

    def close(self) -> None:
        self.db.close()
        with contextlib.suppress(OSError):
            os.close(self._lock)

    # -- pulls and grading -----------------------------------------------------------------

    def record_pull(self, pulled: Pulled) -> Pull:
        """Journal a pull. NEW: grade it. AGAIN (a new key): the header is replaced, and a
        known answer is posted again with it. SAME (the header the row has): nothing changes;
        the worker already holds this pull (grading it, posting its answer, or done)."""
        now = time.time()
        with self.db:
            row = self.db.execute(
                "SELECT header FROM pulled WHERE submission_id = ?", (pulled.submission_id,)
            ).fetchone()
            if row is None:
                self.db.execute(
                    "INSERT INTO pulled (submission_id, header, body, files, pulled_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (
                        pulled.submission_id,
                        pulled.header,
                        pulled.body,
                        json.dumps(pulled.files),
                        now,
                    ),
                )
                return Pull.NEW
            if row["header"] == pulled.header:
                return Pull.SAME
            self.db.execute(
                "UPDATE pulled SET header = ?, pulled_at = ?, answered_at = NULL, outcome = NULL, "
                "send_attempts = 0, next_send = ? WHERE submission_id = ?",
                (pulled.header, now, now, pulled.submission_id),
            )
            return Pull.AGAIN

    def get(self, submission_id: str) -> Entry:
        row = self.db.execute(
            "SELECT * FROM pulled WHERE submission_id = ?", (submission_id,)
        ).fetchone()
        if row is None:
            raise KeyError(submission_id)
        return Entry(
            submission_id=row["submission_id"],
            header=row["header"],
            body=row["body"],
            files=row["files"],
            notebook=None if row["notebook"] is None else bytes(row["notebook"]),
            problem=row["problem"],
            grade_attempts=row["grade_attempts"],
            answer=row["answer"],
            send_attempts=row["send_attempts"],
            answered=row["answered_at"] is not None,
            outcome=row["outcome"],
        )

    def ungraded(self) -> list[str]:
        """Pulled, not graded: oldest first."""
        rows = self.db.execute(
            "SELECT submission_id FROM pulled WHERE answer IS NULL ORDER BY pulled_at"
        )
        return [r[0] for r in rows]

    def store_file(self, submission_id: str, notebook: bytes | None, problem: str | None) -> None:
        with self.db:
            self.db.execute(
                "UPDATE pulled SET notebook = ?, problem = ? WHERE submission_id = ?",
                (notebook, problem, submission_id),
            )

    def start_grading(self, submission_id: str) -> int:
        """Count a grading attempt before it starts (a crash counts); returns the count."""
        with self.db:
            self.db.execute(
                "UPDATE pulled SET grade_attempts = grade_attempts + 1 WHERE submission_id = ?",
                (submission_id,),
            )
        return self.get(submission_id).grade_attempts

    def forget_attempt(self, submission_id: str) -> None:
        """A grading stopped by a graceful shutdown is not the submission's doing."""
        with self.db:
            self.db.execute(
                "UPDATE pulled SET grade_attempts = MAX(grade_attempts - 1, 0) "
                "WHERE submission_id = ?",
                (submission_id,),
            )

    def record_answer(self, submission_id: str, answer: str, score: float) -> None:
        """The put_result body, written once: a later pull or restart posts this same text.
        The file is dropped: it is never graded again."""
        now = time.time()
        with self.db:
            self.db.execute(
                "UPDATE pulled SET answer = COALESCE(answer, ?), score = COALESCE(score, ?), "
                "graded_at = COALESCE(graded_at, ?), next_send = ?, notebook = NULL "
                "WHERE submission_id = ?",
                (answer, score, now, now, submission_id),
            )

    # -- answers ---------------------------------------------------------------------------

    def due(self, now: float | None = None) -> list[Entry]:
        """Graded, not taken yet, due for a (re)send."""
        now = time.time() if now is None else now
        rows = self.db.execute(
            "SELECT submission_id FROM pulled WHERE answer IS NOT NULL AND answered_at IS NULL "
            "AND COALESCE(next_send, 0) <= ? ORDER BY graded_at",
            (now,),
        )
        return [self.get(r[0]) for r in rows.fetchall()]

    def next_due(self) -> float | None:
        row = self.db.execute(
            "SELECT MIN(COALESCE(next_send, 0)) FROM pulled "
            "WHERE answer IS NOT NULL AND answered_at IS NULL"
        ).fetchone()
        return None if row[0] is None else float(row[0])

    def send_now(self) -> None:
        """At start: every waiting answer is due at once."""
        with self.db:
            self.db.execute("UPDATE pulled SET next_send = 0 WHERE answered_at IS NULL")

    def sent(self, submission_id: str, outcome: str) -> None:
        with self.db:
            self.db.execute(
                "UPDATE pulled SET answered_at = ?, outcome = ? WHERE submission_id = ?",
                (time.time(), outcome, submission_id),
            )

    def resend(self, submission_id: str) -> None:
        """An ended answer goes again, now (its end was a presumption the server disproved)."""
        with self.db:
            self.db.execute(
                "UPDATE pulled SET answered_at = NULL, outcome = NULL, send_attempts = 0, "
                "next_send = ? WHERE submission_id = ? AND answer IS NOT NULL",
                (time.time(), submission_id),
            )

    def retry_send(self, submission_id: str, delay: float, why: str) -> int:
        with self.db:
            self.db.execute(
                "UPDATE pulled SET send_attempts = send_attempts + 1, next_send = ?, outcome = ? "
                "WHERE submission_id = ?",
                (time.time() + delay, why[:500], submission_id),
            )
        return self.get(submission_id).send_attempts

    def counts(self) -> dict[str, int]:
        row = self.db.execute(
            "SELECT SUM(answer IS NULL), SUM(answer IS NOT NULL AND answered_at IS NULL), "
            "SUM(answered_at IS NOT NULL) FROM pulled"
        ).fetchone()
        return {"grading": row[0] or 0, "sending": row[1] or 0, "answered": row[2] or 0}
