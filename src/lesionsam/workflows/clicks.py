"""``lesionsam evaluate-clicks``: an interactive protocol on a folder — ``lesionsam`` (Dice after 1…N clicks per
lesion, AUC, NoC@80/90; :mod:`lesionsam.evaluation.interactive`) or ``cvpr25`` (the CVPR 2025 challenge's box + 5
clicks, DSC_AUC / NSD_AUC, final DSC / NSD, time; :mod:`lesionsam.evaluation.cvpr25`).
 Images and label maps are paired by case id (file
name without its image ending; an image may carry nnU-Net's ``_0000`` channel suffix).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lesionsam.utils.paths import check_can_create, refuse_inputs_as_outputs

if TYPE_CHECKING:
    from lesionsam.inference.zoom import ZoomPolicy

log = logging.getLogger(__name__)

#: Files written into the output folder (``lesionsam`` protocol, ``cvpr25`` protocol).
CSV_NAME, JSON_NAME = "clicks.csv", "clicks.json"
CVPR25_CSV, CVPR25_JSON = "cvpr25.csv", "cvpr25.json"
#: The protocols of ``evaluate-clicks``.
PROTOCOLS: tuple[str, ...] = ("lesionsam", "cvpr25")


@dataclass
class Cvpr25Evaluation:
    """The CVPR 2025 challenge protocol on a folder: per-case results, their summary, where they were written."""

    results: list[Any]
    summary: dict[str, Any]
    settings: dict[str, Any]
    csv_path: Path | None = None
    json_path: Path | None = None
    lesion_free: list[str] = field(default_factory=list)

    def table(self) -> str:
        """The printed summary (per case, then overall)."""
        from lesionsam.evaluation.cvpr25 import cvpr25_table

        lines = [
            f"  {r.case}: DSC_AUC {r.dsc_auc:.3f}  NSD_AUC {r.nsd_auc:.3f}  final DSC {r.dsc[-1]:.3f}  "
            f"final NSD {r.nsd[-1]:.3f}  {sum(r.seconds):.2f} s"
            for r in self.results
        ]
        extra = [f"  cases without the target label (not scored): {len(self.lesion_free)}"] if self.lesion_free else []
        return "\n".join([*lines, cvpr25_table(self.summary, self.settings), *extra])


@dataclass
class ClickEvaluation:
    """The interactive protocol on a folder: per-lesion curves, their summary, where they were written."""

    curves: list[Any]
    summary: dict[str, Any]
    settings: dict[str, Any]
    csv_path: Path | None = None
    json_path: Path | None = None
    lesion_free: list[str] = field(default_factory=list)

    def table(self) -> str:
        """A short printed summary: mean Dice after each click, AUC, NoC@80/90; then the same by lesion size."""
        s = self.summary
        if not s["n_lesions"]:
            return "no lesion to click on in any case"
        dice = "  ".join(f"{k}:{v:.3f}" for k, v in enumerate(s["dice_mean"], start=1))
        n = s["n_clicks"]
        by_size = [f"  by GT volume (lower bound inclusive): Dice after 1 / {n} click(s), AUC, NoC@90"]
        for name, b in s.get("by_size", {}).items():
            if not b["n_lesions"]:
                by_size.append(f"    {name:<9} n=0    n/a")
                continue
            by_size.append(
                f"    {name:<9} n={b['n_lesions']:<4} {b['dice_mean'][0]:.3f} / {b['dice_mean'][-1]:.3f}  "
                f"AUC {b['auc_mean']:.3f}  NoC@90 {b['noc90']['mean']:.2f} ({b['noc90']['failed']} not reached)"
            )
        return "\n".join(
            [
                f"interactive protocol over {s['n_lesions']} lesion(s), {n} click(s) each "
                f"({self.settings['click_mode']} clicks, seed {self.settings['seed']})",
                f"  mean Dice after k clicks  {dice}",
                f"  AUC (Dice vs clicks, /(N-1))  {s['auc_mean']:.3f} ± {s['auc_sd']:.3f}",
                f"  NoC@80 {s['noc80']['mean']:.2f} ({s['noc80']['failed']} not reached in {n})   "
                f"NoC@90 {s['noc90']['mean']:.2f} ({s['noc90']['failed']} not reached in {n})",
                *(by_size if len(by_size) > 1 else []),
            ]
            + ([f"  lesion-free cases (no click): {len(self.lesion_free)}"] if self.lesion_free else [])
        )


def _pairs(images_dir: Path, labels_dir: Path) -> list[tuple[str, Path, Path]]:
    """(case id, image, label map) for every label map; an image may add ``_0000`` to the case id."""
    from lesionsam.evaluation.evaluate import _image_files

    images = _image_files(images_dir, "image")
    labels = _image_files(labels_dir, "label")
    by_case = {
        cid[: -len("_0000")] if cid.endswith("_0000") and cid not in labels else cid: p for cid, p in images.items()
    }
    missing = sorted(set(labels) - set(by_case))
    if missing:
        shown = ", ".join(missing[:5]) + (f" ... and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ValueError(f"{len(missing)} label map(s) in {labels_dir} have no image in {images_dir}: {shown}")
    return [(cid, by_case[cid], labels[cid]) for cid in sorted(labels)]


def evaluate_clicks(
    images_dir: str | os.PathLike[str],
    labels_dir: str | os.PathLike[str],
    *,
    out: str | os.PathLike[str],
    checkpoint: str | os.PathLike[str] | None,
    preset: str | None = None,
    label: int | None = None,
    n_clicks: int = 10,
    click_mode: str = "random",
    seed: int = 0,
    channel: int | None = None,
    device: str = "cpu",
    max_windows: int = 8,
    zoom: ZoomPolicy | None = None,
    announce: Callable[[str], None] | None = None,
    progress: bool = False,
    protocol: str = "lesionsam",
    box: str = "2d",
    workers: int = 1,
) -> ClickEvaluation | Cvpr25Evaluation:
    """Run an interactive protocol on every case and write ``clicks.csv`` / ``clicks.json`` (``lesionsam``: every
    lesion) or ``cvpr25.csv`` / ``cvpr25.json`` (``cvpr25``: the lesion label as the challenge's target).

    Args:
        images_dir, labels_dir: the scans and their label maps (e.g. an MSD ``imagesTr`` / ``labelsTr``).
        out: output folder.
        checkpoint: a lesionsam checkpoint or an official SAM-Med3D file (with ``preset``); None = random weights.
        label: the lesion value (None: from the dataset.json beside ``labels_dir``, else the checkpoint's target).
        n_clicks: N, clicks per lesion; click_mode: ``"random"`` (as training's default) or ``"center"``.
        seed: seeds every lesion's clicks; channel: the channel of multi-channel images.
        device, max_windows, zoom: passed to the predictor (``zoom``: zoom-in for small lesions, None: off).
        announce: called with a one-line note saying which label is used when ``label`` was not given.
        progress: show a progress bar.
        protocol: ``"lesionsam"`` or ``"cvpr25"`` (whose clicks are fixed: ``n_clicks`` and ``click_mode`` are not
            used; its box jitter is seeded from ``seed`` and the case id).
        box: ``cvpr25`` only: the box given to the engine, ``"2d"`` (on the middle slice) or ``"3d"`` (+ z-range).
        workers: cases in this many processes (CPU), each with torch's threads divided among them
            (:mod:`lesionsam.workflows.case_pool`): the same results as one process at that many threads. The
            workers are spawned: from a script, call this under ``if __name__ == "__main__":``.

    Raises:
        ValueError, FileNotFoundError: bad folders, no image for a label map, an output folder that cannot be
            created or that would replace an input, a bad option (all checked before any work).
    """
    from lesionsam.data.clicks import CLICK_MODES
    from lesionsam.evaluation.cvpr25 import BOX_MODES
    from lesionsam.workflows.case_pool import check_workers

    images_dir, labels_dir, out_dir = Path(images_dir), Path(labels_dir), Path(out)
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown --protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    if box not in BOX_MODES:
        raise ValueError(f"unknown --box {box!r}; choose one of {', '.join(BOX_MODES)}")
    if n_clicks < 1:
        raise ValueError(f"--clicks must be >= 1, got {n_clicks}")
    if click_mode not in CLICK_MODES:
        raise ValueError(f"unknown click mode {click_mode!r}; choose one of {', '.join(CLICK_MODES)}")
    check_workers(workers)
    pairs = _pairs(images_dir, labels_dir)
    check_can_create(out_dir, what="--out", folder=True)
    reads = [("an image", p) for _, p, _ in pairs] + [("a label map", q) for _, _, q in pairs]
    names = (CSV_NAME, JSON_NAME) if protocol == "lesionsam" else (CVPR25_CSV, CVPR25_JSON)
    refuse_inputs_as_outputs([("--out", out_dir / name) for name in names], reads)
    if checkpoint is not None:
        from lesionsam.models.checkpoint import check_checkpoint_file

        check_checkpoint_file(checkpoint)
    from lesionsam.inference.predictor import Predictor

    predictor = Predictor.from_checkpoint(checkpoint, preset=preset, device=device, max_windows=max_windows, zoom=zoom)
    if label is None:  # the checkpoint was read once, above
        from lesionsam.data.labels import resolve_lesion_label

        label, where = resolve_lesion_label(None, labels_dir, checkpoint_label=lambda: predictor.trained_target_label)
        if announce is not None:
            announce(f"lesion label {label} (from {where}; --label N to choose)")

    if protocol == "cvpr25":
        where = {
            "images_dir": str(images_dir),
            "labels_dir": str(labels_dir),
            "checkpoint": None if checkpoint is None else str(checkpoint),
        }
        return _evaluate_cvpr25(
            pairs,
            predictor,
            out_dir,
            int(label),
            where,
            seed=seed,
            channel=channel,
            box=box,
            progress=progress,
            workers=workers,
        )
    from lesionsam.evaluation.interactive import curves_csv, curves_json, summarise_curves
    from lesionsam.utils.dataclass_io import atomic_write_bytes
    from lesionsam.workflows.case_pool import map_cases

    case_fn = partial(
        _case_curves, label=int(label), n_clicks=n_clicks, click_mode=click_mode, seed=seed, channel=channel
    )
    curves, lesion_free = [], []
    for (cid, _, _), found in zip(
        pairs, map_cases(case_fn, predictor, pairs, workers=workers, progress=progress, desc="clicks"), strict=True
    ):
        if not found:
            lesion_free.append(cid)
        curves += found
        log.info("case %s: %d lesion(s)", cid, len(found))
    settings = {
        "images_dir": str(images_dir),
        "labels_dir": str(labels_dir),
        "checkpoint": None if checkpoint is None else str(checkpoint),
        "label": int(label),
        "n_clicks": n_clicks,
        "click_mode": click_mode,
        "seed": seed,
        "lesion_free_cases": lesion_free,
    }
    result = ClickEvaluation(curves, summarise_curves(curves), settings, lesion_free=lesion_free)
    result.csv_path = atomic_write_bytes(out_dir / CSV_NAME, curves_csv(curves).encode())
    payload = json.dumps(curves_json(curves, settings), indent=2, allow_nan=False) + "\n"
    result.json_path = atomic_write_bytes(out_dir / JSON_NAME, payload.encode("utf-8"))
    return result


def _read_case(image_path: Path, label_path: Path, channel: int | None) -> tuple[Any, Any]:
    """A case's scan (one channel) and label map."""
    from lesionsam.data.io import read_image

    image = read_image(image_path, channel=channel)
    if image.array.ndim == 4:
        raise ValueError(f"{image_path}: {image.array.shape[0]} channels; choose one with --channel")
    return image, read_image(label_path)


def _case_curves(
    predictor: Any,
    cid: str,
    image_path: Path,
    label_path: Path,
    *,
    label: int,
    n_clicks: int,
    click_mode: str,
    seed: int,
    channel: int | None,
) -> list[Any]:
    """The ``lesionsam`` protocol's curves of one case (a :data:`~lesionsam.workflows.case_pool.CaseFunction`)."""
    from lesionsam.evaluation.interactive import case_click_curves

    image, labels = _read_case(image_path, label_path, channel)
    return case_click_curves(
        predictor, image, labels, label=label, n_clicks=n_clicks, mode=click_mode, seed=seed, case=cid
    )


def _case_cvpr25(
    predictor: Any,
    cid: str,
    image_path: Path,
    label_path: Path,
    *,
    label: int,
    seed: int,
    channel: int | None,
    box: str,
) -> Any:
    """The ``cvpr25`` protocol's result of one case (None without the target label)."""
    import zlib

    import numpy as np

    from lesionsam.evaluation.cvpr25 import case_cvpr25

    image, labels = _read_case(image_path, label_path, channel)
    shift = int(np.random.default_rng([int(seed), zlib.crc32(cid.encode("utf-8"))]).integers(0, 6))
    return case_cvpr25(predictor, image, labels, label=label, case=cid, shift=shift, box=box)


def _evaluate_cvpr25(
    pairs: list[tuple[str, Path, Path]],
    predictor: Any,
    out_dir: Path,
    label: int,
    where: dict[str, Any],
    *,
    seed: int,
    channel: int | None,
    box: str,
    progress: bool,
    workers: int = 1,
) -> Cvpr25Evaluation:
    """The ``cvpr25`` protocol on checked pairs (see :func:`evaluate_clicks`)."""
    from lesionsam.evaluation.cvpr25 import cvpr25_csv, cvpr25_json, summarise_cvpr25
    from lesionsam.utils.dataclass_io import atomic_write_bytes
    from lesionsam.workflows.case_pool import map_cases

    case_fn = partial(_case_cvpr25, label=label, seed=seed, channel=channel, box=box)
    results, lesion_free = [], []
    for (cid, _, _), found in zip(
        pairs, map_cases(case_fn, predictor, pairs, workers=workers, progress=progress, desc="cvpr25"), strict=True
    ):
        if found is None:
            lesion_free.append(cid)
            continue
        results.append(found)
        log.info("case %s: DSC_AUC %.3f NSD_AUC %.3f", cid, found.dsc_auc, found.nsd_auc)
    settings = {
        "protocol": "cvpr25",
        **where,
        "label": label,
        "box": box,
        "seed": seed,
        "lesion_free_cases": lesion_free,
    }
    summary = summarise_cvpr25(results)
    result = Cvpr25Evaluation(results, summary, settings, lesion_free=lesion_free)
    result.csv_path = atomic_write_bytes(out_dir / CVPR25_CSV, cvpr25_csv(results).encode())
    payload = json.dumps(cvpr25_json(results, settings), indent=2, allow_nan=False) + "\n"
    result.json_path = atomic_write_bytes(out_dir / CVPR25_JSON, payload.encode("utf-8"))
    return result
