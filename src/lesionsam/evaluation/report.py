"""A Markdown report (tables + PNG figures) comparing methods, and an ablation table over seeds.

Every number in a report is **read** from files that other parts of lesionsam wrote; nothing is recomputed:

* the evaluator's ``metrics.json`` (:func:`lesionsam.evaluation.evaluate.evaluate_folder`): ``summary`` for the
  tables and the size-bin figure (``dice``/``nsd``/``hd95_mm`` mean and ``std`` — the evaluator's population sd
  over cases —, ``lesion_detection.f1`` — micro F1 over all lesions —, ``lesion_dice_by_volume[bin]`` with
  ``mean_dice`` and ``count``), ``cases[*].dice`` for the per-case Dice plot and the choice of the worst and best
  case, ``settings`` (``label``, ``pred_label``, ``nsd_tolerance_mm``) to check that runs are comparable;
* a gates CSV per SGP run (columns :data:`GATES_COLUMNS`; ``gate_rate`` = fraction of the gates open for a crop
  around that lesion, 0..1): the mean gate activation rate is the mean of ``gate_rate`` over its rows, by size bin
  the mean over the rows of that ``size_bin``;
* a training log CSV per run (columns :data:`TRAIN_LOG_COLUMNS`; ``train_loss`` or ``val_dice`` may be empty on a
  row): only plotted, as the mean ``train_loss`` of each epoch and every non-empty ``val_dice``.

Only the overlays read images: the image, the ground truth (``gt == label``) and each method's prediction (the
evaluator's foreground rule: ``pred > 0``, or ``pred == pred_label`` when the evaluation used one) of two cases, to
draw contours. Slices are shown in array order (rows = j, columns = i of ITK's (i, j, k); no reorientation), with
the in-plane spacing as aspect ratio.

Figures are drawn with Matplotlib's non-interactive Agg canvas attached to each figure
(:class:`matplotlib.backends.backend_agg.FigureCanvasAgg`), so no pyplot state and no global backend is touched;
PNGs are rendered into memory and written atomically, like every file written here.

Example:
    >>> runs = [MethodRun("finetune", Path("runs/demo/eval/finetune")),
    ...         MethodRun("sgp_sam", Path("runs/demo/eval/sgp_sam"), gates_csv=Path("runs/demo/sgp_sam/gates.csv"))]
    >>> write_report("runs/demo/report", runs, images_dir=..., labels_dir=..., label=2)  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lesionsam.data.io import case_id, is_image_path, read_image
from lesionsam.evaluation.metrics import VOLUME_BINS_ML
from lesionsam.utils.dataclass_io import atomic_write_bytes

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

#: Columns a training log must have (``step``, ``lr`` and ``seconds`` are not used by the report).
TRAIN_LOG_COLUMNS = ("epoch", "step", "train_loss", "val_dice", "lr", "seconds")
#: Columns a gates CSV must have (one row per ground-truth lesion of a case).
GATES_COLUMNS = ("case", "lesion", "volume_ml", "size_bin", "gate_rate")
#: The evaluator's format name and version that this module reads.
METRICS_FORMAT = ("lesionsam-metrics", 1)
#: The size bin of small lesions (the evaluator's first bin, "<1 cm3").
SMALL_BIN = VOLUME_BINS_ML[0][0]
#: Grey-value window of CT-like images (HU), used when the image reaches air values (<= :data:`CT_AIR_HU`).
CT_WINDOW_HU = (-160.0, 240.0)
CT_AIR_HU = -500.0
#: Percentiles of the image giving the grey-value window of other images (MRI, normalised intensities).
PERCENTILE_WINDOW = (1.0, 99.0)
#: Placeholder for a value that does not exist.
DASH = "—"
#: The overlay adds a zoom panel when the zoom box covers less than this fraction of the slice.
ZOOM_MAX_FRACTION = 0.5
#: Smallest half-width (mm) of the zoom box; otherwise 1.5 × the lesion's in-plane extent.
ZOOM_MIN_HALF_MM = 12.0
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


# ------------------------------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class MethodRun:
    """The outputs of one method, as inputs to :func:`write_report`.

    Attributes:
        name: method name shown in tables and legends (unique within a report), e.g. ``"finetune"``, ``"sgp_sam"``.
        eval_dir: folder holding the evaluator's ``metrics.json`` (and ``metrics.csv``).
        pred_dir: folder of predicted masks named by case id (as the evaluator pairs them); used for the overlays.
        train_log: training log CSV with :data:`TRAIN_LOG_COLUMNS`; None (or a missing file) omits the curves.
        gates_csv: SGP methods only: gates CSV with :data:`GATES_COLUMNS`.
    """

    name: str
    eval_dir: Path
    pred_dir: Path | None = None
    train_log: Path | None = None
    gates_csv: Path | None = None


@dataclass(frozen=True)
class AblationEntry:
    """One (method, seed) evaluation, as input to :func:`ablation_table` / :func:`write_ablation`.

    Attributes:
        method: method / ablation name; rows with the same name are the seeds of one method.
        seed: training seed (unique per method).
        eval_dir: folder holding the evaluator's ``metrics.json``.
        gates_csv: gates CSV (:data:`GATES_COLUMNS`) for methods with gates; None for the others.
    """

    method: str
    seed: int
    eval_dir: Path
    gates_csv: Path | None = None


@dataclass(frozen=True)
class GateRow:
    """One row of a gates CSV: the gate activation rate of the crop around one ground-truth lesion."""

    case: str
    lesion: str
    volume_ml: float
    size_bin: str
    gate_rate: float


@dataclass(frozen=True)
class TrainCurve:
    """A training log reduced for plotting: mean ``train_loss`` per epoch and every non-empty ``val_dice``."""

    loss_epochs: tuple[float, ...]
    loss: tuple[float, ...]
    val_epochs: tuple[float, ...]
    val_dice: tuple[float, ...]


# ------------------------------------------------------------------------------------------------- readers
def load_metrics(eval_dir: str | os.PathLike[str], *, what: str = "") -> dict[str, Any]:
    """Read and check the evaluator's ``metrics.json`` in ``eval_dir``.

    Args:
        eval_dir: the evaluator's output folder.
        what: a prefix for error messages (e.g. ``"run 'sgp_sam'"``).

    Returns:
        The parsed JSON (keys ``settings``, ``summary``, ``cases``, ...).

    Raises:
        FileNotFoundError: no ``metrics.json`` in ``eval_dir``.
        ValueError: not valid JSON, or not the evaluator's format.
    """
    path = Path(eval_dir) / "metrics.json"
    prefix = f"{what}: " if what else ""
    if not path.is_file():
        raise FileNotFoundError(
            f"{prefix}metrics.json not found in {Path(eval_dir)} (write it with `lesionsam evaluate PRED_DIR GT_DIR "
            f"--out {Path(eval_dir)}`)"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{prefix}{path} is not valid JSON ({exc}); re-run the evaluation") from None
    fmt = (data.get("format"), data.get("version")) if isinstance(data, dict) else (None, None)
    if fmt != METRICS_FORMAT:
        raise ValueError(
            f"{prefix}{path} is not a lesionsam metrics file of format {METRICS_FORMAT[0]!r} version "
            f"{METRICS_FORMAT[1]} (found format {fmt[0]!r}, version {fmt[1]!r})"
        )
    for key in ("settings", "summary", "cases"):
        if key not in data:
            raise ValueError(f"{prefix}{path} has no {key!r} section; re-run the evaluation")
    return data


def _read_csv(path: Path, required: Sequence[str], what: str) -> list[dict[str, str]]:
    """Rows of a CSV with a header holding ``required`` (FileNotFoundError / ValueError otherwise)."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in required if c not in header]
        if missing:
            raise ValueError(
                f"{what} {path} lacks column(s) {', '.join(missing)} (has: {', '.join(header) or 'no header'}); "
                f"expected {', '.join(required)}"
            )
        return [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]


