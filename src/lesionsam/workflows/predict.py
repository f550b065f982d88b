"""``lesionsam predict``: one image or a folder, prompts in, masks out on each input's own grid.

The command is one typed request (:class:`PredictRequest`: what to segment by, which model, what to write); the
workflow checks every input and output path, reads the prompts, and hands each image to
:func:`~lesionsam.inference.modes.predict_image`, which picks the engine's mode.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from lesionsam.data.io import (
    IMAGE_SUFFIXES,
    ImageIOError,
    Volume,
    case_id,
    check_image_header,
    image_suffix,
    is_image_path,
    read_image,
    write_image,
)
from lesionsam.inference.modes import count_lesions, predict_image
from lesionsam.inference.predictor import LesionClicks, Predictor, target_label_of, write_prediction
from lesionsam.inference.prompt_files import clicks_from_args, clicks_from_label, read_prompt_file
from lesionsam.inference.zoom import ZoomPolicy
from lesionsam.models.checkpoint import check_checkpoint_file
from lesionsam.utils.paths import check_can_create, refuse_inputs_as_outputs

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]

#: Image endings that cannot hold float probabilities (SimpleITK's DICOM writer takes integer pixels only).
_NO_FLOAT = (".dcm",)


def _label_files(source: Path) -> list[Path]:
    return sorted(p for p in source.iterdir() if is_image_path(p)) if source.is_dir() else [source]


def checkpoint_target_label(checkpoint: PathLike | None) -> int | None:
    """``data.target_label`` of a lesionsam checkpoint trained on one target (None otherwise or without one)."""
    if checkpoint is None:
        return None
    from lesionsam.models.checkpoint import FORMAT, read_weights_file

    obj = read_weights_file(checkpoint)
    if not (isinstance(obj, dict) and obj.get("format") == FORMAT):
        return None
    return target_label_of((obj.get("config") or {}).get("data") or {})


@dataclass(frozen=True)
class Prompting:
    """What to segment by: exactly one source of clicks, or none with ``text`` (a text-referred method searches the
    whole volume) or with ``auto`` (a prompt-free method segments every lesion class it knows).

    Attributes:
        points, negatives: ``"i,j,k"`` strings for one lesion (one image only); ``world``: they are LPS mm.
        boxes: ``"i0,j0,k0,i1,j1,k1"`` strings (voxel indices, inclusive; ``k0 == k1`` for a 2D box on slice k), one
            lesion each (one image only); ``points``/``negatives`` with a single box refine its lesion.
        prompts: a JSON prompts file (see :mod:`lesionsam.inference.prompt_files`).
        clicks_from: a label map (or a folder of them, paired by case id): one centre click per connected lesion of
            value ``label`` (None: from the dataset.json beside the label maps, else the checkpoint's training target,
            :func:`lesionsam.data.labels.resolve_lesion_label`).
        text: a text prompt, alone or with clicks (text-referred methods); ``compete``: text alone naming one of the
            checkpoint's trained classes is decided against the others.
        auto: prompt-free whole-volume segmentation; with clicks and ``refine_checkpoint`` (a promptable model) the
            clicked lesions are segmented again and replace what the automatic pass found there.
        min_lesion_mm3: with ``auto`` or ``text`` alone, drop found components smaller than this (mm³).
    """

    points: tuple[str, ...] = ()
    negatives: tuple[str, ...] = ()
    boxes: tuple[str, ...] = ()
    world: bool = False
    prompts: PathLike | None = None
    clicks_from: PathLike | None = None
    label: int | None = None
    text: str | None = None
    auto: bool = False
    refine_checkpoint: PathLike | None = None
    compete: bool = True
    min_lesion_mm3: float = 0.0

    @property
    def click_sources(self) -> int:
        """How many sources of clicks are given (the command line, a prompts file, a label map)."""
        return sum((bool(self.points or self.boxes), self.prompts is not None, self.clicks_from is not None))

    def check(self) -> None:
        """The rules between the prompt options (``ValueError`` naming the flags)."""
        sources = self.click_sources
        if sources > 1 or (not sources and self.text is None and not self.auto):
            raise ValueError(
                "give exactly one of --point (with optional --negative), --box, --prompts FILE or --clicks-from "
                "(or --text alone, for a text-referred method, or --auto, for a prompt-free one)"
            )
        if self.auto and self.text is not None:
            raise ValueError(
                "--auto and --text exclude each other: --auto needs a prompt-free method, --text a text one"
            )
        if self.auto and sources and self.refine_checkpoint is None:
            raise ValueError(
                "--auto with clicks refines the clicked lesions with a promptable model: give --refine-checkpoint "
                "CKPT (or drop the clicks)"
            )
        if self.refine_checkpoint is not None and not (self.auto and sources):
            raise ValueError("--refine-checkpoint goes with --auto and clicks (--point, --prompts or --clicks-from)")
        if self.negatives and not (self.points or self.boxes):
            raise ValueError("--negative clicks need at least one positive --point (or a --box)")
        if self.boxes:
            if self.auto or self.world:
                raise ValueError("--box takes voxel indices and a promptable model: it goes without --auto and --world")
            clicks_from_args(self.points, self.negatives, self.boxes)  # the boxes' syntax, before any work


@dataclass(frozen=True)
class ModelChoice:
    """Which model predicts and how it runs.

    Attributes:
        checkpoint: a lesionsam checkpoint or an official SAM-Med3D file (None: random weights, smoke tests only);
            preset: the backbone preset of an official file (default ``sam_med3d_vit_b``).
        device: ``"cpu"`` or ``"cuda"``; dtype: ``"bfloat16"`` runs the click/box windows under autocast.
        modality, spacing: intensity normalisation and model voxel size (None: the lesionsam checkpoint's training
            settings, else CT and 1.5 mm).
        max_windows: most model crops per lesion; all_components: keep every component the windows found instead of
            only those a positive click touches.
        zoom: segment small lesions again zoomed in (:class:`~lesionsam.inference.zoom.ZoomPolicy`; None: off).
        runtime: ``"torch"``, or ``"onnxruntime"`` / ``"onnxruntime-int8"``: ``checkpoint`` is then a folder written by
            ``lesionsam export`` and its graphs run in ONNX Runtime inside the same engine (the refiner stays torch).
    """

    checkpoint: PathLike | None = None
    preset: str | None = None
    device: str = "cpu"
    modality: str | None = None
    spacing: tuple[float, float, float] | None = None
    max_windows: int = 8
    all_components: bool = False
    dtype: str = "float32"
    zoom: ZoomPolicy | None = None
    runtime: str = "torch"

    def build(self, checkpoint: PathLike | None = None, *, refiner: bool = False) -> Predictor:
        """The predictor of this choice (or, with ``refiner``, of ``checkpoint`` with no preset)."""
        settings: dict[str, Any] = {  # the same predictor settings whichever runtime builds it
            "device": self.device,
            "dtype": self.dtype,
            "modality": self.modality,
            "spacing": self.spacing,
            "max_windows": self.max_windows,
            "clicked_only": not self.all_components,
            "zoom": self.zoom,
        }
        if self.runtime != "torch" and not refiner:
            from lesionsam.inference.onnx_model import onnx_predictor

            return onnx_predictor(self.export_folder(), runtime=self.runtime, **settings)
        return Predictor.from_checkpoint(
            checkpoint if refiner else self.checkpoint, preset=None if refiner else self.preset, **settings
        )

    def export_folder(self) -> Path:
        """``checkpoint`` as an export folder (its manifest read and checked, not yet its graphs), for an ONNX
        runtime; ``ValueError`` for ``"torch"`` or an unknown runtime."""
        from lesionsam.export.manifest import read_manifest
        from lesionsam.inference.onnx_model import RUNTIMES

        if self.runtime not in RUNTIMES[1:]:
            raise ValueError(f"unknown --runtime {self.runtime!r}; use one of {', '.join(RUNTIMES)}")
        if self.checkpoint is None:
            raise ValueError(
                f"--runtime {self.runtime} needs --checkpoint DIR, a folder written by: lesionsam export CKPT --out DIR"
            )
        read_manifest(self.checkpoint, verify_files=False)
        return Path(self.checkpoint)


@dataclass(frozen=True)
class PredictRequest:
    """One ``lesionsam predict`` call: ``input`` an image file (DICOM folder) and ``out`` a mask file, or both folders.

    Attributes:
        prompting: what to segment by; model: which model and how it runs.
        channel: for multi-channel images (4D NIfTI), the channel to segment.
        probabilities: also write lesion probabilities (a file for one image, a folder for a folder).
        binary: write 0/1 instead of one value per lesion (or per class, with ``auto``).
    """

    input: Path
    out: Path
    prompting: Prompting = field(default_factory=Prompting)
    model: ModelChoice = field(default_factory=ModelChoice)
    channel: int | None = None
    probabilities: Path | None = None
    binary: bool = False

    @classmethod
    def of(cls, input: PathLike, out: PathLike, **options: Any) -> PredictRequest:
        """A request from flat keyword options, each given to the section that has it, e.g.
        ``PredictRequest.of("ct.nii.gz", "m.nii.gz", clicks_from="labels.nii.gz", label=2, checkpoint="best.pt")``.

        Raises:
            TypeError: an option no section has.
        """
        sections: dict[str, dict[str, Any]] = {"prompting": {}, "model": {}, "request": {}}
        names = {
            "prompting": {f.name for f in fields(Prompting)},
            "model": {f.name for f in fields(ModelChoice)},
            "request": {"channel", "probabilities", "binary"},
        }
        for key, value in options.items():
            where = next((s for s, known in names.items() if key in known), None)
            if where is None:
                raise TypeError(f"PredictRequest.of: unknown option {key!r}")
            sections[where][key] = tuple(value) if key in ("points", "negatives", "boxes") else value
        probabilities = sections["request"].pop("probabilities", None)
        return cls(
            Path(input),
            Path(out),
            Prompting(**sections["prompting"]),
            ModelChoice(**sections["model"]),
            probabilities=Path(probabilities) if probabilities is not None else None,
            **sections["request"],
        )


@dataclass
class PredictedCase:
    """What was written for one input image."""

    image: Path
    mask: Path
    lesions: int
    windows: int
    seconds: float


@dataclass(frozen=True)
class _Job:
    image: Path
    mask: Path
    probabilities: Path | None


class _Models:
    """The predictor (and the refiner) of a request, each built once, when first needed."""

    def __init__(self, choice: ModelChoice, given: Predictor | None) -> None:
        self.choice = choice
        self._predictor = given
        self._refiner: Predictor | None = None

    def predictor(self) -> Predictor:
        if self._predictor is None:
            self._predictor = self.choice.build()
        return self._predictor

    def refiner(self, checkpoint: PathLike) -> Predictor:
        if self._refiner is None:
            self._refiner = self.choice.build(checkpoint, refiner=True)
        return self._refiner


def predict(
    request: PredictRequest,
    *,
    predictor: Predictor | None = None,
    progress: bool = True,
    announce: Callable[[str], None] | None = None,
) -> list[PredictedCase]:
    """Segment lesions in one image or a folder of images, as ``request`` says (see :class:`Prompting` for the modes).

    Every input is checked before the first write: no output path may be one of the inputs (also through a link),
    the mask and probabilities paths must be creatable image paths (or folders), and the checkpoint must look like
    one; no output folder is created before that. Files are written atomically (temp file + rename), a mask and its
    probabilities both or neither. The checkpoint is read once.

    Args:
        request: the call (:meth:`PredictRequest.of` builds one from flat options).
        predictor: reuse an existing :class:`Predictor` (then ``request.model`` is not used for it).
        progress: a progress bar over a folder's images.
        announce: called with a one-line note when the lesion label was not given (which one is used, and why).

    Returns:
        One :class:`PredictedCase` per image written.
    """
    prompting = request.prompting
    if not request.input.exists():
        raise FileNotFoundError(f"input not found: {request.input}")
    prompting.check()
    folder = request.input.is_dir() and not any(p.suffix == ".dcm" for p in request.input.iterdir())
    jobs = _plan(request, folder)
    _check_paths(request, jobs, folder)
    models = _Models(request.model, predictor)
    label = _lesion_label(prompting, models, announce)
    table = _prompt_table(prompting.prompts, folder)
    results = []
    bar = tqdm(jobs, desc="predict", unit="image", disable=not (progress and folder))
    for job in bar:
        volume = read_image(job.image, channel=request.channel)
        if volume.array.ndim == 4:
            raise ImageIOError(
                f"{job.image}: {volume.array.shape[0]} channels; choose one with --channel (e.g. the MRI sequence)"
            )
        found = _lesions_for(prompting, table, volume, job.image, folder, label)
        if found is None:
            continue
        lesions, world = found
        if prompting.clicks_from is not None and not lesions and not prompting.auto:
            models.predictor()  # a bad checkpoint fails before the first file is written
            write_image(np.zeros(volume.spatial_shape, np.uint8), job.mask, reference=volume)
            results.append(PredictedCase(job.image, job.mask, 0, 0, 0.0))  # a lesion-free case: an empty mask
            continue
        refiner = models.refiner(prompting.refine_checkpoint) if prompting.auto and lesions else None
        pred = predict_image(
            models.predictor(),
            volume,
            lesions,
            world=world,
            text=prompting.text,
            auto=prompting.auto,
            refiner=refiner,
            probabilities=job.probabilities is not None,
            min_lesion_mm3=prompting.min_lesion_mm3,
            compete=prompting.compete,
        )
        write_prediction(pred, job.mask, binary=request.binary, probabilities_path=job.probabilities)
        count = count_lesions(pred.labels) if prompting.auto or not lesions else len(lesions)
        results.append(PredictedCase(job.image, job.mask, count, sum(pred.windows.values()), round(pred.seconds, 3)))
    return results


def _plan(request: PredictRequest, folder: bool) -> list[_Job]:
    """The (image, mask, probabilities) paths of every image, with the output paths' own checks."""
    src, dst, prob = request.input, request.out, request.probabilities
    if prob is not None and image_suffix(prob) in _NO_FLOAT:
        raise ValueError(f"--probabilities {prob}: DICOM cannot hold float probabilities; use .nii.gz, .nrrd or .mha")
    if not folder:
        if not dst.name.endswith(IMAGE_SUFFIXES):
            raise ValueError(f"{dst}: --out needs an image file ending such as .nii.gz or .nrrd")
        if prob is not None and not prob.name.endswith(IMAGE_SUFFIXES):
            raise ValueError(
                f"--probabilities {prob}: needs an image file ending such as .nii.gz or .nrrd (nothing was written)"
            )
        return [_Job(src, dst, prob)]
    images = sorted(p for p in src.iterdir() if is_image_path(p))
    if not images:
        raise FileNotFoundError(f"{src}: no image files ({', '.join(IMAGE_SUFFIXES[:4])}, ...)")
    if request.prompting.points or request.prompting.boxes:
        raise ValueError("--point/--box describe one image; for a folder use --prompts FILE or --clicks-from")
    if dst.name.endswith(IMAGE_SUFFIXES):
        raise ValueError(f"{dst}: for a folder of images, --out must be a folder")
    if prob is not None and prob.name.endswith(IMAGE_SUFFIXES):
        raise ValueError(f"--probabilities {prob}: for a folder of images, give a folder")
    if prob is not None and any(image_suffix(img) in _NO_FLOAT for img in images):
        raise ValueError(f"--probabilities {prob}: DICOM inputs give DICOM outputs, which cannot hold probabilities")
    name = lambda img: f"{case_id(img)}{image_suffix(img)}"  # noqa: E731
    return [_Job(img, dst / name(img), prob / name(img) if prob is not None else None) for img in images]


