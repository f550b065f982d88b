"""The report's figures (per-case Dice, lesion Dice and gate activation by size, training curves).

Figures are drawn with Matplotlib's non-interactive Agg canvas attached to each figure
(:class:`matplotlib.backends.backend_agg.FigureCanvasAgg`), so no pyplot state and no global backend is touched;
PNGs are rendered into memory and written atomically.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lesionsam.evaluation.report_io import DASH, TrainCurve, is_num
from lesionsam.utils.dataclass_io import atomic_write_bytes

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: Resolution of the PNG figures.
DPI = 120
#: Contour colours: ground truth, then one per method (cycled).
GT_COLOUR = "#39ff14"
METHOD_COLOURS = ("#ff3b30", "#1e90ff", "#ffd60a", "#ff2df5", "#00e5ff", "#ff9500")
#: Figure file names under ``figures/``.
FIG_DICE = "dice_per_case.png"
FIG_SIZE = "dice_by_size.png"
FIG_GATES = "gate_rate_by_size.png"
FIG_CURVES = "training_curves.png"
FIG_OVERLAY = "overlay_{which}.png"


def new_figure(width: float, height: float) -> Figure:
    """A figure on its own Agg canvas (no pyplot, no global backend switch)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Figure, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, facecolor="white")
    return atomic_write_bytes(path, buf.getvalue())


def _colour(i: int) -> str:
    return METHOD_COLOURS[i % len(METHOD_COLOURS)]


def _dice_per_case_figure(names: Sequence[str], dices: Sequence[Sequence[float]], means: Sequence[Any]) -> Figure:
    fig = new_figure(max(4.0, 1.4 * len(names) + 2.0), 4.0)
    ax = fig.add_subplot()
    rng = np.random.default_rng(0)  # jitter only
    positions = np.arange(1, len(names) + 1)
    ax.boxplot(
        [list(d) for d in dices],
        positions=positions,
        widths=0.5,
        showfliers=False,
        medianprops={"color": "black"},
    )
    for i, (pos, d) in enumerate(zip(positions, dices, strict=True)):
        x = pos + rng.uniform(-0.15, 0.15, size=len(d))
        ax.scatter(x, d, s=22, color=_colour(i), edgecolor="black", linewidth=0.4, zorder=3, alpha=0.85)
        if is_num(means[i]):
            ax.scatter([pos + 0.32], [means[i]], marker="D", s=30, color="black", zorder=4)
            ax.annotate(f"{means[i]:.3f}", (pos + 0.38, means[i]), va="center", fontsize=8)
    ax.set_xticks(positions, [f"{n}\n(n={len(d)})" for n, d in zip(names, dices, strict=True)])
    ax.set_xlim(0.4, len(names) + 0.9)
    ax.set_ylim(-0.03, 1.05)
    ax.set_ylabel("case Dice")
    ax.set_title("Dice per case (box: quartiles; ◆ mean)")
    ax.grid(axis="y", alpha=0.3)
    return fig


def _grouped_bars(
    ax: Axes,
    bins: Sequence[str],
    names: Sequence[str],
    values: Sequence[Sequence[Any]],
    counts: Sequence[Sequence[int]],
    colours: Sequence[str],
) -> None:
    """Bars ``values[m][b]`` grouped by bin, with ``n=count`` above each (a missing value draws no bar)."""
    width = 0.8 / max(len(names), 1)
    x = np.arange(len(bins))
    for m, name in enumerate(names):
        xs = x - 0.4 + width * (m + 0.5)
        heights = [float(v) if is_num(v) else 0.0 for v in values[m]]
        ax.bar(xs, heights, width=width * 0.95, color=colours[m], edgecolor="black", linewidth=0.5, label=name)
        for xi, v, n in zip(xs, values[m], counts[m], strict=True):
            label = f"n={n}" if is_num(v) else f"n={n}\n{DASH}"
            ax.annotate(label, (xi, (float(v) if is_num(v) else 0.0) + 0.02), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, list(bins))
    ax.set_ylim(0, 1.15)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", ncols=min(len(names), 3))


def _size_bin_figure(bins: Sequence[str], names: Sequence[str], by_bin: Sequence[Mapping[str, Any]]) -> Figure:
    fig = new_figure(max(5.0, 1.2 * len(bins) * max(len(names), 1) + 2.0), 4.0)
    ax = fig.add_subplot()
    values = [[b.get(k, {}).get("mean_dice") for k in bins] for b in by_bin]
    counts = [[int(b.get(k, {}).get("count", 0)) for k in bins] for b in by_bin]
    _grouped_bars(ax, bins, names, values, counts, [_colour(i) for i in range(len(names))])
    ax.set_xlabel("ground-truth lesion volume")
    ax.set_ylabel("mean lesion Dice")
    ax.set_title("Lesion Dice by lesion size (n = GT lesions in the bin)")
    return fig


def _gates_figure(
    bins: Sequence[str], names: Sequence[str], rates: Sequence[Sequence[Any]], counts: Sequence[Sequence[int]]
) -> Figure:
    fig = new_figure(max(5.0, 1.2 * len(bins) * max(len(names), 1) + 2.0), 4.0)
    ax = fig.add_subplot()
    _grouped_bars(ax, bins, names, rates, counts, [_colour(i) for i in range(len(names))])
    ax.set_xlabel("ground-truth lesion volume")
    ax.set_ylabel("mean gate activation rate")
    ax.set_title("Gate activation rate by lesion size (n = lesions)")
    return fig


def _curves_figure(names: Sequence[str], curves: Sequence[TrainCurve | None]) -> Figure:
    fig = new_figure(10.0, 3.8)
    ax_loss, ax_val = fig.subplots(1, 2)
    for i, (name, c) in enumerate(zip(names, curves, strict=True)):
        if c is None:
            continue
        if c.loss:
            ax_loss.plot(c.loss_epochs, c.loss, "-o", ms=3, color=_colour(i), label=name)
        if c.val_dice:
            ax_val.plot(c.val_epochs, c.val_dice, "-o", ms=3, color=_colour(i), label=name)
    ax_loss.set_title("training loss (mean per epoch)")
    ax_val.set_title("validation Dice")
    ax_val.set_ylim(-0.03, 1.03)
    for ax in (ax_loss, ax_val):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no values logged", ha="center", va="center", transform=ax.transAxes)
    return fig
