"""The probe: code that runs INSIDE the learner's kernel (never imported by the harness).

`grader.execution.probe_reader` sends this file's source to the kernel in a silent execute
before the first learner cell and calls `install(...)`. It keeps nothing in the learner's
namespace; its only handle is the module object `sys.modules["_mbgd_probe"]`.

What it does:
- forces the non-interactive Agg backend and makes `%matplotlib` / `%pylab` no-ops, so no
  figure is ever rasterized;
- records every open figure as data (axes -> lines, legend, title, labels, yscale) at
  `plt.show()` and after each cell, then closes it;
- detaches tensors handed to matplotlib (the lab's `plt.plot(LOSS_BGD)` crashes on current
  torch otherwise) and says so in a note;
- after each cell, publishes the candidate answer variables (numeric lists, tuples, arrays,
  tensors) whose fingerprint changed, so the harness knows which cell last changed each one;
- with a seed override, makes `torch.manual_seed(any)` seed with the override instead;
- makes `input()` and `getpass.getpass()` fail at once with a message that says why (the
  harness never answers input requests, and tells the kernel so).

Records leave the kernel as display_data messages with a per-run MIME type, JSON text inside
(NaN and infinities as JSON tokens). The harness treats them as untrusted: it size-caps,
parses as JSON only and validates into pydantic models.

Limits (documented, not solved): learner code runs in the same interpreter and can find and
patch this module, the captured functions, IPython or the kernel's session, and so can forge
or suppress records. The probe captures what it needs at install time so casual monkeypatching
(json, builtins, plt.show, matplotlib internals) does not break or fool it; forged answers are
what the integrity re-run with a secret seed is for.
"""

from __future__ import annotations

import json
import sys
import types
from hashlib import sha1
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:  # in the kernel, get_ipython comes from the namespace the probe runs in
    from collections.abc import Iterable

    from IPython import get_ipython

MAX_SCAN = 100_000  # Python-level elements we are willing to visit per variable per cell
# The harness's own caps (`grader.execution.probe_reader.PROBE_SETTINGS`), set by `install`
# before anything reads them: what the probe sends stays within what the reader keeps, and
# each number lives once, on the harness's side.
MAX_VALUES = 0  # values kept per variable or plotted line
MAX_CANDIDATES = 0  # variables reported per cell
MAX_LINES = 0  # lines per axes
MAX_AXES = 0  # axes per figure
MAX_FIGURES = 0  # figures per run
MAX_RECORD_CHARS = 0  # a longer record is not sent (a note says so instead)
INPUT_MESSAGE = ""  # what input() and getpass() say
HIDDEN = {"In", "Out", "exit", "quit", "get_ipython"}
Flat = tuple[list[float], int]
PLOT_METHODS = (
    "plot",
    "scatter",
    "semilogy",
    "semilogx",
    "loglog",
    "step",
    "bar",
    "errorbar",
    "fill_between",
    "hist",
    "stem",
)