def _check_paths(request: PredictRequest, jobs: Sequence[_Job], folder: bool) -> None:
    """Every output creatable, none of them an input, every input (and label map) readable: before any write."""
    prompting, prob = request.prompting, request.probabilities
    check_can_create(request.out, what="--out", folder=folder)
    if prob is not None:
        check_can_create(prob, what="--probabilities", folder=folder)
        if _same_path(prob, request.out):
            raise ValueError(
                f"--probabilities {prob} is the --out folder: the files would overwrite the masks"
                if folder
                else f"--probabilities {prob} is the same path as --out: give two different files"
            )
    reads = [("the input image", job.image) for job in jobs]
    reads += [("--prompts", prompting.prompts), ("--checkpoint", request.model.checkpoint)]
    reads += [("--refine-checkpoint", prompting.refine_checkpoint)]
    if prompting.clicks_from is not None and Path(prompting.clicks_from).exists():
        reads += [("--clicks-from", p) for p in _label_files(Path(prompting.clicks_from))]
    writes = [("--out", job.mask) for job in jobs] + [("--probabilities", job.probabilities) for job in jobs]
    refuse_inputs_as_outputs(writes, reads)
    if folder:  # every image (and its label map) is checked before the first mask is written
        for job in jobs:
            check_image_header(job.image)
            if prompting.clicks_from is not None:
                check_image_header(_label_path_for(case_id(job.image), Path(prompting.clicks_from), folder=True))
    if request.model.runtime != "torch":
        request.model.export_folder()
    elif request.model.checkpoint is not None:
        check_checkpoint_file(request.model.checkpoint)
    if prompting.refine_checkpoint is not None:
        check_checkpoint_file(prompting.refine_checkpoint)


