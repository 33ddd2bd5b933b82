"""Grade a folder of notebooks: find them, skip what the gradebook already has, grade the rest.

The instructors' door. Grading runs in a local pool of kernels (the embedded default) or on
Celery workers (`broker=`); either way each grade is written to the SQLite gradebook and to
its report folder the moment it arrives, so an interrupted batch resumes where it stopped.

Who is who: every notebook found under a PATH gets a *submission id*, its path relative to
that PATH without `.ipynb` (`alice.ipynb` -> `alice`, `correct/canonical.ipynb` ->
`correct/canonical`, nbgrader's `alice/ps1/lab.ipynb` -> `alice/ps1/lab`). The *learner*
column is the submission id, or with `learner_from="first-dir"` the first folder of a nested
path (`alice`), for layouts with one folder per learner.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from grader import __version__
from grader.errors import UsageError
from grader.gradebook import SECRET_SEED, Gradebook
from grader.grading.identity import grade_key, grading_fingerprint
from grader.grading.integrity import new_key
from grader.models import PROBLEM_STATUSES, Entry, GradeResult, Item, Sink, grader_failed
from grader.reports.writer import BackgroundReports
from grader.submission import notebooks_under, read_capped, shown_name

if TYPE_CHECKING:
    from grader.execution.runner import KernelSource
    from grader.pipeline import GradeOptions

LearnerFrom = Literal["path", "first-dir", "stem"]
SEED_ENV = "MBGD_SECRET_SEED"
REVEALED = "learner_pages_reveal"  # gradebook meta: which checks the learners' pages show
RESERVED = {"gradebook.csv", "gradebook.sqlite", "summary.html"}


class BatchError(UsageError):
    """A usage problem (missing path, no notebooks): exit code 2."""


@dataclass
class BatchOutcome:
    """What a batch run did; `results` has one entry per submission found, in order."""

    items: list[Item]
    results: dict[str, GradeResult]
    graded: int = 0
    skipped: int = 0
    harness_errors: list[str] = field(default_factory=list)
    secret_key: str | None = field(default=None, repr=False)


# -- discovery -------------------------------------------------------------------------------


def _safe_part(part: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.@+-]+", "_", part).strip(".") or "_"
    return safe[:120]


def _report_dir(submission: str, taken: set[str]) -> str:
    parts = [_safe_part(p) for p in submission.split("/")]
    if parts[0].lower() in RESERVED:
        parts[0] = "_" + parts[0]
    base = "/".join(parts)
    candidate, n = base, 1
    while candidate.lower() in taken:
        n += 1
        candidate = f"{base}-{n}"
    taken.add(candidate.lower())
    return candidate


def _learner(submission: str, learner_from: LearnerFrom) -> str:
    parts = submission.split("/")
    if learner_from == "stem":
        return parts[-1]
    if learner_from == "first-dir" and len(parts) > 1:
        return parts[0]
    return submission


def _sha256(path: Path) -> str:
    return hashlib.sha256(read_capped(path)).hexdigest()


def discover(paths: Sequence[Path], learner_from: LearnerFrom = "path") -> list[Item]:
    """Every notebook under `paths` with a unique submission id and report folder.

    A folder is searched as `grader.submission.notebooks_under` says (no hidden files, no
    symbolic links); a file named in `paths` is taken as it is. A name that is not UTF-8 is
    the id as `grader.submission.shown_name` spells it (the file is read by its own name)."""
    items: list[Item] = []
    seen: set[str] = set()
    taken: set[str] = set()
    for given in paths:
        given = Path(given)
        if given.is_dir():
            pairs = [
                (p, shown_name(p.relative_to(given).with_suffix("").as_posix()))
                for p in notebooks_under(given)
            ]
        elif given.is_file():
            pairs = [(given, shown_name(given.stem))]
        else:
            raise BatchError(f"{shown_name(str(given))}: no such file or folder")
        for path, submission in pairs:
            base, n = submission, 1
            while submission in seen:  # same relative path under two roots
                n += 1
                submission = f"{base}~{n}"
            seen.add(submission)
            items.append(
                Item(
                    submission=submission,
                    learner=_learner(submission, learner_from),
                    path=path,
                    report_dir=_report_dir(submission, taken),
                    sha256=_sha256(path),
                )
            )
    if not items:
        raise BatchError(
            "no notebooks (*.ipynb) found in " + ", ".join(shown_name(str(p)) for p in paths)
        )
    return items


# -- options and keys ------------------------------------------------------------------------


def secret_key(book: Gradebook) -> str:
    """The integrity key of this gradebook: $MBGD_SECRET_SEED, else the recorded one, else a
    fresh random one; recorded either way so a resumed batch derives the same seeds.

    Each submission's secret seed is derived from it (`grader.grading.integrity.derive_seed`). A
    gradebook written when this held one seed for everybody keeps its number as its key.
    """
    key = os.environ.get(SEED_ENV, "").strip() or (book.get_meta(SECRET_SEED) or "").strip()
    if not key:
        key = new_key()
    book.set_meta(SECRET_SEED, key)
    return key


def keyed(items: list[Item], options: GradeOptions) -> list[Item]:
    """`items` with their grade keys (`grader.grading.identity`)."""
    fingerprint = grading_fingerprint(options.rubric().fingerprint, options.integrity)
    key = options.secret_key if options.integrity else None
    return [
        dataclasses.replace(i, key=grade_key(i.sha256, fingerprint, __version__, key))
        for i in items
    ]


# -- grading ---------------------------------------------------------------------------------


async def grade_local(
    items: list[Item],
    options: GradeOptions,
    jobs: int,
    sink: Sink,
    pool: KernelSource | None = None,
) -> None:
    """Grade `items` with at most `jobs` kernels at once (forked from `pool` when given),
    calling `sink` as each finishes."""
    from grader.pipeline import grade_async

    queue = list(reversed(items))

    async def worker() -> None:
        while queue:
            item = queue.pop()
            try:
                result = await grade_async(
                    read_capped(item.path), item.submission, options, pool=pool
                )
            except asyncio.CancelledError:
                raise
            # Not only GraderError: grade_async turns what a notebook does into a result, but a
            # notebook can still lead the grader into a bug of its own. That costs this one
            # notebook (a stand-in verdict, exit code 1), never the rest of the batch.
            except Exception as error:  # noqa: BLE001
                sink(item, grader_failed(item.submission, error), False)
                continue
            sink(item, result, True)

    await asyncio.gather(*(worker() for _ in range(max(1, min(jobs, len(items))))))


def run_batch(
    paths: Sequence[Path],
    out: Path,
    options: GradeOptions,
    *,
    jobs: int,
    broker: str | None = None,
    learner_from: LearnerFrom = "path",
    on_start: Callable[[int, int], None] | None = None,
    on_result: Callable[[Item, GradeResult], None] | None = None,
) -> BatchOutcome:
    """Grade everything under `paths` into `out`; resumable, see the module docstring."""
    items = discover(paths, learner_from)
    out.mkdir(parents=True, exist_ok=True)
    with Gradebook(out / "gradebook.sqlite") as book:
        if options.integrity:
            options = options.model_copy(update={"secret_key": secret_key(book)})
        items = keyed(items, options)
        keys = {i.submission: i.key for i in items}
        # Unchanged: a readable row graded under the same key (content, rubric, version, key).
        done = [row for row in book.rows(keys) if keys[row.submission] == row.item.key]
        finished = {row.submission for row in done}
        pending = [i for i in items if i.submission not in finished]
        outcome = BatchOutcome(items=items, results={}, secret_key=options.secret_key)
        # The rubric's [release] (a due date passed, grades published) changes what the
        # learners' pages show, not the grades: pages of unchanged grades are redrawn.
        reveal = options.rubric().revealed()
        shown = ",".join(sorted(reveal))
        redraw = book.get_meta(REVEALED) not in (None, shown)
        for row in done:
            outcome.results[row.submission] = row.result
            outcome.skipped += 1
        if on_start:
            on_start(len(items), outcome.skipped)

        def sink(item: Item, result: GradeResult, persist: bool) -> None:
            if persist:
                # The grade first: it is what is expensive to redo. Missing reports are
                # rewritten from the gradebook on the next run.
                book.put(item, result)
                outcome.graded += 1
                reports.submit(item.submission, result, out / item.report_dir)
            else:
                outcome.harness_errors.append(f"{item.submission}: {result.error}")
            outcome.results[item.submission] = result
            if on_result:
                on_result(item, result)

        with BackgroundReports(outcome.harness_errors, reveal=reveal) as reports:
            for row in done:
                report_dir = out / row.report_dir
                files = ("results.json", "feedback.html")
                # Graded, then killed before its reports were written: write them now.
                if redraw or not all((report_dir / f).exists() for f in files):
                    reports.submit(row.submission, row.result, report_dir)
            if pending and broker:
                from grader.remote import grade_remote

                grade_remote(pending, options, broker, sink)
            elif pending:
                from grader.execution.pool import warm_pool

                with warm_pool() as pool:  # None where the sandbox allows no warm pool
                    asyncio.run(grade_local(pending, options, jobs, sink, pool))
        # Recorded once every page is drawn: a run stopped before redraws them all next time.
        book.set_meta(REVEALED, shown)
    return outcome


def _broker_errors() -> tuple[type[BaseException], ...]:
    """What a broker that cannot be reached raises (the celery extra: imported only when a
    broker is used, so grading without one needs no Celery)."""
    from kombu.exceptions import OperationalError
    from redis.exceptions import RedisError

    return (OperationalError, RedisError)


def grade_main(
    paths: Sequence[Path],
    out: Path,
    options: GradeOptions,
    *,
    jobs: int,
    broker: str | None,
    learner_from: LearnerFrom,
) -> int:
    """The `mbgd-grader grade` command: grade, write the class summary, return the exit code."""
    from rich.console import Console
    from rich.markup import escape

    from grader.progress import ConsoleProgress
    from grader.reports.summary import print_class_table, write_summary

    progress = ConsoleProgress()
    try:
        outcome = run_batch(
            paths,
            out,
            options,
            jobs=jobs,
            broker=broker,
            learner_from=learner_from,
            on_start=progress.start,
            on_result=progress.advance,
        )
    except Exception as error:
        if not broker or not isinstance(error, _broker_errors()):
            raise
        from kombu.utils.url import maybe_sanitize_url

        progress.stop()
        where = maybe_sanitize_url(broker)  # never print a password
        reason = str(error).rstrip(".")
        progress.console.print(
            f"[red]cannot use the broker[/red] {where}: {reason}. Finished grades are saved; "
            "start redis and the workers (`mbgd-grader worker --broker URL`), then run again.",
            highlight=False,
        )
        return 1
    except KeyboardInterrupt:
        progress.stop()
        progress.console.print(
            "interrupted: every finished grade is saved in the gradebook; "
            "run the same command again to grade the rest."
        )
        return 130
    finally:
        progress.stop()
    entries = [
        Entry(i, outcome.results[i.submission])
        for i in outcome.items
        if i.submission in outcome.results
    ]
    write_summary(entries, out)
    print_class_table(entries, Console())
    problems = sum(1 for e in entries if e.result.status in PROBLEM_STATUSES)
    progress.console.print(
        f"{len(entries)} submissions: {outcome.graded} graded now, {outcome.skipped} unchanged "
        f"(skipped), {problems} timed out/crashed/unreadable. "
        f"Open {shown_name(str(out / 'summary.html'))}; "
        f"LMS import: {shown_name(str(out / 'gradebook.csv'))}",
        highlight=False,
        soft_wrap=True,
        markup=False,
    )
    for problem in outcome.harness_errors:  # names a submission, and why: text, not markup
        problem = escape(shown_name(problem))
        progress.console.print(f"[red]grader error[/red] {problem}", highlight=False)
    return 1 if outcome.harness_errors else 0
