"""``lesionsam predict``: one image or a folder, clicks in, masks out on each input's own grid."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lesionsam.data.io import (
    IMAGE_SUFFIXES,
    ImageIOError,
    case_id,
    check_image_header,
    image_suffix,
    is_image_path,
    read_image,
    write_image,
)
from lesionsam.inference.modes import count_lesions, predict_image
from lesionsam.inference.predictor import LesionClicks, Predictor, write_prediction
from lesionsam.inference.prompt_files import clicks_from_args, clicks_from_label, read_prompt_file
from lesionsam.models.checkpoint import check_checkpoint_file
from lesionsam.utils.paths import check_can_create, refuse_inputs_as_outputs

log = logging.getLogger(__name__)


def _label_files(source: Path) -> list[Path]:
    return sorted(p for p in source.iterdir() if is_image_path(p)) if source.is_dir() else [source]


def checkpoint_target_label(checkpoint: str | os.PathLike[str] | None) -> int | None:
    """``data.target_label`` of a lesionsam checkpoint trained on one target (None otherwise or without one)."""
    if checkpoint is None:
        return None
    from lesionsam.models.checkpoint import FORMAT, read_weights_file

    obj = read_weights_file(checkpoint)
    if not (isinstance(obj, dict) and obj.get("format") == FORMAT):
        return None
    data = (obj.get("config") or {}).get("data") or {}
    value = data.get("target_label")
    return int(value) if isinstance(value, int) and not data.get("target_labels") else None


@dataclass
class PredictedCase:
    """What was written for one input image."""

    image: Path
    mask: Path
    lesions: int
    windows: int
    seconds: float


def predict(
    input: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    preset: str | None = None,
    points: Sequence[str] = (),
    negatives: Sequence[str] = (),
    boxes: Sequence[str] = (),
    world: bool = False,
    prompts: str | os.PathLike[str] | None = None,
    clicks_from: str | os.PathLike[str] | None = None,
    text: str | None = None,
    auto: bool = False,
    refine_checkpoint: str | os.PathLike[str] | None = None,
    min_lesion_mm3: float = 0.0,
    compete: bool = True,
    label: int | None = None,
    channel: int | None = None,
    probabilities: str | os.PathLike[str] | None = None,
    binary: bool = False,
    device: str = "cpu",
    modality: str | None = None,
    spacing: tuple[float, float, float] | None = None,
    max_windows: int = 8,
    all_components: bool = False,
    dtype: str = "float32",
    predictor: Predictor | None = None,
    progress: bool = True,
    announce: Callable[[str], None] | None = None,
) -> list[PredictedCase]:
    """Segment lesions in one image (``input`` a file, ``out`` a file) or a folder (both folders).

    Exactly one source of clicks, or none with ``text`` (a text-referred method then searches the whole volume
    with sliding windows) or with ``auto`` (a prompt-free method, H-SAM, segments every lesion class it knows
    in the whole volume; the mask holds the classes' label values). ``text`` also goes with clicks, and so does
    ``auto`` with ``refine_checkpoint``: the clicked lesions are then segmented again by that promptable model
    and replace what the automatic pass found there:
        * ``points``/``negatives``: ``"i,j,k"`` strings for one lesion (one image only);
        * ``boxes``: ``"i0,j0,k0,i1,j1,k1"`` strings (voxel indices, inclusive; ``k0 == k1`` for a 2D box on slice
          k), one lesion each (one image only); ``points``/``negatives`` with a single box refine its lesion;
        * ``prompts``: a JSON file (see :mod:`lesionsam.inference.prompt_files`);
        * ``clicks_from``: a label map (or a folder of them, paired by case id): one centre click per
          connected lesion of value ``label`` — the standard first-click benchmark protocol. ``label`` None takes
          the lesion label from the dataset.json beside the label maps, else from the checkpoint's training config
          (:func:`lesionsam.data.labels.resolve_lesion_label`), else fails asking for it.

    Args:
        checkpoint: lesionsam checkpoint or official SAM-Med3D file (None: random weights, smoke tests only).
        preset: backbone preset for official files (default ``sam_med3d_vit_b``).
        world: ``points``/``negatives`` are LPS mm instead of voxel indices.
        probabilities: also write lesion probabilities (a file for one image, a folder for a folder).
        channel: for multi-channel images (4D NIfTI), the channel to segment.
        modality, spacing: intensity normalisation and model voxel size (None: the lesionsam checkpoint's
            training settings, else CT and 1.5 mm).
        binary: write 0/1 instead of one value per lesion (or per class, with ``auto``).
        auto: prompt-free whole-volume segmentation (``checkpoint`` of a prompt-free method such as ``hsam``).
        min_lesion_mm3: with ``auto`` or ``text`` alone, drop found components smaller than this (mm³).
        compete: with ``text`` alone, decide a text that names one of the checkpoint's trained classes against
            the others (:meth:`Predictor.predict_text`); False thresholds the text's own logits.
        refine_checkpoint: with ``auto`` and clicks, the promptable checkpoint that re-segments the clicked lesions
            (each takes the class the automatic pass gave its first positive click, else the first class).
        all_components: with clicks, keep every component the windows found instead of only those a positive click
            touches (``Predictor(clicked_only=False)``).
        dtype: "bfloat16" runs the click/box model windows under bfloat16 autocast (CPU or GPU); default float32.
        announce: called with a one-line note when ``label`` was not given (which label is used, and from where).
        predictor: reuse an existing :class:`Predictor` (then ``checkpoint``/``preset``/``device`` are unused).

    Every input is checked before the first write: no output path may be one of the inputs (also through a link),
    ``out`` and ``probabilities`` must be creatable image paths (or folders), and the checkpoint must look like
    one; no output folder is created before that. Files are written atomically (temp file + rename).

    Returns:
        One :class:`PredictedCase` per image written.
    """
    src, dst = Path(input), Path(out)
    if not src.exists():
        raise FileNotFoundError(f"input not found: {src}")
    sources = [s for s in (bool(points or boxes), prompts is not None, clicks_from is not None) if s]
    if len(sources) > 1 or (not sources and text is None and not auto):
        raise ValueError(
            "give exactly one of --point (with optional --negative), --box, --prompts FILE or --clicks-from "
            "(or --text alone, for a text-referred method, or --auto, for a prompt-free one)"
        )
    if auto and text is not None:
        raise ValueError("--auto and --text exclude each other: --auto needs a prompt-free method, --text a text one")
    if auto and sources and refine_checkpoint is None:
        raise ValueError(
            "--auto with clicks refines the clicked lesions with a promptable model: give --refine-checkpoint CKPT "
            "(or drop the clicks)"
        )
    if refine_checkpoint is not None and not (auto and sources):
        raise ValueError("--refine-checkpoint goes with --auto and clicks (--point, --prompts or --clicks-from)")
    if negatives and not (points or boxes):
        raise ValueError("--negative clicks need at least one positive --point (or a --box)")
    if boxes:
        if auto or world:
            raise ValueError("--box takes voxel indices and a promptable model: it goes without --auto and --world")
        clicks_from_args(points, negatives, boxes)  # the boxes' syntax, before any work
    folder = src.is_dir() and not any(p.suffix == ".dcm" for p in src.iterdir())
    if folder:
        images = sorted(p for p in src.iterdir() if is_image_path(p))
        if not images:
            raise FileNotFoundError(f"{src}: no image files ({', '.join(IMAGE_SUFFIXES[:4])}, ...)")
        if points or boxes:
            raise ValueError("--point/--box describe one image; for a folder use --prompts FILE or --clicks-from")
        if dst.name.endswith(IMAGE_SUFFIXES):
            raise ValueError(f"{dst}: for a folder of images, --out must be a folder")
        jobs = [(img, dst / f"{case_id(img)}{image_suffix(img)}") for img in images]
        prob_dir = Path(probabilities) if probabilities else None
        if prob_dir is not None and prob_dir.name.endswith(IMAGE_SUFFIXES):
            raise ValueError(f"--probabilities {prob_dir}: for a folder of images, give a folder")
        check_can_create(dst, what="--out", folder=True)
        if prob_dir is not None:
            check_can_create(prob_dir, what="--probabilities", folder=True)
            if _same_path(prob_dir, dst):
                raise ValueError(f"--probabilities {prob_dir} is the --out folder: the files would overwrite the masks")
        prob_paths = [prob_dir / f"{case_id(img)}{image_suffix(img)}" if prob_dir else None for img in images]
    else:
        if not dst.name.endswith(IMAGE_SUFFIXES):
            raise ValueError(f"{dst}: --out needs an image file ending such as .nii.gz or .nrrd")
        jobs = [(src, dst)]
        prob_paths = [Path(probabilities) if probabilities is not None else None]
        check_can_create(dst, what="--out")
        if probabilities is not None:
            prob = Path(probabilities)
            if not prob.name.endswith(IMAGE_SUFFIXES):
                raise ValueError(
                    f"--probabilities {prob}: needs an image file ending such as .nii.gz or .nrrd (nothing was written)"
                )
            check_can_create(prob, what="--probabilities")
            if _same_path(prob, dst):
                raise ValueError(f"--probabilities {prob} is the same path as --out: give two different files")
    reads = [("the input image", p) for p, _ in jobs]
    reads += [("--prompts", prompts), ("--checkpoint", checkpoint), ("--refine-checkpoint", refine_checkpoint)]
    if clicks_from is not None and Path(clicks_from).exists():
        reads += [("--clicks-from", p) for p in _label_files(Path(clicks_from))]
    writes = [("--out", m) for _, m in jobs] + [("--probabilities", p) for p in prob_paths]
    refuse_inputs_as_outputs(writes, reads)
    if folder:  # every image (and its label map) is checked before the first mask is written
        for image_path, _ in jobs:
            check_image_header(image_path)
            if clicks_from is not None:
                check_image_header(_label_path_for(case_id(image_path), Path(clicks_from), folder=True))
    prob_for = dict(zip([m for _, m in jobs], prob_paths, strict=True))
    for ckpt in (checkpoint, refine_checkpoint):
        if ckpt is not None:
            check_checkpoint_file(ckpt)
    if clicks_from is not None and label is None:
        from lesionsam.data.labels import resolve_lesion_label

        label, where = resolve_lesion_label(
            label, clicks_from, checkpoint_label=lambda: checkpoint_target_label(checkpoint)
        )
        if announce is not None:
            announce(f"lesion label {label} (from {where}; --label N to choose)")
    table = read_prompt_file(prompts) if prompts is not None else None
    if table is not None and folder and None in table:
        raise ValueError(f"{prompts}: a folder needs prompts per case id ({{'case_000': {{'lesions': [...]}}}})")
    if table is not None and not folder and None not in table:
        if len(table) != 1:
            raise ValueError(f"{prompts}: holds several cases; for one image give {{'lesions': [...]}}")
        table = {None: next(iter(table.values()))}

    def build(ckpt: str | os.PathLike[str] | None = checkpoint, preset: str | None = preset) -> Predictor:
        return Predictor.from_checkpoint(
            ckpt,
            preset=preset,
            device=device,
            modality=modality,
            spacing=spacing,
            max_windows=max_windows,
            clicked_only=not all_components,
            dtype=dtype,
        )

    results = []
    refiner: Predictor | None = None
    bar = tqdm(jobs, desc="predict", unit="image", disable=not (progress and folder))
    for image_path, mask_path in bar:
        cid = case_id(image_path)
        volume = read_image(image_path, channel=channel)
        if volume.array.ndim == 4:
            raise ImageIOError(
                f"{image_path}: {volume.array.shape[0]} channels; choose one with --channel (e.g. the MRI sequence)"
            )
        is_world = world
        if not sources:
            lesions = []  # text alone or --auto: the whole volume is searched
        elif points or boxes:
            lesions = clicks_from_args(points, negatives, boxes)
        elif table is not None:
            if cid not in table and folder:
                log.warning("%s: no prompts for this case in %s; skipped", cid, prompts)
                continue
            lesions, is_world = table[cid if folder else None]
        else:
            lesions = _clicks_from_label_for(volume, cid, Path(clicks_from), folder, label)  # type: ignore[arg-type]
            is_world = False
            if not lesions and not auto:  # a case without lesions in a folder: an empty mask, as the label says
                predictor = predictor or build()  # a bad checkpoint fails before the first file is written
                write_image(np.zeros(volume.spatial_shape, np.uint8), mask_path, reference=volume)
                results.append(PredictedCase(image_path, mask_path, 0, 0, 0.0))
                continue
        predictor = predictor or build()  # built once the first image and its clicks are known to be valid
        if auto and lesions and refiner is None:
            refiner = build(refine_checkpoint, None)
        pred = predict_image(
            predictor,
            volume,
            lesions,
            world=is_world,
            text=text,
            auto=auto,
            refiner=refiner,
            probabilities=probabilities is not None,
            min_lesion_mm3=min_lesion_mm3,
            compete=compete,
        )
        write_prediction(pred, mask_path, binary=binary, probabilities_path=prob_for[mask_path])
        found = count_lesions(pred.labels) if auto or not lesions else len(lesions)
        results.append(PredictedCase(image_path, mask_path, found, sum(pred.windows.values()), round(pred.seconds, 3)))
    return results


def _same_path(a: Path, b: Path) -> bool:
    return Path(os.path.abspath(a)).resolve() == Path(os.path.abspath(b)).resolve()


def _label_path_for(cid: str, source: Path, folder: bool) -> Path:
    if not folder:
        return source
    if not source.is_dir():
        raise ValueError(f"--clicks-from {source}: for a folder of images, give the folder of label maps")
    matches = [p for p in source.iterdir() if is_image_path(p) and case_id(p) == cid]
    if not matches:
        raise FileNotFoundError(f"--clicks-from {source}: no label map for case {cid!r}")
    return matches[0]


def _clicks_from_label_for(volume, cid: str, source: Path, folder: bool, label: int) -> list[LesionClicks]:
    label_path = _label_path_for(cid, source, folder)
    lab = read_image(label_path)
    if not lab.same_geometry(volume):
        raise ValueError(
            f"{label_path} and the image of case {cid!r} have different geometry: {lab.geometry_difference(volume)}"
        )
    return clicks_from_label(lab, value=label, source=str(label_path), allow_empty=folder)
