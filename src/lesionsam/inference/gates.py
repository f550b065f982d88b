"""Gate activation of a gated model (SGP-SAM) by crop content: for each lesion of a labelled image, the share of gates
open for the model crop centred on it (as the predictor crops it for a centre click), and the same for crops that hold
no lesion. The evaluator's report turns these into activation by lesion size."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from lesionsam.data.crops import crop_or_pad
from lesionsam.data.io import Volume
from lesionsam.data.transforms import Preprocessed
from lesionsam.inference.predictor import Predictor
from lesionsam.utils.components import label_lesions

#: Lesion-free crops per image at which the gates are also read (crop content "no lesion").
NO_LESION_CROPS = 2


@dataclass(frozen=True)
class CropGates:
    """The gates of one crop: ``lesion`` the component number on the input grid (0 for a lesion-free crop), its
    volume in mL (0 for a lesion-free crop) and the share of the model's gates open for the crop."""

    lesion: int
    volume_ml: float
    gate_rate: float


def lesion_free_centres(pre: Preprocessed, label: int, crop: int, rng: np.random.Generator) -> np.ndarray:
    """Up to :data:`NO_LESION_CROPS` canonical (d, h, w) centres whose crop holds no voxel of ``label``: seeded
    random voxels of the labelled anatomy (else of the body) at least half a crop from every lesion."""
    assert pre.label is not None
    lesion = pre.label == label
    near = ndimage.maximum_filter(lesion, size=crop + 1) if lesion.any() else lesion
    anatomy = (pre.label > 0) & ~lesion
    free = np.argwhere(~near & (anatomy if anatomy.any() else pre.image > pre.background))
    return free[rng.choice(len(free), size=min(NO_LESION_CROPS, len(free)), replace=False)].astype(float)


def crop_gate_rate(predictor: Predictor, pre: Preprocessed, dhw: np.ndarray) -> float:
    """Share of open gates for the model crop centred at canonical ``dhw`` (the gates sit in the encoder, so a
    click does not change them)."""
    crop, _ = crop_or_pad(pre.image, dhw, predictor.crop, pad_value=pre.background)
    image = torch.from_numpy(np.ascontiguousarray(crop))[None, None].to(predictor.device)
    with torch.inference_mode():
        return float(predictor.model.gate_decisions(predictor.model.encode(image)).float().mean())


def gate_activation(
    predictor: Predictor, image: Volume, label_map: Volume, *, label: int, rng: np.random.Generator
) -> list[CropGates]:
    """The gates of every lesion's crop (a 26-connected component of ``label`` on the input grid, crop centred on its
    centre) and of :data:`NO_LESION_CROPS` lesion-free crops of one image.

    Raises:
        ValueError: the predictor's model has no gates (``has_gates`` is False).
    """
    if not predictor.model.has_gates:
        raise ValueError(f"{predictor.model.display_name} has no gates to read")
    pre = predictor.preprocessor(image, label_map)
    comps, n = label_lesions(label_map.array == label)
    voxel_ml = float(np.prod(label_map.spacing)) / 1000.0
    rows = []
    for idx in range(1, n + 1):
        where = np.argwhere(comps == idx)
        dhw = predictor.preprocessor.to_canonical_index(where.mean(axis=0)[::-1], pre, world=False)
        rows.append(CropGates(idx, len(where) * voxel_ml, crop_gate_rate(predictor, pre, dhw)))
    for dhw in lesion_free_centres(pre, label, predictor.crop, rng):
        rows.append(CropGates(0, 0.0, crop_gate_rate(predictor, pre, dhw)))
    return rows