def _number(text: str, path: Path, line: int, column: str) -> float | None:
    """A CSV cell as float; None for an empty cell or ``nan``; ValueError for anything else."""
    if text == "" or text.lower() == "nan":
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{path} line {line}: column {column!r} holds {text!r}, expected a number") from None
    return value if math.isfinite(value) else None


def read_gates_csv(path: str | os.PathLike[str]) -> list[GateRow]:
    """Read a gates CSV (:data:`GATES_COLUMNS`; ``gate_rate`` in [0, 1], one row per lesion).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: a missing column, or a ``gate_rate`` that is empty, not a number or outside [0, 1].
    """
    p = Path(path)
    rows = _read_csv(p, GATES_COLUMNS, "gates CSV")
    out = []
    for line, row in enumerate(rows, start=2):
        rate = _number(row["gate_rate"], p, line, "gate_rate")
        if rate is None or not 0.0 <= rate <= 1.0:
            raise ValueError(f"{p} line {line}: gate_rate {row['gate_rate']!r} is not a fraction in [0, 1]")
        vol = _number(row["volume_ml"], p, line, "volume_ml")
        out.append(GateRow(row["case"], row["lesion"], math.nan if vol is None else vol, row["size_bin"], rate))
    return out


def read_train_log(path: str | os.PathLike[str]) -> TrainCurve:
    """Read a training log CSV (:data:`TRAIN_LOG_COLUMNS`) into a :class:`TrainCurve`.

    ``train_loss`` is averaged over the rows of each epoch (one row per step or per epoch both work); every row
    with a ``val_dice`` gives one validation point. Empty cells and ``nan`` are skipped.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: a missing column or a cell that is not a number.
    """
    p = Path(path)
    rows = _read_csv(p, ("epoch", "train_loss", "val_dice"), "training log")
    losses: dict[float, list[float]] = {}
    val_e, val_d = [], []
    for line, row in enumerate(rows, start=2):
        epoch = _number(row["epoch"], p, line, "epoch")
        if epoch is None:
            raise ValueError(f"{p} line {line}: empty epoch")
        loss = _number(row["train_loss"], p, line, "train_loss")
        if loss is not None:
            losses.setdefault(epoch, []).append(loss)
        dice = _number(row["val_dice"], p, line, "val_dice")
        if dice is not None:
            val_e.append(epoch)
            val_d.append(dice)
    epochs = sorted(losses)
    return TrainCurve(
        loss_epochs=tuple(epochs),
        loss=tuple(float(np.mean(losses[e])) for e in epochs),
        val_epochs=tuple(val_e),
        val_dice=tuple(val_d),
    )


