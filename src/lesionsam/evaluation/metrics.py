"""Per-case segmentation metrics on binary masks with physical spacing, and their aggregation.

Conventions (also written into every ``metrics.json`` as :data:`CONVENTIONS`):

* Arrays are ``(D, H, W)`` in SimpleITK's NumPy order ``(k, j, i)``; the spacing passed to
  :func:`case_metrics` is in the **same array order** ``(sD, sH, sW)`` in mm. ``Volume.spacing`` is ITK's
  ``(i, j, k)`` order: pass ``tuple(reversed(volume.spacing))`` (or use :func:`spacing_dhw`).
* Dice = 2|P∩G| / (|P| + |G|) over voxels: :func:`dice` (:mod:`lesionsam.evaluation.dice`, the one Dice of the
  package, also the per-lesion Dice's, the click curves' and the training's).
* NSD (normalised surface Dice, Nikolov et al., J Med Internet Res 2021, arXiv:1809.04430) at a tolerance in mm, by
  default area-weighted (``nsd_mode="area"``: the published surface Dice of DeepMind's ``surface-distance``, =
  MONAI's ``compute_surface_dice(..., use_subvoxels=True)``); ``nsd_mode="voxel"`` counts boundary voxels instead
  (MONAI's default). HD95 = the larger of the two directed 95th percentiles of the distances between the boundary
  voxels (MONAI's ``compute_hausdorff_distance(percentile=95)``); ASSD = the mean of both directions' boundary-voxel
  distances pooled together (MONAI's ``compute_average_surface_distance(symmetric=True)``). All in mm with the voxel
  spacing: :mod:`lesionsam.evaluation.surface`.
* Empty masks are handled in one place, :func:`empty_case_scores`, before any distance is computed.
* Lesions, their matching (``"overlap"`` by default, or one-to-one ``"iou"``) and panoptic quality (RQ, SQ, PQ):
  :mod:`lesionsam.evaluation.lesions`. Precision = TP / (TP + FP), recall = TP / (TP + FN),
  F1 = 2TP / (2TP + FP + FN); each is 1.0 when its denominator is 0 (nothing to find and nothing wrongly found).
* Lesion volume = voxel count × voxel volume (mm³) / 1000, in ml (= cm³), binned by :func:`volume_bin` (lower bound
  inclusive: < 0.5, 0.5–1, 1–5, 5–10, ≥ 10) and coarsely (< 1, ≥ 1); older results: ``LEGACY_VOLUME_BINS_ML``.
* A **lesion-free case** has no GT lesion; :func:`summarise` reports those cases apart (how many were predicted
  empty, their false-positive components and predicted volume) beside the Dice/NSD of the cases with a lesion.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lesionsam.evaluation.dice import dice, dice_from_counts
from lesionsam.evaluation.lesions import (
    COARSE_VOLUME_BINS_ML,
    CONNECTIVITY,
    DEFAULT_IOU_THRESHOLD,
    MATCHING_RULES,
    VOLUME_BINS_ML,
    LesionRecord,
    Panoptic,
    coarse_volume_bin,
    json_float,
    lesion_match,
    volume_bin,
)
from lesionsam.evaluation.surface import NSD_MODES, surface_scores

__all__ = [
    "COARSE_VOLUME_BINS_ML",
    "CONNECTIVITY",
    "CONVENTIONS",
    "DEFAULT_IOU_THRESHOLD",
    "MATCHING_RULES",
    "NSD_MODES",
    "VOLUME_BINS_ML",
    "CaseMetrics",
    "LesionRecord",
    "case_metrics",
    "coarse_volume_bin",
    "dice",
    "empty_case_scores",
    "ratio",
    "spacing_dhw",
    "summarise",
    "to_jsonable",
    "volume_bin",
]

#: The conventions, as written into ``metrics.json`` (one documented place; see the module docstring). The
#: ``settings`` of ``metrics.json`` say which NSD mode, matching rule and IoU threshold were used.
CONVENTIONS: dict[str, str] = {
    "axes": "arrays (D, H, W) = SimpleITK (k, j, i); spacing reversed from ITK (i, j, k) to match; distances in mm",
    "dice": "2|P∩G| / (|P| + |G|) over voxels",
    "nsd": (
        "normalised surface Dice at the tolerance (mm), symmetric. nsd_mode 'area' (default): surface elements "
        "weighted by area on the voxel-corner grid (Nikolov et al.; DeepMind surface-distance; MONAI "
        "compute_surface_dice use_subvoxels=True). nsd_mode 'voxel': boundary voxels counted (6-neighbourhood "
        "edges; MONAI compute_surface_dice default)"
    ),
    "hd95": "MONAI compute_hausdorff_distance(percentile=95): max of the two directed 95th percentiles, in mm",
    "assd": (
        "average symmetric surface distance: mean of the boundary-voxel distances of both directions pooled "
        "(MONAI compute_average_surface_distance(symmetric=True)), in mm"
    ),
    "empty": (
        "GT empty and prediction empty: Dice 1, NSD 1, HD95 0, ASSD 0. Exactly one empty: Dice 0, NSD 0, HD95 and "
        "ASSD undefined (NaN in CSV, null in JSON), excluded from their mean/median and counted as n_undefined"
    ),
    "lesions": (
        "26-connected components. lesion_matching 'overlap': a GT lesion is a TP if any predicted voxel overlaps "
        "it, else FN; a predicted component overlapping no GT lesion is an FP. lesion_matching 'iou': one-to-one, "
        "pairs by decreasing IoU, matched when IoU >= lesion_iou_threshold; unmatched GT = FN, unmatched "
        "predicted = FP"
    ),
    "detection_ratios": (
        "precision TP/(TP+FP), recall TP/(TP+FN), F1 2TP/(2TP+FP+FN); 0/0 = 1.0 (nothing to find, nothing wrong). "
        "Micro = from TP/FP/FN summed over all cases"
    ),
    "lesion_dice": (
        "overlap rule: GT component vs the union of predicted components overlapping it; iou rule: vs its matched "
        "component; 0 if undetected"
    ),
    "panoptic": (
        "always one-to-one IoU matching at lesion_iou_threshold: RQ = TP/(TP+FP/2+FN/2), SQ = mean IoU of matched "
        "pairs, PQ = SQ*RQ; undefined (null) for a case without lesions in either mask, all 0 when nothing matches "
        "(as panoptica). Micro = from TP/FP/FN and IoU summed over all cases"
    ),
    "lesion_free": "cases without a GT lesion, reported apart: predicted empty, false-positive components, volume",
    "volume_bins": (
        "lesion volume = voxels × voxel volume / 1000 (ml = cm3), lower bound inclusive: <0.5, 0.5-1, 1-5, 5-10, "
        ">=10 (lesion_dice_by_volume); coarse <1, >=1 (lesion_dice_by_volume_coarse)"
    ),
}


def empty_case_scores(*, gt_empty: bool, pred_empty: bool) -> tuple[float, float, float, float] | None:
    """The (Dice, NSD, HD95 mm, ASSD mm) of a case where a mask is empty; None when both masks have voxels.

    This is the single place where empty masks are scored:

    * GT empty and prediction empty → ``(1.0, 1.0, 0.0, 0.0)``: a correct "no lesion".
    * exactly one empty → ``(0.0, 0.0, nan, nan)``: HD95 and ASSD are undefined (no surface to measure to);
      they are left out of their mean/median and counted separately by :func:`summarise`.

    Args:
        gt_empty: the ground truth has no foreground voxel.
        pred_empty: the prediction has no foreground voxel.

    Returns:
        (dice, nsd, hd95_mm, assd_mm) or None if neither mask is empty.
    """
    if gt_empty and pred_empty:
        return 1.0, 1.0, 0.0, 0.0
    if gt_empty or pred_empty:
        return 0.0, 0.0, math.nan, math.nan
    return None


def ratio(num: float, den: float) -> float:
    """``num / den`` with the 0/0 = 1.0 convention of the detection ratios (``den`` > 0 otherwise)."""
    return 1.0 if den == 0 else float(num) / float(den)


def spacing_dhw(spacing_ijk: Sequence[float]) -> tuple[float, float, float]:
    """ITK spacing ``(i, j, k)`` (e.g. ``Volume.spacing``) → array-axis spacing ``(D, H, W)`` = ``(k, j, i)``."""
    if len(spacing_ijk) != 3:
        raise ValueError(f"expected a 3D spacing (i, j, k) in mm, got {tuple(spacing_ijk)}")
    i, j, k = (float(v) for v in spacing_ijk)
    return (k, j, i)


@dataclass
class CaseMetrics:
    """The metrics of one case (see the module docstring for every convention).

    Attributes:
        case: case id ('' when not set).
        dice: voxel Dice.
        nsd: normalised surface Dice at ``nsd_tolerance_mm``.
        hd95_mm: 95th-percentile Hausdorff distance in mm; NaN when exactly one mask is empty.
        gt_lesions, pred_lesions: number of 26-connected components in GT / prediction.
        tp, fp, fn: detected GT lesions, unmatched predicted components, missed GT lesions (under the
            ``lesion_matching`` rule).
        gt_volume_ml, pred_volume_ml: foreground volumes in ml.
        nsd_tolerance_mm: the NSD tolerance used.
        assd_mm: average symmetric surface distance in mm; NaN when exactly one mask is empty.
        panoptic: one-to-one IoU matching counts (RQ, SQ, PQ), whatever the detection rule.
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
    assd_mm: float = math.nan
    panoptic: Panoptic = field(default_factory=lambda: Panoptic(0, 0, 0, 0.0))
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
            "assd_mm": self.assd_mm,
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
            "rq": self.panoptic.rq,
            "sq": self.panoptic.sq,
            "pq": self.panoptic.pq,
        }


