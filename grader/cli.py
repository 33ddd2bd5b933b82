"""The `mbgd-grader` command: thin click wrappers around the grading core."""

from __future__ import annotations

import json

import click

from grader import __version__


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


if __name__ == "__main__":
    main()
