"""The one Dice of lesionsam: ``2|P∩G| / (|P| + |G|)`` over voxels, 1 when both masks are empty.

The evaluator (:func:`~lesionsam.evaluation.metrics.case_metrics`, the per-lesion Dice of
:mod:`lesionsam.evaluation.lesions`), the click-curve protocol and the training's statistics and validation all score
with it. NumPy masks are counted exactly (integers, the quotient in float64); torch masks keep the training's
arithmetic (float32 sums per sample). This module imports no torch (``lesionsam evaluate`` stays lean): a tensor is
recognised only when torch is already loaded.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, overload

import numpy as np

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["dice", "dice_from_counts", "dice_from_iou"]


def _is_tensor(x: object) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def dice_from_counts(inter: Any, pred_size: Any, gt_size: Any) -> Any:
    """``2·inter / (pred_size + gt_size)``, 1 where both sizes are 0 (nothing to find, nothing found).

    Elementwise on Python numbers (→ float), NumPy arrays (→ float64 array) or torch tensors (→ a tensor of their
    dtype; the quotient is taken on the denominator clamped at 1e-8, as the training always did).
    """
    den = pred_size + gt_size
    if _is_tensor(den):
        return (2 * inter / den.clamp_min(1e-8)).where(den > 0, den.new_ones(()))
    if isinstance(den, np.ndarray):
        safe = np.where(den > 0, den, 1)
        return np.where(den > 0, 2.0 * inter / safe, 1.0)
    return 1.0 if den == 0 else 2.0 * inter / den


def dice_from_iou(iou: float) -> float:
    """The Dice of a pair of masks from their IoU, ``2·IoU / (1 + IoU)`` (the same number as
    :func:`dice_from_counts` up to the last bit; the one-to-one lesion matching has the pair's IoU at hand)."""
    return 2.0 * iou / (1.0 + iou)


@overload
def dice(pred: np.ndarray, gt: np.ndarray, *, batch: bool = False) -> Any: ...
@overload
def dice(pred: Tensor, gt: Tensor, *, batch: bool = False) -> Tensor: ...
def dice(pred: Any, gt: Any, *, batch: bool = False) -> Any:
    """Voxel Dice of two masks of one shape (foreground: nonzero / True).

    Args:
        pred, gt: NumPy arrays or torch tensors, e.g. (D, H, W); with ``batch``, (B, ...) with one sample per row.
        batch: score every sample of the first axis apart.

    Returns:
        A float for NumPy masks ((B,) float64 array with ``batch``); for tensors always a (B,) float32 tensor per
        sample (``batch`` is implied: a tensor is a batch of crops, (B, 1, D, H, W)).
    """
    if _is_tensor(pred):
        p, g = pred.flatten(1).float(), gt.flatten(1).float()
        return dice_from_counts((p * g).sum(1), p.sum(1), g.sum(1))
    p, g = np.asarray(pred) != 0, np.asarray(gt) != 0
    if p.shape != g.shape:
        raise ValueError(f"Dice of masks of different shapes: {p.shape} and {g.shape}")
    if batch:
        p, g = p.reshape(len(p), -1), g.reshape(len(g), -1)
        return dice_from_counts(np.count_nonzero(p & g, axis=1), p.sum(1), g.sum(1))
    return dice_from_counts(int(np.count_nonzero(p & g)), int(p.sum()), int(g.sum()))
