"""Axial overlays of ground truth and predictions on the image.

Only the overlays read images: the image, the ground truth (``gt == label``) and each method's prediction (the
evaluator's foreground rule: ``pred > 0``, or ``pred == pred_label`` when the evaluation used one).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lesionsam.data.io import case_id, is_image_path
from lesionsam.evaluation.figures import GT_COLOUR, new_figure
from lesionsam.evaluation.report_io import fmt_value

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: Grey-value window of CT-like images (HU), used when the image reaches air values (<= :data:`CT_AIR_HU`).
CT_WINDOW_HU = (-160.0, 240.0)
CT_AIR_HU = -500.0
#: Percentiles of the image giving the grey-value window of other images (MRI, normalised intensities).
PERCENTILE_WINDOW = (1.0, 99.0)
#: The overlay adds a zoom panel when the zoom box covers less than this fraction of the slice.
ZOOM_MAX_FRACTION = 0.5
#: Smallest half-width (mm) of the zoom box; otherwise 1.5 × the lesion's in-plane extent.
ZOOM_MIN_HALF_MM = 12.0


def find_case_file(folder: Path, case: str, suffixes: Sequence[str], what: str) -> Path:
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
    fig = new_figure(10.0 if zoomed else 5.6, 5.6)
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


def pred_foreground(arr: np.ndarray, settings: Mapping[str, Any]) -> np.ndarray:
    """The evaluator's prediction foreground rule (``pred > 0``, or ``pred == pred_label`` when it used one)."""
    pred_label = settings.get("pred_label")
    return arr > 0 if pred_label is None else arr == pred_label
