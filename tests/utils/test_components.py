"""A lesion is a 26-connected component: voxels touching by a face, an edge or a corner are one lesion."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from lesionsam.utils.components import CONNECTIVITY, label_lesions, lesion_masks


def test_corner_neighbours_are_one_lesion_and_gaps_split_lesions() -> None:
    mask = np.zeros((6, 6, 6), bool)
    mask[1, 1, 1] = mask[2, 2, 2] = True  # touch by a corner only: one lesion (6- or 18-connectivity would say two)
    mask[4, 4, 4] = True  # apart
    labels, n = label_lesions(mask)
    assert n == 2 and labels[1, 1, 1] == labels[2, 2, 2] != labels[4, 4, 4]
    assert ndimage.label(mask)[1] == 3  # scipy's default (6-connectivity) would count three
    assert CONNECTIVITY == 26


def test_lesion_masks_agree_with_scipy_full_connectivity_and_drop_small_ones() -> None:
    rng = np.random.default_rng(0)
    mask = rng.random((12, 12, 12)) > 0.8
    ref, n = ndimage.label(mask, structure=ndimage.generate_binary_structure(3, 3))
    masks = lesion_masks(mask)
    assert len(masks) == n and all(np.array_equal(m, ref == i + 1) for i, m in enumerate(masks))
    big = lesion_masks(mask, min_voxels=3)
    assert [int(m.sum()) for m in big] == [int(s) for s in np.bincount(ref.ravel())[1:] if s >= 3]
    labels2d, n2d = label_lesions(np.eye(4, dtype=bool))  # 2D: the 8-neighbourhood, a diagonal is one lesion
    assert n2d == 1 and labels2d.max() == 1