# ------------------------------------------------------------------------------------------------- formatting
def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def fmt_value(x: Any, spec: str = ".3f") -> str:
    """``format(x, spec)``, or :data:`DASH` for None / NaN."""
    return format(float(x), spec) if _is_num(x) else DASH


def fmt_mean_sd(mean: Any, sd: Any, spec: str = ".3f") -> str:
    """``"mean ± sd"`` (each with ``spec``); :data:`DASH` for a missing mean, ``"mean ± —"`` for a missing sd."""
    if not _is_num(mean):
        return DASH
    return f"{format(float(mean), spec)} ± {fmt_value(sd, spec)}"


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(_md_cell(h) for h in head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _rel(path: Path, start: Path) -> str:
    """``path`` relative to ``start`` in POSIX form (absolute when no relative path exists)."""
    try:
        return Path(os.path.relpath(Path(path).resolve(), Path(start).resolve())).as_posix()
    except ValueError:  # another drive (Windows)
        return Path(path).resolve().as_posix()


def _check_names(names: Sequence[str], what: str) -> None:
    seen: set[str] = set()
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"every {what} needs a non-empty name, got {name!r}")
        if name in seen:
            raise ValueError(f"{what} name {name!r} is used twice; give every {what} a distinct name")
        seen.add(name)


def _small_bin(summary: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """The evaluator's size bin of lesions < 1 cm³ (``count``, ``mean_dice``, ...)."""
    bins = summary.get("lesion_dice_by_volume") or {}
    if SMALL_BIN in bins:
        return bins[SMALL_BIN]
    for entry in bins.values():
        if entry.get("min_ml") == 0 and entry.get("max_ml") == 1:
            return entry
    raise ValueError(f"{path}: summary.lesion_dice_by_volume has no bin of lesions < 1 cm3 (bins: {list(bins)})")


# ------------------------------------------------------------------------------------------------- figures
def _new_figure(width: float, height: float) -> Figure:
    """A figure on its own Agg canvas (no pyplot, no global backend switch)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save_png(fig: Figure, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, facecolor="white")
    return atomic_write_bytes(path, buf.getvalue())


def _colour(i: int) -> str:
    return METHOD_COLOURS[i % len(METHOD_COLOURS)]


def _dice_per_case_figure(names: Sequence[str], dices: Sequence[Sequence[float]], means: Sequence[Any]) -> Figure:
    fig = _new_figure(max(4.0, 1.4 * len(names) + 2.0), 4.0)
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
        if _is_num(means[i]):
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
        heights = [float(v) if _is_num(v) else 0.0 for v in values[m]]
        ax.bar(xs, heights, width=width * 0.95, color=colours[m], edgecolor="black", linewidth=0.5, label=name)
        for xi, v, n in zip(xs, values[m], counts[m], strict=True):
            label = f"n={n}" if _is_num(v) else f"n={n}\n{DASH}"
            ax.annotate(label, (xi, (float(v) if _is_num(v) else 0.0) + 0.02), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, list(bins))
    ax.set_ylim(0, 1.15)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", ncols=min(len(names), 3))


def _size_bin_figure(bins: Sequence[str], names: Sequence[str], by_bin: Sequence[Mapping[str, Any]]) -> Figure:
    fig = _new_figure(max(5.0, 1.2 * len(bins) * max(len(names), 1) + 2.0), 4.0)
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
    fig = _new_figure(max(5.0, 1.2 * len(bins) * max(len(names), 1) + 2.0), 4.0)
    ax = fig.add_subplot()
    _grouped_bars(ax, bins, names, rates, counts, [_colour(i) for i in range(len(names))])
    ax.set_xlabel("ground-truth lesion volume")
    ax.set_ylabel("mean gate activation rate")
    ax.set_title("Gate activation rate by lesion size (n = lesions)")
    return fig


def _curves_figure(names: Sequence[str], curves: Sequence[TrainCurve | None]) -> Figure:
    fig = _new_figure(10.0, 3.8)
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


# ------------------------------------------------------------------------------------------------- overlays
def _find_case_file(folder: Path, case: str, suffixes: Sequence[str], what: str) -> Path:
    """The image file of ``case`` in ``folder`` (exact id first, then ``case + suffix``)."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} folder not found: {folder}")
    files = {case_id(p): p for p in sorted(folder.iterdir()) if is_image_path(p)}
    for cid in (case, *(case + s for s in suffixes)):
        if cid in files:
            return files[cid]
    raise FileNotFoundError(f"no {what} file for case {case!r} in {folder}")


def _display_window(image: np.ndarray) -> tuple[float, float]:
    """:data:`CT_WINDOW_HU` for a CT-like image (reaching air values), else the :data:`PERCENTILE_WINDOW`."""
    finite = image[np.isfinite(image)] if np.issubdtype(image.dtype, np.floating) else image
    if finite.size == 0:
        return 0.0, 1.0
    if float(finite.min()) <= CT_AIR_HU:
        return CT_WINDOW_HU
    lo, hi = (float(v) for v in np.percentile(finite, PERCENTILE_WINDOW))
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


@dataclass(frozen=True)
class _OverlayMethod:
    name: str
    colour: str
    dice: Any
    mask: np.ndarray | None  # (D, H, W) bool, None when no prediction is available


