"""Lesion-wise matching of two binary masks: the any-overlap rule, one-to-one matching by IoU, panoptic quality.

Lesions are the 26-connected components (:data:`CONNECTIVITY`) of each (D, H, W) mask. Two matching rules decide
which ground-truth (GT) lesions are detected (see :data:`MATCHING_RULES`):

* ``"overlap"`` (the default, and this project's original rule): a GT lesion is a true positive (TP) if any
  predicted voxel overlaps it; a predicted component overlapping no GT lesion is a false positive (FP); a predicted
  component touching two GT lesions detects both, and a GT lesion split into two components counts once. The
  per-lesion Dice compares the GT lesion with the union of the predicted components overlapping it.
* ``"iou"`` (one-to-one, as panoptica's ``NaiveThresholdMatching`` and panoptic quality): the (GT, predicted)
  component pairs that overlap are taken in order of decreasing IoU (ties by GT then predicted component number),
  and a pair is matched when neither member is matched yet and its IoU ≥ the threshold (0.5 by default). Matched
  GT lesions are TPs, unmatched GT lesions FNs, unmatched predicted components FPs (also those that overlap a GT
  lesion). The per-lesion Dice is that of the matched pair (0 if unmatched).

Panoptic quality (Kirillov et al., 2019) always uses the one-to-one IoU matching: RQ = TP / (TP + FP/2 + FN/2),
SQ = the mean IoU of the matched pairs, PQ = SQ × RQ = Σ IoU / (TP + FP/2 + FN/2). A case with no lesion in either
mask has RQ, SQ and PQ undefined (NaN); a case with lesions but no match has RQ = SQ = PQ = 0 (both as panoptica).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from lesionsam.evaluation.dice import dice_from_counts, dice_from_iou
from lesionsam.utils.components import CONNECTIVITY as LESION_CONNECTIVITY
from lesionsam.utils.components import label_lesions

#: Structuring element for connected components: full 3×3×3 neighbourhood = 26-connectivity
#: (voxels touching by a face, an edge or a corner belong to the same lesion).
CONNECTIVITY = LESION_CONNECTIVITY  # one definition: lesionsam.utils.components

#: Lesion detection rules: ``"overlap"`` (any voxel in common) and ``"iou"`` (one-to-one, IoU ≥ threshold).
MATCHING_RULES: tuple[str, ...] = ("overlap", "iou")

#: Default IoU threshold of the one-to-one matching and of panoptic quality (panoptica's default).
DEFAULT_IOU_THRESHOLD = 0.5

#: Lesion volume bins in ml (= cm³): (name, lower bound, upper bound), each ``lower ≤ v < upper`` (the lower bound
#: inclusive); see :func:`volume_bin`. The evaluator's, the ablation's, the click curves' and the report's bins.
VOLUME_BINS_ML: tuple[tuple[str, float, float], ...] = (
    ("<0.5 cm3", 0.0, 0.5),
    ("0.5-1 cm3", 0.5, 1.0),
    ("1-5 cm3", 1.0, 5.0),
    ("5-10 cm3", 5.0, 10.0),
    (">=10 cm3", 10.0, math.inf),
)

#: The coarse split of the headline (small tumours and the others), lower bound inclusive as :data:`VOLUME_BINS_ML`.
COARSE_VOLUME_BINS_ML: tuple[tuple[str, float, float], ...] = (
    ("<1 cm3", 0.0, 1.0),
    (">=1 cm3", 1.0, math.inf),
)

#: The bins of results written before the five bins (``metrics.json``, gates CSVs and packaged sweeps): ``<1 cm3``
#: for v < 1, ``1-10 cm3`` for 1 ≤ v ≤ 10 (both bounds inclusive), ``>10 cm3`` for v > 10. Only read, never written.
LEGACY_VOLUME_BINS_ML: tuple[tuple[str, float, float], ...] = (
    ("<1 cm3", 0.0, 1.0),
    ("1-10 cm3", 1.0, 10.0),
    (">10 cm3", 10.0, math.inf),
)


def bin_of(volume_ml: float, bins: tuple[tuple[str, float, float], ...] = VOLUME_BINS_ML) -> str:
    """The name of the bin ``lower ≤ volume_ml < upper`` of ``bins`` (contiguous, from 0 to infinity).

    Raises:
        ValueError: ``volume_ml`` negative, infinite or NaN.
    """
    v = float(volume_ml)
    if not 0.0 <= v < math.inf:
        raise ValueError(f"a lesion volume must be a finite number >= 0 ml, got {volume_ml!r}")
    return next(name for name, lo, hi in bins if lo <= v < hi)


def volume_bin(volume_ml: float) -> str:
    """The name of the :data:`VOLUME_BINS_ML` bin of a lesion of ``volume_ml`` ml (cm³); lower bound inclusive.

    Bins: ``<0.5 cm3`` for v < 0.5, ``0.5-1 cm3`` for 0.5 ≤ v < 1, ``1-5 cm3`` for 1 ≤ v < 5, ``5-10 cm3`` for
    5 ≤ v < 10, ``>=10 cm3`` for v ≥ 10 (a lesion of exactly 0.5, 1, 5 or 10 cm³ goes to the bin above).

    Raises:
        ValueError: ``volume_ml`` negative, infinite or NaN.
    """
    return bin_of(volume_ml, VOLUME_BINS_ML)


def coarse_volume_bin(volume_ml: float) -> str:
    """The :data:`COARSE_VOLUME_BINS_ML` bin: ``<1 cm3`` for v < 1, ``>=1 cm3`` for v ≥ 1."""
    return bin_of(volume_ml, COARSE_VOLUME_BINS_ML)


def bins_named(names: Iterable[str]) -> tuple[tuple[str, float, float], ...]:
    """The bins that the size-bin ``names`` read from a file come from: :data:`LEGACY_VOLUME_BINS_ML` for a file
    written before the five bins (one of its names and none of :data:`VOLUME_BINS_ML`), else :data:`VOLUME_BINS_ML`."""
    names = set(names)
    current = {n for n, _, _ in VOLUME_BINS_ML}
    legacy = {n for n, _, _ in LEGACY_VOLUME_BINS_ML}
    return LEGACY_VOLUME_BINS_ML if names & legacy and not names & current else VOLUME_BINS_ML


def json_float(x: float) -> float | None:
    """``x`` as a float, or None when it is NaN or infinite (strict JSON)."""
    x = float(x)
    return None if math.isnan(x) or math.isinf(x) else x


@dataclass
class LesionRecord:
    """One connected component: a ground-truth lesion (``kind='gt'``) or a false-positive prediction (``'fp'``).

    Attributes:
        case: case id.
        kind: ``'gt'`` for a ground-truth lesion, ``'fp'`` for a predicted component the matching rule leaves
            unmatched.
        index: component number (1-based, scipy's label order) within its mask.
        voxels: voxel count of the component.
        volume_ml: voxels × voxel volume / 1000 (ml = cm³).
        size_bin: :func:`volume_bin` of ``volume_ml``.
        detected: for ``'gt'``, whether the matching rule detects it; always False for ``'fp'``.
        dice: for ``'gt'``, Dice against its matched prediction under the rule (0 if undetected); NaN for ``'fp'``.
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
            "volume_ml": json_float(self.volume_ml),
            "size_bin": self.size_bin,
            "detected": self.detected,
            "dice": json_float(self.dice),
            "centroid_ijk": [round(float(v), 2) for v in self.centroid_ijk],
        }


