"""The box-vs-click study: the prompts it derives from a lesion mask, and one run on a tiny synthetic set."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from lesionsam.benchmarking.box_study import VARIANTS, box_vs_click, lesion_prompts
from lesionsam.data.io import read_image
from lesionsam.data.synthetic import LESION, write_synthetic_dataset
from lesionsam.inference.boxes import Box
from lesionsam.inference.predictor import Predictor


def test_lesion_prompts_are_the_centre_click_and_the_bounding_boxes() -> None:
    mask = np.zeros((10, 20, 30), bool)  # (D, H, W) = (k, j, i)
    mask[2:7, 4:15, 10:13] = True  # a block: k 2..6, j 4..14, i 10..12
    mask[4, 9, 20] = True  # a voxel apart on the centre slice, 26-connected to nothing (still this "lesion")
    p = lesion_prompts(mask)
    assert p["click"] == (11, 9, 4)  # the interior-most voxel (i, j, k)
    assert p["box3d"] == Box((10, 4, 2), (20, 14, 6))
    assert p["box2d"] == Box((10, 4, 4), (20, 14, 4))  # on the click's slice k = 4
    one = np.zeros((10, 20, 30), bool)
    one[9, 19, 29] = True  # a single voxel in the last corner: sides widened inwards to two voxels
    q = lesion_prompts(one)
    assert q["box3d"] == Box((28, 18, 8), (29, 19, 9)) and q["box2d"] == Box((28, 18, 9), (29, 19, 9))


def test_box_vs_click_scores_every_lesion_with_every_prompt(tmp_path: Path) -> None:
    root = write_synthetic_dataset(tmp_path / "ds", cases=1, size=32, seed=5)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pred = Predictor.from_checkpoint(None, preset="tiny", max_windows=1)
    result = box_vs_click(pred, root)
    label = read_image(next((root / "labelsTr").iterdir())).array == LESION
    n = ndimage.label(label, structure=np.ones((3, 3, 3), bool))[1]
    assert len(result["lesions"]) == n > 0
    assert sum(r["voxels"] for r in result["lesions"]) == label.sum()
    for r in result["lesions"]:
        assert all(0.0 <= r[v] <= 1.0 for v in VARIANTS)
    assert set(result["summary"]) == set(VARIANTS)