def _overlay_figure(
    which: str,
    case: str,
    image: np.ndarray,
    spacing_ijk: Sequence[float],
    gt: np.ndarray,
    methods: list[_OverlayMethod],
) -> Figure:
    """Axial slice (array axis 0 = k) through the largest GT cross-section: full view and zoom, with contours."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle

    areas = gt.sum(axis=(1, 2))
    k = int(np.argmax(areas))
    sl = image[k].astype(float)
    vmin, vmax = _display_window(image)
    aspect = float(spacing_ijk[1]) / float(spacing_ijk[0])  # row (j) / column (i) spacing

    rows, cols = np.nonzero(gt[k])
    h, w = sl.shape
    extent_mm = max((np.ptp(rows) + 1) * spacing_ijk[1], (np.ptp(cols) + 1) * spacing_ijk[0])
    half_mm = max(1.5 * extent_mm, ZOOM_MIN_HALF_MM)
    half_r = max(int(round(half_mm / spacing_ijk[1])), 4)
    half_c = max(int(round(half_mm / spacing_ijk[0])), 4)
    cr, cc = (int(rows.min()) + int(rows.max())) // 2, (int(cols.min()) + int(cols.max())) // 2
    r0, r1 = max(cr - half_r, 0), min(cr + half_r + 1, h)
    c0, c1 = max(cc - half_c, 0), min(cc + half_c + 1, w)

    zoomed = (r1 - r0) * (c1 - c0) < ZOOM_MAX_FRACTION * h * w  # a zoom panel only where it shows more detail
    fig = _new_figure(10.0 if zoomed else 5.6, 5.6)
    axes = fig.subplots(1, 2) if zoomed else [fig.add_subplot()]
    for zoom, ax in enumerate(axes):
        ax.imshow(sl, cmap="gray", vmin=vmin, vmax=vmax, aspect=aspect, interpolation="nearest")
        ax.contour(gt[k].astype(float), levels=[0.5], colors=[GT_COLOUR], linewidths=2.0)
        for m in methods:
            if m.mask is not None and m.mask[k].any():
                ax.contour(m.mask[k].astype(float), levels=[0.5], colors=[m.colour], linewidths=1.4)
        ax.set_xticks([])
        ax.set_yticks([])
        if zoom:
            ax.set_xlim(c0 - 0.5, c1 - 0.5)
            ax.set_ylim(r1 - 0.5, r0 - 0.5)
            ax.set_title("zoom", fontsize=10)
        else:
            if zoomed:
                ax.add_patch(
                    Rectangle((c0 - 0.5, r0 - 0.5), c1 - c0, r1 - r0, fill=False, edgecolor="white", ls=":", lw=1.0)
                )
            ax.set_title(f"axial slice k={k} of {image.shape[0]} (window {vmin:g}..{vmax:g})", fontsize=10)
    dice_text = ", ".join(f"{m.name} {fmt_value(m.dice)}" for m in methods)
    fig.suptitle(f"{which} case {case}\nDice: {dice_text}", fontsize=12)
    handles = [Line2D([], [], color=GT_COLOUR, lw=2.0, label="ground truth")]
    for m in methods:
        if m.mask is None:
            suffix = ", no prediction folder"
        elif not m.mask.any():
            suffix = ", empty prediction"
        elif not m.mask[k].any():
            suffix = ", none on this slice"
        else:
            suffix = ""
        handles.append(Line2D([], [], color=m.colour, lw=1.4, label=f"{m.name} (Dice {fmt_value(m.dice)}{suffix})"))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 3), fontsize=9)
    return fig


def _pred_foreground(arr: np.ndarray, settings: Mapping[str, Any]) -> np.ndarray:
    """The evaluator's prediction foreground rule (``pred > 0``, or ``pred == pred_label`` when it used one)."""
    pred_label = settings.get("pred_label")
    return arr > 0 if pred_label is None else arr == pred_label


# ------------------------------------------------------------------------------------------------- the report
@dataclass
class _Loaded:
    run: MethodRun
    metrics: dict[str, Any]
    dice_by_case: dict[str, float]
    gates: list[GateRow] | None
    curve: TrainCurve | None

    @property
    def summary(self) -> dict[str, Any]:
        return self.metrics["summary"]


def _load_run(run: MethodRun, label: int, notes: list[str]) -> _Loaded:
    what = f"run {run.name!r}"
    metrics = load_metrics(run.eval_dir, what=what)
    used = metrics["settings"].get("label")
    if used != label:
        raise ValueError(
            f"{what}: metrics.json in {run.eval_dir} was computed for label {used}, but the report is for label "
            f"{label}; re-run the evaluation with --label {label} or pass label={used}"
        )
    dice = {}
    for row in metrics["cases"]:
        if not _is_num(row.get("dice")):
            raise ValueError(f"{what}: case {row.get('case')!r} in {run.eval_dir}/metrics.json has no Dice")
        dice[str(row["case"])] = float(row["dice"])
    gates = read_gates_csv(run.gates_csv) if run.gates_csv is not None else None
    curve = None
    if run.train_log is not None:
        if Path(run.train_log).is_file():
            curve = read_train_log(run.train_log)
        else:
            logger.warning("%s: training log %s not found; its curves are omitted", what, run.train_log)
            notes.append(f"{run.name}: training log `{run.train_log}` not found; its curves are omitted.")
    return _Loaded(run, metrics, dice, gates, curve)


