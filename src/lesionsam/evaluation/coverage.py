"""Which share of each lesion class a set of predicted masks covers: whether a text prompt selects its class."""

from __future__ import annotations

import os
from collections.abc import Sequence

from lesionsam.data.io import read_image
from lesionsam.evaluation.evaluate import pair_cases


def class_coverage(
    pred_dir: str | os.PathLike[str], labels_dir: str | os.PathLike[str], values: Sequence[int]
) -> dict[int, float]:
    """Share of each class's voxels (pooled over the cases) that the predicted masks (non-zero voxels) cover.

    Whether a text selects its class, voxel by voxel: a selective "liver cyst" mask covers most cyst voxels and
    few tumour voxels. Cases are paired by file name as :func:`lesionsam.evaluation.evaluate.pair_cases` does;
    a class absent from every case gets NaN.
    """
    hits = dict.fromkeys(values, 0)
    totals = dict.fromkeys(values, 0)
    pairs, _, _ = pair_cases(pred_dir, labels_dir)
    for pair in pairs:
        pred = read_image(pair.pred).array != 0
        label = read_image(pair.gt).array
        if pred.shape != label.shape:
            raise ValueError(f"case {pair.case}: prediction {pred.shape} and label {label.shape} differ in shape")
        for v in values:
            cls = label == v
            totals[v] += int(cls.sum())
            hits[v] += int((cls & pred).sum())
    return {v: hits[v] / totals[v] if totals[v] else float("nan") for v in values}
