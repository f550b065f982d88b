"""Automatic (H-SAM) and text-referred (RefSAM3D) lesion proposals for the served sessions.

A second checkpoint (``lesionsam serve --proposals CKPT``) finds candidate lesions in the whole image with no click:
a prompt-free model (:meth:`Predictor.predict_auto`) or, given a text, a text-referred one
(:meth:`Predictor.predict_text`). Every connected component (per class) is one proposal with its bounding box.
Accepting a proposal gives its 3D bounding box to the session's promptable model as a box prompt: the lesion is
segmented again by the interactive engine (and can then be refined with clicks), not copied.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from lesionsam.data.io import Volume
from lesionsam.utils.components import label_lesions


@dataclass(frozen=True)
class Proposal:
    """One proposed lesion: component ``id`` of the proposals' label map, its class value, volume and box.

    ``lo``/``hi`` are its inclusive bounds, voxel (i, j, k) in ITK order.
    """

    id: int
    class_value: int
    volume_ml: float
    lo: tuple[int, int, int]
    hi: tuple[int, int, int]


def proposal_kinds(predictor: object) -> list[str]:
    """What a proposals predictor can do: ``["auto"]`` (prompt-free), ``["text"]`` (text-referred) or ``[]``."""
    model = predictor.model  # type: ignore[attr-defined]
    if model.prompt_free:
        return ["auto"]
    return ["text"] if "text" in (model.accepted_prompts | model.required_prompts) else []


def components(labels: np.ndarray, volume: Volume, *, min_volume_ml: float = 0.0) -> tuple[np.ndarray, list[Proposal]]:
    """Connected components (26-connected, per label value) of a (D, H, W) prediction as proposals.

    Returns:
        The (D, H, W) uint16 map of proposal ids (1, 2, ... by decreasing volume) and the proposals.
    """
    voxel_ml = float(np.prod(volume.spacing)) / 1000.0
    found: list[tuple[int, int, tuple[slice, ...], np.ndarray]] = []  # (size, class, bbox, mask in bbox)
    for value in (int(v) for v in np.unique(labels) if v != 0):
        comps, n = label_lesions(labels == value)
        for index, box in enumerate(ndimage.find_objects(comps), start=1):
            if box is None:
                continue
            mask = comps[box] == index
            size = int(mask.sum())
            if size * voxel_ml >= min_volume_ml:
                found.append((size, value, box, mask))
    found.sort(key=lambda item: -item[0])
    ids = np.zeros(labels.shape, np.uint16)
    out = []
    for pid, (size, value, box, mask) in enumerate(found[:65535], start=1):
        ids[box][mask] = pid
        k, j, i = box
        out.append(
            Proposal(
                id=pid,
                class_value=value,
                volume_ml=size * voxel_ml,
                lo=(i.start, j.start, k.start),
                hi=(i.stop - 1, j.stop - 1, k.stop - 1),
            )
        )
    return ids, out


def box_of(proposal: Proposal, size_ijk: tuple[int, int, int]) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """The 3D box prompt of a proposal: its bounds, widened by one voxel on every axis where it is flat."""
    lo, hi = list(proposal.lo), list(proposal.hi)
    for a in range(3):
        if lo[a] == hi[a]:
            if hi[a] + 1 < size_ijk[a]:
                hi[a] += 1
            elif lo[a] > 0:
                lo[a] -= 1
    return (lo[0], lo[1], lo[2]), (hi[0], hi[1], hi[2])
