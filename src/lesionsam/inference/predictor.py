"""Click-prompted lesion segmentation of whole volumes, written back on the input's own grid.

The :class:`Predictor` holds a model and how it is run (preprocessing, threshold, windows, logit offset, dtype) and
follows segment-anything's ``set_image`` / ``predict`` split: ``set_image`` preprocesses a volume once (canonical
orientation, isotropic spacing, normalised intensities); ``predict`` segments any number of lesions, each from its own
clicks (and box), by opening a throwaway :class:`~lesionsam.inference.session.InteractiveSession` — the one engine —
and adding each lesion's prompts (:meth:`InteractiveSession.add
<lesionsam.inference.session.InteractiveSession.add>`):

1. the clicks (ITK voxel indices of the *original* image, or LPS millimetres) are checked and mapped onto the
   canonical grid; a model crop of side S is centred on the lesion's first positive click (or its box's centre);
2. the crop is encoded once and the clicks are decoded one after another, each decode receiving the previous
   low-res logits as a mask prompt (as SAM-Med3D's interactive protocol and training do);
3. while the mask touches a face of its crop that is not the volume's border, a window shifted by S/2 over
   that face is segmented too, up to ``max_windows`` windows per lesion, so lesions larger than one crop are covered
   (steps 2-3: :class:`~lesionsam.inference.windows.WindowRunner`);
4. each lesion keeps the connected components its positive clicks touch; its probability is resampled linearly onto
   the original grid inside its region and thresholded at ``threshold``; where lesions overlap, a voxel goes to the
   more confident one.

The result is a label map on the input's exact grid: one value per lesion (1, 2, ...) or a binary mask. Without
clicks, :class:`~lesionsam.inference.whole_volume.WholeVolume` wraps a predictor for text alone (a text-referred
method) and automatic prediction (a prompt-free method).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lesionsam.data.io import ImageIOError, Volume, check_intensities, read_image, write_images
from lesionsam.data.transforms import PreprocessConfig, Preprocessed, Preprocessor
from lesionsam.inference.prediction import LesionClicks, Prediction
from lesionsam.inference.session import InteractiveSession
from lesionsam.inference.windows import WindowRunner
from lesionsam.inference.zoom import ZoomPolicy
from lesionsam.models import ModelConfig, SegModel, build_model
from lesionsam.models.checkpoint import FORMAT, load_sam_med3d_weights, read_weights_file
from lesionsam.models.registry import load_model

log = logging.getLogger(__name__)


def target_label_of(data: Mapping[str, Any]) -> int | None:
    """The lesion label a training run's ``data`` section trained on: ``target_label`` when it trained on one target
    (no ``target_labels``), else None."""
    value = data.get("target_label")
    return int(value) if isinstance(value, int) and not data.get("target_labels") else None


def _trained_class_texts(ckpt: Mapping[str, Any], data: Mapping[str, Any]) -> dict[int, list[str]]:
    """The class texts a text-referred lesionsam checkpoint was trained on: what the trainer stored
    (``extra.class_texts``), else the run's ``data.label_texts`` for its target labels (older checkpoints)."""
    stored = (ckpt.get("extra") or {}).get("class_texts")
    if stored:
        return {int(k): [str(t) for t in v] for k, v in stored.items()}
    given = {int(k): [str(t) for t in v] for k, v in (data.get("label_texts") or {}).items()}
    targets = data.get("target_labels") or [data.get("target_label", 1)]
    return {int(t): given[int(t)] for t in targets if given.get(int(t))}


