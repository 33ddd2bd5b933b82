"""A notebook that runs the lab's cells as the lab has them (our own code, same arithmetic).

Used to prove the reference reproduces the lab bit for bit: the same global-RNG data, a
Dataset whose targets come from the global X, DataLoaders, `.data` updates, and LOSS_BGD
holding tensors that require grad. The lab's plotting is left out: it does not touch the numbers.
"""

from __future__ import annotations

import nbformat
from nbformat.v4 import new_code_cell, new_notebook

SETUP = """\
import json
import torch
from torch.utils.data import Dataset, DataLoader
torch.manual_seed(SEED)
X = torch.arange(-3, 3, 0.1).view(-1, 1)
f = 1 * X - 1
Y = f + 0.1 * torch.randn(X.size())

def forward(x):
    return w * x + b

def criterion(yhat, y):
    return torch.mean((yhat - y) ** 2)
"""

BGD = """\
w = torch.tensor(-15.0, requires_grad = True)
b = torch.tensor(-10.0, requires_grad = True)
lr = 0.1
LOSS_BGD = []
def train_model_BGD(epochs):
    for epoch in range(epochs):
        Yhat = forward(X)
        loss = criterion(Yhat, Y)
        LOSS_BGD.append(loss)
        loss.backward()
        w.data = w.data - lr * w.grad.data
        b.data = b.data - lr * b.grad.data
        w.grad.data.zero_()
        b.grad.data.zero_()
train_model_BGD(EPOCHS)
"""

DATA_CLASS = """\
class Data(Dataset):
    def __init__(self):
        self.x = torch.arange(-3, 3, 0.1).view(-1, 1)
        self.y = 1 * X - 1
        self.len = self.x.shape[0]
    def __getitem__(self, index):
        return self.x[index], self.y[index]
    def __len__(self):
        return self.len
"""

LOADER_RUN = """\
dataset = Data()
{loader}
{reset}
{name} = []
lr = 0.1
def train_{name}(epochs):
    for epoch in range(epochs):
        {name}.append(criterion(forward(X), Y).tolist())
        for x, y in trainloader:
            yhat = forward(x)
            loss = criterion(yhat, y)
            loss.backward()
            w.data = w.data - lr * w.grad.data
            b.data = b.data - lr * b.grad.data
            w.grad.data.zero_()
            b.grad.data.zero_()
train_{name}(EPOCHS)
"""

LOADER = "trainloader = DataLoader(dataset = dataset, batch_size = {size})"
RESET = (
    "w = torch.tensor(-15.0, requires_grad = True)\nb = torch.tensor(-10.0, requires_grad = True)"
)


def loader_run(name: str, size: int, *, new_loader: bool = True, reset: bool = True) -> str:
    """One mini-batch method's cell as the lab writes it. Learners' slips: reusing the last
    cell's loader (`new_loader=False`), carrying the trained weights over (`reset=False`)."""
    loader = LOADER.format(size=size) if new_loader else ""
    return LOADER_RUN.format(name=name, loader=loader, reset=RESET if reset else "")


REPORT = """\
print(json.dumps({
    "LOSS_BGD": [loss.item() for loss in LOSS_BGD],
    "LOSS_SGD": LOSS_SGD, "LOSS_MINI5": LOSS_MINI5, "LOSS_MINI10": LOSS_MINI10, "LOSS20": LOSS20,
}))
"""


def replica_notebook(seed: int, epochs: int = 10) -> nbformat.NotebookNode:
    cells = [f"SEED = {seed}\nEPOCHS = {epochs}", SETUP, BGD, DATA_CLASS]
    for name, size in (("LOSS_SGD", 1), ("LOSS_MINI5", 5), ("LOSS_MINI10", 10), ("LOSS20", 20)):
        cells.append(loader_run(name, size))
    cells.append(REPORT)
    return new_notebook(cells=[new_code_cell(source) for source in cells])


# -- learners' mistakes, written as a learner would write the batch-20 cell -----------------

MISTAKE_RUN = """\
dataset = Data()
trainloader = DataLoader(dataset = dataset, batch_size = 20)
w = torch.tensor(-15.0, requires_grad = True)
b = torch.tensor(-10.0, requires_grad = True)
OUT = []
lr = {lr}
def train_mistake(epochs):
    for epoch in range(epochs):
        {start}
        for x, y in trainloader:
            yhat = forward({x})
            loss = criterion(yhat, {y})
            {batch}
            loss.backward()
            w.data = w.data - lr * w.grad.data
            b.data = b.data - lr * b.grad.data
            {zero}
        {end}
train_mistake(EPOCHS)
MISTAKES[SEED][{mistake_id!r}] = OUT
"""

START = "OUT.append(criterion(forward(X), Y).tolist())"
ZERO = "w.grad.data.zero_()\n            b.grad.data.zero_()"
MISTAKE_CELLS: dict[str, dict[str, str]] = {
    "full_data_in_loop": {"x": "X", "y": "Y"},
    "grads_not_zeroed": {"zero": "pass"},
    "lr_0.01": {"lr": "0.01"},
    "lr_0.5": {"lr": "0.5"},
    "loss_start_and_end": {"end": START},
    "epoch_and_batch_losses": {"batch": "OUT.append(loss.tolist())"},
    "batch_losses_and_epoch_end": {
        "start": "pass",
        "batch": "OUT.append(loss.tolist())",
        "end": START,
    },
    "last_batch_loss": {"start": "pass", "end": "OUT.append(loss.tolist())"},
}


def mistake_cell(mistake_id: str) -> str:
    fields = {"lr": "0.1", "start": START, "x": "x", "y": "y", "batch": "pass"}
    fields |= {"zero": ZERO, "end": "pass"} | MISTAKE_CELLS[mistake_id]
    return MISTAKE_RUN.format(mistake_id=mistake_id, **fields)


def mistakes_notebook(seeds: tuple[int, ...], epochs: int = 10) -> nbformat.NotebookNode:
    """The lab for each seed, then each mistake of `MISTAKE_CELLS` in its own batch-20 cell;
    the last cell prints {seed: {mistake id: list}} as JSON. One kernel for every seed."""
    cells = ["import json\nMISTAKES = {}"]
    for seed in seeds:
        cells += [f"SEED = {seed}\nEPOCHS = {epochs}\nMISTAKES[SEED] = {{}}", SETUP, BGD]
        cells.append(DATA_CLASS)
        for name, size in (("LOSS_SGD", 1), ("LOSS_MINI5", 5), ("LOSS_MINI10", 10)):
            cells.append(loader_run(name, size))
        cells += [mistake_cell(mistake_id) for mistake_id in MISTAKE_CELLS]
    cells.append("print(json.dumps(MISTAKES))")
    return new_notebook(cells=[new_code_cell(source) for source in cells])
