"""What a lesion is, in one place: a 26-connected component of a binary mask (voxels that share a face, an edge or
a corner belong to one lesion), as the evaluator counts lesions, the predictor keeps clicked ones, the click
simulator picks error regions and the losses box them."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

#: The lesion connectivity: 26 (full 3×3×3 neighbourhood in 3D; the full 3^n neighbourhood in n dimensions).
CONNECTIVITY = 26


def label_lesions(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Number the lesions of a boolean mask: ``(labels, n)`` with ``labels`` int32 of ``mask``'s shape, 0 outside
    any lesion and 1..n in ``scipy.ndimage.label``'s order (first voxel in C order)."""
    mask = np.asarray(mask)
    return ndimage.label(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))


def lesion_masks(mask: np.ndarray, min_voxels: int = 1) -> list[np.ndarray]:
    """The lesions of a boolean mask with at least ``min_voxels`` voxels, each as a boolean mask, in label order."""
    labels, n = label_lesions(mask)
    return [m for m in (labels == c for c in range(1, n + 1)) if int(m.sum()) >= min_voxels]


def bounding_box(mask: np.ndarray) -> tuple[slice, slice, slice] | None:
    """The (D, H, W) slices of the smallest box holding every True voxel of ``mask``; None when there is none.
    (Projections on each axis: much cheaper than ``np.nonzero`` on a large mask.)"""
    out = []
    for axis in range(3):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        if not len(hit):
            return None
        out.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(out)  # type: ignore[return-value]