@dataclass(frozen=True)
class Panoptic:
    """One-to-one IoU matching counts of a case (or summed over cases): the inputs of RQ, SQ and PQ.

    Attributes:
        tp: matched pairs; fp: unmatched predicted components; fn: unmatched GT lesions.
        iou_sum: the sum of the matched pairs' IoU.
    """

    tp: int
    fp: int
    fn: int
    iou_sum: float

    @property
    def rq(self) -> float:
        """Recognition quality TP / (TP + FP/2 + FN/2); NaN when there is no lesion in either mask."""
        den = self.tp + 0.5 * self.fp + 0.5 * self.fn
        return math.nan if den == 0 else self.tp / den

    @property
    def sq(self) -> float:
        """Segmentation quality: mean IoU of the matched pairs; 0 when nothing is matched, NaN with no lesion."""
        if self.tp == 0:
            return math.nan if self.fp + self.fn == 0 else 0.0
        return self.iou_sum / self.tp

    @property
    def pq(self) -> float:
        """Panoptic quality Σ IoU / (TP + FP/2 + FN/2) = SQ × RQ (0 when nothing is matched); NaN with no lesion."""
        den = self.tp + 0.5 * self.fp + 0.5 * self.fn
        return math.nan if den == 0 else self.iou_sum / den

    def __add__(self, other: Panoptic) -> Panoptic:
        return Panoptic(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.iou_sum + other.iou_sum)


@dataclass(frozen=True)
class LesionMatch:
    """The lesion-wise result of one case.

    Attributes:
        lesions: one record per GT lesion; false_positives: one per unmatched predicted component.
        n_gt, n_pred: component counts; tp: detected GT lesions under the chosen rule.
        panoptic: the one-to-one IoU matching counts (:class:`Panoptic`), whatever the detection rule.
    """

    lesions: list[LesionRecord]
    false_positives: list[LesionRecord]
    n_gt: int
    n_pred: int
    tp: int
    panoptic: Panoptic


