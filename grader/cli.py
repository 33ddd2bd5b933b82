"""The `mbgd-grader` command: thin click wrappers around the grading core."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from grader import __version__
from grader.execution.limits import RunLimits

# The budgets' defaults live in RunLimits; the help texts show them from there.
TOTAL_TIMEOUT = f"{RunLimits.model_fields['total_timeout'].default:g}"
CELL_TIMEOUT = f"{RunLimits.model_fields['cell_timeout'].default:g}"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mbgd-grader")
def main() -> None:
    """Grade the PyTorch lab 'Mini-Batch Gradient Descent'."""


@main.command()
@click.option("--seed", default=1, show_default=True, help="torch.manual_seed of the lab.")
@click.option("--epochs", default=10, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--lr", default=0.1, show_default=True, type=float)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def reference(seed: int, epochs: int, lr: float, as_json: bool) -> None:
    """Print the expected per-epoch losses of the five methods."""
    from reference import expected

    losses = expected(seed=seed, epochs=epochs, lr=lr)
    if as_json:
        click.echo(json.dumps(losses, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Expected loss at the start of each epoch (seed {seed}, lr {lr})")
    table.add_column("epoch", justify="right")
    for name in losses:
        table.add_column(name, justify="right")
    for epoch in range(epochs):
        table.add_row(str(epoch), *(f"{losses[name][epoch]:.6g}" for name in losses))
    Console().print(table)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--db",
    default=None,
    help="sqlite:///PATH (or a path) for submissions, results and the callback outbox "
    "[default: $MBGD_DB or ./mbgd-service.sqlite3].",
)
@click.option("--broker", default=None, help="redis://... : grade on Celery workers.")
@click.option("--slots", default=None, type=click.IntRange(1, 1024), help="Concurrent gradings.")
def serve(host: str, port: int, db: str | None, broker: str | None, slots: int | None) -> None:
    """Run the LMS webhook service (secrets come from MBGD_* environment variables)."""
    import logging

    import uvicorn

    from grader.service import SettingsError, create_app, from_environment

    try:
        settings = from_environment(db=db, broker=broker, slots=slots)
    except SettingsError as exc:
        raise click.UsageError(str(exc)) from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    uvicorn.run(create_app(settings), host=host, port=port, timeout_graceful_shutdown=10)


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--out",
    default="reports",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Output folder: per-submission reports, gradebook.sqlite/.csv, summary.html.",
)
@click.option(
    "--jobs",
    "-j",
    type=click.IntRange(1, 512),
    default=None,
    help="Notebooks graded at once.  [default: number of cores]",
)
@click.option("--rubric", type=click.Path(exists=True, dir_okay=False), help="Rubric TOML file.")
@click.option(
    "--integrity",
    is_flag=True,
    help="Re-run each notebook with a secret seed of its own (derived from the key "
    "$MBGD_SECRET_SEED, else one drawn per gradebook) and flag answers that do not follow "
    "it (hard-coded or copied numbers).",
)
@click.option("--require-sandbox", is_flag=True, help="Refuse to run without bubblewrap.")
@click.option(
    "--timeout",
    type=click.FloatRange(1, 86400),
    default=None,
    help=f"Seconds one notebook may run in total.  [default: {TOTAL_TIMEOUT}]",
)
@click.option(
    "--cell-timeout",
    type=click.FloatRange(1, 86400),
    default=None,
    help=f"Seconds one cell may run before it is stopped.  [default: {CELL_TIMEOUT}]",
)
@click.option(
    "--broker",
    metavar="URL",
    help="Send the work to Celery workers (`mbgd-grader worker`) via this Redis URL.",
)
@click.option(
    "--learner-from",
    type=click.Choice(["path", "first-dir", "stem"]),
    default="path",
    show_default=True,
    help="Learner column: the submission id, its first folder, or the file stem.",
)
@click.option(
    "--no-reuse",
    is_flag=True,
    help="Run every cell of every notebook, even the lab's own first cells that a warm "
    "parent has already run (same results, slower).",
)
def grade(
    paths: tuple[Path, ...],
    out: Path,
    jobs: int | None,
    rubric: str | None,
    integrity: bool,
    require_sandbox: bool,
    timeout: float | None,
    cell_timeout: float | None,
    broker: str | None,
    learner_from: str,
    no_reuse: bool,
) -> None:
    """Grade notebooks: PATH is a notebook or a folder searched recursively.

    Each notebook's submission id is its path relative to the PATH it was found under,
    without `.ipynb`: `alice.ipynb` is `alice`; `correct/canonical.ipynb` is
    `correct/canonical`; nbgrader's `submitted/alice/ps1/lab.ipynb` (PATH `submitted`) is
    `alice/ps1/lab` (use --learner-from first-dir for `alice`). Its reports go to
    OUT/<submission id>/. Grades are saved as they finish in OUT/gradebook.sqlite: run the
    same command again to resume; unchanged notebooks are skipped, changed ones re-graded.

    Exit status: 0 when grading ran (whatever the scores), 2 for a usage error, 1 when the
    grader itself failed on some notebook.
    """
    import os

    from grader.batch import grade_main
    from grader.errors import UsageError
    from grader.pipeline import GradeOptions

    limits = RunLimits(require_sandbox=require_sandbox)
    if timeout is not None:
        limits = limits.model_copy(update={"total_timeout": timeout})
    if cell_timeout is not None:
        limits = limits.model_copy(update={"cell_timeout": cell_timeout})
    options = GradeOptions(
        rubric_path=rubric, limits=limits, integrity=integrity, reuse=not no_reuse
    )
    try:
        options.rubric()
        code = grade_main(
            list(paths),
            out,
            options,
            jobs=jobs or os.cpu_count() or 1,
            broker=broker,
            learner_from=learner_from,  # type: ignore[arg-type]
        )
    except UsageError as error:  # BatchError, RubricError: what was asked cannot be done
        raise click.UsageError(str(error)) from error
    sys.exit(code)


@main.command()
@click.option("--broker", required=True, metavar="URL", help="Redis URL, e.g. redis://host:6379/0")
@click.option(
    "--concurrency",
    "-c",
    type=click.IntRange(1, 512),
    default=None,
    help="Notebooks graded at once.  [default: number of cores]",
)
@click.option(
    "--timeout",
    type=click.FloatRange(1, 86400),
    default=None,
    help=f"The batches' per-notebook --timeout; sizes time limits.  [default: {TOTAL_TIMEOUT}]",
)
@click.option(
    "--visibility-timeout",
    type=click.FloatRange(1, 86400),
    default=None,
    help="Seconds before a task taken by a vanished worker is handed out again.  "
    "[default: longer than the hard time limit]",
)
@click.option("--loglevel", default="INFO", show_default=True)
def worker(
    broker: str,
    concurrency: int | None,
    timeout: float | None,
    visibility_timeout: float | None,
    loglevel: str,
) -> None:
    """Grade notebooks sent by `mbgd-grader grade --broker URL` (run on any number of hosts)."""
    import os

    from grader.remote import DEFAULT_TOTAL_TIMEOUT, run_worker

    run_worker(
        broker,
        concurrency=concurrency or os.cpu_count() or 1,
        total_timeout=timeout or DEFAULT_TOTAL_TIMEOUT,
        visibility_timeout=visibility_timeout,
        loglevel=loglevel,
    )


if __name__ == "__main__":
    main()
