"""Surface distances between two binary 3D masks, in mm: NSD (area-weighted or voxel-count), HD95 and ASSD.

Two surfaces are used (arrays ``(D, H, W)``, spacing in the same order, in mm):

* **Area-weighted surface** (the published surface Dice of Nikolov et al., J Med Internet Res 2021,
  arXiv:1809.04430; as in DeepMind's ``surface-distance`` and MONAI's ``compute_surface_dice(...,
  use_subvoxels=True)``): surface elements sit on the voxel-corner grid, one per 2×2×2 neighbourhood that is neither
  all inside nor all outside the mask; each carries the area (mm²) of the marching-cubes surface through that
  neighbourhood at the given spacing. The 256-entry area table is taken from DeepMind's ``surface-distance`` package
  (its lookup table, :func:`surface_distance.lookup_tables.create_table_neighbour_code_to_surface_area`); codes and
  distances are computed here with NumPy and SciPy's exact Euclidean distance transform.
* **Voxel surface** (MONAI's default edges): the mask voxels that have a 6-connected background neighbour (voxels
  outside the array are background), each with weight 1. HD95 and ASSD use it, as MONAI's
  ``compute_hausdorff_distance`` and ``compute_average_surface_distance`` do; ``nsd_mode="voxel"`` gives the
  voxel-count NSD of MONAI's ``compute_surface_dice`` without sub-voxels.

Distances from each element of one surface to the nearest element of the other come from
:func:`scipy.ndimage.distance_transform_edt` with ``sampling=spacing`` (exact, in mm), so anisotropic voxels are
honoured. NSD counts an element as within tolerance when its distance is ``<= tolerance`` up to a relative
round-off of :data:`TIE_RTOL` (a distance that is exactly the tolerance, such as √(4.8² + 1.4²) = 5 mm on a
0.8 × 0.7 mm grid, is computed in floating point as 5.000000000000001).

Kept free of torch and MONAI so that ``lesionsam evaluate`` starts in well under a second of imports; the tests
check every function against MONAI.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

#: The NSD variants: ``"area"`` (default, the published surface Dice) and ``"voxel"`` (boundary-voxel count).
NSD_MODES: tuple[str, ...] = ("area", "voxel")

#: Relative slack on the NSD tolerance so that exact ties rounded up by floating point still count.
TIE_RTOL = 1e-9

#: 6-connected structuring element (face neighbours) for the voxel surface.
_FACES = ndimage.generate_binary_structure(3, 1)


@dataclass(frozen=True)
class SurfaceDistances:
    """Distances between two surfaces and the weight of each surface element.

    Attributes:
        pred_to_gt: (n_pred,) float64, mm: each prediction surface element to the nearest GT surface element.
        gt_to_pred: (n_gt,) float64, mm: each GT surface element to the nearest prediction surface element.
        pred_weights: (n_pred,) float64: element areas in mm² (area surface) or ones (voxel surface).
        gt_weights: (n_gt,) float64: the same for the GT surface.
    """

    pred_to_gt: np.ndarray
    gt_to_pred: np.ndarray
    pred_weights: np.ndarray
    gt_weights: np.ndarray


def _check(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]) -> tuple[float, float, float]:
    if pred.ndim != 3 or pred.shape != gt.shape:
        raise ValueError(f"expected two 3D (D, H, W) masks of one shape, got {pred.shape} and {gt.shape}")
    if not pred.any() or not gt.any():
        raise ValueError("surface distances need two non-empty masks (score empty masks before calling)")
    if len(spacing) != 3 or not all(float(s) > 0 for s in spacing):
        raise ValueError(f"spacing must be 3 positive mm values in (D, H, W) order, got {tuple(spacing)}")
    return (float(spacing[0]), float(spacing[1]), float(spacing[2]))


def voxel_surface(mask: np.ndarray) -> np.ndarray:
    """(D, H, W) bool: the voxels of ``mask`` with a 6-connected background neighbour (outside = background)."""
    mask = np.asarray(mask, dtype=bool)
    return mask & ~ndimage.binary_erosion(mask, structure=_FACES, border_value=0)


def _distances_to(surface: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """(same shape) float64 mm: the exact Euclidean distance of every grid point to the nearest ``surface`` point."""
    return ndimage.distance_transform_edt(~surface, sampling=spacing)


def voxel_surface_distances(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]) -> SurfaceDistances:
    """Distances between the voxel surfaces (:func:`voxel_surface`) of two non-empty (D, H, W) masks, in mm.

    Raises:
        ValueError: masks not 3D or of different shapes, an empty mask, a non-positive spacing.
    """
    pred, gt = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    sp = _check(pred, gt, spacing)
    sp_pred, sp_gt = voxel_surface(pred), voxel_surface(gt)
    d_pg = _distances_to(sp_gt, sp)[sp_pred]
    d_gp = _distances_to(sp_pred, sp)[sp_gt]
    return SurfaceDistances(d_pg, d_gp, np.ones(d_pg.size), np.ones(d_gp.size))


def _corner_codes(mask: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """(D+1, H+1, W+1) int: the 8-bit code of the 2×2×2 voxel neighbourhood around every voxel corner.

    Corner ``c`` sees the voxels ``c - 1`` and ``c`` along each axis (zero outside the array); voxel offset
    ``(a, b, e)`` in {0, 1}³ contributes ``kernel[a, b, e]`` when it is inside the mask.
    """
    padded = np.pad(mask.astype(np.int32), 1)
    d, h, w = (n + 1 for n in mask.shape)
    codes = np.zeros((d, h, w), dtype=np.int32)
    for a in (0, 1):
        for b in (0, 1):
            for e in (0, 1):
                codes += int(kernel[a, b, e]) * padded[a : a + d, b : b + h, e : e + w]
    return codes


def area_surface_distances(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]) -> SurfaceDistances:
    """Distances between the area-weighted surfaces of two non-empty (D, H, W) masks (mm; weights in mm²).

    The surface elements and their areas are those of DeepMind's ``surface-distance`` (see the module docstring);
    MONAI's ``use_subvoxels=True`` gives the same elements, areas and distances.

    Raises:
        ValueError: masks not 3D or of different shapes, an empty mask, a non-positive spacing.
    """
    from surface_distance import lookup_tables  # numpy only; the package's metrics module is not used

    pred, gt = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    sp = _check(pred, gt, spacing)
    kernel = np.asarray(lookup_tables.ENCODE_NEIGHBOURHOOD_3D_KERNEL)
    area_of_code = np.asarray(lookup_tables.create_table_neighbour_code_to_surface_area(sp), dtype=np.float64)
    code_pred, code_gt = _corner_codes(pred, kernel), _corner_codes(gt, kernel)
    full = int(kernel.sum())
    on_pred = (code_pred != 0) & (code_pred != full)
    on_gt = (code_gt != 0) & (code_gt != full)
    d_pg = _distances_to(on_gt, sp)[on_pred]
    d_gp = _distances_to(on_pred, sp)[on_gt]
    return SurfaceDistances(d_pg, d_gp, area_of_code[code_pred[on_pred]], area_of_code[code_gt[on_gt]])


def surface_distances(
    pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float], *, mode: str = "area"
) -> SurfaceDistances:
    """:func:`area_surface_distances` (``mode="area"``) or :func:`voxel_surface_distances` (``"voxel"``)."""
    if mode == "area":
        return area_surface_distances(pred, gt, spacing)
    if mode == "voxel":
        return voxel_surface_distances(pred, gt, spacing)
    raise ValueError(f"unknown NSD mode {mode!r}; choose one of {', '.join(NSD_MODES)}")


def surface_dice(d: SurfaceDistances, tolerance_mm: float) -> float:
    """Normalised surface Dice: the weight of both surfaces within ``tolerance_mm`` of the other, over the total.

    ``(Σ w_p [d_p ≤ τ] + Σ w_g [d_g ≤ τ]) / (Σ w_p + Σ w_g)``, with ``τ`` widened by :data:`TIE_RTOL`.
    """
    tol = float(tolerance_mm) * (1.0 + TIE_RTOL)
    inside = d.pred_weights[d.pred_to_gt <= tol].sum() + d.gt_weights[d.gt_to_pred <= tol].sum()
    return float(inside / (d.pred_weights.sum() + d.gt_weights.sum()))


def hausdorff95(d: SurfaceDistances) -> float:
    """HD95 in mm: the larger of the two directed 95th percentiles (linear interpolation) of the distances.

    MONAI's ``compute_hausdorff_distance(percentile=95)`` on the voxel surface; weights are not used.
    """
    return float(max(np.percentile(d.pred_to_gt, 95), np.percentile(d.gt_to_pred, 95)))


def average_symmetric_surface_distance(d: SurfaceDistances) -> float:
    """ASSD in mm: the weighted mean of the distances of both surfaces pooled together.

    ``(Σ w_p d_p + Σ w_g d_g) / (Σ w_p + Σ w_g)``; on the voxel surface (weights 1) this is MONAI's
    ``compute_average_surface_distance(symmetric=True)`` and Heimann et al.'s (2009) definition.
    """
    total = (d.pred_weights * d.pred_to_gt).sum() + (d.gt_weights * d.gt_to_pred).sum()
    return float(total / (d.pred_weights.sum() + d.gt_weights.sum()))


def surface_scores(
    pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float], *, tolerance_mm: float, nsd_mode: str = "area"
) -> tuple[float, float, float]:
    """(NSD, HD95 mm, ASSD mm) of two non-empty (D, H, W) masks; NSD on the ``nsd_mode`` surface.

    Raises:
        ValueError: see :func:`voxel_surface_distances`; an unknown ``nsd_mode``.
    """
    if nsd_mode not in NSD_MODES:
        raise ValueError(f"unknown NSD mode {nsd_mode!r}; choose one of {', '.join(NSD_MODES)}")
    voxel = voxel_surface_distances(pred, gt, spacing)
    nsd_d = voxel if nsd_mode == "voxel" else area_surface_distances(pred, gt, spacing)
    return surface_dice(nsd_d, tolerance_mm), hausdorff95(voxel), average_symmetric_surface_distance(voxel)
