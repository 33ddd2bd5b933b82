"""The one picture a learner sees: their loss curves against the reference, as inline SVG.

Drawn from recorded data with a small template, not with matplotlib: a class's pictures are
nearly all the same curves, and matplotlib took ~0.35 s of CPU per learner (plus ~0.8 s to
import) for what is here a millisecond of arithmetic and text. The SVG is self-contained (no
scripts, no external fonts or links), a few kilobytes, and sharp at any zoom.

Everything drawn may come from a learner (curve labels name their variables; values are
theirs): labels are cut short and stripped of characters XML cannot carry, then autoescaped
by the template; values are filtered to what a log axis can show and formatted by us.
"""

from __future__ import annotations

import base64
import math
import re
from dataclasses import dataclass, field
from functools import cache

import jinja2
from markupsafe import Markup

from grader.models import Curve
from grader.reports.rendering import environment

ANSWER_KEY = "LOSS20"
MAX_POINTS = 1000  # per curve; the lab has 10 epochs, a runaway loop may have millions
DRAWN_POINTS = 400  # a longer curve is thinned to this many points (a picture, not data)
MARKED_POINTS = 40  # the graded curve gets a dot per epoch up to this length
MAX_CURVES = 12
MAX_LABEL = 60
Y_RANGE = (1e-100, 1e100)  # values past these are drawn at them
PALETTE = {
    "LOSS_BGD": "#1f77b4",
    "LOSS_SGD": "#2ca02c",
    "LOSS_MINI5": "#9467bd",
    "LOSS_MINI10": "#8c564b",
    "LOSS20": "#d62728",
}
FALLBACK_COLOURS = ("#17becf", "#bcbd22", "#e377c2", "#7f7f7f", "#ff7f0e")
EXPECTED_COLOUR = "#222222"
KEY_GREY = "#6b7280"
DASH = "6 4"
THICK, PALE = 4.0, 0.4  # the learner's curves, under the reference's dashed ones
# What XML 1.0 cannot carry (and a one-line label should not): control characters, lone
# surrogates (not even encodable as UTF-8), the two non-characters.
_NOT_XML = re.compile("[\x00-\x1f\x7f\ud800-\udfff\ufffe\uffff]")

# Geometry, in SVG user units (CSS pixels at 100%).
WIDTH, HEIGHT = 1100, 430
PANEL_GAP = 36
MARGIN = {"left": 62, "right": 14, "top": 30, "bottom": 44}
LEGEND_ROW = 18  # height of one legend row, between the title and the plot area
MIN_PLOT_HEIGHT = 150
CHAR_WIDTH = 7.0  # average advance of a 12 px sans-serif character, for legend layout


def clean_label(label: str) -> str:
    """A label safe to put in XML and short enough for a legend (escaping is the template's)."""
    label = " ".join(_NOT_XML.sub(" ", label).split())
    if len(label) > MAX_LABEL:
        label = label[: MAX_LABEL - 1] + "…"
    return label


def _key(label: str) -> str:
    """The reference method a learner curve is about: 'your LOSS_SGD' -> 'LOSS_SGD'."""
    return label.removeprefix("your ").strip()


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


# -- the data a panel shows, and its scales ------------------------------------------------


def _segments(y: list[float]) -> list[list[tuple[int, float]]]:
    """Runs of (epoch, value) that a log axis can show: finite and > 0. A value it cannot
    show breaks the line there rather than being joined over."""
    runs: list[list[tuple[int, float]]] = [[]]
    for epoch, value in enumerate(y[:MAX_POINTS]):
        if isinstance(value, float | int) and math.isfinite(value) and value > 0:
            runs[-1].append((epoch, min(max(float(value), Y_RANGE[0]), Y_RANGE[1])))
        elif runs[-1]:
            runs.append([])
    return [run for run in runs if run]