def install(mime: str, seed_override: int | None, settings: dict[str, Any]) -> None:
    """Hook the running IPython shell. Called once, silently, before the first cell.

    `settings`: the harness's caps and texts (the module constants declared above)."""
    globals().update(settings)
    ip = get_ipython()
    publish = ip.display_pub.publish
    dumps = json.dumps
    state: dict[str, Any] = {"fingerprints": {}, "figures": 0, "noted": set()}

    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.axes
    import matplotlib.pyplot as plt

    close_all = plt.close
    get_fignums = plt.get_fignums
    get_figure = plt.figure
    axes_class = matplotlib.axes.Axes
    import matplotlib.lines

    # Captured now, so a learner who patches Line2D/Axes getters later cannot forge the data.
    line_class = matplotlib.lines.Line2D
    line_x, line_y, line_label = line_class.get_xdata, line_class.get_ydata, line_class.get_label
    axes_lines = axes_class.get_lines
    np = sys.modules.get("numpy")

    def send(kind: str, payload: dict[str, Any]) -> None:
        payload["kind"] = kind
        try:
            text = dumps(payload, allow_nan=True)
        except (TypeError, ValueError):
            return
        if len(text) > MAX_RECORD_CHARS:  # the harness would drop it; say so instead
            if kind != "note":
                note(f"a {kind} record was too large to send")
            return
        publish(data={mime: text}, metadata={})

    def note(text: str) -> None:
        if text not in state["noted"]:
            state["noted"].add(text)
            send("note", {"text": text})

    # ---- numbers --------------------------------------------------------------------------
    def tensor_type() -> Any:
        torch = sys.modules.get("torch")
        return getattr(torch, "Tensor", None) if torch is not None else None

    def floats(obj: Any, depth: int = 0, left: list[int] | None = None) -> Flat | None:
        """Flatten obj into at most MAX_VALUES floats plus its real element count, or None.

        `left` bounds the Python-level elements visited, so a huge nested list costs a
        bounded time after every cell instead of stalling the learner's notebook.
        """
        left = left if left is not None else [MAX_SCAN]
        tensor = tensor_type()
        if tensor is not None and isinstance(obj, tensor):
            t = obj.detach()
            if t.is_complex():
                return None
            return t.reshape(-1)[:MAX_VALUES].double().cpu().tolist(), t.numel()
        if np is not None and isinstance(obj, np.ndarray | np.generic):
            arr = np.asarray(obj)
            if arr.dtype.kind not in "biuf":
                return None
            return arr.reshape(-1)[:MAX_VALUES].astype(float).tolist(), int(arr.size)
        if isinstance(obj, bool | int | float) and depth > 0:
            left[0] -= 1
            return [float(obj)], 1
        if isinstance(obj, list | tuple) and depth < 3:
            if depth == 0 and len(obj) > MAX_SCAN:  # a long list: its head, its real length
                head = floats(list(obj[:MAX_VALUES]), depth, left)
                return (head[0], len(obj)) if head else None
            out: list[float] = []
            total = 0
            for item in obj:
                left[0] -= 1
                if left[0] < 0:
                    return None  # too big to be an answer worth reading every cell
                got = floats(item, depth + 1, left)
                if got is None:
                    return None
                total += got[1]
                room = MAX_VALUES - len(out)
                if room > 0:
                    out.extend(got[0][:room])
            return out, total
        return None

    def array_digest(obj: Any) -> str | None:
        """A cheap fingerprint of a tensor or array (shape, dtype, first values' bytes)."""
        tensor = tensor_type()
        if tensor is not None and isinstance(obj, tensor):
            head = obj.detach().reshape(-1)[:MAX_VALUES]
            raw = head.double().cpu().numpy().tobytes() if not head.is_complex() else b""
            meta = f"T{tuple(obj.shape)}{obj.dtype}"
        elif np is not None and isinstance(obj, np.ndarray):
            raw = obj.reshape(-1)[:MAX_VALUES].tobytes()
            meta = f"A{obj.shape}{obj.dtype}"
        else:
            return None
        return meta + sha1(raw).hexdigest()

    def type_name(obj: Any) -> str:
        return type(obj).__name__[:40]

    # ---- variables ------------------------------------------------------------------------
    def scan_variables(quiet: bool = False) -> None:
        """Publish the candidates whose fingerprint changed (`quiet`: only remember them)."""
        seen: set[str] = set()
        changed: dict[str, Any] = {}
        fps = state["fingerprints"]
        for name, obj in list(ip.user_ns.items()):
            if name.startswith("_") or name in HIDDEN or len(seen) >= MAX_CANDIDATES:
                continue
            try:
                fp = array_digest(obj)
                if fp is not None and fps.get(name) == fp:
                    seen.add(name)  # unchanged array: no need to read its values again
                    continue
                got = floats(obj)
                if got is None:
                    continue
                if fp is None:
                    fp = dumps([type_name(obj), got[1], got[0]], allow_nan=True)
            except Exception:
                continue
            seen.add(name)
            if fps.get(name) != fp:
                fps[name] = fp
                changed[name] = {"type_name": type_name(obj), "values": got[0], "length": got[1]}
        deleted = [name for name in fps if name not in seen]
        for name in deleted:
            del fps[name]
        if (changed or deleted) and not quiet:
            send("variables", {"set": changed, "deleted": deleted})

    # ---- figures --------------------------------------------------------------------------
    def text(value: Any) -> str:
        return str(value)[:500]

    def record_axes(ax: Any) -> dict[str, Any]:
        lines = []
        for line in list(axes_lines(ax))[:MAX_LINES]:
            label = text(line_label(line))
            # Line2D holds 1-D data (set_xdata refuses scalars); its stub says ArrayLike.
            x, y = cast("Iterable[Any]", line_x(line)), cast("Iterable[Any]", line_y(line))
            xy = [floats(list(x), 1), floats(list(y), 1)]
            lines.append(
                {
                    "label": "" if label.startswith("_") else label,
                    "x": xy[0][0] if xy[0] else [],
                    "y": xy[1][0] if xy[1] else [],
                }
            )
        legend = ax.get_legend()
        return {
            "title": text(ax.get_title() or ax.get_title("left") or ax.get_title("right")),
            "xlabel": text(ax.get_xlabel()),
            "ylabel": text(ax.get_ylabel()),
            "yscale": text(ax.get_yscale()),
            "legend": [text(t.get_text()) for t in legend.get_texts()] if legend else [],
            "lines": lines,
        }

    def record_figures() -> None:
        for num in list(get_fignums()):
            fig = get_figure(num)
            if state["figures"] < MAX_FIGURES:
                state["figures"] += 1
                try:
                    axes = [record_axes(ax) for ax in fig.get_axes()[:MAX_AXES]]
                except Exception as exc:  # a figure we cannot read is reported, not fatal
                    note(f"a figure could not be read: {type(exc).__name__}")
                    axes = []
                send("figure", {"axes": axes})
            elif state["figures"] == MAX_FIGURES:
                state["figures"] += 1
                note(f"more than {MAX_FIGURES} figures: the rest were not recorded")
        close_all("all")

    def show(*args: Any, **kwargs: Any) -> None:
        record_figures()

    # ---- tensors handed to matplotlib -----------------------------------------------------
    def detach(value: Any) -> tuple[Any, bool]:
        tensor = tensor_type()
        if tensor is None:
            return value, False
        if isinstance(value, tensor) and value.requires_grad:
            return value.detach(), True
        if isinstance(value, list | tuple) and any(
            isinstance(v, tensor) and v.requires_grad for v in value[:MAX_SCAN]
        ):
            return [v.detach() if isinstance(v, tensor) else v for v in value], True
        return value, False

    def wrap(method: Any) -> Any:
        def plotting(self: Any, *args: Any, **kwargs: Any) -> Any:
            fixed = False
            new_args = []
            for arg in args:
                arg, did = detach(arg)
                fixed = fixed or did
                new_args.append(arg)
            for key, val in list(kwargs.items()):
                kwargs[key], did = detach(val)
                fixed = fixed or did
            if fixed:
                note(
                    "tensors that require grad were detached before plotting "
                    "(matplotlib cannot plot them on current torch; not the learner's fault)"
                )
            return method(self, *new_args, **kwargs)

        plotting.__wrapped__ = method  # type: ignore[attr-defined]
        plotting.__name__ = getattr(method, "__name__", "plot")
        return plotting

    for name in PLOT_METHODS:
        if hasattr(axes_class, name):
            setattr(axes_class, name, wrap(getattr(axes_class, name)))
    plt.show = show

    def no_magic(line: str = "", cell: str | None = None) -> None:
        return None

    for magic in ("matplotlib", "pylab"):
        ip.register_magic_function(no_magic, "line", magic)

    # ---- seed override --------------------------------------------------------------------
    if seed_override is not None:
        import torch

        original = torch.manual_seed

        def manual_seed(seed: Any) -> Any:
            return original(seed_override)

        torch.manual_seed = manual_seed
        torch.random.manual_seed = manual_seed

    # ---- input() and getpass() -------------------------------------------------------------
    # ipykernel installs kernel.raw_input / kernel.getpass as builtins.input / getpass.getpass
    # for every execute request; the harness sends allow_stdin=False, so they would raise
    # StdinNotImplementedError anyway, with a message about frontends. This one says why.
    kernel = getattr(ip, "kernel", None)
    if kernel is not None:
        from IPython.core.error import StdinNotImplementedError

        def no_input(*args: Any, **kwargs: Any) -> str:
            raise StdinNotImplementedError(INPUT_MESSAGE)

        kernel.raw_input = no_input
        kernel.getpass = no_input

    # ---- hooks ----------------------------------------------------------------------------
    def after_cell(result: Any = None) -> None:
        try:
            record_figures()
        except Exception as exc:
            note(f"figures could not be recorded: {type(exc).__name__}")
        try:
            scan_variables()
        except Exception as exc:
            note(f"variables could not be read: {type(exc).__name__}")

    def prime(figures: int, noted: list[str]) -> None:
        """In a kernel forked from a warm parent that ran the lab's first cells (issue 16):
        take on the state this probe would have after them (what the parent's probe counted
        and noted; the fingerprints of the variables as they are now), so the later cells
        publish exactly what they publish in a full run."""
        state["figures"] = int(figures)
        state["noted"].update(str(text) for text in noted)
        scan_variables(quiet=True)
        # The lab's `random` state as the parent left it (the zygote put it aside): set back
        # only now, after the kernel's start drew from `random` (IPython's banner tip), so
        # the learner's next cell draws what it draws in a full run.
        lab = sys.modules.pop("_mbgd_lab", None)
        if lab is not None:
            import random

            random.setstate(lab.random_state)

    def snapshot() -> dict[str, Any]:
        """What `prime` needs, read in the warm parent after its last cell."""
        return {"figures": state["figures"], "noted": sorted(state["noted"])}

    ip.events.register("post_run_cell", after_cell)
    module = types.ModuleType("_mbgd_probe")
    module.flush = after_cell  # type: ignore[attr-defined]
    module.prime = prime  # type: ignore[attr-defined]
    module.snapshot = snapshot  # type: ignore[attr-defined]
    sys.modules["_mbgd_probe"] = module
