"""Building blocks of the sample notebooks: the lab's cell structure in our own words.

Every sample is the same lab (imports, a lean `plot_error_surfaces`, seed, data, forward,
criterion, batch gradient descent, the `Data` set, DataLoader training with batch 1, 5 and 10,
the comparison plot) followed by the learner's answer to the exercise. The arithmetic is the
lab's, quirks included: `LOSS_BGD` holds tensors that require grad, `Data.y` is built from the
global `X` without noise, and every loss list records the full-data loss at the start of each
epoch. Samples differ only in the keyword arguments they pass here and in their answer cells.
"""

from __future__ import annotations

from dataclasses import dataclass
from textwrap import dedent


@dataclass(frozen=True)
class Cell:
    kind: str  # "code" or "markdown"
    source: str


def md(text: str) -> Cell:
    return Cell("markdown", dedent(text).strip())


def code(text: str) -> Cell:
    return Cell("code", dedent(text).strip())


IMPORTS = code(
    """
    # Libraries used throughout
    import numpy as np
    import matplotlib.pyplot as plt
    from mpl_toolkits import mplot3d
    """
)

SURFACES = code(
    '''
    # Helper for the pictures: the loss over a (w, b) grid and the path training takes.
    # It only draws figures; nothing here changes the training.
    class plot_error_surfaces(object):
        def __init__(self, w_range, b_range, X, Y, n_samples=30, go=True):
            self.x = X.numpy().ravel()
            self.y = Y.numpy().ravel()
            grid_w = np.linspace(-w_range, w_range, n_samples)
            grid_b = np.linspace(-b_range, b_range, n_samples)
            self.w, self.b = np.meshgrid(grid_w, grid_b)
            guesses = self.w[..., None] * self.x + self.b[..., None]
            self.Z = ((guesses - self.y) ** 2).mean(axis=-1)
            self.W, self.B, self.LOSS = [], [], []
            self.n = 0
            if go:
                axes = plt.figure(figsize=(7.5, 5)).add_subplot(projection="3d")
                axes.plot_surface(self.w, self.b, self.Z, cmap="viridis", edgecolor="none")
                axes.set_title("Loss surface")
                axes.set_xlabel("w")
                axes.set_ylabel("b")
                plt.show()
                self._contour("Loss surface contour")
                plt.show()

        def _contour(self, title):
            plt.contour(self.w, self.b, self.Z)
            plt.scatter(self.W, self.B, c="r", marker="x")
            plt.title(title)
            plt.xlabel("w")
            plt.ylabel("b")

        def set_para_loss(self, W, B, loss):
            """Remember one point of the training path."""
            self.n += 1
            self.W.append(W)
            self.B.append(B)
            self.LOSS.append(loss)

        def final_plot(self):
            axes = plt.figure().add_subplot(projection="3d")
            axes.plot_wireframe(self.w, self.b, self.Z)
            axes.scatter(self.W, self.B, self.LOSS, c="r", marker="x", s=200)
            plt.show()
            plt.figure()
            self._contour("Training path")
            plt.show()

        def plot_ps(self):
            """Data space (points and current line) next to parameter space (the path)."""
            plt.figure(figsize=(10, 4))
            plt.subplot(121)
            plt.plot(self.x, self.y, "ro", label="training points")
            plt.plot(self.x, self.W[-1] * self.x + self.B[-1], label="estimated line")
            plt.xlabel("x")
            plt.ylabel("y")
            plt.title("Data space, iteration " + str(self.n))
            plt.subplot(122)
            self._contour("Parameter space")
            plt.show()
    '''
)


def seed_cell(seed: int = 1) -> Cell:
    return code(
        f"""
        # PyTorch, and a fixed seed so everyone gets the same noise
        import torch
        torch.manual_seed({seed})
        """
    )


def data_cell(noise: str = "0.1") -> Cell:
    return code(
        f"""
        # The line to learn (slope 1, bias -1) and noisy samples of it
        X = torch.arange(-3, 3, 0.1).view(-1, 1)
        f = 1 * X - 1
        Y = f + {noise} * torch.randn(X.size())
        """
    )


DATA_PLOT = code(
    """
    # Look at the data
    plt.plot(X.numpy(), Y.numpy(), "rx", label="y")
    plt.plot(X.numpy(), f.numpy(), label="f")
    plt.xlabel("x")
    plt.ylabel("y")
    plt.legend()
    plt.show()
    """
)


FORWARD = code(
    """
    # The model: a line with slope w and bias b
    def forward(x):
        return w * x + b
    """
)

CRITERION = code(
    """
    # Mean squared error
    def criterion(yhat, y):
        return torch.mean((yhat - y) ** 2)
    """
)

NEW_SURFACE_WITH_FIGURES = code(
    """
    # Surface object for the batch gradient descent run
    get_surface = plot_error_surfaces(15, 13, X, Y, 30)
    """
)

