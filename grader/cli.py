"""The `mbgd-grader` command: thin click wrappers around the grading core."""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path

import click

from grader import __version__
from grader.execution.limits import RunLimits

# The budgets' defaults live in RunLimits; the help texts show them from there.
TOTAL_TIMEOUT = f"{RunLimits.model_fields['total_timeout'].default:g}"
CELL_TIMEOUT = f"{RunLimits.model_fields['cell_timeout'].default:g}"


def require_extra(extra: str, command: str, *modules: str) -> None:
    """A clear usage error naming the extra to install when a command's libraries are missing
    (a learner's `pip install mbgd-grader` has neither the service nor Celery)."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as error:
            missing = error.name or name
            raise click.UsageError(
                f"`mbgd-grader {command}` needs the '{extra}' extra ({missing} is not "
                f"installed): install mbgd-grader[{extra}], e.g. "
                f"pip install 'mbgd-grader[{extra}]'"
            ) from None


def use_lab_notebooks(labs: tuple[Path, ...]) -> None:
    """Check the course's lab notebooks now (a clear error, not a silent miss later) and
    hand them to the warm pool through MBGD_LAB_NOTEBOOKS (`grader.execution.prefix`)."""
    from grader.execution.prefix import LAB_NOTEBOOKS_ENV, LabNotebookError, lab_from_notebook

    try:
        for lab in labs:
            lab_from_notebook(lab)
    except LabNotebookError as error:
        raise click.BadParameter(str(error), param_hint="--lab") from error
    known = [p for p in os.environ.get(LAB_NOTEBOOKS_ENV, "").split(os.pathsep) if p]
    os.environ[LAB_NOTEBOOKS_ENV] = os.pathsep.join([*known, *(str(p.resolve()) for p in labs)])


# Options several commands share, spelled once.
notebook_timeout_option = click.option(
    "--timeout",
    type=click.FloatRange(1, 86400),
    default=None,
    help=f"Seconds one notebook may run in total.  [default: {TOTAL_TIMEOUT}]",
)
export_rubric_option = click.option(
    "--rubric",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Rubric TOML file, checked and copied in.  [default: the shipped rubric]",
)
loglevel_option = click.option("--loglevel", default="INFO", show_default=True)


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
@click.option(
    "--lti-config",
    default=None,
    metavar="TOML",
    help="LTI 1.3 platform registrations: post scores to their gradebooks (AGS) "
    "[default: $MBGD_LTI_CONFIG; none: LTI off].",
)
def serve(
    host: str,
    port: int,
    db: str | None,
    broker: str | None,
    slots: int | None,
    lti_config: str | None,
) -> None:
    """Run the LMS webhook service (secrets come from MBGD_* environment variables)."""
    require_extra("service", "serve", "fastapi", "uvicorn", "httpx")
    import logging

    import uvicorn

    from grader.service import SettingsError, create_app, from_environment

    try:
        settings = from_environment(db=db, broker=broker, slots=slots, lti_config=lti_config)
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
@notebook_timeout_option
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
@click.option(
    "--lab",
    "labs",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The lab notebook as your course hands it out (repeatable: one per published "
    "version): submissions that begin with its cells unchanged reuse a warm run of them.",
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
    labs: tuple[Path, ...],
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

    if broker:
        require_extra("celery", "grade --broker", "celery", "redis")
    if labs:
        use_lab_notebooks(labs)
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
@loglevel_option
def worker(
    broker: str,
    concurrency: int | None,
    timeout: float | None,
    visibility_timeout: float | None,
    loglevel: str,
) -> None:
    """Grade notebooks sent by `mbgd-grader grade --broker URL` (run on any number of hosts)."""
    require_extra("celery", "worker", "celery", "redis")
    import os

    from grader.remote import DEFAULT_TOTAL_TIMEOUT, run_worker

    run_worker(
        broker,
        concurrency=concurrency or os.cpu_count() or 1,
        total_timeout=timeout or DEFAULT_TOTAL_TIMEOUT,
        visibility_timeout=visibility_timeout,
        loglevel=loglevel,
    )


@main.command()
@click.option("--url", required=True, help="The XQueue server, e.g. https://xqueue.example.org")
@click.option("--queue", "queue_name", required=True, help="The queue the course's problem names.")
@click.option(
    "--jobs",
    "-j",
    type=click.IntRange(1, 512),
    default=None,
    help="Submissions graded at once (with --broker: sent to the workers at once).  "
    "[default: number of cores]",
)
@click.option(
    "--broker",
    metavar="URL",
    help="Grade on Celery workers (`mbgd-grader worker`) via this Redis URL.",
)
@click.option(
    "--state",
    default="mbgd-xqueue-state",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder of the journal of pulled, unanswered submissions (one per worker).",
)
@notebook_timeout_option
@click.option(
    "--poll-max",
    type=click.FloatRange(0.1, 600),
    default=10.0,
    show_default=True,
    help="Longest pause between two polls of an empty queue (seconds).",
)
@click.option(
    "--server",
    type=click.Choice(["auto", "xqueue", "edx-submissions"], case_sensitive=False),
    default=None,
    help="Which server the queue is on: it decides how the score is read (points for "
    "openedx/xqueue, a 0..1 fraction for edx-submissions); auto tells it at the first login.  "
    "[default: MBGD_XQUEUE_SERVER, else auto]",
)
@loglevel_option
def xqueue(
    url: str,
    queue_name: str,
    jobs: int | None,
    broker: str | None,
    state: Path,
    timeout: float | None,
    poll_max: float,
    server: str | None,
    loglevel: str,
) -> None:
    """Grade an Open edX course's notebooks from its XQueue, as a long-running pull worker.

    Credentials of the XQueue user come from MBGD_XQUEUE_USER and MBGD_XQUEUE_PASSWORD.
    SIGTERM or Ctrl-C stops it after the running gradings (a second one at once); what was
    pulled and not answered is kept in --state and finished at the next start.
    """
    import logging
    import os

    require_extra("xqueue", "xqueue", "httpx")
    if broker:
        require_extra("celery", "xqueue --broker", "celery", "redis")
    from grader.errors import UsageError
    from grader.pipeline import GradeOptions
    from grader.xqueue.worker import Settings, run, server_setting

    user = os.environ.get("MBGD_XQUEUE_USER", "")
    password = os.environ.get("MBGD_XQUEUE_PASSWORD", "")
    if not user or not password:
        raise click.UsageError("set MBGD_XQUEUE_USER and MBGD_XQUEUE_PASSWORD")
    limits = RunLimits()
    if timeout is not None:
        limits = limits.model_copy(update={"total_timeout": timeout})
    logging.basicConfig(level=loglevel.upper(), format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per poll otherwise
    settings = Settings(
        url=url,
        queue=queue_name,
        username=user,
        password=password,
        state=state,
        jobs=jobs or os.cpu_count() or 1,
        broker=broker,
        options=GradeOptions(limits=limits),
        poll_max=poll_max,
        server=server.lower() if server else server_setting(),
    )
    try:
        run(settings)
    except (UsageError, ValueError) as error:  # a state folder in use, a URL that is not one
        raise click.UsageError(str(error)) from error


@main.group()
def export() -> None:
    """Write what to upload to a course platform (the grader as a wheel, rubric, scripts)."""


@export.command("gradescope")
@click.option(
    "--out",
    default="autograder.zip",
    show_default=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The zip to upload as the assignment's autograder.",
)
@export_rubric_option
def export_gradescope_command(out: Path, rubric: Path | None) -> None:
    """Gradescope: a zip with setup.sh and run_autograder at its root (see README)."""
    from grader.errors import Unavailable, UsageError
    from grader.platforms.export import export_gradescope

    try:
        written = export_gradescope(out, rubric)
    except UsageError as error:  # a bad rubric, part id or --out
        raise click.UsageError(str(error)) from error
    except (Unavailable, OSError) as error:  # no wheel could be made, a file not written
        raise click.ClickException(str(error)) from error
    click.echo(f"wrote {written}: upload it on Gradescope (Configure Autograder > Zip file)")


@export.command("coursera")
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder to write the Dockerfile and what it copies into the image.",
)
@click.option(
    "--part",
    "parts",
    multiple=True,
    required=True,
    metavar="PART_ID",
    help="The partId of an assignment part this grader grades (repeat for several).",
)
@export_rubric_option
def export_coursera_command(out: Path, parts: tuple[str, ...], rubric: Path | None) -> None:
    """Coursera (custom grader v2): a folder with a Dockerfile, for `coursera_autograder`."""
    from grader.errors import Unavailable, UsageError
    from grader.platforms.export import export_coursera

    try:
        written = export_coursera(out, list(parts), rubric)
    except UsageError as error:  # a bad rubric, part id or --out
        raise click.UsageError(str(error)) from error
    except (Unavailable, OSError) as error:  # no wheel could be made, a file not written
        raise click.ClickException(str(error)) from error
    click.echo(f"wrote {written}/: zip its contents and upload with coursera_autograder")


@main.command()
@click.option(
    "--root",
    default="/autograder",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Gradescope's folder: submission/ in, results/results.json out.",
)
@click.option("--rubric", type=click.Path(dir_okay=False, path_type=Path), help="Rubric TOML file.")
def gradescope(root: Path, rubric: Path | None) -> None:
    """Grade the one notebook in ROOT/submission into ROOT/results/results.json (Gradescope)."""
    from grader.platforms.gradescope import Layout, run

    sys.exit(run(Layout(root), rubric))


@main.command()
@click.option(
    "--config",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="coursera.json written by `mbgd-grader export coursera`.",
)
@click.option(
    "--shared",
    default="/shared",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Coursera's folder: submission/ in, feedback.json and htmlFeedback.html out.",
)
def coursera(config: Path, shared: Path) -> None:
    """Grade the learner's file in SHARED/submission for the part in $partId (Coursera)."""
    import os

    from grader.platforms.coursera import run

    sys.exit(run(shared, config, os.environ))


if __name__ == "__main__":
    main()