def _lesion_label(prompting: Prompting, models: _Models, announce: Callable[[str], None] | None) -> int | None:
    """The lesion value of ``--clicks-from`` (given, or resolved: then announced)."""
    if prompting.clicks_from is None or prompting.label is not None:
        return prompting.label
    from lesionsam.data.labels import resolve_lesion_label

    label, where = resolve_lesion_label(
        None, prompting.clicks_from, checkpoint_label=lambda: models.predictor().trained_target_label
    )
    if announce is not None:
        announce(f"lesion label {label} (from {where}; --label N to choose)")
    return label


def _prompt_table(prompts: PathLike | None, folder: bool) -> dict[str | None, Any] | None:
    """A prompts file's lesions by case id (key None for one image)."""
    table = read_prompt_file(prompts) if prompts is not None else None
    if table is not None and folder and None in table:
        raise ValueError(f"{prompts}: a folder needs prompts per case id ({{'case_000': {{'lesions': [...]}}}})")
    if table is not None and not folder and None not in table:
        if len(table) != 1:
            raise ValueError(f"{prompts}: holds several cases; for one image give {{'lesions': [...]}}")
        table = {None: next(iter(table.values()))}
    return table


def _lesions_for(
    prompting: Prompting,
    table: dict[str | None, Any] | None,
    volume: Volume,
    image: Path,
    folder: bool,
    label: int | None,
) -> tuple[list[LesionClicks], bool] | None:
    """The lesions to segment in one image and whether their clicks are LPS mm; None: skip the image."""
    cid = case_id(image)
    if not prompting.click_sources:
        return [], prompting.world  # text alone or --auto: the whole volume is searched
    if prompting.points or prompting.boxes:
        return clicks_from_args(prompting.points, prompting.negatives, prompting.boxes), prompting.world
    if table is not None:
        if cid not in table and folder:
            log.warning("%s: no prompts for this case in %s; skipped", cid, prompting.prompts)
            return None
        return table[cid if folder else None]
    assert prompting.clicks_from is not None and label is not None
    return _clicks_from_label_for(volume, cid, Path(prompting.clicks_from), folder, label), False


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


def _clicks_from_label_for(volume: Volume, cid: str, source: Path, folder: bool, label: int) -> list[LesionClicks]:
    label_path = _label_path_for(cid, source, folder)
    lab = read_image(label_path)
    if not lab.same_geometry(volume):
        raise ValueError(
            f"{label_path} and the image of case {cid!r} have different geometry: {lab.geometry_difference(volume)}"
        )
    return clicks_from_label(lab, value=label, source=str(label_path), allow_empty=folder)