# ------------------------------------------------------------------------------------------------- helpers
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
        return json_float(float(obj))
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


# ------------------------------------------------------------------------------------------------- per case
def check_metric_options(nsd_mode: str, lesion_matching: str, lesion_iou_threshold: float) -> None:
    """Raise ``ValueError`` naming the choices for an unknown NSD mode or lesion matching rule, or an IoU threshold
    outside (0, 1]."""
    if nsd_mode not in NSD_MODES:
        raise ValueError(f"unknown NSD mode {nsd_mode!r}; choose one of {', '.join(NSD_MODES)}")
    if lesion_matching not in MATCHING_RULES:
        raise ValueError(f"unknown lesion matching rule {lesion_matching!r}; choose one of {', '.join(MATCHING_RULES)}")
    if not 0.0 < lesion_iou_threshold <= 1.0:
        raise ValueError(f"the lesion IoU threshold must be in (0, 1], got {lesion_iou_threshold}")


def case_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing_dhw: Sequence[float],
    *,
    nsd_tolerance_mm: float = 2.0,
    nsd_mode: str = "area",
    lesion_matching: str = "overlap",
    lesion_iou_threshold: float = DEFAULT_IOU_THRESHOLD,
    case: str = "",
) -> CaseMetrics:
    """Voxel, surface and lesion-wise metrics of one case.

    Args:
        pred: (D, H, W) prediction; voxels != 0 (or True) are foreground.
        gt: (D, H, W) ground truth, same shape; voxels != 0 (or True) are foreground.
        spacing_dhw: voxel size in mm in the **array** order (D, H, W) = ITK (k, j, i); for a
            :class:`~lesionsam.data.io.Volume` use ``spacing_dhw(volume.spacing)``.
        nsd_tolerance_mm: NSD tolerance in mm (default 2 mm).
        nsd_mode: ``"area"`` (area-weighted surface Dice, default) or ``"voxel"`` (boundary-voxel count).
        lesion_matching: lesion detection rule, ``"overlap"`` (default) or ``"iou"`` (one-to-one).
        lesion_iou_threshold: IoU threshold of the ``"iou"`` rule and of panoptic quality, in (0, 1].
        case: case id stored in the result and its lesion records.

    Returns:
        A :class:`CaseMetrics` with one :class:`LesionRecord` per GT lesion and per false-positive component.

    Raises:
        ValueError: masks not 3D or of different shapes, a non-positive spacing, a negative tolerance, an unknown
            NSD mode or matching rule, an IoU threshold outside (0, 1].
    """
    check_metric_options(nsd_mode, lesion_matching, lesion_iou_threshold)
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
        dice_value = dice_from_counts(inter, n_pred_vox, n_gt_vox)
        nsd, hd95, assd = surface_scores(pred, gt, spacing, tolerance_mm=float(nsd_tolerance_mm), nsd_mode=nsd_mode)
    else:
        dice_value, nsd, hd95, assd = empty

    match = lesion_match(
        pred,
        gt,
        voxel_ml=voxel_ml,
        offset=offset,
        case=case,
        matching=lesion_matching,
        iou_threshold=float(lesion_iou_threshold),
    )
    return CaseMetrics(
        case=case,
        dice=float(dice_value),
        nsd=float(nsd),
        hd95_mm=float(hd95),
        gt_lesions=match.n_gt,
        pred_lesions=match.n_pred,
        tp=match.tp,
        fp=len(match.false_positives),
        fn=match.n_gt - match.tp,
        gt_volume_ml=n_gt_vox * voxel_ml,
        pred_volume_ml=n_pred_vox * voxel_ml,
        nsd_tolerance_mm=float(nsd_tolerance_mm),
        assd_mm=float(assd),
        panoptic=match.panoptic,
        lesions=match.lesions,
        false_positives=match.false_positives,
    )


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


