"""Which label value is the lesion, when the user did not say (``predict --clicks-from`` and ``evaluate``).

The rule, in order:

1. ``--label N`` given: N.
2. A ``dataset.json`` beside the label folder (``<labels>/../dataset.json`` for a folder such as ``labelsTr``,
   also ``<labels>/dataset.json``; for one label file, the same two places around its folder): the one label
   whose name contains a lesion word (tumour, tumor, lesion, cancer, carcinoma, metastasis, nodule, mass,
   neoplasm; case-insensitive). Several such labels (MSD brain: non-enhancing and enhancing tumour) or none:
   ``--label`` is required, and the message lists the labels.
3. The checkpoint's training config, ``data.target_label`` (a lesionsam checkpoint trained on one target).
4. ``evaluate``: the label maps themselves, when every one holds at most one foreground value and it is the same
   (binary masks: 1) — nothing is ambiguous (:func:`single_foreground_value`).
5. Otherwise ``--label`` is required.

MSD liver names 1 "liver" and 2 "cancer", so the old default (1) scored the organ; this rule picks 2.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from lesionsam.data.dataset_json import dataset_labels, read_dataset_json

LESION_WORDS = ("tumour", "tumor", "lesion", "cancer", "carcinoma", "metasta", "nodule", "mass", "neoplasm")
_WORD = re.compile("|".join(LESION_WORDS), re.IGNORECASE)


def _dataset_json_for(labels: Path) -> Path | None:
    folder = labels if labels.is_dir() else labels.parent
    for cand in (folder / "dataset.json", folder.parent / "dataset.json"):
        if cand.is_file():
            return cand
    return None


def lesion_label_from_dataset_json(path: Path) -> tuple[int, str]:
    """The lesion label of a dataset.json by the rule above: ``(value, name)``; ``ValueError`` when not one."""
    names = dataset_labels(read_dataset_json(path.parent)) or {}
    hits = {v: n for v, n in names.items() if v != 0 and _WORD.search(n)}
    listed = ", ".join(f"{v} {n!r}" for v, n in sorted(names.items())) or "none"
    if len(hits) != 1:
        which = "several lesion labels" if hits else "no label named like a lesion (tumour, lesion, cancer...)"
        raise ValueError(f"{path} has {which} (labels: {listed}): say which value is the lesion with --label N")
    value, name = next(iter(hits.items()))
    return value, name


def resolve_lesion_label(
    label: int | None,
    labels: str | os.PathLike[str] | None,
    *,
    checkpoint_label: Callable[[], int | None] | None = None,
    single_value: Callable[[], int | None] | None = None,
) -> tuple[int, str]:
    """The lesion label value and a phrase saying where it came from (for a one-line note to the user).

    Args:
        label: the user's ``--label`` (None: not given).
        labels: the label map file or folder the value applies to (its dataset.json is looked for).
        checkpoint_label: called if no dataset.json decides: the checkpoint's ``data.target_label`` or None.
        single_value: called last: the one foreground value of the label maps, or None
            (:func:`single_foreground_value`).

    Raises:
        ValueError: no rule applies (the message asks for ``--label``).
    """
    if label is not None:
        return int(label), "--label"
    if labels is not None:
        meta = _dataset_json_for(Path(labels))
        if meta is not None:
            value, name = lesion_label_from_dataset_json(meta)
            return value, f"{name!r} in {meta}"
    if checkpoint_label is not None:
        value = checkpoint_label()
        if value is not None:
            return int(value), "the checkpoint's training config (data.target_label)"
    if single_value is not None:
        value = single_value()
        if value is not None:
            return int(value), "the only foreground value of the label maps"
    where = f" beside {labels}" if labels is not None else ""
    several = " and the label maps hold several foreground values" if single_value is not None else ""
    raise ValueError(
        f"no dataset.json{where} names the lesion label{several}: give --label N (the lesion's value in the label map; "
        "MSD liver tumour = 2, MSD brain enhancing tumour = 3)"
    )


def single_foreground_value(files: Sequence[str | os.PathLike[str]]) -> int | None:
    """The one non-zero value of the label maps ``files`` when each holds no other non-zero value and all agree
    (binary masks: 1); None when a file holds several values or two files differ (then ``--label`` is needed)."""
    import numpy as np
    import SimpleITK as sitk

    found: set[int] = set()
    for f in files:
        values = np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(f))))
        found.update(int(v) for v in values if v != 0)
        if len(found) > 1:
            return None
    return next(iter(found)) if found else None
