"""Keeping the clicked lesion: components a positive click touches, 26-connected, within a radius."""

from __future__ import annotations

import numpy as np
import pytest

from lesionsam.inference.postprocess import keep_clicked_components


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
