"""``lesionsam evaluate``: score a folder of predictions against ground truth (CSV + JSON + printed table)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from lesionsam.data.labels import resolve_lesion_label, single_foreground_value
from lesionsam.evaluation.evaluate import EvaluationResult, _image_files, evaluate_folder
from lesionsam.utils.paths import check_can_create, refuse_inputs_as_outputs

#: Name of the default output folder, created inside the prediction folder. Only image files directly inside the
#: prediction folder are read as predictions, so this folder (and the CSV/JSON in it) is never scored.
DEFAULT_OUT_NAME = "metrics"


def default_out_dir(pred_dir: str | os.PathLike[str]) -> Path:
    """Where :func:`evaluate` writes when no ``out`` is given: ``<pred_dir>/metrics``."""
    return Path(pred_dir) / DEFAULT_OUT_NAME


def evaluate(
    pred_dir: str | os.PathLike[str],
    gt_dir: str | os.PathLike[str],
    *,
    label: int | None = None,
    pred_label: int | None = None,
    out: str | os.PathLike[str] | None = None,
    nsd_tolerance_mm: float = 2.0,
    nsd_mode: str = "area",
    lesion_matching: str = "overlap",
    lesion_iou_threshold: float = 0.5,
    allow_missing: bool = False,
    progress: bool = True,
    announce: Callable[[str], None] | None = None,
) -> EvaluationResult:
    """Evaluate predictions and write ``metrics.csv`` and ``metrics.json``.

    Args:
        pred_dir: folder of predicted masks (value > 0 = lesion unless ``pred_label`` is given).
        gt_dir: folder of ground-truth label maps (e.g. an MSD ``labelsTr``).
        label: ground-truth target value (MSD liver tumour = 2, MSD brain enhancing tumour = 3); None takes the
            lesion label named in the dataset.json beside ``gt_dir`` (:mod:`lesionsam.data.labels`), else fails.
        pred_label: only this prediction value is foreground (default: any value > 0).
        out: output folder (default :func:`default_out_dir`: ``<pred_dir>/metrics``).
        nsd_tolerance_mm: normalised-surface-Dice tolerance in mm.
        nsd_mode: ``"area"`` (area-weighted surface Dice, the published definition; default) or ``"voxel"``
            (boundary voxels counted).
        lesion_matching: ``"overlap"`` (any voxel in common; default) or ``"iou"`` (one-to-one by IoU).
        lesion_iou_threshold: IoU threshold of the ``"iou"`` rule and of panoptic quality.
        allow_missing: skip ground-truth cases without prediction instead of failing.
        progress: show a progress bar with ETA.
        announce: called with a one-line note when ``label`` was not given (which label is used, and from where).

    Returns:
        The :class:`~lesionsam.evaluation.evaluate.EvaluationResult`; ``csv_path``/``json_path`` say where the
        files went.

    Raises:
        FileNotFoundError, ValueError: see :func:`~lesionsam.evaluation.evaluate.evaluate_folder`; also an output
            folder that cannot be created (checked before any work, nothing created) or whose CSV/JSON would
            replace an input.
    """
    out_dir = default_out_dir(pred_dir) if out is None else Path(out)
    reads = [("a prediction", p) for p in _image_files(Path(pred_dir), "prediction").values()]
    reads += [("a ground truth", p) for p in _image_files(Path(gt_dir), "ground-truth").values()]
    check_can_create(out_dir, what="--out", folder=True)
    refuse_inputs_as_outputs([("--out", out_dir / "metrics.csv"), ("--out", out_dir / "metrics.json")], reads)
    if label is None:
        gt_files = list(_image_files(Path(gt_dir), "ground-truth").values())
        label, where = resolve_lesion_label(None, gt_dir, single_value=lambda: single_foreground_value(gt_files))
        if announce is not None:
            announce(f"lesion label {label} (from {where}; --label N to choose)")
    return evaluate_folder(
        pred_dir,
        gt_dir,
        label=label,
        pred_label=pred_label,
        out_dir=out_dir,
        nsd_tolerance_mm=nsd_tolerance_mm,
        nsd_mode=nsd_mode,
        lesion_matching=lesion_matching,
        lesion_iou_threshold=lesion_iou_threshold,
        allow_missing=allow_missing,
        progress=progress,
    )