def _undefined_counted(values: Sequence[float]) -> dict[str, float | int | None]:
    """:func:`_stats` of ``values`` plus ``n_undefined``: how many are NaN (left out of the statistics)."""
    st = _stats(values)
    st["n_undefined"] = sum(math.isnan(v) for v in values)
    return st


def _panoptic_summary(cases: Sequence[CaseMetrics]) -> dict[str, Any]:
    """Case means of RQ/SQ/PQ (undefined cases left out and counted) and micro RQ/SQ/PQ from summed counts."""
    total = Panoptic(0, 0, 0, 0.0)
    for c in cases:
        total = total + c.panoptic
    return {
        "rq": _undefined_counted([c.panoptic.rq for c in cases]),
        "sq": _undefined_counted([c.panoptic.sq for c in cases]),
        "pq": _undefined_counted([c.panoptic.pq for c in cases]),
        "micro": {
            "tp": total.tp,
            "fp": total.fp,
            "fn": total.fn,
            "iou_sum": total.iou_sum,
            "rq": total.rq,
            "sq": total.sq,
            "pq": total.pq,
        },
    }


def _split_by_lesion(cases: Sequence[CaseMetrics]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(cases with a GT lesion: Dice/NSD statistics; lesion-free cases: empty predictions, FP components, volume)."""
    with_lesion = [c for c in cases if c.gt_lesions > 0]
    free = [c for c in cases if c.gt_lesions == 0]
    return (
        {
            "n_cases": len(with_lesion),
            "dice": _stats([c.dice for c in with_lesion]),
            "nsd": _stats([c.nsd for c in with_lesion]),
        },
        {
            "n_cases": len(free),
            "predicted_empty": sum(c.pred_lesions == 0 for c in free),
            "false_positive_components": sum(c.fp for c in free),
            "pred_volume_ml": _stats([c.pred_volume_ml for c in free]),
        },
    )


def _by_volume(
    lesions: Sequence[LesionRecord], bins: Sequence[tuple[str, float, float]], names: Sequence[str]
) -> dict[str, Any]:
    """Per bin of ``bins`` (empty ones too): count, detected, recall, Dice; ``names``: each lesion's bin."""
    out: dict[str, Any] = {}
    for name, lo, hi in bins:
        in_bin = [les for les, b in zip(lesions, names, strict=True) if b == name]
        st = _stats([les.dice for les in in_bin])
        n_det = sum(les.detected for les in in_bin)
        out[name] = {
            "min_ml": lo,
            "max_ml": None if math.isinf(hi) else hi,
            "count": len(in_bin),
            "detected": n_det,
            "recall": n_det / len(in_bin) if in_bin else None,
            "mean_dice": st["mean"],
            "median_dice": st["median"],
        }
    return out


def summarise(cases: Sequence[CaseMetrics]) -> dict[str, Any]:
    """Aggregate case metrics: mean/median per metric, micro lesion detection, PQ, Dice by lesion volume.

    Args:
        cases: the per-case results of :func:`case_metrics`.

    Returns:
        A JSON-ready dict (None where a statistic has no values) with keys ``n_cases``, ``dice``, ``nsd``,
        ``hd95_mm`` and ``assd_mm`` (each plus ``n_undefined``: cases with exactly one empty mask),
        ``lesion_detection`` (``tp``, ``fp``, ``fn`` summed over all cases and micro ``precision``/``recall``/
        ``f1``, plus the case-mean ``f1_case_mean``), ``panoptic`` (``rq``/``sq``/``pq`` statistics over the cases
        where defined, with ``n_undefined``, and ``micro`` from summed counts), ``cases_with_lesion`` (``n_cases``,
        ``dice``, ``nsd``), ``lesion_free_cases`` (``n_cases``, ``predicted_empty``, ``false_positive_components``,
        ``pred_volume_ml``), ``lesion_dice_by_volume`` (every :data:`VOLUME_BINS_ML` bin, empty ones too:
        ``count``, ``detected``, ``recall``, ``mean_dice``, ``median_dice`` — None for an empty bin —, ``min_ml``,
        ``max_ml``; ``min_ml ≤ volume < max_ml``) and ``lesion_dice_by_volume_coarse`` (the same for the
        :data:`COARSE_VOLUME_BINS_ML` bins ``<1 cm3`` and ``>=1 cm3``).
    """
    tp, fp, fn = (sum(getattr(c, k) for c in cases) for k in ("tp", "fp", "fn"))
    lesions = [les for c in cases for les in c.lesions]
    by_bin = _by_volume(lesions, VOLUME_BINS_ML, [les.size_bin for les in lesions])
    coarse = _by_volume(lesions, COARSE_VOLUME_BINS_ML, [coarse_volume_bin(les.volume_ml) for les in lesions])
    with_lesion, lesion_free = _split_by_lesion(cases)
    return to_jsonable(
        {
            "n_cases": len(cases),
            "dice": _stats([c.dice for c in cases]),
            "nsd": _stats([c.nsd for c in cases]),
            "hd95_mm": _undefined_counted([c.hd95_mm for c in cases]),
            "assd_mm": _undefined_counted([c.assd_mm for c in cases]),
            "lesion_detection": {
                "tp": tp,
                "fp": fp,
                "fn": fn,
                "precision": ratio(tp, tp + fp),
                "recall": ratio(tp, tp + fn),
                "f1": ratio(2 * tp, 2 * tp + fp + fn),
                "f1_case_mean": float(np.mean([c.f1 for c in cases])) if cases else None,
            },
            "panoptic": _panoptic_summary(cases),
            "cases_with_lesion": with_lesion,
            "lesion_free_cases": lesion_free,
            "lesion_dice_by_volume": by_bin,
            "lesion_dice_by_volume_coarse": coarse,
        }
    )
