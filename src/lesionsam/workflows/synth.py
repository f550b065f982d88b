"""``lesionsam synth``: write a synthetic CT data set in the MSD layout (see :mod:`lesionsam.data.synthetic`)."""

from __future__ import annotations

from pathlib import Path

from lesionsam.data.synthetic import write_synthetic_dataset


def synth(
    out: str | Path,
    *,
    cases: int,
    seed: int = 0,
    size: int = 96,
    fmt: str = "nii.gz",
    progress: bool = True,
    lesion_classes: int = 1,
) -> Path:
    """Write ``cases`` synthetic CT-like cases with their labels and ``dataset.json`` under ``out``.

    Args:
        out: the data set's folder (created if missing; must not hold case files of another data set).
        cases: number of cases (>= 1); with 2 or more, the last case has no lesion (of either class).
        seed: data set seed (>= 0); the same arguments write identical volumes.
        size: edge length of the cubic volumes in voxels (32..512).
        fmt: file format, "nii.gz" or "nrrd".
        progress: show a progress bar with an ETA (stderr).
        lesion_classes: 1 (tumours, label 2; the default, output unchanged) or 2 (also 0..3 round, water-like
            cysts per case, label 4 "cyst", with their volumes under ``cyst_volumes_mm3`` in ``dataset.json``).

    Returns:
        ``out`` as a Path; ``out / "dataset.json"`` lists the cases and each lesion's volume in mm³.

    Raises:
        ValueError: a bad argument or an unusable output folder (the message says which and why).
    """
    from lesionsam.utils.paths import check_can_create

    check_can_create(out, what="the data set folder", folder=True)  # before anything is created
    return write_synthetic_dataset(
        out, cases=cases, seed=seed, size=size, fmt=fmt, progress=progress, lesion_classes=lesion_classes
    )