def _bin_order(loaded: Sequence[_Loaded]) -> list[str]:
    """Size bins in the evaluator's order (from the first metrics.json), then any other bin seen."""
    order: list[str] = []
    for item in loaded:
        for key in item.summary.get("lesion_dice_by_volume", {}):
            if key not in order:
                order.append(key)
    if not order:
        order = [name for name, _, _ in VOLUME_BINS_ML]
    for item in loaded:
        for g in item.gates or []:
            if g.size_bin not in order:
                order.append(g.size_bin)
    return order


def _main_table(loaded: Sequence[_Loaded], tol: Any) -> str:
    head = (
        "method",
        "cases",
        "Dice",
        f"NSD @{fmt_value(tol, 'g')} mm",
        "HD95 (mm)",
        "lesion F1",
        "Dice < 1 cm³ (n lesions)",
        "gate activation rate",
    )
    rows = []
    for item in loaded:
        s = item.summary
        hd = s["hd95_mm"]
        hd_text = fmt_mean_sd(hd.get("mean"), hd.get("std"), ".2f")
        if hd.get("n_undefined"):
            hd_text += f" ({hd['n_undefined']} undefined)"
        small = _small_bin(s, Path(item.run.eval_dir) / "metrics.json")
        gate = DASH
        if item.gates is not None:
            gate = f"{np.mean([g.gate_rate for g in item.gates]):.3f} (n={len(item.gates)})" if item.gates else DASH
        rows.append(
            (
                item.run.name,
                str(s["n_cases"]),
                fmt_mean_sd(s["dice"].get("mean"), s["dice"].get("std")),
                fmt_mean_sd(s["nsd"].get("mean"), s["nsd"].get("std")),
                hd_text,
                fmt_value(s["lesion_detection"].get("f1")),
                f"{fmt_value(small.get('mean_dice'))} ({small.get('count', 0)})",
                gate,
            )
        )
    return _md_table(head, rows)


def _size_table(loaded: Sequence[_Loaded], bins: Sequence[str]) -> str:
    head = ("method", *(f"{b}: Dice (detected/n)" for b in bins))
    rows = []
    for item in loaded:
        by_bin = item.summary.get("lesion_dice_by_volume", {})
        cells = []
        for b in bins:
            e = by_bin.get(b)
            cells.append(DASH if e is None else f"{fmt_value(e.get('mean_dice'))} ({e['detected']}/{e['count']})")
        rows.append((item.run.name, *cells))
    return _md_table(head, rows)


def _gate_stats(gates: Sequence[GateRow], bins: Sequence[str]) -> tuple[list[Any], list[int]]:
    rates, counts = [], []
    for b in bins:
        vals = [g.gate_rate for g in gates if g.size_bin == b]
        rates.append(float(np.mean(vals)) if vals else None)
        counts.append(len(vals))
    return rates, counts


def _pick_cases(last: _Loaded) -> list[tuple[str, str]]:
    """[("worst", case), ("best", case)] by the last run's case Dice among cases with a GT lesion."""
    rows = [r for r in last.metrics["cases"] if int(r.get("gt_lesions", 0)) > 0]
    if not rows:
        return []
    worst = min(rows, key=lambda r: (float(r["dice"]), str(r["case"])))
    best = min(rows, key=lambda r: (-float(r["dice"]), str(r["case"])))
    if worst["case"] == best["case"]:
        return [("worst", str(worst["case"]))]
    return [("worst", str(worst["case"])), ("best", str(best["case"]))]


def _write_overlays(
    loaded: Sequence[_Loaded], fig_dir: Path, images_dir: Path, labels_dir: Path, label: int
) -> tuple[list[tuple[str, str, Path]], list[str]]:
    """Overlay PNGs of the worst and best case; returns ([(which, case, path)], notes)."""
    notes: list[str] = []
    if not any(item.run.pred_dir is not None for item in loaded):
        return [], ["No run has a prediction folder: overlays omitted."]
    picks = _pick_cases(loaded[-1])
    if not picks:
        return [], [f"No case of {loaded[-1].run.name!r} has a ground-truth lesion: overlays omitted."]
    out = []
    for which, case in picks:
        img_vol = read_image(_find_case_file(images_dir, case, ("_0000",), "image"))
        lab_vol = read_image(_find_case_file(labels_dir, case, (), "label"))
        image = img_vol.array[0] if img_vol.array.ndim == 4 else img_vol.array
        gt = lab_vol.array == label
        if image.shape != gt.shape:
            raise ValueError(f"case {case!r}: image shape {image.shape} differs from label shape {gt.shape}")
        methods = []
        for i, item in enumerate(loaded):
            mask = None
            if item.run.pred_dir is not None:
                pred = read_image(_find_case_file(Path(item.run.pred_dir), case, ("_pred", "_0000"), "prediction"))
                if pred.array.shape != gt.shape:
                    raise ValueError(
                        f"run {item.run.name!r}, case {case!r}: prediction shape {pred.array.shape} differs from "
                        f"label shape {gt.shape}"
                    )
                mask = _pred_foreground(pred.array, item.metrics["settings"])
            methods.append(_OverlayMethod(item.run.name, _colour(i), item.dice_by_case.get(case), mask))
        if which == "worst" and len(picks) == 1:
            notes.append(f"Only case {case} has a ground-truth lesion: one overlay.")
        fig = _overlay_figure(which, case, image, img_vol.spacing, gt, methods)
        out.append((which, case, _save_png(fig, fig_dir / FIG_OVERLAY.format(which=which))))
    return out, notes


