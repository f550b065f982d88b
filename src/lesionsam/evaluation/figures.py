"""The report's figures (per-case Dice, lesion Dice and gate activation by size, training curves).

Figures are drawn with Matplotlib's non-interactive Agg canvas attached to each figure
(:class:`matplotlib.backends.backend_agg.FigureCanvasAgg`), so no pyplot state and no global backend is touched;
PNGs are rendered into memory and written atomically.

Colours: every figure of a report takes one mapping method name → colour, :func:`method_colours`, so a method has
the same colour in every figure (and the project's methods the same colour in every report). Lesion volumes are
shown in cm³ (the evaluator's ml), with the bin names of :func:`size_bin_label`. Every plot has a y-axis label.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lesionsam.evaluation.lesions import COARSE_VOLUME_BINS_ML, LEGACY_VOLUME_BINS_ML, VOLUME_BINS_ML
from lesionsam.evaluation.report_io import DASH, TrainCurve, is_num
from lesionsam.utils.dataclass_io import atomic_write_bytes

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: Resolution of the PNG figures.
DPI = 120
#: Contour colour of the ground truth (no method colour is close to it).
GT_COLOUR = "#39ff14"
#: Colours given to methods not in :data:`KNOWN_METHOD_COLOURS`, in order of first appearance (then cycled).
METHOD_COLOURS = ("#ff3b30", "#1e90ff", "#ffd60a", "#ff2df5", "#00e5ff", "#ff9500", "#a05a2c", "#8e8e93")
#: Fixed colours of the project's methods (the same in every report and every figure).
KNOWN_METHOD_COLOURS: dict[str, str] = {
    "finetune": "#1e90ff",
    "finetune_zoom": "#00e5ff",
    "sgp_dice": "#ff9500",
    "sgp_sam": "#ff3b30",
    "refsam3d": "#ff2df5",
    "hsam": "#ffd60a",
}
#: Figure file names under ``figures/``.
FIG_DICE = "dice_per_case.png"
FIG_SIZE = "dice_by_size.png"
FIG_GATES = "gate_rate_by_size.png"
FIG_CURVES = "training_curves.png"
FIG_OVERLAY = "overlay_{which}.png"


def method_colours(names: Sequence[str]) -> dict[str, str]:
    """One colour per method name: :data:`KNOWN_METHOD_COLOURS`, others from :data:`METHOD_COLOURS` in order.

    Unknown names take the palette colours not used by a known method of ``names`` first, so two methods of one
    report share a colour only when there are more methods than colours.
    """
    out = {n: KNOWN_METHOD_COLOURS[n] for n in names if n in KNOWN_METHOD_COLOURS}
    free = [c for c in METHOD_COLOURS if c not in out.values()] or list(METHOD_COLOURS)
    i = 0
    for n in names:
        if n not in out:
            out[n] = free[i % len(free)]
            i += 1
    return out


def size_bin_label(name: str) -> str:
    """A display label with units of an evaluator size bin: ``"<0.5 cm3"`` → ``"< 0.5 cm³"``, ``"0.5–1 cm³"``, ...,
    ``">=10 cm3"`` → ``"≥ 10 cm³"``; the coarse and the older bins too (``"1-10 cm3"`` → ``"1–10 cm³"``,
    ``">10 cm3"`` → ``"> 10 cm³"``)."""
    for bin_name, lo, hi in (*VOLUME_BINS_ML, *COARSE_VOLUME_BINS_ML, *LEGACY_VOLUME_BINS_ML):
        if name == bin_name:
            if lo == 0:
                return f"< {hi:g} cm³"
            if math.isinf(hi):
                return f"{'≥' if name.startswith('>=') else '>'} {lo:g} cm³"
            return f"{lo:g}–{hi:g} cm³"
    return name.replace("cm3", "cm³")


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


def dice_per_case_figure(
    names: Sequence[str],
    dices: Sequence[Mapping[str, float]],
    lesion_free: Sequence[set[str]],
    colours: Mapping[str, str],
) -> Figure:
    """Per-case Dice of each method: box over the cases with a lesion, dots per case, ◆ their mean.

    Args:
        names: method names.
        dices: per method ``{case: Dice}``.
        lesion_free: per method the lesion-free case ids: drawn as × (Dice 1 or 0 by convention), outside the box
            and the mean.
        colours: :func:`method_colours`.
    """
    fig = new_figure(max(4.0, 1.4 * len(names) + 2.0), 4.0)
    ax = fig.add_subplot()
    rng = np.random.default_rng(0)  # jitter only
    positions = np.arange(1, len(names) + 1)
    with_lesion = [[v for c, v in d.items() if c not in free] for d, free in zip(dices, lesion_free, strict=True)]
    ax.boxplot(
        [x if x else [math.nan] for x in with_lesion],
        positions=positions,
        widths=0.5,
        showfliers=False,
        medianprops={"color": "black"},
    )
    for pos, name, d, free, x in zip(positions, names, dices, lesion_free, with_lesion, strict=True):
        ax.scatter(
            pos + rng.uniform(-0.15, 0.15, size=len(x)),
            x,
            s=22,
            color=colours[name],
            edgecolor="black",
            linewidth=0.4,
            zorder=3,
            alpha=0.85,
            label=name,
        )
        y_free = [v for c, v in d.items() if c in free]
        if y_free:
            ax.scatter(
                pos + rng.uniform(-0.15, 0.15, size=len(y_free)),
                y_free,
                s=30,
                marker="x",
                color=colours[name],
                zorder=3,
                label=f"{name} (lesion-free)",
            )
        if x:
            mean = float(np.mean(x))
            ax.scatter([pos + 0.32], [mean], marker="D", s=30, color="black", zorder=4)
            ax.annotate(f"{mean:.3f}", (pos + 0.38, mean), va="center", fontsize=8)
    ax.set_xticks(
        positions,
        [
            f"{n}\n(n={len(x)}" + (f" + {len(d) - len(x)} ×)" if len(d) > len(x) else ")")
            for n, d, x in zip(names, dices, with_lesion, strict=True)
        ],
    )
    ax.set_xlim(0.4, len(names) + 0.9)
    ax.set_ylim(-0.03, 1.05)
    ax.set_ylabel("case Dice")
    ax.set_title("Dice per case\n(box, ◆ mean: cases with a lesion; × lesion-free)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    return fig


def _bars_width(bins: Sequence[str], names: Sequence[str]) -> float:
    """Width in inches of a grouped bar figure: 0.55 per bar (room for its ``n=`` label), at least 5."""
    return max(5.0, 0.55 * len(bins) * max(len(names), 1) + 2.0)


def _grouped_bars(
    ax: Axes,
    bins: Sequence[str],
    names: Sequence[str],
    values: Sequence[Sequence[Any]],
    counts: Sequence[Sequence[int]],
    colours: Mapping[str, str],
) -> None:
    """Bars ``values[m][b]`` grouped by bin, with ``n=count`` above each (a missing value draws no bar)."""
    width = 0.8 / max(len(names), 1)
    x = np.arange(len(bins))
    for m, name in enumerate(names):
        xs = x - 0.4 + width * (m + 0.5)
        heights = [float(v) if is_num(v) else 0.0 for v in values[m]]
        ax.bar(xs, heights, width=width * 0.95, color=colours[name], edgecolor="black", linewidth=0.5, label=name)
        for xi, v, n in zip(xs, values[m], counts[m], strict=True):
            label = f"n={n}" if is_num(v) else f"n={n}\n{DASH}"
            ax.annotate(label, (xi, (float(v) if is_num(v) else 0.0) + 0.02), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, [size_bin_label(b) for b in bins])
    ax.set_ylim(0, 1.15)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", ncols=min(len(names), 3))
    ax.set_xlabel("ground-truth lesion volume (cm³)")


def size_bin_figure(
    bins: Sequence[str], names: Sequence[str], by_bin: Sequence[Mapping[str, Any]], colours: Mapping[str, str]
) -> Figure:
    """Mean lesion Dice per size bin and method (``by_bin`` = each evaluator's ``lesion_dice_by_volume``)."""
    fig = new_figure(_bars_width(bins, names), 4.0)
    ax = fig.add_subplot()
    values = [[b.get(k, {}).get("mean_dice") for k in bins] for b in by_bin]
    counts = [[int(b.get(k, {}).get("count", 0)) for k in bins] for b in by_bin]
    _grouped_bars(ax, bins, names, values, counts, colours)
    ax.set_ylabel("mean lesion Dice")
    ax.set_title("Lesion Dice by lesion size (n = GT lesions in the bin)")
    return fig


def gates_figure(
    bins: Sequence[str],
    names: Sequence[str],
    rates: Sequence[Sequence[Any]],
    counts: Sequence[Sequence[int]],
    colours: Mapping[str, str],
) -> Figure:
    """Mean gate activation rate per size bin and gated method, with the lesion counts."""
    fig = new_figure(_bars_width(bins, names), 4.0)
    ax = fig.add_subplot()
    _grouped_bars(ax, bins, names, rates, counts, colours)
    ax.set_ylabel("mean gate activation rate")
    ax.set_title("Gate activation rate by lesion size (n = lesions)")
    return fig


def curves_figure(names: Sequence[str], curves: Sequence[TrainCurve | None], colours: Mapping[str, str]) -> Figure:
    """One panel per method (losses of different methods are not on one scale): training loss on the left axis,
    validation Dice (0..1) on the right axis of the same panel."""
    from matplotlib.lines import Line2D

    n = max(len(names), 1)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = new_figure(4.2 * cols + 0.6, 3.4 * rows)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, name, c in zip(axes, names, curves, strict=False):
        colour = colours[name]
        ax_val = ax.twinx()
        if c is not None and c.loss:
            ax.plot(c.loss_epochs, c.loss, "-o", ms=3, color=colour)
        if c is not None and c.val_dice:
            ax_val.plot(c.val_epochs, c.val_dice, "--s", ms=4, color=colour, mfc="white")
        if c is None or not (c.loss or c.val_dice):
            ax.text(0.5, 0.5, "no values logged", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(name, color="black")
        ax.set_xlabel("epoch")
        ax.set_ylabel("training loss (mean per epoch)")
        ax_val.set_ylabel("validation Dice")
        ax_val.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
        handles = [
            Line2D([], [], color=colour, marker="o", ms=3, label="training loss"),
            Line2D([], [], color=colour, ls="--", marker="s", ms=4, mfc="white", label="validation Dice"),
        ]
        ax.legend(handles=handles, fontsize=8, loc="upper right")
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    fig.suptitle("Training curves, one panel per method (each its own loss scale)", fontsize=11)
    return fig
