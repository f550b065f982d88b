"""Keeping the clicked lesion: components a positive click touches, 26-connected, within a radius."""

from __future__ import annotations

import numpy as np
import pytest

from lesionsam.inference.postprocess import keep_clicked_components
from lesionsam.utils.components import label_lesions


def test_keeps_only_the_clicked_components() -> None:
    mask = np.zeros((20, 20, 20), bool)
    mask[2:5, 2:5, 2:5] = True  # clicked
    mask[5, 5, 5] = True  # joined to it at a corner only: 26-connected, same lesion
    mask[10:13, 10:13, 10:13] = True  # clicked from 2 voxels outside
    mask[16:19, 2:5, 2:5] = True  # not clicked
    clicks = np.array([[3.2, 2.8, 3.0], [10.0, 10.0, 8.0]])
    got = keep_clicked_components(mask, clicks, radius=2)
    want = mask.copy()
    want[16:19, 2:5, 2:5] = False
    np.testing.assert_array_equal(got, want)
    # One voxel further than the radius: that lesion is not selected.
    got = keep_clicked_components(mask, np.array([[10.0, 10.0, 7.0]]), radius=2)
    assert not got.any()


def test_empty_mask_and_bad_radius() -> None:
    assert not keep_clicked_components(np.zeros((4, 4, 4), bool), np.zeros((1, 3))).any()
    with pytest.raises(ValueError, match="radius"):
        keep_clicked_components(np.ones((4, 4, 4), bool), np.zeros((1, 3)), radius=-1)


def test_the_clicked_components_equal_those_of_the_whole_mask_labelled() -> None:
    # The components are labelled on the box of the mask only; reference: label the whole mask, keep the labels found
    # within the radius of each click (clicks inside, beside and far outside the box, and outside the array).
    for seed in range(20):
        rng = np.random.default_rng(seed)
        mask = np.zeros((24, 20, 16), bool)
        for _ in range(rng.integers(1, 5)):
            lo = rng.integers(0, [22, 18, 14])
            mask[tuple(slice(a, a + b) for a, b in zip(lo, rng.integers(1, 5, 3), strict=True))] = True
        clicks = rng.uniform(-3, [27, 23, 19], size=(3, 3))
        comps, _ = label_lesions(mask)
        keep = set()
        for point in clicks:
            c = np.clip(np.floor(point + 0.5).astype(int), 0, np.array(mask.shape) - 1)
            lo, hi = np.maximum(c - 2, 0), np.minimum(c + 3, mask.shape)
            keep |= {int(v) for v in np.unique(comps[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]) if v}
        np.testing.assert_array_equal(keep_clicked_components(mask, clicks, radius=2), np.isin(comps, sorted(keep)))
