"""Training terms of text-referred methods (RefSAM3D): the per-lesion class term of a text pair, the lesion
decision by region scores, and the margin between two texts' logits."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from lesionsam.utils.components import lesion_masks

#: Smallest lesion (connected component, voxels of the crop) the per-lesion class term and decision look at.
REGION_MIN_VOXELS = 8


def lesion_components(mask: np.ndarray, min_voxels: int = REGION_MIN_VOXELS) -> list[np.ndarray]:
    """The 26-connected components of a boolean mask with at least ``min_voxels`` voxels, as boolean masks."""
    return lesion_masks(mask, min_voxels)


def region_class_loss(model: Any, encoded: Any, label: Tensor, text: Sequence[str]) -> Tensor:
    """Per-lesion class term of a paired text batch (``train.options.region_classes``).

    The batch's first half holds the crops with their own class's voxels as ``label`` and texts, the second half
    the same crops with the other class's; every lesion (:func:`lesion_components`) of either is scored against
    its crop's two texts by ``model.region_scores`` and gets cross-entropy towards its class. Mean over the
    lesions of the batch; 0 when there is none.
    """
    half = label.shape[0] // 2
    total, count = label.new_zeros(()), 0
    for b in range(half):
        masks, targets = [], []
        for j, lab in enumerate((label[b, 0], label[half + b, 0])):
            for m in lesion_components(lab.detach().cpu().numpy() > 0.5):
                masks.append(m)
                targets.append(j)
        if not masks:
            continue
        regions = torch.from_numpy(np.stack(masks))[:, None].to(label.device)
        scores = model.region_scores(encoded, b, regions, [text[b], text[half + b]])
        target = torch.tensor(targets, device=scores.device)
        total = total + F.cross_entropy(scores.float(), target, reduction="sum")
        count += len(targets)
    return total / count if count else total


def regions_won(model: Any, encoded: Any, mask: Tensor, texts: Sequence[str]) -> Tensor:
    """The lesions of a (1, 1, S, S, S) bool mask on one crop that ``model.region_scores`` gives to ``texts[0]``
    rather than to any other of ``texts`` (every connected component is decided; the rest is dropped)."""
    regions = lesion_components(mask[0, 0].cpu().numpy(), min_voxels=1)
    if not regions:
        return mask
    scores = model.region_scores(encoded, 0, torch.from_numpy(np.stack(regions))[:, None].to(mask.device), texts)
    won = [r for r, s in zip(regions, scores.argmax(1).tolist(), strict=True) if s == 0]
    keep = np.logical_or.reduce(won) if won else np.zeros_like(regions[0])
    return torch.from_numpy(np.asarray(keep))[None, None].to(mask.device)


def text_margin_loss(logits_a: Tensor, logits_b: Tensor, mask_a: Tensor, mask_b: Tensor) -> Tensor:
    """Per-voxel margin between two texts' logits on the same crops.

    On the voxels of text a's class (``mask_a``) ``softplus(l_b - l_a)``, on those of text b's class
    ``softplus(l_a - l_b)``: each text must score its own class's voxels above the other text. Mean over those
    voxels of the batch; 0 when neither class has a voxel (the term then adds nothing).

    Args:
        logits_a, logits_b: (B, 1, S, S, S) float logits for texts a and b.
        mask_a, mask_b: (B, 1, S, S, S) bool voxels of each text's class (disjoint).
    """
    diff = logits_a - logits_b
    terms = torch.cat([F.softplus(-diff[mask_a]), F.softplus(diff[mask_b])])
    return terms.mean() if terms.numel() else logits_a.new_zeros(())