def match_by_iou(
    pair_g: np.ndarray, pair_p: np.ndarray, inter: np.ndarray, gt_sizes: np.ndarray, pr_sizes: np.ndarray, thr: float
) -> list[tuple[int, int, float]]:
    """Greedy one-to-one matching by decreasing IoU of overlapping component pairs.

    Args:
        pair_g, pair_p: (n_pairs,) int component numbers of the overlapping (GT, predicted) pairs.
        inter: (n_pairs,) voxels in common; gt_sizes, pr_sizes: voxel counts indexed by component number.
        thr: IoU threshold in (0, 1]; a pair is matched when IoU ≥ ``thr``.

    Returns:
        The matched (GT component, predicted component, IoU) triples.
    """
    iou = inter / (gt_sizes[pair_g] + pr_sizes[pair_p] - inter)
    order = np.lexsort((pair_p, pair_g, -iou))  # IoU descending, then GT number, then predicted number
    used_g: set[int] = set()
    used_p: set[int] = set()
    out = []
    for i in order:
        if iou[i] < thr:
            break
        g, p = int(pair_g[i]), int(pair_p[i])
        if g in used_g or p in used_p:
            continue
        used_g.add(g)
        used_p.add(p)
        out.append((g, p, float(iou[i])))
    return out


def lesion_match(
    pred: np.ndarray,
    gt: np.ndarray,
    *,
    voxel_ml: float,
    offset: np.ndarray,
    case: str,
    matching: str = "overlap",
    iou_threshold: float = DEFAULT_IOU_THRESHOLD,
) -> LesionMatch:
    """Label the 26-connected components of two (D, H, W) bool masks and match them (module docstring).

    Args:
        pred, gt: (D, H, W) bool masks (possibly a crop of the case).
        voxel_ml: the volume of one voxel in ml.
        offset: (3,) the crop's start in the full array (D, H, W), added to the centroids.
        case: case id stored in the records.
        matching: detection rule, one of :data:`MATCHING_RULES`.
        iou_threshold: IoU threshold of the ``"iou"`` rule and of panoptic quality, in (0, 1].

    Raises:
        ValueError: an unknown rule or a threshold outside (0, 1].
    """
    if matching not in MATCHING_RULES:
        raise ValueError(f"unknown lesion matching rule {matching!r}; choose one of {', '.join(MATCHING_RULES)}")
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"the lesion IoU threshold must be in (0, 1], got {iou_threshold}")
    gt_lab, n_gt = label_lesions(gt)
    pr_lab, n_pr = label_lesions(pred)
    gt_sizes = np.bincount(gt_lab.ravel(), minlength=n_gt + 1)
    pr_sizes = np.bincount(pr_lab.ravel(), minlength=n_pr + 1)

    both = (gt_lab > 0) & (pr_lab > 0)
    pairs = gt_lab[both].astype(np.int64) * (n_pr + 1) + pr_lab[both]
    uniq, counts = np.unique(pairs, return_counts=True)
    pair_g, pair_p = uniq // (n_pr + 1), uniq % (n_pr + 1)

    iou_pairs = match_by_iou(pair_g, pair_p, counts.astype(float), gt_sizes, pr_sizes, iou_threshold)
    panoptic = Panoptic(len(iou_pairs), n_pr - len(iou_pairs), n_gt - len(iou_pairs), sum(t[2] for t in iou_pairs))

    detected = np.zeros(n_gt + 1, dtype=bool)
    dice = np.zeros(n_gt + 1)
    matched_pred = np.zeros(n_pr + 1, dtype=bool)
    if matching == "overlap":
        # Per GT lesion: voxels shared with overlapping components (disjoint, so sums are exact) and their size.
        inter_g = np.bincount(pair_g, weights=counts, minlength=n_gt + 1)
        pred_union_g = np.bincount(pair_g, weights=pr_sizes[pair_p], minlength=n_gt + 1)
        detected = inter_g > 0
        dice[detected] = dice_from_counts(inter_g[detected], pred_union_g[detected], gt_sizes[detected])
        matched_pred[pair_p] = True
    else:
        for g, p, iou in iou_pairs:
            detected[g], matched_pred[p] = True, True
            dice[g] = dice_from_iou(iou)
    detected[0] = False

    def centroids(lab: np.ndarray, idx: np.ndarray) -> list[tuple[float, float, float]]:
        if idx.size == 0:
            return []
        com = np.asarray(ndimage.center_of_mass(lab > 0, lab, idx), dtype=float).reshape(-1, 3) + offset
        return [(float(c[2]), float(c[1]), float(c[0])) for c in com]  # (k, j, i) → (i, j, k)

    gt_idx = np.arange(1, n_gt + 1)
    records = []
    for g, c in zip(gt_idx, centroids(gt_lab, gt_idx), strict=True):
        vol = float(gt_sizes[g]) * voxel_ml
        records.append(
            LesionRecord(
                case, "gt", int(g), int(gt_sizes[g]), vol, volume_bin(vol), bool(detected[g]), float(dice[g]), c
            )
        )
    fp_idx = np.flatnonzero(~matched_pred[1:]) + 1
    fps = []
    for p, c in zip(fp_idx, centroids(pr_lab, fp_idx), strict=True):
        vol = float(pr_sizes[p]) * voxel_ml
        fps.append(LesionRecord(case, "fp", int(p), int(pr_sizes[p]), vol, volume_bin(vol), False, math.nan, c))
    return LesionMatch(records, fps, int(n_gt), int(n_pr), int(detected.sum()), panoptic)
