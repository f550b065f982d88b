"""Multi-class losses for prompt-free methods, and H-SAM's two-stage combination.

H-SAM (Cheng et al., CVPR 2024, "Unleashing the Potential of SAM for Medical Adaptation via Hierarchical
Decoding") supervises both decoding stages: per stage ``L_s = (1 − d)·CE + d·Dice`` (softmax over the K + 1
channels, background included; ``d = 0.8`` as in SAMed / H-SAM), combined as ``L = (1 − w)·L_1 + w·L_2`` where
the weight ``w`` of the second stage rises linearly over training from ``w_start`` to ``w_end``: early on the
prior of stage 1 is learned, later the refined stage 2 dominates.

Conventions: logits ``(B, K + 1, D, H, W)`` float (channel 0 = background); target ``(B, 1, D, H, W)`` integer class
indices in ``[0, K]``. Dice is MONAI's soft Dice per sample and class (``batch=False``) on the softmax, over the
foreground channels only by default (``include_background=False``: the background would dominate and is
already in the cross-entropy); a class absent from a crop and not predicted there contributes ~0.
"""

from __future__ import annotations

import torch
from monai.losses import DiceCELoss
from torch import nn

from lesionsam.losses.zoom import check_number

__all__ = ["SoftmaxDiceCE", "StagedLoss", "check_class_inputs"]


def check_class_inputs(logits: torch.Tensor, target: torch.Tensor, *, owner: str = "loss") -> torch.Tensor:
    """Check (logits (B, K+1, D, H, W) float, target (B, 1, D, H, W) class indices); return the target as int64.

    Raises:
        TypeError: non-tensors, or logits that are not floating point.
        ValueError: wrong dimensions, mismatched shapes (both named), or class indices outside ``[0, K]``.
    """
    if not isinstance(logits, torch.Tensor) or not isinstance(target, torch.Tensor):
        raise TypeError(f"{owner}: logits and target must be tensors")
    if not logits.is_floating_point():
        raise TypeError(f"{owner}: logits must be floating point, got {logits.dtype}")
    if logits.ndim != 5 or logits.shape[1] < 2:
        raise ValueError(f"{owner}: logits must be (B, K+1, D, H, W) with K >= 1 classes, got {tuple(logits.shape)}")
    if target.shape != (logits.shape[0], 1, *logits.shape[2:]):
        raise ValueError(
            f"{owner}: target {tuple(target.shape)} must be class indices of shape (B, 1, D, H, W) = "
            f"{(logits.shape[0], 1, *logits.shape[2:])} for logits {tuple(logits.shape)}"
        )
    if target.is_floating_point() and not bool(torch.equal(target, target.round())):
        raise ValueError(f"{owner}: target must hold integer class indices, got fractional values")
    index = target.long()
    lo, hi = int(index.min()), int(index.max())
    if lo < 0 or hi >= logits.shape[1]:
        raise ValueError(f"{owner}: target class indices must lie in [0, {logits.shape[1] - 1}], got [{lo}, {hi}]")
    return index


class SoftmaxDiceCE(nn.Module):
    """``(1 − d)·CE + d·Dice`` over K + 1 softmax channels (``monai.losses.DiceCELoss``), per-sample Dice.

    Args:
        dice_weight: d in [0, 1].
        include_background: count channel 0 in the Dice term.
    """

    def __init__(self, *, dice_weight: float = 0.8, include_background: bool = False) -> None:
        super().__init__()
        d = check_number(dice_weight, "dice_weight", "loss 'hsam'")
        if d > 1:
            raise ValueError(f"loss 'hsam': dice_weight must be in [0, 1], got {dice_weight!r}")
        self.dice_weight = d
        self.loss = DiceCELoss(
            softmax=True,
            to_onehot_y=True,
            include_background=bool(include_background),
            batch=False,
            lambda_dice=d,
            lambda_ce=1.0 - d,
        )

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """logits (B, K+1, D, H, W), target (B, 1, D, H, W) class indices → scalar."""
        index = check_class_inputs(logits, target, owner="loss 'hsam'")
        return self.loss(logits.float(), index)


class StagedLoss(nn.Module):
    """H-SAM's combination ``(1 − w)·L(stage 1) + w·L(stage 2)``, ``w`` linear in the training progress.

    Called as ``loss(logits, target, stage1_logits=..., progress=...)``; without ``stage1_logits`` it is the stage
    loss of ``logits`` alone.

    Args:
        stage: the per-stage loss (``SoftmaxDiceCE``).
        w_start, w_end: the weight of stage 2 at the start (progress 0) and the end (progress 1) of training.
    """

    #: The trainer passes the method's stage-1 logits and the training progress to losses with this flag.
    staged = True

    def __init__(self, stage: nn.Module, *, w_start: float = 0.2, w_end: float = 0.8) -> None:
        super().__init__()
        for name, value in (("w_start", w_start), ("w_end", w_end)):
            if check_number(value, name, "loss 'hsam'") > 1:
                raise ValueError(f"loss 'hsam': {name} must be in [0, 1], got {value!r}")
        self.stage = stage
        self.w_start, self.w_end = float(w_start), float(w_end)

    def weight(self, progress: float) -> float:
        """Weight ``w`` of stage 2 at training progress in [0, 1] (clamped)."""
        t = min(1.0, max(0.0, float(progress)))
        return self.w_start + (self.w_end - self.w_start) * t

    def forward(
        self,
        logits: torch.Tensor,
        target: torch.Tensor,
        *,
        stage1_logits: torch.Tensor | None = None,
        progress: float = 1.0,
    ) -> torch.Tensor:
        """logits / stage1_logits (B, K+1, D, H, W), target (B, 1, D, H, W) class indices → scalar."""
        second = self.stage(logits, target)
        if stage1_logits is None:
            return second
        w = self.weight(progress)
        return (1.0 - w) * self.stage(stage1_logits, target) + w * second
