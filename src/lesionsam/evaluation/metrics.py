"""Per-case segmentation metrics on binary masks with physical spacing, and their aggregation.

Conventions (also written into every ``metrics.json`` as :data:`CONVENTIONS`):

* Arrays are ``(D, H, W)`` in SimpleITK's NumPy order ``(k, j, i)``; the spacing passed to
  :func:`case_metrics` is in the **same array order** ``(sD, sH, sW)`` in mm. ``Volume.spacing`` is ITK's
  ``(i, j, k)`` order: pass ``tuple(reversed(volume.spacing))`` (or use :func:`spacing_dhw`).
* Dice = 2|P∩G| / (|P| + |G|) over voxels.
* NSD (normalised surface Dice, Nikolov et al., 2021, arXiv:2111.05408) and HD95 come from MONAI
  (:func:`monai.metrics.compute_surface_dice`, :func:`monai.metrics.compute_hausdorff_distance`) with the
  voxel spacing, so distances and the NSD tolerance are in mm. Surfaces are the mask voxels that have a
  6-connected background neighbour (MONAI's default edges, no sub-voxel areas). HD95 is MONAI's symmetric
  definition: the larger of the two directed 95th percentiles of surface distances.
* Empty masks are handled in one place, :func:`empty_case_scores`, before MONAI is called.
* Lesions are the 26-connected components (:data:`CONNECTIVITY`) of each binary mask. A ground-truth (GT)
  lesion is detected (a true positive, TP) if any predicted voxel overlaps it; a predicted component that
  overlaps no GT lesion is a false positive (FP); an undetected GT lesion is a false negative (FN). A
  predicted component touching two GT lesions detects both; a GT lesion split into two predicted components
  counts once. Precision = TP / (TP + FP), recall = TP / (TP + FN), F1 = 2TP / (2TP + FP + FN); each is 1.0
  when its denominator is 0 (nothing to find and nothing wrongly found).
* Per-lesion Dice compares one GT component with the union of the predicted components that overlap it
  (0 for an undetected lesion). Lesion volume = voxel count × voxel volume (mm³) / 1000, in ml (= cm³), binned
  as ``<1 cm3`` (v < 1), ``1-10 cm3`` (1 ≤ v ≤ 10) and ``>10 cm3`` (v > 10).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

#: Structuring element for connected components: full 3×3×3 neighbourhood = 26-connectivity
#: (voxels touching by a face, an edge or a corner belong to the same lesion).
CONNECTIVITY = 26
_STRUCTURE = ndimage.generate_binary_structure(3, 3)

#: Lesion volume bins in ml (= cm³): (name, lower bound, upper bound); see :func:`volume_bin`.
VOLUME_BINS_ML: tuple[tuple[str, float, float], ...] = (
    ("<1 cm3", 0.0, 1.0),
    ("1-10 cm3", 1.0, 10.0),
    (">10 cm3", 10.0, math.inf),
)

#: The conventions, as written into ``metrics.json`` (one documented place; see the module docstring).
CONVENTIONS: dict[str, str] = {
    "axes": "arrays (D, H, W) = SimpleITK (k, j, i); spacing reversed from ITK (i, j, k) to match; distances in mm",
    "dice": "2|P∩G| / (|P| + |G|) over voxels",
    "nsd": "MONAI compute_surface_dice, symmetric, edge voxels (6-neighbourhood), tolerance in mm",
    "hd95": "MONAI compute_hausdorff_distance(percentile=95): max of the two directed 95th percentiles, in mm",
    "empty": (
        "GT empty and prediction empty: Dice 1, NSD 1, HD95 0. Exactly one empty: Dice 0, NSD 0, HD95 undefined "
        "(NaN in CSV, null in JSON), excluded from the HD95 mean/median and counted as n_undefined"
    ),
    "lesions": (
        "26-connected components; a GT lesion is a TP if any predicted voxel overlaps it, else FN; a predicted "
        "component overlapping no GT lesion is an FP"
    ),
    "detection_ratios": (
        "precision TP/(TP+FP), recall TP/(TP+FN), F1 2TP/(2TP+FP+FN); 0/0 = 1.0 (nothing to find, nothing wrong). "
        "Micro = from TP/FP/FN summed over all cases"
    ),
    "lesion_dice": "GT component vs the union of predicted components overlapping it; 0 if undetected",
    "volume_bins": "lesion volume = voxels × voxel volume / 1000 (ml = cm3): <1, 1-10 (inclusive), >10",
}


def empty_case_scores(*, gt_empty: bool, pred_empty: bool) -> tuple[float, float, float] | None:
    """The (Dice, NSD, HD95 mm) of a case where a mask is empty; None when both masks have voxels.

    This is the single place where empty masks are scored:

    * GT empty and prediction empty → ``(1.0, 1.0, 0.0)``: a correct "no lesion".
    * exactly one empty → ``(0.0, 0.0, nan)``: HD95 is undefined (no surface to measure to); it is left out
      of the HD95 mean/median and counted separately by :func:`summarise`.

    Args:
        gt_empty: the ground truth has no foreground voxel.
        pred_empty: the prediction has no foreground voxel.

    Returns:
        (dice, nsd, hd95_mm) or None if neither mask is empty.
    """
    if gt_empty and pred_empty:
        return 1.0, 1.0, 0.0
    if gt_empty or pred_empty:
        return 0.0, 0.0, math.nan
    return None


def ratio(num: float, den: float) -> float:
    """``num / den`` with the 0/0 = 1.0 convention of the detection ratios (``den`` > 0 otherwise)."""
    return 1.0 if den == 0 else float(num) / float(den)


def volume_bin(volume_ml: float) -> str:
    """The name of the :data:`VOLUME_BINS_ML` bin of a lesion of ``volume_ml`` ml (cm³).

    Bins: ``<1 cm3`` for v < 1, ``1-10 cm3`` for 1 ≤ v ≤ 10, ``>10 cm3`` for v > 10.
    """
    if volume_ml < 1.0:
        return VOLUME_BINS_ML[0][0]
    if volume_ml <= 10.0:
        return VOLUME_BINS_ML[1][0]
    return VOLUME_BINS_ML[2][0]


def spacing_dhw(spacing_ijk: Sequence[float]) -> tuple[float, float, float]:
    """ITK spacing ``(i, j, k)`` (e.g. ``Volume.spacing``) → array-axis spacing ``(D, H, W)`` = ``(k, j, i)``."""
    if len(spacing_ijk) != 3:
        raise ValueError(f"expected a 3D spacing (i, j, k) in mm, got {tuple(spacing_ijk)}")
    i, j, k = (float(v) for v in spacing_ijk)
    return (k, j, i)


@dataclass
class LesionRecord:
    """One connected component: a ground-truth lesion (``kind='gt'``) or a false-positive prediction (``'fp'``).

    Attributes:
        case: case id.
        kind: ``'gt'`` for a ground-truth lesion, ``'fp'`` for a predicted component overlapping no GT lesion.
        index: component number (1-based, scipy's label order) within its mask.
        voxels: voxel count of the component.
        volume_ml: voxels × voxel volume / 1000 (ml = cm³).
        size_bin: :func:`volume_bin` of ``volume_ml``.
        detected: for ``'gt'``, whether any predicted voxel overlaps it; always False for ``'fp'``.
        dice: for ``'gt'``, Dice against the union of the predicted components overlapping it (0 if
            undetected); NaN for ``'fp'``.
        centroid_ijk: centre of mass as a continuous voxel index in ITK order (i, j, k), as 3D Slicer shows it.
    """

    case: str
    kind: str
    index: int
    voxels: int
    volume_ml: float
    size_bin: str
    detected: bool
    dice: float
    centroid_ijk: tuple[float, float, float]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (NaN → None)."""
        return {
            "case": self.case,
            "kind": self.kind,
            "index": self.index,
            "voxels": self.voxels,
            "volume_ml": _json_float(self.volume_ml),
            "size_bin": self.size_bin,
            "detected": self.detected,
            "dice": _json_float(self.dice),
            "centroid_ijk": [round(float(v), 2) for v in self.centroid_ijk],
        }


@dataclass
class CaseMetrics:
    """The metrics of one case (see the module docstring for every convention).

    Attributes:
        case: case id ('' when not set).
        dice: voxel Dice.
        nsd: normalised surface Dice at ``nsd_tolerance_mm``.
        hd95_mm: 95th-percentile Hausdorff distance in mm; NaN when exactly one mask is empty.
        gt_lesions, pred_lesions: number of 26-connected components in GT / prediction.
        tp, fp, fn: detected GT lesions, predicted components overlapping no GT lesion, missed GT lesions.
        gt_volume_ml, pred_volume_ml: foreground volumes in ml.
        nsd_tolerance_mm: the NSD tolerance used.
        lesions: one :class:`LesionRecord` per GT lesion.
        false_positives: one :class:`LesionRecord` per false-positive predicted component.
    """

    case: str
    dice: float
    nsd: float
    hd95_mm: float
    gt_lesions: int
    pred_lesions: int
    tp: int
    fp: int
    fn: int
    gt_volume_ml: float
    pred_volume_ml: float
    nsd_tolerance_mm: float
    lesions: list[LesionRecord] = field(default_factory=list)
    false_positives: list[LesionRecord] = field(default_factory=list)

    @property
    def precision(self) -> float:
        """Lesion-wise TP / (TP + FP), 1.0 when nothing was predicted."""
        return ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float:
        """Lesion-wise TP / (TP + FN), 1.0 when there is no GT lesion."""
        return ratio(self.tp, self.tp + self.fn)

    @property
    def f1(self) -> float:
        """Lesion-wise 2TP / (2TP + FP + FN), 1.0 when there is nothing to find and nothing predicted."""
        return ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)

    @property
    def hd95_defined(self) -> bool:
        """False when exactly one mask is empty (HD95 undefined)."""
        return not math.isnan(self.hd95_mm)

    def row(self) -> dict[str, Any]:
        """The CSV / JSON row of this case (NaN kept as float NaN; see :func:`to_jsonable`)."""
        return {
            "case": self.case,
            "dice": self.dice,
            "nsd": self.nsd,
            "hd95_mm": self.hd95_mm,
            "gt_lesions": self.gt_lesions,
            "pred_lesions": self.pred_lesions,
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "gt_volume_ml": self.gt_volume_ml,
            "pred_volume_ml": self.pred_volume_ml,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
        }


