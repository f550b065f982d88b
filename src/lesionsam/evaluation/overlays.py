"""Axial overlays of ground truth and predictions on the image.

Only the overlays read images: the image, the ground truth (``gt == label``) and each method's prediction (the
evaluator's foreground rule: ``pred > 0``, or ``pred == pred_label`` when the evaluation used one).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lesionsam.data.io import case_id, is_image_path, read_image
from lesionsam.evaluation.figures import FIG_OVERLAY, GT_COLOUR, new_figure, save_png
from lesionsam.evaluation.report_io import fmt_value
from lesionsam.utils.components import label_lesions

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


#: Lengths (mm) a scale bar may have; the longest that fits in :data:`SCALE_BAR_FRACTION` of the view is used.
SCALE_BAR_STEPS_MM = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0)
SCALE_BAR_FRACTION = 0.3
#: Anatomical letters at the (negative, positive) end of the LPS world axes x, y, z (ITK / DICOM: +x = patient's
#: left, +y = posterior, +z = superior).
LPS_LETTERS = (("R", "L"), ("A", "P"), ("I", "S"))
#: Slice plane by the world axis closest to the slice normal (the image's k axis).
PLANE_BY_NORMAL = ("sagittal", "coronal", "axial")
#: Colour and marker of the click.
CLICK_COLOUR = "#ffffff"
CLICK_MARKER = "*"


def axis_letters(world_direction: Sequence[float]) -> tuple[str, str]:
    """The anatomical letters at the low-index and the high-index end of an image axis.

    Args:
        world_direction: the axis's direction in LPS world coordinates (a column of the direction matrix).

    Returns:
        (letter at index 0, letter at the last index), by the world axis the direction is closest to: an axis
        along +x (LPS) runs from the patient's right to the left, so ``("R", "L")``.
    """
    v = np.asarray(world_direction, dtype=float).ravel()
    if v.shape != (3,) or not np.isfinite(v).all() or not np.any(v):
        raise ValueError(f"a direction needs three finite numbers, not all zero; got {world_direction!r}")
    axis = int(np.argmax(np.abs(v)))
    neg, pos = LPS_LETTERS[axis]
    return (neg, pos) if v[axis] > 0 else (pos, neg)


def slice_orientation(direction: Sequence[float]) -> dict[str, str]:
    """Letters at the four sides of a k-slice shown in array order (rows = j downward, columns = i rightward).

    Args:
        direction: the image's direction, 9 numbers row-major (column n = world direction of index axis n, as
            :attr:`lesionsam.data.io.Volume.direction`) or a 3×3 matrix.

    Returns:
        ``{"left", "right", "top", "bottom", "plane"}``; e.g. the identity direction gives left R, right L, top A,
        bottom P, plane axial (the radiological view).
    """
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    left, right = axis_letters(d[:, 0])
    top, bottom = axis_letters(d[:, 1])
    plane = PLANE_BY_NORMAL[int(np.argmax(np.abs(d[:, 2])))]
    return {"left": left, "right": right, "top": top, "bottom": bottom, "plane": plane}


def scale_bar(view_width_px: float, spacing_mm: float) -> tuple[float, float]:
    """(length in mm, length in pixels) of a scale bar for a view ``view_width_px`` columns of ``spacing_mm``."""
    if spacing_mm <= 0 or view_width_px <= 0:
        raise ValueError(f"scale_bar needs a positive width and spacing, got {view_width_px}, {spacing_mm}")
    width_mm = view_width_px * spacing_mm
    fitting = [s for s in SCALE_BAR_STEPS_MM if s <= SCALE_BAR_FRACTION * width_mm]
    length = fitting[-1] if fitting else SCALE_BAR_STEPS_MM[0]
    return length, length / spacing_mm


def centre_clicks(gt: np.ndarray) -> list[np.ndarray]:
    """The centre click of every lesion, as ``lesionsam predict --clicks-from`` places it, in (D, H, W) order.

    One click per 26-connected component of ``gt``, largest component first: the interior-most voxel of
    :func:`lesionsam.data.clicks.first_click` (``mode="center"``), exactly what
    :func:`lesionsam.inference.prompt_files.clicks_from_label` gives (there in ITK (i, j, k) order; the evaluation
    layer does not import the inference layer, so the loop is repeated here and tested against it).
    """
    from scipy import ndimage

    from lesionsam.data.clicks import first_click

    comps, n = label_lesions(np.asarray(gt, dtype=bool))
    if n == 0:
        return []
    sizes = ndimage.sum_labels(np.ones_like(comps), comps, index=np.arange(1, n + 1))
    order = np.argsort(-sizes, kind="stable")
    return [np.asarray(first_click(comps == idx + 1, mode="center")[0], dtype=np.int64) for idx in order]


@dataclass(frozen=True)
class OverlayMethod:
    """The method drawn on an overlay: its name, colour, case Dice and mask ((D, H, W) bool; None = no prediction)."""

    name: str
    colour: str
    dice: Any
    mask: np.ndarray | None


def _draw_scale_bar(ax: Any, c0: float, c1: float, r0: float, r1: float, spacing_mm: float) -> None:
    length_mm, length_px = scale_bar(c1 - c0, spacing_mm)
    x0 = c0 + 0.05 * (c1 - c0)
    y = r1 - 0.06 * (r1 - r0)
    ax.plot([x0, x0 + length_px], [y, y], color="white", lw=3, solid_capstyle="butt", gid="scale_bar")
    ax.text(
        x0 + length_px / 2,
        y - 0.02 * (r1 - r0),
        f"{length_mm:g} mm",
        color="white",
        ha="center",
        va="bottom",
        fontsize=8,
    )


def _draw_letters(ax: Any, letters: Mapping[str, str]) -> None:
    style = {"color": "yellow", "fontsize": 11, "fontweight": "bold", "transform": ax.transAxes}
    ax.text(0.02, 0.5, letters["left"], ha="left", va="center", **style)
    ax.text(0.98, 0.5, letters["right"], ha="right", va="center", **style)
    ax.text(0.5, 0.98, letters["top"], ha="center", va="top", **style)
    ax.text(0.5, 0.02, letters["bottom"], ha="center", va="bottom", **style)


def overlay_figure(
    title: str,
    image: np.ndarray,
    spacing_ijk: Sequence[float],
    direction: Sequence[float],
    gt: np.ndarray,
    method: OverlayMethod,
    clicks: Sequence[np.ndarray],
) -> Figure:
    """The k-slice through the click of the largest lesion: full view and zoom, contours, click, scale, letters.

    Args:
        title: the figure's heading (method, case, which).
        image: (D, H, W) image; ``spacing_ijk`` and ``direction`` its ITK geometry.
        gt: (D, H, W) bool ground truth (must have a lesion).
        method: the method drawn (contour in its colour).
        clicks: :func:`centre_clicks` of ``gt`` (the first is the largest lesion's); every click on the slice is
            drawn as a white star.
    """
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle

    k = int(clicks[0][0]) if clicks else int(np.argmax(gt.sum(axis=(1, 2))))
    sl = image[k].astype(float)
    vmin, vmax = _display_window(image)
    sx, sy = float(spacing_ijk[0]), float(spacing_ijk[1])
    aspect = sy / sx  # row (j) / column (i) spacing
    letters = slice_orientation(direction)

    rows, cols = np.nonzero(gt[k])
    h, w = sl.shape
    extent_mm = max((np.ptp(rows) + 1) * sy, (np.ptp(cols) + 1) * sx)
    half_mm = max(1.5 * extent_mm, ZOOM_MIN_HALF_MM)
    half_r, half_c = max(int(round(half_mm / sy)), 4), max(int(round(half_mm / sx)), 4)
    cr, cc = (int(rows.min()) + int(rows.max())) // 2, (int(cols.min()) + int(cols.max())) // 2
    r0, r1 = max(cr - half_r, 0), min(cr + half_r + 1, h)
    c0, c1 = max(cc - half_c, 0), min(cc + half_c + 1, w)
    on_slice = [c for c in clicks if int(c[0]) == k]

    zoomed = (r1 - r0) * (c1 - c0) < ZOOM_MAX_FRACTION * h * w  # a zoom panel only where it shows more detail
    fig = new_figure(10.0 if zoomed else 5.6, 5.8)
    axes = fig.subplots(1, 2) if zoomed else [fig.add_subplot()]
    for zoom, ax in enumerate(axes):
        ax.imshow(sl, cmap="gray", vmin=vmin, vmax=vmax, aspect=aspect, interpolation="nearest")
        ax.contour(gt[k].astype(float), levels=[0.5], colors=[GT_COLOUR], linewidths=2.0)
        if method.mask is not None and method.mask[k].any():
            ax.contour(method.mask[k].astype(float), levels=[0.5], colors=[method.colour], linewidths=1.4)
        for c in on_slice:
            ax.scatter(
                [c[2]],
                [c[1]],
                marker=CLICK_MARKER,
                s=140,
                color=CLICK_COLOUR,
                edgecolor="black",
                linewidth=0.8,
                zorder=5,
                gid="click",
            )
        ax.set_xticks([])
        ax.set_yticks([])
        if zoom:
            ax.set_xlim(c0 - 0.5, c1 - 0.5)
            ax.set_ylim(r1 - 0.5, r0 - 0.5)
            ax.set_title("zoom", fontsize=10)
            _draw_scale_bar(ax, c0 - 0.5, c1 - 0.5, r0 - 0.5, r1 - 0.5, sx)
        else:
            if zoomed:
                ax.add_patch(
                    Rectangle((c0 - 0.5, r0 - 0.5), c1 - c0, r1 - r0, fill=False, edgecolor="white", ls=":", lw=1.0)
                )
            ax.set_title(f"{letters['plane']} slice k={k} of {image.shape[0]} (window {vmin:g}..{vmax:g})", fontsize=10)
            _draw_scale_bar(ax, -0.5, w - 0.5, -0.5, h - 0.5, sx)
        _draw_letters(ax, letters)
    fig.suptitle(title, fontsize=12)
    if method.mask is None:
        suffix = ", no prediction folder"
    elif not method.mask.any():
        suffix = ", empty prediction"
    elif not method.mask[k].any():
        suffix = ", none on this slice"
    else:
        suffix = ""
    handles = [
        Line2D([], [], color=GT_COLOUR, lw=2.0, label="ground truth"),
        Line2D([], [], color=method.colour, lw=1.4, label=f"{method.name} (Dice {fmt_value(method.dice)}{suffix})"),
        Line2D(
            [],
            [],
            ls="",
            marker=CLICK_MARKER,
            ms=11,
            color=CLICK_COLOUR,
            mec="black",
            label=f"centre click ({len(on_slice)} of {len(clicks)} lesion(s) on this slice)",
        ),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=3 if zoomed else 1, fontsize=9)
    return fig


def pred_foreground(arr: np.ndarray, settings: Mapping[str, Any]) -> np.ndarray:
    """The evaluator's prediction foreground rule (``pred > 0``, or ``pred == pred_label`` when it used one)."""
    pred_label = settings.get("pred_label")
    return arr > 0 if pred_label is None else arr == pred_label


# ------------------------------------------------------------------------------------------------- per method
#: File name of the overlays of a method that is not the report's headline (last) method.
FIG_OVERLAY_METHOD = "overlay_{method}_{which}.png"


@dataclass(frozen=True)
class OverlayRun:
    """What :func:`write_overlays` needs of one run.

    Attributes:
        name, colour: the method's name and colour (:func:`lesionsam.evaluation.figures.method_colours`).
        pred_dir: its prediction folder (None: no overlay for this run).
        settings: its evaluator ``settings`` (for the prediction foreground rule).
        dice_by_case: its case Dice.
        lesion_cases: its cases with a ground-truth lesion (the candidates).
        headline: True for the report's last run: its files are ``overlay_worst.png`` / ``overlay_best.png``.
    """

    name: str
    colour: str
    pred_dir: Path | None
    settings: Mapping[str, Any]
    dice_by_case: Mapping[str, float]
    lesion_cases: Sequence[str]
    headline: bool = False


@dataclass(frozen=True)
class OverlayFile:
    """One written overlay: the method, ``"worst"`` or ``"best"``, the case and the PNG."""

    method: str
    which: str
    case: str
    path: Path


def pick_cases(dice_by_case: Mapping[str, float], lesion_cases: Sequence[str]) -> list[tuple[str, str]]:
    """``[("worst", case), ("best", case)]`` by one method's own case Dice among ``lesion_cases`` (ties: case id).

    One entry when a single case qualifies, none without one.
    """
    cand = [c for c in lesion_cases if c in dice_by_case]
    if not cand:
        return []
    worst = min(cand, key=lambda c: (dice_by_case[c], c))
    best = min(cand, key=lambda c: (-dice_by_case[c], c))
    return [("worst", worst)] if worst == best else [("worst", worst), ("best", best)]


def _file_name(run: OverlayRun, which: str) -> str:
    if run.headline:
        return FIG_OVERLAY.format(which=which)
    return FIG_OVERLAY_METHOD.format(method=re.sub(r"[^A-Za-z0-9_.-]", "_", run.name), which=which)


def write_overlays(
    runs: Sequence[OverlayRun], fig_dir: Path, images_dir: Path, labels_dir: Path, label: int
) -> tuple[list[OverlayFile], list[str]]:
    """The overlays of each run's own worst and best case (its Dice, cases with a lesion); returns (files, notes).

    Raises:
        FileNotFoundError: a missing image, label or prediction of a chosen case.
        ValueError: image, label and prediction of a case on different grids.
    """
    notes: list[str] = []
    if not any(r.pred_dir is not None for r in runs):
        return [], ["No run has a prediction folder: overlays omitted."]
    cache: dict[str, tuple[Any, np.ndarray, list[np.ndarray]]] = {}
    out: list[OverlayFile] = []
    for run in runs:
        if run.pred_dir is None:
            notes.append(f"{run.name}: no prediction folder, no overlay.")
            continue
        picks = pick_cases(run.dice_by_case, run.lesion_cases)
        if not picks:
            notes.append(f"No case of {run.name!r} has a ground-truth lesion: no overlay.")
            continue
        if len(picks) == 1:
            notes.append(f"{run.name}: only case {picks[0][1]} has a ground-truth lesion: one overlay.")
        for which, case in picks:
            if case not in cache:
                img_vol = read_image(find_case_file(images_dir, case, ("_0000",), "image"))
                lab_vol = read_image(find_case_file(labels_dir, case, (), "label"))
                gt = lab_vol.array == label
                image = img_vol.array[0] if img_vol.array.ndim == 4 else img_vol.array
                if image.shape != gt.shape:
                    raise ValueError(f"case {case!r}: image shape {image.shape} differs from label shape {gt.shape}")
                cache[case] = (img_vol, gt, centre_clicks(gt))
            img_vol, gt, clicks = cache[case]
            image = img_vol.array[0] if img_vol.array.ndim == 4 else img_vol.array
            pred = read_image(find_case_file(Path(run.pred_dir), case, ("_pred", "_0000"), "prediction"))
            if pred.array.shape != gt.shape:
                raise ValueError(
                    f"run {run.name!r}, case {case!r}: prediction shape {pred.array.shape} differs from label shape "
                    f"{gt.shape}"
                )
            method = OverlayMethod(
                run.name, run.colour, run.dice_by_case.get(case), pred_foreground(pred.array, run.settings)
            )
            title = f"{run.name}: {which} case {case} (Dice {fmt_value(method.dice)})"
            fig = overlay_figure(title, image, img_vol.spacing, img_vol.direction, gt, method, clicks)
            out.append(OverlayFile(run.name, which, case, save_png(fig, fig_dir / _file_name(run, which))))
    return out, notes
