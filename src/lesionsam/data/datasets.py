"""Crop data sets for training: :class:`LesionCropDataset` ((1, S, S, S) crops around a target lesion label, for
prompted methods) and :class:`ClassCropDataset` (foreground-biased multi-class crops, for prompt-free methods).

The cases come from :mod:`lesionsam.data.layouts` (MSD / nnU-Net and SAM-Med3D folders), the splits from
:mod:`lesionsam.data.splits`, the integrity check before training from :mod:`lesionsam.data.verify`.

Label conventions: the target label is the integer value of the lesion class, e.g. MSD Task03 liver tumour = 2,
MSD Task01 brain enhancing tumour = 3 (on a chosen MRI channel: 0 FLAIR, 1 T1w, 2 T1gd, 3 T2w).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from lesionsam.data.crops import CropBox, crop_around_label, take
from lesionsam.data.layouts import (
    Case,
    listing,
)
from lesionsam.data.transforms import Preprocessed, Preprocessor
from lesionsam.data.zoom_crops import ZoomCrops, zoomed_crop

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------------------
# Training data set
# ---------------------------------------------------------------------------------------------------------------


class _PreprocessedCases(Dataset):
    """Labelled cases, preprocessed on first use (kept in memory with ``cache``), one item per case."""

    def __init__(
        self, cases: Sequence[Case], preprocessor: Preprocessor, *, channel: int | None, cache: bool, owner: str
    ) -> None:
        if not cases:
            raise ValueError(f"{owner} needs at least one case")
        unlabelled = [c.case_id for c in cases if c.label is None]
        if unlabelled:
            raise ValueError(f"{len(unlabelled)} case(s) have no label, needed for training: {listing(unlabelled)}")
        self.cases = list(cases)
        self.preprocessor = preprocessor
        self.channel = channel
        self.cache = cache
        self._cache: dict[int, Preprocessed] = {}

    def __len__(self) -> int:
        return len(self.cases)

    def preprocessed(self, index: int) -> Preprocessed:
        """The preprocessed case ``index`` (from the cache when ``cache=True``)."""
        if index in self._cache:
            return self._cache[index]
        case = self.cases[index]
        image = case.read_image(self.channel)
        if image.array.ndim == 4:
            raise ValueError(
                f"case {case.case_id} has {image.array.shape[0]} channels; pass channel= to {type(self).__name__} "
                "(MSD brain tumour: 0 FLAIR, 1 T1w, 2 T1gd, 3 T2w)"
            )
        try:
            pre = self.preprocessor(image, case.read_label())
        except ValueError as exc:
            raise ValueError(f"case {case.case_id}: {exc}") from exc
        if self.cache:
            self._cache[index] = pre
        return pre

    @staticmethod
    def _item_rng() -> np.random.Generator:
        """One draw from torch's generator seeds the item's randomness (reproducible, distinct per worker)."""
        return np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))

    def _crop(
        self, pre: Preprocessed, centre_on: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, CropBox]:
        """A ``crop_size``³ crop around a lesion of ``centre_on`` (``lesion``, ``jitter``; anywhere if it is empty),
        padded with the normalised background."""
        return crop_around_label(
            pre.image,
            centre_on,
            self.crop_size,  # type: ignore[attr-defined]
            rng=rng,
            lesion=self.lesion,  # type: ignore[attr-defined]
            jitter=self.jitter,  # type: ignore[attr-defined]
            pad_value=pre.background,
        )

    def _item(self, image: np.ndarray, target: np.ndarray, index: int) -> dict[str, Any]:
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None],
            "label": torch.from_numpy(target)[None],
            "case_id": self.cases[index].case_id,
        }


class LesionCropDataset(_PreprocessedCases):
    """Cubic training crops around a target lesion label, on the canonical (preprocessed) grid.

    Each item reads the case (or takes it from the in-memory cache), preprocesses it with ``preprocessor``,
    makes the binary target mask ``label == target_label`` and crops ``crop_size``³ voxels around one lesion
    (:func:`~lesionsam.data.transforms.crop_around_label`: a random lesion, or the largest, with jitter). A case
    with no target voxels gives a crop centred on a random voxel (an all-zero target mask: a negative example).
    The image is padded with the normalised background value, the mask with 0.

    **Negative crops** (``negatives`` > 0, for methods prompted without a click: text-referred or automatic):
    that share of items is centred away from the target: on a lesion of one of the ``distractors`` label values
    (half of them, when the case has one; always with ``lesion="largest"``, then on the largest) or else on a
    uniformly random voxel of the volume. Their target mask is still ``label == target_label`` inside the crop,
    usually empty: the model learns to answer "nothing of this class here", which a whole-volume search needs.

    Randomness comes from torch's generator (one draw per item), so ``torch.manual_seed`` and DataLoader
    worker seeding make crops reproducible and differ between workers.

    Args:
        cases: labelled cases.
        preprocessor: the :class:`~lesionsam.data.transforms.Preprocessor` (its ``config.crop_size`` is the
            default crop size).
        target_label: the lesion label value (MSD liver tumour = 2, MSD brain enhancing tumour = 3).
        channel: the image channel for multi-channel cases (MSD brain: 0 FLAIR, 1 T1w, 2 T1gd, 3 T2w).
        crop_size: crop side in canonical voxels; None uses ``preprocessor.config.crop_size``.
        cache: keep preprocessed volumes in memory after the first read (per DataLoader worker process).
        lesion: "random" (every lesion equally often) or "largest".
        jitter: maximum shift of the crop centre in voxels; None = crop_size // 8.
        negatives: share of negative crops, in [0, 1] (1: every item is one, e.g. for validation).
        distractors: label values whose lesions negative crops centre on (typically the other lesion classes).

    Items:
        ``{"image": (1, S, S, S) float32 tensor, "label": (1, S, S, S) float32 tensor of 0/1, "case_id": str}``,
        axes (D, H, W) of the canonical grid; with ``distractors`` also ``"label_values"``: (1, S, S, S) int64, the
        crop's voxels of the target and distractor label values (0 elsewhere).

    Raises:
        ValueError: no cases, cases without labels, a target label < 1, or ``negatives`` outside [0, 1].
    """

    def __init__(
        self,
        cases: Sequence[Case],
        preprocessor: Preprocessor,
        *,
        target_label: int,
        channel: int | None = None,
        crop_size: int | None = None,
        cache: bool = False,
        lesion: Literal["random", "largest"] = "random",
        jitter: int | None = None,
        negatives: float = 0.0,
        distractors: Sequence[int] = (),
        zoom: ZoomCrops | None = None,
    ) -> None:
        super().__init__(cases, preprocessor, channel=channel, cache=cache, owner="LesionCropDataset")
        self.zoom = zoom
        if not 0.0 <= float(negatives) <= 1.0:
            raise ValueError(f"negatives must be a share in [0, 1], got {negatives!r}")
        self.target_label = _label_value(target_label)
        self.crop_size = int(crop_size if crop_size is not None else preprocessor.config.crop_size)
        self.lesion = lesion
        self.jitter = self.crop_size // 8 if jitter is None else int(jitter)
        self.negatives = float(negatives)
        self.distractors = tuple(int(v) for v in distractors if int(v) != self.target_label)

    def __getitem__(self, index: int) -> dict[str, Any]:
        pre = self.preprocessed(index)
        assert pre.label is not None
        rng = self._item_rng()
        mask = pre.label == self.target_label
        centre_on = mask
        if self.negatives and (self.negatives >= 1.0 or rng.random() < self.negatives):
            others = np.isin(pre.label, self.distractors) if self.distractors else np.zeros_like(mask)
            use_other = others.any() and (self.lesion == "largest" or rng.random() < 0.5)
            centre_on = others if use_other else np.zeros_like(mask)
        if self.zoom is not None and centre_on is mask and mask.any() and rng.random() < self.zoom.fraction:
            return self._zoomed(pre, mask, rng, index)
        image, target, box = self._crop(pre, centre_on, rng)
        if centre_on is not mask:
            target = take(mask, box)
        item = self._item(image, target.astype(np.float32), index)
        if self.distractors:  # the crop's lesion classes, for training another class's text on the same crop
            values = np.where(np.isin(pre.label, (self.target_label, *self.distractors)), pre.label, 0)
            item["label_values"] = torch.from_numpy(take(values.astype(np.int64), box))[None]
        return item

    def _zoomed(self, pre: Preprocessed, mask: np.ndarray, rng: np.random.Generator, index: int) -> dict[str, Any]:
        """A multi-scale crop (:func:`~lesionsam.data.zoom_crops.zoomed_crop`), the item's keys as an ordinary one."""
        assert self.zoom is not None and pre.label is not None
        values = None
        if self.distractors:
            values = np.where(np.isin(pre.label, (self.target_label, *self.distractors)), pre.label, 0).astype(np.int64)
        image, target, _, kept = zoomed_crop(
            pre.image,
            mask,
            self.crop_size,
            rng=rng,
            zoom=self.zoom,
            largest=self.lesion == "largest",
            pad_value=pre.background,
            values=values,
        )
        item = self._item(image, target.astype(np.float32), index)
        if kept is not None:
            item["label_values"] = torch.from_numpy(kept)[None]
        return item


