"""Write the sample submissions (correct, mistakes, broken, hostile) as .ipynb files.

    .venv/bin/python submissions/build_samples.py            # (re)write every sample
    .venv/bin/python submissions/build_samples.py --check    # exit 1 if any file would change
    .venv/bin/python submissions/build_samples.py --generate big_notebook --out /tmp/x.ipynb

Each notebook is assembled from `lab_blocks` so that variants differ only where they should;
the output is deterministic (fixed cell ids, sorted keys), so regenerating is byte-identical
and a review of a sample is a review of the few lines that make it what it is. Samples too
big to commit (`generate = "..."` in MANIFEST.toml) are written on demand by `GENERATORS`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import hostile_blocks  # noqa: E402
from lab_blocks import (  # noqa: E402
    EXERCISE_PLOT_PROMPT,
    EXERCISE_TRAIN_PROMPT,
    LAB_PLOT,
    UNSOLVED_PLOT,
    UNSOLVED_TRAIN,
    Cell,
    code,
    lab_cells,
    plot_all,
    run_cell,
    train20,
)

Sample = list[Cell] | bytes


def solved(train: Cell, plot: Cell | None = None, **lab: object) -> list[Cell]:
    """The lab, the exercise prompts and the learner's two answer cells."""
    return [
        *lab_cells(**lab),  # type: ignore[arg-type]
        EXERCISE_TRAIN_PROMPT,
        train,
        EXERCISE_PLOT_PROMPT,
        plot if plot is not None else plot_all(),
    ]


def inserted_after(cells: list[Cell], anchor: Cell, extra: Cell) -> list[Cell]:
    index = cells.index(anchor) + 1
    return [*cells[:index], extra, *cells[index:]]


OPTIM_SGD = code(
    """
    # Practice: batch size 20, written with nn.Linear and torch.optim.SGD
    from torch import nn

    dataset = Data()
    trainloader = DataLoader(dataset=dataset, batch_size=20)
    model = nn.Linear(1, 1)
    with torch.no_grad():
        model.weight.fill_(-15.0)
        model.bias.fill_(-10.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    LOSS20 = []
    for epoch in range(10):
        with torch.no_grad():
            LOSS20.append(criterion(model(X), Y).item())
        for x, y in trainloader:
            optimizer.zero_grad()
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
    """
)

PLOT_IN_TRAINING_CELL = """
# ...and the comparison right here, with plain numbers for the BGD losses
plt.plot([loss.item() for loss in LOSS_BGD], label="BGD")
plt.plot(LOSS_SGD, label="SGD")
plt.plot(LOSS_MINI5, label="mini-batch 5")
plt.plot(LOSS_MINI10, label="mini-batch 10")
plt.plot(LOSS20, label="mini-batch 20")
plt.legend()
plt.show()
"""

LAB_PLOT_PLUS_20 = code(
    LAB_PLOT.source
    + '\nplt.plot(LOSS20,label = "Mini-Batch Gradient Descent, Batch size: 20")\nplt.legend()'
)

STALE_LOADER = "train_loader = DataLoader(dataset=dataset, batch_size={batch_size})"
SHUFFLED_LOADER = "trainloader = DataLoader(dataset=dataset, batch_size={batch_size}, shuffle=True)"
NOISY_LOADER = (
    "from torch.utils.data import TensorDataset\n"
    "trainloader = DataLoader(TensorDataset(X, Y), batch_size={batch_size})"
)

CRASH_CELL = code(
    """
    # How far did SGD get?
    print("last SGD loss:", LOSS_sgd[-1])
    """
)

FOREVER_CELL = code(
    """
    # Keep the kernel busy forever: this cell never finishes
    while True:
        pass
    """
)

NOT_JSON = b"""# Mini-batch gradient descent (saved from the editor as text, not as a notebook)
import torch
from torch.utils.data import Dataset, DataLoader

LOSS20 = []
# TODO: train with batch size 20
"""