class Predictor:
    """Segments lesions from clicks in whole volumes (see the module docstring for the algorithm).

    Args:
        model: a click-promptable :class:`~lesionsam.models.SegModel` (e.g. SAM-Med3D) in eval mode.
        preprocess: how volumes are brought onto the model's grid; its ``crop_size`` is set to the model's.
        device: torch device for the model.
        threshold: probability above which a voxel belongs to a lesion.
        max_windows: most model crops per lesion (1 disables growing beyond the first crop).
        clicked_only: for clicks, keep only the connected components of the mask that a positive click touches
            (:func:`~lesionsam.inference.postprocess.keep_clicked_components`); False keeps everything the windows
            found.
        class_values: for a prompt-free model, the label value written for each of its K lesion classes (default
            1..K; :meth:`from_checkpoint` takes the training run's ``data.target_labels``).
        class_texts: for a text-referred model, the texts of each label value it was trained on
            (:meth:`from_checkpoint` takes them from the checkpoint); text alone naming one of these classes is
            decided against the others (:meth:`predict_text`).
        logit_offset: subtracted from every window's logits before the sigmoid, the threshold and the window
            growing (logit adjustment, ``train.logit_adjustment``: the prior shift the training loss built in);
            :meth:`from_checkpoint` takes it from the checkpoint (``extra["logit_adjustment"]``; 0 for official
            weights and older runs). Prior logits fed back to the model keep the model's own scale.
        zoom: segment small lesions again in a zoomed window (:class:`~lesionsam.inference.zoom.ZoomPolicy`: when,
            how much); None segments every lesion on the model's usual grid.
        dtype: "bfloat16" runs clicks and boxes under bfloat16 autocast, encoding with a copy of the model whose
            linear and convolution weights are bfloat16 (made on first use: those weights again at half size), so
            that autocast does not cast them at every crop (:class:`WindowRunner`).

    Example:
        >>> predictor = Predictor.from_checkpoint("sam_med3d_turbo.pth", preset="sam_med3d_vit_b")
        >>> predictor.set_image(read_image("ct.nii.gz"))
        >>> result = predictor.predict([LesionClicks(points=[[120, 200, 40]], labels=[1])])
    """

    def __init__(
        self,
        model: SegModel,
        *,
        preprocess: PreprocessConfig | None = None,
        device: str | torch.device = "cpu",
        threshold: float = 0.5,
        max_windows: int = 8,
        class_values: Sequence[int] | None = None,
        class_texts: Mapping[int, Sequence[str]] | None = None,
        logit_offset: float = 0.0,
        clicked_only: bool = True,
        dtype: str = "float32",
        zoom: ZoomPolicy | None = None,
    ) -> None:
        kinds = model.accepted_prompts | model.required_prompts
        if not kinds & {"points", "text"} and not model.prompt_free:
            raise ValueError(f"{model.display_name} takes neither clicks nor text and is not prompt-free")
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be a probability in (0, 1), got {threshold}")
        if dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype must be float32 or bfloat16, got {dtype!r}")
        self.dtype = torch.bfloat16 if dtype == "bfloat16" else torch.float32
        self._encoder: SegModel | None = None  # the bfloat16 copy of the model that encodes (dtype bfloat16)
        if max_windows < 1:
            raise ValueError(f"max_windows must be >= 1, got {max_windows}")
        if (
            isinstance(logit_offset, bool)
            or not isinstance(logit_offset, (int, float))
            or not math.isfinite(logit_offset)
        ):
            raise ValueError(f"logit_offset must be a finite number (0 = no logit adjustment), got {logit_offset!r}")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.crop = int(model.img_size)
        cfg = preprocess or PreprocessConfig()
        if cfg.crop_size != self.crop:
            cfg = PreprocessConfig(**{**cfg.__dict__, "crop_size": self.crop})
        self.preprocessor = Preprocessor(cfg)
        self.threshold = threshold
        self.max_windows = max_windows
        self.class_values = self._class_values(model, class_values)
        self.class_texts = {int(k): tuple(str(t) for t in v) for k, v in (class_texts or {}).items() if v}
        self.logit_offset = float(logit_offset)
        self.clicked_only = bool(clicked_only)
        if zoom is not None and not isinstance(zoom, ZoomPolicy):
            raise ValueError(f"zoom must be a ZoomPolicy or None, got {zoom!r}")
        self.zoom = zoom
        self._pre: Preprocessed | None = None
        #: the ``data`` section of the training run of a lesionsam checkpoint (:meth:`from_checkpoint`), else empty
        self.training_data: dict[str, Any] = {}

    @staticmethod
    def _class_values(model: SegModel, given: Sequence[int] | None) -> tuple[int, ...]:
        if not model.prompt_free:
            return ()
        k = int(model.num_classes)
        values = tuple(int(v) for v in given) if given else tuple(range(1, k + 1))
        if len(values) != k or len(set(values)) != k or min(values) < 1 or max(values) > 65535:
            raise ValueError(f"class_values must be {k} distinct label values in 1..65535 (one per class), got {given}")
        return values

    # ------------------------------------------------------------------------------------------ construction
    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | os.PathLike[str] | None,
        *,
        preset: str | None = None,
        device: str | torch.device = "cpu",
        modality: str | None = None,
        spacing: tuple[float, float, float] | None = None,
        **kwargs: Any,
    ) -> Predictor:
        """A predictor from a lesionsam checkpoint, or an official SAM-Med3D file plus a preset.

        Args:
            checkpoint: path to a lesionsam checkpoint (method, sizes and the training run's preprocessing are
                stored in it) or an official SAM-Med3D / SAM-Med3D-turbo file; None builds randomly initialised
                weights (for smoke tests: the masks are meaningless, and a warning says so).
            preset: backbone preset for official files or random weights (default ``sam_med3d_vit_b``).
            modality, spacing: intensity normalisation and model voxel size; None takes them from the lesionsam
                checkpoint's training config, else CT and 1.5 mm (SAM-Med3D's).
            kwargs: passed to :class:`Predictor` (``threshold``, ``max_windows``, ``logit_offset``: None or absent
                takes the checkpoint's ``extra["logit_adjustment"]``).
        """
        data: dict[str, Any] = {}
        if checkpoint is None:
            warnings.warn("no checkpoint given: random weights, the masks are meaningless", stacklevel=2)
            model = build_model(ModelConfig.from_preset(preset or "sam_med3d_vit_b"))
        else:
            obj = read_weights_file(checkpoint)
            if isinstance(obj, dict) and obj.get("format") == FORMAT:
                if preset:
                    log.info("--preset %s ignored: the lesionsam checkpoint stores its own sizes", preset)
                model, ckpt = load_model(checkpoint, content=obj)  # the file is read once
                data = dict((ckpt.get("config") or {}).get("data") or {})
                if model.prompt_free and "class_values" not in kwargs:
                    kwargs["class_values"] = data.get("target_labels") or [data.get("target_label", 1)]
                if "text" in model.accepted_prompts | model.required_prompts and "class_texts" not in kwargs:
                    kwargs["class_texts"] = _trained_class_texts(ckpt, data)
                if kwargs.get("logit_offset") is None:  # logit adjustment of the training run (0 before it existed)
                    kwargs["logit_offset"] = float((ckpt.get("extra") or {}).get("logit_adjustment", 0.0))
            else:
                model = build_model(ModelConfig.from_preset(preset or "sam_med3d_vit_b"))
                load_sam_med3d_weights(model, obj if isinstance(obj, dict) else checkpoint)
        pre = PreprocessConfig(
            modality=modality or data.get("modality") or "CT",
            spacing=tuple(spacing or data.get("spacing") or (1.5, 1.5, 1.5)),  # type: ignore[arg-type]
        )
        predictor = cls(model, device=device, preprocess=pre, **kwargs)
        predictor.training_data = data
        return predictor

    # ------------------------------------------------------------------------------------------ image
    def set_image(self, image: Volume | str | os.PathLike[str]) -> Preprocessed:
        """Preprocess a volume (or read and preprocess a file) for the next :meth:`predict` calls."""
        self._pre = self.prepare(image)
        return self._pre

    def prepare(self, image: Volume | str | os.PathLike[str]) -> Preprocessed:
        """A volume (or file) checked and preprocessed onto the model's grid, without making it the current image
        (sessions sharing this predictor each keep their own)."""
        volume = image if isinstance(image, Volume) else read_image(image)
        if volume.array.ndim != 3:
            raise ImageIOError(
                f"the image has {volume.array.shape[0]} channels; choose one (e.g. the MRI sequence) first"
            )
        check_intensities(volume, source=str(image) if not isinstance(image, Volume) else "image")
        return dataclasses.replace(self.preprocessor(volume), raw=volume)  # the image is kept for zoomed views

    @property
    def preprocessed(self) -> Preprocessed:
        if self._pre is None:
            raise RuntimeError("call set_image() before predict()")
        return self._pre

    def check_text(self, text: str | None) -> None:
        """Whether ``text`` (None: no text) fits the model's prompts; ``ValueError`` saying what to give otherwise."""
        model = self.model
        if model.prompt_free:
            raise ValueError(
                f"{model.display_name} is prompt-free: it takes no clicks or text; use --auto "
                "(WholeVolume(predictor).auto()), or refine with a promptable checkpoint"
            )
        kinds = model.accepted_prompts | model.required_prompts
        if text is not None and "text" not in kinds:
            raise ValueError(f"{model.display_name} does not take text prompts; give clicks instead")
        if text is None and "text" in model.required_prompts:
            raise ValueError(f'{model.display_name} needs a text prompt (--text "liver tumour")')
        if text is not None and not text.strip():
            raise ValueError("the text prompt is empty")

    @property
    def trained_target_label(self) -> int | None:
        """``data.target_label`` of the checkpoint's training run when it trained on one target, else None."""
        return target_label_of(self.training_data)

    def runner(self, pre: Preprocessed | None = None) -> WindowRunner:
        """The window engine on ``pre`` (default: the current image); the interactive session uses the same one."""
        return WindowRunner(
            self.model,
            pre if pre is not None else self.preprocessed,
            device=self.device,
            logit_offset=self.logit_offset,
            max_windows=self.max_windows,
            dtype=self.dtype,
            encoder=self._low_precision_encoder(),
        )

    def _low_precision_encoder(self) -> SegModel | None:
        if self.dtype == torch.float32:
            return None
        if self._encoder is None:  # matrix-product weights in bfloat16; norms, positions, tables stay float32
            self._encoder = copy.deepcopy(self.model).eval()
            for module in self._encoder.modules():
                if isinstance(module, (torch.nn.Linear, torch.nn.Conv3d)):
                    module.to(self.dtype)
        return self._encoder

    # ------------------------------------------------------------------------------------------ public
    def predict(
        self,
        lesions: Sequence[LesionClicks],
        *,
        world: bool = False,
        probabilities: bool = False,
        text: str | None = None,
    ) -> Prediction:
        """Segment every lesion of the current image from its clicks.

        Args:
            lesions: one :class:`LesionClicks` per lesion (ids must be distinct).
            world: the clicks are LPS mm (True) rather than ITK voxel indices (i, j, k) of the image.
            probabilities: also return the lesion probability map on the original grid.
            text: a text prompt given with every lesion's clicks (text-referred methods).

        Returns:
            :class:`Prediction` on the input's grid.
        """
        t0 = time.perf_counter()
        if not lesions:
            raise ValueError("no lesion to segment: give at least one click")
        ids = [int(les.lesion_id) for les in lesions]
        if len(set(ids)) != len(ids):
            raise ValueError(f"lesion ids must be distinct, got {ids}")
        session = InteractiveSession(self, self.preprocessed, text=text)
        for les in lesions:  # every prompt is checked before the first lesion is segmented
            session.check_prompts(les, world=world)
        for les in lesions:
            session.add(les, world=world)
        return session.prediction(probabilities=probabilities, started=t0)


def write_prediction(
    prediction: Prediction,
    out: str | os.PathLike[str],
    *,
    binary: bool = False,
    probabilities_path: str | os.PathLike[str] | None = None,
) -> Path:
    """Write the label map (uint8 when it fits) and optionally the probabilities, on the input's grid: both or
    neither (:func:`~lesionsam.data.io.write_images`)."""
    labels = (prediction.labels > 0).astype(np.uint8) if binary else prediction.labels
    if not binary and labels.max(initial=0) < 256:
        labels = labels.astype(np.uint8)
    items: list[tuple[np.ndarray, str | os.PathLike[str]]] = [(labels, out)]
    if probabilities_path is not None:
        if prediction.probabilities is None:
            raise ValueError("probabilities were not computed: call predict(..., probabilities=True)")
        items.append((prediction.probabilities, probabilities_path))
    return write_images(items, reference=prediction.reference)[0]