def write_report(
    out_dir: str | os.PathLike[str],
    runs: Sequence[MethodRun],
    *,
    images_dir: str | os.PathLike[str],
    labels_dir: str | os.PathLike[str],
    label: int,
    title: str = "lesionsam demo",
    notes: Sequence[str] = (),
) -> Path:
    """Write ``out_dir/report.md`` and its figures under ``out_dir/figures/`` comparing ``runs``.

    The report holds: the ``notes`` (at the top), a metrics table (one row per run: cases, Dice, NSD and HD95 as
    mean ± sd over cases, micro lesion F1, mean Dice of lesions < 1 cm³ with their count, mean gate activation
    rate for runs with a gates CSV), a lesion-size table, and the figures: per-case Dice, lesion Dice by size
    bin, gate activation by size bin (runs with gates only), training curves (runs with a training log) and
    axial overlays of the worst and best case by the Dice of the **last** run (cases with a GT lesion only; the
    same cases for every run), then the list of files every number came from (paths relative to ``out_dir``).
    Where to read each number: see the module docstring.

    Args:
        out_dir: output folder (created if missing).
        runs: one :class:`MethodRun` per method, in table order; put the headline method last.
        images_dir: folder of the evaluated images (by case id, optionally with nnU-Net's ``_0000``).
        labels_dir: folder of the ground-truth label maps the evaluator used.
        label: ground-truth target value (must be the one in every ``metrics.json``).
        title: the report's heading.
        notes: lines shown at the top (e.g. ``"trained 40 s per method on 2 CPU cores"``).

    Returns:
        The path of ``report.md``.

    Raises:
        ValueError: no run, a run name used twice, runs evaluated for another label or with different NSD
            tolerances, a malformed metrics file or CSV.
        FileNotFoundError: a missing ``metrics.json``, gates CSV, image, label or prediction of an overlay case.
    """
    runs = list(runs)
    if not runs:
        raise ValueError("write_report needs at least one MethodRun; got an empty list")
    _check_names([r.name for r in runs], "run")
    out, fig_dir = Path(out_dir), Path(out_dir) / "figures"
    if out.exists() and not out.is_dir():
        raise ValueError(f"output folder expected, but {out} is a file")
    images_dir, labels_dir = Path(images_dir), Path(labels_dir)

    auto_notes: list[str] = []
    loaded = [_load_run(r, label, auto_notes) for r in runs]
    tols = {item.metrics["settings"].get("nsd_tolerance_mm") for item in loaded}
    if len(tols) > 1:
        raise ValueError(
            "runs were evaluated with different NSD tolerances ("
            + ", ".join(f"{i.run.name}: {i.metrics['settings'].get('nsd_tolerance_mm')} mm" for i in loaded)
            + "); re-run the evaluation with one tolerance"
        )
    case_sets = {tuple(sorted(item.dice_by_case)) for item in loaded}
    if len(case_sets) > 1:
        auto_notes.append(
            "Warning: the runs were evaluated on different sets of cases ("
            + ", ".join(f"{i.run.name}: {len(i.dice_by_case)}" for i in loaded)
            + "); their means are not directly comparable."
        )
    bins = _bin_order(loaded)
    names = [item.run.name for item in loaded]

    # ---- figures
    fig = _dice_per_case_figure(
        names, [list(i.dice_by_case.values()) for i in loaded], [i.summary["dice"].get("mean") for i in loaded]
    )
    p_dice = _save_png(fig, fig_dir / FIG_DICE)
    eval_bins = [b for b in bins if any(b in i.summary.get("lesion_dice_by_volume", {}) for i in loaded)]
    fig = _size_bin_figure(eval_bins, names, [i.summary.get("lesion_dice_by_volume", {}) for i in loaded])
    p_size = _save_png(fig, fig_dir / FIG_SIZE)

    gated = [i for i in loaded if i.gates is not None]
    p_gates = None
    if gated:
        stats = [_gate_stats(i.gates or [], bins) for i in gated]
        fig = _gates_figure(bins, [i.run.name for i in gated], [s[0] for s in stats], [s[1] for s in stats])
        p_gates = _save_png(fig, fig_dir / FIG_GATES)

    with_curves = [i for i in loaded if i.curve is not None and (i.curve.loss or i.curve.val_dice)]
    p_curves = None
    if with_curves:
        fig = _curves_figure([i.run.name for i in with_curves], [i.curve for i in with_curves])
        p_curves = _save_png(fig, fig_dir / FIG_CURVES)
    overlays, overlay_notes = _write_overlays(loaded, fig_dir, images_dir, labels_dir, label)

    # ---- markdown
    def link(path: Path) -> str:
        return _rel(path, out)

    tol = next(iter(tols))
    lines = [f"# {title}", ""]
    all_notes = [*notes, *auto_notes]
    if all_notes:
        lines += [f"- {n}" for n in all_notes] + [""]
    lines += [
        "## Metrics",
        "",
        _main_table(loaded, tol),
        "",
        f"Cases: evaluated cases (label {label}). Dice, NSD (tolerance {fmt_value(tol, 'g')} mm) and HD95: mean ± sd "
        "over cases as written by the evaluator (`summary.<metric>.mean` / `.std`, population sd); HD95 leaves out "
        "cases where exactly one mask is empty (counted as undefined). Lesion F1: micro F1 over all ground-truth "
        "lesions and predicted components, 26-connected (`summary.lesion_detection.f1`). Dice < 1 cm³: mean Dice of "
        f'ground-truth lesions smaller than 1 cm³ and their number (`summary.lesion_dice_by_volume["{SMALL_BIN}"]`)'
        ". Gate activation rate: mean of `gate_rate` over the lesions of the gates CSV (n lesions); "
        f"{DASH} for methods without gates.",
        "",
        "## Dice per case",
        "",
        f"![Dice per case]({link(p_dice)})",
        "",
        "## Lesion Dice by lesion size",
        "",
        _size_table(loaded, eval_bins),
        "",
        f"![Lesion Dice by size]({link(p_size)})",
        "",
        "## Gate activation by lesion size",
        "",
    ]
    if p_gates is not None:
        lines += [f"![Gate activation rate by size]({link(p_gates)})", ""]
    else:
        lines += ["No run has a gates CSV (no SGP method in this report): figure omitted.", ""]
    lines += ["## Training curves", ""]
    if p_curves is not None:
        lines += [f"![Training curves]({link(p_curves)})", ""]
    else:
        lines += ["No training log given: curves omitted.", ""]
    lines += ["## Worst and best case", ""]
    if overlays:
        lines += [
            f"Chosen by the case Dice of {names[-1]!r} among cases with a ground-truth lesion; axial slice through the "
            "largest cross-section of the ground truth; contours: ground truth in green, each method in its colour.",
            "",
        ]
        for which, case, path in overlays:
            lines += [f"![{which} case {case}]({link(path)})", ""]
    lines += [*overlay_notes, ""] if overlay_notes else []

    lines += ["## Sources", "", "Every number above was read from these files (paths relative to this report):", ""]
    for item in loaded:
        r = item.run
        parts = [f"`{link(Path(r.eval_dir) / 'metrics.json')}` (tables, Dice per case, lesion size figure)"]
        if (Path(r.eval_dir) / "metrics.csv").is_file():
            parts.append(f"per-case table `{link(Path(r.eval_dir) / 'metrics.csv')}`")
        if r.gates_csv is not None:
            parts.append(f"gates `{link(Path(r.gates_csv))}`")
        if item.curve is not None and r.train_log is not None:
            parts.append(f"training log `{link(Path(r.train_log))}`")
        if r.pred_dir is not None and overlays:
            parts.append(f"predictions `{link(Path(r.pred_dir))}/` (overlays)")
        lines.append(f"- {r.name}: " + "; ".join(parts))
    if overlays:
        lines.append(f"- overlays: images `{link(images_dir)}/`, labels `{link(labels_dir)}/`")
    text = "\n".join(lines).rstrip() + "\n"
    return atomic_write_bytes(out / "report.md", text.encode("utf-8"))


