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
