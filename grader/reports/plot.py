"""The one picture a learner sees: their loss curves against the reference, as a PNG.

Drawn in the harness (never in the learner's kernel) from recorded data, with matplotlib's
object API and the Agg canvas: no pyplot global state, so it is safe in threads and workers.
Curve labels come from the learner and are hostile: they are cleaned before matplotlib sees
them (mathtext in a label can raise at draw time).
"""

from __future__ import annotations

import base64
import io
import math
import re

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import Formatter, LogLocator

from grader.models import Curve

ANSWER_KEY = "LOSS20"
MAX_POINTS = 2000  # per curve; the lab has 10 epochs, a runaway loop may have millions
MAX_CURVES = 12
MAX_LABEL = 60
Y_RANGE = (1e-100, 1e100)  # a log axis overflows when its margins pass 1e308
PALETTE = {
    "LOSS_BGD": "#1f77b4",
    "LOSS_SGD": "#2ca02c",
    "LOSS_MINI5": "#9467bd",
    "LOSS_MINI10": "#8c564b",
    "LOSS20": "#d62728",
}
FALLBACK_COLOURS = ("#17becf", "#bcbd22", "#e377c2", "#7f7f7f", "#ff7f0e")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def clean_label(label: str) -> str:
    """A label matplotlib can draw verbatim: no mathtext, no control characters, short."""
    label = _CONTROL.sub(" ", label).strip()
    if len(label) > MAX_LABEL:
        label = label[: MAX_LABEL - 1] + "…"
    return label.replace("$", r"\$")


def _key(label: str) -> str:
    """The reference method a learner curve is about: 'your LOSS_SGD' -> 'LOSS_SGD'."""
    return label.removeprefix("your ").strip()


def _positive_points(y: list[float]) -> tuple[list[int], list[float]]:
    """Epochs and values that a log-scale axis can show (finite and > 0)."""
    xs, ys = [], []
    for epoch, value in enumerate(y[:MAX_POINTS]):
        if math.isfinite(value) and value > 0:
            xs.append(epoch)
            ys.append(min(max(value, Y_RANGE[0]), Y_RANGE[1]))
    return xs, ys


def _pair(
    learner: list[Curve], reference: list[Curve], answer_label: str | None
) -> tuple[Curve | None, list[tuple[str, Curve]]]:
    """Split learner curves into the graded answer and the others keyed by reference method."""
    ref_keys = {curve.label for curve in reference}
    answer = None
    others: list[tuple[str, Curve]] = []
    for curve in learner[:MAX_CURVES]:
        key = _key(curve.label)
        if answer is None and (curve.label == answer_label or key == ANSWER_KEY):
            answer = curve
        elif key in ref_keys:
            others.append((key, curve))
        elif answer is None and answer_label is None:
            answer = curve  # the first learner curve is the graded answer
    return answer, others


class _PlainLog(Formatter):
    """Log-axis tick labels as plain text ("100", "0.01", "1e-05").

    matplotlib's default typesets every log label as mathtext, which took most of the time
    spent drawing this picture. Minor ticks are labelled only when the axis spans less than
    a decade, where otherwise no label might be left at all.
    """

    def __init__(self, minor: bool) -> None:
        self.minor = minor

    def __call__(self, x: float, pos: int | None = None) -> str:
        if self.minor and self.axis is not None:  # always set once the axis uses us
            low, high = self.axis.get_view_interval()
            if not (0 < low < high < 10 * low):
                return ""
            return f"{x:.2g}"
        return f"{x:g}"


def _style_axes(ax: Axes, title: str) -> None:
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(_PlainLog(minor=False))
    ax.yaxis.set_minor_formatter(_PlainLog(minor=True))
    ax.yaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))  # not 8 Tick objects per decade
    # a fixed title height: matplotlib otherwise measures every tick to place the title
    ax.set_title(title, fontsize=11, loc="left", fontweight="bold", y=1.0, pad=6)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (log scale)")
    ax.grid(True, which="major", color="#dddddd", linewidth=0.8)
    ax.grid(True, which="minor", color="#f0f0f0", linewidth=0.5)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def draw_curves(
    learner: list[Curve], reference: list[Curve], answer_label: str | None = None
) -> Figure:
    """Two panels: the graded LOSS20 against its reference, then every method at once."""
    fig = Figure(figsize=(11, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    # fixed margins: a layout engine would measure every label first, doubling the draw time
    left, right = fig.subplots(
        1,
        2,
        gridspec_kw={"left": 0.085, "right": 0.99, "bottom": 0.12, "top": 0.92, "wspace": 0.2},
    )
    answer, others = _pair(learner, reference, answer_label)
    refs = {curve.label: curve for curve in reference[:MAX_CURVES]}

    _style_axes(left, "Your LOSS20 and the expected one")
    if ANSWER_KEY in refs:
        xs, ys = _positive_points(refs[ANSWER_KEY].y)
        # drawn over the learner's line, so that a perfect match still shows both
        left.plot(xs, ys, "--", color="#222222", lw=1.6, zorder=3, label="expected (batch size 20)")
    if answer is not None:
        xs, ys = _positive_points(answer.y)
        left.plot(
            xs, ys, "-o", color=PALETTE[ANSWER_KEY], lw=2, ms=4, label=clean_label(answer.label)
        )
    else:
        left.text(
            0.5,
            0.5,
            "no LOSS20 found in your notebook",
            transform=left.transAxes,
            ha="center",
            va="center",
            color="#a00",
        )
    if left.lines:
        left.legend(fontsize=9, frameon=False)

    _style_axes(right, "All methods: yours (thick) and reference (dashed)")
    spare = iter(FALLBACK_COLOURS)
    colours = {key: PALETTE.get(key) or next(spare, "#7f7f7f") for key in refs}
    for key, curve in refs.items():
        xs, ys = _positive_points(curve.y)
        right.plot(
            xs, ys, "--", color=colours[key], lw=1.4, alpha=0.9, zorder=3, label=clean_label(key)
        )
    mine = [(ANSWER_KEY, answer)] if answer is not None else []
    for key, curve in mine + others:
        xs, ys = _positive_points(curve.y)
        colour = colours.get(key, "#000000")
        right.plot(
            xs, ys, "-", color=colour, lw=3, alpha=0.45, zorder=2, label=clean_label(curve.label)
        )
    if right.lines:
        right.legend(fontsize=8, frameon=False, ncol=2)
    return fig


def curves_png(
    learner: list[Curve], reference: list[Curve], answer_label: str | None = None
) -> bytes:
    """PNG bytes of `draw_curves`."""
    fig = draw_curves(learner, reference, answer_label)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def curves_data_uri(
    learner: list[Curve], reference: list[Curve], answer_label: str | None = None
) -> str:
    """The PNG as a data URI, so the feedback page needs no other file."""
    png = curves_png(learner, reference, answer_label)
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