# ------------------------------------------------------------------------------------------------- helpers
def _json_float(x: float) -> float | None:
    x = float(x)
    return None if math.isnan(x) or math.isinf(x) else x


def to_jsonable(obj: Any) -> Any:
    """Recursively turn NumPy scalars into Python ones and NaN/inf into None (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return _json_float(float(obj))
    return obj


def _check_inputs(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float], tolerance: float) -> None:
    if pred.ndim != 3 or gt.ndim != 3:
        raise ValueError(f"expected 3D (D, H, W) masks, got prediction {pred.shape} and ground truth {gt.shape}")
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth shape {gt.shape}")
    if len(spacing) != 3 or not all(math.isfinite(float(s)) and float(s) > 0 for s in spacing):
        raise ValueError(f"spacing must be 3 positive mm values in (D, H, W) order, got {tuple(spacing)}")
    if not math.isfinite(tolerance) or tolerance < 0:
        raise ValueError(f"nsd_tolerance_mm must be a finite value >= 0, got {tolerance}")


def _union_bbox(a: np.ndarray, b: np.ndarray, margin: int = 1) -> tuple[slice, ...] | None:
    """Slices of the bounding box of ``a | b`` grown by ``margin`` (clipped to the array); None if both empty."""
    union = a | b
    out = []
    for axis in range(union.ndim):
        other = tuple(ax for ax in range(union.ndim) if ax != axis)
        hit = np.flatnonzero(union.any(axis=other))
        if hit.size == 0:
            return None
        out.append(slice(max(int(hit[0]) - margin, 0), min(int(hit[-1]) + margin + 1, union.shape[axis])))
    return tuple(out)


def _surface_scores(
    pred: np.ndarray, gt: np.ndarray, spacing: tuple[float, float, float], tol: float
) -> tuple[float, float]:
    """(NSD, HD95 mm) of two non-empty bool masks via MONAI (inputs (D, H, W), spacing in the same order)."""
    import torch
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    yp = torch.from_numpy(np.ascontiguousarray(pred))[None, None].float()
    yt = torch.from_numpy(np.ascontiguousarray(gt))[None, None].float()
    spacing_list = [float(s) for s in spacing]
    with warnings.catch_warnings():  # MONAI 1.6 warns about its own internal use of a deprecated argument
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
        nsd = compute_surface_dice(yp, yt, [float(tol)], include_background=True, spacing=spacing_list)
        hd95 = compute_hausdorff_distance(yp, yt, include_background=True, percentile=95, spacing=spacing_list)
    return float(nsd.item()), float(hd95.item())


# ------------------------------------------------------------------------------------------------- per case
def case_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing_dhw: Sequence[float],
    *,
    nsd_tolerance_mm: float = 2.0,
    case: str = "",
) -> CaseMetrics:
    """Voxel, surface and lesion-wise metrics of one case.

    Args:
        pred: (D, H, W) prediction; voxels != 0 (or True) are foreground.
        gt: (D, H, W) ground truth, same shape; voxels != 0 (or True) are foreground.
        spacing_dhw: voxel size in mm in the **array** order (D, H, W) = ITK (k, j, i); for a
            :class:`~lesionsam.data.io.Volume` use ``spacing_dhw(volume.spacing)``.
        nsd_tolerance_mm: NSD tolerance in mm (default 2 mm).
        case: case id stored in the result and its lesion records.

    Returns:
        A :class:`CaseMetrics` with one :class:`LesionRecord` per GT lesion and per false-positive component.

    Raises:
        ValueError: masks not 3D or of different shapes, a non-positive spacing, a negative tolerance.
    """
    pred = np.asarray(pred) != 0
    gt = np.asarray(gt) != 0
    spacing = tuple(float(s) for s in spacing_dhw)
    _check_inputs(pred, gt, spacing, float(nsd_tolerance_mm))
    voxel_ml = spacing[0] * spacing[1] * spacing[2] / 1000.0

    box = _union_bbox(pred, gt)
    offset = np.zeros(3)
    if box is not None:  # everything below is exact on the crop (no foreground outside it)
        pred, gt = pred[box], gt[box]
        offset = np.array([s.start for s in box], dtype=float)

    n_pred_vox, n_gt_vox = int(pred.sum()), int(gt.sum())
    inter = int(np.count_nonzero(pred & gt))
    empty = empty_case_scores(gt_empty=n_gt_vox == 0, pred_empty=n_pred_vox == 0)
    if empty is None:
        dice = 2.0 * inter / (n_pred_vox + n_gt_vox)
        nsd, hd95 = _surface_scores(pred, gt, spacing, float(nsd_tolerance_mm))
    else:
        dice, nsd, hd95 = empty

    lesions, fps, n_gt, n_pr, tp = _lesion_records(pred, gt, voxel_ml, offset, case)
    return CaseMetrics(
        case=case,
        dice=float(dice),
        nsd=float(nsd),
        hd95_mm=float(hd95),
        gt_lesions=n_gt,
        pred_lesions=n_pr,
        tp=tp,
        fp=len(fps),
        fn=n_gt - tp,
        gt_volume_ml=n_gt_vox * voxel_ml,
        pred_volume_ml=n_pred_vox * voxel_ml,
        nsd_tolerance_mm=float(nsd_tolerance_mm),
        lesions=lesions,
        false_positives=fps,
    )


def _lesion_records(
    pred: np.ndarray, gt: np.ndarray, voxel_ml: float, offset: np.ndarray, case: str
) -> tuple[list[LesionRecord], list[LesionRecord], int, int, int]:
    """Match 26-connected GT and predicted components; returns (gt records, fp records, n_gt, n_pred, tp)."""
    gt_lab, n_gt = ndimage.label(gt, structure=_STRUCTURE)
    pr_lab, n_pr = ndimage.label(pred, structure=_STRUCTURE)
    gt_sizes = np.bincount(gt_lab.ravel(), minlength=n_gt + 1)
    pr_sizes = np.bincount(pr_lab.ravel(), minlength=n_pr + 1)

    both = (gt_lab > 0) & (pr_lab > 0)
    pairs = gt_lab[both].astype(np.int64) * (n_pr + 1) + pr_lab[both]
    uniq, counts = np.unique(pairs, return_counts=True)
    pair_g, pair_p = uniq // (n_pr + 1), uniq % (n_pr + 1)

    # Per GT lesion: voxels shared with overlapping components (components are disjoint, so sums are exact),
    # and the total size of those overlapping predicted components.
    inter_g = np.bincount(pair_g, weights=counts, minlength=n_gt + 1)
    pred_union_g = np.bincount(pair_g, weights=pr_sizes[pair_p], minlength=n_gt + 1)
    detected = inter_g > 0
    matched_pred = np.zeros(n_pr + 1, dtype=bool)
    matched_pred[pair_p] = True

    def centroids(lab: np.ndarray, idx: np.ndarray) -> list[tuple[float, float, float]]:
        if idx.size == 0:
            return []
        com = np.asarray(ndimage.center_of_mass(lab > 0, lab, idx), dtype=float).reshape(-1, 3)
        com = com + offset
        return [(float(c[2]), float(c[1]), float(c[0])) for c in com]  # (k, j, i) → (i, j, k)

    gt_idx = np.arange(1, n_gt + 1)
    records = []
    for g, c in zip(gt_idx, centroids(gt_lab, gt_idx), strict=True):
        vol = float(gt_sizes[g]) * voxel_ml
        dice = 2.0 * inter_g[g] / (gt_sizes[g] + pred_union_g[g]) if detected[g] else 0.0
        records.append(
            LesionRecord(case, "gt", int(g), int(gt_sizes[g]), vol, volume_bin(vol), bool(detected[g]), float(dice), c)
        )
    fp_idx = np.flatnonzero(~matched_pred[1:]) + 1
    fps = []
    for p, c in zip(fp_idx, centroids(pr_lab, fp_idx), strict=True):
        vol = float(pr_sizes[p]) * voxel_ml
        fps.append(LesionRecord(case, "fp", int(p), int(pr_sizes[p]), vol, volume_bin(vol), False, math.nan, c))
    return records, fps, int(n_gt), int(n_pr), int(detected[1:].sum())


# ------------------------------------------------------------------------------------------------- summary
def _stats(values: Sequence[float]) -> dict[str, float | int | None]:
    """mean / median / std / min / max / n of the finite values (None when there are none)."""
    arr = np.asarray([v for v in values if math.isfinite(v)], dtype=float)
    if arr.size == 0:
        return {"mean": None, "median": None, "std": None, "min": None, "max": None, "n": 0}
    return {
        "mean": float(arr.mean()),
        "median": float(np.median(arr)),
        "std": float(arr.std()),
        "min": float(arr.min()),
        "max": float(arr.max()),
        "n": int(arr.size),
    }


def summarise(cases: Sequence[CaseMetrics]) -> dict[str, Any]:
    """Aggregate case metrics: mean/median per metric, micro lesion detection, Dice by lesion volume.

    Args:
        cases: the per-case results of :func:`case_metrics`.

    Returns:
        A JSON-ready dict (None where a statistic has no values) with keys ``n_cases``, ``dice``, ``nsd``,
        ``hd95_mm`` (plus ``n_undefined``: cases with exactly one empty mask), ``lesion_detection``
        (``tp``, ``fp``, ``fn`` summed over all cases and micro ``precision``/``recall``/``f1``, plus the
        case-mean ``f1_case_mean``), and ``lesion_dice_by_volume`` (per :data:`VOLUME_BINS_ML` bin: ``count``,
        ``detected``, ``recall``, ``mean_dice``, ``median_dice``, ``min_ml``, ``max_ml``).
    """
    hd = [c.hd95_mm for c in cases]
    tp, fp, fn = (sum(getattr(c, k) for c in cases) for k in ("tp", "fp", "fn"))
    by_bin: dict[str, Any] = {}
    lesions = [les for c in cases for les in c.lesions]
    for name, lo, hi in VOLUME_BINS_ML:
        in_bin = [les for les in lesions if les.size_bin == name]
        st = _stats([les.dice for les in in_bin])
        n_det = sum(les.detected for les in in_bin)
        by_bin[name] = {
            "min_ml": lo,
            "max_ml": None if math.isinf(hi) else hi,
            "count": len(in_bin),
            "detected": n_det,
            "recall": n_det / len(in_bin) if in_bin else None,
            "mean_dice": st["mean"],
            "median_dice": st["median"],
        }
    hd_stats = _stats(hd)
    hd_stats["n_undefined"] = sum(math.isnan(v) for v in hd)
    return to_jsonable(
        {
            "n_cases": len(cases),
            "dice": _stats([c.dice for c in cases]),
            "nsd": _stats([c.nsd for c in cases]),
            "hd95_mm": hd_stats,
            "lesion_detection": {
                "tp": tp,
                "fp": fp,
                "fn": fn,
                "precision": ratio(tp, tp + fp),
                "recall": ratio(tp, tp + fn),
                "f1": ratio(2 * tp, 2 * tp + fp + fn),
                "f1_case_mean": float(np.mean([c.f1 for c in cases])) if cases else None,
            },
            "lesion_dice_by_volume": by_bin,
        }
    )