def _label_value(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"target_label must be a positive label value (0 is background), got {value!r}")
    return int(value)


class ClassCropDataset(_PreprocessedCases):
    """Multi-class training crops over whole volumes, for prompt-free methods (no click to centre on).

    Each item is a cubic crop of the canonical grid with a class-index target: 0 background (everything that is not
    one of ``classes``), ``i + 1`` for label value ``classes[i]``. Sampling is foreground-biased, like sliding
    windows with nnU-Net-style oversampling: with probability ``foreground`` the crop is centred on a lesion (a
    class drawn uniformly among those present in the case, so a rare class is seen as often as a common one, then
    a random lesion of it, shifted by up to ``jitter`` voxels); otherwise it is centred on a uniformly random voxel
    of the volume. Cases without any lesion give random crops only. With ``lesion="largest"`` (validation) the
    lesion crops are centred on the largest lesion of the case's first present class, without randomness.

    Args:
        cases: labelled cases (lesion-free ones included).
        preprocessor: the :class:`~lesionsam.data.transforms.Preprocessor`.
        classes: the label values of the K lesion classes, in output-channel order (e.g. ``(2, 4)``).
        channel: the image channel of multi-channel cases.
        crop_size: crop side in canonical voxels (None: ``preprocessor.config.crop_size``).
        cache: keep preprocessed volumes in memory.
        foreground: probability in [0, 1] of a lesion-centred crop.
        lesion: "random" or "largest".
        jitter: maximum shift of a lesion-centred crop, voxels (None: crop_size // 4).

    Items:
        ``{"image": (1, S, S, S) float32, "label": (1, S, S, S) int64 class indices in [0, K], "case_id": str}``,
        axes (D, H, W) of the canonical grid.
    """

    def __init__(
        self,
        cases: Sequence[Case],
        preprocessor: Preprocessor,
        *,
        classes: Sequence[int],
        channel: int | None = None,
        crop_size: int | None = None,
        cache: bool = False,
        foreground: float = 0.67,
        lesion: Literal["random", "largest"] = "random",
        jitter: int | None = None,
    ) -> None:
        super().__init__(cases, preprocessor, channel=channel, cache=cache, owner="ClassCropDataset")
        values = tuple(_label_value(v) for v in classes)
        if not values or len(set(values)) != len(values):
            raise ValueError(f"classes must be distinct positive label values, got {list(classes)}")
        if not 0.0 <= float(foreground) <= 1.0:
            raise ValueError(f"foreground must be a probability in [0, 1], got {foreground!r}")
        self.classes = values
        self.crop_size = int(crop_size if crop_size is not None else preprocessor.config.crop_size)
        self.foreground = float(foreground)
        self.lesion = lesion
        self.jitter = self.crop_size // 4 if jitter is None else int(jitter)

    def class_map(self, label: np.ndarray) -> np.ndarray:
        """(D, H, W) label values → int64 class indices (0 background, i + 1 for ``classes[i]``)."""
        lut = np.zeros(max(int(label.max(initial=0)), *self.classes) + 1, dtype=np.int64)
        for i, value in enumerate(self.classes):
            lut[value] = i + 1
        return lut[label.astype(np.int64, copy=False)]

    def __getitem__(self, index: int) -> dict[str, Any]:
        pre = self.preprocessed(index)
        assert pre.label is not None
        rng = self._item_rng()
        present = [v for v in self.classes if (pre.label == v).any()]
        centre_on = np.zeros(pre.label.shape, dtype=bool)
        if present and (self.foreground >= 1.0 or rng.random() < self.foreground):
            value = present[0] if self.lesion == "largest" else present[int(rng.integers(len(present)))]
            centre_on = pre.label == value
        image, _, box = self._crop(pre, centre_on, rng)
        return self._item(image, take(self.class_map(pre.label), box), index)
