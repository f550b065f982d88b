"""nnU-Net-style integrity check of a data set before any training: every image readable with finite, non-constant
intensities, its label map on the same grid, label values known, the target label present."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from lesionsam.data.dataset_json import dataset_labels, read_dataset_json
from lesionsam.data.io import (
    ImageIOError,
    check_intensities,
)
from lesionsam.data.layouts import load_msd_cases

# ---------------------------------------------------------------------------------------------------------------
# Integrity check
# ---------------------------------------------------------------------------------------------------------------


def _values(array: np.ndarray) -> np.ndarray:
    """Sorted distinct values of a label array (bincount for small non-negative integers)."""
    if array.dtype.kind in "ub" or (array.dtype.kind == "i" and array.size and array.min() >= 0):
        if array.size and int(array.max()) < 65536:
            return np.flatnonzero(np.bincount(array.ravel().astype(np.int64)))
    return np.unique(array)


def verify_dataset(
    root: str | os.PathLike[str], *, target_label: int, channel: int | None = None, strict: bool = False
) -> list[str]:
    """Check an MSD / nnU-Net data set before training (like nnU-Net's ``verify_dataset_integrity``).

    Checks that every image has a label, that images (the chosen channel, or every channel) and labels are
    readable, finite, non-constant and on the same grid, that label values are integers listed in dataset.json
    (when it lists labels), and that ``target_label`` occurs in at least one case.

    Args:
        root: the data set folder.
        target_label: the lesion label value to train on (MSD liver tumour = 2, brain enhancing tumour = 3).
        channel: the image channel that will be used (multi-channel MRI); None checks all channels.
        strict: raise instead of returning the problems.

    Returns:
        One line per problem ("case X: ..."); empty if the data set is fine.

    Raises:
        FileNotFoundError: the folder layout itself is missing (see :func:`load_msd_cases`).
        ValueError: with ``strict=True`` and problems found (all listed in the message).
    """
    root = Path(root)
    cases = load_msd_cases(root, require_labels=False)
    known = dataset_labels(read_dataset_json(root))
    problems: list[str] = []
    found: set[int] = set()
    if known is not None and target_label not in known:
        problems.append(
            f"target label {target_label} is not in dataset.json's labels {known}; choose one of "
            f"{sorted(k for k in known if k != 0)}"
        )
    for case in cases:
        if case.label is None:
            problems.append(f"case {case.case_id}: no label; expected {root / 'labelsTr' / case.case_id}.nii.gz")
            continue
        try:
            image = case.read_image(channel)
            label = case.read_label()
        except (ImageIOError, FileNotFoundError) as exc:
            problems.append(f"case {case.case_id}: {exc}")
            continue
        try:
            check_intensities(image, source=f"case {case.case_id}")
        except ImageIOError as exc:
            problems.append(str(exc))
        if label.array.ndim != 3:
            problems.append(f"case {case.case_id}: the label has {label.array.shape[0]} channels; expected one")
            continue
        diff = label.geometry_difference(image)
        if diff:
            problems.append(
                f"case {case.case_id}: label and image are on different grids ({diff}); resample the label onto "
                "the image (nearest neighbour) or fix the header"
            )
        values = _values(label.array)
        if values.dtype.kind == "f" and not np.all(np.isfinite(values) & (values == np.round(values))):
            problems.append(f"case {case.case_id}: label values are not integers ({values[:8].tolist()} ...)")
            continue
        ints = {int(v) for v in values}
        found |= ints
        if known is not None and not ints <= set(known):
            problems.append(
                f"case {case.case_id}: label values {sorted(ints - set(known))} are not in dataset.json's labels "
                f"{sorted(known)}"
            )
    if cases and target_label not in found and not any("target label" in p for p in problems):
        problems.append(
            f"target label {target_label} occurs in no case (label values found: {sorted(found)}); pick the lesion "
            "label from those (MSD liver tumour = 2, brain enhancing tumour = 3)"
        )
    if strict and problems:
        raise ValueError(
            f"{root}: {len(problems)} problem(s) found:\n  "
            + "\n  ".join(problems[:20])
            + ("\n  ..." if len(problems) > 20 else "")
        )
    return problems