def samples() -> dict[str, Sample]:
    """Every committed sample, keyed by its path under submissions/."""
    lab = lab_cells()
    sgd_run = run_cell("train_model_SGD", "stochastic gradient descent")
    return {
        # correct
        "correct/loss20.ipynb": solved(train20()),
        "correct/loss_mini20.ipynb": solved(
            train20(list_name="LOSS_MINI20", surface=True), plot_all("LOSS_MINI20")
        ),
        "correct/own_name.ipynb": solved(
            train20(list_name="batch20_losses"), plot_all("batch20_losses")
        ),
        "correct/epochs15.ipynb": solved(train20(epochs=15)),
        "correct/optim_sgd.ipynb": solved(OPTIM_SGD),
        "correct/plot_in_training_cell.ipynb": solved(
            train20(extra_after=PLOT_IN_TRAINING_CELL), UNSOLVED_PLOT
        ),
        "correct/lab_plot_cell_unchanged.ipynb": solved(train20(), LAB_PLOT_PLUS_20),
        # mistakes
        "mistakes/stale_loader.ipynb": solved(train20(loader=STALE_LOADER)),
        "mistakes/batch_size_30.ipynb": solved(train20(batch_size=30)),
        "mistakes/weights_not_reset.ipynb": solved(train20(reset_weights=False)),
        "mistakes/loss_after_epoch.ipynb": solved(train20(record="end")),
        "mistakes/shuffled_loader.ipynb": solved(train20(loader=SHUFFLED_LOADER)),
        "mistakes/batch_losses_summed.ipynb": solved(train20(record="sum")),
        "mistakes/batch_losses_appended.ipynb": solved(train20(record="batch")),
        "mistakes/noisy_targets.ipynb": solved(train20(loader=NOISY_LOADER)),
        "mistakes/sum_criterion.ipynb": solved(train20(loss="torch.sum((yhat - y) ** 2)")),
        "mistakes/batch_gd.ipynb": solved(train20(loop_loader="[(X, Y)]")),
        "mistakes/full_data_in_loop.ipynb": solved(
            train20(yhat="forward(X)", loss="criterion(yhat, Y)")
        ),
        "mistakes/grads_not_zeroed.ipynb": solved(train20(zero_grad=False)),
        "mistakes/learning_rate_0_01.ipynb": solved(train20(lr="0.01")),
        "mistakes/wrong_list.ipynb": solved(train20(append_to="LOSS_MINI10")),
        "mistakes/data_seed.ipynb": solved(train20(), seed=2),
        "mistakes/data_noise.ipynb": solved(train20(), noise="0.2"),
        "mistakes/too_few_epochs.ipynb": solved(train20(epochs=5)),
        "mistakes/no_legend.ipynb": solved(train20(), plot_all(legend=False)),
        "mistakes/plot_missing_batch20.ipynb": solved(train20(), plot_all(include_answer=False)),
        "mistakes/exercise_figure_without_bgd.ipynb": solved(
            train20(), plot_all(leave_out=("LOSS_BGD",))
        ),
        # broken
        "broken/unsolved.ipynb": [
            *lab,
            EXERCISE_TRAIN_PROMPT,
            UNSOLVED_TRAIN,
            EXERCISE_PLOT_PROMPT,
            UNSOLVED_PLOT,
        ],
        "broken/crash_mid.ipynb": inserted_after(solved(train20()), sgd_run, CRASH_CELL),
        "broken/infinite_loop.ipynb": [*solved(train20()), FOREVER_CELL],
        "broken/not_json.ipynb": NOT_JSON,
        # hostile (short notebooks; see hostile_blocks)
        **hostile_blocks.samples(solved(train20())),
    }


def to_notebook(cells: list[Cell]) -> str:
    """Deterministic .ipynb text: fixed ids and metadata, no outputs."""
    nb = nbformat.v4.new_notebook()
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    for index, cell in enumerate(cells):
        if cell.kind == "code":
            new = nbformat.v4.new_code_cell(cell.source)
        elif cell.kind == "raw":
            new = nbformat.v4.new_raw_cell(cell.source)
        else:
            new = nbformat.v4.new_markdown_cell(cell.source)
        new.id = f"cell-{index:03d}"
        nb.cells.append(new)
    nbformat.validate(nb)
    return nbformat.writes(nb) + "\n"


def render(sample: Sample) -> bytes:
    return sample if isinstance(sample, bytes) else to_notebook(sample).encode("utf-8")


GENERATORS: dict[str, Callable[[Path], None]] = hostile_blocks.GENERATORS


def write_all(root: Path = HERE, check: bool = False) -> list[str]:
    """Write (or with check=True only compare) every sample; returns the paths that differ."""
    changed = []
    for relative, sample in samples().items():
        path = root / relative
        data = render(sample)
        if path.exists() and path.read_bytes() == data:
            continue
        changed.append(relative)
        if not check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report files that differ")
    parser.add_argument("--generate", choices=sorted(GENERATORS), help="write one big sample")
    parser.add_argument("--out", type=Path, help="where --generate writes")
    args = parser.parse_args(argv)
    if args.generate:
        if args.out is None:
            parser.error("--generate needs --out")
        GENERATORS[args.generate](args.out)
        return 0
    changed = write_all(check=args.check)
    for relative in changed:
        print(("differs: " if args.check else "wrote: ") + relative)
    return 1 if args.check and changed else 0


if __name__ == "__main__":
    sys.exit(main())
