"""Evaluate a folder of predicted masks against a folder of ground-truth label maps.

Files are paired by case id = file name minus its image ending (``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha``, ...;
see :data:`lesionsam.data.io.IMAGE_SUFFIXES`). A prediction may also carry a ``_pred`` suffix or nnU-Net's
``_0000`` channel suffix (``case_0000.nii.gz``, ``case_pred.nii.gz`` → ``case``); an exact name wins. Only image
files directly inside each folder are read: sub-folders (such as a ``metrics/`` output folder), hidden files and
other files are skipped.

Foreground: ground truth ``gt == label``; prediction ``pred > 0`` (a prediction may hold one value per lesion)
or ``pred == pred_label`` when given. Metrics and their conventions: :mod:`lesionsam.evaluation.metrics`.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lesionsam.data.io import IMAGE_SUFFIXES, Volume, case_id, is_image_path, read_image
from lesionsam.evaluation.metrics import (
    COARSE_VOLUME_BINS_ML,
    CONNECTIVITY,
    CONVENTIONS,
    DEFAULT_IOU_THRESHOLD,
    VOLUME_BINS_ML,
    CaseMetrics,
    case_metrics,
    check_metric_options,
    spacing_dhw,
    summarise,
    to_jsonable,
)
from lesionsam.utils.dataclass_io import atomic_write_bytes

logger = logging.getLogger(__name__)

#: Suffixes stripped from a prediction's case id when the exact id has no ground truth (tried in any order).
PREDICTION_SUFFIXES = ("_pred", "_0000")

#: Columns of ``metrics.csv`` (one row per case).
CSV_COLUMNS = (
    "case",
    "dice",
    "nsd",
    "hd95_mm",
    "assd_mm",
    "gt_lesions",
    "pred_lesions",
    "tp",
    "fp",
    "fn",
    "gt_volume_ml",
    "pred_volume_ml",
    "rq",
    "sq",
    "pq",
)

#: How the printed table names each NSD mode.
_NSD_TEXT = {"area": "surface elements weighted by area", "voxel": "boundary voxels counted"}

#: How many case ids an error message lists before "... and N more".
_LIST_FIRST = 5


@dataclass(frozen=True)
class CasePair:
    """A prediction file and its ground-truth file."""

    case: str
    pred: Path
    gt: Path


def _candidate_ids(stem: str) -> list[str]:
    """``stem`` then the ids left by stripping :data:`PREDICTION_SUFFIXES` (repeatedly, in any order)."""
    out, todo = [stem], [stem]
    while todo:
        s = todo.pop(0)
        for suffix in PREDICTION_SUFFIXES:
            if s.endswith(suffix) and len(s) > len(suffix) and s[: -len(suffix)] not in out:
                out.append(s[: -len(suffix)])
                todo.append(s[: -len(suffix)])
    return out


def _first(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_LIST_FIRST])
    return shown + (f" ... and {len(items) - _LIST_FIRST} more" if len(items) > _LIST_FIRST else "")


def _image_files(folder: Path, what: str) -> dict[str, Path]:
    """Case id → image file directly in ``folder``; errors for a missing folder, no images or duplicate ids."""
    if not folder.exists():
        raise FileNotFoundError(f"{what} folder not found: {folder}")
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} folder expected, but {folder} is a file")
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not is_image_path(path):
            continue
        cid = case_id(path)
        if cid in files:
            raise ValueError(f"{what} folder {folder}: two files for case {cid!r}: {files[cid].name}, {path.name}")
        files[cid] = path
    if not files:
        hint = ""
        for sub in ("labelsTr", "labelsTs", "imagesTs"):
            if (folder / sub).is_dir():
                hint = f"; did you mean {folder / sub}?"
                break
        raise ValueError(f"no image files ({', '.join(IMAGE_SUFFIXES[:5])}, ...) in the {what} folder {folder}{hint}")
    return files


def pair_cases(
    pred_dir: str | os.PathLike[str], gt_dir: str | os.PathLike[str], *, allow_missing: bool = False
) -> tuple[list[CasePair], list[str], list[str]]:
    """Pair prediction and ground-truth files by case id.

    Args:
        pred_dir: folder of predicted masks.
        gt_dir: folder of ground-truth label maps.
        allow_missing: if False, a ground-truth case without prediction is an error; if True it is skipped
            (listed in the result and warned about).

    Returns:
        (pairs sorted by case id, GT case ids without prediction, prediction file names without GT). Predictions
        without GT are ignored with a warning.

    Raises:
        FileNotFoundError: a folder does not exist.
        ValueError: no image files in a folder, two files for one case, both folders the same, or GT cases
            without prediction (unless ``allow_missing``).
    """
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    if pred_dir.exists() and gt_dir.exists() and pred_dir.resolve() == gt_dir.resolve():
        raise ValueError(f"the prediction and ground-truth folders are the same folder ({pred_dir})")
    gts = _image_files(gt_dir, "ground-truth")
    preds = _image_files(pred_dir, "prediction")

    matched: dict[str, Path] = {}
    unmatched: list[str] = []
    for stem, path in preds.items():
        cid = next((c for c in _candidate_ids(stem) if c in gts), None)
        if cid is None:
            unmatched.append(path.name)
        elif cid in matched:
            raise ValueError(
                f"two predictions for case {cid!r}: {matched[cid].name} and {path.name}; keep one in {pred_dir}"
            )
        else:
            matched[cid] = path
    missing = sorted(set(gts) - set(matched))
    if missing and not allow_missing:
        raise ValueError(
            f"{len(missing)} of {len(gts)} ground-truth case(s) have no prediction in {pred_dir}: {_first(missing)} "
            "(predictions are matched by file name; pass --allow-missing to skip them)"
        )
    if missing:
        logger.warning("skipping %d ground-truth case(s) without prediction: %s", len(missing), _first(missing))
    if unmatched:
        logger.warning("ignoring %d prediction(s) without ground truth: %s", len(unmatched), _first(unmatched))
    if not matched:
        raise ValueError(
            f"no prediction in {pred_dir} matches a ground-truth case in {gt_dir} "
            f"(prediction ids: {_first(sorted(preds))}; ground-truth ids: {_first(sorted(gts))})"
        )
    pairs = [CasePair(c, matched[c], gts[c]) for c in sorted(matched)]
    return pairs, missing, unmatched


def _values_present(arr: np.ndarray) -> set[float]:
    """The distinct voxel values of a label map (bincount for small non-negative integers, else np.unique)."""
    if arr.size == 0:
        return set()
    if np.issubdtype(arr.dtype, np.integer) and int(arr.min()) >= 0 and int(arr.max()) < 65536:
        return {int(v) for v in np.flatnonzero(np.bincount(arr.ravel()))}
    return {v.item() for v in np.unique(arr)}


def _read_mask(path: Path, what: str, case: str) -> Volume:
    vol = read_image(path)
    if vol.array.ndim != 3:
        raise ValueError(
            f"case {case!r}: the {what} {path.name} has {vol.array.shape[0]} channels; expected a 3D label map"
        )
    return vol


@dataclass
class EvaluationResult:
    """Metrics of a folder of predictions.

    Attributes:
        cases: per-case metrics, sorted by case id.
        summary: :func:`~lesionsam.evaluation.metrics.summarise` of ``cases``, plus ``missing_predictions`` and
            ``ignored_predictions``.
        settings: label, prediction foreground rule, NSD tolerance and mode, lesion matching rule and IoU threshold,
            connectivity, folders, volume bins.
        missing: ground-truth case ids that had no prediction (only with ``allow_missing``).
        ignored: prediction file names without ground truth.
        csv_path, json_path: where ``metrics.csv`` / ``metrics.json`` were written (None if not written).
    """

    cases: list[CaseMetrics]
    summary: dict[str, Any]
    settings: dict[str, Any]
    missing: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    csv_path: Path | None = None
    json_path: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        """The content of ``metrics.json`` (strict JSON: NaN → null)."""
        lesions = [les.to_dict() for c in self.cases for les in (*c.lesions, *c.false_positives)]
        return to_jsonable(
            {
                "format": "lesionsam-metrics",
                "version": 1,
                "settings": self.settings,
                "conventions": CONVENTIONS,
                "summary": self.summary,
                "cases": [c.row() for c in self.cases],
                "lesions": lesions,
            }
        )

    def csv_text(self) -> str:
        """``metrics.csv``: one row per case with :data:`CSV_COLUMNS` (undefined HD95 written as ``nan``)."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for c in self.cases:
            row = c.row()
            writer.writerow([_csv_value(row[k]) for k in CSV_COLUMNS])
        return buf.getvalue()

    def write(self, out_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
        """Write ``metrics.csv`` and ``metrics.json`` into ``out_dir`` atomically (temp file + rename).

        Returns:
            (csv path, json path); also stored in ``csv_path`` / ``json_path``.
        """
        out = Path(out_dir)
        if out.exists() and not out.is_dir():
            raise ValueError(f"output folder expected, but {out} is a file")
        self.csv_path = atomic_write_bytes(out / "metrics.csv", self.csv_text().encode())
        payload = json.dumps(self.to_dict(), indent=2, allow_nan=False, ensure_ascii=False) + "\n"
        self.json_path = atomic_write_bytes(out / "metrics.json", payload.encode("utf-8"))
        return self.csv_path, self.json_path

    def table(self, *, max_rows: int | None = None) -> str:
        """A readable table: one row per case (the first ``max_rows`` if given) and a summary block."""
        tol = self.settings.get("nsd_tolerance_mm", math.nan)
        head = (
            "case",
            "Dice",
            f"NSD@{tol:g}mm",
            "HD95 mm",
            "ASSD mm",
            "GT les",
            "pred les",
            "TP",
            "FP",
            "FN",
            "PQ",
            "GT ml",
            "pred ml",
        )
        rows = []
        shown = self.cases if max_rows is None else self.cases[:max_rows]
        for c in shown:
            rows.append(
                (
                    c.case,
                    f"{c.dice:.3f}",
                    f"{c.nsd:.3f}",
                    _fmt(c.hd95_mm, ".2f"),
                    _fmt(c.assd_mm, ".2f"),
                    str(c.gt_lesions),
                    str(c.pred_lesions),
                    str(c.tp),
                    str(c.fp),
                    str(c.fn),
                    _fmt(c.panoptic.pq, ".3f"),
                    f"{c.gt_volume_ml:.2f}",
                    f"{c.pred_volume_ml:.2f}",
                )
            )
        widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
        lines = [
            "  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(head, widths, strict=True)))
        ]
        lines.append("  ".join("-" * w for w in widths))
        for r in rows:
            lines.append(
                "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths, strict=True)))
            )
        if len(shown) < len(self.cases):
            lines.append(f"... {len(self.cases) - len(shown)} more case(s) in metrics.csv")

        s = self.summary
        det = s["lesion_detection"]
        hd, assd, pan = s["hd95_mm"], s["assd_mm"], s["panoptic"]
        free, with_lesion = s["lesion_free_cases"], s["cases_with_lesion"]
        rule = self.settings.get("lesion_matching", "overlap")
        rule_text = (
            "any overlap" if rule == "overlap" else f"one-to-one IoU >= {self.settings.get('lesion_iou_threshold')}"
        )
        lines += [
            "",
            f"summary over {s['n_cases']} case(s) (label {self.settings.get('label')}, "
            f"prediction {self.settings.get('prediction_foreground')})",
            f"  Dice      mean {_fmt(s['dice']['mean'], '.3f')}  median {_fmt(s['dice']['median'], '.3f')}",
            f"  NSD       mean {_fmt(s['nsd']['mean'], '.3f')}  median {_fmt(s['nsd']['median'], '.3f')}"
            f"  (tolerance {tol:g} mm, {_NSD_TEXT.get(self.settings.get('nsd_mode', 'area'), '')})",
            f"  HD95 mm   mean {_fmt(hd['mean'], '.2f')}  median {_fmt(hd['median'], '.2f')}"
            f"  ({hd['n_undefined']} undefined: exactly one mask empty)",
            f"  ASSD mm   mean {_fmt(assd['mean'], '.2f')}  median {_fmt(assd['median'], '.2f')}",
            f"  lesions   TP {det['tp']}  FP {det['fp']}  FN {det['fn']}  precision {det['precision']:.3f}"
            f"  recall {det['recall']:.3f}  F1 {det['f1']:.3f} (micro, 26-connected, {rule_text})",
            f"  panoptic  PQ {_fmt(pan['micro']['pq'], '.3f')}  SQ {_fmt(pan['micro']['sq'], '.3f')}"
            f"  RQ {_fmt(pan['micro']['rq'], '.3f')} (micro; case-mean PQ {_fmt(pan['pq']['mean'], '.3f')} over "
            f"{pan['pq']['n']} case(s) with a lesion in either mask)",
            f"  cases with a lesion: {with_lesion['n_cases']}, Dice mean {_fmt(with_lesion['dice']['mean'], '.3f')}; "
            f"lesion-free: {free['n_cases']}, {free['predicted_empty']} predicted empty, "
            f"{free['false_positive_components']} false-positive component(s)",
            "  lesion Dice by GT volume (lower bound inclusive):",
        ]
        coarse = s.get("lesion_dice_by_volume_coarse", {})
        for name, b in [*s["lesion_dice_by_volume"].items(), *coarse.items()]:
            lines.append(
                f"    {name:<9} n={b['count']:<4} detected {b['detected']:<4} "
                f"mean Dice {_fmt(b['mean_dice'], '.3f')}  median {_fmt(b['median_dice'], '.3f')}"
            )
        if self.missing:
            lines.append(f"  skipped (no prediction): {_first(self.missing)}")
        if self.ignored:
            lines.append(f"  ignored (no ground truth): {_first(self.ignored)}")
        return "\n".join(lines)


def _fmt(value: float | None, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return format(value, spec)


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    return value


def evaluate_folder(
    pred_dir: str | os.PathLike[str],
    gt_dir: str | os.PathLike[str],
    *,
    label: int = 1,
    pred_label: int | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    nsd_tolerance_mm: float = 2.0,
    nsd_mode: str = "area",
    lesion_matching: str = "overlap",
    lesion_iou_threshold: float = DEFAULT_IOU_THRESHOLD,
    allow_missing: bool = False,
    progress: bool = False,
) -> EvaluationResult:
    """Score every prediction in ``pred_dir`` against its ground truth in ``gt_dir``.

    Args:
        pred_dir: folder of predicted masks (any value > 0 is foreground unless ``pred_label`` is given).
        gt_dir: folder of ground-truth label maps on the same grids.
        label: ground-truth value of the target (MSD liver tumour = 2, MSD brain enhancing tumour = 3).
        pred_label: if given, only prediction voxels equal to it are foreground.
        out_dir: if given, ``metrics.csv`` and ``metrics.json`` are written there atomically.
        nsd_tolerance_mm: NSD tolerance in mm.
        nsd_mode: ``"area"`` (area-weighted surface Dice, default) or ``"voxel"`` (boundary-voxel count).
        lesion_matching: ``"overlap"`` (a GT lesion is found if any predicted voxel overlaps it, default) or
            ``"iou"`` (one-to-one matching at ``lesion_iou_threshold``).
        lesion_iou_threshold: IoU threshold of the ``"iou"`` rule and of panoptic quality, in (0, 1].
        allow_missing: skip (with a warning) ground-truth cases that have no prediction instead of failing.
        progress: show a tqdm progress bar (with ETA) on stderr.

    Returns:
        An :class:`EvaluationResult` (``table()`` for printing).

    Raises:
        FileNotFoundError: a folder does not exist.
        ValueError: no image files, GT cases without prediction (unless ``allow_missing``), a prediction whose
            grid differs from its ground truth, a non-integer prediction (a probability map), a multi-channel
            image, ``label`` absent from every ground truth, or an unknown option value.
    """
    from tqdm import tqdm

    if not math.isfinite(nsd_tolerance_mm) or nsd_tolerance_mm < 0:
        raise ValueError(f"nsd_tolerance_mm must be a finite value >= 0, got {nsd_tolerance_mm}")
    check_metric_options(nsd_mode, lesion_matching, lesion_iou_threshold)
    pairs, missing, ignored = pair_cases(pred_dir, gt_dir, allow_missing=allow_missing)

    cases: list[CaseMetrics] = []
    label_found = False
    gt_values: set[float] = set()
    pred_label_found = pred_label is None
    with tqdm(pairs, desc="evaluate", unit="case", disable=not progress, dynamic_ncols=True) as bar:
        for pair in bar:
            bar.set_postfix_str(pair.case, refresh=False)
            gt_vol = _read_mask(pair.gt, "ground truth", pair.case)
            pred_vol = _read_mask(pair.pred, "prediction", pair.case)
            if not gt_vol.same_geometry(pred_vol):
                raise ValueError(
                    f"case {pair.case!r}: prediction {pair.pred.name} is not on the ground-truth grid "
                    f"({gt_vol.geometry_difference(pred_vol)}, ground truth vs prediction); "
                    "resample the prediction onto the ground-truth image"
                )
            pred_arr = pred_vol.array
            if np.issubdtype(pred_arr.dtype, np.floating) and not np.array_equal(pred_arr, np.round(pred_arr)):
                raise ValueError(
                    f"case {pair.case!r}: prediction {pair.pred.name} holds non-integer values (a probability map?); "
                    "threshold it into a mask first"
                )
            gt_fg = gt_vol.array == label
            if gt_fg.any():
                label_found = True
            elif not label_found:
                gt_values |= _values_present(gt_vol.array)
            pred_fg = pred_arr > 0 if pred_label is None else pred_arr == pred_label
            pred_label_found = pred_label_found or bool(pred_fg.any())
            cases.append(
                case_metrics(
                    pred_fg,
                    gt_fg,
                    spacing_dhw(gt_vol.spacing),
                    nsd_tolerance_mm=nsd_tolerance_mm,
                    nsd_mode=nsd_mode,
                    lesion_matching=lesion_matching,
                    lesion_iou_threshold=lesion_iou_threshold,
                    case=pair.case,
                )
            )

    if not label_found:
        values = sorted(gt_values)
        shown = ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values[:20])
        more = ", ..." if len(values) > 20 else ""
        raise ValueError(f"label {label} not found in any ground truth; values present: [{shown}{more}]")
    if not pred_label_found:
        logger.warning("prediction label %s occurs in no prediction: every prediction is empty", pred_label)

    settings = {
        "pred_dir": str(Path(pred_dir)),
        "gt_dir": str(Path(gt_dir)),
        "label": label,
        "pred_label": pred_label,
        "ground_truth_foreground": f"gt == {label}",
        "prediction_foreground": "pred > 0" if pred_label is None else f"pred == {pred_label}",
        "nsd_tolerance_mm": float(nsd_tolerance_mm),
        "nsd_mode": nsd_mode,
        "lesion_matching": lesion_matching,
        "lesion_iou_threshold": float(lesion_iou_threshold),
        "connectivity": CONNECTIVITY,
        "volume_bins_ml": {name: [lo, None if math.isinf(hi) else hi] for name, lo, hi in VOLUME_BINS_ML},
        "coarse_volume_bins_ml": {n: [lo, None if math.isinf(hi) else hi] for n, lo, hi in COARSE_VOLUME_BINS_ML},
        "allow_missing": allow_missing,
    }
    summary = summarise(cases)
    summary["missing_predictions"] = missing
    summary["ignored_predictions"] = ignored
    result = EvaluationResult(cases=cases, summary=summary, settings=settings, missing=missing, ignored=ignored)
    if out_dir is not None:
        result.write(out_dir)
    return result