# ------------------------------------------------------------------------------------------------- ablation
def _mean_sd(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample sd (ddof=1) of ``values``; sd None for fewer than two values, both None for none."""
    if not values:
        return None, None
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), (float(arr.std(ddof=1)) if arr.size > 1 else None)


def ablation_summary(rows: Sequence[AblationEntry]) -> list[dict[str, Any]]:
    """The numbers of :func:`ablation_table`, one dict per method in the order first seen.

    Per seed, read from its ``metrics.json``: ``summary.dice.mean`` (mean case Dice),
    ``summary.lesion_dice_by_volume["<1 cm3"].mean_dice`` (seeds without such lesions are left out),
    ``summary.lesion_detection.f1``; from its gates CSV the mean ``gate_rate``. Then mean and sample sd (ddof=1)
    over seeds.

    Returns:
        ``[{"method", "n_seeds", "seeds", "dice", "small_lesion_dice", "lesion_f1", "gate_rate", "sources"}]``
        where each metric is ``{"mean", "sd", "values"}`` (``sd`` None for one value; ``gate_rate`` None for a
        method without gates) and ``small_lesion_dice`` also holds ``counts`` (lesions < 1 cm³ per seed).

    Raises:
        ValueError: no row, a (method, seed) pair twice, gates given for some seeds of a method but not others.
        FileNotFoundError: a missing ``metrics.json`` or gates CSV.
    """
    rows = list(rows)
    if not rows:
        raise ValueError("the ablation needs at least one AblationEntry; got an empty list")
    by_method: dict[str, list[AblationEntry]] = {}
    for row in rows:
        if not isinstance(row.method, str) or not row.method.strip():
            raise ValueError(f"every ablation entry needs a non-empty method name, got {row.method!r}")
        group = by_method.setdefault(row.method, [])
        if any(r.seed == row.seed for r in group):
            raise ValueError(f"method {row.method!r} has seed {row.seed} twice; give each seed once")
        group.append(row)

    out = []
    for method, group in by_method.items():
        with_gates = [r.seed for r in group if r.gates_csv is not None]
        if with_gates and len(with_gates) != len(group):
            raise ValueError(
                f"method {method!r}: gates CSV given for seed(s) {with_gates} but not for "
                f"{[r.seed for r in group if r.gates_csv is None]}; give it for every seed or none"
            )
        dice, small, small_n, f1, gates, sources = [], [], [], [], [], []
        for r in group:
            metrics = load_metrics(r.eval_dir, what=f"method {method!r} seed {r.seed}")
            s = metrics["summary"]
            dice.append(float(s["dice"]["mean"]))
            sb = _small_bin(s, Path(r.eval_dir) / "metrics.json")
            small_n.append(int(sb.get("count", 0)))
            if _is_num(sb.get("mean_dice")):
                small.append(float(sb["mean_dice"]))
            f1.append(float(s["lesion_detection"]["f1"]))
            src = {"seed": r.seed, "metrics": str(Path(r.eval_dir) / "metrics.json")}
            if r.gates_csv is not None:
                g = read_gates_csv(r.gates_csv)
                if not g:
                    raise ValueError(f"method {method!r} seed {r.seed}: gates CSV {r.gates_csv} has no rows")
                gates.append(float(np.mean([x.gate_rate for x in g])))
                src["gates"] = str(r.gates_csv)
            sources.append(src)

        def stat(values: list[float]) -> dict[str, Any]:
            m, sd = _mean_sd(values)
            return {"mean": m, "sd": sd, "values": values}

        out.append(
            {
                "method": method,
                "n_seeds": len(group),
                "seeds": [r.seed for r in group],
                "dice": stat(dice),
                "small_lesion_dice": {**stat(small), "counts": small_n},
                "lesion_f1": stat(f1),
                "gate_rate": stat(gates) if with_gates else None,
                "sources": sources,
            }
        )
    return out


def _ablation_markdown(summary: Sequence[Mapping[str, Any]]) -> str:
    head = ("method", "seeds", "Dice", "Dice < 1 cm³", "lesion F1", "gate activation rate")
    rows = []
    for m in summary:
        small = m["small_lesion_dice"]
        small_text = fmt_mean_sd(small["mean"], small["sd"])
        if small["values"] and len(small["values"]) < m["n_seeds"]:
            small_text += f" ({len(small['values'])} seeds)"
        gate = m["gate_rate"]
        rows.append(
            (
                m["method"],
                str(m["n_seeds"]),
                fmt_mean_sd(m["dice"]["mean"], m["dice"]["sd"]),
                small_text,
                fmt_mean_sd(m["lesion_f1"]["mean"], m["lesion_f1"]["sd"]),
                DASH if gate is None else fmt_mean_sd(gate["mean"], gate["sd"]),
            )
        )
    return _md_table(head, rows)


def ablation_table(rows: Sequence[AblationEntry]) -> str:
    """A Markdown table: one row per method (order first seen), mean ± sd over its seeds.

    Columns: number of seeds; mean case Dice; Dice of lesions < 1 cm³; micro lesion F1; mean gate activation
    rate (:data:`DASH` for methods without gates). sd is the sample sd over seeds (ddof=1), :data:`DASH` for a single
    seed. The numbers: :func:`ablation_summary`.

    Raises:
        ValueError / FileNotFoundError: see :func:`ablation_summary`.
    """
    return _ablation_markdown(ablation_summary(rows))


def write_ablation(out_dir: str | os.PathLike[str], rows: Sequence[AblationEntry]) -> Path:
    """Write ``out_dir/ablation.md`` (the :func:`ablation_table` with its sources) and ``ablation.json``.

    ``ablation.json`` = ``{"format": "lesionsam-ablation", "version": 1, "sd": "...", "methods":
    ablation_summary(rows)}`` (strict JSON; a missing value is null).

    Returns:
        The path of ``ablation.md``.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output folder expected, but {out} is a file")
    summary = ablation_summary(rows)
    payload = {
        "format": "lesionsam-ablation",
        "version": 1,
        "sd": "sample standard deviation over seeds (ddof=1); null for one seed",
        "methods": summary,
    }
    atomic_write_bytes(out / "ablation.json", (json.dumps(payload, indent=2, allow_nan=False) + "\n").encode())
    lines = [
        "# Ablation",
        "",
        _ablation_markdown(summary),
        "",
        "Mean ± sample sd (ddof=1) over seeds of each seed's value; "
        f"{DASH} where it does not exist. Per seed: Dice = `summary.dice.mean` (mean over cases), Dice < 1 cm³ = "
        f'`summary.lesion_dice_by_volume["{SMALL_BIN}"].mean_dice`, lesion F1 = `summary.lesion_detection.f1` '
        "(micro) of its `metrics.json`; gate activation rate = mean `gate_rate` of its gates CSV.",
        "",
        "## Sources",
        "",
    ]
    for m in summary:
        for src in m["sources"]:
            extra = f", `{_rel(Path(src['gates']), out)}`" if "gates" in src else ""
            lines.append(f"- {m['method']} seed {src['seed']}: `{_rel(Path(src['metrics']), out)}`{extra}")
    return atomic_write_bytes(out / "ablation.md", ("\n".join(lines) + "\n").encode("utf-8"))