NEW_SURFACE = code(
    """
    # A fresh surface object for the next run (no new figures yet)
    get_surface = plot_error_surfaces(15, 13, X, Y, 30, go=False)
    """
)

BGD = code(
    """
    # Batch gradient descent: every step uses all 60 points
    w = torch.tensor(-15.0, requires_grad=True)
    b = torch.tensor(-10.0, requires_grad=True)
    lr = 0.1
    LOSS_BGD = []

    def train_model_BGD(epochs):
        for epoch in range(epochs):
            Yhat = forward(X)
            loss = criterion(Yhat, Y)
            LOSS_BGD.append(loss)
            get_surface.set_para_loss(w.data.tolist(), b.data.tolist(), loss.tolist())
            get_surface.plot_ps()
            loss.backward()
            w.data = w.data - lr * w.grad.data
            b.data = b.data - lr * b.grad.data
            w.grad.data.zero_()
            b.grad.data.zero_()
    """
)

RUN_BGD = code(
    """
    # Ten epochs of batch gradient descent
    train_model_BGD(10)
    """
)

DATASET_IMPORTS = code(
    """
    # Dataset and DataLoader from PyTorch
    from torch.utils.data import Dataset, DataLoader
    """
)

DATA_CLASS = code(
    """
    # The training set. Note: y is built from the global X and has no noise.
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
)


def loader_cell(batch_size: int, comment: str) -> Cell:
    return code(
        f"""
        # {comment}
        dataset = Data()
        trainloader = DataLoader(dataset=dataset, batch_size={batch_size})
        """
    )


def minibatch_train_cell(list_name: str, fn_name: str, title: str, *, extra_plot: bool) -> Cell:
    """The lab's DataLoader training function (SGD, mini-batch 5 and 10 share this shape)."""
    closing = "\n                get_surface.plot_ps()" if extra_plot else ""
    return code(
        f"""
        # {title}
        w = torch.tensor(-15.0, requires_grad=True)
        b = torch.tensor(-10.0, requires_grad=True)
        {list_name} = []
        lr = 0.1

        def {fn_name}(epochs):
            for epoch in range(epochs):
                Yhat = forward(X)
                get_surface.set_para_loss(
                    w.data.tolist(), b.data.tolist(), criterion(Yhat, Y).tolist()
                )
                get_surface.plot_ps()
                {list_name}.append(criterion(forward(X), Y).tolist())
                for x, y in trainloader:
                    yhat = forward(x)
                    loss = criterion(yhat, y)
                    get_surface.set_para_loss(w.data.tolist(), b.data.tolist(), loss.tolist())
                    loss.backward()
                    w.data = w.data - lr * w.grad.data
                    b.data = b.data - lr * b.grad.data
                    w.grad.data.zero_()
                    b.grad.data.zero_(){closing}
        """
    )


def run_cell(fn_name: str, what: str) -> Cell:
    return code(
        f"""
        # Ten epochs of {what}
        {fn_name}(10)
        """
    )


LAB_PLOT = code(
    """
    # Plot out the LOSS for each method
    plt.plot(LOSS_BGD,label = "Batch Gradient Descent")
    plt.plot(LOSS_SGD,label = "Stochastic Gradient Descent")
    plt.plot(LOSS_MINI5,label = "Mini-Batch Gradient Descent, Batch size: 5")
    plt.plot(LOSS_MINI10,label = "Mini-Batch Gradient Descent, Batch size: 10")
    plt.legend()
    """
)
"""The lab's comparison cell, character for character: learners paste it, so samples do too."""

EXERCISE_TRAIN_PROMPT = md(
    """
    **Exercise.** Train with mini-batch gradient descent and a batch size of 20. Keep the loss
    of every epoch in a list called `LOSS20`.
    """
)

EXERCISE_PLOT_PROMPT = md(
    """
    **Exercise.** Draw one figure with the losses of all five methods.
    """
)

UNSOLVED_TRAIN = code(
    """
    # Practice: mini-batch gradient descent with a batch size of 20.
    dataset = Data()
    """
)

UNSOLVED_PLOT = code(
    """
    # Practice: plot the LOSS of every method in one graph
    # Type your code here
    """
)


def lab_cells(*, seed: int = 1, noise: str = "0.1") -> list[Cell]:
    """The lab up to and including its own comparison plot."""
    return [
        md(
            """
            # Mini-batch gradient descent

            Fit a line with batch, stochastic and mini-batch gradient descent and compare how
            fast the loss falls.
            """
        ),
        IMPORTS,
        md("`plot_error_surfaces` only draws the pictures; it is not part of the training."),
        SURFACES,
        seed_cell(seed),
        data_cell(noise),
        DATA_PLOT,
        FORWARD,
        CRITERION,
        NEW_SURFACE_WITH_FIGURES,
        BGD,
        RUN_BGD,
        NEW_SURFACE,
        DATASET_IMPORTS,
        DATA_CLASS,
        loader_cell(1, "Batch size 1: stochastic gradient descent"),
        minibatch_train_cell(
            "LOSS_SGD", "train_model_SGD", "Stochastic gradient descent", extra_plot=True
        ),
        run_cell("train_model_SGD", "stochastic gradient descent"),
        NEW_SURFACE,
        loader_cell(5, "Batch size 5"),
        minibatch_train_cell(
            "LOSS_MINI5",
            "train_model_Mini5",
            "Mini-batch gradient descent, batch size 5",
            extra_plot=False,
        ),
        run_cell("train_model_Mini5", "mini-batch gradient descent with batch size 5"),
        NEW_SURFACE,
        loader_cell(10, "Batch size 10"),
        minibatch_train_cell(
            "LOSS_MINI10",
            "train_model_Mini10",
            "Mini-batch gradient descent, batch size 10",
            extra_plot=False,
        ),
        run_cell("train_model_Mini10", "mini-batch gradient descent with batch size 10"),
        md("The loss of each method, epoch by epoch:"),
        LAB_PLOT,
    ]


# --- the learner's answers -------------------------------------------------------------------


def train20(
    *,
    list_name: str = "LOSS20",
    batch_size: int = 20,
    epochs: int = 10,
    loader: str = "trainloader = DataLoader(dataset=dataset, batch_size={batch_size})",
    loop_loader: str = "trainloader",
    reset_weights: bool = True,
    record: str = "start",  # start | end | batch | sum
    loss: str = "criterion(yhat, y)",
    yhat: str = "forward(x)",
    lr: str = "0.1",
    zero_grad: bool = True,
    append_to: str | None = None,
    surface: bool = False,
    extra_after: str = "",
) -> Cell:
    """The learner's batch-20 training cell; each keyword is one way to get it wrong."""
    target = append_to or list_name
    lines = [
        "# Practice: mini-batch gradient descent with a batch size of 20.",
        "dataset = Data()",
        loader.format(batch_size=batch_size),
    ]
    if reset_weights:
        lines += [
            "w = torch.tensor(-15.0, requires_grad=True)",
            "b = torch.tensor(-10.0, requires_grad=True)",
        ]
    lines += [f"{list_name} = []", f"lr = {lr}", "", "def train_model_Mini20(epochs):"]
    lines.append("    for epoch in range(epochs):")
    if surface:
        lines += [
            "        get_surface.set_para_loss(w.data.tolist(), b.data.tolist(), "
            "criterion(forward(X), Y).tolist())",
            "        get_surface.plot_ps()",
        ]
    if record == "sum":
        lines.append("        total = 0.0")
    if record == "start":
        lines.append(f"        {target}.append(criterion(forward(X), Y).tolist())")
    lines += [
        f"        for x, y in {loop_loader}:",
        f"            yhat = {yhat}",
        f"            loss = {loss}",
    ]
    if record == "batch":
        lines.append(f"            {target}.append(loss.item())")
    if record == "sum":
        lines.append("            total += loss.item()")
    lines += [
        "            loss.backward()",
        "            w.data = w.data - lr * w.grad.data",
        "            b.data = b.data - lr * b.grad.data",
    ]
    if zero_grad:
        lines += ["            w.grad.data.zero_()", "            b.grad.data.zero_()"]
    if record == "end":
        lines.append(f"        {target}.append(criterion(forward(X), Y).tolist())")
    if record == "sum":
        lines.append(f"        {target}.append(total)")
    lines += ["", f"train_model_Mini20({epochs})"]
    if extra_after:
        lines += ["", dedent(extra_after).strip()]
    return Cell("code", "\n".join(lines))


PLOT_LABELS = {
    "LOSS_BGD": "Batch gradient descent",
    "LOSS_SGD": "Stochastic gradient descent",
    "LOSS_MINI5": "Mini-batch, batch size 5",
    "LOSS_MINI10": "Mini-batch, batch size 10",
}


def plot_all(
    answer: str = "LOSS20",
    *,
    legend: bool = True,
    include_answer: bool = True,
    leave_out: tuple[str, ...] = (),
    comment: str = "# Practice: plot the LOSS of every method in one graph",
) -> Cell:
    lines = [comment]
    lines += [
        f'plt.plot({name}, label="{label}")'
        for name, label in PLOT_LABELS.items()
        if name not in leave_out
    ]
    if include_answer:
        lines.append(f'plt.plot({answer}, label="Mini-batch, batch size 20")')
    lines += ['plt.xlabel("epoch")', 'plt.ylabel("loss")']
    if legend:
        lines.append("plt.legend()")
    lines.append("plt.show()")
    return Cell("code", "\n".join(lines))
