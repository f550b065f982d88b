"""The whole-volume prediction modes, with no click: text alone (a text-referred method searches the volume for what
the text names, decided against the other trained classes) and automatic (a prompt-free method segments every lesion
class it was trained on). Both cover the canonical grid with MONAI's ``sliding_window_inference``.

:class:`WholeVolume` wraps a :class:`~lesionsam.inference.predictor.Predictor` (as segment-anything's automatic mask
generator wraps its predictor) and uses what its properties declare: the model, the current preprocessed image,
the threshold, the logit offset, the class texts and the class values.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from scipy.special import expit

from lesionsam.data.crops import crop_box, take
from lesionsam.data.transforms import Preprocessed, Preprocessor
from lesionsam.inference.postprocess import components_by_size as _components
from lesionsam.inference.postprocess import drop_small_components
from lesionsam.inference.prediction import Prediction, text_key
from lesionsam.inference.predictor import Predictor
from lesionsam.models import Prompts, SegModel
from lesionsam.models.interface import TextCompetition
from lesionsam.models.registry import methods_training_with
from lesionsam.utils.components import label_lesions

log = logging.getLogger("lesionsam.inference.predictor")


class WholeVolume:
    """Text-alone and automatic prediction over the whole volume of the predictor's current image.

    Args:
        predictor: the engine (its model, :meth:`~lesionsam.inference.predictor.Predictor.set_image`'s image and
            settings are used, never changed).

    Example:
        >>> predictor = Predictor.from_checkpoint("hsam.pt")
        >>> predictor.set_image(read_image("ct.nii.gz"))
        >>> labels = WholeVolume(predictor).predict_auto().labels
    """

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor

    @property
    def model(self) -> SegModel:
        return self.predictor.model

    @property
    def preprocessed(self) -> Preprocessed:
        return self.predictor.preprocessed

    @property
    def preprocessor(self) -> Preprocessor:
        return self.predictor.preprocessor

    @property
    def crop(self) -> int:
        return self.predictor.crop

    @property
    def device(self) -> torch.device:
        return self.predictor.device

    @property
    def threshold(self) -> float:
        return self.predictor.threshold

    @property
    def logit_offset(self) -> float:
        return self.predictor.logit_offset

    @property
    def class_texts(self) -> dict[int, tuple[str, ...]]:
        return self.predictor.class_texts

    @property
    def class_values(self) -> tuple[int, ...]:
        return self.predictor.class_values

    def competitors(self, text: str) -> tuple[str, ...]:
        """The texts that text alone naming ``text`` is decided against: the first text of every other class the
        model was trained on (:attr:`class_texts`), when ``text`` is one of exactly one class's texts (compared
        case- and spacing-insensitively); otherwise none (a free text is not a known class)."""
        key = text_key(text)
        own = [v for v, texts in self.class_texts.items() if key in {text_key(t) for t in texts}]
        if len(own) != 1:
            return ()
        return tuple(texts[0] for v, texts in self.class_texts.items() if v != own[0])

    def predict_text(
        self,
        text: str,
        *,
        probabilities: bool = False,
        overlap: float = 0.25,
        batch_size: int = 1,
        min_lesion_mm3: float = 0.0,
        compete: bool = True,
    ) -> Prediction:
        """Segment everything the text refers to, with no click: sliding windows over the whole volume.

        Windows of the model's crop size cover the canonical grid with ``overlap`` and Gaussian blending
        (MONAI's ``sliding_window_inference``); each connected component of the thresholded result becomes one
        lesion (ids 1, 2, ... by decreasing size); components under ``min_lesion_mm3`` are dropped.

        With ``compete`` (the default), a text that names one of the classes the model was trained on is decided
        against the others (:meth:`competitors`). A model with a region classifier (RefSAM3D's
        ``region_scores``) decides lesion by lesion: every connected component of the text's own mask (on the
        model's grid) is scored, in a window centred on it, against the text and its competitors, and is kept only
        where the text wins (``train.options.region_classes`` trains that decision). Otherwise each window is decoded
        with every class's text and a voxel is the text's where its class beats background and every other class in a
        softmax over them (:func:`~lesionsam.models.competing_logits`; ``train.options.text_competition``). Without
        known classes, or with ``compete=False``, the text's own logits are thresholded.
        """
        t0 = time.perf_counter()
        self.predictor.check_text(text)
        pre = self.preprocessed
        rivals = self.competitors(text) if compete else ()
        competition = TextCompetition.of(self.model, rivals)
        by_region = competition.by_region
        if rivals:
            log.info('text "%s" is decided against the other trained class texts: %s', text, ", ".join(rivals))

        def run(x: torch.Tensor) -> torch.Tensor:
            n = x.shape[0]
            if not competition.by_voxel:
                return self.model(x, Prompts(text=[text] * n)).logits[:, :1].float() - self.logit_offset
            encoded = self.model.encode(x)
            own = self.model.decode(encoded, Prompts(text=[text] * n)).logits[:, :1].float() - self.logit_offset
            return competition.logits(self.model, encoded, own, offset=self.logit_offset)

        logits = self._sliding_windows(run, overlap=overlap, batch_size=batch_size)
        prob = expit(logits[0])
        if by_region:
            prob = np.where(self._regions_won(prob > self.threshold, (text, *rivals)), prob, 0.0)
        prob_orig = self.preprocessor.invert(prob.astype(np.float32), pre, interpolation="linear")
        fg = drop_small_components(prob_orig > self.threshold, pre.source.spacing, min_lesion_mm3)
        labels = _components(fg)
        return Prediction(
            labels=labels,
            probabilities=prob_orig.astype(np.float32) if probabilities else None,
            reference=pre.source,
            windows={},
            seconds=time.perf_counter() - t0,
            competitors=rivals,
        )

    def _regions_won(self, mask: np.ndarray, texts: Sequence[str]) -> np.ndarray:
        """The part of a canonical-grid mask whose connected components the model's region classifier gives to
        ``texts[0]`` rather than to any other of ``texts``: each component is scored in a model window centred
        on its centre of mass (the part of it inside that window)."""
        pre = self.preprocessed
        keep = np.zeros_like(mask)
        comps, n = label_lesions(mask)
        for c in range(1, n + 1):
            component = comps == c
            box = crop_box(ndimage.center_of_mass(component), self.crop, mask.shape)
            window = take(pre.image.astype(np.float32, copy=False), box, pad_value=float(pre.background))
            region = torch.from_numpy(take(component, box))[None, None]
            with torch.inference_mode():
                encoded = self.model.encode(torch.from_numpy(window)[None, None].to(self.device))
                scores = self.model.region_scores(encoded, 0, region, list(texts))
            if int(scores[0].argmax()) == 0:
                keep |= component
        return keep

    def _sliding_windows(self, run: Any, *, overlap: float, batch_size: int, progress: bool = False) -> np.ndarray:
        """``run`` ((n, 1, S, S, S) crops → (n, C, S, S, S) float) over the whole canonical grid with MONAI's
        ``sliding_window_inference`` (Gaussian blending, ``batch_size`` windows per call; windows run on the
        model's device, the blended result is kept on the CPU). Returns (C, D, H, W) float32."""
        from monai.inferers import sliding_window_inference

        if not 0.0 <= overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        pre = self.preprocessed
        image = torch.from_numpy(np.ascontiguousarray(pre.image, dtype=np.float32))[None, None]
        with torch.inference_mode():
            out = sliding_window_inference(
                image,
                roi_size=(self.crop,) * 3,
                sw_batch_size=batch_size,
                predictor=run,
                overlap=overlap,
                mode="gaussian",
                padding_mode="constant",
                cval=float(pre.background),
                sw_device=self.device,
                device=torch.device("cpu"),
                progress=progress,
            )
        return out[0].float().numpy()

    def predict_auto(
        self,
        *,
        probabilities: bool = False,
        overlap: float = 0.25,
        batch_size: int = 2,
        progress: bool = False,
        min_lesion_mm3: float = 0.0,
    ) -> Prediction:
        """Segment every lesion class of a prompt-free model in the whole volume, with no prompt at all.

        Sliding windows (``overlap``, Gaussian blending of the softmax probabilities, ``batch_size`` windows per
        forward pass) cover the canonical grid; the K + 1 class probabilities are resampled linearly onto the
        input's grid and their arg-max is written as :attr:`class_values` (0 background). Each connected component
        of a class is one lesion.

        Args:
            probabilities: also return the lesion probability (1 − background probability) on the input grid.
            overlap: window overlap in [0, 1).
            batch_size: windows per forward pass.
            progress: show MONAI's progress bar over the window batches.
            min_lesion_mm3: drop connected components (of each class) smaller than this volume, mm³.

        Raises:
            ValueError: the model needs prompts (``--auto`` needs a prompt-free method such as ``hsam``).
        """
        t0 = time.perf_counter()
        if not self.model.prompt_free:
            raise ValueError(
                f"{self.model.display_name} needs clicks or text; --auto needs the checkpoint of a prompt-free method "
                f"({', '.join(methods_training_with('automatic'))})"
            )
        pre = self.preprocessed

        def run(x: torch.Tensor) -> torch.Tensor:
            return self.model(x).logits.float().softmax(1)

        prob = self._sliding_windows(run, overlap=overlap, batch_size=batch_size, progress=progress)
        t_windows = time.perf_counter()
        back = np.stack([self.preprocessor.invert(np.ascontiguousarray(c), pre, interpolation="linear") for c in prob])
        lut = np.asarray((0, *self.class_values), dtype=np.uint16)
        labels = lut[np.argmax(back, axis=0)]
        if min_lesion_mm3 > 0:
            for value in self.class_values:
                small = (labels == value) & ~drop_small_components(labels == value, pre.source.spacing, min_lesion_mm3)
                labels[small] = 0
        return Prediction(
            labels=labels,
            probabilities=(1.0 - back[0]).astype(np.float32) if probabilities else None,
            reference=pre.source,
            windows={},
            seconds=time.perf_counter() - t0,
            stages={"sliding windows": t_windows - t0, "back to the input grid": time.perf_counter() - t_windows},
        )