def _thin(run: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """Every k-th point of a long run (and its last), so no polyline has > DRAWN_POINTS."""
    if len(run) <= DRAWN_POINTS:
        return run
    step = math.ceil(len(run) / DRAWN_POINTS)
    return run[::step] + ([run[-1]] if (len(run) - 1) % step else [])


def _nice_step(span: float, most: int) -> float:
    """The smallest of 1, 2, 5 x 10^k that cuts `span` into at most `most` steps."""
    raw = max(span / most, 1e-300)
    base = 10 ** math.floor(math.log10(raw))
    return next(m * base for m in (1, 2, 5, 10) if m * base >= raw)


def _label(value: float) -> str:
    """A tick label as plain text, at most 3 digits: '1000', '0.01', '2.5', '1e-5', '1e6'."""
    if 1e-4 <= value < 1e5:
        return f"{float(f'{value:.3g}'):g}"
    return re.sub(r"e\+?(-?)0*(\d)", r"e\1\2", f"{value:.3g}")


def _log_ticks(lo: float, hi: float) -> list[float]:
    """Tick values for a log axis over [lo, hi]: decades, thinned to at most 7 when the span
    is wide; 1-2-5 steps when it spans about a decade; even steps in log space when less."""
    a, b = math.log10(lo), math.log10(hi)
    first, last = math.ceil(a - 1e-9), math.floor(b + 1e-9)
    if last - first >= 2:
        every = math.ceil((last - first + 1) / 7)
        return [10.0**k for k in range(first, last + 1) if (k - first) % every == 0]
    ticks = [
        m * 10.0**k
        for k in range(first - 1, last + 1)
        for m in (1, 2, 5)
        if lo <= m * 10.0**k <= hi
    ]
    if len(ticks) >= 3:
        return ticks
    # less than a decade: about four ticks, evenly spaced in log space, at 2-3 digits
    return sorted({float(_label(10 ** (a + (b - a) * k / 4))) for k in range(5)})


@dataclass
class Line:
    """One curve as drawn: its segments as SVG point lists, and how it looks."""

    label: str
    kind: str  # "expected", "reference" (dashed) or "yours" (solid)
    colour: str
    width: float
    dash: str = ""
    opacity: float = 1.0
    segments: list[str] = field(default_factory=list)
    dots: list[tuple[float, float]] = field(default_factory=list)
    points: int = 0  # drawn points over all segments


@dataclass
class LegendEntry:
    label: str
    colour: str
    width: float
    dash: str = ""
    opacity: float = 1.0
    dot: bool = False
    x: float = 0.0
    y: float = 0.0


@dataclass
class Tick:
    at: float  # position in panel coordinates
    text: str


@dataclass
class Panel:
    """One set of axes, laid out: everything in coordinates relative to the panel's corner."""

    title: str
    x0: float
    width: float
    left: float = 0.0
    right: float = 0.0
    top: float = 0.0
    bottom: float = 0.0
    x_ticks: list[Tick] = field(default_factory=list)
    y_ticks: list[Tick] = field(default_factory=list)
    lines: list[Line] = field(default_factory=list)
    legend: list[LegendEntry] = field(default_factory=list)
    message: str = ""


@dataclass
class _Series:
    line: Line  # how it looks; `_scale` adds where it runs
    runs: list[list[tuple[int, float]]]
    marked: bool = False  # a dot per point (the graded curve, when short)


def _flow_legend(panel: Panel, legend: list[LegendEntry]) -> float:
    """Place the legend in rows under the title; return where the plot area may start."""
    rows, x, y = 1, 0.0, MARGIN["top"] + 4
    inner = panel.width - MARGIN["left"] - MARGIN["right"]
    fits = int((inner - 48) / CHAR_WIDTH)  # characters of a label alone on its row
    for entry in legend:
        if len(entry.label) > fits:
            entry.label = entry.label[: fits - 1] + "…"
        size = 30 + CHAR_WIDTH * len(entry.label) + 18
        if x and x + size > inner:
            rows, x, y = rows + 1, 0.0, y + LEGEND_ROW
        entry.x, entry.y = MARGIN["left"] + x, y
        x += size
    panel.legend = legend
    return MARGIN["top"] + (rows if legend else 0) * LEGEND_ROW + 10


def _scale(panel: Panel, series: list[_Series], top: float) -> Panel:
    """Scales, ticks and SVG point lists for `series` in the plot area below `top`."""
    panel.left, panel.right = MARGIN["left"], panel.width - MARGIN["right"]
    panel.top, panel.bottom = top, HEIGHT - MARGIN["bottom"]
    points = [p for s in series for run in s.runs for p in run]
    last = max((p[0] for p in points), default=9)
    lo = min((p[1] for p in points), default=0.1)
    hi = max((p[1] for p in points), default=10.0)
    if hi / lo < 1.5:  # flat (or one point): open the axis around it
        lo, hi = lo / 1.5, hi * 1.5
    pad = (math.log10(hi) - math.log10(lo)) * 0.05
    log_lo, log_hi = math.log10(lo) - pad, math.log10(hi) + pad
    x_hi = max(last, 1)
    x_pad = x_hi * 0.03

    def sx(epoch: float) -> float:
        return panel.left + (epoch + x_pad) / (x_hi + 2 * x_pad) * (panel.right - panel.left)

    def sy(value: float) -> float:
        share = (math.log10(value) - log_lo) / (log_hi - log_lo)
        return panel.bottom - share * (panel.bottom - panel.top)

    step = max(1, int(_nice_step(x_hi, 10)))
    panel.x_ticks = [Tick(sx(k), str(k)) for k in range(0, x_hi + 1, step)]
    panel.y_ticks = [Tick(sy(v), _label(v)) for v in _log_ticks(10**log_lo, 10**log_hi)]
    for s in series:
        line = s.line
        for run in s.runs:
            drawn = _thin(run)
            line.segments.append(" ".join(f"{sx(e):.1f},{sy(v):.1f}" for e, v in drawn))
            line.points += len(drawn)
        if s.marked and line.points <= MARKED_POINTS:
            line.dots = [(sx(e), sy(v)) for run in s.runs for e, v in run]
        panel.lines.append(line)
    return panel


def _answer_panel(
    answer: Curve | None, refs: dict[str, Curve], x0: float, width: float
) -> tuple[Panel, list[_Series], float]:
    panel = Panel("Your LOSS20 and the expected one", x0, width)
    series, legend = [], []
    if answer is not None:
        label = clean_label(answer.label)
        mine = Line(label, "yours", PALETTE[ANSWER_KEY], 2.2)
        series.append(_Series(mine, _segments(answer.y), marked=True))
        legend.append(LegendEntry(label, PALETTE[ANSWER_KEY], 2.2, dot=True))
        if not series[0].runs:
            panel.message = "your LOSS20 has no value above zero to draw on a log scale"
    else:
        panel.message = "no LOSS20 found in your notebook"
    if ANSWER_KEY in refs:
        # drawn over the learner's line, so that a perfect match still shows both
        label = "expected (batch size 20)"
        expected = Line(label, "expected", EXPECTED_COLOUR, 1.6, dash=DASH)
        series.append(_Series(expected, _segments(refs[ANSWER_KEY].y)))
        legend.append(LegendEntry(label, EXPECTED_COLOUR, 1.6, dash=DASH))
    return panel, series, _flow_legend(panel, legend)


def _methods_panel(
    mine: list[tuple[str, Curve]], refs: dict[str, Curve], x0: float, width: float
) -> tuple[Panel, list[_Series], float]:
    panel = Panel("All methods: yours and the reference", x0, width)
    spare = iter(FALLBACK_COLOURS)
    colours = {key: PALETTE.get(key) or next(spare, "#7f7f7f") for key in refs}
    series, legend = [], []
    for key, curve in mine:
        colour = colours.get(key, "#000000")
        yours = Line(clean_label(curve.label), "yours", colour, THICK, opacity=PALE)
        series.append(_Series(yours, _segments(curve.y)))
    for key, curve in refs.items():
        label = clean_label(key)
        reference = Line(label, "reference", colours[key], 1.5, dash=DASH)
        series.append(_Series(reference, _segments(curve.y)))
        legend.append(LegendEntry(label, colours[key], 1.5, dash=DASH))
    if mine or refs:  # how to read the colours: a key in neutral grey
        legend.append(LegendEntry("yours", KEY_GREY, THICK, opacity=PALE))
        legend.append(LegendEntry("reference", KEY_GREY, 1.5, dash=DASH))
    if not series:
        panel.message = "nothing to draw"
    return panel, series, _flow_legend(panel, legend)


@cache
def _template() -> jinja2.Template:
    return environment({}).get_template("curves.svg.j2")


def curves_svg(
    learner: list[Curve], reference: list[Curve], answer_label: str | None = None
) -> Markup:
    """Two panels as one standalone SVG document: the graded LOSS20 against its reference,
    then every method at once. Safe to put inline in an HTML page or to serve as a file."""
    answer, others = _pair(learner, reference, answer_label)
    refs = {curve.label: curve for curve in reference[:MAX_CURVES]}
    half = (WIDTH - PANEL_GAP) / 2
    mine = ([(ANSWER_KEY, answer)] if answer is not None else []) + others
    laid = [
        _answer_panel(answer, refs, 0.0, half),
        _methods_panel(mine, refs, half + PANEL_GAP, half),
    ]
    # both plot areas level, whatever the legends; a legend of many long labels may run into
    # the plot rather than squeeze it away
    top = min(max(start for _, _, start in laid), HEIGHT - MARGIN["bottom"] - MIN_PLOT_HEIGHT)
    panels = [_scale(panel, series, top) for panel, series, _ in laid]
    svg = _template().render(width=WIDTH, height=HEIGHT, panels=panels)
    return Markup(svg)  # built by an autoescaping template: markup, not text


def svg_data_uri(svg: str) -> str:
    """A drawn picture (`curves_svg`) as a data URI, for Markdown's image syntax and pages
    that take pictures only through <img>."""
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode("utf-8")).decode("ascii")
