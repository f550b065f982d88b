"""Post-processing of click-prompted masks: keep the lesion that was clicked.

A click says "this lesion". A promptable model (SAM-Med3D and its fine-tuned variants) also returns whatever else in
its window looks like a lesion, and every window grown from a mask that touches a crop face adds more of it: spread
over a volume these fragments are false-positive lesions. :func:`keep_clicked_components` keeps the 26-connected
components of the thresholded mask that a positive click touches (within ``radius`` voxels, so a centre click just
outside an irregular lesion's mask still selects it) and drops the rest. ``Predictor(clicked_only=False)``
(``lesionsam predict --all-components``) keeps everything.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from lesionsam.utils.components import bounding_box, label_lesions

#: How far (voxels of the model grid, per axis) from a positive click a component may start and still be the
#: clicked lesion.
CLICK_RADIUS = 2


def keep_clicked_components(mask: np.ndarray, clicks: np.ndarray, *, radius: int = CLICK_RADIUS) -> np.ndarray:
    """The components of ``mask`` that some click touches.

    Args:
        mask: (D, H, W) bool.
        clicks: (N, 3) positive click positions in the same (d, h, w) voxel indices (float; rounded).
        radius: a component counts as clicked when one of its voxels lies within this Chebyshev distance
            (voxels) of a click.

    Returns:
        (D, H, W) bool: ``mask`` restricted to the clicked components (empty when no click touches any).
    """
    if radius < 0:
        raise ValueError(f"radius must be >= 0 voxels, got {radius}")
    box = bounding_box(mask)
    if box is None:
        return mask.astype(bool, copy=True)
    # Components are labelled on the box of the mask's voxels only (the same components, far fewer voxels).
    comps, _ = label_lesions(mask[box])
    origin = np.array([s.start for s in box])
    keep: set[int] = set()
    shape = np.asarray(mask.shape)
    for point in np.asarray(clicks, dtype=float).reshape(-1, 3):
        c = np.clip(np.floor(point + 0.5).astype(int), 0, shape - 1)
        lo = np.maximum(np.maximum(c - radius, 0) - origin, 0)
        hi = np.minimum(np.minimum(c + radius + 1, shape) - origin, comps.shape)
        if np.any(hi <= lo):
            continue
        near = comps[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        keep.update(int(v) for v in np.unique(near) if v)
    out = np.zeros(mask.shape, dtype=bool)
    if keep:
        out[box] = np.isin(comps, sorted(keep))
    return out


def drop_small_components(mask: np.ndarray, spacing: Sequence[float], min_mm3: float) -> np.ndarray:
    """``mask`` (D, H, W bool) without its 26-connected components smaller than ``min_mm3`` (voxel volume from
    ``spacing``, mm); ``min_mm3 <= 0`` keeps everything."""
    if min_mm3 < 0:
        raise ValueError(f"the smallest lesion volume must be >= 0 mm³, got {min_mm3}")
    if min_mm3 == 0 or not mask.any():
        return mask
    comps, n = label_lesions(mask)
    voxels = np.bincount(comps.ravel(), minlength=n + 1)
    keep = voxels * float(np.prod(spacing)) >= min_mm3
    keep[0] = False
    return keep[comps]


def components_by_size(mask: np.ndarray) -> np.ndarray:
    """26-connected components of a boolean (D, H, W) mask, numbered 1.. by decreasing size (uint16)."""
    comps, n = label_lesions(mask)
    if n == 0:
        return comps.astype(np.uint16)
    sizes = ndimage.sum_labels(np.ones_like(comps), comps, index=np.arange(1, n + 1))
    rank = np.zeros(n + 1, dtype=np.uint16)
    rank[1 + np.argsort(-sizes, kind="stable")] = np.arange(1, n + 1, dtype=np.uint16)
    return rank[comps]
